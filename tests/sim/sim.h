// sim.h — the CUDA simulator's core: kernels/cuda/*.cu compiled for the CPU (tests/sim/).
//
// A launch runs its blocks one after another on the calling thread; each CUDA thread of a
// block is a fiber (its own stack, switched by hand), so __syncthreads, the warp shuffles and
// the warp-wide matrix instructions are exact barriers among the threads that take part. A
// fiber runs until it reaches a barrier or returns; the next round's order is shuffled
// (seeded, TP_SIM_SEED), so a read of shared memory that a missing barrier leaves racing
// shows up as a wrong answer. A barrier that some threads can never reach is reported
// (the kernel, the block, the threads waiting where) and the process aborts.
// Build and run: tests/sim/build.sh (make test runs the quick CUDA tests on it, make sim-check
// all of them and the CUDA CLI tests). TP_SIM_SEED picks the random orders (default 1);
// TP_SIM_MEMORY_MB the device memory (default 8192), so out-of-memory paths run too.
// What it is for: the kernels' index arithmetic, fragment layouts, masks, barriers and
// host-side plumbing, run where there is no GPU. What it is not: a timing model, or the
// GPU's float arithmetic (expf, rsqrtf and fma are the host's), so tests keep tolerances.
#ifndef TP_SIM_H
#define TP_SIM_H

#include <cstddef>
#include <cstdint>
#include <functional>
#include <tuple>
#include <vector_types.h>

namespace sim {

// The running CUDA thread's coordinates (valid inside a kernel).
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
int lane();     // linear thread index % 32
int warp_id();  // linear thread index / 32

// __syncthreads: every thread of the block that has not returned arrives here.
void sync_block();
// Every lane of the calling warp that has not returned arrives here (the warp-wide
// instructions call it twice: once their inputs are posted, once all have read them).
void sync_warp();
// This lane's (or lane l's) exchange slot in its warp: SLOT_BYTES bytes, for passing
// registers between the lanes of a warp between two sync_warp calls.
enum { SLOT_BYTES = 256 };
void *warp_slot(int lane);
// Whether lane l of the calling warp has returned (its slot holds stale data); a shuffle
// that reads such a lane is reported once per kernel (CUDA leaves the value undefined).
bool lane_exited(int lane);
void note_stale_read(int lane);
// The block's dynamic shared memory (extern __shared__), as sized by the launch.
void *dynamic_smem();
// A static __shared__ variable (a function static here: blocks run one at a time) of
// `bytes` at p, registered the first time its declaration runs (build.sh rewrites each
// declaration to call this): it is filled with 0xFF now and before every later block, so a
// read of what the block has not written is NaN (or -1), never what an earlier block left.
bool shared_static(void *p, size_t bytes);

// The warp-wide and asynchronous instructions of attention_mma.cu, with PTX's layouts:
// ldmatrix .x4 (.trans): lane l gives the address of row l % 8 of matrix l / 8 and gets, of
// matrix i, the 32 bits at (row l / 4, columns 2(l % 4), +1) (transposed: rows 2(l % 4), +1 of
// column l / 4); mma.m16n8k16.row.col f32 += bf16 x bf16 (fragments as in the PTX manual);
// cp.async: the source read when issued, the destination written then or only when a
// cp.async.wait_group covering its group runs, at random (so both a missing wait and a
// buffer refilled too early show).
void ldmatrix_x4(unsigned (&r)[4], const void *row_address, bool trans);
void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
void cp_async(void *dst, const void *src, int bytes, bool full);
void cp_async_commit();
void cp_async_wait(int pending);

// Stream work: runs now, or is recorded into the graph being captured (cudaStreamBeginCapture
// .. EndCapture) and run at each cudaGraphLaunch. Kernel launches, copies, memsets and the
// cuBLAS stand-ins go through it.
void enqueue(std::function<void()> work);
bool capturing();

// A kernel launch: sim::launcher(kernel, grid, block, smem, stream)(args...) is what
// kernel<<<grid, block, smem, stream>>>(args...) becomes (tests/sim/build.sh rewrites it).
// kernel: the function, for its name in reports and its shared-memory opt-in (cudaFuncSetAttribute).
void run_grid(const void *kernel, dim3 grid, dim3 block, size_t smem, std::function<void()> body);
template <typename... Params> struct launch_of {
    void (*kernel)(Params...);
    dim3 grid, block;
    size_t smem;
    template <typename... Args> void operator()(Args... args) const {
        void (*k)(Params...) = kernel;
        const dim3 g = grid, b = block;
        const size_t s = smem;
        // the arguments converted to the parameter types now, as a launch copies them
        auto bound = std::make_tuple(static_cast<Params>(args)...);
        enqueue([k, g, b, s, bound]() {
            run_grid(reinterpret_cast<const void *>(k), g, b, s, [k, bound]() { std::apply(k, bound); });
        });
    }
};
template <typename... Params, typename Stream = int>
launch_of<Params...> launcher(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem = 0, Stream = 0) {
    return launch_of<Params...>{kernel, grid, block, smem};
}

}  // namespace sim

#endif
