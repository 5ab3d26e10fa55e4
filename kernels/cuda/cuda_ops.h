// cuda_ops.h — the CUDA twins of ops.h, callable from C. Pointers are device memory.
#ifndef TP_CUDA_OPS_H
#define TP_CUDA_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable CUDA devices; 0 when there is no GPU or no driver.
int cuda_device_count(void);
// Name and compute capability of device 0 into buf; returns 0 or -1.
int cuda_device_describe(char *buf, int cap);

// Same contract as rmsnorm_forward() in ops.h. One warp per row.
// Returns 0, or -1 with the CUDA error text in err (cap bytes) when the launch fails.
int cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps,
                         char *err, int err_cap);

#ifdef __cplusplus
}
#endif
#endif
