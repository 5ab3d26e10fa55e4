// mma.h — the simulator's WMMA (nvcuda::wmma) for attention_tc.cu, in place of CUDA's
// <mma.h> (tests/sim/include comes first on the include path).
//
// A 16x16 fragment is spread over the warp's 32 lanes, 8 elements each: element e of lane l
// is matrix entry (e * 32 + l) in row-major order. WMMA leaves that map unspecified, and
// this one is unlike the GPU's on purpose: a kernel that assumes a layout instead of
// learning it fails here. mma_sync is a warp barrier: every lane posts its fragments, then
// computes its own 8 sums (fp32, k in order) from everybody's.
#ifndef TP_SIM_MMA_H
#define TP_SIM_MMA_H

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "sim.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the simulator has 16x16x16 fragments only");
    static constexpr int num_elements = 8;
    T x[num_elements];
};

namespace detail {
inline int entry(int e, int lane) { return e * 32 + lane; }  // row-major index in the 16 x 16 tile
inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline void from_float(float &d, float v) { d = v; }
inline void from_float(__nv_bfloat16 &d, float v) { d = __float2bfloat16(v); }
}  // namespace detail

template <typename Use, typename T, typename L> void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, T v) {
    for (int e = 0; e < 8; e++) f.x[e] = v;
}
template <typename Use, typename T, typename L, typename V>
void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, V v) {
    for (int e = 0; e < 8; e++) detail::from_float(f.x[e], (float)v);
}

// WMMA's pointer and stride rules (256-bit aligned pointer, ldm a multiple of 16 bytes): the
// GPU faults or misreads otherwise, so the simulator stops.
template <typename T> void check_tile(const T *p, unsigned ldm) {
    if ((uintptr_t)p % 32 || ldm * sizeof(T) % 16) {
        fprintf(stderr, "sim: wmma tile at %p with ldm %u: needs a 32-byte aligned pointer, ldm x %zu a multiple of "
                        "16 bytes\n", (const void *)p, ldm, sizeof(T));
        abort();
    }
}

// matrix_a [row][k], matrix_b [k][col]: row_major reads p[r * ldm + c], col_major p[c * ldm + r].
// Loads and stores are each lane's own elements and no barrier: they order no memory, as on
// the GPU, so a missing __syncwarp between a lane's store and another's load shows.
template <typename Use, typename T, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    check_tile(p, ldm);
    const int lane = ::sim::lane();
    constexpr bool col = std::is_same<L, col_major>::value;
    for (int e = 0; e < 8; e++) {
        const int i = detail::entry(e, lane), r = i / 16, c = i % 16;
        f.x[e] = col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm, layout_t l) {
    check_tile(p, ldm);
    const int lane = ::sim::lane();
    for (int e = 0; e < 8; e++) {
        const int i = detail::entry(e, lane), r = i / 16, c = i % 16;
        f.x[e] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                              layout_t l) {
    check_tile(p, ldm);
    const int lane = ::sim::lane();
    for (int e = 0; e < 8; e++) {
        const int i = detail::entry(e, lane), r = i / 16, c = i % 16;
        (l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.x[e];
    }
}

// d = a · b + c over the warp (d may be c).
template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
              const fragment<matrix_b, 16, 16, 16, TB, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
    struct posted {
        fragment<matrix_a, 16, 16, 16, TA, LA> a;
        fragment<matrix_b, 16, 16, 16, TB, LB> b;
        fragment<accumulator, 16, 16, 16, float> c;
    };
    static_assert(sizeof(posted) <= ::sim::SLOT_BYTES, "fragments fit a lane's slot");
    const int lane = ::sim::lane();
    posted mine{a, b, c};
    std::memcpy(::sim::warp_slot(lane), &mine, sizeof mine);
    ::sim::sync_warp();
    float out[8];
    for (int e = 0; e < 8; e++) {
        const int i = detail::entry(e, lane), r = i / 16, col = i % 16;
        float s = reinterpret_cast<const posted *>(::sim::warp_slot(lane))->c.x[e];
        for (int k = 0; k < 16; k++) {
            const int ia = r * 16 + k, ib = k * 16 + col;  // entries of a [r][k] and b [k][col]
            const posted *pa = reinterpret_cast<const posted *>(::sim::warp_slot(ia % 32));
            const posted *pb = reinterpret_cast<const posted *>(::sim::warp_slot(ib % 32));
            s += detail::to_float(pa->a.x[ia / 32]) * detail::to_float(pb->b.x[ib / 32]);
        }
        out[e] = s;
    }
    ::sim::sync_warp();
    for (int e = 0; e < 8; e++) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda

#endif
