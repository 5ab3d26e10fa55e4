// attention_shared.h — decode attention for sequences whose caches begin with the same
// rows: the n samples of one prompt, each slot holding a copy of the prompt's keys and
// values (rollout -n, serve's n).
//
// A decode step reads every cached row of every sequence; a group of samples reads the
// prompt's rows once per sample although they are equal. Here the tokens of a group
// read them once per unit of work (one a thread), each block of rows used by every token
// of the unit while it is in L1; the rows after the shared ones are read from each token's
// own cache as before.
#ifndef TP_ATTENTION_SHARED_H
#define TP_ATTENTION_SHARED_H

#include <stdbool.h>
#include <stdint.h>

// ops.h's attention_decode (bf16 false: fp32 rows) or kv_bf16.h's attention_decode_bf16
// (bf16 true), where token i's first share_len[i] cached rows equal, bit for bit, the rows
// from share_row0[i] on (another slot's copy of them; share_len NULL or 0: none). Tokens
// with the same share_row0 read those rows from there, together. The output is the same
// bits as without the sharing: each token's scores and sums are computed in the same
// order whatever it is grouped with.
void attention_decode_shared(float *out, const float *q, const void *k, const void *v, bool bf16, const int32_t *row0,
                             const int32_t *len, const int32_t *share_row0, const int32_t *share_len, int n, int NH,
                             int KVH, int HD, float scale);

// Whether attention_decode_shared reads shared rows once for n tokens of head size HD on
// this CPU (the AVX-512 kernels, HD 64 or 128, a batch of at least 2 tokens a thread);
// elsewhere it reads every token's own rows, with the same result.
bool attention_decode_shares_rows(int HD, int n);

#endif
