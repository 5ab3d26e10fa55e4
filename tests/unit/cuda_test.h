// cuda_test.h — helpers for the tests that compare CUDA ops with their CPU twins.
#ifndef TP_CUDA_TEST_H
#define TP_CUDA_TEST_H

#include "test.h"
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"

#include <math.h>
#include <string.h>

// Skips the calling test unless this build has CUDA and a GPU is visible.
#define NEED_GPU()                                                    \
    do {                                                              \
        if (cuda_device_count() == 0) SKIP("no GPU on this machine"); \
    } while (0)

// Skips a measurement of speed on tests/sim's simulator, where kernels run on the CPU at a
// millionth of a GPU's speed (its device name says so).
#define NEED_REAL_GPU()                                                                      \
    do {                                                                                     \
        char dev_[256];                                                                      \
        NEED_GPU();                                                                          \
        if (cuda_device_describe(dev_, sizeof dev_) == 0 && strstr(dev_, "simulator"))       \
            SKIP("a speed measurement: not on the simulator");                               \
    } while (0)

static inline void fill_uniform(float *p, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * test_uniform());
}

// A device copy of n host floats (or ints: bytes given).
static inline void *dev_copy(const void *host, size_t bytes) {
    void *d = cuda_alloc(bytes);
    if (d && host) cuda_upload(d, host, bytes);
    return d;
}

// A device buffer of n floats filled with NaN, so an element a kernel forgets fails.
static inline float *dev_poisoned(size_t n) {
    float *h = malloc(n * sizeof *h + 4);
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float *d = dev_copy(h, n * sizeof *h);
    free(h);
    return d;
}

// A device buffer of `bytes` bytes of 0xFF: NaN read as fp32 and as bf16 (buffers of 2-byte
// elements, which dev_poisoned's fp32 NaNs would leave half zeros).
static inline void *dev_poisoned_bytes(size_t bytes) {
    unsigned char *h = malloc(bytes + 4);
    memset(h, 0xFF, bytes);
    void *d = dev_copy(h, bytes);
    free(h);
    return d;
}

static inline float *host_of(const float *d, size_t n) {
    float *h = malloc(n * sizeof *h + 4);
    cuda_download(h, d, n * sizeof *h);
    return h;
}

// max |a - b| / max |b|; NaN anywhere in a gives infinity.
static inline double max_rel(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        worst = fmax(worst, fabs((double)a[i] - b[i]));
    }
    return worst / (scale > 0 ? scale : 1);
}

// The first CUDA error since the last check is a failed check.
#define CHECK_CUDA_OK()                                              \
    do {                                                             \
        char cuda_err_[512];                                         \
        int cuda_rc_ = cuda_take_error(cuda_err_, sizeof cuda_err_); \
        CHECK_MSG(cuda_rc_ == 0, "CUDA: %s", cuda_err_);             \
    } while (0)

#else
#define NEED_GPU() SKIP("built without CUDA (nvcc not found)")
#endif
#endif
