// profile.cu — where the device time goes, op by op (TP_PROFILE=1 in the environment).
//
// Each op of the cuda backend is bracketed by two CUDA events; the stop event is waited
// for, so the ops run one at a time (a profiled run is slower) but each one's time is its
// own. At exit a table of calls, milliseconds and shares goes to stderr. An op made of
// several kinds of work (mlp.cu's, the training head) marks where each part ends
// (cuda_profile_part), so products, SwiGLU and the loss keep rows of their own.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

enum { MAX_OPS = 64 };
static struct {
    const char *name;
    long calls;
    double ms;
} ops[MAX_OPS];
static int n_ops;
static cudaEvent_t start_ev, stop_ev, part_ev[2];
static cudaEvent_t *since;  // while an op is timed: the event its next part or its end counts from
static int next_part;       // which of part_ev the next part records
static bool parted;         // the op being timed marked a part: its end counts time, not a call
static bool ready;

static void report(void) {
    double total = 0;
    for (int i = 0; i < n_ops; i++) total += ops[i].ms;
    fprintf(stderr, "TP_PROFILE: device time by op (%.1f ms in all)\n", total);
    for (int i = 0; i < n_ops; i++)
        if (ops[i].calls)
            fprintf(stderr, "  %-32s %8ld calls %10.2f ms %5.1f%%\n", ops[i].name, ops[i].calls, ops[i].ms,
                    total > 0 ? 100 * ops[i].ms / total : 0);
}

extern "C" int cuda_profile_op(const char *name) {
    for (int i = 0; i < n_ops; i++)
        if (!strcmp(ops[i].name, name)) return i;
    if (n_ops == MAX_OPS) return -1;
    ops[n_ops].name = name;
    return n_ops++;
}

extern "C" void cuda_profile_begin(void) {
    if (!ready) {
        CUDA_CHECK(cudaEventCreate(&start_ev));
        CUDA_CHECK(cudaEventCreate(&stop_ev));
        CUDA_CHECK(cudaEventCreate(&part_ev[0]));
        CUDA_CHECK(cudaEventCreate(&part_ev[1]));
        atexit(report);
        ready = true;
    }
    CUDA_CHECK(cudaEventRecord(start_ev, cuda_stream()));
    since = &start_ev;
    parted = false;
}

// The device time since `since` (then waited for) added to row op, and a call when
// counted; `since` moves to ev.
static void count_until(cudaEvent_t *ev, int op, bool counted) {
    CUDA_CHECK(cudaEventRecord(*ev, cuda_stream()));
    CUDA_CHECK(cudaEventSynchronize(*ev));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, *since, *ev));
    if (op >= 0) ops[op].calls += counted, ops[op].ms += ms;
    since = ev;
}

extern "C" void cuda_profile_part(const char *name) {
    if (!since) return;  // not profiling, or outside an op
    count_until(&part_ev[next_part], cuda_profile_op(name), true);
    next_part ^= 1;
    parted = true;
}

extern "C" void cuda_profile_end(int op) {
    count_until(&stop_ev, op, !parted);  // an op in parts marks its last one itself
    since = NULL;
}
