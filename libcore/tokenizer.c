// Encoding and decoding with a loaded tokenizer (see tokenizer_load.c).
//
// encode: added tokens (leftmost-longest over the raw text) → normaliser → added
// tokens marked "normalized" → pre-tokenizer → byte-level BPE per piece, the same
// pipeline as HF tokenizers. BPE merges the lowest-rank pair first, leftmost on
// ties, exactly as HF's heap does; short words use a linear scan (faster below a
// few dozen symbols), long ones a heap over a linked list. A per-thread cache maps
// pieces to their ids, so common words skip BPE entirely.
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tokenizer_impl.h"

void tp_ids_push(tp_ids *v, int32_t id) {
    if (v->count == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->ids = tp_xrealloc(v->ids, v->cap * sizeof *v->ids);
    }
    v->ids[v->count++] = id;
}

void tp_ids_free(tp_ids *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

// ---- accessors ----

const char *tp_tokenizer_path(const tp_tokenizer *t) { return t->path; }
const char *tp_tokenizer_hash(const tp_tokenizer *t) { return t->hash; }
int32_t tp_tokenizer_vocab_size(const tp_tokenizer *t) { return t->vocab_size; }
jv tp_tokenizer_config(const tp_tokenizer *t) { return jv_copy(t->config); }
bool tp_tokenizer_fast_pretok(const tp_tokenizer *t) { return tp_pretok_is_fast(t->pretok); }
void tp_tokenizer_force_regex_engine(tp_tokenizer *t, bool on) { tp_pretok_force_regex_engine(t->pretok, on); }

const char *tp_tokenizer_config_token(const tp_tokenizer *t, const char *key) {
    const char *s = tp_json_get_string(t->config, key);
    if (s) return s;
    jv tok = tp_json_get(t->config, key);  // transformers also writes {"content": ..., ...}
    s = tp_json_get_string(tok, "content");
    jv_free(tok);  // t->config keeps the object and its string alive
    return s;
}

bool tp_tokenizer_is_special(const tp_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->vocab_size && (t->flags[id] & TOK_SPECIAL);
}

void tp_tokenizer_special_affixes(const tp_tokenizer *t, const int32_t **prefix, size_t *n_prefix,
                                  const int32_t **suffix, size_t *n_suffix) {
    *prefix = t->prefix;
    *n_prefix = t->n_prefix;
    *suffix = t->suffix;
    *n_suffix = t->n_suffix;
}

int32_t tp_tokenizer_token_id(const tp_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    for (int32_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, token, n) == 0) return t->added[i].id;
    // A vocabulary string is byte-level: map its characters back to bytes.
    tp_buf bytes = {0};
    bool pure = true;
    for (size_t i = 0; i < n && pure;) {
        uint32_t cp;
        int len = tp_utf8_decode((const unsigned char *)token + i, n - i, &cp);
        if (len == 0) { pure = false; break; }
        int byte = tp_tok_char_byte(cp);
        if (byte < 0) pure = false;
        else tp_buf_putc(&bytes, (char)byte);
        i += (size_t)len;
    }
    int32_t id = pure ? tp_tok_vocab_lookup(t, bytes.data ? bytes.data : "", bytes.len) : -1;
    tp_buf_free(&bytes);
    return id;
}

// ---- per-thread state ----

typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len;  // key_len 0: free
    uint32_t ids_off, n_ids;
} cache_slot;

enum { CACHE_SLOTS = 1 << 16, CACHE_MAX_KEY = 64, CACHE_MAX_BYTES = 4 << 20 };

struct tp_tok_state {
    const tp_tokenizer *t;
    tp_pretok_scratch pre;
    tp_buf norm, norm_tmp;
    cache_slot *slots;
    uint32_t used;
    tp_buf keys;
    tp_ids cache_ids;
    int32_t *sym, *rank, *merged, *prev, *next;
    uint64_t *heap;
    size_t cap;
    size_t heap_threshold;
};

tp_tok_state *tp_tok_state_new(const tp_tokenizer *t) {
    tp_tok_state *st = tp_xcalloc(1, sizeof *st);
    st->t = t;
    st->slots = tp_xcalloc(CACHE_SLOTS, sizeof *st->slots);
    st->heap_threshold = 48;
    return st;
}

void tp_tok_state_set_heap_threshold(tp_tok_state *st, size_t symbols) { st->heap_threshold = symbols; }

void tp_tok_state_free(tp_tok_state *st) {
    if (!st) return;
    tp_pretok_scratch_free(&st->pre);
    tp_buf_free(&st->norm);
    tp_buf_free(&st->norm_tmp);
    free(st->slots);
    tp_buf_free(&st->keys);
    tp_ids_free(&st->cache_ids);
    free(st->sym);
    free(st->rank);
    free(st->merged);
    free(st->prev);
    free(st->next);
    free(st->heap);
    free(st);
}

static void reserve_symbols(tp_tok_state *st, size_t n) {
    if (n <= st->cap) return;
    st->cap = n + n / 2 + 64;
    st->sym = tp_xrealloc(st->sym, st->cap * sizeof *st->sym);
    st->rank = tp_xrealloc(st->rank, st->cap * sizeof *st->rank);
    st->merged = tp_xrealloc(st->merged, st->cap * sizeof *st->merged);
    st->prev = tp_xrealloc(st->prev, st->cap * sizeof *st->prev);
    st->next = tp_xrealloc(st->next, st->cap * sizeof *st->next);
    st->heap = tp_xrealloc(st->heap, st->cap * 2 * sizeof *st->heap);
}

// ---- BPE ----

static inline const merge_slot *merge_find(const tp_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & t->mmask;; i = (i + 1) & t->mmask) {
        const merge_slot *m = &t->mhash[i];
        if (m->key == key) return m;
        if (m->key == MERGE_EMPTY) return NULL;
    }
}

static inline void pair_rank(const tp_tokenizer *t, tp_tok_state *st, size_t i) {
    const merge_slot *m = merge_find(t, st->sym[i], st->sym[i + 1]);
    st->rank[i] = m ? m->rank : INT32_MAX;
    st->merged[i] = m ? m->new_id : -1;
}

// Linear scan: merge the lowest-rank pair (leftmost on ties) until none is left.
static size_t merge_short(const tp_tokenizer *t, tp_tok_state *st, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) pair_rank(t, st, i);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (st->rank[i] < st->rank[best]) best = i;
        if (st->rank[best] == INT32_MAX) break;
        st->sym[best] = st->merged[best];
        size_t tail = n - best - 2;
        memmove(st->sym + best + 1, st->sym + best + 2, tail * sizeof *st->sym);
        memmove(st->rank + best + 1, st->rank + best + 2, tail * sizeof *st->rank);
        memmove(st->merged + best + 1, st->merged + best + 2, tail * sizeof *st->merged);
        n--;
        if (best > 0) pair_rank(t, st, best - 1);
        if (best + 1 < n) pair_rank(t, st, best);
    }
    return n;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent] <= v) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

static inline void push_pair(const tp_tokenizer *t, tp_tok_state *st, size_t *hn, int32_t pos) {
    const merge_slot *m = merge_find(t, st->sym[pos], st->sym[st->next[pos]]);
    if (m) heap_push(st->heap, hn, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)pos);
}

// Heap over a linked list, as HF's Word::merge_all: pop (rank, position), skip
// entries made stale by earlier merges.
static size_t merge_long(const tp_tokenizer *t, tp_tok_state *st, size_t n) {
    for (size_t i = 0; i < n; i++) {
        st->prev[i] = (int32_t)i - 1;
        st->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, st, &hn, (int32_t)i);
    while (hn > 0) {
        uint64_t top = heap_pop(st->heap, &hn);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        if (st->sym[pos] < 0 || st->next[pos] < 0) continue;
        int32_t right = st->next[pos];
        const merge_slot *m = merge_find(t, st->sym[pos], st->sym[right]);
        if (!m || m->rank != rank) continue;
        st->sym[pos] = m->new_id;
        st->sym[right] = -1;
        st->next[pos] = st->next[right];
        if (st->next[pos] >= 0) st->prev[st->next[pos]] = pos;
        if (st->prev[pos] >= 0) push_pair(t, st, &hn, st->prev[pos]);
        if (st->next[pos] >= 0) push_pair(t, st, &hn, pos);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (st->sym[i] >= 0) st->sym[k++] = st->sym[i];
    return k;
}

static uint32_t cache_find(tp_tok_state *st, const char *s, size_t n, uint64_t h) {
    for (uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *c = &st->slots[i];
        if (c->key_len == 0) return i;
        if (c->hash == h && c->key_len == n && memcmp(st->keys.data + c->key_off, s, n) == 0) return i;
    }
}

static void cache_clear(tp_tok_state *st) {
    memset(st->slots, 0, CACHE_SLOTS * sizeof *st->slots);
    st->used = 0;
    st->keys.len = 0;
    st->cache_ids.count = 0;
}

static void bpe_piece(const tp_tokenizer *t, tp_tok_state *st, const char *s, size_t n, tp_ids *out) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 1 && t->byte_id[u[0]] >= 0) {
        tp_ids_push(out, t->byte_id[u[0]]);
        return;
    }
    if (t->ignore_merges) {
        int32_t id = tp_tok_vocab_lookup(t, s, n);
        if (id >= 0) {
            tp_ids_push(out, id);
            return;
        }
    }
    uint64_t h = 0;
    uint32_t slot = 0;
    bool cacheable = n <= CACHE_MAX_KEY;
    if (cacheable) {
        h = tp_tok_hash_bytes(s, n);
        slot = cache_find(st, s, n, h);
        cache_slot *c = &st->slots[slot];
        if (c->key_len) {
            for (uint32_t k = 0; k < c->n_ids; k++) tp_ids_push(out, st->cache_ids.ids[c->ids_off + k]);
            return;
        }
    }
    reserve_symbols(st, n);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[u[i]];
        if (id < 0) {
            // No token for this byte: HF emits the unknown token (fused if asked) or drops it.
            if (t->unk_id < 0) continue;
            if (t->fuse_unk && m > 0 && st->sym[m - 1] == t->unk_id) continue;
            id = t->unk_id;
        }
        st->sym[m++] = id;
    }
    m = m > st->heap_threshold ? merge_long(t, st, m) : merge_short(t, st, m);
    for (size_t i = 0; i < m; i++) tp_ids_push(out, st->sym[i]);
    if (!cacheable) return;
    if (st->used * 4 >= CACHE_SLOTS * 3 || st->keys.len + n > CACHE_MAX_BYTES) {
        cache_clear(st);
        slot = cache_find(st, s, n, h);
    }
    cache_slot *c = &st->slots[slot];
    *c = (cache_slot){h, (uint32_t)st->keys.len, (uint32_t)n, (uint32_t)st->cache_ids.count, (uint32_t)m};
    tp_buf_append(&st->keys, s, n);
    for (size_t i = 0; i < m; i++) tp_ids_push(&st->cache_ids, st->sym[i]);
    st->used++;
}

// ---- the encode pipeline ----

static int encode_pretok(const tp_tokenizer *t, tp_tok_state *st, const char *s, size_t n, tp_ids *out,
                         tp_err *err) {
    const char *work;
    if (tp_pretok_run(t->pretok, s, n, &st->pre, &work, err) < 0) return -1;
    for (size_t i = 0; i < st->pre.spans.count; i++) {
        tp_span sp = st->pre.spans.items[i];
        bpe_piece(t, st, work + sp.off, sp.len, out);
    }
    return 0;
}

static bool word_char_before(const char *s, size_t start) {
    if (start == 0) return false;
    size_t i = start - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t cp;
    tp_utf8_next((const unsigned char *)s + i, &cp);
    return cp == '_' || (tp_uc_class(cp) & (TP_UC_L | TP_UC_N));
}

static bool word_char_at(const char *s, size_t n, size_t i) {
    if (i >= n) return false;
    uint32_t cp;
    tp_utf8_next((const unsigned char *)s + i, &cp);
    return cp == '_' || (tp_uc_class(cp) & (TP_UC_L | TP_UC_N));
}

static size_t space_len_at(const char *s, size_t n, size_t i) {
    if (i >= n) return 0;
    uint32_t cp;
    int len = tp_utf8_next((const unsigned char *)s + i, &cp);
    return (tp_uc_class(cp) & TP_UC_SPACE) ? (size_t)len : 0;
}

typedef int (*segment_fn)(const tp_tokenizer *t, tp_tok_state *st, const char *s, size_t n, tp_ids *out, tp_err *err);

// Splits s on the added tokens of `tr` (leftmost-longest, non-overlapping), passes
// the text between them to `next`, and emits the tokens' ids.
static int split_added(const tp_tokenizer *t, tp_tok_state *st, const trie *tr, const char *s, size_t n,
                       segment_fn next, tp_ids *out, tp_err *err) {
    const unsigned char *u = (const unsigned char *)s;
    size_t pos = 0, seg = 0;
    while (pos < n) {
        int32_t node = tr->root[u[pos]];
        if (node < 0) {
            pos++;
            continue;
        }
        int32_t found = -1;
        size_t end = 0;
        for (size_t i = pos + 1;; i++) {
            if (tr->nodes[node].token >= 0) {
                found = tr->nodes[node].token;
                end = i;
            }
            if (i >= n) break;
            int32_t c = tr->nodes[node].child;
            while (c >= 0 && tr->nodes[c].byte != u[i]) c = tr->nodes[c].sibling;
            if (c < 0) break;
            node = c;
        }
        if (found < 0) {
            pos++;
            continue;
        }
        const added_token *a = &t->added[found];
        size_t start = pos, stop = end;
        if (a->single_word && (word_char_before(s, start) || word_char_at(s, n, stop))) {
            pos = end;
            continue;
        }
        if (a->lstrip) {
            while (start > seg) {
                size_t k = start - 1;
                while (k > seg && (u[k] & 0xC0) == 0x80) k--;
                if (!space_len_at(s, n, k)) break;
                start = k;
            }
        }
        if (a->rstrip)
            for (size_t l; (l = space_len_at(s, n, stop)) > 0;) stop += l;
        if (seg < start && next(t, st, s + seg, start - seg, out, err) < 0) return -1;
        tp_ids_push(out, a->id);
        seg = pos = stop;
    }
    if (seg < n && next(t, st, s + seg, n - seg, out, err) < 0) return -1;
    return 0;
}

int tp_tok_normalize(const tp_tokenizer *t, const char *s, size_t n, tp_buf *out, tp_buf *tmp, tp_err *err);

static int encode_normalized(const tp_tokenizer *t, tp_tok_state *st, const char *s, size_t n, tp_ids *out,
                             tp_err *err) {
    if (t->n_norms == 0 && t->norm_trie.count == 0) return encode_pretok(t, st, s, n, out, err);
    if (tp_tok_normalize(t, s, n, &st->norm, &st->norm_tmp, err) < 0) return -1;
    // st->norm holds this segment until it is encoded: nothing below normalises again.
    return t->norm_trie.count ? split_added(t, st, &t->norm_trie, st->norm.data, st->norm.len, encode_pretok, out, err)
                              : encode_pretok(t, st, st->norm.data, st->norm.len, out, err);
}

int tp_tokenizer_encode(const tp_tokenizer *t, tp_tok_state *st, const char *text, size_t n, bool add_special,
                        tp_ids *out, tp_err *err) {
    size_t bad;
    if (!tp_utf8_valid(text, n, &bad)) {
        tp_err_set(err, "invalid UTF-8 at byte %zu of the text", bad);
        return -1;
    }
    if (add_special && t->post_error) {
        tp_err_set(err, "cannot add special tokens: %s", t->post_error);
        return -1;
    }
    if (add_special)
        for (size_t i = 0; i < t->n_prefix; i++) tp_ids_push(out, t->prefix[i]);
    int rc = t->raw_trie.count ? split_added(t, st, &t->raw_trie, text, n, encode_normalized, out, err)
                               : encode_normalized(t, st, text, n, out, err);
    if (rc < 0) return -1;
    if (add_special)
        for (size_t i = 0; i < t->n_suffix; i++) tp_ids_push(out, t->suffix[i]);
    return 0;
}

int tp_tokenizer_decode(const tp_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, tp_buf *out,
                        tp_err *err) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size || !(t->flags[id] & TOK_PRESENT)) {
            tp_err_set(err, "token id %d at position %zu is not in the vocabulary (size %d)", id, i, t->vocab_size);
            return -1;
        }
        if (skip_special && (t->flags[id] & TOK_SPECIAL)) continue;
        tp_buf_append(out, t->bytes.data + t->tok[id].off, t->tok[id].len);
    }
    return 0;
}

size_t tp_tokenizer_token_bytes(const tp_tokenizer *t, int32_t id, const char **bytes) {
    if (id < 0 || id >= t->vocab_size || !(t->flags[id] & TOK_PRESENT)) {
        *bytes = "";
        return 0;
    }
    *bytes = t->bytes.data + t->tok[id].off;
    return t->tok[id].len;
}

bool tp_tokenizer_normalize(const tp_tokenizer *t, const char *s, size_t n, tp_buf *out, tp_err *err) {
    if (t->n_norms == 0) {
        tp_buf_append(out, s, n);
        return false;
    }
    tp_buf a = {0}, b = {0};
    if (tp_tok_normalize(t, s, n, &a, &b, err) == 0) tp_buf_append(out, a.data, a.len);
    tp_buf_free(&a);
    tp_buf_free(&b);
    return true;
}
