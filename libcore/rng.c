#include "rng.h"

#include <math.h>
#include <string.h>

uint64_t tp_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t tp_splitmix64_skip(uint64_t state, uint64_t n) { return state + n * 0x9E3779B97F4A7C15ull; }

double tp_normal(uint64_t *s) {
    double u1 = ((tp_splitmix64(s) >> 11) + 1) * 0x1.0p-53, u2 = (tp_splitmix64(s) >> 11) * 0x1.0p-53;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

void tp_shuffle(void *base, size_t n, size_t size, uint64_t *state) {
    unsigned char *b = base, tmp[256];
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(tp_splitmix64(state) % i);
        for (size_t done = 0; done < size; done += sizeof tmp) {  // elements of any size
            size_t k = size - done < sizeof tmp ? size - done : sizeof tmp;
            memcpy(tmp, b + (i - 1) * size + done, k);
            memcpy(b + (i - 1) * size + done, b + j * size + done, k);
            memcpy(b + j * size + done, tmp, k);
        }
    }
}
