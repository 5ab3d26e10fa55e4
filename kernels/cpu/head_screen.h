// head_screen.h — the index of each row's largest logit without computing every logit,
// for greedy decoding on the CPU with bf16 weights.
//
// Greedy decoding keeps one number of the output head's product, its argmax, yet a
// batch-8 decode step of a small model spends a sixth of its time reading the head for
// it (49,152 x 576 bf16 weights, 57 MB, at SmolLM2-135M's shape). An int8 copy of the
// head (half the bytes; AVX-512 VNNI, 64 multiply-adds an instruction) gives every logit
// to within a bound proven for its row and token:
//   |logit - screened| <= s_w ||q|| ||d|| + ||x|| ||e|| + gamma_IC ||x|| ||w||
// (w = s_w q + e the row and its int8 codes, x = s_x r + d the token's hidden state and
// its int8 codes, with a second code for the remainder when the state has outlying
// elements, the last term the fp32 sum's own rounding). Only the rows whose upper
// bound reaches the best lower bound are then computed exactly, as linear_forward_w16
// computes them, so the index is the one an argmax over the full product gives: the
// same bits, the first of equal maxima.
#ifndef TP_HEAD_SCREEN_H
#define TP_HEAD_SCREEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct head_screen head_screen;

// More rows within the bounds than this and a row is left to the full product.
enum { HEAD_SCREEN_MAX_CANDIDATES = 512 };

// A screen of W [V, IC] (fp32; the logits it stands for are x · W rounded to bf16, as
// w16_pack rounds it). NULL when the CPU has no AVX-512 VNNI, IC > 65,536, or W rounded
// to bf16 holds a value that is not finite.
head_screen *head_screen_new(const float *w, int V, int IC);
// The same for the logits of x · W as linear_forward_rows computes them (fp32 weights; the
// argmax below is then that of its outputs).
head_screen *head_screen_new_fp32(const float *w, int V, int IC);
void head_screen_free(head_screen *s);
size_t head_screen_bytes(const head_screen *s);  // what it holds: the codes and the per-row bounds

// top[n] := the first index of the largest of linear_forward_w16's (or, fp32,
// linear_forward_rows's) outputs for row n of x [N, IC] against W (the same W the screen
// was made from), n < N. A row it cannot
// settle (x not finite, an exact logit not finite, or more than HEAD_SCREEN_MAX_CANDIDATES
// rows within the bounds) gets -1; returns how many did. Not reentrant: the screen holds
// the call's scratch.
int head_screen_argmax(head_screen *s, const float *w, const float *x, int N, int32_t *top);

// How many rows the last call computed exactly, all its tokens together, and whether it
// gave the states a second code (for tests and benchmarks).
long head_screen_last_candidates(const head_screen *s);
bool head_screen_last_fine(const head_screen *s);
// Later calls give each state element 1 or 2 codes (0: chosen per call, the default).
void head_screen_state_codes(head_screen *s, int codes);

#endif
