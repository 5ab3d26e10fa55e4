// cot-fetch — ask an OpenAI-compatible endpoint for reasoning traces, many requests in
// flight, and keep every answer: retries, resume, a failed-requests file, a response
// cache, rate limits and a budget. See cot-fetch(1).
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "error.h"
#include "fetch.h"
#include "fileio.h"
#include "input.h"
#include "json.h"
#include "jsonl.h"
#include "progress.h"

static const char usage[] =
    "Usage: cot-fetch --base-url URL --model NAME [-n N] [-c N] -o OUT.jsonl [OPTIONS] [FILE...]\n"
    "Reasoning traces for problem JSONL ({\"id\",\"problem\"} or {\"messages\"}); trace JSONL appended to OUT.\n"
    "      --base-url URL       e.g. https://api.deepseek.com/v1 (POST URL/chat/completions)\n"
    "      --model NAME         -n N (1) samples a problem   -c N (16) requests in flight\n"
    "      --prompt TEXT ('{problem}\\nPlease reason step by step, ...')  --system TEXT\n"
    "      --temperature X (0.6)  --top-p X (0.95)  --max-tokens N  --seed N  --param KEY=JSON\n"
    "      --no-stream  --timeout S (1800)  --stall-timeout S (120)  --max-retries N (8)\n"
    "      --retry-base S (1)   the first retry's delay (doubled each time, at most 60 s)\n"
    "      --failed FILE        requests that failed for good  --cache DIR  responses by request\n"
    "      --rpm N  --tpm N  --price-in X  --price-out X ($ per 1M tokens)  --budget X ($)\n"
    "      --api-key-env NAME (OPENAI_API_KEY)  --cacert FILE\n"
    "  -o, --output FILE  --progress  -q, --quiet  -h, --help  --version\n"
    "Rerunning the same command completes what is missing. Exit: 0 all fetched, 1 some failed\n"
    "or an error, 2 usage error, 3 stopped by --budget. See cot-fetch(1).\n";

enum { OPT_BASE = 0x100, OPT_MODEL, OPT_PROMPT, OPT_SYSTEM, OPT_TEMP, OPT_TOPP, OPT_MAXTOK, OPT_SEED, OPT_PARAM,
       OPT_NOSTREAM, OPT_TIMEOUT, OPT_STALL, OPT_RETRIES, OPT_FAILED, OPT_CACHE, OPT_RPM, OPT_TPM, OPT_PIN,
       OPT_POUT, OPT_BUDGET, OPT_KEYENV, OPT_CACERT, OPT_RETRY_BASE };

typedef struct options {
    const char *base, *model, *prompt, *system, *output, *failed, *cache, *key_env, *cacert;
    long long n, concurrency, max_tokens, seed, retries;
    bool has_seed, stream;
    double temperature, top_p, timeout, stall, rpm, tpm, price_in, price_out, budget, retry_base;
    jv params;  // --param KEY=JSON
} options;

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"base-url", required_argument, NULL, OPT_BASE}, {"model", required_argument, NULL, OPT_MODEL},
        {"prompt", required_argument, NULL, OPT_PROMPT}, {"system", required_argument, NULL, OPT_SYSTEM},
        {"temperature", required_argument, NULL, OPT_TEMP}, {"top-p", required_argument, NULL, OPT_TOPP},
        {"max-tokens", required_argument, NULL, OPT_MAXTOK}, {"seed", required_argument, NULL, OPT_SEED},
        {"param", required_argument, NULL, OPT_PARAM}, {"no-stream", no_argument, NULL, OPT_NOSTREAM},
        {"timeout", required_argument, NULL, OPT_TIMEOUT}, {"stall-timeout", required_argument, NULL, OPT_STALL},
        {"max-retries", required_argument, NULL, OPT_RETRIES}, {"failed", required_argument, NULL, OPT_FAILED},
        {"cache", required_argument, NULL, OPT_CACHE}, {"rpm", required_argument, NULL, OPT_RPM},
        {"tpm", required_argument, NULL, OPT_TPM}, {"price-in", required_argument, NULL, OPT_PIN},
        {"price-out", required_argument, NULL, OPT_POUT}, {"budget", required_argument, NULL, OPT_BUDGET},
        {"api-key-env", required_argument, NULL, OPT_KEYENV}, {"cacert", required_argument, NULL, OPT_CACERT},
        {"retry-base", required_argument, NULL, OPT_RETRY_BASE},
        {"output", required_argument, NULL, 'o'}, TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "n:c:o:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        switch (c) {
        case OPT_BASE: o->base = optarg; break;
        case OPT_MODEL: o->model = optarg; break;
        case 'n': o->n = tp_cli_int("-n", optarg, 1, 1 << 20); break;
        case 'c': o->concurrency = tp_cli_int("-c", optarg, 1, 65536); break;
        case 'o': o->output = optarg; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case OPT_TEMP: o->temperature = tp_cli_double("--temperature", optarg, 0, 10); break;
        case OPT_TOPP: o->top_p = tp_cli_double("--top-p", optarg, 1e-9, 1); break;
        case OPT_MAXTOK: o->max_tokens = tp_cli_int("--max-tokens", optarg, 1, 1 << 30); break;
        case OPT_SEED: o->seed = tp_cli_int("--seed", optarg, 0, INT64_MAX / 2), o->has_seed = true; break;
        case OPT_PARAM: {
            const char *eq = strchr(optarg, '=');
            jv v;
            tp_err err;
            if (!eq || eq == optarg || tp_json_parse(eq + 1, strlen(eq + 1), &v, &err) < 0)
                tp_die_usage("--param %s: KEY=JSON, e.g. --param 'reasoning_effort=\"high\"'", optarg);
            o->params = jv_object_set(o->params, jv_string_sized(optarg, (int)(eq - optarg)), v);
            break;
        }
        case OPT_NOSTREAM: o->stream = false; break;
        case OPT_TIMEOUT: o->timeout = tp_cli_double("--timeout", optarg, 0, 1e7); break;
        case OPT_STALL: o->stall = tp_cli_double("--stall-timeout", optarg, 0, 1e7); break;
        case OPT_RETRIES: o->retries = tp_cli_int("--max-retries", optarg, 0, 1000); break;
        case OPT_FAILED: o->failed = optarg; break;
        case OPT_CACHE: o->cache = optarg; break;
        case OPT_RPM: o->rpm = tp_cli_double("--rpm", optarg, 0, 1e9); break;
        case OPT_TPM: o->tpm = tp_cli_double("--tpm", optarg, 0, 1e12); break;
        case OPT_PIN: o->price_in = tp_cli_double("--price-in", optarg, 0, 1e6); break;
        case OPT_POUT: o->price_out = tp_cli_double("--price-out", optarg, 0, 1e6); break;
        case OPT_BUDGET: o->budget = tp_cli_double("--budget", optarg, 0, 1e12); break;
        case OPT_KEYENV: o->key_env = optarg; break;
        case OPT_CACERT: o->cacert = optarg; break;
        case OPT_RETRY_BASE: o->retry_base = tp_cli_double("--retry-base", optarg, 0.001, 3600); break;
        default: tp_cli_common(c, usage);
        }
    }
    if (!o->base) tp_die_usage("--base-url URL is required");
    if (!o->model) tp_die_usage("--model NAME is required");
    if (!o->output) tp_die_usage("-o OUT.jsonl is required (it is also what a rerun resumes)");
}

// ---- what is already done: (id, sample) pairs of the output ----

typedef struct pair_set {
    char **keys;  // open addressing, "id\x1fsample"
    size_t cap, count;
} pair_set;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static bool set_add(pair_set *s, char *key) {  // takes key; false when it was there
    if (2 * (s->count + 1) > s->cap) {
        pair_set big = {tp_xcalloc(s->cap ? 2 * s->cap : 1024, sizeof(char *)), s->cap ? 2 * s->cap : 1024, 0};
        for (size_t i = 0; i < s->cap; i++)
            if (s->keys[i]) set_add(&big, s->keys[i]);
        free(s->keys);
        *s = big;
    }
    size_t i = hash_str(key) & (s->cap - 1);
    while (s->keys[i]) {
        if (!strcmp(s->keys[i], key)) return free(key), false;
        i = (i + 1) & (s->cap - 1);
    }
    s->keys[i] = key;
    s->count++;
    return true;
}

static bool set_has(const pair_set *s, const char *key) {
    if (!s->cap) return false;
    for (size_t i = hash_str(key) & (s->cap - 1); s->keys[i]; i = (i + 1) & (s->cap - 1))
        if (!strcmp(s->keys[i], key)) return true;
    return false;
}

static char *pair_key(const char *id, long long sample) {
    char *k;
    if (asprintf(&k, "%s\x1f%lld", id, sample) < 0) abort();
    return k;
}

// The id of a record: its "id" (a string or number), else a stable hash of its content.
static char *record_id(jv rec, bool *made) {
    jv id = tp_json_get(rec, "id");
    char *s = NULL;
    if (jv_get_kind(id) == JV_KIND_STRING) s = tp_xstrdup(jv_string_value(id));
    else if (jv_get_kind(id) == JV_KIND_NUMBER) {
        jv d = jv_dump_string(jv_copy(id), 0);
        s = tp_xstrdup(jv_string_value(d));
        jv_free(d);
    }
    jv_free(id);
    if (s) return s;
    jv text = jv_dump_string(jv_copy(rec), JV_PRINT_SORTED);
    if (asprintf(&s, "h%016llx", (unsigned long long)hash_str(jv_string_value(text))) < 0) abort();
    jv_free(text);
    *made = true;
    return s;
}

// Reads OUT's pairs. A last line cut short (a crash while an earlier version wrote it) is
// cut off so appends start on a line of their own.
static void load_done(const char *path, pair_set *done) {
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        if (errno != ENOENT) tp_die("%s: %s", path, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        char c = 0;
        off_t end = st.st_size;
        if (pread(fd, &c, 1, end - 1) == 1 && c != '\n') {
            off_t at = end - 1;  // back to the last newline
            while (at > 0 && pread(fd, &c, 1, at - 1) == 1 && c != '\n') at--;
            tp_warn("%s: its last line was cut short (%lld bytes); it is dropped and fetched again", path,
                    (long long)(end - at));
            if (ftruncate(fd, at) < 0) tp_die("%s: %s", path, strerror(errno));
        }
    }
    close(fd);
    tp_err err;
    tp_jsonl_reader *in = tp_jsonl_open(path, NULL, &err);
    if (!in) tp_die_err(&err);
    jv rec;
    int got;
    bool made = false;
    while ((got = tp_jsonl_next(in, &rec, &err)) == 1) {
        jv k = tp_json_get(rec, "sample");
        char *id = record_id(rec, &made);
        if (jv_get_kind(k) == JV_KIND_NUMBER) set_add(done, pair_key(id, (long long)jv_number_value(k)));
        free(id);
        jv_free(k), jv_free(rec);
    }
    if (got < 0) tp_die_err(&err);
    tp_jsonl_close(in);
}

// ---- requests ----

typedef struct job {
    tp_fetch_job f;
    jv rec;           // the problem record (with its id)
    long long sample;
    char hash[65];    // sha256 of the canonical request: the cache key and the trace's request.hash
    jv params;        // what was asked, for the trace
} job;

static jv messages_json(const tp_chat *c) {
    jv a = jv_array();
    for (int i = 0; i < c->count; i++) {
        jv m = jv_object_set(jv_object(), jv_string("role"), jv_string(c->messages[i].role));
        a = jv_array_append(a, jv_object_set(m, jv_string("content"), jv_string(c->messages[i].content)));
    }
    return a;
}

static void sha256_hex(const char *s, size_t n, char out[65]) {
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(s, n, md, &len, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

// The request body of sample k, its params (for the trace) and its hash: over model,
// messages and params with sorted keys, plus the sample number when no seed tells the
// samples apart (two samples are two answers, not one cached twice).
static void build(const options *o, job *j, jv messages) {
    jv params = jv_object();
    params = jv_object_set(params, jv_string("temperature"), jv_number(o->temperature));
    params = jv_object_set(params, jv_string("top_p"), jv_number(o->top_p));
    if (o->max_tokens) params = jv_object_set(params, jv_string("max_tokens"), jv_number((double)o->max_tokens));
    if (o->has_seed) params = jv_object_set(params, jv_string("seed"), jv_number((double)(o->seed + j->sample)));
    jv extra = jv_copy(o->params);
    jv_object_foreach(extra, key, value) params = jv_object_set(params, key, value);
    jv_free(extra);
    jv body = jv_object_set(jv_copy(params), jv_string("model"), jv_string(o->model));
    body = jv_object_set(body, jv_string("messages"), jv_copy(messages));
    jv key = jv_object_set(jv_copy(body), jv_string("sample"), o->has_seed ? jv_null() : jv_number((double)j->sample));
    jv key_text = jv_dump_string(key, JV_PRINT_SORTED);
    sha256_hex(jv_string_value(key_text), (size_t)jv_string_length_bytes(jv_copy(key_text)), j->hash);
    jv_free(key_text);
    if (o->stream) {
        body = jv_object_set(body, jv_string("stream"), jv_true());
        body = jv_object_set(body, jv_string("stream_options"),
                             jv_object_set(jv_object(), jv_string("include_usage"), jv_true()));
    }
    jv text = jv_dump_string(body, 0);
    j->f.len = (size_t)jv_string_length_bytes(jv_copy(text));
    j->f.body = tp_xstrdup(jv_string_value(text));
    jv_free(text);
    j->params = params;
}

static void job_free(job *j) {
    tp_fetch_job_clear(&j->f);
    free(j->f.body);
    jv_free(j->rec), jv_free(j->params);
    free(j);
}

// ---- the cache: DIR/ab/<sha256>.json, one answer each, written to a temporary and renamed ----

static char *cache_path(const options *o, const job *j) {
    char *p;
    if (asprintf(&p, "%s/%.2s/%s.json", o->cache, j->hash, j->hash) < 0) abort();
    return p;
}

static bool cache_get(const options *o, job *j) {
    if (!o->cache) return false;
    char *path = cache_path(o, j);
    tp_buf text = {0};
    tp_err err;
    jv v = jv_invalid();
    struct stat st;
    bool hit = stat(path, &st) == 0 && tp_input_read_all(path, &text, &err) == 0 &&
               tp_json_parse(text.data, text.len, &v, &err) == 0 &&
               tp_json_get_string(v, "content") && tp_json_get_string(v, "reasoning");
    if (hit) {
        tp_reply_init(&j->f.reply);
        tp_buf_puts(&j->f.reply.reasoning, tp_json_get_string(v, "reasoning"));
        tp_buf_puts(&j->f.reply.content, tp_json_get_string(v, "content"));
        const char *fin = tp_json_get_string(v, "finish_reason");
        snprintf(j->f.reply.finish, sizeof j->f.reply.finish, "%s", fin ? fin : "");
        jv_free(j->f.reply.usage);
        j->f.reply.usage = tp_json_get(v, "usage");
        jv lat = tp_json_get(v, "latency_ms");
        j->f.latency_ms = jv_get_kind(lat) == JV_KIND_NUMBER ? jv_number_value(lat) : 0;
        jv_free(lat);
        j->f.ok = true;
    }
    jv_free(v);
    tp_buf_free(&text);
    free(path);
    return hit;
}

static jv reply_json(const job *j) {
    const tp_reply *r = &j->f.reply;
    jv o = jv_object();
    o = jv_object_set(o, jv_string("reasoning"), jv_string_sized(r->reasoning.data ? r->reasoning.data : "", (int)r->reasoning.len));
    o = jv_object_set(o, jv_string("content"), jv_string_sized(r->content.data ? r->content.data : "", (int)r->content.len));
    o = jv_object_set(o, jv_string("finish_reason"), r->finish[0] ? jv_string(r->finish) : jv_null());
    return jv_object_set(o, jv_string("usage"), jv_copy(r->usage));
}

static void cache_put(const options *o, const job *j) {
    if (!o->cache) return;
    char *path = cache_path(o, j), *dir;
    if (asprintf(&dir, "%s/%.2s", o->cache, j->hash) < 0) abort();
    mkdir(o->cache, 0755), mkdir(dir, 0755);
    jv v = jv_object_set(reply_json(j), jv_string("latency_ms"), jv_number(j->f.latency_ms));
    tp_buf text = {0};
    tp_json_dump(&text, v);
    tp_err err;
    tp_atomic_file af;
    if (tp_atomic_open(&af, path, &err) < 0) {
        tp_warn("--cache: %s", err.msg);
    } else if (tp_write_all(af.fd, text.data, text.len, path, &err) < 0) {
        tp_atomic_abort(&af);
        tp_warn("--cache: %s", err.msg);
    } else if (tp_atomic_commit(&af, &err) < 0) {
        tp_warn("--cache: %s", err.msg);
    }
    tp_buf_free(&text);
    jv_free(v);
    free(path), free(dir);
}

// ---- the run ----

typedef struct run {
    options *o;
    char *url;
    pair_set done;
    tp_fetch *fetch;
    tp_jsonl_writer *out, *failed;
    char **files;
    int n_files, file_at;
    tp_jsonl_reader *in;
    bool input_done, made_id_said, budget_hit;
    uint64_t wanted, fetched, cached, failures, unsent, skipped;
    double cost, start, last_draw;
    bool progress;
} run;

// The trace of a finished job: the problem's fields, then what cot-fetch adds.
static void write_trace(run *r, job *j) {
    const tp_reply *rp = &j->f.reply;
    jv t = jv_copy(j->rec);
    t = jv_object_set(t, jv_string("sample"), jv_number((double)j->sample));
    t = jv_object_set(t, jv_string("model"), jv_string(r->o->model));
    jv reply = reply_json(j);
    jv_object_foreach(reply, key, value) t = jv_object_set(t, key, value);
    jv_free(reply);
    jv req = jv_object_set(jv_object(), jv_string("hash"), jv_string(j->hash));
    req = jv_object_set(req, jv_string("endpoint"), jv_string(r->url));
    req = jv_object_set(req, jv_string("params"), jv_copy(j->params));
    t = jv_object_set(t, jv_string("request"), req);
    t = jv_object_set(t, jv_string("latency_ms"), jv_number(j->f.latency_ms));
    (void)rp;
    tp_err err;
    if (tp_jsonl_write(r->out, t, &err) < 0) tp_die_err(&err);
    jv_free(t);
}

static void write_failed(run *r, job *j) {
    jv t = jv_copy(j->rec);
    t = jv_object_set(t, jv_string("sample"), jv_number((double)j->sample));
    t = jv_object_set(t, jv_string("model"), jv_string(r->o->model));
    t = jv_object_set(t, jv_string("error"), jv_string(j->f.error));
    t = jv_object_set(t, jv_string("status"), jv_number((double)j->f.status));
    t = jv_object_set(t, jv_string("attempts"), jv_number(j->f.attempts));
    t = jv_object_set(t, jv_string("request"), jv_object_set(jv_object(), jv_string("hash"), jv_string(j->hash)));
    tp_err err;
    if (r->failed && tp_jsonl_write(r->failed, t, &err) < 0) tp_die_err(&err);
    jv_free(t);
}

static void account(run *r, const job *j) {
    jv u = j->f.reply.usage;
    if (jv_get_kind(u) != JV_KIND_OBJECT) return;
    jv p = tp_json_get(u, "prompt_tokens"), c = tp_json_get(u, "completion_tokens");
    double pt = jv_get_kind(p) == JV_KIND_NUMBER ? jv_number_value(p) : 0;
    double ct = jv_get_kind(c) == JV_KIND_NUMBER ? jv_number_value(c) : 0;
    jv_free(p), jv_free(c);
    r->cost += (pt * r->o->price_in + ct * r->o->price_out) / 1e6;
}

// The next problem record of the inputs, or false at their end.
static bool next_record(run *r, jv *rec) {
    tp_err err;
    for (;;) {
        if (!r->in) {
            if (r->file_at >= (r->n_files ? r->n_files : 1)) return false;
            const char *path = r->n_files ? r->files[r->file_at] : "-";
            r->file_at++;
            r->in = tp_jsonl_open(path, NULL, &err);
            if (!r->in) tp_die_err(&err);
        }
        int got = tp_jsonl_next(r->in, rec, &err);
        if (got < 0) tp_die_err(&err);
        if (got == 1) return true;
        tp_jsonl_close(r->in);
        r->in = NULL;
    }
}

// Queues the missing samples of the next problems, enough to keep the engine busy.
static void refill(run *r) {
    const options *o = r->o;
    while (!r->input_done && !r->budget_hit &&
           tp_fetch_pending(r->fetch) + tp_fetch_in_flight(r->fetch) < 2 * o->concurrency + 1) {
        jv rec;
        if (!next_record(r, &rec)) {
            r->input_done = true;
            break;
        }
        bool made = false;
        char *id = record_id(rec, &made);
        if (made) {
            rec = jv_object_set(rec, jv_string("id"), jv_string(id));
            if (!r->made_id_said && !tp_cli.quiet)
                tp_info("records without \"id\" get one from a hash of their content (\"%s\", ...)", id);
            r->made_id_said = true;
        }
        tp_chat chat;
        tp_err err;
        if (tp_chat_from_problem(rec, o->prompt, o->system, &chat, &err) < 0)
            tp_die("%s:%llu: %s", tp_jsonl_name(r->in), (unsigned long long)tp_jsonl_line(r->in), err.msg);
        jv messages = messages_json(&chat);
        tp_chat_free(&chat);
        for (long long k = 0; k < o->n; k++) {
            char *key = pair_key(id, k);
            bool have = set_has(&r->done, key);
            free(key);
            if (have) {
                r->skipped++;
                continue;
            }
            r->wanted++;
            job *j = tp_xcalloc(1, sizeof *j);
            j->rec = jv_copy(rec), j->sample = k;
            j->f.user = j;
            build(o, j, messages);
            if (cache_get(o, j)) {
                r->cached++;
                write_trace(r, j);
                job_free(j);
                continue;
            }
            tp_fetch_add(r->fetch, &j->f);
        }
        jv_free(messages), jv_free(rec);
        free(id);
    }
}

static void draw_progress(run *r, bool last) {
    if (!r->progress) return;
    double now = tp_now();
    if (!last && now - r->last_draw < 0.1) return;
    r->last_draw = now;
    const tp_fetch_stats *s = tp_fetch_stats_of(r->fetch);
    uint64_t done = r->fetched + r->cached + r->failures;
    double secs = now - r->start, tps = secs > 0 ? (double)s->completion_tokens / secs : 0;
    char eta[32] = "";
    if (r->input_done && r->fetched > 0 && done < r->wanted) {
        double left = (double)(r->wanted - done) * secs / (double)(r->fetched + r->failures);
        snprintf(eta, sizeof eta, ", ETA %dm%02ds", (int)(left / 60), (int)left % 60);
    }
    fprintf(stderr, "\rcot-fetch: %llu/%llu%s done, %d in flight, %llu retries, %.0f tok/s, $%.4f%s\033[K%s",
            (unsigned long long)done, (unsigned long long)r->wanted, r->input_done ? "" : "+",
            tp_fetch_in_flight(r->fetch), (unsigned long long)s->retries, tps, r->cost, eta, last ? "\n" : "");
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    options o = {.n = 1, .concurrency = 16, .temperature = 0.6, .top_p = 0.95, .stream = true, .timeout = 1800,
                 .stall = 120, .retries = 8, .retry_base = 1, .key_env = "OPENAI_API_KEY", .params = jv_object()};
    parse_options(argc, argv, &o);
    run r = {.o = &o, .files = argv + optind, .n_files = argc - optind, .start = tp_now()};
    r.progress = !tp_cli.quiet && (tp_cli.progress || isatty(STDERR_FILENO));
    size_t bl = strlen(o.base);
    while (bl > 0 && o.base[bl - 1] == '/') bl--;
    if (asprintf(&r.url, "%.*s/chat/completions", (int)bl, o.base) < 0) abort();
    const char *key = getenv(o.key_env);
    if ((!key || !*key) && !tp_cli.quiet) tp_info("$%s is not set: requests carry no API key", o.key_env);
    tp_fetch_opts fo = {.url = r.url, .api_key = key && *key ? key : NULL, .cacert = o.cacert,
                        .concurrency = (int)o.concurrency, .timeout_s = o.timeout, .stall_s = o.stall,
                        .max_retries = (int)o.retries, .rpm = o.rpm, .tpm = o.tpm, .stream = o.stream,
                        .backoff_s = o.retry_base};
    tp_err err;
    r.fetch = tp_fetch_new(&fo, &err);
    if (!r.fetch) tp_die_err(&err);
    load_done(o.output, &r.done);
    if (r.done.count && !tp_cli.quiet) tp_info("%s has %zu samples already: only the missing ones are fetched", o.output, r.done.count);
    r.out = tp_jsonl_writer_open(o.output, true, &err);
    if (!r.out) tp_die_err(&err);
    if (o.failed && !(r.failed = tp_jsonl_writer_open(o.failed, true, &err))) tp_die_err(&err);
    for (;;) {
        refill(&r);
        tp_fetch_job *fj = tp_fetch_next(r.fetch);
        if (!fj) {
            if (r.input_done || r.budget_hit) break;
            continue;
        }
        job *j = fj->user;
        if (fj->ok) {
            r.fetched++;
            account(&r, j);
            write_trace(&r, j);
            cache_put(&o, j);
        } else if (r.budget_hit && !strcmp(fj->error, "not sent")) {
            r.unsent++;
        } else {
            r.failures++;
            write_failed(&r, j);
            if (!tp_cli.quiet) {
                jv id = tp_json_get(j->rec, "id");
                jv d = jv_dump_string(id, 0);
                tp_warn("%s sample %lld failed: %s", jv_string_value(d), j->sample, fj->error);
                jv_free(d);
            }
        }
        job_free(j);
        if (o.budget > 0 && r.cost >= o.budget && !r.budget_hit) {
            r.budget_hit = true;
            tp_fetch_drain(r.fetch);
            if (!tp_cli.quiet) tp_warn("--budget $%g reached ($%.4f): no new requests; the ones in flight finish", o.budget, r.cost);
        }
        draw_progress(&r, false);
    }
    draw_progress(&r, true);
    if (r.in) tp_jsonl_close(r.in);  // (a budget stops before the input's end)
    if (tp_jsonl_writer_close(r.out, &err) < 0) tp_die_err(&err);
    if (r.failed && tp_jsonl_writer_close(r.failed, &err) < 0) tp_die_err(&err);
    const tp_fetch_stats *s = tp_fetch_stats_of(r.fetch);
    if (!tp_cli.quiet)
        tp_info("%llu fetched, %llu from the cache, %llu already there, %llu failed%s; %llu retries, %llu "
                "connections; %llu + %llu tokens, $%.4f; %.1f s",
                (unsigned long long)r.fetched, (unsigned long long)r.cached, (unsigned long long)r.skipped,
                (unsigned long long)r.failures, r.failures && o.failed ? " (see --failed)" : "",
                (unsigned long long)s->retries, (unsigned long long)s->connections, (unsigned long long)s->prompt_tokens,
                (unsigned long long)s->completion_tokens, r.cost, tp_now() - r.start);
    int status = r.failures ? 1 : r.budget_hit ? 3 : 0;
    tp_fetch_free(r.fetch);
    free(r.url);
    for (size_t i = 0; i < r.done.cap; i++) free(r.done.keys[i]);
    free(r.done.keys);
    jv_free(o.params);
    return status;
}
