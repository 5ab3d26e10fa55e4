// cuda_common.h — what every CUDA kernel file shares (C++ side only, not installed).
//
// Errors: every launch and runtime call goes through CUDA_CHECK / CUDA_LAUNCH_CHECK,
// which keep the FIRST failure (file:line and CUDA's text) in a process-wide slot.
// The ops themselves return nothing, like their CPU twins; callers ask
// cuda_take_error() (through tp_backend.sync) at the points where they can report.
#ifndef TP_CUDA_COMMON_H
#define TP_CUDA_COMMON_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

void cuda_note_error(cudaError_t e, const char *file, int line);
void cuda_note_message(const char *msg, const char *file, int line);

#define CUDA_CHECK(call)                                                   \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess) cuda_note_error(e_, __FILE__, __LINE__);    \
    } while (0)
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// True when cuda_set_matmul_precision("bf16") is in effect: ops with a tensor-core path
// (matrix products, attention) round their inputs to bf16 and accumulate in fp32.
bool cuda_matmul_bf16(void);
// True when, besides, the activations that only products and elementwise ops read are kept
// in bf16 (attn.cu: the attention block's; mlp.cu: the MLP's [N, F] tensors;
// crossentropy.cu: a head chunk's logits).
bool cuda_act16(void);

// What cuda_decode_last_path reports (decode.cu): set by the fused decode ops.
extern const char *cuda_decode_path;

// The stream every op runs on: one stream, so ops run in call order. Not the legacy
// default stream, because a CUDA graph can only be captured from another stream; it is
// created blocking, so the synchronous copies (cudaMemcpy on the legacy stream) still
// wait for it and it for them.
cudaStream_t cuda_stream(void);

static inline unsigned cuda_blocks(long n, int threads) { return (unsigned)((n + threads - 1) / threads); }

// Scratch device memory owned by one op (grown, never shrunk, freed at exit). The ops
// run on one host thread, in stream order, so a slot is never in use twice at once.
// Returns NULL (and notes the error) when the allocation fails.
void *cuda_scratch(int slot, size_t bytes);
// The same for work that has another way to run: NULL without a note when out of memory
// (or during a graph capture).
void *cuda_scratch_optional(int slot, size_t bytes);
enum {
    SCRATCH_EMBEDDING = 0, SCRATCH_COLSUM, SCRATCH_ATTENTION, SCRATCH_CE, SCRATCH_NORM, SCRATCH_BF16_A, SCRATCH_BF16_B,
    SCRATCH_DECODE, SCRATCH_DECODE_COUNT, SCRATCH_SAMPLE, SCRATCH_ATTENTION_BF16, SCRATCH_ATTENTION_WIDE,
    SCRATCH_PRODUCT, SCRATCH_ADAMW, SCRATCH_ATTENTION_GRADS, SCRATCH_QKV, SCRATCH_COUNT
};

// out [n] = in [n] rounded to bf16 (nearest even), and back (exact).
void cuda_round_bf16(void *out, const float *in, size_t n);
// Row r of in [rows, cols] rounded into out + r·ld (bf16 rows ld elements apart).
void cuda_round_bf16_rows(void *out, long ld, const float *in, long rows, int cols);
void cuda_widen_bf16(float *out, const void *in, size_t n);

// Drops the cached bf16 copies of weights in [p, p + bytes) (that memory is being freed).
void cuda_bf16_forget(const void *p, size_t bytes);
// The cached bf16 copy of weights w [n] (the products' copy of exactly those floats), now
// counted valid for the current cuda_weights_version: the caller writes it from the new
// weights, in stream order before any product reads it. NULL when there is none (the first
// product to need one makes it).
__nv_bfloat16 *cuda_weight_copy_claim(const float *w, size_t n);

// Bumped whenever the weights were rewritten (cuda_weights_changed after an upload, AdamW):
// caches derived from weights (their bf16 copies) compare it.
extern unsigned long cuda_weights_version;
// Bumped whenever a buffer that captured graphs point into moves or goes stale (scratch
// reallocated, weights rewritten): a graph captured at another epoch must not be replayed.
extern unsigned long cuda_graph_epoch_now;

// Above 48 KB of dynamic shared memory a kernel must opt in, once per kernel.
template <typename Kernel> void allow_smem(Kernel kernel, size_t bytes, bool *done) {
    if (*done) return;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    *done = true;
}

// Programmatic dependent launch (sm_90+): a kernel launched by cuda_launch_dependent may
// start while the kernel before it in the stream is still running, once that one's blocks
// have all triggered (pdl_trigger on entry; pdl_wait with TP_CUDA_PDL=late) or exited.
// Until pdl_wait returns — the previous kernel
// complete, its writes visible — it may not read or write anything an earlier op writes;
// it may prefetch into L2 (a prefetch returns no data, so even a weight's bf16 copy being
// rewritten by the op before is safe to prefetch). Every block must call pdl_wait before
// it reads or writes anything else; then the chain stays ordered (each kernel's completion
// implies its predecessor's). The kernels here trigger on entry, so the chain may run a few
// kernels ahead, parked at their waits.
// A decode step is a chain of ~200 small kernels, each waiting for DRAM from a cold start;
// this way a product's weights stream into L2 while the kernel before it finishes.
// TP_CUDA_PDL=0 launches them the ordinary way; TP_CUDA_PDL=late has each kernel trigger
// only after its own wait (at most one kernel ahead), to measure against the default.
bool cuda_pdl(void);
bool cuda_pdl_late(void);

// Whether this translation unit's kernels trigger late: every .cu file has its own copy
// (no relocatable device code), set before its first dependent launch. Constant memory:
// every thread of every kernel reads it on entry, before the trigger, and the constant
// cache serves that load (a global would be an L2 round trip ahead of launch_dependents).
static __constant__ int pdl_late_flag;
static bool pdl_late_set;

// On entry: triggers the dependents now unless they are to wait for this kernel's own wait,
// and returns which (read before the wait, so the flag's load is off the critical path).
__device__ __forceinline__ bool pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const bool late = pdl_late_flag;
    if (!late) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    return late;
#else
    return false;
#endif
}
__device__ __forceinline__ void pdl_wait(bool late) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (late) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#else
    (void)late;
#endif
}
// Brings a weight row of `bytes` into L2 (a lane of a warp: every 32nd 128-byte line).
__device__ __forceinline__ void prefetch_l2(const void *row, size_t bytes, int lane) {
#if defined(__CUDA_ARCH__)
    for (size_t off = (size_t)lane * 128; off < bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"((const char *)row + off));
#else
    (void)row, (void)bytes, (void)lane;  // (the host pass, and tests/sim: nothing to prefetch)
#endif
}

template <typename... Params, typename... Args>
void cuda_launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args... args) {
#ifdef TP_CUDA_SIM  // tests/sim: an ordinary launch (the simulator runs kernels one at a time anyway)
    ::sim::launcher(kernel, grid, block, smem)(args...);
#else
    if (!pdl_late_set) {  // the first launch of this file's kernels: never inside a graph capture
        int late = cuda_pdl_late();
        CUDA_CHECK(cudaMemcpyToSymbol(pdl_late_flag, &late, sizeof late));
        pdl_late_set = true;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = cuda_stream();
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = cuda_pdl() ? 1 : 0;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#endif
