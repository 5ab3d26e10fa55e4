// runtime.cpp — the CUDA simulator (sim.h): fibers for CUDA threads, barriers, the warp-wide
// instructions, and the CUDA runtime calls the backend makes, on plain host memory.
//
// Streams: there is one queue, run in order as work arrives (so every call is synchronous),
// except while a graph is being captured: then work is recorded and run at cudaGraphLaunch.
// Memory: cudaMalloc is aligned host memory, counted against TP_SIM_MEMORY_MB (default 8192)
// so out-of-memory paths run too. Events hold the host time their work ran at.
#include "sim.h"

#include <cuda_runtime_api.h>
#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

// ---- fibers: a hand-written context switch (x86-64 System V) ----
// sim_switch saves the callee-saved registers and the float control words on the current
// stack, stores the stack pointer in *from, and resumes the context whose pointer is `to`.
extern "C" void sim_switch(void **from, void *to);
asm(R"(
    .text
    .globl sim_switch
    .type sim_switch, @function
sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sim_switch, .-sim_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

namespace sim {
namespace {

enum fiber_state { RUNNABLE, AT_BLOCK, AT_WARP, DONE };
struct copy {  // a cp.async in flight: source bytes read at issue, written at its wait
    unsigned char *dst;
    unsigned char data[16];
    int bytes;
    long group;  // -1 until committed
};
struct fiber {
    void *sp;
    unsigned char *stack;
    uint3 tid;
    int linear;
    fiber_state state;
    std::vector<copy> copies;
    long committed;  // cp.async groups committed so far
};

enum { STACK_BYTES = 256 << 10, PAGE = 4096 };
std::vector<fiber> fibers;   // the running block's threads
void *scheduler_sp;          // where a fiber switches back to
fiber *current;              // the running thread (NULL outside a kernel)
const std::function<void()> *body;
dim3 grid_now, block_now;
uint3 block_now_idx;
std::vector<unsigned char> slots;  // warps x 32 lanes x SLOT_BYTES
unsigned char *smem_now;
std::vector<std::pair<void *, size_t>> shared_statics;  // sim::shared_static's registrations
size_t smem_bytes_now;
const void *kernel_now;
bool stale_reported;

std::string kernel_name(const void *kernel) {
    Dl_info info;
    if (!dladdr(kernel, &info) || !info.dli_sname) return "a kernel";
    int status = 0;
    char *name = abi::__cxa_demangle(info.dli_sname, NULL, NULL, &status);
    std::string s = status == 0 && name ? name : info.dli_sname;
    free(name);
    return s;
}

[[noreturn]] void die(const char *what) {
    fprintf(stderr, "sim: %s in %s, block (%u,%u,%u)\n", what, kernel_name(kernel_now).c_str(), block_now_idx.x,
            block_now_idx.y, block_now_idx.z);
    abort();
}

void finish_current();

void fiber_main() {
    (*body)();
    finish_current();
    sim_switch(&current->sp, scheduler_sp);
    die("a finished thread was resumed");
}

// A fresh stack for fiber f, set up so the first switch to it "returns" into fiber_main.
void fiber_start(fiber &f) {
    if (!f.stack) {  // a guard page below each stack: an overflow faults instead of corrupting
        void *m = mmap(NULL, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("no memory for thread stacks");
        mprotect(m, PAGE, PROT_NONE);
        f.stack = (unsigned char *)m + PAGE;
    }
    uintptr_t top = ((uintptr_t)(f.stack + STACK_BYTES)) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    *--sp = 0;                             // fiber_main's (never used) return address
    *--sp = (uint64_t)(uintptr_t)&fiber_main;  // popped by sim_switch's ret
    for (int r = 0; r < 6; r++) *--sp = 0;  // rbp rbx r12-r15
    --sp;
    uint32_t mxcsr;
    uint16_t fcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    memcpy(sp, &mxcsr, 4);
    memcpy((char *)sp + 4, &fcw, 2);
    f.sp = sp;
}

// Barriers are counted: the thread whose arrival completes one releases the others and
// goes on without a switch; a thread that returns counts as arrived at every barrier.
std::vector<int> warp_live, warp_arrived;  // per warp of the block
int block_live, block_arrived, block_size;

void release_warp(int w) {
    for (int l = w * 32; l < std::min(block_size, w * 32 + 32); l++)
        if (fibers[l].state == AT_WARP) fibers[l].state = RUNNABLE;
    warp_arrived[w] = 0;
}
void release_block() {
    for (int i = 0; i < block_size; i++)
        if (fibers[i].state == AT_BLOCK) fibers[i].state = RUNNABLE;
    block_arrived = 0;
}

void finish_current() {
    const int w = current->linear / 32;
    current->state = DONE;
    if (--warp_live[w] > 0 && warp_arrived[w] == warp_live[w]) release_warp(w);
    if (--block_live > 0 && block_arrived == block_live) release_block();
}

void arrive_warp() {
    const int w = current->linear / 32;
    if (++warp_arrived[w] == warp_live[w]) {
        release_warp(w);
        return;
    }
    current->state = AT_WARP;
    sim_switch(&current->sp, scheduler_sp);
}
void arrive_block() {
    if (++block_arrived == block_live) {
        release_block();
        return;
    }
    current->state = AT_BLOCK;
    sim_switch(&current->sp, scheduler_sp);
}

// xorshift64*: the order of each round and where each cp.async lands (TP_SIM_SEED).
uint64_t rng_state = [] {
    const char *e = getenv("TP_SIM_SEED");
    return (e ? strtoull(e, NULL, 10) : 1) * 0x9E3779B97F4A7C15ull | 1;
}();
uint64_t rng() {
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

[[noreturn]] void deadlock(int n) {
    fprintf(stderr, "sim: threads stuck:");
    for (int i = 0; i < n; i++)
        if (fibers[i].state != DONE)
            fprintf(stderr, " %d(%s)", i, fibers[i].state == AT_BLOCK ? "__syncthreads" : "warp");
    fprintf(stderr, "\n");
    die("deadlock: a barrier some threads never reach");
}

// Runs the block's threads in rounds, each round in a random order, every runnable thread
// until it waits at a barrier or returns. A round that leaves nobody runnable while some
// have not returned is a deadlock.
void run_block(int n, size_t smem_bytes) {
    if (smem_bytes) memset(smem_now, 0xff, smem_bytes);  // unwritten shared memory reads as NaN
    for (const auto &v : shared_statics) memset(v.first, 0xff, v.second);  // and every static __shared__
    block_size = block_live = n, block_arrived = 0;
    warp_live.assign((n + 31) / 32, 0), warp_arrived.assign((n + 31) / 32, 0);
    for (int i = 0; i < n; i++) {
        fiber &f = fibers[i];
        f.linear = i;
        f.tid = uint3{(unsigned)(i % block_now.x), (unsigned)(i / block_now.x % block_now.y),
                      (unsigned)(i / (block_now.x * block_now.y))};
        f.state = RUNNABLE;
        f.copies.clear();
        f.committed = 0;
        warp_live[i / 32]++;
        fiber_start(f);
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; i++) order[i] = i;
    while (block_live > 0) {
        for (int i = n - 1; i > 0; i--) std::swap(order[i], order[rng() % (uint64_t)(i + 1)]);
        bool ran = false;
        for (int i : order)
            if (fibers[i].state == RUNNABLE) {
                current = &fibers[i];
                sim_switch(&scheduler_sp, fibers[i].sp);
                ran = true;
            }
        current = NULL;
        if (!ran) deadlock(n);
    }
}

std::map<const void *, int> smem_allowed;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
cudaError_t last_error = cudaSuccess;
enum { DEFAULT_SMEM = 48 << 10, MAX_SMEM = 227 << 10 };

}  // namespace

uint3 thread_idx() { return current->tid; }
uint3 block_idx() { return block_now_idx; }
dim3 block_dim() { return block_now; }
dim3 grid_dim() { return grid_now; }
int lane() { return current->linear % 32; }
int warp_id() { return current->linear / 32; }
void sync_block() { arrive_block(); }
void sync_warp() { arrive_warp(); }
void *warp_slot(int l) { return &slots[((size_t)warp_id() * 32 + l) * SLOT_BYTES]; }
bool lane_exited(int l) {
    const int i = warp_id() * 32 + l;
    return i >= block_size || fibers[i].state == DONE;
}
void note_stale_read(int l) {
    if (l < 0 || l >= 32 || !lane_exited(l) || stale_reported) return;
    stale_reported = true;
    fprintf(stderr, "sim: warning: %s reads lane %d, which has returned (CUDA leaves it undefined)\n",
            kernel_name(kernel_now).c_str(), l);
}
void *dynamic_smem() { return smem_now; }

bool shared_static(void *p, size_t bytes) {
    memset(p, 0xff, bytes);
    shared_statics.emplace_back(p, bytes);
    return true;
}

void run_grid(const void *kernel, dim3 grid, dim3 block, size_t smem, std::function<void()> fn) {
    kernel_now = kernel;
    const long n = (long)block.x * block.y * block.z;
    auto it = smem_allowed.find(kernel);
    const size_t allowed = it == smem_allowed.end() ? (size_t)DEFAULT_SMEM : (size_t)it->second;
    if (n < 1 || n > 1024 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535 ||
        smem > allowed) {
        fprintf(stderr, "sim: launch of %s refused: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of shared memory "
                        "(%zu allowed)\n",
                kernel_name(kernel).c_str(), grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, allowed);
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    if (fibers.size() < (size_t)n) fibers.resize(n);
    slots.assign(((size_t)n + 31) / 32 * 32 * SLOT_BYTES, 0);
    std::vector<unsigned char> smem_buf(smem + 128);
    smem_now = (unsigned char *)(((uintptr_t)smem_buf.data() + 127) & ~(uintptr_t)127);
    smem_bytes_now = smem;
    grid_now = grid, block_now = block, body = &fn, stale_reported = false;
    // Blocks in a random order (TP_SIM_SEED): a kernel must not depend on which block runs
    // first or last (e.g. a merge done by the last block of a group to arrive).
    const size_t blocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<size_t> order(blocks);
    for (size_t b = 0; b < blocks; b++) order[b] = b;
    for (size_t b = blocks; b > 1; b--) std::swap(order[b - 1], order[rng() % b]);
    for (size_t b : order) {
        block_now_idx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                              (unsigned)(b / ((size_t)grid.x * grid.y))};
        run_block((int)n, smem);
    }
    body = NULL, kernel_now = NULL, smem_now = NULL;
}

// ---- the warp-wide and asynchronous instructions ----

// An address the instruction requires `align`-aligned and, when shared, inside the block's
// dynamic shared memory (the kernels that use these keep their tiles there); else the GPU
// faults or reads another space, and so does the simulator, loudly.
static void check_address(const void *p, size_t bytes, unsigned align, bool shared, const char *what) {
    char msg[160];
    if ((uintptr_t)p % align) {
        snprintf(msg, sizeof msg, "%s at a misaligned address %p (needs %u bytes)", what, p, align);
        die(msg);
    }
    const unsigned char *c = (const unsigned char *)p;
    if (shared && !(smem_now && c >= smem_now && c + bytes <= smem_now + smem_bytes_now)) {
        snprintf(msg, sizeof msg, "%s at %p: not in the block's dynamic shared memory", what, p);
        die(msg);
    }
}

void ldmatrix_x4(unsigned (&r)[4], const void *row_address, bool trans) {
    const int l = lane();
    check_address(row_address, 16, 16, true, "ldmatrix row");
    memcpy(warp_slot(l), &row_address, sizeof row_address);
    sync_warp();
    auto row = [](int from) {
        const void *p;
        memcpy(&p, warp_slot(from), sizeof p);
        return (const uint16_t *)p;
    };
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) {  // (row l/4, columns 2(l%4), +1) of matrix i
            const uint16_t *p = row(8 * i + l / 4);
            lo = p[2 * (l % 4)], hi = p[2 * (l % 4) + 1];
        } else {  // (rows 2(l%4), +1; column l/4)
            lo = row(8 * i + 2 * (l % 4))[l / 4], hi = row(8 * i + 2 * (l % 4) + 1)[l / 4];
        }
        r[i] = (unsigned)lo | (unsigned)hi << 16;
    }
    sync_warp();
}

namespace {
float bf16_half(unsigned reg, int half) {
    const uint32_t bits = (half ? reg >> 16 : reg & 0xffff) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
struct mma_posted {
    unsigned a[4], b[2];
};
}  // namespace

void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const int l = lane(), g = l / 4, t = l % 4;
    mma_posted mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    memcpy(warp_slot(l), &mine, sizeof mine);
    sync_warp();
    auto posted = [](int from) { return (const mma_posted *)warp_slot(from); };
    // A (row, k): lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2;
    // B (k, n): lane n * 4 + (k % 8) / 2, register k >= 8, half k % 2.
    float out[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = d[e];
        for (int k = 0; k < 16; k++) {
            const float av = bf16_half(posted((row % 8) * 4 + (k % 8) / 2)->a[(row >= 8) + 2 * (k >= 8)], k & 1);
            const float bv = bf16_half(posted(col * 4 + (k % 8) / 2)->b[k >= 8], k & 1);
            s += av * bv;
        }
        out[e] = s;
    }
    sync_warp();
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

// A copy may land any time from its issue to the wait that covers it. Each lands at one end
// or the other, at random (TP_SIM_SEED): at issue, a buffer refilled while other threads
// still read it shows; at the wait, a read before the wait does.
void cp_async(void *dst, const void *src, int bytes, bool full) {
    check_address(dst, bytes, bytes, true, "cp.async destination");
    if (full) check_address(src, bytes, bytes, false, "cp.async source");
    copy c;
    c.dst = (unsigned char *)dst, c.bytes = bytes, c.group = -1;
    if (full) memcpy(c.data, src, bytes);
    else memset(c.data, 0, bytes);
    if (rng() & 1) memcpy(c.dst, c.data, bytes);
    else current->copies.push_back(c);
}
void cp_async_commit() {
    for (copy &c : current->copies)
        if (c.group < 0) c.group = current->committed;
    current->committed++;
}
void cp_async_wait(int pending) {
    std::vector<copy> left;
    for (copy &c : current->copies) {
        if (c.group >= 0 && c.group < current->committed - pending) memcpy(c.dst, c.data, c.bytes);
        else left.push_back(c);
    }
    current->copies.swap(left);
}

// ---- streams and graphs ----

namespace {
struct graph {
    std::vector<std::function<void()>> work;
};
graph *capture;        // the graph being captured, or NULL
bool capture_invalid;  // a call CUDA refuses during capture was made: EndCapture fails, as on a GPU
}  // namespace

void enqueue(std::function<void()> work) {
    if (capture) capture->work.push_back(std::move(work));
    else work();
}
bool capturing() { return capture != NULL; }

}  // namespace sim

// ---- the CUDA runtime API, as much as the backend calls ----

namespace {
size_t allocated;
std::map<void *, size_t> allocations;
size_t memory_limit() {
    const char *e = getenv("TP_SIM_MEMORY_MB");
    return (e ? strtoull(e, NULL, 10) : 8192) << 20;
}
struct event_t {
    double ms;
};
double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
cudaError_t note(cudaError_t e) {
    if (e != cudaSuccess) sim::last_error = e;
    return e;
}
// A call the GPU refuses while a stream is captured (allocation, a synchronous copy or set, a
// wait): it fails, and so does the capture (the project's captures are thread-local mode).
bool refused_in_capture() {
    if (!sim::capturing()) return false;
    sim::capture_invalid = true;
    note(cudaErrorStreamCaptureUnsupported);
    return true;
}
}  // namespace

extern "C" {

cudaError_t cudaMalloc(void **p, size_t size) {
    *p = NULL;
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    if (allocated + size > memory_limit()) return note(cudaErrorMemoryAllocation);
    void *m = NULL;
    if (posix_memalign(&m, 256, size ? size : 1)) return note(cudaErrorMemoryAllocation);
    memset(m, 0xff, size);  // NaN as fp32, bf16 and double: a read of what nobody wrote shows
    allocations[m] = size;
    allocated += size;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    if (!p) return cudaSuccess;
    auto it = allocations.find(p);
    if (it == allocations.end()) return note(cudaErrorInvalidValue);
    allocated -= it->second;
    allocations.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int) {
    *p = malloc(size ? size : 1);
    return *p ? cudaSuccess : note(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocHost(void **p, size_t size) { return cudaHostAlloc(p, size, 0); }
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    *total = memory_limit();
    *free_bytes = *total - allocated;
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind) {
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind, cudaStream_t) {
    sim::enqueue([=]() {
        if (n) memmove(dst, src, n);
    });
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    sim::enqueue([=]() { memset(p, v, n); });
    return cudaSuccess;
}
cudaError_t cudaMemcpyToSymbol(const void *symbol, const void *src, size_t n, size_t offset, cudaMemcpyKind) {
    memcpy((char *)symbol + offset, src, n);
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : note(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "thinkpipe CUDA simulator (tests/sim)");
    p->totalGlobalMem = memory_limit();
    p->sharedMemPerBlock = sim::DEFAULT_SMEM;
    p->sharedMemPerBlockOptin = sim::MAX_SMEM;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->multiProcessorCount = 132;
    p->major = 9, p->minor = 0;
    p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr attr, int) {
    switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = sim::MAX_SMEM; break;
    default: return note(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    return refused_in_capture() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = sim::last_error;
    sim::last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return sim::last_error; }
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    default: return "simulated CUDA error";
    }
}
const char *cudaGetErrorName(cudaError_t e) { return cudaGetErrorString(e); }

cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
    if (value > sim::MAX_SMEM) return note(cudaErrorInvalidValue);
    sim::smem_allowed[f] = value;
    return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *) {
    memset(a, 0, sizeof *a);
    a->maxThreadsPerBlock = 1024;
    a->numRegs = 32;
    a->ptxVersion = 0;  // programmatic dependent launch: off (device.cu asks for PTX >= 90)
    a->binaryVersion = 90;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int) {
    static int the_stream;
    *s = (cudaStream_t)&the_stream;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    return refused_in_capture() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (sim::capture) return note(cudaErrorIllegalState);
    sim::capture = new sim::graph;
    sim::capture_invalid = false;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    if (!sim::capture) return note(cudaErrorIllegalState);
    *g = (cudaGraph_t)sim::capture;
    sim::capture = NULL;
    if (sim::capture_invalid) {
        delete (sim::graph *)*g;
        *g = NULL;
        return note(cudaErrorStreamCaptureInvalidated);
    }
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus *st) {
    *st = sim::capture ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long) {
    *exec = (cudaGraphExec_t) new sim::graph(*(sim::graph *)g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
    if (sim::capture) return note(cudaErrorStreamCaptureUnsupported);
    for (auto &w : ((sim::graph *)exec)->work) w();
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete (sim::graph *)exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete (sim::graph *)g;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = (cudaEvent_t) new event_t{0};
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete (event_t *)e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    event_t *ev = (event_t *)e;
    sim::enqueue([ev]() { ev->ms = now_ms(); });
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
    return refused_in_capture() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(((event_t *)b)->ms - ((event_t *)a)->ms);
    return cudaSuccess;
}

}  // extern "C"
