#include "bpe_train.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "pretok.h"
#include "tokenizer_impl.h"

// Qwen2's pre-tokenizer, the one trained tokenizers use.
static const char QWEN_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    uint64_t hash;
    uint32_t off, len;  // in words_text
    uint64_t count;     // 0: free slot
} word_slot;

struct tp_bpe_trainer {
    tp_pretok *pretok;
    tp_pretok_scratch scratch;
    word_slot *slots;
    size_t cap, used;
    tp_buf words_text;
};

tp_bpe_trainer *tp_bpe_trainer_new(tp_err *err) {
    tp_bpe_trainer *tr = tp_xcalloc(1, sizeof *tr);
    jv spec = jv_object();
    spec = jv_object_set(spec, jv_string("type"), jv_string("Split"));
    spec = jv_object_set(spec, jv_string("pattern"), jv_object_set(jv_object(), jv_string("Regex"), jv_string(QWEN_PATTERN)));
    spec = jv_object_set(spec, jv_string("behavior"), jv_string("Isolated"));
    bool byte_level;
    tr->pretok = tp_pretok_new(spec, &byte_level, err);
    jv_free(spec);
    if (!tr->pretok) {
        free(tr);
        return NULL;
    }
    tr->cap = 1 << 16;
    tr->slots = tp_xcalloc(tr->cap, sizeof *tr->slots);
    return tr;
}

void tp_bpe_trainer_free(tp_bpe_trainer *tr) {
    if (!tr) return;
    tp_pretok_free(tr->pretok);
    tp_pretok_scratch_free(&tr->scratch);
    free(tr->slots);
    tp_buf_free(&tr->words_text);
    free(tr);
}

uint64_t tp_bpe_trainer_words(const tp_bpe_trainer *tr) { return tr->used; }

static void grow_words(tp_bpe_trainer *tr) {
    size_t cap = tr->cap * 2;
    word_slot *slots = tp_xcalloc(cap, sizeof *slots);
    for (size_t i = 0; i < tr->cap; i++) {
        if (!tr->slots[i].count) continue;
        size_t k = tr->slots[i].hash & (cap - 1);
        while (slots[k].count) k = (k + 1) & (cap - 1);
        slots[k] = tr->slots[i];
    }
    free(tr->slots);
    tr->slots = slots;
    tr->cap = cap;
}

static void count_word(tp_bpe_trainer *tr, const char *s, size_t n) {
    uint64_t h = tp_tok_hash_bytes(s, n);
    size_t k = h & (tr->cap - 1);
    for (; tr->slots[k].count; k = (k + 1) & (tr->cap - 1)) {
        word_slot *w = &tr->slots[k];
        if (w->hash == h && w->len == n && memcmp(tr->words_text.data + w->off, s, n) == 0) {
            w->count++;
            return;
        }
    }
    tr->slots[k] = (word_slot){h, (uint32_t)tr->words_text.len, (uint32_t)n, 1};
    tp_buf_append(&tr->words_text, s, n);
    if (++tr->used * 2 > tr->cap) grow_words(tr);
}

int tp_bpe_trainer_feed(tp_bpe_trainer *tr, const char *text, size_t n, tp_err *err) {
    size_t bad;
    if (!tp_utf8_valid(text, n, &bad)) {
        tp_err_set(err, "invalid UTF-8 at byte %zu of the text", bad);
        return -1;
    }
    const char *work;
    if (tp_pretok_run(tr->pretok, text, n, &tr->scratch, &work, err) < 0) return -1;
    if (tr->words_text.len > UINT32_MAX / 2) {
        tp_err_set(err, "too much distinct text to train on (over 2 GB of distinct words)");
        return -1;
    }
    for (size_t i = 0; i < tr->scratch.spans.count; i++)
        count_word(tr, work + tr->scratch.spans.items[i].off, tr->scratch.spans.items[i].len);
    return 0;
}

// ---- training ----

typedef struct {
    int32_t *sym;
    int32_t len;
    uint64_t count;
} word;

typedef struct {
    uint64_t pair;  // left << 32 | right; UINT64_MAX: free
    int64_t count;
} pair_slot;

typedef struct {
    pair_slot *slots;
    uint64_t mask;
    size_t used;
} pair_map;

static pair_slot *pair_get(pair_map *m, uint64_t pair) {
    if ((m->used + 1) * 2 > m->mask + 1) {
        pair_map bigger = {tp_xmalloc((m->mask + 1) * 2 * sizeof(pair_slot)), m->mask * 2 + 1, 0};
        for (uint64_t i = 0; i <= bigger.mask; i++) bigger.slots[i].pair = UINT64_MAX;
        for (uint64_t i = 0; i <= m->mask; i++)
            if (m->slots[i].pair != UINT64_MAX) *pair_get(&bigger, m->slots[i].pair) = m->slots[i];
        free(m->slots);
        *m = bigger;
    }
    uint64_t i = (pair * 0x9E3779B97F4A7C15ull) >> 17 & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->slots[i].pair == pair) return &m->slots[i];
        if (m->slots[i].pair == UINT64_MAX) {
            m->slots[i] = (pair_slot){pair, 0};
            m->used++;
            return &m->slots[i];
        }
    }
}

typedef struct {
    int32_t *items;
    size_t count, cap;
} int_list;

static void list_push(int_list *l, int32_t v) {
    if (l->count == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4;
        l->items = tp_xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->count++] = v;
}

// A heap entry: a pair with its count when pushed and the words it was seen in then
// (HF's Merge { pair, count, pos }).
typedef struct {
    int64_t count;
    uint64_t pair;
    int32_t pos;  // index into the position lists
} entry;

static bool before(const entry *a, const entry *b) {  // a pops before b
    return a->count != b->count ? a->count > b->count : a->pair < b->pair;
}

typedef struct {
    entry *items;
    size_t count, cap;
} heap;

static void heap_add(heap *h, entry e) {
    if (h->count == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 1024;
        h->items = tp_xrealloc(h->items, h->cap * sizeof *h->items);
    }
    size_t i = h->count++;
    while (i > 0 && before(&e, &h->items[(i - 1) / 2])) {
        h->items[i] = h->items[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->items[i] = e;
}

static entry heap_take(heap *h) {
    entry top = h->items[0], e = h->items[--h->count];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->count) break;
        if (c + 1 < h->count && before(&h->items[c + 1], &h->items[c])) c++;
        if (!before(&h->items[c], &e)) break;
        h->items[i] = h->items[c];
        i = c;
    }
    h->items[i] = e;
    return top;
}

typedef struct {
    word *words;
    size_t n_words;
    pair_map counts;
    // Pairs that gained occurrences in this round, with their words (HF's where_to_update).
    uint64_t *fresh;
    int_list *fresh_pos;
    size_t n_fresh, cap_fresh;
    pair_map fresh_index;  // pair -> index + 1 in fresh
    int_list *pos_lists;
    size_t n_pos, cap_pos;
    heap queue;
} state;

static void note_fresh(state *s, uint64_t pair, int32_t w) {
    pair_slot *f = pair_get(&s->fresh_index, pair);
    if (f->count == 0) {
        if (s->n_fresh == s->cap_fresh) {
            s->cap_fresh = s->cap_fresh ? s->cap_fresh * 2 : 1024;
            s->fresh = tp_xrealloc(s->fresh, s->cap_fresh * sizeof *s->fresh);
            s->fresh_pos = tp_xrealloc(s->fresh_pos, s->cap_fresh * sizeof *s->fresh_pos);
        }
        s->fresh[s->n_fresh] = pair;
        s->fresh_pos[s->n_fresh] = (int_list){0};
        f->count = (int64_t)++s->n_fresh;
    }
    int_list *l = &s->fresh_pos[f->count - 1];
    if (l->count == 0 || l->items[l->count - 1] != w) list_push(l, w);
}

static void change(state *s, int32_t a, int32_t b, int delta, int32_t w) {
    uint64_t pair = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    pair_get(&s->counts, pair)->count += delta * (int64_t)s->words[w].count;
    if (delta > 0) note_fresh(s, pair, w);
}

// Pushes every fresh pair with a positive count, then forgets them.
static void push_fresh(state *s) {
    for (size_t i = 0; i < s->n_fresh; i++) {
        int64_t c = pair_get(&s->counts, s->fresh[i])->count;
        if (c <= 0) {
            free(s->fresh_pos[i].items);
            continue;
        }
        if (s->n_pos == s->cap_pos) {
            s->cap_pos = s->cap_pos ? s->cap_pos * 2 : 1024;
            s->pos_lists = tp_xrealloc(s->pos_lists, s->cap_pos * sizeof *s->pos_lists);
        }
        s->pos_lists[s->n_pos] = s->fresh_pos[i];
        heap_add(&s->queue, (entry){c, s->fresh[i], (int32_t)s->n_pos++});
    }
    s->n_fresh = 0;
    for (uint64_t i = 0; i <= s->fresh_index.mask; i++) s->fresh_index.slots[i].pair = UINT64_MAX;
    s->fresh_index.used = 0;
}

// HF's Word::merge: replaces each (a, b) left to right and records pair changes.
static void merge_word(state *s, int32_t w, int32_t a, int32_t b, int32_t c) {
    word *wd = &s->words[w];
    for (int32_t i = 0; i < wd->len; i++) {
        if (wd->sym[i] != a || i + 1 >= wd->len || wd->sym[i + 1] != b) continue;
        if (i > 0) {
            change(s, wd->sym[i - 1], a, -1, w);
            change(s, wd->sym[i - 1], c, +1, w);
        }
        wd->sym[i] = c;
        memmove(wd->sym + i + 1, wd->sym + i + 2, (size_t)(wd->len - i - 2) * sizeof *wd->sym);
        wd->len--;
        if (i < wd->len - 1) {
            change(s, b, wd->sym[i + 1], -1, w);
            change(s, c, wd->sym[i + 1], +1, w);
        }
    }
}

static pair_map new_pair_map(void) {
    pair_map m = {tp_xmalloc(1024 * sizeof(pair_slot)), 1023, 0};
    for (uint64_t i = 0; i <= m.mask; i++) m.slots[i].pair = UINT64_MAX;
    return m;
}

// Token strings as raw bytes, by id, with a hash index (bytes -> id).
typedef struct {
    tp_buf bytes;
    uint32_t *off, *len;
    int32_t count, cap;
    int32_t *index;  // open addressing, -1 free
    uint32_t index_mask;
} token_table;

static int32_t find_token(const token_table *t, const char *s, size_t n) {
    if (!t->index) return -1;
    for (uint32_t i = (uint32_t)tp_tok_hash_bytes(s, n) & t->index_mask;; i = (i + 1) & t->index_mask) {
        int32_t id = t->index[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->bytes.data + t->off[id], s, n) == 0) return id;
    }
}

static void index_token(token_table *t, int32_t id) {
    if (!t->index || (uint32_t)t->count * 2 > t->index_mask) {
        uint32_t cap = t->index ? (t->index_mask + 1) * 2 : 4096;
        free(t->index);
        t->index = tp_xmalloc(cap * sizeof *t->index);
        t->index_mask = cap - 1;
        for (uint32_t i = 0; i < cap; i++) t->index[i] = -1;
        for (int32_t k = 0; k < t->count; k++) if (k != id) index_token(t, k);
    }
    uint32_t i = (uint32_t)tp_tok_hash_bytes(t->bytes.data + t->off[id], t->len[id]) & t->index_mask;
    while (t->index[i] >= 0) i = (i + 1) & t->index_mask;
    t->index[i] = id;
}

static int32_t add_token(token_table *t, const char *s, size_t n) {
    if (t->count == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 1024;
        t->off = tp_xrealloc(t->off, (size_t)t->cap * sizeof *t->off);
        t->len = tp_xrealloc(t->len, (size_t)t->cap * sizeof *t->len);
    }
    t->off[t->count] = (uint32_t)t->bytes.len;
    t->len[t->count] = (uint32_t)n;
    tp_buf_append(&t->bytes, s, n);
    int32_t id = t->count++;
    if (find_token(t, s, n) < 0) index_token(t, id);  // the first of equal strings keeps the name
    return id;
}

// Writes raw bytes as a byte-level string (JSON-escaped) to out.
static void put_byte_level(tp_buf *out, const char *s, size_t n) {
    tp_buf chars = {0};
    for (size_t i = 0; i < n; i++) {
        char u[4];
        tp_buf_append(&chars, u, (size_t)tp_utf8_encode(tp_tok_byte_char((unsigned char)s[i]), u));
    }
    tp_json_dump_string(out, chars.data ? chars.data : "", chars.len);
    tp_buf_free(&chars);
}

static void write_json(tp_buf *out, const token_table *tok, int n_special, const char *const *special,
                       const uint64_t *merges, size_t n_merges) {
    tp_buf_puts(out, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (int i = 0; i < n_special; i++) {
        tp_buf_printf(out, "%s{\"id\":%d,\"content\":", i ? "," : "", i);
        tp_json_dump_string(out, special[i], strlen(special[i]));
        tp_buf_puts(out, ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}");
    }
    tp_buf_puts(out, "],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                     "\"pattern\":{\"Regex\":");
    tp_json_dump_string(out, QWEN_PATTERN, sizeof QWEN_PATTERN - 1);
    tp_buf_puts(out, "},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                     "\"trim_offsets\":false,\"use_regex\":false}]},\"post_processor\":null,\"decoder\":{\"type\":"
                     "\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},\"model\":{"
                     "\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
                     "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,"
                     "\"vocab\":{");
    for (int32_t id = 0; id < tok->count; id++) {
        if (id) tp_buf_putc(out, ',');
        if (id < n_special) tp_json_dump_string(out, special[id], strlen(special[id]));
        else put_byte_level(out, tok->bytes.data + tok->off[id], tok->len[id]);
        tp_buf_printf(out, ":%d", id);
    }
    tp_buf_puts(out, "},\"merges\":[");
    for (size_t i = 0; i < n_merges; i++) {
        int32_t a = (int32_t)(merges[i] >> 32), b = (int32_t)(uint32_t)merges[i];
        tp_buf_puts(out, i ? ",[" : "[");
        put_byte_level(out, tok->bytes.data + tok->off[a], tok->len[a]);
        tp_buf_putc(out, ',');
        put_byte_level(out, tok->bytes.data + tok->off[b], tok->len[b]);
        tp_buf_putc(out, ']');
    }
    tp_buf_puts(out, "]}}\n");
}

int tp_bpe_trainer_finish(tp_bpe_trainer *tr, int32_t vocab_size, uint64_t min_frequency, const char *const *special,
                          int n_special, tp_buf *out, tp_err *err) {
    if (vocab_size < n_special + 256) {
        tp_err_set(err, "vocabulary size %d is below %d (the special tokens and the 256 bytes)", vocab_size,
                   n_special + 256);
        return -1;
    }
    token_table tok = {0};
    for (int i = 0; i < n_special; i++) add_token(&tok, special[i], strlen(special[i]));
    // The 256 bytes, in the code-point order of their byte-level characters.
    int32_t byte_id[256];
    for (uint32_t c = 0; c < 324; c++) {
        int b = tp_tok_char_byte(c);
        if (b < 0) continue;
        char ch = (char)b;
        byte_id[b] = add_token(&tok, &ch, 1);
    }
    state s = {0};
    s.counts = new_pair_map();
    s.fresh_index = new_pair_map();
    s.words = tp_xcalloc(tr->used + 1, sizeof *s.words);
    for (size_t i = 0; i < tr->cap; i++) {
        const word_slot *ws = &tr->slots[i];
        if (!ws->count) continue;
        word *w = &s.words[s.n_words];
        w->sym = tp_xmalloc(ws->len * sizeof *w->sym);
        w->len = (int32_t)ws->len;
        w->count = ws->count;
        for (uint32_t k = 0; k < ws->len; k++) w->sym[k] = byte_id[(unsigned char)tr->words_text.data[ws->off + k]];
        for (int32_t k = 0; k + 1 < w->len; k++) change(&s, w->sym[k], w->sym[k + 1], +1, (int32_t)s.n_words);
        s.n_words++;
    }
    push_fresh(&s);
    uint64_t *merges = NULL;
    size_t n_merges = 0;
    tp_buf joined = {0};
    while (tok.count < vocab_size && s.queue.count > 0) {
        entry top = heap_take(&s.queue);
        int64_t now = pair_get(&s.counts, top.pair)->count;
        if (top.count != now) {
            top.count = now;
            heap_add(&s.queue, top);
            continue;
        }
        if (top.count < 1 || (uint64_t)top.count < min_frequency) break;
        int32_t a = (int32_t)(top.pair >> 32), b = (int32_t)(uint32_t)top.pair;
        joined.len = 0;
        tp_buf_append(&joined, tok.bytes.data + tok.off[a], tok.len[a]);
        tp_buf_append(&joined, tok.bytes.data + tok.off[b], tok.len[b]);
        // An existing token with the same text (HF's word_to_id lookup) is reused.
        int32_t c = find_token(&tok, joined.data, joined.len);
        if (c < 0) c = add_token(&tok, joined.data, joined.len);
        merges = tp_xrealloc(merges, (n_merges + 1) * sizeof *merges);
        merges[n_merges++] = top.pair;
        const int_list *pos = &s.pos_lists[top.pos];
        for (size_t k = 0; k < pos->count; k++) merge_word(&s, pos->items[k], a, b, c);
        push_fresh(&s);
    }
    write_json(out, &tok, n_special, special, merges, n_merges);
    tp_buf_free(&joined);
    free(merges);
    for (size_t i = 0; i < s.n_words; i++) free(s.words[i].sym);
    free(s.words);
    for (size_t i = 0; i < s.n_pos; i++) free(s.pos_lists[i].items);
    free(s.pos_lists);
    free(s.fresh);
    free(s.fresh_pos);
    free(s.counts.slots);
    free(s.fresh_index.slots);
    free(s.queue.items);
    tp_buf_free(&tok.bytes);
    free(tok.off);
    free(tok.len);
    free(tok.index);
    return 0;
}
