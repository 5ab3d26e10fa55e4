// Loading tokenizer.json. The vocabulary and merges (a few hundred thousand strings,
// ~10 MB) are read by a dedicated validating scanner straight into the tables —
// building a jv tree for them costs more than the whole 150 ms load budget. The
// small parts (added tokens, normalizer, pre-tokenizer, post-processor, decoder)
// are parsed with tp_json_parse and read as jv.
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "input.h"
#include "json.h"
#include "tokenizer_impl.h"

// ---- the byte-level alphabet (GPT-2's bytes_to_unicode) ----

// Code point of each byte, and the byte of each code point below 324 (-1 if none).
static uint16_t byte_char[256];
static int16_t char_byte[324];

static void build_byte_level(void) {
    for (int c = 0; c < 324; c++) char_byte[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_char[b] = (uint16_t)(printable ? b : 256 + extra++);
        char_byte[byte_char[b]] = (int16_t)b;
    }
}

static void init_byte_level(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_byte_level);
}

uint32_t tp_tok_byte_char(unsigned char b) {
    init_byte_level();
    return byte_char[b];
}

int tp_tok_char_byte(uint32_t cp) {
    init_byte_level();
    return cp < 324 ? char_byte[cp] : -1;
}

// Writes the bytes a byte-level string stands for to out, which has room for n:
// the bytes are never longer than the string. Characters outside the alphabet
// stand for their own UTF-8 (as HF's ByteLevel decoder treats them) and make the
// token impure. Returns the number of bytes.
static size_t byte_level_decode(const char *s, size_t n, char *out, bool *pure) {
    size_t i = 0, w = 0;
    *pure = true;
    while (i < n) {
        uint32_t cp;
        int len = tp_utf8_next((const unsigned char *)s + i, &cp);
        if (cp < 324 && char_byte[cp] >= 0) {
            out[w++] = (char)char_byte[cp];
        } else {
            memcpy(out + w, s + i, (size_t)len);
            w += (size_t)len;
            *pure = false;
        }
        i += (size_t)len;
    }
    return w;
}

uint64_t tp_tok_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ (w * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ (w * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

// Token ids are below 2^24: far above any real vocabulary (Qwen: 151,669), and
// small enough that a hostile file cannot make the id tables take gigabytes.
#define MAX_TOKEN_ID ((1 << 24) - 1)
static bool token_id_of(double v, int32_t *out) {
    if (!(v >= 0 && v <= MAX_TOKEN_ID) || v != (double)(int32_t)v) return false;
    *out = (int32_t)v;
    return true;
}

// ---- scanner ----

typedef struct {
    const char *s;
    size_t n, i;
    const char *name;
    tp_err *err;
    int depth;
} scanner;

static int scan_fail(scanner *sc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int scan_fail(scanner *sc, const char *fmt, ...) {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < sc->i && k < sc->n; k++) {
        if (sc->s[k] == '\n') { line++; col = 1; }
        else col++;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tp_err_set(sc->err, "%s:%zu:%zu: %s (byte %zu)", sc->name, line, col, msg, sc->i);
    return -1;
}

static void ws(scanner *sc) {
    // Pretty-printed files (all of HF's) are ~40% indentation: skip it 8 spaces at a time.
    static const char spaces[8] = "        ";
    while (sc->n - sc->i >= 8 && memcmp(sc->s + sc->i, spaces, 8) == 0) sc->i += 8;
    while (sc->i < sc->n) {
        char c = sc->s[sc->i];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        sc->i++;
    }
}

static int expect(scanner *sc, char c) {
    ws(sc);
    if (sc->i >= sc->n) return scan_fail(sc, "unexpected end of file, expected '%c'", c);
    if (sc->s[sc->i] != c) return scan_fail(sc, "expected '%c'", c);
    sc->i++;
    return 0;
}

static int hex4(scanner *sc, uint32_t *v) {
    if (sc->n - sc->i < 4) return scan_fail(sc, "truncated \\u escape");
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = sc->s[sc->i + (size_t)k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return scan_fail(sc, "bad \\u escape");
        *v = *v << 4 | (uint32_t)d;
    }
    sc->i += 4;
    return 0;
}

// Reads a JSON string; appends its decoded UTF-8 to out (when not NULL).
static int scan_string(scanner *sc, tp_buf *out) {
    ws(sc);
    if (sc->i >= sc->n) return scan_fail(sc, "unexpected end of file, expected a string");
    if (sc->s[sc->i] != '"') return scan_fail(sc, "expected a string");
    sc->i++;
    for (;;) {
        size_t start = sc->i;
        while (sc->i < sc->n) {
            unsigned char c = (unsigned char)sc->s[sc->i];
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
            sc->i++;
        }
        if (out) tp_buf_append(out, sc->s + start, sc->i - start);
        if (sc->i >= sc->n) return scan_fail(sc, "unterminated string");
        unsigned char c = (unsigned char)sc->s[sc->i];
        if (c == '"') { sc->i++; return 0; }
        if (c < 0x20) return scan_fail(sc, "control character in string");
        if (c >= 0x80) {
            uint32_t cp;
            int len = tp_utf8_decode((const unsigned char *)sc->s + sc->i, sc->n - sc->i, &cp);
            if (len == 0) return scan_fail(sc, "invalid UTF-8 in string");
            if (out) tp_buf_append(out, sc->s + sc->i, (size_t)len);
            sc->i += (size_t)len;
            continue;
        }
        sc->i++;  // backslash
        if (sc->i >= sc->n) return scan_fail(sc, "unterminated string");
        char e = sc->s[sc->i++];
        char ch;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            uint32_t v;
            if (hex4(sc, &v) < 0) return -1;
            if (v >= 0xD800 && v <= 0xDBFF) {
                uint32_t lo;
                if (sc->n - sc->i < 2 || sc->s[sc->i] != '\\' || sc->s[sc->i + 1] != 'u')
                    return scan_fail(sc, "lone surrogate \\u%04X", v);
                sc->i += 2;
                if (hex4(sc, &lo) < 0) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return scan_fail(sc, "lone surrogate \\u%04X", v);
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            } else if (v >= 0xDC00 && v <= 0xDFFF) {
                return scan_fail(sc, "lone surrogate \\u%04X", v);
            }
            char u[4];
            int len = tp_utf8_encode(v, u);
            if (out) tp_buf_append(out, u, (size_t)len);
            continue;
        }
        default: sc->i--; return scan_fail(sc, "bad escape '\\%c'", e);
        }
        if (out) tp_buf_putc(out, ch);
    }
}

static int scan_number(scanner *sc, double *value) {
    size_t start = sc->i;
    const char *s = sc->s;
    size_t i = sc->i;
    if (i < sc->n && s[i] == '-') i++;
    if (i < sc->n && s[i] == '0') i++;
    else if (i < sc->n && s[i] >= '1' && s[i] <= '9') while (i < sc->n && s[i] >= '0' && s[i] <= '9') i++;
    else return scan_fail(sc, "expected a value");
    if (i < sc->n && s[i] == '.') {
        i++;
        if (i >= sc->n || s[i] < '0' || s[i] > '9') { sc->i = i; return scan_fail(sc, "bad number"); }
        while (i < sc->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < sc->n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < sc->n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= sc->n || s[i] < '0' || s[i] > '9') { sc->i = i; return scan_fail(sc, "bad number"); }
        while (i < sc->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (value) {
        char tmp[64];
        size_t len = i - start < sizeof tmp - 1 ? i - start : sizeof tmp - 1;
        memcpy(tmp, s + start, len);
        tmp[len] = 0;
        *value = strtod(tmp, NULL);
    }
    sc->i = i;
    return 0;
}

static int scan_skip(scanner *sc) {
    ws(sc);
    if (sc->i >= sc->n) return scan_fail(sc, "unexpected end of file, expected a value");
    char c = sc->s[sc->i];
    if (c == '"') return scan_string(sc, NULL);
    if (c == '{' || c == '[') {
        if (++sc->depth > 1000) return scan_fail(sc, "nested too deeply");
        char close = c == '{' ? '}' : ']';
        sc->i++;
        ws(sc);
        if (sc->i < sc->n && sc->s[sc->i] == close) {
            sc->i++;
            sc->depth--;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                if (scan_string(sc, NULL) < 0 || expect(sc, ':') < 0) return -1;
            }
            if (scan_skip(sc) < 0) return -1;
            ws(sc);
            if (sc->i >= sc->n) return scan_fail(sc, "unexpected end of file, expected ',' or '%c'", close);
            if (sc->s[sc->i] == ',') { sc->i++; continue; }
            if (sc->s[sc->i] == close) { sc->i++; sc->depth--; return 0; }
            return scan_fail(sc, "expected ',' or '%c'", close);
        }
    }
    static const char *words[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(words[k]);
        if (sc->n - sc->i >= len && memcmp(sc->s + sc->i, words[k], len) == 0) {
            sc->i += len;
            return 0;
        }
    }
    return scan_number(sc, NULL);
}

// Parses the next value with tp_json_parse into *out.
static int scan_jv(scanner *sc, jv *out) {
    ws(sc);
    size_t start = sc->i;
    if (scan_skip(sc) < 0) return -1;
    tp_err e;
    if (tp_json_parse(sc->s + start, sc->i - start, out, &e) < 0) {
        sc->i = start;
        return scan_fail(sc, "%s", e.msg);
    }
    return 0;
}

// Iterates an object: calls field(ctx, sc, key) for each key, which reads the value.
typedef int (*field_fn)(void *ctx, scanner *sc, const char *key, size_t key_len);
static int scan_object(scanner *sc, void *ctx, field_fn field) {
    if (expect(sc, '{') < 0) return -1;
    ws(sc);
    if (sc->i < sc->n && sc->s[sc->i] == '}') { sc->i++; return 0; }
    tp_buf key = {0};
    int rc = -1;
    for (;;) {
        key.len = 0;
        if (scan_string(sc, &key) < 0) goto out;
        size_t key_len = key.len;
        tp_buf_putc(&key, 0);
        if (expect(sc, ':') < 0 || field(ctx, sc, key.data, key_len) < 0) goto out;
        ws(sc);
        if (sc->i >= sc->n) { scan_fail(sc, "unexpected end of file, expected ',' or '}'"); goto out; }
        if (sc->s[sc->i] == ',') { sc->i++; continue; }
        if (sc->s[sc->i] == '}') { sc->i++; rc = 0; goto out; }
        scan_fail(sc, "expected ',' or '}'");
        goto out;
    }
out:
    tp_buf_free(&key);
    return rc;
}

// ---- tokenizer.json ----

typedef struct {
    uint32_t off, len;
    int32_t id;
} vocab_entry;

typedef struct {
    uint32_t a_off, a_len, b_off, b_len;
} merge_entry;

typedef struct {
    tp_buf strings;  // vocab and merge strings
    vocab_entry *vocab;
    size_t n_vocab, cap_vocab;
    merge_entry *merges;
    size_t n_merges, cap_merges;
    bool have_vocab, have_merges, vocab_not_object;
    jv model;  // small model fields
    jv added, normalizer, pre_tokenizer, post_processor, decoder;
} parsed;

static int vocab_field(void *ctx, scanner *sc, const char *key, size_t key_len) {
    parsed *p = ctx;
    size_t off = p->strings.len;
    tp_buf_append(&p->strings, key, key_len);
    ws(sc);
    double v;
    size_t at = sc->i;
    if (scan_number(sc, &v) < 0) return -1;
    int32_t id;
    if (!token_id_of(v, &id)) {
        sc->i = at;
        return scan_fail(sc, "vocab: id of \"%.100s\" must be an integer in [0, %d]", key, MAX_TOKEN_ID);
    }
    if (p->n_vocab == p->cap_vocab) {
        p->cap_vocab = p->cap_vocab ? p->cap_vocab * 2 : 65536;
        p->vocab = tp_xrealloc(p->vocab, p->cap_vocab * sizeof *p->vocab);
    }
    p->vocab[p->n_vocab++] = (vocab_entry){(uint32_t)off, (uint32_t)(p->strings.len - off), id};
    return 0;
}

static int scan_merges(scanner *sc, parsed *p) {
    if (expect(sc, '[') < 0) return -1;
    ws(sc);
    if (sc->i < sc->n && sc->s[sc->i] == ']') { sc->i++; return 0; }
    for (;;) {
        ws(sc);
        merge_entry m;
        size_t at = sc->i;
        if (sc->i < sc->n && sc->s[sc->i] == '[') {
            sc->i++;
            m.a_off = (uint32_t)p->strings.len;
            if (scan_string(sc, &p->strings) < 0) return -1;
            m.a_len = (uint32_t)(p->strings.len - m.a_off);
            if (expect(sc, ',') < 0) return -1;
            m.b_off = (uint32_t)p->strings.len;
            if (scan_string(sc, &p->strings) < 0) return -1;
            m.b_len = (uint32_t)(p->strings.len - m.b_off);
            if (expect(sc, ']') < 0) return -1;
        } else {
            size_t off = p->strings.len;
            if (scan_string(sc, &p->strings) < 0) return -1;
            const char *s = p->strings.data + off;
            size_t len = p->strings.len - off;
            const char *space = memchr(s, ' ', len);
            if (!space || memchr(space + 1, ' ', len - (size_t)(space + 1 - s))) {
                sc->i = at;
                return scan_fail(sc, "merges[%zu]: expected \"left right\" with exactly one space", p->n_merges);
            }
            m.a_off = (uint32_t)off;
            m.a_len = (uint32_t)(space - s);
            m.b_off = (uint32_t)(off + m.a_len + 1);
            m.b_len = (uint32_t)(len - m.a_len - 1);
        }
        if (p->n_merges == p->cap_merges) {
            p->cap_merges = p->cap_merges ? p->cap_merges * 2 : 65536;
            p->merges = tp_xrealloc(p->merges, p->cap_merges * sizeof *p->merges);
        }
        p->merges[p->n_merges++] = m;
        ws(sc);
        if (sc->i >= sc->n) return scan_fail(sc, "unexpected end of file in merges");
        if (sc->s[sc->i] == ',') { sc->i++; continue; }
        if (sc->s[sc->i] == ']') { sc->i++; return 0; }
        return scan_fail(sc, "expected ',' or ']' in merges");
    }
}

static int model_field(void *ctx, scanner *sc, const char *key, size_t key_len) {
    (void)key_len;
    parsed *p = ctx;
    if (strcmp(key, "vocab") == 0) {
        p->have_vocab = true;
        ws(sc);
        if (sc->i < sc->n && sc->s[sc->i] != '{') {
            p->vocab_not_object = true;  // reported after "type" is known
            return scan_skip(sc);
        }
        return scan_object(sc, p, vocab_field);
    }
    if (strcmp(key, "merges") == 0) {
        p->have_merges = true;
        return scan_merges(sc, p);
    }
    jv v;
    if (scan_jv(sc, &v) < 0) return -1;
    p->model = jv_object_set(p->model, jv_string(key), v);
    return 0;
}

static int top_field(void *ctx, scanner *sc, const char *key, size_t key_len) {
    (void)key_len;
    parsed *p = ctx;
    if (strcmp(key, "model") == 0) {
        ws(sc);
        if (sc->i < sc->n && sc->s[sc->i] != '{') return scan_fail(sc, "\"model\" must be an object");
        return scan_object(sc, p, model_field);
    }
    jv *slot = strcmp(key, "added_tokens") == 0     ? &p->added
               : strcmp(key, "normalizer") == 0     ? &p->normalizer
               : strcmp(key, "pre_tokenizer") == 0  ? &p->pre_tokenizer
               : strcmp(key, "post_processor") == 0 ? &p->post_processor
               : strcmp(key, "decoder") == 0        ? &p->decoder
                                                    : NULL;
    if (!slot) return scan_skip(sc);
    jv_free(*slot);
    return scan_jv(sc, slot);
}

// ---- building the tables ----

static void vhash_insert(tp_tokenizer *t, int32_t id, uint32_t h) {
    uint32_t i = h & t->vmask;
    while (t->vhash[i].id >= 0) i = (i + 1) & t->vmask;
    t->vhash[i] = (vocab_slot){id, h};
}

static int32_t vocab_lookup_hashed(const tp_tokenizer *t, const char *s, size_t n, uint32_t h) {
    for (uint32_t i = h & t->vmask;; i = (i + 1) & t->vmask) {
        const vocab_slot *v = &t->vhash[i];
        if (v->id < 0) return -1;
        if (v->hash == h) {
            const tok_bytes *b = &t->tok[v->id];
            if (b->len == n && memcmp(t->bytes.data + b->off, s, n) == 0) return v->id;
        }
    }
}

int32_t tp_tok_vocab_lookup(const tp_tokenizer *t, const char *s, size_t n) {
    return vocab_lookup_hashed(t, s, n, (uint32_t)tp_tok_hash_bytes(s, n));
}

static void mhash_insert(tp_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & t->mmask;; i = (i + 1) & t->mmask) {
        merge_slot *m = &t->mhash[i];
        if (m->key == MERGE_EMPTY || m->key == key) {  // a repeated merge takes its last rank, as in HF
            *m = (merge_slot){key, rank, new_id};
            return;
        }
    }
}

static const char *clip(const char *s, uint32_t n, int *len) {
    *len = (int)(n > 100 ? 100 : n);
    return s;
}

// The table building is split so that OpenMP threads share the work that needs no
// order (decoding, hashing, looking up: most of the load time) and one thread does
// what must happen in file order (duplicate checks, inserts, the first error).
static int build_vocab(tp_tokenizer *t, parsed *p, int32_t max_id, tp_err *err) {
    t->vocab_size = max_id + 1;
    t->tok = tp_xcalloc((size_t)t->vocab_size, sizeof *t->tok);
    t->flags = tp_xcalloc((size_t)t->vocab_size, 1);
    uint32_t cap = 1024;
    while (cap < p->n_vocab * 2) cap <<= 1;
    t->vmask = cap - 1;
    t->vhash = tp_xmalloc(cap * sizeof *t->vhash);
    for (uint32_t i = 0; i < cap; i++) t->vhash[i].id = -1;
    // Each token decodes into the place of its own byte-level string in a buffer as
    // large as all strings, so the threads need no offsets from each other.
    tp_buf_reserve(&t->bytes, p->strings.len + 1);
    t->bytes.len = p->strings.len;
    uint32_t *len = tp_xmalloc((p->n_vocab + 1) * sizeof *len), *hash = tp_xmalloc((p->n_vocab + 1) * sizeof *hash);
    uint8_t *pure = tp_xmalloc(p->n_vocab + 1);
    const vocab_entry *vocab = p->vocab;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < p->n_vocab; k++) {
        bool is_pure;
        len[k] = (uint32_t)byte_level_decode(p->strings.data + vocab[k].off, vocab[k].len, t->bytes.data + vocab[k].off,
                                             &is_pure);
        pure[k] = is_pure;
        hash[k] = (uint32_t)tp_tok_hash_bytes(t->bytes.data + vocab[k].off, len[k]);
    }
    int rc = 0, n;
    for (size_t k = 0; k < p->n_vocab && rc == 0; k++) {
        const vocab_entry *v = &vocab[k];
        const char *text = clip(p->strings.data + v->off, v->len, &n);
        if (t->flags[v->id] & TOK_PRESENT) {
            tp_err_set(err, "vocab: id %d is given to two tokens (\"%.*s\" and another)", v->id, n, text);
            rc = -1;
        } else if (pure[k] && vocab_lookup_hashed(t, t->bytes.data + v->off, len[k], hash[k]) >= 0) {
            tp_err_set(err, "vocab: token \"%.*s\" appears twice", n, text);
            rc = -1;
        } else {
            t->tok[v->id] = (tok_bytes){v->off, len[k]};
            t->flags[v->id] = TOK_PRESENT | (pure[k] ? TOK_PURE : 0);
            if (pure[k]) vhash_insert(t, v->id, hash[k]);
        }
    }
    free(len);
    free(hash);
    free(pure);
    if (rc < 0) return -1;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tp_tok_vocab_lookup(t, &c, 1);
    }
    return 0;
}

// The pure token a byte-level merge part names, or -1.
static int32_t merge_part(const tp_tokenizer *t, const char *s, uint32_t n, char *tmp) {
    bool pure;
    size_t len = byte_level_decode(s, n, tmp, &pure);
    return pure ? tp_tok_vocab_lookup(t, tmp, len) : -1;
}

static int build_merges(tp_tokenizer *t, parsed *p, tp_err *err) {
    uint64_t cap = 1024;
    while (cap < p->n_merges * 2) cap <<= 1;
    t->mmask = cap - 1;
    t->mhash = tp_xmalloc(cap * sizeof *t->mhash);
    for (uint64_t i = 0; i < cap; i++) t->mhash[i].key = MERGE_EMPTY;
    int32_t(*ids)[3] = tp_xmalloc((p->n_merges + 1) * sizeof *ids);  // left, right, merged; -1: not found
    const merge_entry *merges = p->merges;
#pragma omp parallel
    {
        tp_buf tmp = {0};
#pragma omp for schedule(static)
        for (size_t k = 0; k < p->n_merges; k++) {
            const merge_entry *m = &merges[k];
            tp_buf_reserve(&tmp, m->a_len > m->b_len ? m->a_len : m->b_len);
            int32_t a = merge_part(t, p->strings.data + m->a_off, m->a_len, tmp.data);
            int32_t b = merge_part(t, p->strings.data + m->b_off, m->b_len, tmp.data);
            int32_t merged = -1;
            if (a >= 0 && b >= 0) {
                tmp.len = 0;
                tp_buf_append(&tmp, t->bytes.data + t->tok[a].off, t->tok[a].len);
                tp_buf_append(&tmp, t->bytes.data + t->tok[b].off, t->tok[b].len);
                merged = tp_tok_vocab_lookup(t, tmp.data, tmp.len);
            }
            ids[k][0] = a;
            ids[k][1] = b;
            ids[k][2] = merged;
        }
        tp_buf_free(&tmp);
    }
    int rc = 0, n;
    for (size_t k = 0; k < p->n_merges && rc == 0; k++) {
        const merge_entry *m = &merges[k];
        if (ids[k][0] < 0 || ids[k][1] < 0) {
            bool left = ids[k][0] < 0;
            const char *part = clip(p->strings.data + (left ? m->a_off : m->b_off), left ? m->a_len : m->b_len, &n);
            tp_err_set(err, "merges[%zu]: \"%.*s\" is not a byte-level token of the vocabulary", k, n, part);
            rc = -1;
        } else if (ids[k][2] < 0) {
            tp_err_set(err, "merges[%zu]: \"%.*s\" + \"%.*s\" makes a token that is not in the vocabulary", k,
                       (int)m->a_len, p->strings.data + m->a_off, (int)m->b_len, p->strings.data + m->b_off);
            rc = -1;
        } else {
            mhash_insert(t, ids[k][0], ids[k][1], (int32_t)k, ids[k][2]);
        }
    }
    free(ids);
    return rc;
}

static int check_model(tp_tokenizer *t, parsed *p, tp_err *err) {
    const char *type = tp_json_get_string(p->model, "type");
    if (type && strcmp(type, "BPE") != 0) {
        tp_err_set(err, "model type \"%s\" is not supported: thinkpipe tokenizes byte-level BPE only "
                        "(Qwen, Llama 3, DeepSeek, GPT-2 style)", type);
        return -1;
    }
    if (p->vocab_not_object) {
        tp_err_set(err, "model.vocab must be an object of token: id");
        return -1;
    }
    if (!p->have_vocab || !p->have_merges) {
        tp_err_set(err, "model: a BPE model needs \"vocab\" and \"merges\"%s", type ? "" : " (no \"type\" given)");
        return -1;
    }
    if (tp_json_get_bool(p->model, "byte_fallback", false)) {
        tp_err_set(err, "model: byte_fallback BPE (sentencepiece style, e.g. Llama 2, Mistral) is not supported");
        return -1;
    }
    jv dropout = tp_json_get(p->model, "dropout");
    bool has_dropout = jv_get_kind(dropout) == JV_KIND_NUMBER && jv_number_value(dropout) > 0;
    jv_free(dropout);
    if (has_dropout) {
        tp_err_set(err, "model: BPE dropout is not supported (encoding would be random)");
        return -1;
    }
    const char *prefix = tp_json_get_string(p->model, "continuing_subword_prefix");
    const char *suffix = tp_json_get_string(p->model, "end_of_word_suffix");
    if ((prefix && *prefix) || (suffix && *suffix)) {
        tp_err_set(err, "model: continuing_subword_prefix/end_of_word_suffix are not supported");
        return -1;
    }
    t->ignore_merges = tp_json_get_bool(p->model, "ignore_merges", false);
    t->fuse_unk = tp_json_get_bool(p->model, "fuse_unk", false);
    t->unk_id = -1;
    return 0;
}

static int build_added(tp_tokenizer *t, parsed *p, int32_t *max_id, tp_err *err) {
    if (jv_get_kind(p->added) == JV_KIND_NULL || jv_get_kind(p->added) == JV_KIND_INVALID) return 0;
    if (jv_get_kind(p->added) != JV_KIND_ARRAY) {
        tp_err_set(err, "added_tokens must be an array");
        return -1;
    }
    int n = jv_array_length(jv_copy(p->added));
    t->added = tp_xcalloc((size_t)n + 1, sizeof *t->added);
    for (int i = 0; i < n; i++) {
        jv a = jv_array_get(jv_copy(p->added), i);
        jv id = tp_json_get(a, "id");
        const char *content = tp_json_get_string(a, "content");
        int32_t id_value;
        if (jv_get_kind(id) != JV_KIND_NUMBER || !token_id_of(jv_number_value(id), &id_value) || !content ||
            !*content) {
            jv_free(id);
            jv_free(a);
            tp_err_set(err, "added_tokens[%d]: needs an integer \"id\" in [0, %d] and a non-empty \"content\"", i,
                       MAX_TOKEN_ID);
            return -1;
        }
        added_token *tok = &t->added[t->n_added++];
        tok->id = id_value;
        tok->len = strlen(content);
        tok->content = tp_xstrdup(content);
        tok->special = tp_json_get_bool(a, "special", false);
        tok->normalized = tp_json_get_bool(a, "normalized", !tok->special);
        tok->lstrip = tp_json_get_bool(a, "lstrip", false);
        tok->rstrip = tp_json_get_bool(a, "rstrip", false);
        tok->single_word = tp_json_get_bool(a, "single_word", false);
        if (tok->id > *max_id) *max_id = tok->id;
        jv_free(id);
        jv_free(a);
    }
    return 0;
}

static void trie_add(trie *tr, const char *s, size_t len, int32_t token) {
    int32_t *link = &tr->root[(unsigned char)s[0]];
    int32_t node = -1;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        if (i > 0) link = &tr->nodes[node].child;
        int32_t c = *link;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            if (tr->count == tr->cap) {
                tr->cap = tr->cap ? tr->cap * 2 : 256;
                tr->nodes = tp_xrealloc(tr->nodes, (size_t)tr->cap * sizeof *tr->nodes);
            }
            c = tr->count++;
            // Re-read the link: the realloc may have moved it.
            link = i == 0 ? &tr->root[b] : &tr->nodes[node].child;
            tr->nodes[c] = (trie_node){-1, *link, -1, b};
            *link = c;
        }
        node = c;
    }
    if (tr->nodes[node].token < 0) tr->nodes[node].token = token;  // first of equal contents wins
}

static int build_normalizer(tp_tokenizer *t, jv spec, tp_err *err) {
    if (jv_get_kind(spec) == JV_KIND_NULL || jv_get_kind(spec) == JV_KIND_INVALID) return 0;
    const char *type = tp_json_get_string(spec, "type");
    if (!type) {
        tp_err_set(err, "normalizer: missing \"type\"");
        return -1;
    }
    if (strcmp(type, "Sequence") == 0) {
        jv list = tp_json_get(spec, "normalizers");
        if (jv_get_kind(list) != JV_KIND_ARRAY) {
            jv_free(list);
            tp_err_set(err, "Sequence normalizer: \"normalizers\" must be an array");
            return -1;
        }
        int rc = 0;
        for (int i = 0; i < jv_array_length(jv_copy(list)) && rc == 0; i++) {
            jv item = jv_array_get(jv_copy(list), i);
            rc = build_normalizer(t, item, err);
            jv_free(item);
        }
        jv_free(list);
        return rc;
    }
    static const char *names[] = {"NFC", "NFD", "NFKC", "NFKD"};
    for (int k = 0; k < 4; k++) {
        if (strcmp(type, names[k]) == 0 && t->n_norms < 8) {
            t->norms[t->n_norms++] = (tp_norm_form)k;
            return 0;
        }
    }
    tp_err_set(err, "normalizer type \"%s\" is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)", type);
    return -1;
}

// Normalises s[0..n) with the tokenizer's normalizers into out.
int tp_tok_normalize(const tp_tokenizer *t, const char *s, size_t n, tp_buf *out, tp_buf *tmp, tp_err *err);
int tp_tok_normalize(const tp_tokenizer *t, const char *s, size_t n, tp_buf *out, tp_buf *tmp, tp_err *err) {
    out->len = 0;
    if (t->n_norms == 0) {
        tp_buf_append(out, s, n);
        return 0;
    }
    for (int k = 0; k < t->n_norms; k++) {
        tmp->len = 0;
        if (tp_unicode_normalize(t->norms[k], k == 0 ? s : out->data, k == 0 ? n : out->len, tmp, err) < 0) return -1;
        tp_buf swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return 0;
}

static int build_added_tries(tp_tokenizer *t, tp_err *err) {
    for (int k = 0; k < 256; k++) t->raw_trie.root[k] = t->norm_trie.root[k] = -1;
    tp_buf norm = {0}, tmp = {0};
    int rc = 0;
    for (int32_t i = 0; i < t->n_added; i++) {
        added_token *a = &t->added[i];
        if (a->id >= t->vocab_size) continue;
        if (a->normalized && t->n_norms > 0) {
            if (tp_tok_normalize(t, a->content, a->len, &norm, &tmp, err) < 0) { rc = -1; break; }
            if (norm.len > 0) trie_add(&t->norm_trie, norm.data, norm.len, i);
        } else {
            trie_add(a->normalized ? &t->norm_trie : &t->raw_trie, a->content, a->len, i);
        }
        // Decoding an added token goes through the ByteLevel decoder, as in HF.
        size_t off = t->bytes.len;
        bool pure;
        tp_buf_reserve(&t->bytes, a->len);
        t->bytes.len += byte_level_decode(a->content, a->len, t->bytes.data + off, &pure);
        t->tok[a->id] = (tok_bytes){(uint32_t)off, (uint32_t)(t->bytes.len - off)};
        t->flags[a->id] = (uint8_t)((t->flags[a->id] & TOK_PURE) | TOK_PRESENT | TOK_ADDED | (a->special ? TOK_SPECIAL : 0));
    }
    tp_buf_free(&norm);
    tp_buf_free(&tmp);
    return rc;
}

// ---- post-processor (for add_special) ----

static void push_id(int32_t **v, size_t *n, int32_t id) {
    *v = tp_xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = id;
}

static void post_fail(tp_tokenizer *t, const char *fmt, const char *arg) {
    if (t->post_error) return;
    char msg[300];
    snprintf(msg, sizeof msg, fmt, arg);
    t->post_error = tp_xstrdup(msg);
}

static void build_template(tp_tokenizer *t, jv spec) {
    jv single = tp_json_get(spec, "single"), specials = tp_json_get(spec, "special_tokens");
    bool after = false;
    int n = jv_get_kind(single) == JV_KIND_ARRAY ? jv_array_length(jv_copy(single)) : 0;
    if (n == 0) post_fail(t, "TemplateProcessing without a \"single\" template%s", "");
    for (int i = 0; i < n; i++) {
        jv item = jv_array_get(jv_copy(single), i);
        jv sp = tp_json_get(item, "SpecialToken"), seq = tp_json_get(item, "Sequence");
        if (jv_get_kind(seq) == JV_KIND_OBJECT) {
            after = true;
        } else if (jv_get_kind(sp) == JV_KIND_OBJECT) {
            const char *name = tp_json_get_string(sp, "id");
            jv def = name ? tp_json_get(specials, name) : jv_invalid();
            jv ids = tp_json_get(def, "ids");
            if (jv_get_kind(ids) != JV_KIND_ARRAY) post_fail(t, "TemplateProcessing: special token \"%s\" has no ids", name ? name : "?");
            for (int k = 0; jv_get_kind(ids) == JV_KIND_ARRAY && k < jv_array_length(jv_copy(ids)); k++) {
                jv id = jv_array_get(jv_copy(ids), k);
                int32_t v = -1;
                if (jv_get_kind(id) == JV_KIND_NUMBER && !token_id_of(jv_number_value(id), &v)) v = -1;
                jv_free(id);
                if (v < 0 || v >= t->vocab_size) post_fail(t, "TemplateProcessing: special token \"%s\" has an id outside the vocabulary", name ? name : "?");
                else if (after) push_id(&t->suffix, &t->n_suffix, v);
                else push_id(&t->prefix, &t->n_prefix, v);
            }
            jv_free(ids);
            jv_free(def);
        }
        jv_free(sp);
        jv_free(seq);
        jv_free(item);
    }
    jv_free(single);
    jv_free(specials);
}

static void affix_pair(tp_tokenizer *t, jv spec, const char *key, bool suffix) {
    jv pair = tp_json_get(spec, key);
    jv id = jv_get_kind(pair) == JV_KIND_ARRAY ? jv_array_get(jv_copy(pair), 1) : jv_invalid();
    int32_t v;
    if (jv_get_kind(id) == JV_KIND_NUMBER && token_id_of(jv_number_value(id), &v) && v < t->vocab_size) {
        if (suffix) push_id(&t->suffix, &t->n_suffix, v);
        else push_id(&t->prefix, &t->n_prefix, v);
    } else {
        post_fail(t, "post-processor: bad \"%s\" token", key);
    }
    jv_free(id);
    jv_free(pair);
}

static bool build_post(tp_tokenizer *t, jv spec) {
    if (jv_get_kind(spec) != JV_KIND_OBJECT) return false;
    const char *type = tp_json_get_string(spec, "type");
    if (!type) return false;
    if (strcmp(type, "ByteLevel") == 0) return false;
    if (strcmp(type, "TemplateProcessing") == 0) {
        build_template(t, spec);
        return true;
    }
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        affix_pair(t, spec, "cls", false);
        affix_pair(t, spec, "sep", true);
        return true;
    }
    if (strcmp(type, "Sequence") == 0) {
        jv list = tp_json_get(spec, "processors");
        bool any = false;
        for (int i = 0; jv_get_kind(list) == JV_KIND_ARRAY && i < jv_array_length(jv_copy(list)); i++) {
            jv item = jv_array_get(jv_copy(list), i);
            any |= build_post(t, item);
            jv_free(item);
        }
        jv_free(list);
        return any;
    }
    post_fail(t, "post-processor type \"%s\" is not supported", type);
    return true;
}

// With no template, transformers' fast tokenizers add BOS/EOS as tokenizer_config.json
// says (add_bos_token / add_eos_token); so do we.
static void config_affixes(tp_tokenizer *t) {
    static const char *flags[] = {"add_bos_token", "add_eos_token"};
    static const char *names[] = {"bos_token", "eos_token"};
    for (int k = 0; k < 2; k++) {
        if (!tp_json_get_bool(t->config, flags[k], false)) continue;
        const char *s = tp_tokenizer_config_token(t, names[k]);
        int32_t id = s ? tp_tokenizer_token_id(t, s) : -1;
        if (id < 0) post_fail(t, "tokenizer_config.json: %s is not a token", names[k]);
        else if (k == 0) push_id(&t->prefix, &t->n_prefix, id);
        else push_id(&t->suffix, &t->n_suffix, id);
    }
}

static int check_decoder(jv spec, tp_err *err) {
    if (jv_get_kind(spec) == JV_KIND_NULL || jv_get_kind(spec) == JV_KIND_INVALID) return 0;
    const char *type = tp_json_get_string(spec, "type");
    if (type && strcmp(type, "ByteLevel") == 0) return 0;
    if (type && strcmp(type, "Sequence") == 0) {
        jv list = tp_json_get(spec, "decoders");
        int rc = 0;
        for (int i = 0; jv_get_kind(list) == JV_KIND_ARRAY && i < jv_array_length(jv_copy(list)) && rc == 0; i++) {
            jv item = jv_array_get(jv_copy(list), i);
            rc = check_decoder(item, err);
            jv_free(item);
        }
        jv_free(list);
        return rc;
    }
    tp_err_set(err, "decoder type \"%s\" is not supported (a byte-level tokenizer decodes with ByteLevel)",
               type ? type : "?");
    return -1;
}

// ---- files ----

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// First of dir/NAME, dir/NAME.zst, dir/NAME.gz that exists, or NULL.
static char *find_in_dir(const char *dir, const char *name) {
    static const char *suffixes[] = {"", ".zst", ".gz"};
    for (int k = 0; k < 3; k++) {
        char *p;
        if (asprintf(&p, "%s/%s%s", dir, name, suffixes[k]) < 0) return NULL;
        if (is_file(p)) return p;
        free(p);
    }
    return NULL;
}

static int load_config(tp_tokenizer *t, const char *dir, tp_err *err) {
    t->config = jv_null();
    char *path = find_in_dir(dir, "tokenizer_config.json");
    if (!path) return 0;
    tp_buf text = {0};
    int rc = tp_input_read_all(path, &text, err);
    if (rc == 0) {
        jv v;
        rc = tp_json_parse(text.data, text.len, &v, err);
        if (rc < 0) tp_err_prefix(err, "%s", path);
        else if (jv_get_kind(v) != JV_KIND_OBJECT) {
            jv_free(v);
            tp_err_set(err, "%s: expected a JSON object", path);
            rc = -1;
        } else {
            t->config = v;
        }
    }
    tp_buf_free(&text);
    free(path);
    return rc;
}

static int build(tp_tokenizer *t, parsed *p, tp_err *err) {
    if (check_model(t, p, err) < 0) return -1;
    int32_t max_id = -1;
    for (size_t k = 0; k < p->n_vocab; k++)
        if (p->vocab[k].id > max_id) max_id = p->vocab[k].id;
    if (build_added(t, p, &max_id, err) < 0) return -1;
    if (max_id < 0) {
        tp_err_set(err, "model: the vocabulary is empty");
        return -1;
    }
    if (build_vocab(t, p, max_id, err) < 0 || build_merges(t, p, err) < 0) return -1;
    jv unk = tp_json_get(p->model, "unk_token");
    if (jv_get_kind(unk) == JV_KIND_STRING) t->unk_id = tp_tokenizer_token_id(t, jv_string_value(unk));
    jv_free(unk);
    if (build_normalizer(t, p->normalizer, err) < 0) return -1;
    bool byte_level = false;
    t->pretok = tp_pretok_new(p->pre_tokenizer, &byte_level, err);
    if (!t->pretok) return -1;
    if (!byte_level) {
        tp_err_set(err, "pre_tokenizer: not a byte-level BPE (no final ByteLevel pre-tokenizer); "
                        "only byte-level BPE tokenizers are supported");
        return -1;
    }
    if (check_decoder(p->decoder, err) < 0) return -1;
    if (build_added_tries(t, err) < 0) return -1;
    if (!build_post(t, p->post_processor)) config_affixes(t);
    return 0;
}

// Parses tokenizer.json text (config: tokenizer_config.json, taken) into t.
static int load_text(tp_tokenizer *t, const char *text, size_t len, const char *name, tp_err *err) {
    parsed p = {.model = jv_object(), .added = jv_null(), .normalizer = jv_null(), .pre_tokenizer = jv_null(),
                .post_processor = jv_null(), .decoder = jv_null()};
    snprintf(t->hash, sizeof t->hash, "%016llx", (unsigned long long)tp_tok_hash_bytes(text, len));
    scanner sc = {.s = text, .n = len, .name = name, .err = err};
    int rc = scan_object(&sc, &p, top_field);
    ws(&sc);
    if (rc == 0 && sc.i != sc.n) rc = scan_fail(&sc, "trailing characters after the JSON object");
    if (rc == 0 && build(t, &p, err) < 0) {
        tp_err_prefix(err, "%s", name);
        rc = -1;
    }
    tp_buf_free(&p.strings);
    free(p.vocab);
    free(p.merges);
    jv_free(p.model);
    jv_free(p.added);
    jv_free(p.normalizer);
    jv_free(p.pre_tokenizer);
    jv_free(p.post_processor);
    jv_free(p.decoder);
    return rc;
}

tp_tokenizer *tp_tokenizer_from_json(const char *text, size_t len, const char *name, jv config, tp_err *err) {
    init_byte_level();
    tp_tokenizer *t = tp_xcalloc(1, sizeof *t);
    t->path = tp_xstrdup(name);
    t->config = config;
    if (load_text(t, text, len, name, err) < 0) {
        tp_tokenizer_free(t);
        return NULL;
    }
    return t;
}

tp_tokenizer *tp_tokenizer_load(const char *path, tp_err *err) {
    init_byte_level();
    struct stat st;
    if (stat(path, &st) < 0) {
        tp_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *file, *dir;
    if (S_ISDIR(st.st_mode)) {
        file = find_in_dir(path, "tokenizer.json");
        if (!file) {
            tp_err_set(err, "%s: no tokenizer.json in this directory", path);
            return NULL;
        }
        dir = tp_xstrdup(path);
    } else {
        file = tp_xstrdup(path);
        const char *slash = strrchr(path, '/');
        dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : tp_xstrdup(".");
    }
    tp_tokenizer *t = tp_xcalloc(1, sizeof *t);
    t->path = file;
    t->config = jv_null();
    tp_buf text = {0};
    int rc = tp_input_read_all(file, &text, err);
    if (rc == 0) rc = load_config(t, dir, err);
    if (rc == 0) rc = load_text(t, text.data ? text.data : "", text.len, file, err);
    tp_buf_free(&text);
    free(dir);
    if (rc < 0) {
        tp_tokenizer_free(t);
        return NULL;
    }
    return t;
}

void tp_tokenizer_free(tp_tokenizer *t) {
    if (!t) return;
    free(t->path);
    tp_buf_free(&t->bytes);
    free(t->tok);
    free(t->flags);
    free(t->vhash);
    free(t->mhash);
    for (int32_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    tp_pretok_free(t->pretok);
    free(t->prefix);
    free(t->suffix);
    free(t->post_error);
    jv_free(t->config);
    free(t);
}
