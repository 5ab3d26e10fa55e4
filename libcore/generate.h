// generate.h — running the model token by token with a KV cache: prefill and decode for
// many sequences at once (batched matrix products), as rollout and serve need.
//
// The cache has n_slots slots of cap tokens each; a sequence lives in one slot. Calls
// process a list of (slot, token) pairs in order: a prompt is many pairs of one slot, a
// decode step one pair for each running slot. Each token attends to its slot's cached
// tokens and itself, so prefill and decode share one code path.
#ifndef TP_GENERATE_H
#define TP_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct tp_generator tp_generator;

// A cache of n_slots x cap tokens for m, in the memory of m's backend (tp_model_backend).
// Fails with the size asked for when it cannot be allocated.
tp_generator *tp_generator_new(tp_model *m, int n_slots, int cap, tp_err *err);
// The same with the cache's keys and values stored in bf16 when kv_bf16 (cpu backend only;
// an error on a GPU): half the memory a token holds and half the bytes a decode step
// reads. Keys (after RoPE) and values are rounded as they enter the cache; the attention
// of later tokens reads them widened, in fp32 arithmetic. A prompt's own tokens attend to
// each other in fp32 (the prefill runs the training forward's attention).
tp_generator *tp_generator_new_kv(tp_model *m, int n_slots, int cap, bool kv_bf16, tp_err *err);
void tp_generator_free(tp_generator *g);
// cpu backend: keep bf16 copies of the weight matrices (2 bytes a parameter) and compute
// with them from now on (decode steps read every weight once a step: half the bytes);
// fp32 products on the widened weights, so generation is the model with its matrices
// rounded to bf16. An error on a GPU.
int tp_generator_bf16_weights(tp_generator *g, tp_err *err);
size_t tp_kv_bytes_per_token(const tp_model *m);  // keys and values of one token, all layers, fp32
size_t tp_generator_kv_bytes_per_token(const tp_generator *g);  // the same in g's cache
int tp_generator_len(const tp_generator *g, int slot);  // tokens cached in slot
void tp_generator_reset(tp_generator *g, int slot);     // empties slot
void tp_generator_truncate(tp_generator *g, int slot, int n);  // keeps its first n tokens
// dst := the first n tokens of src (n < 0: all of them): n samples share one prompt's prefill.
void tp_generator_copy(tp_generator *g, int dst, int src, int n);

// Appends token[i] to slot[i]'s sequence for i = 0..n-1 (a slot may appear several times:
// its tokens in order) and writes the logits [n_out, V] of the tokens at out_idx[0..n_out-1]
// (indices into the n pairs) into logits (host memory) when it is not NULL. -1 when a slot
// would exceed its capacity, or with the backend's first error.
int tp_generator_forward(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out, const int *out_idx,
                         float *logits, tp_err *err);
// The same call keeping only each out row's largest logit: top[i] := the index of the first
// largest logit of row i, as argmax over tp_generator_forward's logits gives it (cpu only;
// what greedy decoding draws). On a CPU with AVX-512 VNNI an int8 copy of the head (made at
// the first such call: 1 byte a head weight) screens the vocabulary and only the rows that
// could be the largest are computed exactly, in the full product's arithmetic: the same
// indices, for half (bf16 weights) or a quarter (fp32) of the head's reading
// (cpu/head_screen.h). With fp32 weights only for calls of up to 16 out rows (past that
// the full product is the BLAS's).
int tp_generator_forward_argmax(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out,
                                const int *out_idx, int32_t *top, tp_err *err);
// Makes the screen now if it can be made (cpu, AVX-512 VNNI; not with TP_HEAD_SCREEN=0 in
// the environment, for comparing: the same tokens) and is not yet (after
// tp_generator_bf16_weights when there are bf16 weights: making them drops it):
// 0.1-0.3 s and 1 byte a head weight at SmolLM2-135M's shape, better spent before the
// first step than during it when every request will be greedy.
void tp_generator_prepare_argmax(tp_generator *g);
bool tp_generator_has_screen(const tp_generator *g);
// How many logits the last argmax call through the screen computed exactly (all rows); -1
// without a screen.
long tp_generator_screened_rows(const tp_generator *g);
// Where the last call's logits [n_out, V] are, in the backend's memory (valid until the next call).
const float *tp_generator_logits(const tp_generator *g);
// How many calls ran as a replayed CUDA graph (decode steps on a GPU; 0 elsewhere, or with
// TP_CUDA_GRAPHS=0 in the environment).
unsigned long tp_generator_graph_launches(const tp_generator *g);

#endif
