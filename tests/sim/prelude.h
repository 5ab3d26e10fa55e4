// prelude.h — included ahead of every kernels/cuda/*.cu file built for the simulator
// (tests/sim/build.sh: g++ -include tests/sim/prelude.h). The real CUDA headers supply the
// types and the host API's declarations (tests/sim/runtime.cpp defines the functions); this
// file turns the device-side vocabulary into calls on the simulator (sim.h): thread
// coordinates, barriers, warp shuffles, atomics, and the few intrinsics the host lacks.
#ifndef TP_SIM_PRELUDE_H
#define TP_SIM_PRELUDE_H

#include <cuda_runtime.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sim.h"

// A block runs alone, so a block's __shared__ variables can be the function's statics
// (build.sh rewrites each declaration so it is registered: sim::shared_static).
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __noinline__
#define __noinline__ __attribute__((noinline))

// The C++ forms of the runtime calls on kernels and symbols (cuda_runtime.h has them for nvcc only).
template <typename... P> cudaError_t cudaFuncSetAttribute(void (*f)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(f), attr, value);
}
template <typename... P> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, void (*f)(P...)) {
    return cudaFuncGetAttributes(attr, reinterpret_cast<const void *>(f));
}
template <typename T>
cudaError_t cudaMemcpyToSymbol(const T &symbol, const void *src, size_t count, size_t offset = 0,
                               cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    return cudaMemcpyToSymbol(static_cast<const void *>(&symbol), src, count, offset, kind);
}

// CUDA's min and max take any mix of arithmetic types, as its device library does.
template <typename A, typename B> typename std::common_type<A, B>::type min(A a, B b) {
    return b < a ? b : a;
}
template <typename A, typename B> typename std::common_type<A, B>::type max(A a, B b) {
    return a < b ? b : a;
}

#define threadIdx (::sim::thread_idx())
#define blockIdx (::sim::block_idx())
#define blockDim (::sim::block_dim())
#define gridDim (::sim::grid_dim())
#define warpSize 32

inline void __syncthreads() { ::sim::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::sim::sync_warp(); }
inline void __threadfence() {}
inline void __threadfence_block() {}

namespace sim {
// Every lane posts v, then reads lane src(lane)'s: the exchange every shuffle is.
template <typename T, typename Src> T shuffle(T v, Src src) {
    static_assert(sizeof(T) <= SLOT_BYTES, "a shuffled value fits a slot");
    std::memcpy(warp_slot(lane()), &v, sizeof v);
    sync_warp();
    const int from = src(lane());
    T r = v;
    if (from >= 0 && from < 32 && lane_exited(from)) {  // undefined in CUDA: NaN bytes here
        std::memset(&r, 0xff, sizeof r);
        note_stale_read(from);
    } else if (from >= 0 && from < 32) {
        std::memcpy(&r, warp_slot(from), sizeof r);
    }
    sync_warp();
    return r;
}
}  // namespace sim

template <typename T> T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return ::sim::shuffle(v, [&](int l) { return (l ^ mask) < ((l / width) + 1) * width ? l ^ mask : l; });
}
template <typename T> T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return ::sim::shuffle(v, [&](int l) { return (l / width) * width + (src % width); });
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    return ::sim::shuffle(v, [&](int l) { return (int)(l % width + d) < width ? l + (int)d : l; });
}
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    return ::sim::shuffle(v, [&](int l) { return (int)(l % width) >= (int)d ? l - (int)d : l; });
}
inline unsigned __ballot_sync(unsigned, int pred) {
    unsigned bits = 0;
    for (int l = 0; l < 32; l++) {
        const int p = ::sim::shuffle(pred ? 1 : 0, [&](int) { return l; });
        if (p) bits |= 1u << l;
    }
    return bits;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) { return __ballot_sync(m, pred) == 0xffffffffu; }
inline unsigned __activemask() { return 0xffffffffu; }

template <typename T> T __ldg(const T *p) { return *p; }
template <typename T> T __ldcs(const T *p) { return *p; }
template <typename T> T __ldcg(const T *p) { return *p; }
template <typename T> void __stcg(T *p, T v) { *p = v; }
template <typename T> void __stcs(T *p, T v) { *p = v; }

// One host thread runs every CUDA thread, switching only at barriers: atomics are plain.
template <typename T> T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T> T atomicSub(T *p, T v) {
    T old = *p;
    *p = old - v;
    return old;
}
template <typename T> T atomicMax(T *p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <typename T> T atomicMin(T *p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <typename T> T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T> T atomicCAS(T *p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}
inline unsigned atomicInc(unsigned *p, unsigned limit) {
    unsigned old = *p;
    *p = old >= limit ? 0 : old + 1;
    return old;
}

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned i;
    std::memcpy(&i, &f, 4);
    return i;
}
// The round-to-nearest forms: the host's operators round to nearest already (and
// tests/sim/build.sh passes -ffp-contract=off, so nothing is fused into an fma).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline long long __double_as_longlong(double d) {
    long long i;
    std::memcpy(&i, &d, 8);
    return i;
}
inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, 8);
    return d;
}
using std::isfinite;
using std::isinf;
using std::isnan;
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline long long clock64() { return 0; }
inline void __nanosleep(unsigned) {}

#endif
