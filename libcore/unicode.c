#include "unicode.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// Two-level table: 0x1100 blocks of 256 code points; identical blocks are shared.
enum { BLOCK_BITS = 8, BLOCK_SIZE = 1 << BLOCK_BITS, BLOCK_COUNT = 0x110000 >> BLOCK_BITS };
static uint16_t block_index[BLOCK_COUNT];
static uint8_t *block_data;  // [blocks][BLOCK_SIZE]
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static uint8_t compute_class(uint32_t cp) {
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return TP_UC_SPACE;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: return TP_UC_L;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: return TP_UC_N;
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: return TP_UC_M;
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: return TP_UC_P;
    case UTF8PROC_CATEGORY_SM: case UTF8PROC_CATEGORY_SC: case UTF8PROC_CATEGORY_SK:
    case UTF8PROC_CATEGORY_SO: return TP_UC_S;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: return TP_UC_SPACE;
    default: return 0;
    }
}

static void build_table(void) {
    uint8_t *blocks = tp_xmalloc((size_t)BLOCK_COUNT * BLOCK_SIZE);
    size_t used = 0;
    uint8_t block[BLOCK_SIZE];
    for (uint32_t b = 0; b < BLOCK_COUNT; b++) {
        for (uint32_t i = 0; i < BLOCK_SIZE; i++) block[i] = compute_class((b << BLOCK_BITS) | i);
        size_t found = used;
        // Most shared blocks repeat the previous one or an early one; a linear search
        // over the distinct blocks (a few hundred) keeps the build at a few ms.
        for (size_t k = used; k-- > 0;)
            if (memcmp(blocks + k * BLOCK_SIZE, block, BLOCK_SIZE) == 0) { found = k; break; }
        if (found == used) memcpy(blocks + used++ * BLOCK_SIZE, block, BLOCK_SIZE);
        block_index[b] = (uint16_t)found;
    }
    block_data = tp_xrealloc(blocks, used * BLOCK_SIZE);
}

uint8_t tp_uc_class(uint32_t cp) {
    pthread_once(&table_once, build_table);
    if (cp > 0x10FFFF) return 0;
    return block_data[((size_t)block_index[cp >> BLOCK_BITS] << BLOCK_BITS) | (cp & (BLOCK_SIZE - 1))];
}

int tp_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < (size_t)len) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int tp_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tp_utf8_valid(const char *s, size_t n, size_t *bad_offset) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        // ASCII runs are the common case: check eight bytes at a time.
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        if (u[i] < 0x80) { i++; continue; }
        uint32_t cp;
        int len = tp_utf8_decode(u + i, n - i, &cp);
        if (len == 0) {
            if (bad_offset) *bad_offset = i;
            return false;
        }
        i += (size_t)len;
    }
    return true;
}

// Length of the maximal subpart of an ill-formed sequence starting at s (>= 1).
static int lead_length(unsigned char c) {
    return c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
}

// Length of the maximal subpart of an ill-formed sequence starting at s (>= 1): the
// bytes that are a proper start of some character (or 1 when none are).
static size_t maximal_subpart(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    int len = lead_length(c);
    if (len == 0) return 1;
    size_t i = 1;
    for (; i < (size_t)len && i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) break;
        if (i == 1 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) ||
                       (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F)))
            break;
    }
    return i;
}

size_t tp_utf8_complete_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    // A character is at most 4 bytes: only the last 3 bytes can start an incomplete one.
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        size_t start = n - back;
        if ((u[start] & 0xC0) == 0x80) continue;
        // An unfinished character: a lead byte needing more than `back` bytes, all of
        // which so far could still continue it.
        if ((size_t)lead_length(u[start]) > back && maximal_subpart(u + start, back) == back) return start;
        break;
    }
    return n;
}

void tp_utf8_append_lossy(tp_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        uint32_t cp;
        int len = u[i] < 0x80 ? 1 : tp_utf8_decode(u + i, n - i, &cp);
        if (len > 0) { i += (size_t)len; continue; }
        tp_buf_append(out, s + run, i - run);
        tp_buf_append(out, "\xEF\xBF\xBD", 3);
        i += maximal_subpart(u + i, n - i);
        run = i;
    }
    tp_buf_append(out, s + run, n - run);
}

int tp_unicode_normalize(tp_norm_form form, const char *s, size_t n, tp_buf *out, tp_err *err) {
    // Below U+0300 every character is its own NFC/NFD form and has no compatibility
    // mapping except a few Latin-1 ones (U+00A0..U+00BF) that NFKC/NFKD change.
    unsigned char limit = (form == TP_NORM_NFC || form == TP_NORM_NFD) ? 0xCC : 0xC2;
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < limit) i++;
    if (i == n) {
        tp_buf_append(out, s, n);
        return 0;
    }
    int options = UTF8PROC_STABLE;
    switch (form) {
    case TP_NORM_NFC: options |= UTF8PROC_COMPOSE; break;
    case TP_NORM_NFD: options |= UTF8PROC_DECOMPOSE; break;
    case TP_NORM_NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case TP_NORM_NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *result = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &result,
                                        (utf8proc_option_t)options);
    if (len < 0) {
        tp_err_set(err, "unicode normalisation failed: %s", utf8proc_errmsg(len));
        return -1;
    }
    tp_buf_append(out, result, (size_t)len);
    free(result);
    return 0;
}
