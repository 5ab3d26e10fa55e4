// selftest.cu — checks of the simulator itself (tests/sim), built by build.sh like the
// kernels: what it promises the kernels it runs. Prints "ok - NAME" / "not ok - NAME".
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>

// Every thread stores its element of a static __shared__ array (when `write`) and reads it
// back after a barrier. A launch that does not write must read NaN: the simulator keeps
// static __shared__ variables as function statics, and must not let one launch's (or
// block's) values reach the next.
template <int N> __global__ void shared_round_trip(float *out, bool write) {
    __shared__ float s[N];
    if (write) s[threadIdx.x] = (float)(blockIdx.x + 1);
    __syncthreads();
    out[blockIdx.x * N + threadIdx.x] = s[threadIdx.x];
}

// The same for the launch's dynamic shared memory.
__global__ void dynamic_round_trip(float *out, bool write) {
    extern __shared__ float d[];
    if (write) d[threadIdx.x] = (float)(blockIdx.x + 1);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = d[threadIdx.x];
}

static int failures;

static void report(bool ok, const char *name) {
    printf("%s - %s\n", ok ? "ok" : "not ok", name);
    failures += !ok;
}

// out [blocks x n] after a writing launch holds block + 1 everywhere, after a reading one NaN.
static bool holds(const float *out, int blocks, int n, bool written) {
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < n; t++) {
            const float x = out[b * n + t];
            if (written ? x != (float)(b + 1) : !std::isnan(x)) return false;
        }
    return true;
}

int main() {
    enum { N = 32, BLOCKS = 4 };
    float *d_out = nullptr, h[BLOCKS * N];
    if (cudaMalloc((void **)&d_out, sizeof h) != cudaSuccess) return 1;
    bool ok = true;
    for (int write = 1; write >= 0; write--) {
        shared_round_trip<N><<<BLOCKS, N>>>(d_out, write != 0);
        cudaMemcpy(h, d_out, sizeof h, cudaMemcpyDeviceToHost);
        ok = ok && holds(h, BLOCKS, N, write != 0);
    }
    report(ok, "a static shared array (of a template kernel) reads NaN where this block has not written");
    ok = true;
    for (int write = 1; write >= 0; write--) {
        dynamic_round_trip<<<BLOCKS, N, N * sizeof(float)>>>(d_out, write != 0);
        cudaMemcpy(h, d_out, sizeof h, cudaMemcpyDeviceToHost);
        ok = ok && holds(h, BLOCKS, N, write != 0);
    }
    report(ok, "dynamic shared memory reads NaN where this block has not written");
    cudaFree(d_out);
    printf("# %d passed, %d failed, 0 skipped\n", 2 - failures, failures);
    return failures != 0;
}
