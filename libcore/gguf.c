#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensor.h"

// Multi-byte fields are loaded with memcpy straight into host integers and floats.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host"
#endif

enum { QK_K = 256 };
enum { MAX_ARRAY_DEPTH = 8 };
// A jv array element costs ~16 bytes however small it is in the file: this bounds what
// a hostile file can make us allocate (real tokenizers hold a few hundred thousand).
enum { MAX_ARRAY_LEN = 1 << 24 };

struct tp_gguf {
    char *path;
    const uint8_t *base;
    uint64_t size;
    void *map;  // NULL when the bytes belong to the caller
    size_t map_len;
    uint32_t version, alignment;
    uint64_t data_start;
    jv meta;
    tp_gguf_tensor *tensors;
    int ntensors;
    struct tp_gguf_name *by_name;  // sorted by name, for tp_gguf_find
};

typedef struct tp_gguf_name {
    const char *name;
    int index;
} tp_gguf_name;

// Block size (elements) and block bytes of every type ggml defines; 0 = no such type.
static const struct {
    const char *name;
    int block, size;
} TYPES[TP_GGUF_TYPE_END] = {
    [TP_GGUF_F32] = {"F32", 1, 4},          [TP_GGUF_F16] = {"F16", 1, 2},
    [TP_GGUF_Q4_0] = {"Q4_0", 32, 18},      [TP_GGUF_Q4_1] = {"Q4_1", 32, 20},
    [TP_GGUF_Q5_0] = {"Q5_0", 32, 22},      [TP_GGUF_Q5_1] = {"Q5_1", 32, 24},
    [TP_GGUF_Q8_0] = {"Q8_0", 32, 34},      [TP_GGUF_Q8_1] = {"Q8_1", 32, 40},
    [TP_GGUF_Q2_K] = {"Q2_K", QK_K, 84},    [TP_GGUF_Q3_K] = {"Q3_K", QK_K, 110},
    [TP_GGUF_Q4_K] = {"Q4_K", QK_K, 144},   [TP_GGUF_Q5_K] = {"Q5_K", QK_K, 176},
    [TP_GGUF_Q6_K] = {"Q6_K", QK_K, 210},   [TP_GGUF_Q8_K] = {"Q8_K", QK_K, 292},
    [TP_GGUF_IQ2_XXS] = {"IQ2_XXS", QK_K, 66}, [TP_GGUF_IQ2_XS] = {"IQ2_XS", QK_K, 74},
    [TP_GGUF_IQ3_XXS] = {"IQ3_XXS", QK_K, 98}, [TP_GGUF_IQ1_S] = {"IQ1_S", QK_K, 50},
    [TP_GGUF_IQ4_NL] = {"IQ4_NL", 32, 18},  [TP_GGUF_IQ3_S] = {"IQ3_S", QK_K, 110},
    [TP_GGUF_IQ2_S] = {"IQ2_S", QK_K, 82},  [TP_GGUF_IQ4_XS] = {"IQ4_XS", QK_K, 136},
    [TP_GGUF_I8] = {"I8", 1, 1},            [TP_GGUF_I16] = {"I16", 1, 2},
    [TP_GGUF_I32] = {"I32", 1, 4},          [TP_GGUF_I64] = {"I64", 1, 8},
    [TP_GGUF_F64] = {"F64", 1, 8},          [TP_GGUF_IQ1_M] = {"IQ1_M", QK_K, 56},
    [TP_GGUF_BF16] = {"BF16", 1, 2},        [TP_GGUF_TQ1_0] = {"TQ1_0", QK_K, 54},
    [TP_GGUF_TQ2_0] = {"TQ2_0", QK_K, 66},  [TP_GGUF_MXFP4] = {"MXFP4", 32, 17},
};

const char *tp_gguf_type_name(int type) { return type >= 0 && type < TP_GGUF_TYPE_END ? TYPES[type].name : NULL; }

// ---------------------------------------------------------------------------------------
// Bounded reading of the header.

typedef struct reader {
    const uint8_t *p;
    uint64_t len, pos;
    const char *name;
    tp_err *err;
} reader;

__attribute__((format(printf, 3, 4))) static bool fail_at(reader *r, uint64_t at, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tp_err_set(r->err, "%s: byte %llu: %s", r->name, (unsigned long long)at, msg);
    return false;
}

// The next n bytes, or NULL (err set) when the file ends first.
static const uint8_t *take(reader *r, uint64_t n, const char *what) {
    if (n > r->len - r->pos) {
        fail_at(r, r->pos, "%s needs %llu bytes but the file ends after %llu", what, (unsigned long long)n,
                (unsigned long long)(r->len - r->pos));
        return NULL;
    }
    r->pos += n;
    return r->p + r->pos - n;
}

static bool rd_u32(reader *r, uint32_t *v, const char *what) {
    const uint8_t *b = take(r, 4, what);
    if (!b) return false;
    memcpy(v, b, 4);
    return true;
}

static bool rd_u64(reader *r, uint64_t *v, const char *what) {
    const uint8_t *b = take(r, 8, what);
    if (!b) return false;
    memcpy(v, b, 8);
    return true;
}

static bool rd_str(reader *r, const char **s, uint64_t *n, const char *what) {
    uint64_t at = r->pos;
    if (!rd_u64(r, n, what)) return false;
    if (*n > r->len - r->pos)
        return fail_at(r, at, "%s: string length %llu runs past the end of the file (%llu bytes left)", what,
                       (unsigned long long)*n, (unsigned long long)(r->len - r->pos));
    *s = (const char *)take(r, *n, what);
    return true;
}

// A name or key for a message: at most 80 bytes, unprintable bytes as '?'.
static const char *printable(char *dst, size_t cap, const char *s, uint64_t n) {
    size_t k = 0;
    for (; k < n && k + 4 < cap && k < 80; k++) dst[k] = (s[k] >= 0x20 && s[k] < 0x7f) ? s[k] : '?';
    if (k < n) dst[k++] = '.', dst[k++] = '.', dst[k++] = '.';
    dst[k] = 0;
    return dst;
}

// ---------------------------------------------------------------------------------------
// KV values.

enum { V_U8, V_I8, V_U16, V_I16, V_U32, V_I32, V_F32, V_BOOL, V_STR, V_ARR, V_U64, V_I64, V_F64, V_END };
static const char *const VALUE_NAMES[V_END] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
                                               "bool",  "string", "array",  "uint64", "int64", "float64"};
static const uint8_t VALUE_SIZE[V_END] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};  // 0: variable

// The fewest bytes a value of the type occupies (a string its length, an array its header).
static uint64_t value_min_size(uint32_t t) { return t == V_STR ? 8 : t == V_ARR ? 12 : VALUE_SIZE[t]; }

static jv scalar(const uint8_t *b, uint32_t t) {
    switch (t) {
    case V_U8: return jv_number(b[0]);
    case V_I8: return jv_number((int8_t)b[0]);
    case V_BOOL: return jv_bool(b[0] != 0);
    case V_U16: { uint16_t v; memcpy(&v, b, 2); return jv_number(v); }
    case V_I16: { int16_t v; memcpy(&v, b, 2); return jv_number(v); }
    case V_U32: { uint32_t v; memcpy(&v, b, 4); return jv_number(v); }
    case V_I32: { int32_t v; memcpy(&v, b, 4); return jv_number(v); }
    case V_F32: { float v; memcpy(&v, b, 4); return jv_number(v); }
    case V_U64: { uint64_t v; memcpy(&v, b, 8); return jv_number((double)v); }
    case V_I64: { int64_t v; memcpy(&v, b, 8); return jv_number((double)v); }
    default: { double v; memcpy(&v, b, 8); return jv_number(v); }
    }
}

static bool read_value(reader *r, uint32_t type, int depth, const char *ctx, jv *out);

static bool read_array(reader *r, int depth, const char *ctx, jv *out) {
    uint64_t at = r->pos, count;
    uint32_t et;
    if (!rd_u32(r, &et, ctx) || !rd_u64(r, &count, ctx)) return false;
    if (et >= V_END) return fail_at(r, at, "%s: unknown array element type %u", ctx, et);
    if (depth >= MAX_ARRAY_DEPTH) return fail_at(r, at, "%s: arrays nested deeper than %d", ctx, MAX_ARRAY_DEPTH);
    uint64_t min = value_min_size(et);
    if (count > (r->len - r->pos) / min)
        return fail_at(r, at, "%s: array of %llu %s values cannot fit in the %llu bytes left", ctx,
                       (unsigned long long)count, VALUE_NAMES[et], (unsigned long long)(r->len - r->pos));
    if (count > MAX_ARRAY_LEN)
        return fail_at(r, at, "%s: array of %llu values, at most %d supported", ctx, (unsigned long long)count,
                       MAX_ARRAY_LEN);
    jv a = jv_array_sized((int)count);
    if (VALUE_SIZE[et]) {
        const uint8_t *b = take(r, count * min, ctx);  // fits: checked above
        for (uint64_t i = 0; i < count; i++) a = jv_array_append(a, scalar(b + i * min, et));
    } else {
        for (uint64_t i = 0; i < count; i++) {
            jv v;
            if (!read_value(r, et, depth + 1, ctx, &v)) {
                jv_free(a);
                return false;
            }
            a = jv_array_append(a, v);
        }
    }
    *out = a;
    return true;
}

static bool read_value(reader *r, uint32_t type, int depth, const char *ctx, jv *out) {
    if (type == V_STR) {
        const char *s;
        uint64_t n;
        uint64_t at = r->pos;
        if (!rd_str(r, &s, &n, ctx)) return false;
        if (n > INT32_MAX) return fail_at(r, at, "%s: string of %llu bytes is too long", ctx, (unsigned long long)n);
        *out = jv_string_sized(s, (int)n);
        return true;
    }
    if (type == V_ARR) return read_array(r, depth, ctx, out);
    const uint8_t *b = take(r, VALUE_SIZE[type], ctx);
    if (!b) return false;
    *out = scalar(b, type);
    return true;
}

// general.alignment must be a uint32 power of two (the spec); anything else would
// misplace the data section silently.
static bool check_alignment(reader *r, uint64_t at, uint32_t type, jv v, uint32_t *alignment) {
    if (type != V_U32) return fail_at(r, at, "general.alignment must be a uint32, not %s", VALUE_NAMES[type]);
    uint32_t a = (uint32_t)jv_number_value(v);
    if (a == 0 || (a & (a - 1)))
        return fail_at(r, at, "general.alignment %u is not a power of two", a);
    *alignment = a;
    return true;
}

static bool read_kvs(reader *r, uint64_t kv_count, tp_gguf *g) {
    for (uint64_t i = 0; i < kv_count; i++) {
        uint64_t at = r->pos, klen;
        const char *key;
        char ctx[160], shown[96];
        snprintf(ctx, sizeof ctx, "KV %llu key", (unsigned long long)i);
        if (!rd_str(r, &key, &klen, ctx)) return false;
        if (klen == 0) return fail_at(r, at, "KV %llu: empty key", (unsigned long long)i);
        if (klen > INT32_MAX) return fail_at(r, at, "KV %llu: key of %llu bytes", (unsigned long long)i,
                                             (unsigned long long)klen);
        snprintf(ctx, sizeof ctx, "KV %llu '%s'", (unsigned long long)i, printable(shown, sizeof shown, key, klen));
        jv k = jv_string_sized(key, (int)klen);
        if (jv_object_has(jv_copy(g->meta), jv_copy(k))) {
            jv_free(k);
            return fail_at(r, at, "%s: duplicate key", ctx);
        }
        uint32_t type;
        jv v;
        uint64_t type_at = r->pos;
        if (!rd_u32(r, &type, ctx)) {
            jv_free(k);
            return false;
        }
        if (type >= V_END) {
            jv_free(k);
            return fail_at(r, type_at, "%s: unknown value type %u", ctx, type);
        }
        if (!read_value(r, type, 0, ctx, &v)) {
            jv_free(k);
            return false;
        }
        if (!strcmp(jv_string_value(k), "general.alignment") && !check_alignment(r, at, type, v, &g->alignment)) {
            jv_free(k);
            jv_free(v);
            return false;
        }
        g->meta = jv_object_set(g->meta, k, v);
    }
    return true;
}

// ---------------------------------------------------------------------------------------
// Tensor infos.

static bool read_tensor_info(reader *r, uint64_t i, tp_gguf *g, tp_gguf_tensor *t) {
    uint64_t at = r->pos, nlen;
    const char *name;
    char ctx[160], shown[96];
    snprintf(ctx, sizeof ctx, "tensor %llu name", (unsigned long long)i);
    if (!rd_str(r, &name, &nlen, ctx)) return false;
    if (nlen == 0) return fail_at(r, at, "tensor %llu: empty name", (unsigned long long)i);
    if (memchr(name, 0, nlen)) return fail_at(r, at, "tensor %llu: name contains a NUL byte", (unsigned long long)i);
    t->name = strndup(name, nlen);
    if (!t->name) return fail_at(r, at, "out of memory");
    snprintf(ctx, sizeof ctx, "tensor '%s'", printable(shown, sizeof shown, name, nlen));

    uint32_t n_dims, type;
    uint64_t dims_at = r->pos;
    if (!rd_u32(r, &n_dims, ctx)) return false;
    if (n_dims > TP_GGUF_MAX_DIMS)
        return fail_at(r, dims_at, "%s: %u dimensions, at most %d", ctx, n_dims, TP_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t nelem = 1;
    bool overflow = false;
    for (int d = 0; d < TP_GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if (d < (int)n_dims && !rd_u64(r, &ne, ctx)) return false;
        if (ne > (uint64_t)INT64_MAX) return fail_at(r, r->pos - 8, "%s: ne[%d] = %llu is too large", ctx, d,
                                                     (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
        overflow |= __builtin_mul_overflow(nelem, ne, &nelem);
    }
    if (overflow || nelem > (uint64_t)INT64_MAX)
        return fail_at(r, dims_at, "%s: element count overflows (ne = %lld x %lld x %lld x %lld)", ctx,
                       (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    t->nelem = nelem;
    uint64_t type_at = r->pos;
    if (!rd_u32(r, &type, ctx)) return false;
    if (type >= TP_GGUF_TYPE_END || !TYPES[type].name) return fail_at(r, type_at, "%s: unknown type %u", ctx, type);
    t->type = (tp_gguf_type)type;
    uint64_t block = (uint64_t)TYPES[type].block;
    if ((uint64_t)t->ne[0] % block)
        return fail_at(r, dims_at, "%s: ne[0] = %lld is not a multiple of the %s block size %llu", ctx,
                       (long long)t->ne[0], TYPES[type].name, (unsigned long long)block);
    if (__builtin_mul_overflow(nelem / block, (uint64_t)TYPES[type].size, &t->nbytes))
        return fail_at(r, dims_at, "%s: byte size overflows", ctx);
    uint64_t off_at = r->pos;
    if (!rd_u64(r, &t->offset, ctx)) return false;
    if (t->offset % g->alignment)
        return fail_at(r, off_at, "%s: data offset %llu is not a multiple of the alignment %u", ctx,
                       (unsigned long long)t->offset, g->alignment);
    t->file = g->path;
    return true;
}

static int by_offset(const void *a, const void *b) {
    const tp_gguf_tensor *x = *(const tp_gguf_tensor *const *)a, *y = *(const tp_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// Each tensor's bytes lie inside the data section and no two tensors share a byte.
static bool check_ranges(reader *r, tp_gguf *g) {
    uint64_t data_len = g->size > g->data_start ? g->size - g->data_start : 0;
    for (int i = 0; i < g->ntensors; i++) {
        const tp_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_len || t->nbytes > data_len - t->offset) {
            tp_err_set(r->err,
                       "%s: tensor '%s': %s data at bytes %llu..%llu of the file runs past its end (%llu bytes; "
                       "truncated?)",
                       g->path, t->name, TYPES[t->type].name, (unsigned long long)(g->data_start + t->offset),
                       (unsigned long long)(g->data_start + t->offset + t->nbytes), (unsigned long long)g->size);
            return false;
        }
    }
    const tp_gguf_tensor **order = tp_xmalloc(sizeof *order * (size_t)(g->ntensors ? g->ntensors : 1));
    for (int i = 0; i < g->ntensors; i++) order[i] = &g->tensors[i];
    qsort(order, (size_t)g->ntensors, sizeof *order, by_offset);
    const tp_gguf_tensor *last = NULL;  // the tensor reaching furthest so far
    bool ok = true;
    for (int i = 0; i < g->ntensors && ok; i++) {
        const tp_gguf_tensor *t = order[i];
        if (!t->nbytes) continue;
        if (last && last->offset + last->nbytes > t->offset) {
            tp_err_set(r->err, "%s: tensor '%s' (data bytes %llu..%llu) overlaps tensor '%s' (bytes %llu..%llu)",
                       g->path, t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                       last->name, (unsigned long long)last->offset,
                       (unsigned long long)(last->offset + last->nbytes));
            ok = false;
        }
        if (!last || t->offset + t->nbytes > last->offset + last->nbytes) last = t;
    }
    free(order);
    return ok;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const tp_gguf_name *)a)->name, ((const tp_gguf_name *)b)->name);
}

static bool index_names(reader *r, tp_gguf *g) {
    g->by_name = tp_xmalloc(sizeof *g->by_name * (size_t)(g->ntensors ? g->ntensors : 1));
    for (int i = 0; i < g->ntensors; i++) g->by_name[i] = (tp_gguf_name){g->tensors[i].name, i};
    qsort(g->by_name, (size_t)g->ntensors, sizeof *g->by_name, by_name);
    for (int i = 1; i < g->ntensors; i++) {
        if (!strcmp(g->by_name[i].name, g->by_name[i - 1].name)) {
            tp_err_set(r->err, "%s: tensor name '%s' appears twice", g->path, g->by_name[i].name);
            return false;
        }
    }
    return true;
}

static bool parse(tp_gguf *g, tp_err *err) {
    reader r = {.p = g->base, .len = g->size, .name = g->path, .err = err};
    const uint8_t *magic = take(&r, 4, "magic");
    uint64_t n_tensors, kv_count;
    if (!magic) return false;
    if (memcmp(magic, "GGUF", 4)) return fail_at(&r, 0, "not a GGUF file (no \"GGUF\" magic)");
    if (!rd_u32(&r, &g->version, "version")) return false;
    if ((g->version & 0xffff) == 0 && (g->version >> 24) <= 3)
        return fail_at(&r, 4, "big-endian GGUF files are not supported");
    if (g->version != 2 && g->version != 3)
        return fail_at(&r, 4, "GGUF version %u is not supported (only 2 and 3)", g->version);
    if (!rd_u64(&r, &n_tensors, "tensor count") || !rd_u64(&r, &kv_count, "KV count")) return false;
    // Every tensor info takes at least 24 bytes, every KV pair at least 13.
    if (n_tensors > (r.len - r.pos) / 24 || n_tensors > INT32_MAX)
        return fail_at(&r, 8, "tensor count %llu cannot fit in the %llu bytes left", (unsigned long long)n_tensors,
                       (unsigned long long)(r.len - r.pos));
    if (kv_count > (r.len - r.pos) / 13)
        return fail_at(&r, 16, "KV count %llu cannot fit in the %llu bytes left", (unsigned long long)kv_count,
                       (unsigned long long)(r.len - r.pos));
    g->alignment = 32;
    if (!read_kvs(&r, kv_count, g)) return false;
    if (n_tensors > (r.len - r.pos) / 24)
        return fail_at(&r, r.pos, "%llu tensor infos cannot fit in the %llu bytes left",
                       (unsigned long long)n_tensors, (unsigned long long)(r.len - r.pos));
    g->tensors = tp_xcalloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->ntensors = (int)i + 1;  // so close() frees the names read so far
        if (!read_tensor_info(&r, i, g, &g->tensors[i])) return false;
    }
    g->data_start = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (!check_ranges(&r, g) || !index_names(&r, g)) return false;
    for (int i = 0; i < g->ntensors; i++) g->tensors[i].data = g->base + g->data_start + g->tensors[i].offset;
    return true;
}

static tp_gguf *finish_open(tp_gguf *g, tp_err *err) {
    if (!parse(g, err)) {
        tp_gguf_close(g);
        return NULL;
    }
    return g;
}

tp_gguf *tp_gguf_from_mem(const void *data, size_t len, const char *name, tp_err *err) {
    tp_gguf *g = tp_xcalloc(1, sizeof *g);
    g->path = tp_xstrdup(name);
    g->base = len ? data : (const uint8_t *)"";
    g->size = len;
    g->meta = jv_object();
    return finish_open(g, err);
}

tp_gguf *tp_gguf_open(const char *path, tp_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tp_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        tp_err_set(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    tp_gguf *g = tp_xcalloc(1, sizeof *g);
    g->path = tp_xstrdup(path);
    g->meta = jv_object();
    g->size = (uint64_t)sb.st_size;
    g->base = (const uint8_t *)"";
    if (sb.st_size > 0) {
        g->map_len = (size_t)sb.st_size;
        g->map = mmap(NULL, g->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (g->map == MAP_FAILED) {
            tp_err_set(err, "%s: mmap failed: %s", path, strerror(errno));
            g->map = NULL;
            close(fd);
            tp_gguf_close(g);
            return NULL;
        }
        g->base = g->map;
    }
    close(fd);
    return finish_open(g, err);
}

void tp_gguf_close(tp_gguf *g) {
    if (!g) return;
    if (g->map) munmap(g->map, g->map_len);
    for (int i = 0; i < g->ntensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->by_name);
    jv_free(g->meta);
    free(g->path);
    free(g);
}

int tp_gguf_version(const tp_gguf *g) { return (int)g->version; }
jv tp_gguf_metadata(const tp_gguf *g) { return jv_copy(g->meta); }
int tp_gguf_tensor_count(const tp_gguf *g) { return g->ntensors; }

const tp_gguf_tensor *tp_gguf_tensor_at(const tp_gguf *g, int i) {
    return i >= 0 && i < g->ntensors ? &g->tensors[i] : NULL;
}

const tp_gguf_tensor *tp_gguf_find(const tp_gguf *g, const char *name) {
    tp_gguf_name key = {name, 0};
    const tp_gguf_name *hit = g->ntensors ? bsearch(&key, g->by_name, (size_t)g->ntensors, sizeof key, by_name) : NULL;
    return hit ? &g->tensors[hit->index] : NULL;
}

// ---------------------------------------------------------------------------------------
// Dequantization, one block at a time. The formulas are gguf-py's (gguf/quants.py), in
// the same float32 operation order, so results match it bit for bit. Products and sums
// are separate statements so no compiler fuses them into an FMA, which rounds once.

static float f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return tp_f16_to_f32(h);
}

static float mul_add(float a, float b, float c) {
    float p = a * b;
    return p + c;
}

static float mul_sub(float a, float b, float c) {
    float p = a * b;
    return p - c;
}

// Q4_0, 18 bytes: f16 d, 16 bytes of nibbles (low nibbles are elements 0..15, high 16..31).
static void dq_q4_0(const uint8_t *b, float *y) {
    float d = f16(b);
    const uint8_t *qs = b + 2;
    for (int l = 0; l < 16; l++) {
        y[l] = d * (float)((qs[l] & 15) - 8);
        y[l + 16] = d * (float)((qs[l] >> 4) - 8);
    }
}

// Q4_1, 20 bytes: f16 d, f16 m, nibbles as Q4_0; y = d*q + m.
static void dq_q4_1(const uint8_t *b, float *y) {
    float d = f16(b), m = f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int l = 0; l < 16; l++) {
        y[l] = mul_add(d, (float)(qs[l] & 15), m);
        y[l + 16] = mul_add(d, (float)(qs[l] >> 4), m);
    }
}

// Q5_0, 22 bytes: f16 d, u32 of fifth bits (bit l for element l), nibbles as Q4_0.
static void dq_q5_0(const uint8_t *b, float *y) {
    float d = f16(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
    for (int l = 0; l < 16; l++) {
        int lo = (qs[l] & 15) | (int)((qh >> l) & 1) << 4, hi = (qs[l] >> 4) | (int)((qh >> (l + 16)) & 1) << 4;
        y[l] = d * (float)(lo - 16);
        y[l + 16] = d * (float)(hi - 16);
    }
}

// Q5_1, 24 bytes: f16 d, f16 m, u32 fifth bits, nibbles; y = d*q + m.
static void dq_q5_1(const uint8_t *b, float *y) {
    float d = f16(b), m = f16(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t *qs = b + 8;
    for (int l = 0; l < 16; l++) {
        int lo = (qs[l] & 15) | (int)((qh >> l) & 1) << 4, hi = (qs[l] >> 4) | (int)((qh >> (l + 16)) & 1) << 4;
        y[l] = mul_add(d, (float)lo, m);
        y[l + 16] = mul_add(d, (float)hi, m);
    }
}

// Q8_0, 34 bytes: f16 d, 32 int8.
static void dq_q8_0(const uint8_t *b, float *y) {
    float d = f16(b);
    for (int l = 0; l < 32; l++) y[l] = (float)(int8_t)b[2 + l] * d;
}

// Q2_K, 84 bytes: 16 scale bytes (low nibble scale, high nibble min, per 16 elements),
// 64 bytes of 2-bit values, f16 d, f16 dmin. Element i = h*128 + s*32 + l sits in
// bits 2s of qs[h*32 + l].
static void dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    float d = f16(b + 80), dmin = f16(b + 82), dl[16], ml[16];
    for (int j = 0; j < 16; j++) {
        dl[j] = d * (float)(sc[j] & 15);
        ml[j] = dmin * (float)(sc[j] >> 4);
    }
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, s = (i / 32) % 4, l = i % 32;
        y[i] = mul_sub(dl[i / 16], (float)((qs[h * 32 + l] >> (2 * s)) & 3), ml[i / 16]);
    }
}

// Q3_K, 110 bytes: 32 bytes hmask, 64 bytes of 2-bit low parts (as Q2_K), 12 bytes of
// 6-bit signed scales (per 16 elements), f16 d. Element i = 32b + l takes bit b of
// hmask[l]; a clear bit subtracts 4.
static void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hmask = b, *qs = b + 32, *sc = b + 96;
    float d = f16(b + 108), dl[16];
    for (int k = 0; k < 16; k++) {
        int lo = k < 8 ? sc[k] & 15 : sc[k - 8] >> 4, hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
        dl[k] = d * (float)((lo | hi << 4) - 32);
    }
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, s = (i / 32) % 4, l = i % 32;
        int q = ((qs[h * 32 + l] >> (2 * s)) & 3) - (((hmask[l] >> (i / 32)) & 1) ^ 1) * 4;
        y[i] = dl[i / 16] * (float)q;
    }
}

// The 8 six-bit scales and mins of Q4_K and Q5_K, packed in 12 bytes.
static void k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 2) & 0x30);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
    }
}

// Q4_K, 144 bytes: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles. Element
// i = c*64 + s*32 + l is nibble s of qs[c*32 + l], in sub-block j = i/32.
static void dq_q4_k(const uint8_t *b, float *y) {
    float d = f16(b), dmin = f16(b + 2);
    const uint8_t *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        k_scale_min(b + 4, j, &sc, &mn);
        float dd = d * (float)sc, dm = dmin * (float)mn;
        int c = j / 2, s = j % 2;
        for (int l = 0; l < 32; l++) y[j * 32 + l] = mul_sub(dd, (float)((qs[c * 32 + l] >> (4 * s)) & 15), dm);
    }
}

// Q5_K, 176 bytes: as Q4_K with 32 bytes of fifth bits before the nibbles (bit j of
// qh[l] for element 32j + l).
static void dq_q5_k(const uint8_t *b, float *y) {
    float d = f16(b), dmin = f16(b + 2);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        k_scale_min(b + 4, j, &sc, &mn);
        float dd = d * (float)sc, dm = dmin * (float)mn;
        int c = j / 2, s = j % 2;
        for (int l = 0; l < 32; l++) {
            int q = ((qs[c * 32 + l] >> (4 * s)) & 15) | ((qh[l] >> j) & 1) << 4;
            y[j * 32 + l] = mul_sub(dd, (float)q, dm);
        }
    }
}

// Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8
// scales (per 16 elements), f16 d. Element i = h*128 + r: low nibble r/64 of
// ql[h*64 + r%64], high bits 2*(r/32) of qh[h*32 + r%32]; value q - 32.
static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16(b + 208), dd[16];
    for (int k = 0; k < 16; k++) dd[k] = d * (float)sc[k];
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, r = i % 128;
        int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 15, hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
        y[i] = dd[i / 16] * (float)((lo | hi << 4) - 32);
    }
}

static void dq_f16(const uint8_t *b, float *y) { *y = f16(b); }

static void dq_bf16(const uint8_t *b, float *y) {
    uint16_t h;
    memcpy(&h, b, 2);
    uint32_t u = (uint32_t)h << 16;
    memcpy(y, &u, 4);
}

static void dq_f32(const uint8_t *b, float *y) { memcpy(y, b, 4); }

typedef void (*dq_block_fn)(const uint8_t *block, float *out);

static dq_block_fn dq_fn(int type) {
    switch (type) {
    case TP_GGUF_F32: return dq_f32;
    case TP_GGUF_F16: return dq_f16;
    case TP_GGUF_BF16: return dq_bf16;
    case TP_GGUF_Q4_0: return dq_q4_0;
    case TP_GGUF_Q4_1: return dq_q4_1;
    case TP_GGUF_Q5_0: return dq_q5_0;
    case TP_GGUF_Q5_1: return dq_q5_1;
    case TP_GGUF_Q8_0: return dq_q8_0;
    case TP_GGUF_Q2_K: return dq_q2_k;
    case TP_GGUF_Q3_K: return dq_q3_k;
    case TP_GGUF_Q4_K: return dq_q4_k;
    case TP_GGUF_Q5_K: return dq_q5_k;
    case TP_GGUF_Q6_K: return dq_q6_k;
    default: return NULL;
    }
}

int tp_gguf_type_supported(int type) { return dq_fn(type) != NULL; }

int tp_gguf_dequantize(const tp_gguf_tensor *t, float *out, tp_err *err) {
    dq_block_fn fn = dq_fn(t->type);
    if (!fn) {
        tp_err_set(err,
                   "%s: tensor '%s': type %s cannot be dequantized (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
                   "Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                   t->file, t->name, TYPES[t->type].name);
        return -1;
    }
    if (t->type == TP_GGUF_F32) {
        if (t->nbytes) memcpy(out, t->data, t->nbytes);
        return 0;
    }
    int64_t block = TYPES[t->type].block, size = TYPES[t->type].size, nblocks = (int64_t)t->nelem / block;
#pragma omp parallel for schedule(static) if (nblocks * block >= (1 << 16))
    for (int64_t i = 0; i < nblocks; i++) fn(t->data + i * size, out + i * block);
    return 0;
}

// ---------------------------------------------------------------------------------------
// The Hugging Face view.

static jv kv_get(const tp_gguf *g, const char *key) { return jv_object_get(jv_copy(g->meta), jv_string(key)); }

static const char *arch_of(const tp_gguf *g) {
    jv a = kv_get(g, "general.architecture");
    // The string lives as long as g->meta holds its own reference.
    const char *s = jv_get_kind(a) == JV_KIND_STRING ? jv_string_value(a) : NULL;
    jv_free(a);
    return s;
}

// A whole number >= min from the metadata: 1 found, 0 absent, -1 error (wrong kind or range).
static int kv_whole(const tp_gguf *g, const char *key, double min, double *out, tp_err *err) {
    jv v = kv_get(g, key);
    int rc = 0;
    if (jv_get_kind(v) == JV_KIND_NUMBER) {
        double d = jv_number_value(v);
        if (d >= min && d <= 9007199254740992.0 && d == (double)(int64_t)d) {
            *out = d;
            rc = 1;
        } else {
            tp_err_set(err, "%s = %g is not a whole number >= %g", key, d, min);
            rc = -1;
        }
    } else if (jv_is_valid(v)) {
        tp_err_set(err, "%s must be a number (per-layer arrays are not supported)", key);
        rc = -1;
    }
    jv_free(v);
    return rc;
}

static int kv_float(const tp_gguf *g, const char *key, double *out) {
    jv v = kv_get(g, key);
    int rc = jv_get_kind(v) == JV_KIND_NUMBER;
    if (rc) *out = jv_number_value(v);
    jv_free(v);
    return rc;
}

static const struct {
    const char *gguf, *hf, *model_type;
} ARCHS[] = {
    {"llama", "LlamaForCausalLM", "llama"},
    {"qwen2", "Qwen2ForCausalLM", "qwen2"},
    {"qwen3", "Qwen3ForCausalLM", "qwen3"},
};

// {gguf key suffix, HF key, min, required}: whole-number hyperparameters.
static const struct {
    const char *key, *hf;
    double min;
    bool required;
} HPARAMS[] = {
    {"embedding_length", "hidden_size", 1, true},
    {"feed_forward_length", "intermediate_size", 1, true},
    {"block_count", "num_hidden_layers", 1, true},
    {"attention.head_count", "num_attention_heads", 1, true},
    {"attention.head_count_kv", "num_key_value_heads", 1, false},
    {"attention.key_length", "head_dim", 1, false},
    {"context_length", "max_position_embeddings", 1, false},
};

static jv set_num(jv obj, const char *key, double v) { return jv_object_set(obj, jv_string(key), jv_number(v)); }

static jv rope_scaling(const tp_gguf *g, const char *arch, jv cfg) {
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    jv type = kv_get(g, key);
    if (jv_get_kind(type) == JV_KIND_STRING && strcmp(jv_string_value(type), "none")) {
        jv rs = jv_object_set(jv_object(), jv_string("rope_type"), jv_copy(type));
        double v;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
        if (kv_float(g, key, &v)) rs = set_num(rs, "factor", v);
        snprintf(key, sizeof key, "%s.rope.scaling.original_context_length", arch);
        if (kv_float(g, key, &v)) rs = set_num(rs, "original_max_position_embeddings", v);
        cfg = jv_object_set(cfg, jv_string("rope_scaling"), rs);
    } else if (tp_gguf_find(g, "rope_freqs.weight")) {
        jv rs = jv_object_set(jv_object(), jv_string("rope_type"), jv_string("freq_factors"));
        rs = jv_object_set(rs, jv_string("tensor"), jv_string("rope_freqs.weight"));
        cfg = jv_object_set(cfg, jv_string("rope_scaling"), rs);
    }
    jv_free(type);
    return cfg;
}

static double cfg_number(jv cfg, const char *key, double dflt) {
    jv v = jv_object_get(jv_copy(cfg), jv_string(key));
    double d = jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : dflt;
    jv_free(v);
    return d;
}

// The whole-number hyperparameters into *cfg; 0 ok, -1 error (the message lacks the path).
static int whole_hparams(const tp_gguf *g, const char *arch, jv *cfg, tp_err *err) {
    char key[128];
    double v;
    for (size_t i = 0; i < sizeof HPARAMS / sizeof HPARAMS[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, HPARAMS[i].key);
        int rc = kv_whole(g, key, HPARAMS[i].min, &v, err);
        if (rc < 0) return -1;
        if (rc == 0 && HPARAMS[i].required) {
            tp_err_set(err, "%s is missing", key);
            return -1;
        }
        if (rc) *cfg = set_num(*cfg, HPARAMS[i].hf, v);
    }
    double heads = cfg_number(*cfg, "num_attention_heads", 1);
    if (cfg_number(*cfg, "num_key_value_heads", 0) == 0) *cfg = set_num(*cfg, "num_key_value_heads", heads);
    // head_dim: attention.key_length, else the rotary dimension count (as transformers reads
    // it); HF rotates whole heads, so a shorter rotary part (partial RoPE) cannot be expressed.
    double head_dim = cfg_number(*cfg, "head_dim", cfg_number(*cfg, "hidden_size", 0) / heads);
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    int rc = kv_whole(g, key, 1, &v, err);
    if (rc < 0) return -1;
    if (rc && v != head_dim) {
        tp_err_set(err, "%s = %.0f but heads are %g wide: partial rotary embeddings are not supported", key, v,
                   head_dim);
        return -1;
    }
    if (rc) *cfg = set_num(*cfg, "head_dim", head_dim);
    return 0;
}

jv tp_gguf_hf_config(const tp_gguf *g, tp_err *err) {
    const char *arch = arch_of(g);
    int a = 0, na = (int)(sizeof ARCHS / sizeof ARCHS[0]);
    while (arch && a < na && strcmp(arch, ARCHS[a].gguf)) a++;
    if (!arch || a == na) {
        tp_err_set(err, "%s: general.architecture %s%s%s is not supported (llama, qwen2, qwen3)", g->path,
                   arch ? "'" : "", arch ? arch : "missing", arch ? "'" : "");
        return jv_invalid();
    }
    jv cfg = jv_object();
    cfg = jv_object_set(cfg, jv_string("architectures"), jv_array_append(jv_array(), jv_string(ARCHS[a].hf)));
    cfg = jv_object_set(cfg, jv_string("model_type"), jv_string(ARCHS[a].model_type));
    if (whole_hparams(g, arch, &cfg, err)) {
        tp_err_prefix(err, "%s", g->path);
        jv_free(cfg);
        return jv_invalid();
    }
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (!kv_float(g, key, &v)) {
        tp_err_set(err, "%s: %s is missing", g->path, key);
        jv_free(cfg);
        return jv_invalid();
    }
    cfg = set_num(cfg, "rms_norm_eps", v);
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    cfg = set_num(cfg, "rope_theta", kv_float(g, key, &v) ? v : 10000.0);  // ggml's and HF's default

    // The vocabulary: stated, or the embedding's rows, or the token list.
    snprintf(key, sizeof key, "%s.vocab_size", arch);
    const tp_gguf_tensor *emb = tp_gguf_find(g, "token_embd.weight");
    jv tokens = kv_get(g, "tokenizer.ggml.tokens");
    if (kv_whole(g, key, 1, &v, NULL) == 1) cfg = set_num(cfg, "vocab_size", v);
    else if (emb && emb->n_dims == 2) cfg = set_num(cfg, "vocab_size", (double)emb->ne[1]);
    else if (jv_get_kind(tokens) == JV_KIND_ARRAY) cfg = set_num(cfg, "vocab_size", jv_array_length(jv_copy(tokens)));
    jv_free(tokens);

    cfg = jv_object_set(cfg, jv_string("hidden_act"), jv_string("silu"));
    cfg = jv_object_set(cfg, jv_string("tie_word_embeddings"), jv_bool(!tp_gguf_find(g, "output.weight")));
    if (strcmp(arch, "qwen2"))  // Qwen2 always has q/k/v biases; the others say so in the config
        cfg = jv_object_set(cfg, jv_string("attention_bias"), jv_bool(tp_gguf_find(g, "blk.0.attn_q.bias") != NULL));
    static const char *const IDS[][2] = {{"tokenizer.ggml.bos_token_id", "bos_token_id"},
                                         {"tokenizer.ggml.eos_token_id", "eos_token_id"},
                                         {"tokenizer.ggml.unknown_token_id", "unk_token_id"},
                                         {"tokenizer.ggml.padding_token_id", "pad_token_id"}};
    for (int i = 0; i < 4; i++)
        if (kv_whole(g, IDS[i][0], 0, &v, NULL) == 1) cfg = set_num(cfg, IDS[i][1], v);
    return rope_scaling(g, arch, cfg);
}

// {HF name inside a layer, GGUF name inside a block}, without ".weight"/".bias".
static const char *const LAYER_NAMES[][2] = {
    {"input_layernorm", "attn_norm"},       {"post_attention_layernorm", "ffn_norm"},
    {"self_attn.q_proj", "attn_q"},         {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},         {"self_attn.o_proj", "attn_output"},
    {"self_attn.q_norm", "attn_q_norm"},    {"self_attn.k_norm", "attn_k_norm"},
    {"mlp.gate_proj", "ffn_gate"},          {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
};
static const char *const GLOBAL_NAMES[][2] = {
    {"model.embed_tokens", "token_embd"}, {"model.norm", "output_norm"}, {"lm_head", "output"}};
enum { N_LAYER_NAMES = sizeof LAYER_NAMES / sizeof LAYER_NAMES[0], N_GLOBAL_NAMES = 3 };

// Splits "prefix.N.rest" (N decimal without leading zeros, < 10^6): *layer, returns rest or NULL.
static const char *layer_of(const char *name, const char *prefix, long *layer) {
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n)) return NULL;
    const char *p = name + n;
    int digits = 0;
    long v = 0;
    while (p[digits] >= '0' && p[digits] <= '9' && digits < 7) v = v * 10 + (p[digits++] - '0');
    if (!digits || digits > 6 || (digits > 1 && p[0] == '0') || p[digits] != '.') return NULL;
    *layer = v;
    return p + digits + 1;
}

// Maps between the two naming schemes: from = 0 for HF -> GGUF, 1 for GGUF -> HF.
static int map_name(const char *name, int from, char *buf, size_t n) {
    const char *dot = strrchr(name, '.');
    if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".bias"))) return 0;
    size_t stem = (size_t)(dot - name);
    for (int i = 0; i < N_GLOBAL_NAMES; i++)
        if (strlen(GLOBAL_NAMES[i][from]) == stem && !strncmp(name, GLOBAL_NAMES[i][from], stem))
            return snprintf(buf, n, "%s%s", GLOBAL_NAMES[i][!from], dot) < (int)n;
    long layer;
    const char *rest = layer_of(name, from ? "blk." : "model.layers.", &layer);
    if (!rest) return 0;
    size_t rlen = (size_t)(dot - rest);
    for (int i = 0; i < N_LAYER_NAMES; i++)
        if (strlen(LAYER_NAMES[i][from]) == rlen && !strncmp(rest, LAYER_NAMES[i][from], rlen))
            return snprintf(buf, n, "%s%ld.%s%s", from ? "model.layers." : "blk.", layer, LAYER_NAMES[i][!from], dot) <
                   (int)n;
    return 0;
}

int tp_gguf_hf_name(const char *gguf_name, char *buf, size_t n) { return map_name(gguf_name, 1, buf, n); }

// llama.cpp's converter interleaves the two rotary halves of each head of q and k
// (GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i); this puts them back.
static int unpermute_rows(const tp_gguf *g, const tp_gguf_tensor *t, const float *src, float *dst, bool is_k,
                          tp_err *err) {
    char key[128];
    double heads, kv_heads;
    snprintf(key, sizeof key, "llama.attention.head_count");
    if (kv_whole(g, key, 1, &heads, err) != 1) {
        tp_err_set(err, "%s: tensor '%s': llama.attention.head_count is missing or invalid", g->path, t->name);
        return -1;
    }
    snprintf(key, sizeof key, "llama.attention.head_count_kv");
    int rc = kv_whole(g, key, 1, &kv_heads, err);
    if (rc < 0) {
        tp_err_prefix(err, "%s: tensor '%s'", g->path, t->name);
        return -1;
    }
    int64_t n_head = (int64_t)(is_k && rc == 1 ? kv_heads : heads);
    int64_t rows = t->n_dims >= 2 ? t->ne[1] : t->ne[0], cols = t->n_dims >= 2 ? t->ne[0] : 1;
    if (t->n_dims > 2 || rows % (2 * n_head)) {
        tp_err_set(err, "%s: tensor '%s': %lld rows do not split into %lld heads of rotary pairs", g->path, t->name,
                   (long long)rows, (long long)n_head);
        return -1;
    }
    int64_t hd = rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + (h * hd + j * half + i) * cols, src + (h * hd + 2 * i + j) * cols,
                       sizeof *dst * (size_t)cols);
    return 0;
}

int tp_gguf_read_hf(const tp_gguf *g, const char *hf_name, float *out, size_t cap, int64_t shape[TP_GGUF_MAX_DIMS],
                    int *ndim, tp_err *err) {
    char name[256];
    const tp_gguf_tensor *t = map_name(hf_name, 0, name, sizeof name) ? tp_gguf_find(g, name) : NULL;
    if (!t) return 0;
    for (int d = 0; d < TP_GGUF_MAX_DIMS; d++) shape[d] = d < t->n_dims ? t->ne[t->n_dims - 1 - d] : 1;
    *ndim = t->n_dims;
    if (!out) return 1;
    if (t->nelem > cap) {
        tp_err_set(err, "%s: tensor '%s' (%s) has %llu elements, the buffer holds %zu", g->path, t->name, hf_name,
                   (unsigned long long)t->nelem, cap);
        return -1;
    }
    const char *arch = arch_of(g);
    const char *dot = strrchr(name, '.');
    size_t stem = (size_t)(dot - name);
    bool is_q = stem > 7 && !strncmp(dot - 7, ".attn_q", 7), is_k = stem > 7 && !strncmp(dot - 7, ".attn_k", 7);
    if (!(arch && !strcmp(arch, "llama") && (is_q || is_k))) return tp_gguf_dequantize(t, out, err) ? -1 : 1;
    float *tmp = malloc(sizeof *tmp * (t->nelem ? t->nelem : 1));
    if (!tmp) {
        tp_err_set(err, "%s: tensor '%s': out of memory", g->path, t->name);
        return -1;
    }
    int rc = tp_gguf_dequantize(t, tmp, err) || unpermute_rows(g, t, tmp, out, is_k, err) ? -1 : 1;
    free(tmp);
    return rc;
}

int tp_gguf_tokenizer_summary(const tp_gguf *g, char *buf, size_t n) {
    jv model = kv_get(g, "tokenizer.ggml.model"), pre = kv_get(g, "tokenizer.ggml.pre");
    jv tokens = kv_get(g, "tokenizer.ggml.tokens"), merges = kv_get(g, "tokenizer.ggml.merges");
    jv tmpl = kv_get(g, "tokenizer.chat_template");
    double bos = -1, eos = -1;
    if (kv_whole(g, "tokenizer.ggml.bos_token_id", 0, &bos, NULL) != 1) bos = -1;
    if (kv_whole(g, "tokenizer.ggml.eos_token_id", 0, &eos, NULL) != 1) eos = -1;
    char b[32], e[32];
    snprintf(b, sizeof b, "%.0f", bos);
    snprintf(e, sizeof e, "%.0f", eos);
    int len = snprintf(buf, n, "%s tokenizer%s%s%s, %d tokens, %d merges, bos %s, eos %s, %s",
                       jv_get_kind(model) == JV_KIND_STRING ? jv_string_value(model) : "no",
                       jv_get_kind(pre) == JV_KIND_STRING ? " (pre '" : "",
                       jv_get_kind(pre) == JV_KIND_STRING ? jv_string_value(pre) : "",
                       jv_get_kind(pre) == JV_KIND_STRING ? "')" : "",
                       jv_get_kind(tokens) == JV_KIND_ARRAY ? jv_array_length(jv_copy(tokens)) : 0,
                       jv_get_kind(merges) == JV_KIND_ARRAY ? jv_array_length(jv_copy(merges)) : 0,
                       bos >= 0 ? b : "none", eos >= 0 ? e : "none",
                       jv_get_kind(tmpl) == JV_KIND_STRING ? "chat template" : "no chat template");
    jv_free(model);
    jv_free(pre);
    jv_free(tokens);
    jv_free(merges);
    jv_free(tmpl);
    return len;
}
