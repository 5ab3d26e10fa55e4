// packed_rows.h — sequence bounds of packed rows for the attention kernels (C++ side).
// seg_start[i] is the flat index of the first token of token i's sequence (kernels/ops.h).
#ifndef TP_CUDA_PACKED_ROWS_H
#define TP_CUDA_PACKED_ROWS_H

#include <stdint.h>

// The first key token i may see, clamped to [0, i] so that malformed input cannot index
// out of bounds (seg_start NULL: one sequence, as on the CPU).
static __device__ __forceinline__ int first_key(const int32_t *seg_start, int i) {
    if (!seg_start) return 0;
    int s = seg_start[i];
    return s < 0 ? 0 : (s > i ? i : s);
}

// One past the last query that can see key j: the end of j's sequence, i.e. the first
// i > j with seg_start[i] > j (seg_start is non-decreasing), or N.
static __device__ int sequence_end(const int32_t *seg_start, int j, int N) {
    if (!seg_start) return N;
    int lo = j + 1, hi = N;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (seg_start[mid] > j) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

#endif
