#include "tensor.h"

#include <math.h>
#include <string.h>

static const struct { const char *name; size_t size; } dtypes[TP_DTYPE_COUNT] = {
    [TP_BOOL] = {"BOOL", 1}, [TP_U8] = {"U8", 1},   [TP_I8] = {"I8", 1},   [TP_F8_E4M3] = {"F8_E4M3", 1},
    [TP_F8_E5M2] = {"F8_E5M2", 1}, [TP_I16] = {"I16", 2}, [TP_U16] = {"U16", 2}, [TP_F16] = {"F16", 2},
    [TP_BF16] = {"BF16", 2}, [TP_I32] = {"I32", 4}, [TP_U32] = {"U32", 4}, [TP_F32] = {"F32", 4},
    [TP_F64] = {"F64", 8}, [TP_I64] = {"I64", 8}, [TP_U64] = {"U64", 8},
};

size_t tp_dtype_size(tp_dtype t) { return (unsigned)t < TP_DTYPE_COUNT ? dtypes[t].size : 0; }
const char *tp_dtype_name(tp_dtype t) { return (unsigned)t < TP_DTYPE_COUNT ? dtypes[t].name : "?"; }

int tp_dtype_parse(const char *name, tp_dtype *out) {
    for (int i = 0; i < TP_DTYPE_COUNT; i++)
        if (!strcmp(name, dtypes[i].name)) {
            *out = (tp_dtype)i;
            return 0;
        }
    return -1;
}

bool tp_numel(const int64_t *shape, int ndim, tp_dtype t, uint64_t *numel, uint64_t *nbytes) {
    const uint64_t limit = (uint64_t)1 << 62;
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return false;
        if (shape[i] == 0) n = 0;
        else if (n && (uint64_t)shape[i] > limit / n) return false;
        else n *= (uint64_t)shape[i];
    }
    if (n > limit / tp_dtype_size(t)) return false;
    *numel = n;
    *nbytes = n * tp_dtype_size(t);
    return true;
}

uint64_t tp_tensor_numel(const tp_tensor *t) { return (t->end - t->begin) / tp_dtype_size(t->dtype); }

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float tp_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t tp_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);  // keep it a (quiet) NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float tp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000 | (man << 13));
    if (exp == 0) {
        float v = ldexpf((float)man, -24);  // subnormal or zero
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t tp_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffff;
    if (abs > 0x7f800000) return sign | 0x7e00;     // NaN
    if (abs >= 0x477ff000) return sign | 0x7c00;    // rounds to Inf (>= 65520)
    if (abs < 0x38800000) {                          // below the smallest normal: subnormal
        float a = bits_f32(abs);
        float scaled = a * 16777216.0f;              // units of 2^-24; exact, then RNE
        return sign | (uint16_t)lrintf(scaled);
    }
    uint32_t r = abs + 0xfff + ((abs >> 13) & 1);  // round to nearest even at bit 13
    return sign | (uint16_t)((r - 0x38000000) >> 13);
}
