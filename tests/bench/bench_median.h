// bench_median.h — the median of a benchmark's timings, for the programs in tests/bench
// (the machines are shared and noisy: every figure they print is a median).
#ifndef TP_BENCH_MEDIAN_H
#define TP_BENCH_MEDIAN_H

#include <stdlib.h>

static int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// The median of v [n] (n >= 1); v is left sorted.
static inline double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
