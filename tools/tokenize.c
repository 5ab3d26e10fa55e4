// tokenize — text and chat records to token ids and training streams (man 1 tokenize).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe_train.h"
#include "chat.h"
#include "cli.h"
#include "error.h"
#include "fileio.h"
#include "json.h"
#include "jsonl.h"
#include "pack.h"
#include "progress.h"
#include "rng.h"
#include "tensor_stream.h"
#include "tokenizer.h"
#include "unicode.h"

static const char usage[] =
    "Usage: tokenize -t TOKENIZER MODE [OPTIONS] [FILE...]   tokenize --train-bpe N [FILE...]\n"
    "Exact byte-level BPE (ids equal HF tokenizers) for JSONL records.\n"
    "\n"
    "  -t, --tokenizer PATH  model directory or tokenizer.json[.zst]\n"
    "  -e, --encode          {\"text\"} -> {\"ids\"}   (--field NAME, --add-special)\n"
    "  -d, --decode          {\"ids\"} -> {\"text\"}   (--skip-special; --stream: raw\n"
    "                        text as ids arrive, never splitting a character)\n"
    "  -T, --template NAME   chat/trace records -> tensor stream of input_ids, loss_mask:\n"
    "                        chatml qwen3 deepseek-r1 llama3 nemo auto\n"
    "      --prompt TEXT     trace prompt ({problem}; cot-fetch's default)\n"
    "      --train-on-prompt --mask-history   loss mask on every token / last turn only\n"
    "      --max-len N [--truncate|--drop-long]   --pack N [--split]   --shuffle --seed S\n"
    "  -z, --zstd LEVEL      compress the tensor stream (1-19)\n"
    "      --train-bpe VOCAB learn a byte-level BPE from {\"text\"} records, write\n"
    "                        tokenizer.json (--special TOK..., --min-frequency N)\n"
    "  -j, --threads N       worker threads (default: all cores); output order is kept\n"
    "  -o, --output FILE     write to FILE instead of standard output\n"
    "      --progress        progress even when stderr is not a terminal\n"
    "  -q, --quiet           no summary\n"
    "  -h, --help            this text\n"
    "      --version         print the version\n"
    "\n"
    "Exit status: 0 ok, 1 bad input or I/O error, 2 usage error. See tokenize(1).\n";

enum { OPT_FIELD = 0x2000, OPT_ADD_SPECIAL, OPT_SKIP_SPECIAL, OPT_STREAM, OPT_PROMPT, OPT_TRAIN_ON_PROMPT,
       OPT_MASK_HISTORY, OPT_MAX_LEN, OPT_TRUNCATE, OPT_DROP_LONG, OPT_PACK, OPT_SPLIT, OPT_SHUFFLE, OPT_SEED,
       OPT_PAD_ID, OPT_TRAIN_BPE, OPT_SPECIAL, OPT_MIN_FREQUENCY };

typedef enum { MODE_NONE, MODE_ENCODE, MODE_DECODE, MODE_TEMPLATE, MODE_TRAIN } run_mode;

typedef struct {
    run_mode mode;
    const char *tokenizer, *output, *field, *template_name, *prompt;
    bool add_special, skip_special, stream, truncate, drop_long, split, shuffle;
    tp_mask_mode mask;
    long long max_len, pack, seed, pad_id, train_vocab, min_frequency;
    const char *special[64];
    int n_special;
    int threads, zstd;
} options;

typedef struct {
    uint64_t records, tokens, trained, dropped, truncated, bytes_in;
} stats;

// ---- a batch of lines, processed in parallel, written in order ----

typedef struct {
    tp_buf text;        // the lines, back to back
    size_t *off, *len;  // [n]
    uint64_t *line_no;
    size_t n, cap;
    char *name;         // the input the lines come from (a batch never spans inputs)
} batch;

// The inputs, one after another.
typedef struct {
    char **files;
    int nfiles, next;
    tp_jsonl_reader *reader;
} source;

typedef struct {
    tp_buf out;     // encode: the JSON line
    tp_ids ids;     // template: ids
    tp_buf mask;    //           loss mask
    char *error;    // NULL, or why the record failed
    bool dropped, truncated;
} result;

enum { BATCH_LINES = 512, BATCH_BYTES = 8 << 20 };

// Fills b with the next lines of the current input (opening the next input when
// one ends); false when every input is done.
static bool read_batch(source *src, batch *b, stats *s) {
    b->n = 0;
    b->text.len = 0;
    tp_err err;
    while (b->n == 0) {
        if (!src->reader) {
            if (src->next >= (src->nfiles ? src->nfiles : 1)) return false;
            const char *path = src->nfiles ? src->files[src->next] : "-";
            src->next++;
            src->reader = tp_jsonl_open(path, NULL, &err);
            if (!src->reader) tp_die_err(&err);
        }
        free(b->name);
        b->name = tp_xstrdup(tp_jsonl_name(src->reader));
        while (b->n < BATCH_LINES && b->text.len < BATCH_BYTES) {
            const char *line;
            size_t n;
            int got = tp_jsonl_next_line(src->reader, &line, &n, &err);
            if (got < 0) tp_die_err(&err);
            if (got == 0) {
                tp_jsonl_close(src->reader);
                src->reader = NULL;
                break;
            }
            if (b->n == b->cap) {
                b->cap = b->cap ? b->cap * 2 : BATCH_LINES;
                b->off = tp_xrealloc(b->off, b->cap * sizeof *b->off);
                b->len = tp_xrealloc(b->len, b->cap * sizeof *b->len);
                b->line_no = tp_xrealloc(b->line_no, b->cap * sizeof *b->line_no);
            }
            b->off[b->n] = b->text.len;
            b->len[b->n] = n;
            b->line_no[b->n] = tp_jsonl_line(src->reader);
            tp_buf_append(&b->text, line, n);
            s->bytes_in += n + 1;
            b->n++;
        }
    }
    return true;
}

typedef struct {
    const options *o;
    const tp_tokenizer *tok;
    tp_tok_state **states;
    tp_template tmpl;
    const char *bos;
} context;

static void fail(result *res, const char *name, uint64_t line, const tp_err *err) {
    tp_buf b = {0};
    tp_buf_printf(&b, "%s:%llu: %s", name, (unsigned long long)line, err->msg);
    res->error = b.data;
}

static void append_int(tp_buf *b, int32_t v) {
    char tmp[16];
    int n = 0;
    uint32_t u = v < 0 ? (uint32_t)-(int64_t)v : (uint32_t)v;
    do tmp[n++] = (char)('0' + u % 10); while ((u /= 10) > 0);
    if (v < 0) tmp[n++] = '-';
    tp_buf_reserve(b, (size_t)n);
    while (n) b->data[b->len++] = tmp[--n];
}

static void encode_one(const context *c, tp_tok_state *st, jv rec, result *res, const char *name, uint64_t line) {
    tp_err err;
    jv text = jv_object_get(rec, jv_string(c->o->field));
    if (jv_get_kind(text) != JV_KIND_STRING) {
        tp_err_set(&err, "\"%s\" must be a string", c->o->field);
        fail(res, name, line, &err);
    } else {
        res->ids.count = 0;
        if (tp_tokenizer_encode(c->tok, st, jv_string_value(text), (size_t)jv_string_length_bytes(jv_copy(text)),
                                c->o->add_special, &res->ids, &err) < 0) {
            fail(res, name, line, &err);
        } else {
            tp_buf_puts(&res->out, "{\"ids\":[");
            for (size_t i = 0; i < res->ids.count; i++) {
                if (i) tp_buf_putc(&res->out, ',');
                append_int(&res->out, res->ids.ids[i]);
            }
            tp_buf_puts(&res->out, "]}");
        }
    }
    jv_free(text);
}

static void template_one(const context *c, tp_tok_state *st, jv rec, result *res, const char *name, uint64_t line) {
    tp_err err;
    tp_chat chat;
    if (tp_chat_from_record(rec, c->o->prompt, &chat, &err) < 0) {
        jv_free(rec);
        fail(res, name, line, &err);
        return;
    }
    jv_free(rec);
    tp_chat_normalize(&chat, c->tok);
    tp_chat_render r = {0};
    res->ids.count = 0;
    res->mask.len = 0;
    if (tp_chat_render_text(c->tmpl, &chat, c->bos, &r, &err) < 0 ||
        tp_chat_encode(c->tok, st, &r, c->o->mask, &res->ids, &res->mask, &err) < 0) {
        fail(res, name, line, &err);
    } else if (c->o->max_len > 0 && res->ids.count > (size_t)c->o->max_len) {
        if (c->o->truncate) {
            res->ids.count = (size_t)c->o->max_len;
            res->mask.len = (size_t)c->o->max_len;
            res->truncated = true;
        } else if (c->o->drop_long) {
            res->dropped = true;
        } else {
            tp_err_set(&err, "%zu tokens, more than --max-len %lld (add --truncate or --drop-long)", res->ids.count,
                       c->o->max_len);
            fail(res, name, line, &err);
        }
    }
    tp_chat_render_free(&r);
    tp_chat_free(&chat);
}

static void process_item(const context *c, const batch *b, result *res, size_t i) {
    tp_tok_state *st = c->states[omp_get_thread_num()];
    result *r = &res[i];
    r->out.len = 0;
    r->error = NULL;
    r->dropped = r->truncated = false;
    jv rec;
    tp_err err;
    if (tp_jsonl_parse_record(b->name, b->line_no[i], b->text.data + b->off[i], b->len[i], false, &rec, &err) < 0) {
        r->error = tp_xstrdup(err.msg);
        return;
    }
    if (c->o->mode == MODE_ENCODE) encode_one(c, st, rec, r, b->name, b->line_no[i]);
    else template_one(c, st, rec, r, b->name, b->line_no[i]);
}

// ---- template output ----

typedef struct {
    tp_stream_writer *w;
    jv meta;  // first record only
} sink;

static int write_tensors(sink *k, const tp_tensor_ref *t, int n, tp_err *err) {
    int rc = tp_stream_write(k->w, t, n, k->meta, err);
    jv_free(k->meta);
    k->meta = jv_null();
    return rc;
}

static int emit_row(void *ctx, const tp_packed_row *row, tp_err *err) {
    int64_t len = (int64_t)row->len, starts = (int64_t)row->n_starts;
    tp_tensor_ref t[4] = {{"input_ids", TP_I32, 1, &len, row->input_ids},
                          {"loss_mask", TP_U8, 1, &len, row->loss_mask},
                          {"position_ids", TP_I32, 1, &len, row->position_ids},
                          {"seq_starts", TP_I32, 1, &starts, row->seq_starts}};
    return write_tensors(ctx, t, 4, err);
}

static int emit_sample(sink *k, tp_packer *p, const int32_t *ids, const uint8_t *mask, size_t n, tp_err *err) {
    if (p) return tp_packer_add(p, ids, mask, n, emit_row, k, err);
    int64_t len = (int64_t)n;
    tp_tensor_ref t[2] = {{"input_ids", TP_I32, 1, &len, ids}, {"loss_mask", TP_U8, 1, &len, mask}};
    return write_tensors(k, t, 2, err);
}

// Samples kept for --shuffle.
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n;
} sample;

// ---- modes ----

// Packing pads with tokenizer_config.json's pad token, else its EOS, else id 0.
static int32_t pad_id(const tp_tokenizer *t, long long forced) {
    if (forced >= 0) return (int32_t)forced;
    const char *keys[] = {"pad_token", "eos_token"};
    for (int k = 0; k < 2; k++) {
        const char *s = tp_tokenizer_config_token(t, keys[k]);
        int32_t id = s ? tp_tokenizer_token_id(t, s) : -1;
        if (id >= 0) return id;
    }
    return 0;
}

typedef struct {
    tp_jsonl_writer *jw;  // encode output
    sink *k;              // template output
    tp_packer *packer;
    sample **kept;        // --shuffle: samples kept here instead
    size_t *n_kept;
    tp_buf lines;         // encode: a batch of output lines, written at once
} output;

// Writes a processed batch in order; the first failed record stops the program
// after the records before it are written.
static void write_batch(const context *c, const batch *b, result *res, output *out, stats *s) {
    tp_err err;
    out->lines.len = 0;
    for (size_t i = 0; i < b->n; i++) {
        result *x = &res[i];
        if (x->error) {
            if (out->lines.len && tp_jsonl_write_text(out->jw, out->lines.data, out->lines.len - 1, &err) < 0)
                tp_die_err(&err);
            tp_die("%s", x->error);
        }
        s->records++;
        if (c->o->mode == MODE_ENCODE) {
            s->tokens += x->ids.count;
            tp_buf_append(&out->lines, x->out.data, x->out.len);
            tp_buf_putc(&out->lines, '\n');
            continue;
        }
        if (x->dropped) {
            s->dropped++;
            continue;
        }
        s->truncated += x->truncated;
        s->tokens += x->ids.count;
        for (size_t t = 0; t < x->mask.len; t++) s->trained += (unsigned char)x->mask.data[t];
        if (out->kept) {
            *out->kept = tp_xrealloc(*out->kept, (*out->n_kept + 1) * sizeof **out->kept);
            sample *sm = &(*out->kept)[(*out->n_kept)++];
            sm->n = x->ids.count;
            sm->ids = tp_xmalloc(sm->n * sizeof *sm->ids + 1);
            sm->mask = tp_xmalloc(sm->n + 1);
            memcpy(sm->ids, x->ids.ids, sm->n * sizeof *sm->ids);
            memcpy(sm->mask, x->mask.data, sm->n);
        } else if (emit_sample(out->k, out->packer, x->ids.ids, (const uint8_t *)x->mask.data, x->ids.count, &err) < 0) {
            tp_die("%s:%llu: %s", b->name, (unsigned long long)b->line_no[i], err.msg);
        }
    }
    // Whole lines in one write: a batch of complete lines never leaves a torn one.
    if (out->lines.len && tp_jsonl_write_text(out->jw, out->lines.data, out->lines.len - 1, &err) < 0) tp_die_err(&err);
}

// Pipelined: while the workers encode batch k, one of them writes batch k-1 and
// reads batch k+1, then joins the encoding.
static void run_batches(char **files, int nfiles, const context *c, stats *s, output *out) {
    source src = {files, nfiles, 0, NULL};
    batch b[2];
    memset(b, 0, sizeof b);
    result *res[2] = {tp_xcalloc(BATCH_LINES, sizeof(result)), tp_xcalloc(BATCH_LINES, sizeof(result))};
    tp_progress progress;
    tp_progress_start(&progress, "records", 0);
    int cur = 0;
    bool have = read_batch(&src, &b[cur], s), pending = false;
    while (have) {
        int other = 1 - cur;
        bool have_next = false;
#pragma omp parallel num_threads(c->o->threads)
        {
#pragma omp single nowait
            {
                if (pending) write_batch(c, &b[other], res[other], out, s);
                have_next = read_batch(&src, &b[other], s);
                tp_progress_update(&progress, s->records);
            }
#pragma omp for schedule(dynamic, 4)
            for (size_t i = 0; i < b[cur].n; i++) process_item(c, &b[cur], res[cur], i);
        }
        pending = true;
        cur = other;
        have = have_next;
    }
    if (pending) write_batch(c, &b[1 - cur], res[1 - cur], out, s);
    tp_progress_finish(&progress);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < BATCH_LINES; i++) {
            tp_buf_free(&res[k][i].out);
            tp_ids_free(&res[k][i].ids);
            tp_buf_free(&res[k][i].mask);
        }
        free(res[k]);
        tp_buf_free(&b[k].text);
        free(b[k].off);
        free(b[k].len);
        free(b[k].line_no);
        free(b[k].name);
    }
    tp_buf_free(&out->lines);
}

static void decode_ids(const tp_tokenizer *t, jv ids, const char *name, uint64_t line, tp_buf *bytes, bool skip) {
    tp_ids v = {0};
    tp_err err;
    if (jv_get_kind(ids) == JV_KIND_NUMBER) ids = jv_array_append(jv_array(), ids);
    if (jv_get_kind(ids) != JV_KIND_ARRAY) tp_die("%s:%llu: \"ids\" must be an array of integers", name, (unsigned long long)line);
    jv_array_foreach(ids, i, x) {
        double d = jv_get_kind(x) == JV_KIND_NUMBER ? jv_number_value(x) : -1.5;
        jv_free(x);
        if (!(d >= INT32_MIN && d <= INT32_MAX) || d != (double)(int32_t)d)
            tp_die("%s:%llu: ids[%d] is not an integer token id", name, (unsigned long long)line, i);
        tp_ids_push(&v, (int32_t)d);
    }
    jv_free(ids);
    if (tp_tokenizer_decode(t, v.ids, v.count, skip, bytes, &err) < 0)
        tp_die("%s:%llu: %s", name, (unsigned long long)line, err.msg);
    tp_ids_free(&v);
}

static void run_decode(char **files, int nfiles, const options *o, const tp_tokenizer *t, stats *s) {
    tp_err err;
    int fd = STDOUT_FILENO;
    tp_jsonl_writer *jw = NULL;
    if (o->stream) {
        if (o->output && (fd = tp_output_open(o->output, false, &err)) < 0) tp_die_err(&err);
    } else {
        jw = o->output ? tp_jsonl_writer_open(o->output, false, &err) : tp_jsonl_writer_fd(STDOUT_FILENO, "<stdout>");
        if (!jw) tp_die_err(&err);
    }
    tp_buf bytes = {0}, text = {0};
    tp_jsonl_opts jo = {.allow_scalar = o->stream};
    for (int f = 0; f < (nfiles ? nfiles : 1); f++) {
        tp_jsonl_reader *r = tp_jsonl_open(nfiles ? files[f] : "-", &jo, &err);
        if (!r) tp_die_err(&err);
        jv rec;
        int got;
        while ((got = tp_jsonl_next(r, &rec, &err)) == 1) {
            jv ids = jv_get_kind(rec) == JV_KIND_OBJECT ? jv_object_get(rec, jv_string("ids")) : rec;
            if (!o->stream) bytes.len = 0;
            size_t before = bytes.len;
            decode_ids(t, ids, tp_jsonl_name(r), tp_jsonl_line(r), &bytes, o->skip_special);
            s->records++;
            s->tokens += bytes.len - before;
            if (o->stream) {
                // Print whole characters only; an incomplete one waits for the next ids.
                size_t ready = tp_utf8_complete_prefix(bytes.data, bytes.len);
                text.len = 0;
                tp_utf8_append_lossy(&text, bytes.data, ready);
                if (tp_write_all(fd, text.data, text.len, o->output ? o->output : "<stdout>", &err) < 0) tp_die_err(&err);
                memmove(bytes.data, bytes.data + ready, bytes.len - ready);
                bytes.len -= ready;
            } else {
                text.len = 0;
                tp_buf_puts(&text, "{\"text\":");
                tp_buf lossy = {0};
                tp_utf8_append_lossy(&lossy, bytes.data, bytes.len);
                tp_json_dump_string(&text, lossy.data ? lossy.data : "", lossy.len);
                tp_buf_free(&lossy);
                tp_buf_putc(&text, '}');
                if (tp_jsonl_write_text(jw, text.data, text.len, &err) < 0) tp_die_err(&err);
            }
        }
        if (got < 0) tp_die_err(&err);
        tp_jsonl_close(r);
    }
    if (o->stream && bytes.len) {
        text.len = 0;
        tp_utf8_append_lossy(&text, bytes.data, bytes.len);
        if (tp_write_all(fd, text.data, text.len, "<stdout>", &err) < 0) tp_die_err(&err);
    }
    if (jw && tp_jsonl_writer_close(jw, &err) < 0) tp_die_err(&err);
    if (o->stream && o->output) close(fd);
    tp_buf_free(&bytes);
    tp_buf_free(&text);
}

static void run_template(char **files, int nfiles, const options *o, context *c, stats *s) {
    tp_err err;
    if (!o->output && isatty(STDOUT_FILENO))
        tp_die_usage("refusing to write a binary stream to a terminal; use -o FILE or a redirection");
    sink k = {tp_stream_writer_open(o->output ? o->output : "-", o->zstd, &err), jv_object()};
    if (!k.w) tp_die_err(&err);
    char num[32];
    k.meta = jv_object_set(k.meta, jv_string("producer"), jv_string("tokenize " TP_VERSION));
    k.meta = jv_object_set(k.meta, jv_string("tokenizer_hash"), jv_string(tp_tokenizer_hash(c->tok)));
    k.meta = jv_object_set(k.meta, jv_string("template"), jv_string(tp_template_name(c->tmpl)));
    snprintf(num, sizeof num, "%d", tp_tokenizer_vocab_size(c->tok));
    k.meta = jv_object_set(k.meta, jv_string("vocab_size"), jv_string(num));
    tp_packer packer, *pp = NULL;
    if (o->pack) {
        snprintf(num, sizeof num, "%lld", o->pack);
        k.meta = jv_object_set(k.meta, jv_string("pack"), jv_string(num));
        tp_packer_init(&packer, (size_t)o->pack, pad_id(c->tok, o->pad_id), o->split);
        pp = &packer;
    }
    sample *kept = NULL;
    size_t n_kept = 0;
    output out = {.k = &k, .packer = pp, .kept = o->shuffle ? &kept : NULL, .n_kept = &n_kept};
    run_batches(files, nfiles, c, s, &out);
    if (o->shuffle) {
        uint64_t rng = (uint64_t)o->seed;
        tp_shuffle(kept, n_kept, sizeof *kept, &rng);
        for (size_t i = 0; i < n_kept; i++) {
            if (emit_sample(&k, pp, kept[i].ids, kept[i].mask, kept[i].n, &err) < 0) tp_die_err(&err);
            free(kept[i].ids);
            free(kept[i].mask);
        }
        free(kept);
    }
    if (pp && tp_packer_finish(pp, emit_row, &k, &err) < 0) tp_die_err(&err);
    if (pp && !tp_cli.quiet)
        tp_info("packed into %llu rows of %lld tokens, %.1f%% padding", (unsigned long long)pp->rows, o->pack,
                pp->rows ? 100.0 * (double)pp->pad_tokens / ((double)pp->rows * (double)o->pack) : 0.0);
    if (pp) tp_packer_free(pp);
    jv_free(k.meta);
    if (tp_stream_writer_close(k.w, &err) < 0) tp_die_err(&err);
}

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"encode", no_argument, NULL, 'e'},
        {"decode", no_argument, NULL, 'd'}, {"template", required_argument, NULL, 'T'},
        {"output", required_argument, NULL, 'o'}, {"threads", required_argument, NULL, 'j'},
        {"zstd", required_argument, NULL, 'z'}, {"field", required_argument, NULL, OPT_FIELD},
        {"add-special", no_argument, NULL, OPT_ADD_SPECIAL}, {"skip-special", no_argument, NULL, OPT_SKIP_SPECIAL},
        {"stream", no_argument, NULL, OPT_STREAM}, {"prompt", required_argument, NULL, OPT_PROMPT},
        {"train-on-prompt", no_argument, NULL, OPT_TRAIN_ON_PROMPT},
        {"mask-history", no_argument, NULL, OPT_MASK_HISTORY}, {"max-len", required_argument, NULL, OPT_MAX_LEN},
        {"truncate", no_argument, NULL, OPT_TRUNCATE}, {"drop-long", no_argument, NULL, OPT_DROP_LONG},
        {"pack", required_argument, NULL, OPT_PACK}, {"split", no_argument, NULL, OPT_SPLIT},
        {"shuffle", no_argument, NULL, OPT_SHUFFLE}, {"seed", required_argument, NULL, OPT_SEED},
        {"pad-id", required_argument, NULL, OPT_PAD_ID}, {"train-bpe", required_argument, NULL, OPT_TRAIN_BPE},
        {"special", required_argument, NULL, OPT_SPECIAL}, {"min-frequency", required_argument, NULL, OPT_MIN_FREQUENCY},
        TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "t:edT:o:j:z:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        run_mode m = MODE_NONE;
        switch (c) {
        case 't': o->tokenizer = optarg; break;
        case 'e': m = MODE_ENCODE; break;
        case 'd': m = MODE_DECODE; break;
        case 'T': m = MODE_TEMPLATE; o->template_name = optarg; break;
        case 'o': o->output = optarg; break;
        case 'j': o->threads = (int)tp_cli_int("--threads", optarg, 1, 256); break;
        case 'z': o->zstd = (int)tp_cli_int("--zstd", optarg, 1, 19); break;
        case OPT_FIELD: o->field = optarg; break;
        case OPT_ADD_SPECIAL: o->add_special = true; break;
        case OPT_SKIP_SPECIAL: o->skip_special = true; break;
        case OPT_STREAM: o->stream = true; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_TRAIN_ON_PROMPT: o->mask = TP_MASK_ALL; break;
        case OPT_MASK_HISTORY: o->mask = TP_MASK_LAST; break;
        case OPT_MAX_LEN: o->max_len = tp_cli_int("--max-len", optarg, 1, 1 << 30); break;
        case OPT_TRUNCATE: o->truncate = true; break;
        case OPT_DROP_LONG: o->drop_long = true; break;
        case OPT_PACK: o->pack = tp_cli_int("--pack", optarg, 1, 1 << 30); break;
        case OPT_SPLIT: o->split = true; break;
        case OPT_SHUFFLE: o->shuffle = true; break;
        case OPT_SEED: o->seed = tp_cli_int("--seed", optarg, 0, INT64_MAX); break;
        case OPT_PAD_ID: o->pad_id = tp_cli_int("--pad-id", optarg, 0, INT32_MAX); break;
        case OPT_TRAIN_BPE: m = MODE_TRAIN; o->train_vocab = tp_cli_int("--train-bpe", optarg, 257, 1 << 24); break;
        case OPT_SPECIAL:
            if (o->n_special == 64) tp_die_usage("at most 64 --special tokens");
            if (!*optarg) tp_die_usage("--special needs a non-empty token");
            o->special[o->n_special++] = optarg;
            break;
        case OPT_MIN_FREQUENCY: o->min_frequency = tp_cli_int("--min-frequency", optarg, 0, INT64_MAX); break;
        default: tp_cli_common(c, usage);
        }
        if (m != MODE_NONE) {
            if (o->mode != MODE_NONE && o->mode != m)
                tp_die_usage("choose one of --encode, --decode, --template, --train-bpe");
            o->mode = m;
        }
    }
    if (o->mode == MODE_NONE) tp_die_usage("choose a mode: --encode, --decode, --template NAME or --train-bpe VOCAB");
    if (!o->tokenizer && o->mode != MODE_TRAIN) tp_die_usage("-t TOKENIZER is required");
    if (o->tokenizer && o->mode == MODE_TRAIN) tp_die_usage("--train-bpe learns a new tokenizer; it takes no -t");
    if (o->mode != MODE_TRAIN && (o->n_special || o->min_frequency))
        tp_die_usage("--special and --min-frequency need --train-bpe");
    bool tmpl = o->mode == MODE_TEMPLATE;
    if (!tmpl && (o->prompt || o->mask != TP_MASK_ASSISTANT || o->max_len || o->truncate || o->drop_long || o->pack ||
                  o->split || o->shuffle || o->zstd))
        tp_die_usage("--prompt, --train-on-prompt, --mask-history, --max-len, --truncate, --drop-long, --pack, "
                     "--split, --shuffle and --zstd need --template");
    if (o->mode != MODE_DECODE && (o->stream || o->skip_special)) tp_die_usage("--stream and --skip-special need --decode");
    if (o->mode != MODE_ENCODE && o->add_special) tp_die_usage("--add-special needs --encode");
    if (o->mode != MODE_ENCODE && o->mode != MODE_TRAIN && o->field) tp_die_usage("--field needs --encode or --train-bpe");
    if (o->truncate && o->drop_long) tp_die_usage("--truncate and --drop-long exclude each other");
    if ((o->truncate || o->drop_long) && !o->max_len && !o->pack) tp_die_usage("--truncate/--drop-long need --max-len or --pack");
    if (o->split && !o->pack) tp_die_usage("--split needs --pack");
    if (o->pack && !o->split && (!o->max_len || o->max_len > o->pack)) o->max_len = o->pack;
    if (!o->field) o->field = "text";
}

// --train-bpe: count words over all records, learn the merges, write tokenizer.json.
static void run_train(char **files, int nfiles, const options *o, stats *s) {
    static const char *default_special[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
    tp_err err;
    tp_bpe_trainer *tr = tp_bpe_trainer_new(&err);
    if (!tr) tp_die_err(&err);
    for (int f = 0; f < (nfiles ? nfiles : 1); f++) {
        tp_jsonl_reader *r = tp_jsonl_open(nfiles ? files[f] : "-", NULL, &err);
        if (!r) tp_die_err(&err);
        jv rec;
        int got;
        while ((got = tp_jsonl_next(r, &rec, &err)) == 1) {
            jv text = jv_object_get(rec, jv_string(o->field));
            if (jv_get_kind(text) != JV_KIND_STRING)
                tp_die("%s:%llu: \"%s\" must be a string", tp_jsonl_name(r), (unsigned long long)tp_jsonl_line(r), o->field);
            size_t n = (size_t)jv_string_length_bytes(jv_copy(text));
            if (tp_bpe_trainer_feed(tr, jv_string_value(text), n, &err) < 0)
                tp_die("%s:%llu: %s", tp_jsonl_name(r), (unsigned long long)tp_jsonl_line(r), err.msg);
            s->bytes_in += n;
            s->records++;
            jv_free(text);
        }
        if (got < 0) tp_die_err(&err);
        tp_jsonl_close(r);
    }
    const char *const *special = o->n_special ? o->special : default_special;
    int n_special = o->n_special ? o->n_special : 5;
    tp_buf json = {0};
    if (tp_bpe_trainer_finish(tr, (int32_t)o->train_vocab, (uint64_t)o->min_frequency, special, n_special, &json, &err) < 0)
        tp_die_err(&err);
    if (o->output) {
        tp_atomic_file f;
        if (tp_atomic_open(&f, o->output, &err) < 0) tp_die_err(&err);
        if (tp_write_all(f.fd, json.data, json.len, o->output, &err) < 0) {
            tp_atomic_abort(&f);
            tp_die_err(&err);
        }
        if (tp_atomic_commit(&f, &err) < 0) tp_die_err(&err);
    } else if (tp_write_all(STDOUT_FILENO, json.data, json.len, "<stdout>", &err) < 0) {
        tp_die_err(&err);
    }
    s->tokens = tp_bpe_trainer_words(tr);
    tp_buf_free(&json);
    tp_bpe_trainer_free(tr);
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    options o = {.threads = 0, .pad_id = -1, .mask = TP_MASK_ASSISTANT};
    parse_options(argc, argv, &o);
    if (o.threads <= 0) o.threads = omp_get_num_procs();
    omp_set_num_threads(o.threads);  // -j bounds the tokenizer load's threads too
    double start = tp_now();
    tp_err err;
    stats s = {0};
    if (o.mode == MODE_TRAIN) {
        run_train(argv + optind, argc - optind, &o, &s);
        if (!tp_cli.quiet)
            tp_info("%llu records, %llu distinct words, vocabulary %lld, %.1f MB/s in, %.2f s",
                    (unsigned long long)s.records, (unsigned long long)s.tokens, o.train_vocab,
                    (double)s.bytes_in / (tp_now() - start) / 1e6, tp_now() - start);
        return 0;
    }
    tp_tokenizer *t = tp_tokenizer_load(o.tokenizer, &err);
    if (!t) tp_die_err(&err);
    context c = {.o = &o, .tok = t};
    c.states = tp_xcalloc((size_t)o.threads, sizeof *c.states);
    for (int i = 0; i < o.threads; i++) c.states[i] = tp_tok_state_new(t);
    char **files = argv + optind;
    int nfiles = argc - optind;
    if (o.mode == MODE_DECODE) {
        run_decode(files, nfiles, &o, t, &s);
    } else if (o.mode == MODE_ENCODE) {
        tp_jsonl_writer *jw = o.output ? tp_jsonl_writer_open(o.output, false, &err)
                                       : tp_jsonl_writer_fd(STDOUT_FILENO, "<stdout>");
        if (!jw) tp_die_err(&err);
        output out = {.jw = jw};
        run_batches(files, nfiles, &c, &s, &out);
        if (tp_jsonl_writer_close(jw, &err) < 0) tp_die_err(&err);
    } else {
        int tm = tp_template_resolve(o.template_name, t, &err);
        if (tm < 0 && strcmp(o.template_name, "auto") == 0) tp_die_err(&err);
        if (tm < 0) tp_die_usage("%s", err.msg);
        if (strcmp(o.template_name, "auto") == 0 && !tp_cli.quiet)
            tp_info("template auto: %s (from tokenizer_config.json's chat_template)", tp_template_name((tp_template)tm));
        c.tmpl = (tp_template)tm;
        c.bos = tp_template_bos(c.tmpl, t);
        run_template(files, nfiles, &o, &c, &s);
    }
    double secs = tp_now() - start;
    if (!tp_cli.quiet) {
        double mbps = secs > 0 ? (double)s.bytes_in / secs / 1e6 : 0.0;
        if (o.mode == MODE_DECODE)
            tp_info("%llu records, %llu bytes of text, %.2f s", (unsigned long long)s.records,
                    (unsigned long long)s.tokens, secs);
        else if (o.mode == MODE_ENCODE)
            tp_info("%llu records, %llu tokens, %.1f MB/s in, %.2f s", (unsigned long long)s.records,
                    (unsigned long long)s.tokens, mbps, secs);
        else
            tp_info("%llu records, %llu tokens, %.1f%% trained, %llu dropped, %llu truncated, %.1f MB/s in, %.2f s",
                    (unsigned long long)s.records, (unsigned long long)s.tokens,
                    s.tokens ? 100.0 * (double)s.trained / (double)s.tokens : 0.0, (unsigned long long)s.dropped,
                    (unsigned long long)s.truncated, mbps, secs);
    }
    for (int i = 0; i < o.threads; i++) tp_tok_state_free(c.states[i]);
    free(c.states);
    tp_tokenizer_free(t);
    return 0;
}
