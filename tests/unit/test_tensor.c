// Element types: sizes, names, and the f16/bf16/f8 conversions against the compiler's.
#include "tensor.h"
#include "test.h"

#include <stdint.h>

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_names_and_sizes(void) {
    const char *names[] = {"BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "I16", "U16", "F16", "BF16",
                           "I32", "U32", "F32", "F64", "I64", "U64"};
    const size_t sizes[] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    for (int i = 0; i < TP_DTYPE_COUNT; i++) {
        tp_dtype t;
        CHECK(tp_dtype_parse(names[i], &t) == 0 && (int)t == i);
        CHECK_STR(tp_dtype_name(t), names[i]);
        CHECK(tp_dtype_size(t) == sizes[i]);
    }
    tp_dtype t;
    CHECK(tp_dtype_parse("f32", &t) == -1);  // the spec's names are upper case
    uint64_t numel, nbytes;
    int64_t shape[] = {3, 4, 5};
    CHECK(tp_numel(shape, 3, TP_BF16, &numel, &nbytes) && numel == 60 && nbytes == 120);
    int64_t huge[] = {1LL << 40, 1LL << 40};
    CHECK(!tp_numel(huge, 2, TP_F32, &numel, &nbytes));
    int64_t neg[] = {-1};
    CHECK(!tp_numel(neg, 1, TP_F32, &numel, &nbytes));
    int64_t zero[] = {0, 1LL << 62};
    CHECK(tp_numel(zero, 2, TP_F32, &numel, &nbytes) && numel == 0);
}

static void test_f16_matches_compiler(void) {
    int bad = 0;
    // Every f16 value converts exactly to f32 and back.
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 ref;
        uint16_t hh = (uint16_t)h;
        memcpy(&ref, &hh, 2);
        float f = tp_f16_to_f32(hh);
        if (isnan((float)ref) ? !isnan(f) : fbits(f) != fbits((float)ref)) bad++;
        if (!isnan(f) && tp_f32_to_f16(f) != hh) bad++;
    }
    // Random f32 values round to nearest even exactly as the compiler's conversion.
    for (int i = 0; i < 2000000; i++) {
        float f = bitsf((uint32_t)test_rand());
        if (i % 2) f = (float)((test_uniform() - 0.5) * ldexp(1, (int)(test_rand() % 40) - 26));
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        uint16_t ours = tp_f32_to_f16(f);
        if (isnan(f) ? (ours & 0x7c00) != 0x7c00 || !(ours & 0x3ff) : ours != rb) bad++;
    }
    CHECK_MSG(bad == 0, "%d f16 conversions differ", bad);
}

static void test_bf16_rounding(void) {
    CHECK(tp_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(tp_bf16_to_f32(0x3f80) == 1.0f);
    // Ties go to even: 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125.
    CHECK(tp_f32_to_bf16(bitsf(0x3f808000)) == 0x3f80);
    CHECK(tp_f32_to_bf16(bitsf(0x3f818000)) == 0x3f82);
    CHECK(tp_f32_to_bf16(bitsf(0x3f808001)) == 0x3f81);
    CHECK(isnan(tp_bf16_to_f32(tp_f32_to_bf16(NAN))));
    CHECK(tp_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(tp_f32_to_bf16(3.4e38f) == 0x7f80);  // rounds past the largest finite bf16
    // Against a direct nearest-value reference on random inputs.
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        float f = (float)((test_uniform() - 0.5) * 1000);
        uint16_t b = tp_f32_to_bf16(f);
        float lo = tp_bf16_to_f32(b), other = tp_bf16_to_f32((uint16_t)(b + ((fabsf(lo) < fabsf(f)) ? 1 : -1)));
        if (fabsf(lo - f) > fabsf(other - f)) bad++;
    }
    CHECK(bad == 0);
}

static void test_get_set_all_dtypes(void) {
    unsigned char buf[64];
    for (int t = 0; t < TP_DTYPE_COUNT; t++) {
        double v = t == TP_BOOL ? 1 : 3;  // exactly representable everywhere
        CHECK(tp_tensor_set(buf, (tp_dtype)t, 2, v));
        CHECK_MSG(tp_tensor_get(buf, (tp_dtype)t, 2) == v, "%s", tp_dtype_name((tp_dtype)t));
    }
    CHECK(!tp_tensor_set(buf, TP_U8, 0, 256));
    CHECK(!tp_tensor_set(buf, TP_I32, 0, 1.5));
    CHECK(!tp_tensor_set(buf, TP_I8, 0, -129));
    CHECK(!tp_tensor_set(buf, TP_BOOL, 0, 2));
    CHECK(tp_tensor_set(buf, TP_I64, 0, -9007199254740992.0) && tp_tensor_get(buf, TP_I64, 0) == -9007199254740992.0);
    // F8: every E4M3 code decodes and re-encodes to itself (NaN aside).
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        unsigned char b = (unsigned char)c;
        double v = tp_tensor_get(&b, TP_F8_E4M3, 0);
        if (isnan(v)) continue;
        unsigned char back;
        tp_tensor_set(&back, TP_F8_E4M3, 0, v);
        if (back != b && !(v == 0 && (back & 0x7f) == 0)) bad++;
        double w = tp_tensor_get(&b, TP_F8_E5M2, 0);
        if (isnan(w) || isinf(w)) continue;
        tp_tensor_set(&back, TP_F8_E5M2, 0, w);
        if (back != b) bad++;
    }
    CHECK_MSG(bad == 0, "%d f8 codes do not round-trip", bad);
    unsigned char e4 = 0x7e;  // the largest E4M3: 448
    CHECK(tp_tensor_get(&e4, TP_F8_E4M3, 0) == 448);
}

// The element nearest to v among those tp_tensor_get can return (ties: even code),
// found by brute force over the codes around the one tp_tensor_set chose.
static void test_set_rounds_once_from_double(void) {
    unsigned char b[2];
    CHECK(tp_tensor_set(b, TP_BF16, 0, 1.0039062500009095) && tp_tensor_get(b, TP_BF16, 0) == 1.0078125);
    CHECK(tp_tensor_set(b, TP_F16, 0, 1.0004882812509095) && tp_tensor_get(b, TP_F16, 0) == 1.0009765625);
    CHECK(tp_tensor_set(b, TP_F8_E5M2, 0, 1.1250009536743164) && tp_tensor_get(b, TP_F8_E5M2, 0) == 1.25);
    CHECK(tp_tensor_set(b, TP_F8_E4M3, 0, 1.0625000000009095) && tp_tensor_get(b, TP_F8_E4M3, 0) == 1.125);
    CHECK(tp_tensor_set(b, TP_F8_E4M3, 0, 1000) && tp_tensor_get(b, TP_F8_E4M3, 0) == 448);
    CHECK(tp_tensor_set(b, TP_F8_E5M2, 0, 70000) && isinf(tp_tensor_get(b, TP_F8_E5M2, 0)));
    const tp_dtype types[] = {TP_F16, TP_BF16};
    int bad = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 300000; i++) {
            // Values near halfway points, where rounding twice goes wrong.
            double v = (test_uniform() - 0.5) * ldexp(1, (int)(test_rand() % 30) - 12);
            uint16_t code;
            tp_tensor_set(&code, types[k], 0, v);
            double got = tp_tensor_get(&code, types[k], 0), err = fabs(got - v);
            for (int d = -1; d <= 1; d += 2) {
                uint16_t other = (uint16_t)(code + d);
                double o = tp_tensor_get(&other, types[k], 0);
                if (isnan(o) || isinf(o) || signbit(o) != signbit(got)) continue;
                if (fabs(o - v) < err || (fabs(o - v) == err && (code & 1))) bad++;
            }
        }
    }
    CHECK_MSG(bad == 0, "%d conversions not correctly rounded", bad);
}

int main(void) {
    RUN(test_names_and_sizes);
    RUN(test_f16_matches_compiler);
    RUN(test_bf16_rounding);
    RUN(test_get_set_all_dtypes);
    RUN(test_set_rounds_once_from_double);
    return TEST_SUMMARY();
}
