// profile.cu — where the device time goes, op by op (TP_PROFILE=1 in the environment).
//
// Each op of the cuda backend is bracketed by two CUDA events; the stop event is waited
// for, so the ops run one at a time (a profiled run is slower) but each one's time is its
// own. At exit a table of calls, milliseconds and shares goes to stderr. An op made of
// several kinds of work (mlp.cu's, the training head) marks where each part ends
// (cuda_profile_part), so products, SwiGLU and the loss keep rows of their own.
// A second table times each cuBLAS product inside those ops (linear.cu brackets them), by
// shape, with its TFLOP/s: the op rows' time less the products' is the wrapper's (operand
// conversions, bias and residual kernels), and a shape far below bench_cuda_gemm's rate for
// it points at cuBLAS's algorithm choice.
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

// One cuBLAS call's shape as cuBLAS counts it (column-major op(A) [m, k], op(B) [k, n]),
// operand and output types, whether it accumulated into C, and which API ran it.
struct product_key {
    const char *row;  // the op row (or part) its time went to
    int m, n, k;
    bool ta, tb, in16, out16, accumulate, lt;
};
enum { MAX_TIMED = 256, MAX_SHAPES = 128 };
static cudaEvent_t timed_ev[MAX_TIMED][2];
static product_key timed[MAX_TIMED];  // products of the op being timed, settled at its end
static int n_timed;
static long untimed;  // products past MAX_TIMED in one op or MAX_SHAPES shapes (the report says how many)
static struct shape_row {
    product_key key;
    long calls;
    double ms;
} shapes[MAX_SHAPES];
static int n_shapes;

static bool same_product(const product_key &a, const product_key &b) {
    return !strcmp(a.row, b.row) && a.m == b.m && a.n == b.n && a.k == b.k && a.ta == b.ta && a.tb == b.tb &&
           a.in16 == b.in16 && a.out16 == b.out16 && a.accumulate == b.accumulate && a.lt == b.lt;
}

static int by_time(const void *a, const void *b) {
    const double x = ((const shape_row *)a)->ms, y = ((const shape_row *)b)->ms;
    return (x < y) - (x > y);
}

static void report_products(double all_ms) {
    if (!n_shapes) return;
    qsort(shapes, n_shapes, sizeof shapes[0], by_time);
    double total = 0;
    for (int i = 0; i < n_shapes; i++) total += shapes[i].ms;
    fprintf(stderr, "TP_PROFILE: cuBLAS products by shape (%.1f ms, %.1f%% of the ops' time; M N K as cuBLAS "
                    "counts them, column-major; +C: accumulated into C)\n", total,
            all_ms > 0 ? 100 * total / all_ms : 0);
    for (int i = 0; i < n_shapes; i++) {
        const product_key &k = shapes[i].key;
        const double flops = 2.0 * k.m * k.n * k.k * shapes[i].calls;
        char shape[96];
        snprintf(shape, sizeof shape, "%c%c %dx%dx%d %s->%s%s %s", k.ta ? 'T' : 'N', k.tb ? 'T' : 'N', k.m, k.n, k.k,
                 k.in16 ? "bf16" : "f32", k.out16 ? "bf16" : "f32", k.accumulate ? "+C" : "", k.lt ? "lt" : "gemmex");
        fprintf(stderr, "  %-18s %-40s %6ld calls %9.2f ms %7.1f TFLOP/s\n", k.row, shape, shapes[i].calls,
                shapes[i].ms, shapes[i].ms > 0 ? flops / (shapes[i].ms * 1e9) : 0);
    }
    if (untimed) fprintf(stderr, "  (%ld products not in this table: over %d in one op or %d shapes)\n", untimed,
                         (int)MAX_TIMED, (int)MAX_SHAPES);
}

static void report(void) {
    double total = 0;
    for (int i = 0; i < n_ops; i++) total += ops[i].ms;
    fprintf(stderr, "TP_PROFILE: device time by op (%.1f ms in all)\n", total);
    for (int i = 0; i < n_ops; i++)
        if (ops[i].calls)
            fprintf(stderr, "  %-32s %8ld calls %10.2f ms %5.1f%%\n", ops[i].name, ops[i].calls, ops[i].ms,
                    total > 0 ? 100 * ops[i].ms / total : 0);
    report_products(total);
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

// The products timed since the last part (or the op's start) belong to row `row`.
static void name_products(const char *row) {
    for (int i = n_timed - 1; i >= 0 && !timed[i].row; i--) timed[i].row = row;
}

// Adds the op's timed products (all done: the op's end was waited for) to the shape table.
static void settle_products(void) {
    for (int i = 0; i < n_timed; i++) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, timed_ev[i][0], timed_ev[i][1]));
        int r = 0;
        while (r < n_shapes && !same_product(shapes[r].key, timed[i])) r++;
        if (r == n_shapes) {
            if (n_shapes == MAX_SHAPES) {
                untimed++;
                continue;
            }
            shapes[n_shapes++] = shape_row{timed[i], 0, 0};
        }
        shapes[r].calls++, shapes[r].ms += ms;
    }
    n_timed = 0;
}

extern "C" int cuda_profile_product_begin(void) {
    if (!since) return -1;  // not profiling, or outside an op
    if (n_timed == MAX_TIMED) {
        untimed++;
        return -1;
    }
    if (!timed_ev[n_timed][0])
        for (int e = 0; e < 2; e++) CUDA_CHECK(cudaEventCreate(&timed_ev[n_timed][e]));
    CUDA_CHECK(cudaEventRecord(timed_ev[n_timed][0], cuda_stream()));
    timed[n_timed] = product_key{};
    return n_timed++;
}

extern "C" void cuda_profile_product_end(int t, int m, int n, int k, bool ta, bool tb, bool in16, bool out16,
                                         bool accumulate, bool lt) {
    if (t < 0) return;
    CUDA_CHECK(cudaEventRecord(timed_ev[t][1], cuda_stream()));
    timed[t] = product_key{NULL, m, n, k, ta, tb, in16, out16, accumulate, lt};
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
    name_products(name);
    count_until(&part_ev[next_part], cuda_profile_op(name), true);
    next_part ^= 1;
    parted = true;
}

extern "C" void cuda_profile_end(int op) {
    name_products(op >= 0 ? ops[op].name : "?");
    count_until(&stop_ev, op, !parted);  // an op in parts marks its last one itself
    settle_products();
    since = NULL;
}
