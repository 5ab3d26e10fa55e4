// kv_bf16.h — a KV cache of bf16 rows on the CPU (rollout --kv-cache bf16).
//
// A decode step reads every cached key and value of its sequences; in bf16 that is half
// the bytes of the fp32 cache (ops.h's attention_decode) and half the memory a token
// holds. Keys and values are rounded to bf16 as they enter the cache (after RoPE,
// cpu/rope_table.h's rope_kv_cache_table), and widened exactly as they are read; scores,
// softmax and sums stay fp32.
#ifndef TP_KV_BF16_H
#define TP_KV_BF16_H

#include <stdint.h>

// attention_decode (ops.h) on caches of bf16 rows: the same arithmetic on the widened
// values, so the same bits as attention_decode on an fp32 cache holding those values.
void attention_decode_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v, const int32_t *row0,
                           const int32_t *len, int n, int NH, int KVH, int HD, float scale);

#endif
