// rope.h — RoPE's rotation of one pair (x[f], x[f + HD/2]) on the device: the training
// kernels, the decode step and the attention backward's store all rotate through these,
// so each gives the same bits. The angle is the fp32 product pos · inv_freq[f] (as on the
// CPU and in transformers); the products and sums are rounded one at a time, because a
// fused multiply-add the compiler may form in one kernel and not in another would change
// the last bit between them (the CPU's C, built as ISO C11, does not fuse either).
#pragma once

struct rope_angle {
    float cs, sn;
};

// sign +1: the rotation by the angle (forward); -1: by minus the angle (its backward).
__device__ __forceinline__ rope_angle rope_angle_of(int pos, float inv_freq, float sign) {
    const float a = (float)pos * inv_freq;
    return {cosf(a), sign * sinf(a)};
}

__device__ __forceinline__ void rope_rotate(float &x1, float &x2, rope_angle r) {
    const float a1 = x1, a2 = x2;
    x1 = __fsub_rn(__fmul_rn(a1, r.cs), __fmul_rn(a2, r.sn));
    x2 = __fadd_rn(__fmul_rn(a2, r.cs), __fmul_rn(a1, r.sn));
}
