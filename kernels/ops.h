// ops.h — the op interface the model core calls (CPU implementation in cpu/).
//
// Every op has a CUDA twin in cuda/ with the same arguments on device memory;
// tests compare the two. Conventions:
//   N = tokens (B rows × T positions, flattened), C = channels, all fp32, row-major.
//   Backward ops ACCUMULATE (+=) into parameter gradients, so gradient accumulation
//   over micro-batches is free; they also accumulate into activation gradients
//   (dx +=) because a residual stream receives gradients from two branches.
//   Callers zero what must start at zero.
// Packed rows: a row of T positions holds several sequences back to back. seg_start[n]
// is the flat index (0..N-1) of the first token of token n's sequence, so token n
// attends to keys seg_start[n]..n only: no attention across samples in a row.
#ifndef TP_OPS_H
#define TP_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ---- embedding ----
// out[n,:] = table[ids[n],:]      ids [N], table [V, C] -> out [N, C]
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
// dtable[ids[n],:] += dout[n,:]   (serial over n per channel block: ids repeat)
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C);

// ---- RMSNorm, as Llama/Qwen compute it ----
//   rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps);  out[n,c] = x[n,c] * rstd[n] * weight[c]
// x [N, C], weight [C] -> out [N, C], rstd [N] (kept for the backward pass; may be NULL).
// Qwen3's per-head q/k norm is the same op over N*heads rows of C = head_dim.
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps);
// The residual add and the norm after it in one pass: sum = a + b (a float add, as
// add_inplace), then out = rmsnorm(sum) exactly as rmsnorm_forward. sum may alias a or b.
void add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b, const float *weight,
                         int N, int C, float eps);
// dx [N, C] += ..., dweight [C] += ...; from dout [N, C], x, weight, rstd of the forward pass.
void rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x, const float *weight,
                      const float *rstd, int N, int C);

// ---- linear: out = x · W^T (+ bias), W in nn.Linear layout [OC, IC] ----
// x [N, IC], W [OC, IC], bias [OC] or NULL -> out [N, OC] (overwritten)
void linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC);
// Several products of one input: out[i] [N, OC[i]] = x · weight[i]^T (+ bias[i], may be NULL)
// for i < count, the same bits as count calls of linear_forward; a backend may share work
// between them (the cuda one rounds x to bf16 once). No out[i] may alias x.
void linear_forward_many(int count, float *const out[], const float *x, const float *const weight[],
                         const float *const bias[], const int OC[], int N, int IC);
// The products of a decode step with the norm before them and the residual add after them
// (on a GPU each is one kernel). ln [N, IC] = rmsnorm_forward(x, norm_weight), then
// out[i] = ln · weight[i]^T (+ bias[i]) as linear_forward_many; with norm_weight NULL the
// products take x itself. ln is scratch: a backend may leave it unwritten. No output (out[i],
// ln) may alias x or another output.
void rmsnorm_linear_forward_many(int count, float *const out[], float *ln, const float *x, const float *norm_weight,
                                 float eps, const float *const weight[], const float *const bias[], const int OC[],
                                 int N, int IC);
// The MLP's first half: ln as above, then act [N, F] = silu(ln · w_gate^T) * (ln · w_up^T)
// (linear_forward_many of the two, then swiglu_forward). gate, up [N, F] are scratch too;
// act, gate, up and ln alias neither x nor each other.
void rmsnorm_linear_swiglu_forward(float *act, float *gate, float *up, float *ln, const float *x,
                                   const float *norm_weight, float eps, const float *w_gate, const float *w_up, int N,
                                   int IC, int F);
// out [N, OC] = (x · W^T (+ bias)) + residual [N, OC]: linear_forward, then add_inplace.
// out aliases neither x nor residual.
void linear_residual_forward(float *out, const float *x, const float *weight, const float *bias, const float *residual,
                             int N, int IC, int OC);
// dx [N, IC] += dout · W (skipped when dx is NULL); dW [OC, IC] += dout^T · x; dbias [OC] += sum_n dout (if non-NULL)
void linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x, const float *weight,
                     int N, int IC, int OC);
// The backward of linear_forward_many (count products of one x, weight[i] [OC[i], IC]):
// dx [N, IC] = sum over i of dout[i] [N, OC[i]] · weight[i], WRITTEN, not accumulated (so
// the caller need not zero it; skipped when dx is NULL); dweight[i] += dout[i]^T · x and
// dbias[i] += sum_n dout[i] (dbias NULL, or an entry NULL: none), as linear_backward does.
// dx aliases none of the others.
void linear_backward_many(int count, float *dx, float *const dweight[], float *const dbias[],
                          const float *const dout[], const float *x, const float *const weight[], const int OC[],
                          int N, int IC);

// ---- rotary position embedding, HF half-rotation layout ----
// inv_freq [HD/2] (llama3 scaling already applied by the caller). For each head h and
// i < HD/2, with a = pos[n] * inv_freq[i]:
//   x1 = x[n,h,i], x2 = x[n,h,i+HD/2]
//   x[n,h,i] = x1 cos a - x2 sin a;  x[n,h,i+HD/2] = x2 cos a + x1 sin a
// x [N, H, HD] in place; pos [N].
void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
// A decode step's new keys and values: q [n, NH, HD] and k [n, KVH, HD] rotated in place
// (rope_forward), then row kv_row[i] of k_cache := k row i, of v_cache := v row i
// (scatter_rows, rows of KVH*HD floats). HD is even, as for rope_forward.
void rope_kv_cache_forward(float *q, float *k, const float *v, float *k_cache, float *v_cache, const int32_t *kv_row,
                           const int32_t *pos, const float *inv_freq, int n, int NH, int KVH, int HD);
// A decode step's attention inputs in one op: q [n, NH, HD], k and v [n, KVH, HD] =
// rmsnorm_linear_forward_many of x [n, C] (norm_weight, weight[3] = wq, wk, wv, bias[3]
// with NULL entries for none; ln is scratch), then rope_kv_cache_forward, with those ops'
// bits (on a GPU one kernel where the few-rows products take the call: bf16 products, up to 8
// rows, C < 2048 a multiple of 8; a warp takes the two rows a rotation pairs).
void rmsnorm_qkv_rope_cache_forward(float *q, float *k, float *v, float *k_cache, float *v_cache, float *ln,
                                    const float *x, const float *norm_weight, float eps, const float *const weight[3],
                                    const float *const bias[3], const int32_t *kv_row, const int32_t *pos,
                                    const float *inv_freq, int n, int C, int NH, int KVH, int HD);
// Qwen3's: q [n, NH, HD] = rmsnorm_forward of each head of q_raw (weights q_norm [HD]), k
// likewise from k_raw (k_norm), then rope_kv_cache_forward, with those ops' bits (on a GPU
// one kernel at HD 64 and 128 with 16-byte aligned q, k, q_raw, k_raw and norms).
void qk_norm_rope_kv_cache_forward(float *q, float *k, const float *q_raw, const float *k_raw, const float *v,
                                   float *k_cache, float *v_cache, const float *q_norm, const float *k_norm, float eps,
                                   const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n, int NH,
                                   int KVH, int HD);
// The inverse rotation (rotation by -a) applied to a gradient, in place: dx = R^T dout.
void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int H, int HD);

// ---- causal attention over packed rows, native GQA ----
// q [N, NH, HD], k [N, KVH, HD], v [N, KVH, HD]; query head h reads kv head h / (NH/KVH).
// out [N, NH, HD] = softmax(q k^T * scale over keys seg_start[n]..n) v
// lse [N, NH] = log-sum-exp of the scaled scores (kept: the backward pass recomputes the
// probabilities from it instead of storing [NH, T, T] of them).
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
// dq [N, NH, HD], dk, dv [N, KVH, HD] += gradients, from dout [N, NH, HD] and the forward's out, lse.
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *seg_start, int N, int NH,
                        int KVH, int HD, float scale);

// ---- attention of new tokens against a KV cache (generation) ----
// The cache is rows of KVH*HD floats (one token's keys, or values, of one layer). For each
// of n tokens: q [n, NH, HD]; its sequence's keys are rows row0[i] .. row0[i]+len[i]-1 of
// k, its values the same rows of v (the token's own included: causal by construction).
// out [n, NH, HD] = softmax(q k^T * scale) v over those rows.
void attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, float scale);

// ---- SwiGLU: out = silu(gate) * up ----
// gate, up [N, F] -> out [N, F]
void swiglu_forward(float *out, const float *gate, const float *up, long n);
// dgate, dup [N, F] (overwritten) from dout [N, F]
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);

// ---- the attention block of a training step ----
// ln = rmsnorm(x, norm); q = ln · wq^T + bq, k and v likewise (with per-head norms, Qwen3:
// these are q_raw, k_raw, and q = rmsnorm(q_raw, q_norm) over N*NH rows of HD, k likewise);
// RoPE on q and k; att = attention(q, k, v) over packed rows; then
//   mid = x + (att · wo^T + bo)   and   ln2 = rmsnorm(mid, norm2), the MLP block's input,
// in the same pass as the residual add. Q = NH*HD, KV = KVH*HD.
// ln, q_raw, k_raw, q, k, v, att, ln2 (and the backward's datt) take act_bytes an element
// (tp_backend), like the MLP's [N, F] tensors: fp32 here; a GPU backend with bf16 products
// keeps them in bf16, since only products, norms, RoPE and attention read them. rstd, lse
// and the residual stream are fp32. The cpu ops are rmsnorm_forward, linear_forward_many,
// rmsnorm_forward (per head), rope_forward, attention_forward, linear_forward and
// add_rmsnorm_forward, with those ops' bits; the backward likewise.
typedef struct attn_weights {
    const float *norm;               // [C]
    const float *wq, *wk, *wv, *wo;  // [Q, C], [KV, C], [KV, C], [C, Q]
    const float *bq, *bk, *bv, *bo;  // [Q], [KV], [KV], [C]; each may be NULL
    const float *q_norm, *k_norm;    // [HD] each, or both NULL: no per-head norms
} attn_weights;
typedef struct attn_grads {  // the same tensors' gradients (+=); NULL where the weight is
    float *norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo, *q_norm, *k_norm;
} attn_grads;
typedef struct attn_acts {  // what the forward pass keeps for the backward pass
    void *ln;                // [N, C]
    float *rstd;             // [N]
    void *q_raw, *k_raw;     // [N, Q], [N, KV] (only with per-head norms)
    float *q_rstd, *k_rstd;  // [N*NH], [N*KVH] (only with per-head norms)
    void *q, *k, *v;         // [N, Q], [N, KV], [N, KV], after the norms and RoPE
    void *att;               // [N, Q]
    float *lse;              // [N*NH]
} attn_acts;
typedef struct attn_batch {  // the shapes, and the batch's positions and sequences
    int N, C, NH, KVH, HD;
    float eps;                        // the norms'
    const int32_t *pos, *seg_start;   // [N] each, as rope_forward and attention_forward take them
    const float *inv_freq;            // [HD / 2]
} attn_batch;
// x [N, C] -> mid, ln2 [N, C], rstd2 [N], and a's tensors. mid, ln2 alias nothing.
void attn_forward(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                  const float *norm2, const attn_batch *b);
// Backward scratch: datt [N, Q] of act_bytes; dq [N, Q], dk and dv [N, KV] of act_bytes
// without per-head norms (in bf16 they are what the products read: the attention's
// gradients rounded, dq and dk through RoPE's backward), fp32 with them (the norms'
// backward reads them); dln [N, C], and with per-head norms dq_raw [N, Q], dk_raw [N, KV],
// 4 bytes an element (the norms' input gradients: fp32, or bf16 where the products read
// them so, as a GPU with bf16 activations keeps them). dqkv, optional (NULL: none; it may
// share its memory with dq, dk, dv): [N, Q + 2 KV] of act_bytes, without per-head norms,
// where a backend may put the three gradients side by side in each token's row and
// multiply them by the joined weights [wq; wk; wv] in one product (the GPU in bf16: one
// product of K = Q + 2 KV, not three, two of them K = KV).
typedef struct attn_scratch {
    void *datt;
    float *dln;
    void *dq, *dk, *dv;
    float *dq_raw, *dk_raw;
    void *dqkv;
} attn_scratch;
// The backward of mid (not of ln2's norm: the caller adds its gradient into dres first):
// dres [N, C] holds d/d(mid) on entry and d/d(x) on return; g's gradients are added to.
void attn_backward(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                   const attn_scratch *s, const attn_batch *b);

// ---- the MLP block of a training step ----
// gate = x · w_gate^T, up = x · w_up^T, act = silu(gate) * up; out = act · w_down^T + residual.
// x [N, C], w_gate and w_up [F, C], w_down [C, F]. x (the attention block's ln2), gate, up
// and act (and the backward's dact, dgate, dup) [N, F] take act_bytes an element
// (tp_backend): fp32 here; a GPU backend with bf16 products keeps them in bf16, since only
// bf16 products and SwiGLU read them. The cpu ops are linear_forward_many + swiglu_forward,
// linear_residual_forward, and the backward of the two, with those ops' bits.
void mlp_up_forward(void *act, void *gate, void *up, const void *x, const float *w_gate, const float *w_up, int N,
                    int C, int F);
// out [N, C] = act · w_down^T + residual [N, C]; out aliases neither.
void mlp_down_forward(float *out, const void *act, const float *w_down, const float *residual, int N, int F, int C);
// The backward of both, from dout [N, C] = d/d(out): dx [N, C] = d/d(x) WRITTEN (not
// accumulated, as linear_backward_many); dw_gate, dw_up, dw_down += their gradients.
// dact, dgate, dup [N, F] are scratch of the MLP activation type.
void mlp_backward(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x,
                  const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                  const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F);

// ---- elementwise ----
void add_inplace(float *x, const float *y, long n);  // x += y

// ---- row gather / scatter (the tokens that need logits) ----
// out[i,:] = x[idx[i],:]        x [N, C], idx [n] -> out [n, C]
void gather_rows(float *out, const float *x, const int32_t *idx, int n, int C);
// dx[idx[i],:] += dout[i,:]     idx distinct; dout [n, C] -> dx [N, C]
void scatter_add_rows(float *dx, const float *dout, const int32_t *idx, int n, int C);
// dst [.., C]: row idx[i] := src row i (distinct idx; how new keys and values enter the cache)
void scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int C);

// ---- sampling the next token of n sequences ----
// Per row of logits [n, V] (host arrays: params, token; the device op synchronizes):
//   greedy: the smallest index of the maximum logit. Otherwise, with z = logit * inv_temperature
//   (a float product) and mx = max z, a token j is kept when all hold:
//     z_j >= mx - 30                       (below that a token's mass is < e^-30 of the best's)
//     top_k > 0: z_j >= the top_k-th largest z (ties with it kept, as transformers does)
//     top_p < 1: z_j >= t_p, the largest z value t such that the mass of the kept tokens
//                with z >= t is >= top_p x the mass of the tokens kept by the rules above
//     min_p > 0: exp(z_j - mx) >= min_p  (the best token is always kept)
//   with masses w_j = exp(z_j - mx) summed in double (the cuda twin: in 2^-40 fixed point);
//   token = the first kept j, in index order, whose running mass exceeds u x the kept mass
//   (the last kept token when rounding leaves none).
typedef struct sample_params {
    float inv_temperature;
    int top_k;
    float top_p, min_p;
    double u;  // uniform in [0, 1)
    int greedy;
} sample_params;
void sample_rows(int32_t *token, const float *logits, const sample_params *params, int n, int V);

// ---- cross-entropy on a chunk of logits, fused with its gradient ----
// logits [n, V] are replaced by dloss/dlogits * scale = (softmax - onehot(target)) * scale
// for rows with target >= 0, and by zeros for rows with target < 0 (not counted).
// Returns the sum over counted rows of -log softmax(logits)[target] (in double).
// Run over chunks of tokens so a 151,936-token vocabulary never needs [N, V] floats.
double crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale);
// The output head of a training step on one chunk of n tokens: logits [n, V] = x · w^T
// (x [n, C], w [V, C]), the loss as crossentropy_forward_backward (returned), then from its
// gradient dx [n, C] WRITTEN and dw [V, C] += (linear_backward_many). logits is scratch of
// n*V elements of act_bytes each (a GPU backend with bf16 products keeps them in bf16,
// as torch's autocast computes them, and the loss from those values); here it is fp32 and
// these are those three ops' bits. (A log-prob that must equal another path's exactly, as
// GRPO's on-policy ratio needs, must come from logits of the same type on both paths.)
double head_loss_backward(float *dx, float *dw, const float *x, const float *w, const int32_t *target, void *logits,
                          int n, int C, int V, float scale);

// ---- optimizer ----
// AdamW on one tensor of n parameters, in float with torch's single-tensor order, each
// gradient read as g · grad_scale (clip_grad_norm_'s coefficient, 1 for none; g itself is
// left as it is):
//   p *= decay_factor; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²; p -= step_size · m / (sqrt(v) / bc2_sqrt + eps)
void adamw_span(float *p, const float *g, float *m, float *v, size_t n, float grad_scale, float decay_factor,
                float b1, float b2, float step_size, float bc2_sqrt, float eps);
// A range of the flat parameter buffers: floats [offset, offset + n), with weight decay or not.
typedef struct adamw_range {
    size_t offset, n;
    int decay;
} adamw_range;
// adamw_span on each of `count` ranges of the flat buffers p, g, m, v: decay_factor where the
// range decays, 1 where not (a device takes them all in one launch).
void adamw_ranges(float *p, const float *g, float *m, float *v, const adamw_range *ranges, int count,
                  float grad_scale, float decay_factor, float b1, float b2, float step_size, float bc2_sqrt,
                  float eps);
// Σ x² in double, in fixed blocks added in a fixed order (the same bits for any thread count).
double sum_squares(const float *x, size_t n);
void scale_inplace(float *x, size_t n, float s);  // x *= s

#endif
