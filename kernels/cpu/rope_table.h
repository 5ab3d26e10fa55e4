// rope_table.h — rotary position embedding from a table of cos and sin (cpu decode).
//
// The positions of a generator call are the same in every layer, so the generator takes
// the cos and sin of their angles once a call instead of once a layer for q and again for
// k: glibc's cosf and sinf were 0.4 ms of a 16 ms SmolLM2 decode step at batch 8.
#ifndef TP_ROPE_TABLE_H
#define TP_ROPE_TABLE_H

#include <stdbool.h>
#include <stdint.h>

// cs [N, HD] := for token n, cos of its HD/2 angles a_i = pos[n] · inv_freq[i] (the fp32
// product, as rope_forward takes it), then their sin.
void rope_table(float *cs, const int32_t *pos, const float *inv_freq, int N, int HD);

// x [N, H, HD] rotated in place by the angles of table cs [N, HD]: the bits of
// rope_forward with the positions and frequencies the table was made from.
void rope_apply(float *x, const float *cs, int N, int H, int HD);

// rope_kv_cache_forward (ops.h) from a table: q [n, NH, HD] and k [n, KVH, HD] rotated in
// place, then rows kv_row[i] of the caches [rows, KVH·HD] := k, v rows i, as fp32 or
// (bf16) rounded to bf16 as weights_to_bf16 rounds.
void rope_kv_cache_table(float *q, float *k, const float *v, void *k_cache, void *v_cache, bool bf16,
                         const int32_t *kv_row, const float *cs, int n, int NH, int KVH, int HD);

#endif
