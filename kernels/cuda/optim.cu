// optim.cu — AdamW and the gradient norm on the device, with the CPU's arithmetic.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

#include <cstdlib>
#include <cstring>

// All of a model's parameter tensors in one launch: a block takes a slice of ADAMW_SLICE
// floats of one range (a tensor of hundreds of floats is one block, not a launch of its own:
// a step was ~290 launches, a third of them tiny), and writes the products' bf16 copy of
// the new weights beside them (6 bytes a weight less than converting them again later).
enum { ADAMW_THREADS = 256, ADAMW_SLICE = 16 * ADAMW_THREADS };
struct adamw_range_dev {
    size_t offset, n;
    __nv_bfloat16 *copy;   // the bf16 copy of the range's weights [n], or NULL
    unsigned first_block;  // the range's slices are blocks first_block ..
    int decay;
};

// torch's single-tensor AdamW in float: decay first, then the moments, then the step; the
// gradient read as g · grad_scale.
__global__ void adamw_ranges_kernel(float *p, const float *g, float *m, float *v, const adamw_range_dev *ranges,
                                    int count, float grad_scale, float decay_factor, float b1, float b2,
                                    float step_size, float bc2_sqrt, float eps) {
    int lo = 0, hi = count - 1;  // the last range whose slices start at or before this block
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (ranges[mid].first_block <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    const adamw_range_dev r = ranges[lo];
    const float df = r.decay ? decay_factor : 1.0f;
    const size_t first = (size_t)(blockIdx.x - r.first_block) * ADAMW_SLICE;
    const size_t end = first + ADAMW_SLICE < r.n ? first + ADAMW_SLICE : r.n;
    for (size_t i = first + threadIdx.x; i < end; i += ADAMW_THREADS) {
        const size_t at = r.offset + i;
        const float gi = g[at] * grad_scale;
        const float pi = p[at] * df;
        const float mi = b1 * m[at] + (1.0f - b1) * gi;
        const float vi = b2 * v[at] + (1.0f - b2) * gi * gi;
        m[at] = mi, v[at] = vi;
        const float pn = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        p[at] = pn;
        if (r.copy) r.copy[i] = __float2bfloat16(pn);
    }
}

extern "C" void cuda_adamw_ranges(float *p, const float *g, float *m, float *v, const adamw_range *ranges, int count,
                                  float grad_scale, float decay_factor, float b1, float b2, float step_size,
                                  float bc2_sqrt, float eps) {
    // The table of non-empty ranges; uploaded when it differs from the one on the device.
    static adamw_range_dev *last;
    static int last_count;
    static const void *last_dev;
    cuda_weights_changed();  // first: the copies claimed below are valid for the new version
    adamw_range_dev *t = (adamw_range_dev *)calloc(count > 0 ? count : 1, sizeof *t);
    if (!t) abort();
    int k = 0;
    unsigned blocks = 0;
    for (int i = 0; i < count; i++) {
        if (!ranges[i].n) continue;
        t[k] = adamw_range_dev{ranges[i].offset, ranges[i].n, cuda_weight_copy_claim(p + ranges[i].offset, ranges[i].n),
                               blocks, ranges[i].decay};
        blocks += (unsigned)((ranges[i].n + ADAMW_SLICE - 1) / ADAMW_SLICE);
        k++;
    }
    if (k == 0) {
        free(t);
        return;
    }
    adamw_range_dev *dev = (adamw_range_dev *)cuda_scratch(SCRATCH_ADAMW, (size_t)k * sizeof *t);
    if (!dev) {  // noted
        free(t);
        return;
    }
    if (dev != last_dev || k != last_count || memcmp(t, last, (size_t)k * sizeof *t)) {
        cuda_upload(dev, t, (size_t)k * sizeof *t);
        free(last);
        last = t, last_count = k, last_dev = dev;
    } else {
        free(t);
    }
    adamw_ranges_kernel<<<blocks, ADAMW_THREADS, 0, cuda_stream()>>>(p, g, m, v, dev, k, grad_scale, decay_factor, b1,
                                                                      b2, step_size, bc2_sqrt, eps);
    CUDA_LAUNCH_CHECK();
}

enum { SQ_BLOCK = 1 << 16, SQ_THREADS = 512 };

// part[b] = Σ x[i]² over block b's fixed range, in double: per-thread strided sums, then a
// shared-memory tree in a fixed order.
__global__ void sum_squares_kernel(double *part, const float *x, size_t n) {
    __shared__ double s[SQ_THREADS];
    size_t i0 = (size_t)blockIdx.x * SQ_BLOCK, i1 = i0 + SQ_BLOCK < n ? i0 + SQ_BLOCK : n;
    double acc = 0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += SQ_THREADS) acc += (double)x[i] * x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = SQ_THREADS / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = s[0];
}

extern "C" double cuda_sum_squares(const float *x, size_t n) {
    if (!n) return 0;
    size_t nb = (n + SQ_BLOCK - 1) / SQ_BLOCK;
    double *d_part = (double *)cuda_scratch(SCRATCH_NORM, nb * sizeof(double));
    if (!d_part) return 0;
    sum_squares_kernel<<<(unsigned)nb, SQ_THREADS, 0, cuda_stream()>>>(d_part, x, n);
    CUDA_LAUNCH_CHECK();
    double *part = (double *)malloc(nb * sizeof(double));
    if (!part) abort();
    cuda_download(part, d_part, nb * sizeof(double));
    double sum = 0;
    for (size_t b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}
