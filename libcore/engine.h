// engine.h — the sampling loop behind rollout (and serve): requests of n samples each,
// one shared prefill per request, running samples decoded together, stops, and requests
// handed back in the order they came in. Batching is continuous by sample: a request
// starts when one slot is free; its other samples (first tokens already drawn) copy the
// prompt's cache into slots as they free up, before any newer request starts.
//
//   tp_engine *e = tp_engine_new(model, tokenizer, &opts, &err);
//   while (more input) {
//       while (!tp_engine_can_submit(e)) tp_engine_step(e, &err), drain(e);
//       if (!tp_engine_submit(e, prompt_ids, n_prompt, &ro, user, &err)) fail;
//   }
//   while (tp_engine_busy(e)) tp_engine_step(e, &err), drain(e);
//   drain: for (tp_request *r; (r = tp_engine_next_done(e));) { use r; tp_request_free(r); }
#ifndef TP_ENGINE_H
#define TP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"
#include "sample.h"
#include "tokenizer.h"

// The engine's: the cache and what ends every sample.
typedef struct tp_engine_opts {
    int max_batch;     // KV-cache slots: sequences decoded together
    int max_len;       // prompt + completion tokens a slot holds
    const int32_t *eos;  // token ids that end a sample (kept in its tokens)
    int n_eos;
    const char *stop;    // a stop string for every request (a template's end of turn that the
                         // tokenizer spells in pieces), or NULL
    bool bf16_weights;   // cpu: decode with bf16 copies of the weights (tp_generator_bf16_weights)
    bool kv_bf16;        // cpu: a KV cache of bf16 rows (tp_generator_new_kv)
    bool greedy;         // cpu: requests will be greedy, so the head's screen for argmax
                         // steps is made now (tp_generator_prepare_argmax), not at the
                         // first greedy step
} tp_engine_opts;

// A request's: how many samples, how they are drawn and when they end.
typedef struct tp_request_opts {
    tp_sampler sampler;
    int n;             // samples (any number: those without a slot wait for one)
    int max_new;       // completion tokens at most
    uint64_t seed;     // sample k draws from its own stream of (seed, k)
    const char *stop[16];  // stop strings (the text ends before the first found)
    int n_stop;
    bool ignore_eos;   // only max_new, max_len and stop strings end it (vLLM's ignore_eos)
    // Record each drawn token's log-prob under the step's logits at temperature 1 (the raw
    // distribution, as vLLM reports them while streaming) and the top_logprobs (<= 20) most
    // likely tokens. These are the KV-cache forward's numbers, within rounding of the
    // training forward's that rollout and --score give.
    bool logprobs;
    int top_logprobs;
} tp_request_opts;

typedef struct tp_sample_out {
    tp_ids tokens;
    const char *finish;  // "stop" or "length" once finished, NULL while running
    bool cut;            // a stop string ended it: the text is cut at text_len bytes
    size_t text_len;
    int slot;            // its KV-cache slot; -1 while waiting for one, and once finished
    uint64_t rng;
    // with logprobs: [tokens.count] log-probs, [tokens.count * top_logprobs] alternatives
    double *logprob, *top_logprob;
    int32_t *top;
    size_t lp_cap;
} tp_sample_out;

typedef struct tp_request {
    void *user;     // the caller's
    uint64_t index; // submission order (0, 1, ...)
    tp_request_opts o;
    tp_ids prompt;
    int n, done;
    tp_sample_out *s;  // [n]
} tp_request;

typedef struct tp_engine tp_engine;

// What ends a sample of model m rendered with template tmpl: config.json's eos_token_id (a
// number or a list), tokenizer_config.json's eos_token and the template's end-of-turn token,
// into ids (at most cap; returns the count). When the tokenizer spells the end of turn in
// pieces, *stop is set to its text (a stop string then), else NULL.
int tp_engine_eos(const tp_model *m, const tp_tokenizer *tok, int tmpl, int32_t *ids, int cap, const char **stop);

tp_engine *tp_engine_new(tp_model *m, const tp_tokenizer *tok, const tp_engine_opts *opts, tp_err *err);
void tp_engine_free(tp_engine *e);
// Bytes of KV cache a token takes (tp_generator_kv_bytes_per_token of the engine's cache).
size_t tp_engine_kv_bytes_per_token(const tp_engine *e);
// A free slot, and no sample of an earlier request waiting for one.
bool tp_engine_can_submit(const tp_engine *e);
int tp_engine_waiting(const tp_engine *e);  // samples waiting for a slot
bool tp_engine_busy(const tp_engine *e);      // requests not yet handed back
// Prefills the prompt once, draws the n samples' first tokens and gives the samples the
// free slots (copies of the prompt's cache). Fails when the prompt leaves no room for a
// new token within max_len, or when !tp_engine_can_submit.
// Returns the request (the engine's until it is handed back), or NULL with the reason.
tp_request *tp_engine_submit(tp_engine *e, const int32_t *prompt, int n_prompt, const tp_request_opts *ro,
                             void *user, tp_err *err);
// One decode step of every running sample; returns the tokens decoded.
int tp_engine_step(tp_engine *e, tp_err *err);
// The oldest request, once all its samples finished (NULL otherwise); the caller frees it.
tp_request *tp_engine_next_done(tp_engine *e);
// Ends r's running samples (finish "abort": a client went away) and frees their slots.
void tp_engine_cancel(tp_engine *e, tp_request *r);
// Takes a finished request out of the engine, wherever it is in the order; the caller frees it.
void tp_engine_remove(tp_engine *e, tp_request *r);
void tp_request_free(tp_request *r);
// Decoded text of a finished sample (special tokens skipped, cut at a stop string) into out.
int tp_engine_text(const tp_engine *e, const tp_sample_out *s, tp_buf *out, tp_err *err);
// The same text built in pieces: appends the text of tokens [from, count) to out, which
// holds the text of the tokens before them (then cut at the stop string, as above).
int tp_engine_text_append(const tp_engine *e, const tp_sample_out *s, size_t from, tp_buf *out, tp_err *err);

#endif
