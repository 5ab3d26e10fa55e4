// device.cu — the device, memory, scratch buffers and the first-error slot.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

static char first_error[512];
unsigned long cuda_weights_version = 1;
unsigned long cuda_graph_epoch_now = 1;

cudaStream_t cuda_stream(void) {
    static cudaStream_t stream;
    static bool made;
    if (!made) {
        made = true;
        // No device: ops will fail on their own launches; the legacy stream stands in.
        if (cudaStreamCreateWithFlags(&stream, cudaStreamDefault) != cudaSuccess) cudaGetLastError(), stream = 0;
    }
    return stream;
}

// Compiled like every kernel: its image says whether pdl_wait was compiled in (sm_90 code;
// PTX for an older target JIT-compiled on a newer GPU would have it compiled out).
__global__ void pdl_probe_kernel(void) {}

static int pdl_forced = -1;  // cuda_set_pdl: tests compare runs with and without
extern "C" void cuda_set_pdl(int on) { pdl_forced = on; }

bool cuda_pdl(void) {
    static int supported = -1, env_off = -1;
    if (supported < 0) {
        cudaFuncAttributes attr;
        supported = cudaFuncGetAttributes(&attr, pdl_probe_kernel) == cudaSuccess && attr.ptxVersion >= 90 &&
                    attr.binaryVersion >= 90;
        cudaGetLastError();
        const char *env = getenv("TP_CUDA_PDL");
        env_off = env && !strcmp(env, "0");
    }
    if (pdl_forced >= 0) return pdl_forced && supported;
    return supported && !env_off;
}

bool cuda_pdl_late(void) {
    const char *env = getenv("TP_CUDA_PDL");
    return env && !strcmp(env, "late");
}

extern "C" int cuda_pdl_enabled(void) { return cuda_pdl(); }

extern "C" void cuda_weights_changed(void) { cuda_weights_version++, cuda_graph_epoch_now++; }

void cuda_note_message(const char *msg, const char *file, int line) {
    if (first_error[0]) return;  // the first failure explains the rest
    snprintf(first_error, sizeof first_error, "%s:%d: %s", file, line, msg);
}

void cuda_note_error(cudaError_t e, const char *file, int line) { cuda_note_message(cudaGetErrorString(e), file, line); }

extern "C" int cuda_take_error(char *err, int cap) {
    CUDA_CHECK(cudaDeviceSynchronize());
    if (!first_error[0]) return 0;
    if (err && cap > 0) snprintf(err, (size_t)cap, "%s", first_error);
    first_error[0] = 0;
    return -1;
}

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" int cuda_device_describe(char *buf, int cap) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return -1;
    snprintf(buf, (size_t)cap, "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1 << 30));
    return 0;
}

// Live allocations and their sizes: freeing one must drop what was derived from the
// weights inside it (their cached bf16 copies are keyed by address, and the next
// allocation may well get the same address).
static struct allocation {
    void *p;
    size_t bytes;
} *live;
static size_t n_live, cap_live;

extern "C" void *cuda_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();  // an out-of-memory answer is the caller's to report, with sizes
        return NULL;
    }
    if (n_live == cap_live) {
        size_t cap = cap_live ? 2 * cap_live : 256;
        struct allocation *grown = (struct allocation *)realloc(live, cap * sizeof *live);
        if (!grown) {
            CUDA_CHECK(cudaFree(p));
            return NULL;
        }
        live = grown, cap_live = cap;
    }
    live[n_live++] = {p, bytes};
    return p;
}

extern "C" void cuda_free(void *p) {
    if (!p) return;
    size_t bytes = 0;
    for (size_t i = 0; i < n_live; i++)
        if (live[i].p == p) {
            bytes = live[i].bytes;
            live[i] = live[--n_live];
            break;
        }
    // after the table is settled: forgetting frees the bf16 copies, through here again
    if (bytes) cuda_bf16_forget(p, bytes);
    CUDA_CHECK(cudaFree(p));
}

extern "C" void cuda_memzero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream()));
}

extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

extern "C" void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_stream()));
}

extern "C" size_t cuda_free_bytes(void) {
    size_t free_b = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
    return free_b;
}

static struct {
    void *p;
    size_t bytes;
} scratch[SCRATCH_COUNT];

static void *scratch_grow(int slot, size_t bytes, bool quiet);

void *cuda_scratch(int slot, size_t bytes) { return scratch_grow(slot, bytes, false); }

// A slot for work that has another way to run: NULL, with nothing noted, when the memory is
// not there; a size that failed is not asked for again (the caller would ask every call).
void *cuda_scratch_optional(int slot, size_t bytes) {
    static size_t failed[SCRATCH_COUNT];
    if (failed[slot] && bytes >= failed[slot] && !(scratch[slot].bytes >= bytes && scratch[slot].p)) return NULL;
    void *p = scratch_grow(slot, bytes, true);
    if (!p) failed[slot] = bytes;
    return p;
}

static void *scratch_grow(int slot, size_t bytes, bool quiet) {
    if (scratch[slot].bytes >= bytes && scratch[slot].p) return scratch[slot].p;
    // Never while a graph is being captured: the graph would point at the old buffer (and
    // the synchronization below is not allowed then). The caller runs eagerly first.
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(cuda_stream(), &capturing));
    if (capturing != cudaStreamCaptureStatusNone) {
        if (!quiet) cuda_note_message("scratch memory grew during a graph capture", __FILE__, __LINE__);
        return NULL;
    }
    cuda_graph_epoch_now++;
    // Work queued on the old buffer must finish before it is freed.
    CUDA_CHECK(cudaDeviceSynchronize());
    if (scratch[slot].p) CUDA_CHECK(cudaFree(scratch[slot].p));
    scratch[slot].p = NULL, scratch[slot].bytes = 0;
    size_t want = bytes + bytes / 4;  // room to grow without a reallocation per call
    if (cudaMalloc(&scratch[slot].p, want ? want : 1) != cudaSuccess) {
        cudaGetLastError();
        scratch[slot].p = NULL;
        if (quiet) return NULL;
        char msg[128];
        snprintf(msg, sizeof msg, "out of device memory for %zu bytes of scratch", want);
        cuda_note_message(msg, __FILE__, __LINE__);
        return NULL;
    }
    scratch[slot].bytes = want;
    return scratch[slot].p;
}

// ---- CUDA graphs: the ops between begin and end are recorded, not run ----

extern "C" int cuda_graph_begin(void) {
    cudaStream_t s = cuda_stream();
    if (!s) return -1;
    // Thread-local mode: an unsafe call (an allocation, a synchronous copy) made by this
    // thread during the capture is an error instead of silently not being recorded.
    cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        cuda_note_error(e, __FILE__, __LINE__);
        return -1;
    }
    return 0;
}

extern "C" void *cuda_graph_end(void) {
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamEndCapture(cuda_stream(), &graph);
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        cuda_note_error(e, __FILE__, __LINE__);
        return NULL;
    }
    return exec;
}

extern "C" void cuda_graph_launch(void *exec) { CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)exec, cuda_stream())); }

extern "C" void cuda_graph_free(void *exec) {
    if (exec) CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)exec));
}

extern "C" unsigned long cuda_graph_epoch(void) { return cuda_graph_epoch_now; }
