// rng.h — the project's one seeded generator (splitmix64) and the shuffle built on it.
// Data order, initialisation and tests all use these, so a seed means the same thing
// everywhere and runs are reproducible bit for bit.
#ifndef TP_RNG_H
#define TP_RNG_H

#include <stddef.h>
#include <stdint.h>

// Next 64 random bits; *state advances.
uint64_t tp_splitmix64(uint64_t *state);
// Standard normal (Box-Muller from two 53-bit uniforms).
double tp_normal(uint64_t *state);
// The state after n more draws of tp_splitmix64 (it only adds a constant each draw), so
// a long stream can be cut into pieces generated in parallel with the same values.
uint64_t tp_splitmix64_skip(uint64_t state, uint64_t n);
// Fisher-Yates shuffle of n elements of size bytes each (from the last element down).
void tp_shuffle(void *base, size_t n, size_t size, uint64_t *state);

#endif
