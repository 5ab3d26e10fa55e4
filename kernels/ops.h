// ops.h — the op interface the model core calls (CPU implementation in cpu/).
//
// Every op has a CUDA twin in cuda/ with the same arguments on device memory;
// tests compare the two. Shapes: B×T rows flattened to N, C channels.
#ifndef TP_OPS_H
#define TP_OPS_H

// RMSNorm forward, as Llama/Qwen compute it in fp32:
//   rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps);  out[n,c] = x[n,c] * rstd[n] * weight[c]
// x [N, C], weight [C] -> out [N, C], rstd [N] (kept for the backward pass; may be NULL).
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps);

#endif
