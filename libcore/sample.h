// sample.h — the next token from a row of logits: greedy, or temperature, top-k, top-p
// and min-p in transformers' order (TemperatureLogitsWarper, TopK, TopP, MinP), drawn with
// the sequence's own splitmix64 stream so a seed gives the same tokens however sequences
// are batched.
#ifndef TP_SAMPLE_H
#define TP_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct tp_sampler {
    bool greedy;         // argmax (the first of equal maxima, as torch.argmax)
    double temperature;  // > 0 (0 means greedy)
    int top_k;           // keep the k largest (0: all)
    double top_p;        // keep the smallest most-likely set with mass >= top_p (1: all)
    double min_p;        // keep tokens with p >= min_p * max p (0: all)
} tp_sampler;

// Scratch for one row of V logits (reused across calls, grown as needed).
typedef struct tp_sample_scratch {
    float *p;      // [V] exp(z - max z)
    float *z;      // [V] z = logits / T (NaN: -inf), kept for the filters' passes
    void *vals;    // 8 V bytes: top-k's candidate logits (float), or top-p's edge bucket ((logit, id) pairs)
    double *mass;  // [max(blocks, buckets)] masses by block of tokens or by logit bucket
    int32_t *bk;   // [V] top-p: each token's logit bucket (-1: filtered out before top-p)
    int cap;
} tp_sample_scratch;

// Whether s draws the argmax: greedy, or temperature 0.
static inline bool tp_sampler_is_greedy(const tp_sampler *s) { return s->greedy || s->temperature <= 0; }

int32_t tp_sample(const tp_sampler *s, const float *logits, int V, uint64_t *rng, tp_sample_scratch *scratch);
void tp_sample_scratch_free(tp_sample_scratch *scratch);

#endif
