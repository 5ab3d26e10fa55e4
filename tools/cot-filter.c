// cot-filter — keep the well-formed, correct, clean traces: format, answer, length,
// repetition, language mixing, decontamination, deduplication, jq predicates and
// per-problem selection, each rejection written out with its reason. See cot-filter(1).
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "fileio.h"
#include "jqprog.h"
#include "json.h"
#include "jsonl.h"
#include "mathans.h"
#include "minhash.h"
#include "ngram.h"
#include "progress.h"
#include "textfilter.h"
#include "tokenizer.h"
#include "unicode.h"

static const char usage[] =
    "Usage: cot-filter [RULES] [-o OUT] [--rejects FILE] [--stats FILE] [FILE...]\n"
    "Keeps the trace records (JSONL) that pass every rule given; rules run in this order:\n"
    "      --finish LIST          finish_reason is one of LIST (e.g. stop)\n"
    "      --require-think        reasoning present; inline: one <think> block, at the start, closed\n"
    "      --where EXPR           a jq predicate on the record\n"
    "      --min-len N --max-len N   characters of reasoning + content (tokens with -t DIR)\n"
    "      --max-repeat X         fraction of repeated word N-grams (--repeat-n N, 10)\n"
    "      --max-mix X            fraction of letters outside the dominant script\n"
    "      --decontaminate FILE   word N-gram overlap with benchmark problems (--ngram N, 8); repeatable\n"
    "      --verify               the answer after </think> equals \"answer\" (--extract MODES,\n"
    "                             boxed,hashes,answer,colon,bare; also number)\n"
    "      --dedup exact|near     near: MinHash LSH over word shingles (--shingle N, 5; --bands BxR, 16x8)\n"
    "      --dedup-on trace|problem  (trace)\n"
    "      --drop-uniform-groups  drop problems whose samples all score the same (reward, or --verify's verdict)\n"
    "      --keep-per-problem K --prefer shortest|longest|first (first)\n"
    "  -t, --tokenizer PATH  --field NAME (content; text for rollout completions)\n"
    "      --grouped              records of a problem are contiguous: decide each group at once\n"
    "      --skip-bad             reject malformed records (rule \"bad-input\") instead of stopping\n"
    "  -o, --output FILE (-)  --rejects FILE  --stats FILE  (three different files, none an input)\n"
    "      --progress (also when stderr is no terminal)  -q, --quiet  -h, --help  --version\n"
    "A funnel (records kept after each rule) goes to stderr. See cot-filter(1).\n";

// The rules in the order they run (and the funnel lists them).
typedef enum rule { R_FINISH, R_THINK, R_WHERE, R_LEN, R_REPEAT, R_MIX, R_DECONTAM, R_VERIFY, R_DEDUP,
                    R_UNIFORM, R_KEEP, R_COUNT } rule;
static const char *const rule_names[R_COUNT] = {"finish", "require-think", "where", "length", "repeat", "mix",
                                                "decontaminate", "verify", "dedup", "uniform-group",
                                                "keep-per-problem"};

enum { OPT_FINISH = 0x100, OPT_THINK, OPT_WHERE, OPT_MINLEN, OPT_MAXLEN, OPT_REPEAT, OPT_REPEAT_N, OPT_MIX,
       OPT_DECONTAM, OPT_NGRAM, OPT_VERIFY, OPT_EXTRACT, OPT_DEDUP, OPT_DEDUP_ON, OPT_SHINGLE, OPT_BANDS,
       OPT_UNIFORM, OPT_KEEP, OPT_PREFER, OPT_FIELD, OPT_GROUPED, OPT_SKIPBAD, OPT_REJECTS, OPT_STATS };
enum { PREFER_FIRST, PREFER_SHORTEST, PREFER_LONGEST };

typedef struct options {
    bool on[R_COUNT];
    const char *finish, *where, *tokenizer, *field, *output, *rejects, *stats;
    long long min_len, max_len, keep;
    double max_repeat, max_mix;
    int repeat_n, ngram, shingle, bands, rows, prefer;
    bool near, dedup_problem, grouped, skip_bad;
    bool bare;  // --extract bare: a content that is nothing but the answer counts as one
    const char *decontam[64];
    int n_decontam;
    tp_extract_mode modes[TP_EXTRACT_COUNT];
    int n_modes;
} options;

// --extract MODES: mathans' modes, and "bare" (tried last, wherever it is written).
static void parse_extract(const char *spec, options *o) {
    char modes[256];
    size_t n = 0;
    o->bare = false;
    for (const char *p = spec; *p;) {
        size_t l = strcspn(p, ",");
        if (l == 4 && !strncmp(p, "bare", 4)) o->bare = true;
        else if (n + l + 2 > sizeof modes) tp_die_usage("--extract %s: too long", spec);
        else n += (size_t)sprintf(modes + n, "%s%.*s", n ? "," : "", (int)l, p);
        p += l + (p[l] == ',');
    }
    tp_err err;
    o->n_modes = 0;
    if (n && (o->n_modes = tp_extract_parse(modes, o->modes, TP_EXTRACT_COUNT, &err)) < 0)
        tp_die_usage("--extract: %s (or bare)", err.msg);
    if (!n && !o->bare) tp_die_usage("--extract: no extraction mode in '%s'", spec);
}

// The rules. Returns false when c is not one of them.
static bool rule_option(int c, options *o) {
    switch (c) {
    case OPT_FINISH: o->finish = optarg, o->on[R_FINISH] = true; break;
    case OPT_THINK: o->on[R_THINK] = true; break;
    case OPT_WHERE: o->where = optarg, o->on[R_WHERE] = true; break;
    case OPT_MINLEN: o->min_len = tp_cli_int("--min-len", optarg, 0, INT64_MAX / 2), o->on[R_LEN] = true; break;
    case OPT_MAXLEN: o->max_len = tp_cli_int("--max-len", optarg, 1, INT64_MAX / 2), o->on[R_LEN] = true; break;
    case OPT_REPEAT: o->max_repeat = tp_cli_double("--max-repeat", optarg, 0, 1), o->on[R_REPEAT] = true; break;
    case OPT_MIX: o->max_mix = tp_cli_double("--max-mix", optarg, 0, 1), o->on[R_MIX] = true; break;
    case OPT_DECONTAM:
        if (o->n_decontam == (int)(sizeof o->decontam / sizeof *o->decontam)) tp_die_usage("--decontaminate: at most 64 files");
        o->decontam[o->n_decontam++] = optarg;
        o->on[R_DECONTAM] = true;
        break;
    case OPT_VERIFY: o->on[R_VERIFY] = true; break;
    case OPT_DEDUP: o->near = !strcmp(tp_cli_choice("--dedup", optarg, "exact|near"), "near"), o->on[R_DEDUP] = true; break;
    case OPT_UNIFORM: o->on[R_UNIFORM] = true; break;
    case OPT_KEEP: o->keep = tp_cli_int("--keep-per-problem", optarg, 1, INT32_MAX), o->on[R_KEEP] = true; break;
    default: return false;
    }
    return true;
}

// How the rules measure and what they read. Returns false when c is not one of these.
static bool setting_option(int c, options *o) {
    switch (c) {
    case OPT_REPEAT_N: o->repeat_n = (int)tp_cli_int("--repeat-n", optarg, 1, 1000); break;
    case OPT_NGRAM: o->ngram = (int)tp_cli_int("--ngram", optarg, 1, 1000); break;
    case OPT_EXTRACT: parse_extract(optarg, o); break;
    case OPT_DEDUP_ON: o->dedup_problem = !strcmp(tp_cli_choice("--dedup-on", optarg, "trace|problem"), "problem"); break;
    case OPT_SHINGLE: o->shingle = (int)tp_cli_int("--shingle", optarg, 1, 1000); break;
    case OPT_BANDS:
        if (sscanf(optarg, "%dx%d", &o->bands, &o->rows) != 2 || o->bands < 1 || o->rows < 1 ||
            o->bands > TP_MINHASH_K || o->rows > TP_MINHASH_K || o->bands * o->rows != TP_MINHASH_K)
            tp_die_usage("--bands %s: BxR with B*R = %d, e.g. 16x8 or 32x4", optarg, TP_MINHASH_K);
        break;
    case OPT_PREFER: {
        const char *p = tp_cli_choice("--prefer", optarg, "shortest|longest|first");
        o->prefer = !strcmp(p, "shortest") ? PREFER_SHORTEST : !strcmp(p, "longest") ? PREFER_LONGEST : PREFER_FIRST;
        break;
    }
    case OPT_FIELD: o->field = optarg; break;
    case 't': o->tokenizer = optarg; break;
    default: return false;
    }
    return true;
}

// Inputs and outputs. Returns false when c is not one of these.
static bool io_option(int c, options *o) {
    switch (c) {
    case OPT_GROUPED: o->grouped = true; break;
    case OPT_SKIPBAD: o->skip_bad = true; break;
    case OPT_REJECTS: o->rejects = optarg; break;
    case OPT_STATS: o->stats = optarg; break;
    case 'o': o->output = optarg; break;
    default: return false;
    }
    return true;
}

// Outputs are opened (truncated) before the inputs are read: an output that is an input
// would be emptied before it is read, and two outputs in one file would interleave.
static void check_files(const options *o, char **inputs, int n_inputs) {
    const char *outputs[3] = {o->output, o->rejects, o->stats};
    static const char *const output_names[3] = {"-o", "--rejects", "--stats"};
    for (int i = 0; i < 3; i++) {
        if (!outputs[i]) continue;
        for (int j = i + 1; j < 3; j++)
            if (outputs[j] && tp_same_file(outputs[i], outputs[j]))
                tp_die_usage("%s and %s are the same file (%s)", output_names[i], output_names[j],
                             strcmp(outputs[j], "-") ? outputs[j] : "standard output");
        for (int k = 0; k < n_inputs + o->n_decontam; k++) {
            const char *in = k < n_inputs ? inputs[k] : o->decontam[k - n_inputs];
            if (strcmp(in, "-") && tp_same_file(outputs[i], in))  // "-" reads stdin, writes stdout
                tp_die_usage("%s %s is also an input: writing it would destroy it", output_names[i], outputs[i]);
        }
    }
}

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"finish", required_argument, NULL, OPT_FINISH}, {"require-think", no_argument, NULL, OPT_THINK},
        {"where", required_argument, NULL, OPT_WHERE}, {"min-len", required_argument, NULL, OPT_MINLEN},
        {"max-len", required_argument, NULL, OPT_MAXLEN}, {"max-repeat", required_argument, NULL, OPT_REPEAT},
        {"repeat-n", required_argument, NULL, OPT_REPEAT_N}, {"max-mix", required_argument, NULL, OPT_MIX},
        {"decontaminate", required_argument, NULL, OPT_DECONTAM}, {"ngram", required_argument, NULL, OPT_NGRAM},
        {"verify", no_argument, NULL, OPT_VERIFY}, {"extract", required_argument, NULL, OPT_EXTRACT},
        {"dedup", required_argument, NULL, OPT_DEDUP}, {"dedup-on", required_argument, NULL, OPT_DEDUP_ON},
        {"shingle", required_argument, NULL, OPT_SHINGLE}, {"bands", required_argument, NULL, OPT_BANDS},
        {"drop-uniform-groups", no_argument, NULL, OPT_UNIFORM},
        {"keep-per-problem", required_argument, NULL, OPT_KEEP}, {"prefer", required_argument, NULL, OPT_PREFER},
        {"field", required_argument, NULL, OPT_FIELD}, {"grouped", no_argument, NULL, OPT_GROUPED},
        {"skip-bad", no_argument, NULL, OPT_SKIPBAD}, {"rejects", required_argument, NULL, OPT_REJECTS},
        {"stats", required_argument, NULL, OPT_STATS}, {"tokenizer", required_argument, NULL, 't'},
        {"output", required_argument, NULL, 'o'}, TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "t:o:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1)
        if (!rule_option(c, o) && !setting_option(c, o) && !io_option(c, o)) tp_cli_common(c, usage);
    if (o->max_len && o->min_len > o->max_len) tp_die_usage("--min-len is above --max-len");
    check_files(o, argv + optind, argc - optind);
}

// ---- one record ----

typedef struct record {
    jv v;
    const char *line;   // the record as read
    size_t line_len;
    const char *file;
    uint64_t line_no, loc;  // loc: (file index << 40) | line, what tables remember
    const char *reasoning, *content, *answer;  // reasoning is "" when there is none
    size_t rlen, clen, alen;
    const char *gold;   // the "answer" field, a number written as a string (check_answer_field)
    size_t glen;
    char *gold_number;  // (the string of a numeric answer, freed with the record)
    bool has_content, inline_think;
    tp_think think;
    int verdict;        // -2 not judged yet, else tp_math_verdict
    char pred[256];     // the extracted answer (details quote 200 bytes of it)
    double length;      // -1: not measured yet
    bool words_done;
} record;

typedef struct group {
    char *id;
    uint32_t n;          // records read (every one, whatever the earlier rules said)
    double first_score;
    bool uniform, finished;
} group;

typedef struct held {  // a record that passed the streaming rules, waiting for its group
    uint64_t seq, loc;
    uint32_t group;
    double length;
    char *line;
    size_t len;
    rule rejected;     // R_COUNT while kept
    char *detail;
} held;

typedef struct run {
    options *o;
    tp_jsonl_writer *out, *rejects;
    tp_jq *where;
    tp_tokenizer *tok;
    tp_tok_state *tok_state;
    tp_ids ids;
    char **files;
    int n_files;
    // counts
    uint64_t in, bad, rejected[R_COUNT], out_count, bytes;
    // scratch
    tp_words words, pwords;
    tp_u64map repeat_scratch;
    uint64_t *shingles;
    size_t shingles_cap;
    // tables
    tp_u64map exact, bench;   // exact: text hash -> loc; bench: n-gram hash -> benchmark index + 1
    uint64_t *bench_loc;      // benchmark index -> (file index << 40) | line
    size_t n_bench;
    tp_lsh lsh;
    tp_u64map group_of;       // hash of a problem id -> group index + 1
    group *groups;
    size_t n_groups, cap_groups;
    held *held;
    size_t n_held, cap_held;
    uint32_t current_group;   // --grouped: the group being read
    bool made_id_said;
    uint64_t seq;
    tp_progress progress;  // records read
} run;

static const char *loc_name(const run *r, uint64_t loc, char *buf, size_t n) {
    int file = (int)(loc >> 40);
    const char *name = file < r->n_files ? r->files[file] : file - r->n_files < r->o->n_decontam
                                                                ? r->o->decontam[file - r->n_files] : "?";
    snprintf(buf, n, "%s:%llu", strcmp(name, "-") ? name : "<stdin>", (unsigned long long)(loc & ((1ull << 40) - 1)));
    return buf;
}

enum { CLIP_MAX = 200, CLIP_CAP = CLIP_MAX + 4 };
// s[0..n) cut to at most max (<= CLIP_MAX) bytes at a character boundary, "…" added when
// cut, into out: details quote texts of any length without splitting a UTF-8 character.
static const char *clip(const char *s, size_t n, size_t max, char out[CLIP_CAP]) {
    bool cut = n > max;
    size_t keep = cut ? tp_utf8_complete_prefix(s, max) : n;
    snprintf(out, CLIP_CAP, "%.*s%s", (int)keep, s, cut ? "…" : "");
    return out;
}

static void write_reject(run *r, jv v, const char *rule_name, const char *detail) {
    if (!r->rejects) return;
    v = jv_object_set(jv_copy(v), jv_string("rule"), jv_string(rule_name));
    v = jv_object_set(v, jv_string("detail"), jv_string(detail));
    tp_err err;
    if (tp_jsonl_write(r->rejects, v, &err) < 0) tp_die_err(&err);
    jv_free(v);
}

// A record the rules cannot read: an error that names it, or with --skip-bad a
// rejection ("bad-input") and a warning.
static bool bad(run *r, record *rec, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool bad(run *r, record *rec, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[600];
    loc_name(r, rec->loc, where, sizeof where);
    if (!r->o->skip_bad) tp_die("%s: %s", where, msg);
    if (r->bad < 10 && !tp_cli.quiet) tp_warn("%s: %s (rejected as bad input)", where, msg);
    r->bad++;
    write_reject(r, rec->v, "bad-input", msg);
    return false;
}

// A string field: true with *s when it is a string, true with "" when absent or null,
// false (bad input) when it is something else.
static bool string_field(run *r, record *rec, const char *key, const char **s, size_t *len, bool *present) {
    jv f = tp_json_get(rec->v, key);
    jv_kind k = jv_get_kind(f);
    if (present) *present = k == JV_KIND_STRING;
    if (k == JV_KIND_STRING) {
        *s = jv_string_value(f);
        *len = (size_t)jv_string_length_bytes(f);  // (frees f; the record keeps the string alive)
        return true;
    }
    jv_free(f);
    *s = "", *len = 0;
    if (k == JV_KIND_INVALID || k == JV_KIND_NULL) return true;
    return bad(r, rec, "\"%s\" is a %s, not a string", key, jv_kind_name(k));
}

// The content of the first (or last) message with role "user" of an array of messages.
static const char *user_message(jv msgs, bool last) {
    const char *found = NULL;
    if (jv_get_kind(msgs) != JV_KIND_ARRAY) return NULL;
    jv_array_foreach(msgs, i, m) {
        const char *role = tp_json_get_string(m, "role");
        if ((last || !found) && role && !strcmp(role, "user")) found = tp_json_get_string(m, "content");
        jv_free(m);  // (msgs still holds the string)
    }
    return found;
}

// The problem a record asks: "problem", "question", "prompt" (a string, or TRL's
// conversational prompt, a list of messages: its last user message), or the first
// user message of "messages".
static const char *problem_text(jv v, size_t *len) {
    static const char *const keys[] = {"problem", "question", "prompt"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *s = tp_json_get_string(v, keys[i]);
        if (s) return *len = strlen(s), s;
    }
    const char *found = NULL;
    for (int last = 1; last >= 0 && !found; last--) {
        jv msgs = tp_json_get(v, last ? "prompt" : "messages");
        found = user_message(msgs, last);
        jv_free(msgs);  // (the record still holds the string)
    }
    if (found) *len = strlen(found);
    return found;
}

// Reads the fields the rules need: reasoning, content and where the answer is.
static bool read_fields(run *r, record *rec) {
    const options *o = r->o;
    bool needs_text = o->on[R_THINK] || o->on[R_LEN] || o->on[R_REPEAT] || o->on[R_MIX] || o->on[R_VERIFY] ||
                      (o->on[R_DEDUP] && !o->dedup_problem) || (o->on[R_KEEP] && o->prefer != PREFER_FIRST);
    if (o->on[R_UNIFORM] && !needs_text) {  // a score from the answer unless there is a reward
        jv rw = tp_json_get(rec->v, "reward");
        needs_text = jv_get_kind(rw) != JV_KIND_NUMBER;
        jv_free(rw);
    }
    rec->reasoning = rec->content = rec->answer = "";
    if (!needs_text) return true;
    if (!string_field(r, rec, "reasoning", &rec->reasoning, &rec->rlen, NULL)) return false;
    if (!string_field(r, rec, o->field, &rec->content, &rec->clen, &rec->has_content)) return false;
    if (!rec->has_content && !rec->rlen) {
        jv t = tp_json_get(rec->v, "text");
        bool hint = jv_get_kind(t) == JV_KIND_STRING && strcmp(o->field, "text");
        jv_free(t);
        return bad(r, rec, "no \"%s\" field%s", o->field, hint ? " (a rollout completion? use --field text)" : "");
    }
    if (tp_is_blank(rec->reasoning, rec->rlen)) rec->rlen = 0, rec->reasoning = "";
    tp_think_scan(rec->content, rec->clen, &rec->think);
    rec->inline_think = !rec->rlen;
    rec->answer = rec->content, rec->alen = rec->clen;
    if (rec->inline_think) rec->answer = rec->content + rec->think.answer_start, rec->alen = rec->clen - rec->think.answer_start;
    return true;
}

// ---- the rules, each: true to keep, or false with a detail ----

static bool rule_finish(run *r, record *rec, char *detail, size_t n) {
    jv f = tp_json_get(rec->v, "finish_reason");
    bool ok = false;
    if (jv_get_kind(f) == JV_KIND_STRING) {
        const char *want = r->o->finish, *got = jv_string_value(f);
        size_t gl = strlen(got);
        for (const char *p = want; *p;) {
            size_t l = strcspn(p, ",");
            if (l == gl && !strncmp(p, got, l)) ok = true;
            p += l + (p[l] == ',');
        }
        char quoted[CLIP_CAP];
        if (!ok) snprintf(detail, n, "finish_reason \"%s\"", clip(got, gl, 100, quoted));
    } else {
        snprintf(detail, n, "finish_reason %s", jv_get_kind(f) == JV_KIND_INVALID ? "missing" : "null");
    }
    jv_free(f);
    return ok;
}

static bool rule_think(run *r, record *rec, char *detail, size_t n) {
    (void)r;
    const tp_think *t = &rec->think;
    if (!rec->inline_think) {  // reasoning in its own field: no stray tags in the content
        if (t->opens || t->closes) return snprintf(detail, n, "think tags in the content as well as a reasoning field"), false;
        return true;
    }
    const char *why = tp_think_problem(rec->content, rec->clen, t);
    if (why) snprintf(detail, n, "no reasoning field and %s in %s", why, r->o->field);
    return !why;
}

static bool rule_where(run *r, record *rec, char *detail, size_t n) {
    bool keep = false;
    tp_err err;
    if (tp_jq_test(r->where, rec->v, &keep, &err) < 0) return bad(r, rec, "--where: %s", err.msg);
    if (!keep) snprintf(detail, n, "--where is false");
    return keep;
}

static size_t utf8_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

// Characters (code points) of reasoning + content, or tokens with -t.
static double measure(run *r, record *rec) {
    if (rec->length >= 0) return rec->length;
    if (!r->tok) return rec->length = (double)(utf8_chars(rec->reasoning, rec->rlen) + utf8_chars(rec->content, rec->clen));
    tp_err err;
    r->ids.count = 0;
    if (tp_tokenizer_encode(r->tok, r->tok_state, rec->reasoning, rec->rlen, false, &r->ids, &err) < 0 ||
        tp_tokenizer_encode(r->tok, r->tok_state, rec->content, rec->clen, false, &r->ids, &err) < 0)
        tp_die("%s:%llu: %s", rec->file, (unsigned long long)rec->line_no, err.msg);
    return rec->length = (double)r->ids.count;
}

static bool rule_len(run *r, record *rec, char *detail, size_t n) {
    double len = measure(r, rec);
    const char *unit = r->tok ? "tokens" : "characters";
    if (len < (double)r->o->min_len) return snprintf(detail, n, "%.0f %s < --min-len %lld", len, unit, r->o->min_len), false;
    if (r->o->max_len && len > (double)r->o->max_len)
        return snprintf(detail, n, "%.0f %s > --max-len %lld", len, unit, r->o->max_len), false;
    return true;
}

static void trace_words(run *r, record *rec) {
    if (rec->words_done) return;
    r->words.count = 0;
    tp_words_scan(&r->words, rec->reasoning, rec->rlen, 0);
    tp_words_scan(&r->words, rec->content, rec->clen, (uint32_t)rec->rlen + 1);
    rec->words_done = true;
}

static bool rule_repeat(run *r, record *rec, char *detail, size_t n) {
    trace_words(r, rec);
    double f = tp_repeat_fraction(r->words.hash, r->words.count, r->o->repeat_n, &r->repeat_scratch);
    if (f > r->o->max_repeat)
        return snprintf(detail, n, "%.3f of its %d-grams repeat (> %g)", f, r->o->repeat_n, r->o->max_repeat), false;
    return true;
}

static bool rule_mix(run *r, record *rec, char *detail, size_t n) {
    tp_script_mix m = {0};
    tp_script_mix_add(rec->reasoning, rec->rlen, &m);
    tp_script_mix_add(rec->content, rec->clen, &m);
    tp_script_mix_finish(&m);
    if (m.mix > r->o->max_mix)
        return snprintf(detail, n, "%.3f of %zu letters are not %s (%zu %s) (> %g)", m.mix, m.letters,
                        tp_script_name(m.dominant), m.count[m.second], tp_script_name(m.second), r->o->max_mix), false;
    return true;
}

static bool rule_decontam(run *r, record *rec, char *detail, size_t n) {
    size_t plen = 0;
    const char *p = problem_text(rec->v, &plen);
    if (!p) return bad(r, rec, "no problem text for --decontaminate (\"problem\", \"question\", \"prompt\" or a user message)");
    r->pwords.count = 0;
    tp_words_scan(&r->pwords, p, plen, 0);
    const tp_words *w = &r->pwords;
    int g = r->o->ngram;
    size_t grams = w->count >= (size_t)g ? w->count - (size_t)g + 1 : w->count ? 1 : 0;
    int len = w->count >= (size_t)g ? g : (int)w->count;  // a short problem is compared whole
    for (size_t i = 0; i < grams; i++) {
        uint64_t at;
        if (!tp_u64map_get(&r->bench, tp_ngram_hash(w->hash + i, len), &at)) continue;
        char where[600];
        loc_name(r, r->bench_loc[at - 1], where, sizeof where);
        size_t from = w->start[i], to = w->end[i + (size_t)len - 1];
        char quoted[CLIP_CAP];
        snprintf(detail, n, "%d-gram \"%s\" of %s", len, clip(p + from, to - from, CLIP_MAX, quoted), where);
        return false;
    }
    return true;
}

enum { BARE_MAX = 64 };

// --extract bare: an answer part that is nothing but an answer ("5", "\frac{1}{2}", "x=5"
// after trimming: at most BARE_MAX bytes, no white space, balanced braces) is the answer.
// It is judged as if it were boxed, so that gold is read as for every other answer.
static void judge_bare(record *rec) {
    const char *s = rec->answer;
    size_t n = rec->alen;
    while (n && tp_is_blank(s, 1)) s++, n--;
    while (n && tp_is_blank(s + n - 1, 1)) n--;
    if (!n || n > BARE_MAX) return;
    int depth = 0;
    for (size_t i = 0; i < n && depth >= 0; i++) {
        if (!s[i] || s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\v' || s[i] == '\f') return;
        depth += (s[i] == '{') - (s[i] == '}');
    }
    if (depth) return;
    char boxed[BARE_MAX + 16];
    int len = snprintf(boxed, sizeof boxed, "\\boxed{%.*s}", (int)n, s);
    static const tp_extract_mode box = TP_EXTRACT_BOXED;
    rec->verdict = tp_math_verify(boxed, (size_t)len, rec->gold, rec->glen, &box, 1, rec->pred, sizeof rec->pred);
}

static void judge(run *r, record *rec) {
    if (rec->verdict != -2) return;
    rec->verdict = tp_math_verify(rec->answer, rec->alen, rec->gold, rec->glen, r->o->modes, r->o->n_modes, rec->pred,
                                  sizeof rec->pred);
    if (!rec->pred[0] && r->o->bare) judge_bare(rec);
}

// Reads "answer" into rec->gold: a string, or a number as JSON writes it (AMC's data has
// "answer": 27.0; the math module reads "27.0" as 27).
static bool check_answer_field(run *r, record *rec) {
    if (rec->gold) return true;
    jv a = tp_json_get(rec->v, "answer");
    jv_kind k = jv_get_kind(a);
    if (k == JV_KIND_STRING) {
        rec->gold = jv_string_value(a);
        rec->glen = (size_t)jv_string_length_bytes(a);  // (frees a; the record keeps the string alive)
        return true;
    }
    if (k == JV_KIND_NUMBER) {
        jv d = jv_dump_string(a, 0);
        rec->gold = rec->gold_number = tp_xstrdup(jv_string_value(d));
        rec->glen = strlen(rec->gold);
        jv_free(d);
        return true;
    }
    jv_free(a);
    if (k == JV_KIND_INVALID) return bad(r, rec, "no \"answer\" field to verify against");
    return bad(r, rec, "\"answer\" is a %s, not a string or a number", jv_kind_name(k));
}

static bool rule_verify(run *r, record *rec, char *detail, size_t n) {
    judge(r, rec);
    if (rec->verdict == TP_MATH_EQUAL) return true;
    char pred[CLIP_CAP], gold[CLIP_CAP];
    clip(rec->pred, strlen(rec->pred), CLIP_MAX, pred);
    clip(rec->gold, rec->glen, CLIP_MAX, gold);
    if (!rec->pred[0])
        snprintf(detail, n, "no final answer in %s%s", r->o->field,
                 rec->inline_think && rec->think.closes ? " after </think>" : rec->inline_think && rec->think.opens ? " (the think block is not closed)" : "");
    else if (rec->verdict == TP_MATH_UNKNOWN) snprintf(detail, n, "cannot compare \"%s\" with \"%s\"", pred, gold);
    else snprintf(detail, n, "\"%s\" is not \"%s\"", pred, gold);
    return false;
}

static bool rule_dedup(run *r, record *rec, char *detail, size_t n) {
    const char *p = NULL;
    size_t plen = 0;
    if (r->o->dedup_problem) {
        p = problem_text(rec->v, &plen);
        if (!p) return bad(r, rec, "no problem text for --dedup-on problem");
    }
    uint64_t first = 0;
    char where[600];
    if (!r->o->near) {
        uint64_t h = p ? tp_hash64(p, plen, 1) : tp_hash64(rec->content, rec->clen, tp_hash64(rec->reasoning, rec->rlen, 2));
        if (tp_u64map_add(&r->exact, h, rec->loc, &first)) return true;
        snprintf(detail, n, "the same %s as %s", p ? "problem" : "trace", loc_name(r, first, where, sizeof where));
        return false;
    }
    tp_words *w = &r->words;
    if (p) {
        w = &r->pwords, w->count = 0;
        tp_words_scan(w, p, plen, 0);
    } else {
        trace_words(r, rec);
    }
    uint64_t sig[TP_MINHASH_K];
    tp_minhash_words(w, r->o->shingle, &r->shingles, &r->shingles_cap, sig);
    if (!tp_lsh_query(&r->lsh, sig, true, rec->loc, &first)) return true;
    snprintf(detail, n, "a near-duplicate of %s (%d MinHash rows agree)", loc_name(r, first, where, sizeof where), r->o->rows);
    return false;
}

// ---- groups: --drop-uniform-groups and --keep-per-problem ----

// A key from a string or a number field (a number as JSON writes it), or NULL.
static char *key_of(jv v, const char *field) {
    jv f = tp_json_get(v, field);
    char *key = NULL;
    if (jv_get_kind(f) == JV_KIND_STRING) {
        key = tp_xstrdup(jv_string_value(f));
    } else if (jv_get_kind(f) == JV_KIND_NUMBER) {
        jv d = jv_dump_string(jv_copy(f), 0);
        key = tp_xstrdup(jv_string_value(d));
        jv_free(d);
    }
    jv_free(f);
    return key;
}

// The problem of a record: its "group" (a rollout completion's problem), else its "id",
// else a hash of its problem text.
static uint32_t group_index(run *r, record *rec) {
    char *key = key_of(rec->v, "group");
    if (!key) key = key_of(rec->v, "id");
    if (!key) {
        size_t plen = 0;
        const char *p = problem_text(rec->v, &plen);
        if (!p) {
            bad(r, rec, "no \"group\" or \"id\" and no problem text to group samples by");
            return UINT32_MAX;
        }
        if (asprintf(&key, "h%016llx", (unsigned long long)tp_hash64(p, plen, 3)) < 0) abort();
        if (!r->made_id_said && !tp_cli.quiet) tp_info("records without \"id\" are grouped by a hash of their problem (\"%s\", ...)", key);
        r->made_id_said = true;
    }
    uint64_t h = tp_hash64(key, strlen(key), 4), at = 0;
    if (!tp_u64map_add(&r->group_of, h, r->n_groups + 1, &at)) return free(key), (uint32_t)(at - 1);
    if (r->n_groups == r->cap_groups) {
        r->cap_groups = r->cap_groups ? 2 * r->cap_groups : 1024;
        r->groups = tp_xrealloc(r->groups, r->cap_groups * sizeof *r->groups);
    }
    r->groups[r->n_groups] = (group){.id = key, .uniform = true};
    return (uint32_t)r->n_groups++;
}

// A sample's score for --drop-uniform-groups: its "reward" when it has one, else 1 or 0
// by --verify's judgment. Every sample counts, also those that earlier rules drop:
// the rule is about how hard the problem is for the model that sampled it.
static bool score(run *r, record *rec, group *g) {
    jv rw = tp_json_get(rec->v, "reward");
    double s;
    if (jv_get_kind(rw) == JV_KIND_NUMBER) {
        s = jv_number_value(rw);
    } else {
        if (!check_answer_field(r, rec)) return jv_free(rw), false;
        judge(r, rec);
        s = rec->verdict == TP_MATH_EQUAL;
    }
    jv_free(rw);
    if (g->n && s != g->first_score) g->uniform = false;
    if (!g->n) g->first_score = s;
    g->n++;
    return true;
}

static void hold(run *r, record *rec, uint32_t gi) {
    if (r->n_held == r->cap_held) {
        r->cap_held = r->cap_held ? 2 * r->cap_held : 1024;
        r->held = tp_xrealloc(r->held, r->cap_held * sizeof *r->held);
    }
    held *h = &r->held[r->n_held++];
    *h = (held){.seq = r->seq, .loc = rec->loc, .group = gi, .len = rec->line_len, .rejected = R_COUNT};
    h->length = r->o->on[R_KEEP] && r->o->prefer != PREFER_FIRST ? measure(r, rec) : 0;
    h->line = tp_xmalloc(rec->line_len + 1);
    memcpy(h->line, rec->line, rec->line_len);
    h->line[rec->line_len] = 0;
}

static const char *const prefer_names[] = {"first", "shortest", "longest"};
// The order by_preference sorts a group's records in: 1 shortest first, -1 longest first,
// 0 input order. A file-scope variable because qsort's comparator takes no context
// (C11 has no qsort_r; glibc's and BSD's disagree on its signature).
static int prefer_order;
static int by_preference(const void *pa, const void *pb) {
    const held *a = *(held *const *)pa, *b = *(held *const *)pb;
    if (a->group != b->group) return a->group < b->group ? -1 : 1;
    if (prefer_order && a->length != b->length) return (a->length < b->length) == (prefer_order > 0) ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

// Decides the held records (all of them: one group with --grouped, else the whole input),
// then writes them in input order.
static void decide_groups(run *r) {
    const options *o = r->o;
    char detail[512], id[CLIP_CAP];
    for (size_t i = 0; i < r->n_held; i++) {
        held *h = &r->held[i];
        group *g = &r->groups[h->group];
        if (!o->on[R_UNIFORM] || !g->uniform) continue;
        clip(g->id, strlen(g->id), CLIP_MAX, id);
        if (g->first_score == 1 || g->first_score == 0)
            snprintf(detail, sizeof detail, "all %u samples of \"%s\" are %s", g->n, id, g->first_score ? "correct" : "wrong");
        else snprintf(detail, sizeof detail, "all %u samples of \"%s\" have reward %g", g->n, id, g->first_score);
        h->rejected = R_UNIFORM, h->detail = tp_xstrdup(detail);
    }
    if (o->on[R_KEEP]) {
        held **order = tp_xmalloc((r->n_held + 1) * sizeof *order);
        size_t n = 0;
        for (size_t i = 0; i < r->n_held; i++)
            if (r->held[i].rejected == R_COUNT) order[n++] = &r->held[i];
        prefer_order = o->prefer == PREFER_SHORTEST ? 1 : o->prefer == PREFER_LONGEST ? -1 : 0;
        qsort(order, n, sizeof *order, by_preference);
        for (size_t i = 0, run_start = 0; i < n; i++) {
            if (i && order[i]->group != order[i - 1]->group) run_start = i;
            if ((long long)(i - run_start) < o->keep) continue;
            const char *gid = r->groups[order[i]->group].id;
            snprintf(detail, sizeof detail, "\"%s\" has %lld kept already (--prefer %s)", clip(gid, strlen(gid), CLIP_MAX, id),
                     o->keep, prefer_names[o->prefer]);
            order[i]->rejected = R_KEEP, order[i]->detail = tp_xstrdup(detail);
        }
        free(order);
    }
    tp_err err;
    for (size_t i = 0; i < r->n_held; i++) {
        held *h = &r->held[i];
        if (h->rejected == R_COUNT) {
            if (tp_jsonl_write_text(r->out, h->line, h->len, &err) < 0) tp_die_err(&err);
            r->out_count++;
        } else {
            r->rejected[h->rejected]++;
            if (r->rejects) {
                jv v;
                if (tp_json_parse(h->line, h->len, &v, &err) < 0) tp_die_err(&err);
                write_reject(r, v, rule_names[h->rejected], h->detail);
                jv_free(v);
            }
        }
        free(h->line), free(h->detail);
    }
    r->n_held = 0;
}

// ---- reading ----

typedef bool (*rule_fn)(run *, record *, char *, size_t);
static const rule_fn streaming_rules[R_DEDUP + 1] = {rule_finish, rule_think, rule_where, rule_len, rule_repeat,
                                                     rule_mix, rule_decontam, rule_verify, rule_dedup};

static void filter_record(run *r, record *rec) {
    const options *o = r->o;
    bool grouping = o->on[R_UNIFORM] || o->on[R_KEEP];
    if (!read_fields(r, rec)) return;
    if (o->on[R_VERIFY] && !check_answer_field(r, rec)) return;
    uint32_t gi = UINT32_MAX;
    if (grouping) {
        gi = group_index(r, rec);
        if (gi == UINT32_MAX) return;
        if (o->grouped && r->n_groups > 1 && gi != r->current_group) {
            if (r->groups[gi].finished)
                tp_die("%s:%llu: problem \"%s\" again after other problems (--grouped: a problem's records must be contiguous)",
                       rec->file, (unsigned long long)rec->line_no, r->groups[gi].id);
            r->groups[r->current_group].finished = true;
            decide_groups(r);
        }
        r->current_group = gi;
        if (o->on[R_UNIFORM] && !score(r, rec, &r->groups[gi])) return;
    }
    char detail[768];
    for (int i = 0; i <= R_DEDUP; i++) {
        if (!o->on[i]) continue;
        detail[0] = 0;
        uint64_t bad_before = r->bad;
        if (streaming_rules[i](r, rec, detail, sizeof detail)) continue;
        if (r->bad == bad_before) {
            r->rejected[i]++;
            write_reject(r, rec->v, rule_names[i], detail);
        }
        return;
    }
    if (grouping) {
        hold(r, rec, gi);
        return;
    }
    tp_err err;
    if (tp_jsonl_write_text(r->out, rec->line, rec->line_len, &err) < 0) tp_die_err(&err);
    r->out_count++;
}

static void filter_file(run *r, int file_index) {
    const char *path = r->files[file_index];
    tp_err err;
    tp_jsonl_opts jo = {.skip_bad = r->o->skip_bad};
    tp_jsonl_reader *in = tp_jsonl_open(path, &jo, &err);
    if (!in) tp_die_err(&err);
    jv v;
    int got;
    while ((got = tp_jsonl_next(in, &v, &err)) == 1) {
        record rec = {.v = v, .file = tp_jsonl_name(in), .line_no = tp_jsonl_line(in), .verdict = -2, .length = -1};
        rec.line = tp_jsonl_text(in, &rec.line_len);
        rec.loc = ((uint64_t)file_index << 40) | rec.line_no;
        r->in++, r->seq++;
        r->bytes += rec.line_len + 1;
        filter_record(r, &rec);
        free(rec.gold_number);
        tp_progress_update(&r->progress, r->in);
        jv_free(v);
    }
    if (got < 0) tp_die_err(&err);
    r->bad += tp_jsonl_skipped(in);
    r->in += tp_jsonl_skipped(in);
    tp_jsonl_close(in);
}

// The n-grams of every benchmark problem, once, into a hash set.
static void load_benchmarks(run *r) {
    const options *o = r->o;
    tp_err err;
    for (int f = 0; f < o->n_decontam; f++) {
        tp_jsonl_reader *in = tp_jsonl_open(o->decontam[f], NULL, &err);
        if (!in) tp_die_err(&err);
        jv v;
        int got;
        while ((got = tp_jsonl_next(in, &v, &err)) == 1) {
            size_t plen = 0;
            const char *p = problem_text(v, &plen);
            if (!p)
                tp_die("%s:%llu: no problem text (\"problem\", \"question\", \"prompt\" or a user message)", tp_jsonl_name(in),
                       (unsigned long long)tp_jsonl_line(in));
            r->bench_loc = tp_xrealloc(r->bench_loc, (r->n_bench + 1) * sizeof *r->bench_loc);
            r->bench_loc[r->n_bench++] = ((uint64_t)(r->n_files + f) << 40) | tp_jsonl_line(in);
            r->pwords.count = 0;
            tp_words_scan(&r->pwords, p, plen, 0);
            size_t nw = r->pwords.count, g = (size_t)o->ngram;
            if (nw && nw < g) tp_u64map_add(&r->bench, tp_ngram_hash(r->pwords.hash, (int)nw), r->n_bench, NULL);
            for (size_t i = 0; i + g <= nw; i++)
                tp_u64map_add(&r->bench, tp_ngram_hash(r->pwords.hash + i, (int)g), r->n_bench, NULL);
            jv_free(v);
        }
        if (got < 0) tp_die_err(&err);
        tp_jsonl_close(in);
    }
    if (!tp_cli.quiet)
        tp_info("--decontaminate: %zu benchmark problems, %zu distinct %d-grams", r->n_bench, r->bench.count, o->ngram);
}

// ---- the funnel ----

// How a rule was asked for, for the funnel and --stats.
static void rule_label(const run *r, int rule_id, char *b, size_t n) {
    const options *o = r->o;
    switch (rule_id) {
    case R_FINISH: snprintf(b, n, "--finish %s", o->finish); break;
    case R_WHERE: snprintf(b, n, "--where %s", o->where); break;
    case R_LEN:
        if (!o->max_len) snprintf(b, n, "--min-len %lld%s", o->min_len, r->tok ? " (tokens)" : "");
        else if (!o->min_len) snprintf(b, n, "--max-len %lld%s", o->max_len, r->tok ? " (tokens)" : "");
        else snprintf(b, n, "--min-len %lld --max-len %lld%s", o->min_len, o->max_len, r->tok ? " (tokens)" : "");
        break;
    case R_REPEAT: snprintf(b, n, "--max-repeat %g (%d-grams)", o->max_repeat, o->repeat_n); break;
    case R_MIX: snprintf(b, n, "--max-mix %g", o->max_mix); break;
    case R_DECONTAM:
        if (o->n_decontam == 1) {
            const char *slash = strrchr(o->decontam[0], '/');
            snprintf(b, n, "--decontaminate %s (%d-grams)", slash ? slash + 1 : o->decontam[0], o->ngram);
        }
        else snprintf(b, n, "--decontaminate (%d files, %d-grams)", o->n_decontam, o->ngram);
        break;
    case R_DEDUP:
        if (o->near) snprintf(b, n, "--dedup near (%dx%d bands, %d-word shingles)", o->bands, o->rows, o->shingle);
        else snprintf(b, n, "--dedup exact");
        break;
    case R_UNIFORM: snprintf(b, n, "--drop-uniform-groups"); break;
    case R_KEEP: snprintf(b, n, "--keep-per-problem %lld --prefer %s", o->keep, prefer_names[o->prefer]); break;
    default: snprintf(b, n, "--%s", rule_names[rule_id]);
    }
}

static const char *minus(uint64_t n, char buf[32]) {
    snprintf(buf, 32, "-%llu", (unsigned long long)n);
    return buf;
}

static void report(run *r, double seconds) {
    const options *o = r->o;
    char num[32];
    uint64_t left = r->in - r->bad;
    if (!tp_cli.quiet) {
        fprintf(stderr, "%s: funnel: records kept after each rule, in the order they run\n", tp_program());
        fprintf(stderr, "  %-48s %10llu\n", "in", (unsigned long long)r->in);
        if (r->bad) fprintf(stderr, "  %-48s %10llu  %9s\n", "bad input", (unsigned long long)left, minus(r->bad, num));
        for (int i = 0; i < R_COUNT; i++) {
            if (!o->on[i]) continue;
            left -= r->rejected[i];
            char label[200];
            rule_label(r, i, label, sizeof label);
            fprintf(stderr, "  %-48.48s %10llu  %9s\n", label, (unsigned long long)left, minus(r->rejected[i], num));
        }
        fprintf(stderr, "  %-48s %10llu  (%.1f%%; %.1f MB in %.2f s)\n", "out", (unsigned long long)r->out_count,
                r->in ? 100.0 * (double)r->out_count / (double)r->in : 0.0, (double)r->bytes / 1e6, seconds);
    }
    if (!o->stats) return;
    jv rules = jv_array();
    left = r->in - r->bad;
    for (int i = 0; i < R_COUNT; i++) {
        if (!o->on[i]) continue;
        left -= r->rejected[i];
        jv e = jv_object_set(jv_object(), jv_string("rule"), jv_string(rule_names[i]));
        char label[200];
        rule_label(r, i, label, sizeof label);
        e = jv_object_set(e, jv_string("option"), jv_string(label));
        e = jv_object_set(e, jv_string("rejected"), jv_number((double)r->rejected[i]));
        rules = jv_array_append(rules, jv_object_set(e, jv_string("kept"), jv_number((double)left)));
    }
    jv s = jv_object_set(jv_object(), jv_string("in"), jv_number((double)r->in));
    s = jv_object_set(s, jv_string("bad"), jv_number((double)r->bad));
    s = jv_object_set(s, jv_string("rules"), rules);
    s = jv_object_set(s, jv_string("out"), jv_number((double)r->out_count));
    s = jv_object_set(s, jv_string("bytes_in"), jv_number((double)r->bytes));
    s = jv_object_set(s, jv_string("seconds"), jv_number(seconds));
    tp_err err;
    tp_jsonl_writer *w = tp_jsonl_writer_open(o->stats, false, &err);
    if (!w || tp_jsonl_write(w, s, &err) < 0 || tp_jsonl_writer_close(w, &err) < 0) tp_die_err(&err);
    jv_free(s);
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    options o = {.field = "content", .output = "-", .repeat_n = 10, .ngram = 8, .shingle = 5, .bands = 16, .rows = 8,
                 .keep = 0, .prefer = PREFER_FIRST, .bare = true};
    static const tp_extract_mode strict[] = {TP_EXTRACT_BOXED, TP_EXTRACT_HASHES, TP_EXTRACT_ANSWER_IS,
                                             TP_EXTRACT_ANSWER_COLON};
    memcpy(o.modes, strict, sizeof strict);
    o.n_modes = (int)(sizeof strict / sizeof *strict);
    parse_options(argc, argv, &o);
    double start = tp_now();
    static char *stdin_only[] = {"-"};
    run r = {.o = &o, .files = argc > optind ? argv + optind : stdin_only, .n_files = argc > optind ? argc - optind : 1};
    tp_err err;
    if (o.where && !(r.where = tp_jq_compile(o.where, jv_null(), &err))) tp_die_usage("--where: %s", err.msg);
    if (o.tokenizer) {
        if (!(r.tok = tp_tokenizer_load(o.tokenizer, &err))) tp_die_err(&err);
        r.tok_state = tp_tok_state_new(r.tok);
    }
    if (tp_lsh_init(&r.lsh, o.bands, o.rows) < 0) tp_die_usage("--bands: B*R must be %d", TP_MINHASH_K);
    if (o.on[R_DECONTAM]) load_benchmarks(&r);
    if (!(r.out = tp_jsonl_writer_open(o.output, false, &err))) tp_die_err(&err);
    if (o.rejects && !(r.rejects = tp_jsonl_writer_open(o.rejects, false, &err))) tp_die_err(&err);
    tp_progress_start(&r.progress, "records", 0);
    for (int f = 0; f < r.n_files; f++) filter_file(&r, f);
    tp_progress_finish(&r.progress);
    decide_groups(&r);
    if (tp_jsonl_writer_close(r.out, &err) < 0) tp_die_err(&err);
    if (tp_jsonl_writer_close(r.rejects, &err) < 0) tp_die_err(&err);
    report(&r, tp_now() - start);
    for (size_t i = 0; i < r.n_groups; i++) free(r.groups[i].id);
    free(r.groups), free(r.held), free(r.bench_loc), free(r.shingles);
    tp_u64map_free(&r.exact), tp_u64map_free(&r.bench), tp_u64map_free(&r.group_of), tp_u64map_free(&r.repeat_scratch);
    tp_lsh_free(&r.lsh);
    tp_words_free(&r.words), tp_words_free(&r.pwords);
    tp_ids_free(&r.ids);
    if (r.tok) tp_tok_state_free(r.tok_state), tp_tokenizer_free(r.tok);
    if (r.where) tp_jq_free(r.where);
    return 0;
}
