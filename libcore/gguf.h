// gguf.h — GGUF files (llama.cpp's format), read as fp32 and as a Hugging Face checkpoint.
//
// File layout (GGUF v2/v3, little-endian): "GGUF", u32 version, u64 tensor count, u64
// KV count; the KV pairs (string key, u32 value type, value); the tensor infos (string
// name, u32 n_dims, u64 ne[n_dims] with ne[0] the fastest-varying dimension, u32 type,
// u64 offset into the data section); padding to general.alignment (default 32); the
// data section. Strings are a u64 byte length and the bytes; arrays are a u32 element
// type, a u64 count and the elements.
//
// tp_gguf_open validates everything before anything is used: counts bounded by the
// bytes left, strings inside the file, known value and tensor types, ne products that
// do not overflow, ne[0] a whole number of blocks, offsets aligned, tensor data inside
// the file and not overlapping, unique names and keys. Errors name the file and the
// byte offset or the tensor.
#ifndef TP_GGUF_H
#define TP_GGUF_H

#include <jv.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

// ggml's type ids (values are part of the format).
typedef enum tp_gguf_type {
    TP_GGUF_F32 = 0, TP_GGUF_F16 = 1, TP_GGUF_Q4_0 = 2, TP_GGUF_Q4_1 = 3,
    TP_GGUF_Q5_0 = 6, TP_GGUF_Q5_1 = 7, TP_GGUF_Q8_0 = 8, TP_GGUF_Q8_1 = 9,
    TP_GGUF_Q2_K = 10, TP_GGUF_Q3_K = 11, TP_GGUF_Q4_K = 12, TP_GGUF_Q5_K = 13,
    TP_GGUF_Q6_K = 14, TP_GGUF_Q8_K = 15, TP_GGUF_IQ2_XXS = 16, TP_GGUF_IQ2_XS = 17,
    TP_GGUF_IQ3_XXS = 18, TP_GGUF_IQ1_S = 19, TP_GGUF_IQ4_NL = 20, TP_GGUF_IQ3_S = 21,
    TP_GGUF_IQ2_S = 22, TP_GGUF_IQ4_XS = 23, TP_GGUF_I8 = 24, TP_GGUF_I16 = 25,
    TP_GGUF_I32 = 26, TP_GGUF_I64 = 27, TP_GGUF_F64 = 28, TP_GGUF_IQ1_M = 29,
    TP_GGUF_BF16 = 30, TP_GGUF_TQ1_0 = 34, TP_GGUF_TQ2_0 = 35, TP_GGUF_MXFP4 = 39,
    TP_GGUF_TYPE_END = 40
} tp_gguf_type;

// "Q4_K", or NULL for an id ggml does not define.
const char *tp_gguf_type_name(int type);
// Whether tp_gguf_dequantize handles the type: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
int tp_gguf_type_supported(int type);

enum { TP_GGUF_MAX_DIMS = 4 };

typedef struct tp_gguf_tensor {
    const char *name;
    tp_gguf_type type;
    int n_dims;                      // 0..4
    int64_t ne[TP_GGUF_MAX_DIMS];    // ne[0] fastest-varying; dims past n_dims are 1
    uint64_t nelem;                  // product of ne
    uint64_t offset, nbytes;         // byte range within the data section
    const uint8_t *data;             // inside the mapping; no alignment promised
    const char *file;                // the file's name, for messages
} tp_gguf_tensor;

typedef struct tp_gguf tp_gguf;

tp_gguf *tp_gguf_open(const char *path, tp_err *err);
// The same over a caller's bytes (kept alive by the caller until close); name is for messages.
tp_gguf *tp_gguf_from_mem(const void *data, size_t len, const char *name, tp_err *err);
void tp_gguf_close(tp_gguf *g);

int tp_gguf_version(const tp_gguf *g);
// All KV pairs as an object (owned by the caller): integers and floats as numbers
// (64-bit integers beyond 2^53 lose precision, as in any JSON), bools, strings (invalid
// UTF-8 replaced by U+FFFD), arrays (nested ones too). Key order is file order.
jv tp_gguf_metadata(const tp_gguf *g);

int tp_gguf_tensor_count(const tp_gguf *g);
const tp_gguf_tensor *tp_gguf_tensor_at(const tp_gguf *g, int i);  // file order; NULL out of range
const tp_gguf_tensor *tp_gguf_find(const tp_gguf *g, const char *name);

// Dequantizes t into out[t->nelem], in file order (ne[0] fastest). Values equal gguf-py's
// gguf.quants.dequantize bit for bit. Types not supported are refused with a message
// naming the tensor and the type.
int tp_gguf_dequantize(const tp_gguf_tensor *t, float *out, tp_err *err);

// The Hugging Face view, for loaders that expect config.json + model.safetensors.
//
// A config.json-equivalent object (owned by the caller) from the metadata, for
// general.architecture llama, qwen2 or qwen3 — every key transformers' GGUF loader derives,
// with the same values: architectures, model_type, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (attention.key_length,
// else rope.dimension_count; a rotary part narrower than the head is refused), rms_norm_eps
// (the file's float32, widened), rope_theta, max_position_embeddings, vocab_size,
// tie_word_embeddings (true when output.weight is absent), hidden_act, attention_bias
// (llama, qwen3), bos/eos/unk/pad_token_id, and rope_scaling when the file has
// rope.scaling.type, or
// {"rope_type": "freq_factors", "tensor": "rope_freqs.weight"} when it stores per-frequency
// divisors instead (llama.cpp's form of Llama 3 scaling: inv_freq[i] / factor[i]).
// Other architectures are refused. Returns jv_invalid() with err set on failure.
jv tp_gguf_hf_config(const tp_gguf *g, tp_err *err);

// The tensor Hugging Face calls hf_name ("model.embed_tokens.weight",
// "model.layers.3.self_attn.q_proj.weight", "lm_head.weight", ...) as fp32 in HF's
// row-major shape (GGUF's ne reversed: [out, in] for linear weights), with llama's q/k
// row permutation undone. out may be NULL to ask only for the shape; otherwise it
// holds cap floats. Returns 1 found, 0 absent (lm_head.weight of a tied model is
// absent, as in HF checkpoints), -1 error.
int tp_gguf_read_hf(const tp_gguf *g, const char *hf_name, float *out, size_t cap, int64_t shape[TP_GGUF_MAX_DIMS],
                    int *ndim, tp_err *err);
// HF name of a GGUF tensor name ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight");
// 1 mapped, 0 no HF equivalent (e.g. rope_freqs.weight) or buf too small.
int tp_gguf_hf_name(const char *gguf_name, char *buf, size_t n);

// One line about the tokenizer metadata: model, pre-tokenizer, token and merge counts,
// bos/eos ids, whether a chat template is present. Returns snprintf's length.
int tp_gguf_tokenizer_summary(const tp_gguf *g, char *buf, size_t n);

#endif
