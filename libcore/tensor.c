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

static float f8_e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
    float v;
    if (exp == 15 && man == 7) return NAN;  // E4M3 has no infinities
    if (exp == 0) v = ldexpf((float)man, -9);
    else v = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -v : v;
}

// Nearest 8-bit code to v among the non-negative codes [0, last], ties to the even
// code, then the sign. Exhaustive: these are storage formats here, not a hot path,
// and this is plainly right (no double rounding through float or f16).
static uint8_t nearest_f8(double v, tp_dtype t, int last) {
    uint8_t sign = signbit(v) ? 0x80 : 0, best = 0;
    double a = fabs(v), best_err = INFINITY;
    for (int c = 0; c <= last; c++) {
        uint8_t code = (uint8_t)c;
        double e = fabs(tp_tensor_get(&code, t, 0) - a);
        if (e < best_err || (e == best_err && !(c & 1))) best_err = e, best = code;
    }
    return sign | best;
}

// double -> float rounded to odd: float keeps 13+ more bits than f16 and bf16, so
// rounding this result to nearest even gives the correctly rounded narrow value.
static float round_to_odd_float(double v) {
    float f = (float)v;
    if (isnan(v) || (double)f == v) return f;
    if (fabs((double)f) > fabs(v)) f = nextafterf(f, 0.0f);  // truncate toward zero
    uint32_t u;
    memcpy(&u, &f, 4);
    u |= 1;
    memcpy(&f, &u, 4);
    return f;
}

double tp_tensor_get(const void *data, tp_dtype t, uint64_t i) {
    const uint8_t *p = (const uint8_t *)data + i * tp_dtype_size(t);
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
            float f32; double f64; } v;
    memcpy(&v, p, tp_dtype_size(t));  // records need not keep elements aligned
    switch (t) {
    case TP_BOOL: case TP_U8: return v.u8;
    case TP_I8: return v.i8;
    case TP_F8_E4M3: return f8_e4m3_to_f32(v.u8);
    case TP_F8_E5M2: return tp_f16_to_f32((uint16_t)(v.u8 << 8));
    case TP_I16: return v.i16;
    case TP_U16: return v.u16;
    case TP_F16: return tp_f16_to_f32(v.u16);
    case TP_BF16: return tp_bf16_to_f32(v.u16);
    case TP_I32: return v.i32;
    case TP_U32: return v.u32;
    case TP_F32: return v.f32;
    case TP_F64: return v.f64;
    case TP_I64: return (double)v.i64;
    case TP_U64: return (double)v.u64;
    default: return NAN;
    }
}

static bool whole_in(double v, double lo, double hi) { return v == floor(v) && v >= lo && v <= hi; }

bool tp_tensor_set(void *data, tp_dtype t, uint64_t i, double v) {
    uint8_t *p = (uint8_t *)data + i * tp_dtype_size(t);
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
            float f32; double f64; } u;
    switch (t) {
    case TP_BOOL: if (v != 0 && v != 1) return false; u.u8 = (uint8_t)v; break;
    case TP_U8: if (!whole_in(v, 0, 255)) return false; u.u8 = (uint8_t)v; break;
    case TP_I8: if (!whole_in(v, -128, 127)) return false; u.i8 = (int8_t)v; break;
    case TP_F8_E4M3: u.u8 = isnan(v) ? 0x7f : nearest_f8(v, t, 0x7e); break;  // saturates at 448: no Inf
    case TP_F8_E5M2:
        if (isnan(v)) u.u8 = 0x7e;
        else if (fabs(v) >= 61440) u.u8 = (uint8_t)((signbit(v) ? 0x80 : 0) | 0x7c);  // past 57344: rounds to Inf
        else u.u8 = nearest_f8(v, t, 0x7b);
        break;
    case TP_I16: if (!whole_in(v, -32768, 32767)) return false; u.i16 = (int16_t)v; break;
    case TP_U16: if (!whole_in(v, 0, 65535)) return false; u.u16 = (uint16_t)v; break;
    case TP_F16: u.u16 = tp_f32_to_f16(round_to_odd_float(v)); break;
    case TP_BF16: u.u16 = tp_f32_to_bf16(round_to_odd_float(v)); break;
    case TP_I32: if (!whole_in(v, -2147483648.0, 2147483647.0)) return false; u.i32 = (int32_t)v; break;
    case TP_U32: if (!whole_in(v, 0, 4294967295.0)) return false; u.u32 = (uint32_t)v; break;
    case TP_F32: u.f32 = (float)v; break;
    case TP_F64: u.f64 = v; break;
    case TP_I64: if (!whole_in(v, -9223372036854775808.0, 9223372036854774784.0)) return false; u.i64 = (int64_t)v; break;
    case TP_U64: if (!whole_in(v, 0, 18446744073709549568.0)) return false; u.u64 = (uint64_t)v; break;
    default: return false;
    }
    memcpy(p, &u, tp_dtype_size(t));
    return true;
}
