#include "pretok.h"

#include <oniguruma.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "unicode.h"

typedef enum {
    MATCH_REGEX,         // Oniguruma
    MATCH_LITERAL,       // a {"String": ...} pattern
    MATCH_ASCII_DIGIT,   // the Digits pre-tokenizer
    MATCH_GPT4,          // Qwen2/Qwen3 (\p{N}) and Llama 3 (\p{N}{1,3}) pattern
    MATCH_DS_DIGITS,     // DeepSeek-V3 \p{N}{1,3}
    MATCH_DS_CJK,        // DeepSeek-V3 [一-龥\u3040-ゟ゠-ヿ]+
    MATCH_DS_MAIN,       // DeepSeek-V3 main pattern
} match_kind;

typedef enum { B_REMOVED, B_ISOLATED, B_MERGED_PREVIOUS, B_MERGED_NEXT, B_CONTIGUOUS } behavior;

typedef struct {
    bool prefix_space;  // a ByteLevel add_prefix_space step instead of a split
    match_kind fast;    // hand-written matcher, or MATCH_REGEX/LITERAL
    int digits_max;     // for MATCH_GPT4
    regex_t *regex;     // compiled when the pattern is a regex (even if fast)
    char *literal;
    size_t literal_len;
    behavior behavior;
    bool invert;
} step;

struct tp_pretok {
    step *steps;
    int count;
    bool force_regex;
};

// ---- pattern texts recognised for the hand-written matchers ----

static const char PAT_GPT4_N1[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PAT_GPT4_N3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PAT_DS_DIGITS[] = "\\p{N}{1,3}";
static const char PAT_DS_CJK[] = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
static const char PAT_DS_MAIN[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
// ByteLevel's own regex when use_regex is true (GPT-2).
static const char PAT_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---- character classes ----

static uint8_t ascii_class[128];
static pthread_once_t ascii_once = PTHREAD_ONCE_INIT;
static void init_ascii(void) {
    for (uint32_t c = 0; c < 128; c++) ascii_class[c] = tp_uc_class(c);
}

// Class of the character at s[i]; *len gets its byte length and *cp the code point.
static inline uint8_t class_at(const unsigned char *s, size_t i, int *len, uint32_t *cp) {
    if (s[i] < 0x80) {
        *len = 1;
        *cp = s[i];
        return ascii_class[s[i]];
    }
    *len = tp_utf8_next(s + i, cp);
    return tp_uc_class(*cp);
}

static inline size_t char_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// End of the run of characters whose class has any of `mask`, starting at i.
static inline size_t run_of(const unsigned char *s, size_t i, size_t n, uint8_t mask) {
    while (i < n) {
        int len;
        uint32_t cp;
        if (!(class_at(s, i, &len, &cp) & mask)) break;
        i += (size_t)len;
    }
    return i;
}

static inline size_t run_not(const unsigned char *s, size_t i, size_t n, uint8_t mask) {
    while (i < n) {
        int len;
        uint32_t cp;
        if (class_at(s, i, &len, &cp) & mask) break;
        i += (size_t)len;
    }
    return i;
}

static inline size_t run_crlf(const unsigned char *s, size_t i, size_t n) {
    while (i < n && (s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

// The three whitespace alternatives shared by both patterns, at a \s character:
// \s*[\r\n]+ | \s+(?!\S) | \s+
static size_t match_space(const unsigned char *s, size_t pos, size_t n) {
    size_t i = pos, last_nl = SIZE_MAX, last_start = pos;
    while (i < n) {
        int len;
        uint32_t cp;
        if (!(class_at(s, i, &len, &cp) & TP_UC_SPACE)) break;
        if (cp == '\r' || cp == '\n') last_nl = i;
        last_start = i;
        i += (size_t)len;
    }
    if (last_nl != SIZE_MAX) return last_nl + 1 - pos;  // greedy \s* backs off to the last newline
    if (i == n || last_start == pos) return i - pos;    // (?!\S) holds at the end; or one \s
    return last_start - pos;                            // leave one \s before the \S
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
static size_t match_gpt4(const unsigned char *s, size_t pos, size_t n, int digits_max) {
    int len;
    uint32_t c;
    uint8_t cls = class_at(s, pos, &len, &c);
    if (c == '\'' && pos + 1 < n) {
        unsigned char a = s[pos + 1], b = pos + 2 < n ? s[pos + 2] : 0;
        a |= (a >= 'A' && a <= 'Z') ? 0x20 : 0;
        b |= (b >= 'A' && b <= 'Z') ? 0x20 : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' || a == 'v') && b == 'e') return 3;
        if (a == 'l' && b == 'l') return 3;
        if (s[pos + 1] == 0xC5 && pos + 2 < n && s[pos + 2] == 0xBF) return 3;  // 'ſ folds to 's
    }
    if (cls & TP_UC_L) return run_of(s, pos, n, TP_UC_L) - pos;
    if (!(cls & TP_UC_N) && c != '\r' && c != '\n' && pos + (size_t)len < n) {
        int len2;
        uint32_t c2;
        if (class_at(s, pos + (size_t)len, &len2, &c2) & TP_UC_L) return run_of(s, pos + (size_t)len, n, TP_UC_L) - pos;
    }
    if (cls & TP_UC_N) {
        size_t i = pos + (size_t)len;
        for (int k = 1; k < digits_max && i < n; k++) {
            int l2;
            uint32_t c2;
            if (!(class_at(s, i, &l2, &c2) & TP_UC_N)) break;
            i += (size_t)l2;
        }
        return i - pos;
    }
    size_t i = (c == ' ') ? pos + 1 : pos;
    if (i < n) {
        int l2;
        uint32_t c2;
        if (!(class_at(s, i, &l2, &c2) & (TP_UC_SPACE | TP_UC_L | TP_UC_N))) {
            i = run_not(s, i + (size_t)l2, n, TP_UC_SPACE | TP_UC_L | TP_UC_N);
            return run_crlf(s, i, n) - pos;
        }
    }
    if (cls & TP_UC_SPACE) return match_space(s, pos, n);
    return 0;
}

static inline bool ascii_punct(unsigned char c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
}
static inline bool ascii_letter(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

// [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
// ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
static size_t match_ds_main(const unsigned char *s, size_t pos, size_t n) {
    if (ascii_punct(s[pos]) && pos + 1 < n && ascii_letter(s[pos + 1])) {
        size_t i = pos + 2;
        while (i < n && ascii_letter(s[i])) i++;
        return i - pos;
    }
    int len;
    uint32_t c;
    uint8_t cls = class_at(s, pos, &len, &c);
    if (!(cls & (TP_UC_L | TP_UC_P | TP_UC_S)) && c != '\r' && c != '\n' && pos + (size_t)len < n) {
        int len2;
        uint32_t c2;
        if (class_at(s, pos + (size_t)len, &len2, &c2) & (TP_UC_L | TP_UC_M))
            return run_of(s, pos + (size_t)len, n, TP_UC_L | TP_UC_M) - pos;
    }
    if (cls & (TP_UC_L | TP_UC_M)) return run_of(s, pos, n, TP_UC_L | TP_UC_M) - pos;
    size_t i = (c == ' ') ? pos + 1 : pos;
    if (i < n) {
        int l2;
        uint32_t c2;
        if (class_at(s, i, &l2, &c2) & (TP_UC_P | TP_UC_S)) {
            i = run_of(s, i + (size_t)l2, n, TP_UC_P | TP_UC_S);
            return run_crlf(s, i, n) - pos;
        }
    }
    if (cls & TP_UC_SPACE) return match_space(s, pos, n);
    return 0;
}

static size_t match_ds_digits(const unsigned char *s, size_t pos, size_t n) {
    size_t i = pos;
    for (int k = 0; k < 3 && i < n; k++) {
        int len;
        uint32_t c;
        if (!(class_at(s, i, &len, &c) & TP_UC_N)) break;
        i += (size_t)len;
    }
    return i - pos;
}

static inline bool ds_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x309F) || (c >= 0x30A0 && c <= 0x30FF);
}

static size_t match_ds_cjk(const unsigned char *s, size_t pos, size_t n) {
    size_t i = pos;
    while (i < n && s[i] >= 0xE3) {  // the three ranges are all 3-byte characters E3..E9
        uint32_t c;
        int len = tp_utf8_next(s + i, &c);
        if (!ds_cjk(c)) break;
        i += (size_t)len;
    }
    return i - pos;
}

// ---- find_matches: (start, end, is_match) triples covering the piece ----

typedef tp_pretok_match match_t;
typedef tp_pretok_matches matches_t;

static void push_match(matches_t *m, size_t start, size_t end, bool is_match) {
    if (m->count == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->items = tp_xrealloc(m->items, m->cap * sizeof *m->items);
    }
    m->items[m->count++] = (match_t){(uint32_t)start, (uint32_t)end, is_match};
}

static size_t fast_match(const step *st, const unsigned char *s, size_t pos, size_t n) {
    switch (st->fast) {
    case MATCH_GPT4: return match_gpt4(s, pos, n, st->digits_max);
    case MATCH_DS_DIGITS: return match_ds_digits(s, pos, n);
    case MATCH_DS_CJK: return match_ds_cjk(s, pos, n);
    case MATCH_DS_MAIN: return match_ds_main(s, pos, n);
    case MATCH_ASCII_DIGIT: return s[pos] >= '0' && s[pos] <= '9';
    case MATCH_LITERAL:
        return n - pos >= st->literal_len && memcmp(s + pos, st->literal, st->literal_len) == 0 ? st->literal_len : 0;
    case MATCH_REGEX: break;
    }
    return 0;
}

static void find_fast(const step *st, const unsigned char *s, size_t n, matches_t *m) {
    size_t pos = 0, gap = 0;
    while (pos < n) {
        size_t len = fast_match(st, s, pos, n);
        if (len == 0) {
            pos += char_len(s[pos]);
            continue;
        }
        if (gap < pos) push_match(m, gap, pos, false);
        push_match(m, pos, pos + len, true);
        pos += len;
        gap = pos;
    }
    if (gap < n) push_match(m, gap, n, false);
}

// Oniguruma search loop with the rules of the Rust onig crate's find_iter: an empty
// match right after the previous match is skipped by advancing one character.
static int find_regex(const step *st, const unsigned char *s, size_t n, matches_t *m, tp_err *err) {
    OnigRegion *region = onig_region_new();
    size_t last_end = 0, prev = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    int rc = 0;
    while (last_end <= n) {
        onig_region_clear(region);
        int r = onig_search(st->regex, s, s + n, s + last_end, s + n, region, ONIG_OPTION_NONE);
        if (r == ONIG_MISMATCH) break;
        if (r < 0) {
            OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
            onig_error_code_to_str(msg, r, NULL);
            tp_err_set(err, "pre-tokenizer regex: %s", (char *)msg);
            rc = -1;
            break;
        }
        size_t start = (size_t)region->beg[0], end = (size_t)region->end[0];
        if (start == end && have_last && last_match_end == end) {
            if (last_end >= n) break;
            last_end += char_len(s[last_end]);
            continue;
        }
        last_end = end;
        last_match_end = end;
        have_last = true;
        if (prev != start) push_match(m, prev, start, false);
        push_match(m, start, end, true);
        prev = end;
        if (start == end && end >= n) break;
    }
    if (prev != n) push_match(m, prev, n, false);
    onig_region_free(region, 1);
    return rc;
}

static void push_span(tp_spans *out, size_t off, size_t len) {
    if (out->count == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 256;
        out->items = tp_xrealloc(out->items, out->cap * sizeof *out->items);
    }
    out->items[out->count++] = (tp_span){(uint32_t)off, (uint32_t)len};
}

// Applies the delimiter behaviour to the matches of one piece starting at base, as
// HF's NormalizedString::split does: fold into `work` (empty pieces included, they
// matter to the folds), then keep the non-empty pieces.
static void apply_behavior(const step *st, matches_t *m, size_t base, tp_spans *work, tp_spans *out) {
    if (st->invert)
        for (size_t i = 0; i < m->count; i++) m->items[i].match = !m->items[i].match;
    const match_t *it = m->items;
    size_t count = m->count;
    work->count = 0;
    bool prev_match = false;
    switch (st->behavior) {
    case B_REMOVED:
        for (size_t i = 0; i < count; i++)
            if (!it[i].match) push_span(work, base + it[i].start, it[i].end - it[i].start);
        break;
    case B_ISOLATED:
        for (size_t i = 0; i < count; i++) push_span(work, base + it[i].start, it[i].end - it[i].start);
        break;
    case B_MERGED_PREVIOUS:
    case B_CONTIGUOUS:
        for (size_t i = 0; i < count; i++) {
            bool extend = st->behavior == B_CONTIGUOUS ? it[i].match == prev_match : it[i].match && !prev_match;
            if (extend && work->count > 0) {
                tp_span *last = &work->items[work->count - 1];
                last->len = (uint32_t)(base + it[i].end - last->off);
            } else {
                push_span(work, base + it[i].start, it[i].end - it[i].start);
            }
            prev_match = it[i].match;
        }
        break;
    case B_MERGED_NEXT:
        for (size_t k = count; k-- > 0;) {
            if (it[k].match && !prev_match && work->count > 0) {
                tp_span *last = &work->items[work->count - 1];
                last->len += (uint32_t)(last->off - (base + it[k].start));
                last->off = (uint32_t)(base + it[k].start);
            } else {
                push_span(work, base + it[k].start, it[k].end - it[k].start);
            }
            prev_match = it[k].match;
        }
        for (size_t a = 0, b = work->count; a + 1 < b; a++, b--) {
            tp_span t = work->items[a];
            work->items[a] = work->items[b - 1];
            work->items[b - 1] = t;
        }
        break;
    }
    for (size_t i = 0; i < work->count; i++)
        if (work->items[i].len > 0) push_span(out, work->items[i].off, work->items[i].len);
}

// ---- construction from tokenizer.json ----

static const char *str_or(jv v, const char *key, const char *dflt) {
    const char *s = tp_json_get_string(v, key);
    return s ? s : dflt;
}

static pthread_once_t onig_once = PTHREAD_ONCE_INIT;
static void init_onig(void) {
    OnigEncoding encs[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(encs, 1);
}

static int compile_regex(step *st, const char *pattern, size_t len, tp_err *err) {
    OnigErrorInfo info;
    pthread_once(&onig_once, init_onig);
    int r = onig_new(&st->regex, (const OnigUChar *)pattern, (const OnigUChar *)pattern + len, ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &info);
        tp_err_set(err, "pre-tokenizer regex /%.*s/: %s", (int)(len > 200 ? 200 : len), pattern, (char *)msg);
        return -1;
    }
    return 0;
}

static int set_pattern(step *st, const char *pattern, size_t len, bool is_regex, tp_err *err) {
    if (!is_regex) {
        if (len == 0) {
            tp_err_set(err, "Split pre-tokenizer: empty String pattern");
            return -1;
        }
        st->fast = MATCH_LITERAL;
        st->literal = tp_xmalloc(len);
        memcpy(st->literal, pattern, len);
        st->literal_len = len;
        return 0;
    }
    if (compile_regex(st, pattern, len, err) < 0) return -1;
    st->fast = MATCH_REGEX;
#define IS(p) (len == sizeof(p) - 1 && memcmp(pattern, p, len) == 0)
    if (IS(PAT_GPT4_N1)) { st->fast = MATCH_GPT4; st->digits_max = 1; }
    else if (IS(PAT_GPT4_N3)) { st->fast = MATCH_GPT4; st->digits_max = 3; }
    else if (IS(PAT_DS_DIGITS)) st->fast = MATCH_DS_DIGITS;
    else if (IS(PAT_DS_CJK)) st->fast = MATCH_DS_CJK;
    else if (IS(PAT_DS_MAIN)) st->fast = MATCH_DS_MAIN;
#undef IS
    return 0;
}

static step *add_step(tp_pretok *p) {
    p->steps = tp_xrealloc(p->steps, (size_t)(p->count + 1) * sizeof *p->steps);
    step *st = &p->steps[p->count++];
    memset(st, 0, sizeof *st);
    st->behavior = B_ISOLATED;
    return st;
}

static int parse_split(tp_pretok *p, jv spec, tp_err *err) {
    jv pattern = tp_json_get(spec, "pattern");
    jv regex = tp_json_get(pattern, "Regex"), string = tp_json_get(pattern, "String");
    int rc = -1;
    step *st = add_step(p);
    const char *bname = str_or(spec, "behavior", "");
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    int b = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(bname, names[i]) == 0) b = i;
    if (b < 0) {
        tp_err_set(err, "Split pre-tokenizer: unknown behavior \"%s\" (expected Removed, Isolated, "
                        "MergedWithPrevious, MergedWithNext or Contiguous)", bname);
        goto out;
    }
    st->behavior = (behavior)b;
    st->invert = tp_json_get_bool(spec, "invert", 0);
    if (jv_get_kind(regex) == JV_KIND_STRING)
        rc = set_pattern(st, jv_string_value(regex), (size_t)jv_string_length_bytes(jv_copy(regex)), true, err);
    else if (jv_get_kind(string) == JV_KIND_STRING)
        rc = set_pattern(st, jv_string_value(string), (size_t)jv_string_length_bytes(jv_copy(string)), false, err);
    else
        tp_err_set(err, "Split pre-tokenizer: \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
out:
    jv_free(pattern);
    jv_free(regex);
    jv_free(string);
    return rc;
}

static int parse_one(tp_pretok *p, jv spec, bool *byte_level, tp_err *err) {
    if (jv_get_kind(spec) != JV_KIND_OBJECT) {
        tp_err_set(err, "pre_tokenizer: expected an object");
        return -1;
    }
    const char *type = str_or(spec, "type", "");
    *byte_level = false;
    if (strcmp(type, "Sequence") == 0) {
        jv list = tp_json_get(spec, "pretokenizers");
        if (jv_get_kind(list) != JV_KIND_ARRAY) {
            jv_free(list);
            tp_err_set(err, "Sequence pre-tokenizer: \"pretokenizers\" must be an array");
            return -1;
        }
        int n = jv_array_length(jv_copy(list));
        for (int i = 0; i < n; i++) {
            jv item = jv_array_get(jv_copy(list), i);
            int rc = parse_one(p, item, byte_level, err);
            jv_free(item);
            if (rc < 0) {
                jv_free(list);
                return -1;
            }
            if (*byte_level && i + 1 < n) {
                jv_free(list);
                tp_err_set(err, "Sequence pre-tokenizer: ByteLevel must be the last step (it is step %d of %d)",
                           i + 1, n);
                return -1;
            }
        }
        jv_free(list);
        return 0;
    }
    if (strcmp(type, "Split") == 0) return parse_split(p, spec, err);
    if (strcmp(type, "ByteLevel") == 0) {
        if (tp_json_get_bool(spec, "add_prefix_space", 0)) add_step(p)->prefix_space = true;
        if (tp_json_get_bool(spec, "use_regex", 1)) {
            step *st = add_step(p);
            if (set_pattern(st, PAT_GPT2, sizeof PAT_GPT2 - 1, true, err) < 0) return -1;
        }
        *byte_level = true;
        return 0;
    }
    if (strcmp(type, "Digits") == 0) {
        step *st = add_step(p);
        st->fast = MATCH_ASCII_DIGIT;
        st->behavior = tp_json_get_bool(spec, "individual_digits", 0) ? B_ISOLATED : B_CONTIGUOUS;
        return 0;
    }
    tp_err_set(err, "pre-tokenizer type \"%s\" is not supported (supported: Sequence, Split, ByteLevel, Digits)",
               type);
    return -1;
}

tp_pretok *tp_pretok_new(jv spec, bool *byte_level, tp_err *err) {
    pthread_once(&ascii_once, init_ascii);
    tp_pretok *p = tp_xcalloc(1, sizeof *p);
    *byte_level = false;
    if (jv_get_kind(spec) == JV_KIND_NULL) return p;
    if (parse_one(p, spec, byte_level, err) < 0) {
        tp_pretok_free(p);
        return NULL;
    }
    return p;
}

void tp_pretok_free(tp_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->count; i++) {
        if (p->steps[i].regex) onig_free(p->steps[i].regex);
        free(p->steps[i].literal);
    }
    free(p->steps);
    free(p);
}

void tp_pretok_force_regex_engine(tp_pretok *p, bool on) { p->force_regex = on; }

bool tp_pretok_is_fast(const tp_pretok *p) {
    for (int i = 0; i < p->count; i++)
        if (!p->steps[i].prefix_space && p->steps[i].fast == MATCH_REGEX) return false;
    return true;
}

void tp_pretok_scratch_free(tp_pretok_scratch *s) {
    free(s->spans.items);
    free(s->tmp.items);
    free(s->work.items);
    free(s->matches.items);
    free(s->text);
    memset(s, 0, sizeof *s);
}

int tp_pretok_run(const tp_pretok *p, const char *text, size_t n, tp_pretok_scratch *sc, const char **text_out,
                  tp_err *err) {
    if (n > UINT32_MAX / 2) {
        tp_err_set(err, "text of %zu bytes is too long to pre-tokenize (limit 2 GiB)", n);
        return -1;
    }
    const char *work = text;
    bool copied = false;
    sc->spans.count = 0;
    if (n > 0) push_span(&sc->spans, 0, n);
    for (int k = 0; k < p->count; k++) {
        const step *st = &p->steps[k];
        sc->tmp.count = 0;
        if (st->prefix_space) {
            // ByteLevel add_prefix_space: each piece not starting with ' ' gets one,
            // so pieces move into a scratch copy of the text.
            if (!copied) {
                if (sc->text_cap < n) {
                    sc->text_cap = n + n / 2 + 64;
                    sc->text = tp_xrealloc(sc->text, sc->text_cap);
                }
                memcpy(sc->text, text, n);
                sc->text_len = n;
                copied = true;
            }
            for (size_t i = 0; i < sc->spans.count; i++) {
                tp_span sp = sc->spans.items[i];
                if (sc->text[sp.off] == ' ') {
                    push_span(&sc->tmp, sp.off, sp.len);
                    continue;
                }
                if (sc->text_len + sp.len + 1 > sc->text_cap) {
                    sc->text_cap = (sc->text_len + sp.len + 1) * 2;
                    sc->text = tp_xrealloc(sc->text, sc->text_cap);
                }
                size_t off = sc->text_len;
                sc->text[off] = ' ';
                memcpy(sc->text + off + 1, sc->text + sp.off, sp.len);
                sc->text_len += sp.len + 1;
                push_span(&sc->tmp, off, sp.len + 1);
            }
            work = sc->text;
        } else {
            for (size_t i = 0; i < sc->spans.count; i++) {
                tp_span sp = sc->spans.items[i];
                const unsigned char *s = (const unsigned char *)work + sp.off;
                sc->matches.count = 0;
                bool use_regex = st->fast == MATCH_REGEX || (p->force_regex && st->regex);
                if (use_regex) {
                    if (find_regex(st, s, sp.len, &sc->matches, err) < 0) return -1;
                } else {
                    find_fast(st, s, sp.len, &sc->matches);
                }
                apply_behavior(st, &sc->matches, sp.off, &sc->work, &sc->tmp);
            }
        }
        tp_spans t = sc->spans;
        sc->spans = sc->tmp;
        sc->tmp = t;
    }
    *text_out = work;
    return 0;
}
