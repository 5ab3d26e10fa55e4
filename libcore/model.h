// model.h — the decoder-only transformer of Llama 3, Qwen2/2.5 (and R1-Distill-Qwen) and
// Qwen3: configuration, parameters, forward and backward over packed rows.
//
// Model code calls the ops of kernels/ops.h only. Parameters and gradients are single
// fp32 buffers in one fixed order of Hugging Face tensor names (tp_model.params), so
// a checkpoint is written by walking that list. Shapes below use:
//   V vocab, C hidden, F intermediate, L layers, NH query heads, KVH key/value heads,
//   HD head_dim, N tokens of a batch (B rows × T positions).
#ifndef TP_MODEL_H
#define TP_MODEL_H

#include <jv.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

typedef enum tp_arch { TP_ARCH_LLAMA, TP_ARCH_QWEN2, TP_ARCH_QWEN3 } tp_arch;

typedef struct tp_model_config {
    tp_arch arch;
    int vocab_size;         // V
    int hidden_size;        // C
    int intermediate_size;  // F
    int num_layers;         // L
    int num_heads;          // NH
    int num_kv_heads;       // KVH (GQA: NH % KVH == 0)
    int head_dim;           // HD (config "head_dim", else C / NH)
    int max_position_embeddings;
    double rope_theta, rms_norm_eps, initializer_range;
    bool tie_word_embeddings;
    bool qkv_bias;  // q/k/v projections have biases (Qwen2 always; Llama/Qwen3 with attention_bias)
    bool o_bias;    // o_proj has a bias (Llama/Qwen3 with attention_bias; never Qwen2)
    bool qk_norm;   // per-head RMSNorm on q and k before RoPE (Qwen3)
    bool rope_llama3;  // rope_scaling {"rope_type": "llama3", ...}
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    bool rope_freq_factors;  // a GGUF's rope_freqs.weight divides the frequencies (llama.cpp's Llama 3 form)
    tp_dtype dtype;  // torch_dtype of the checkpoint (F32, BF16 or F16), the default dtype to save in
} tp_model_config;

// Parses a config.json object. Unsupported architectures or settings (another
// hidden_act, sliding windows, other rope_scaling types, mlp_bias) are refused.
int tp_model_config_parse(jv config, tp_model_config *c, tp_err *err);
const char *tp_arch_name(tp_arch a);  // the HF class name, e.g. "Qwen3ForCausalLM"

typedef enum tp_param_kind { TP_PARAM_MATRIX, TP_PARAM_EMBEDDING, TP_PARAM_NORM, TP_PARAM_BIAS } tp_param_kind;

// One parameter tensor: its HF name, shape and place in the parameter buffer.
typedef struct tp_param {
    char name[80];
    tp_param_kind kind;
    int ndim;
    int64_t shape[2];
    size_t offset, numel;  // in floats, into tp_model.w (and .g)
} tp_param;

// Pointers into one parameter-shaped buffer (weights or gradients). Absent tensors are NULL.
typedef struct tp_layer_tensors {
    float *ln1;                 // input_layernorm [C]
    float *wq, *bq;             // q_proj [NH*HD, C], bias [NH*HD]
    float *wk, *bk, *wv, *bv;   // k_proj, v_proj [KVH*HD, C], biases [KVH*HD]
    float *wo, *bo;             // o_proj [C, NH*HD], bias [C]
    float *q_norm, *k_norm;     // [HD] (Qwen3)
    float *ln2;                 // post_attention_layernorm [C]
    float *w_gate, *w_up;       // gate_proj, up_proj [F, C]
    float *w_down;              // down_proj [C, F]
} tp_layer_tensors;

typedef struct tp_model_tensors {
    float *embed;              // embed_tokens [V, C]
    tp_layer_tensors *layers;  // [L]
    float *norm;               // final norm [C]
    float *lm_head;            // [V, C]; == embed when tied
} tp_model_tensors;

// One batch of packed rows. A row holds sequences back to back; seg_start[n] is the
// flat index of the first token of token n's sequence (tp_batch_seg_start builds it).
// loss_mask[n] = 1 marks token n as a training TARGET: the logits at n-1 predict it
// when n-1 is in the same sequence.
typedef struct tp_batch {
    int B, T;
    const int32_t *input_ids;     // [B*T]
    const int32_t *position_ids;  // [B*T]
    const int32_t *seg_start;     // [B*T]
    const uint8_t *loss_mask;     // [B*T], or NULL: no loss
} tp_batch;

// seg_start [B*T] from each row's sequence starts (row r: starts[r][0..count[r]-1],
// the first one 0, increasing, each < T). -1 on bad starts.
int tp_batch_seg_start(int32_t *seg_start, int B, int T, const int32_t *const *starts, const int *count);

typedef struct tp_activations tp_activations;
struct tp_backend;

typedef struct tp_model {
    tp_model_config cfg;
    jv config_json;  // the config object, as loaded (written back with checkpoints)
    tp_param *params;
    int n_params;
    size_t n_floats;
    float *w;  // all parameters [n_floats]
    float *g;  // gradients [n_floats], NULL until tp_model_zero_grad
    tp_model_tensors W, G;
    float *inv_freq;  // RoPE frequencies [HD/2], llama3 scaling applied
    bool recompute;   // keep only each layer's input; recompute the rest during backward
    tp_activations *acts;
    char *load_note;
    // Where forward and backward run (tp_model_use_backend); NULL means the cpu backend.
    // On a device backend W, G and the optimizer work on dev_w / dev_g, and w, g are
    // host copies refreshed by tp_model_pull / tp_model_push.
    const struct tp_backend *be;
    float *dev_w, *dev_g, *dev_inv_freq;  // what the loader wants said (e.g. a GGUF's tokenizer metadata), or NULL
} tp_model;

// A model with the config's shapes and zeroed parameters (tp_model_init_weights fills them).
tp_model *tp_model_new(jv config, tp_err *err);  // takes config
// Random initialisation as transformers does it: N(0, initializer_range) for matrices and
// the embedding, ones for norms, zeros for biases. Deterministic in seed.
void tp_model_init_weights(tp_model *m, uint64_t seed);
// Loads a model directory (config.json + model.safetensors or shards; F32/BF16/F16) or a
// .gguf file. Every expected tensor must be present with the configured shape; NaN or
// Inf values and unexpected tensors are refused, naming the tensor.
tp_model *tp_model_load(const char *path, tp_err *err);
void tp_model_free(tp_model *m);
const tp_param *tp_model_find_param(const tp_model *m, const char *name);

typedef struct tp_loss {
    double sum;      // sum over counted targets of -log p(target)
    int64_t count;   // counted targets
} tp_loss;

// Forward pass. loss: when the batch has a loss mask. logits: when non-NULL, the logits
// [n_out, V] of the tokens listed in out_rows (flat indices), or of all N tokens when
// out_rows is NULL (n_out ignored). Activations for a backward pass are not kept.
int tp_model_forward(tp_model *m, const tp_batch *b, tp_loss *loss, const int32_t *out_rows, int n_out,
                     float *logits, tp_err *err);
// Log-probabilities log softmax(logits / temperature)[targets[i]] at the flat rows rows[i]
// (row r predicts the token after it) into out [n]: the training forward's arithmetic, so a
// policy's log-probs are the same bits in rollout and in grpo-step for the same batch.
int tp_model_logprobs(tp_model *m, const tp_batch *b, const int32_t *rows, const int32_t *targets, int n,
                      float temperature, double *out, tp_err *err);
// The same, and the k most likely tokens at each row with their log-probs (best first) into
// top_ids, top_lp [n, k] (OpenAI's top_logprobs).
int tp_model_logprobs_top(tp_model *m, const tp_batch *b, const int32_t *rows, const int32_t *targets, int n,
                          float temperature, double *out, int k, int32_t *top_ids, double *top_lp, tp_err *err);
// Forward and backward: accumulates loss_scale * d(loss sum)/d(params) into m->g (call
// tp_model_zero_grad first; micro-batches of one step accumulate). loss_scale = 1/count
// of the global batch gives the mean over its targets.
int tp_model_forward_backward(tp_model *m, const tp_batch *b, float loss_scale, tp_loss *loss, tp_err *err);
void tp_model_zero_grad(tp_model *m);

// Moves the model to backend be (tp_backend_named): on a device, allocates and uploads the
// weights (and the gradients when train is set). Fails with the sizes asked for and what
// is free when the device is out of memory.
int tp_model_use_backend(tp_model *m, const struct tp_backend *be, bool train, tp_err *err);
const struct tp_backend *tp_model_backend(const tp_model *m);
// The --device / --matmul options of the programs: the backend named by device ("cpu",
// "cuda", "auto"; NULL: auto) with matrix products in matmul (NULL: bf16 on a GPU, fp32 on
// the cpu), then tp_model_use_backend. desc gets one line for the log, e.g. "cuda: NVIDIA
// H100 80GB HBM3 (sm_90, 79 GiB), matrix products in bf16".
int tp_model_place(tp_model *m, const char *device, const char *matmul, bool train, char *desc, int cap,
                   tp_err *err);
// The buffers the backend computes on: m->w / m->g on the cpu, dev_w / dev_g on a device.
float *tp_model_weights(tp_model *m);
float *tp_model_grads(tp_model *m);
// Device to host: the weights into m->w, and the gradients into m->g (allocated) when grads.
void tp_model_pull(tp_model *m, bool grads);
// Host to device: m->w into the device weights (after loading an optimizer state, say).
void tp_model_push(tp_model *m);

#endif
