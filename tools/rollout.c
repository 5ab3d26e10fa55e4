// rollout — sample n completions per problem with the model core and a KV cache, or
// (--score) add a model's log-probs to given completions. See rollout(1).
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "chat.h"
#include "cli.h"
#include "error.h"
#include "engine.h"
#include "generate.h"
#include "json.h"
#include "jsonl.h"
#include "model.h"
#include "progress.h"
#include "rng.h"
#include "tokenizer.h"

static const char usage[] =
    "Usage: rollout -m MODEL [-n N] [OPTIONS] [FILE...]\n"
    "Sample completions for problem JSONL ({\"id\",\"problem\"} or {\"messages\"}); completion JSONL out.\n"
    "  -m, --model DIR|FILE.gguf   the policy (tokenizer files beside it)\n"
    "  -n N (1)                    samples per problem (one shared prefill)\n"
    "      --template NAME (auto)  chatml qwen3 deepseek-r1 llama3 nemo auto\n"
    "      --allow-template-mismatch  stop on the end-of-turn text the tokenizer lacks\n"
    "      --system TEXT  --prompt TEXT (\"{problem}\\nPlease reason step by step, ...\")\n"
    "      --temperature X (1.0)  --top-k N (0: off)  --top-p X (1.0)  --min-p X (0)\n"
    "      --greedy  --seed N (42)  --stop STRING (repeatable)\n"
    "      --max-new-tokens N (1024)  --max-len N (prompt + completion; model's, <= 4096)\n"
    "      --max-batch N (max(16, n))  sequences decoded together (samples beyond wait)\n"
    "      --score            add log-probs of given completions (prompt_tokens, tokens)\n"
    "      --field NAME       --score's field (ref_logprobs)\n"
    "      --device cpu|cuda|auto (auto)  --matmul fp32|tf32|bf16 (cuda: bf16)\n"
    "      --kv-cache fp32|bf16 (fp32)  the cache's precision (bf16: cpu only)\n"
    "  -o, --output FILE  -j, --threads N  --progress  -q, --quiet  -h, --help  --version\n"
    "Exit: 0 ok, 1 error, 2 usage error. See rollout(1).\n";

enum { OPT_TEMPLATE = 0x100, OPT_SYSTEM, OPT_PROMPT, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_GREEDY, OPT_SEED,
       OPT_STOP, OPT_MAX_NEW, OPT_MAX_LEN, OPT_MAX_BATCH, OPT_SCORE, OPT_FIELD,
       OPT_DEVICE, OPT_MATMUL, OPT_MISMATCH, OPT_KV_CACHE };

typedef struct options {
    const char *model, *template_name, *system, *prompt, *output, *field, *device, *matmul, *kv_cache;
    const char *stop[16];  // --stop
    int n_stop;
    tp_sampler sampler;
    long long n, seed, max_new, max_len, max_batch, threads;
    bool score, allow_mismatch;
} options;

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"template", required_argument, NULL, OPT_TEMPLATE},
        {"system", required_argument, NULL, OPT_SYSTEM}, {"prompt", required_argument, NULL, OPT_PROMPT},
        {"temperature", required_argument, NULL, OPT_TEMP}, {"top-k", required_argument, NULL, OPT_TOPK},
        {"top-p", required_argument, NULL, OPT_TOPP}, {"min-p", required_argument, NULL, OPT_MINP},
        {"greedy", no_argument, NULL, OPT_GREEDY}, {"seed", required_argument, NULL, OPT_SEED},
        {"stop", required_argument, NULL, OPT_STOP}, {"max-new-tokens", required_argument, NULL, OPT_MAX_NEW},
        {"max-len", required_argument, NULL, OPT_MAX_LEN}, {"max-batch", required_argument, NULL, OPT_MAX_BATCH},
        {"score", no_argument, NULL, OPT_SCORE}, {"field", required_argument, NULL, OPT_FIELD},
        {"device", required_argument, NULL, OPT_DEVICE}, {"matmul", required_argument, NULL, OPT_MATMUL},
        {"allow-template-mismatch", no_argument, NULL, OPT_MISMATCH},
        {"kv-cache", required_argument, NULL, OPT_KV_CACHE},
        {"output", required_argument, NULL, 'o'}, {"threads", required_argument, NULL, 'j'},
        TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:n:o:j:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'n': o->n = tp_cli_int("-n", optarg, 1, 4096); break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_MISMATCH: o->allow_mismatch = true; break;
        case OPT_MATMUL: o->matmul = tp_cli_choice("--matmul", optarg, "fp32|tf32|bf16"); break;
        case OPT_KV_CACHE: o->kv_cache = tp_cli_choice("--kv-cache", optarg, "fp32|bf16"); break;
        case OPT_TEMPLATE: o->template_name = optarg; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_TEMP: o->sampler.temperature = tp_cli_double("--temperature", optarg, 0, 100); break;
        case OPT_TOPK: o->sampler.top_k = (int)tp_cli_int("--top-k", optarg, 0, 1 << 30); break;
        case OPT_TOPP: o->sampler.top_p = tp_cli_double("--top-p", optarg, 1e-9, 1); break;
        case OPT_MINP: o->sampler.min_p = tp_cli_double("--min-p", optarg, 0, 1); break;
        case OPT_GREEDY: o->sampler.greedy = true; break;
        case OPT_SEED: o->seed = tp_cli_int("--seed", optarg, 0, INT64_MAX); break;
        case OPT_STOP:
            if (o->n_stop == 16) tp_die_usage("at most 16 --stop strings");
            if (!*optarg) tp_die_usage("--stop: an empty string");
            o->stop[o->n_stop++] = optarg;
            break;
        case OPT_MAX_NEW: o->max_new = tp_cli_int("--max-new-tokens", optarg, 1, 1 << 24); break;
        case OPT_MAX_LEN: o->max_len = tp_cli_int("--max-len", optarg, 2, 1 << 24); break;
        case OPT_MAX_BATCH: o->max_batch = tp_cli_int("--max-batch", optarg, 1, 65536); break;
        case OPT_SCORE: o->score = true; break;
        case OPT_FIELD: o->field = optarg; break;
        case 'o': o->output = optarg; break;
        case 'j': o->threads = tp_cli_int("--threads", optarg, 1, 4096); break;
        default: tp_cli_common(c, usage);
        }
    }
    if (!o->model) tp_die_usage("-m MODEL is required");
    if (o->sampler.temperature == 0) o->sampler.greedy = true;
    if (!o->max_batch) o->max_batch = o->n > 16 ? o->n : 16;
}

// ---- state ----

typedef struct problem {
    jv rec;
    char *id;
} problem;

typedef struct rollout {
    options *o;
    tp_model *m;
    tp_tokenizer *tok;
    tp_tok_state *tst;
    tp_template tmpl;
    tp_engine_opts eo;
    tp_request_opts ro;
    tp_engine *engine;
    int32_t eos[16];  // token ids that end a sample
    int n_eos;
    tp_jsonl_writer *out;
    uint64_t groups, samples, tokens;
    int V;
} rollout;

// What ends a sample; a template whose end of turn the tokenizer lacks is probably not this
// model's: said, and its text becomes a stop string.
static void find_eos(rollout *r) {
    const char *stop;
    r->n_eos = tp_engine_eos(r->m, r->tok, r->tmpl, r->eos, (int)(sizeof r->eos / sizeof *r->eos), &stop);
    if (stop && !r->o->allow_mismatch)
        tp_die("the tokenizer has no %s token: template %s is not this model's (--template auto reads the model's; "
               "--allow-template-mismatch stops on the text instead)", stop, tp_template_name(r->tmpl));
    if (stop && !tp_cli.quiet)
        tp_warn("the tokenizer has no %s token: template %s may not be this model's (stopping on the text)", stop,
                tp_template_name(r->tmpl));
    r->eo.stop = stop;
}

static char *group_id(jv rec, uint64_t line) {
    jv id = jv_object_get(jv_copy(rec), jv_string("id"));
    char *s;
    if (jv_get_kind(id) == JV_KIND_STRING) s = tp_xstrdup(jv_string_value(id));
    else if (jv_get_kind(id) == JV_KIND_NUMBER) {
        jv d = jv_dump_string(jv_copy(id), 0);
        s = tp_xstrdup(jv_string_value(d));
        jv_free(d);
    } else if (asprintf(&s, "line-%llu", (unsigned long long)line) < 0) abort();
    jv_free(id);
    return s;
}

// A problem's prompt: chat, template, generation prompt, token ids.
static void encode_prompt(rollout *r, jv rec, const char *where, uint64_t line, tp_ids *ids) {
    tp_err err;
    if (tp_chat_prompt_ids(r->tok, r->tst, r->tmpl, rec, r->o->prompt, r->o->system, ids, &err) < 0)
        tp_die("%s:%llu: %s", where, (unsigned long long)line, err.msg);
}

// ---- output ----

static jv ids_json(const int32_t *ids, size_t n) {
    jv a = jv_array_sized((int)n);
    for (size_t i = 0; i < n; i++) a = jv_array_append(a, jv_number(ids[i]));
    return a;
}

// The policy's log-probs of tokens after prompt, by the training forward over the one
// sequence alone (what grpo-step computes), at temperature temp.
static jv score(tp_model *m, const int32_t *prompt, int P, const int32_t *tokens, int G, float temp) {
    int T = P + G;
    int32_t *ids = tp_xmalloc((size_t)T * sizeof *ids), *pos = tp_xmalloc((size_t)T * sizeof *pos);
    int32_t *seg = tp_xcalloc((size_t)T, sizeof *seg), *rows = tp_xmalloc((size_t)(G ? G : 1) * sizeof *rows);
    memcpy(ids, prompt, (size_t)P * sizeof *ids);
    memcpy(ids + P, tokens, (size_t)G * sizeof *ids);
    for (int t = 0; t < T; t++) pos[t] = t;
    for (int t = 0; t < G; t++) rows[t] = P - 1 + t;
    double *lp = tp_xmalloc((size_t)(G ? G : 1) * sizeof *lp);
    tp_batch b = {1, T, ids, pos, seg, NULL};
    tp_err err;
    if (G > 0 && tp_model_logprobs(m, &b, rows, tokens, G, temp, lp, &err) < 0) tp_die_err(&err);
    jv a = jv_array_sized(G);
    for (int t = 0; t < G; t++) a = jv_array_append(a, jv_number(lp[t]));
    free(ids), free(pos), free(seg), free(rows), free(lp);
    return a;
}

static float score_temperature(const options *o) { return o->sampler.greedy ? 1.0f : (float)o->sampler.temperature; }

static void emit(rollout *r, tp_request *q) {
    problem *p = q->user;
    tp_err err;
    tp_buf text = {0};
    for (int k = 0; k < q->n; k++) {
        tp_sample_out *s = &q->s[k];
        if (tp_engine_text(r->engine, s, &text, &err) < 0) tp_die_err(&err);
        char *sid;
        if (asprintf(&sid, "%s/%d", p->id, k) < 0) abort();
        jv line = jv_copy(p->rec);
        line = jv_object_set(line, jv_string("id"), jv_string(sid));
        line = jv_object_set(line, jv_string("group"), jv_string(p->id));
        line = jv_object_set(line, jv_string("sample"), jv_number(k));
        line = jv_object_set(line, jv_string("prompt_tokens"), ids_json(q->prompt.ids, q->prompt.count));
        line = jv_object_set(line, jv_string("tokens"), ids_json(s->tokens.ids, s->tokens.count));
        line = jv_object_set(line, jv_string("logprobs"), score(r->m, q->prompt.ids, (int)q->prompt.count, s->tokens.ids,
                                                                   (int)s->tokens.count, score_temperature(r->o)));
        line = jv_object_set(line, jv_string("text"), jv_string_sized(text.data, (int)text.len));
        line = jv_object_set(line, jv_string("finish_reason"), jv_string(s->finish));
        if (tp_jsonl_write(r->out, line, &err) < 0) tp_die_err(&err);
        jv_free(line);
        free(sid);
        r->samples++;
    }
    tp_buf_free(&text);
    jv_free(p->rec);
    free(p->id), free(p);
    tp_request_free(q);
}

// Problems leave in input order, each once all its samples finished.
static void emit_ready(rollout *r) {
    for (tp_request *q; (q = tp_engine_next_done(r->engine));) emit(r, q);
}

static void step(rollout *r) {
    tp_err err;
    int n = tp_engine_step(r->engine, &err);
    if (n < 0) tp_die_err(&err);
    r->tokens += (uint64_t)n;
    emit_ready(r);
}

static void run_generate(rollout *r, char **files, int nfiles) {
    tp_err err;
    tp_progress progress;
    tp_progress_start(&progress, "problems", 0);
    for (int f = 0; f < (nfiles ? nfiles : 1); f++) {
        const char *path = nfiles ? files[f] : "-";
        tp_jsonl_reader *in = tp_jsonl_open(path, NULL, &err);
        if (!in) tp_die_err(&err);
        for (;;) {
            while (!tp_engine_can_submit(r->engine)) step(r);
            jv rec;
            int got = tp_jsonl_next(in, &rec, &err);
            if (got < 0) tp_die_err(&err);
            if (got == 0) break;
            uint64_t line = tp_jsonl_line(in);
            if (jv_get_kind(rec) != JV_KIND_OBJECT) tp_die("%s:%llu: a problem must be a JSON object", path, (unsigned long long)line);
            problem *p = tp_xcalloc(1, sizeof *p);
            p->rec = rec, p->id = group_id(rec, line);
            tp_ids ids = {0};
            encode_prompt(r, rec, path, line, &ids);
            // each problem its own streams: (seed, problem number)
            tp_request_opts ro = r->ro;
            ro.seed = tp_splitmix64_skip(r->ro.seed * 0x9E3779B97F4A7C15ull, r->groups + 1);
            if (!tp_engine_submit(r->engine, ids.ids, (int)ids.count, &ro, p, &err))
                tp_die("%s:%llu: %s", path, (unsigned long long)line, err.msg);
            tp_ids_free(&ids);
            r->groups++;
            emit_ready(r);
            tp_progress_update(&progress, r->groups);
        }
        tp_jsonl_close(in);
    }
    while (tp_engine_busy(r->engine)) step(r);
    tp_progress_finish(&progress);
}

static const int32_t *int_array(jv a, const char *name, const char *where, uint64_t line, int *n, int V) {
    if (jv_get_kind(a) != JV_KIND_ARRAY) tp_die("%s:%llu: \"%s\" must be an array of token ids", where, (unsigned long long)line, name);
    *n = jv_array_length(jv_copy(a));
    int32_t *ids = tp_xmalloc((size_t)(*n ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) {
        jv x = jv_array_get(jv_copy(a), i);
        double v = jv_get_kind(x) == JV_KIND_NUMBER ? jv_number_value(x) : -1;
        jv_free(x);
        if (v < 0 || v >= V || v != (int32_t)v)
            tp_die("%s:%llu: \"%s\"[%d] is not a token id of this model (vocabulary %d)", where, (unsigned long long)line, name, i, V);
        ids[i] = (int32_t)v;
    }
    return ids;
}

static void run_score(rollout *r, char **files, int nfiles) {
    tp_err err;
    const char *field = r->o->field ? r->o->field : "ref_logprobs";
    for (int f = 0; f < (nfiles ? nfiles : 1); f++) {
        const char *path = nfiles ? files[f] : "-";
        tp_jsonl_reader *in = tp_jsonl_open(path, NULL, &err);
        if (!in) tp_die_err(&err);
        jv rec;
        int got;
        while ((got = tp_jsonl_next(in, &rec, &err)) == 1) {
            uint64_t line = tp_jsonl_line(in);
            int P, G;
            jv jp = jv_object_get(jv_copy(rec), jv_string("prompt_tokens")), jt = jv_object_get(jv_copy(rec), jv_string("tokens"));
            const int32_t *p = int_array(jp, "prompt_tokens", path, line, &P, r->V);
            const int32_t *t = int_array(jt, "tokens", path, line, &G, r->V);
            if (P < 1) tp_die("%s:%llu: \"prompt_tokens\" is empty", path, (unsigned long long)line);
            rec = jv_object_set(rec, jv_string(field), score(r->m, p, P, t, G, score_temperature(r->o)));
            if (tp_jsonl_write(r->out, rec, &err) < 0) tp_die_err(&err);
            jv_free(rec), jv_free(jp), jv_free(jt);
            free((void *)p), free((void *)t);
            r->samples++;
        }
        if (got < 0) tp_die_err(&err);
        tp_jsonl_close(in);
    }
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    options o = {.n = 1, .seed = 42, .max_new = 1024, .template_name = "auto",
                 .sampler = {.temperature = 1.0, .top_p = 1.0}};
    parse_options(argc, argv, &o);
    if (o.threads) omp_set_num_threads((int)o.threads);
    tp_err err;
    rollout r = {.o = &o};
    double start = tp_now();
    r.m = tp_model_load(o.model, &err);
    if (!r.m) tp_die_err(&err);
    r.V = r.m->cfg.vocab_size;
    char desc[300];
    if (tp_model_place(r.m, o.device, o.matmul, false, desc, sizeof desc, &err) < 0) tp_die_err(&err);
    if (!tp_cli.quiet) tp_info("device %s", desc);
    r.out = o.output ? tp_jsonl_writer_open(o.output, false, &err) : tp_jsonl_writer_fd(STDOUT_FILENO, "<stdout>");
    if (!r.out) tp_die_err(&err);
    if (o.score) {
        run_score(&r, argv + optind, argc - optind);
    } else {
        r.tok = tp_tokenizer_load(o.model, &err);
        if (!r.tok) tp_die("%s: the model's tokenizer: %s", o.model, err.msg);
        int tm = tp_template_resolve(o.template_name, r.tok, &err);
        if (tm < 0) tp_die("%s (--template NAME picks one)", err.msg);
        r.tmpl = (tp_template)tm;
        r.tst = tp_tok_state_new(r.tok);
        int model_len = r.m->cfg.max_position_embeddings < 4096 ? r.m->cfg.max_position_embeddings : 4096;
        r.eo = (tp_engine_opts){.max_batch = (int)o.max_batch, .max_len = (int)(o.max_len ? o.max_len : model_len)};
        // --matmul bf16 on the cpu: decode steps read bf16 copies of the weights
        r.eo.bf16_weights = !tp_model_backend(r.m)->device && o.matmul && !strcmp(o.matmul, "bf16");
        r.eo.greedy = o.sampler.greedy;
        r.eo.kv_bf16 = o.kv_cache && !strcmp(o.kv_cache, "bf16");
        r.ro = (tp_request_opts){.sampler = o.sampler, .n = (int)o.n, .max_new = (int)o.max_new, .seed = (uint64_t)o.seed};
        for (int i = 0; i < o.n_stop; i++) r.ro.stop[r.ro.n_stop++] = o.stop[i];
        find_eos(&r);
        r.eo.eos = r.eos, r.eo.n_eos = r.n_eos;
        r.engine = tp_engine_new(r.m, r.tok, &r.eo, &err);
        if (!r.engine) tp_die_err(&err);  // the cache's own message says what to try
        if (!tp_cli.quiet) {
            double per_token = (double)tp_engine_kv_bytes_per_token(r.engine);
            tp_info("%s, template %s, %lld sequences x %d tokens of %s KV cache (%.1f KiB a token, %.2f GiB)",
                    tp_arch_name(r.m->cfg.arch), tp_template_name(r.tmpl), o.max_batch, r.eo.max_len,
                    r.eo.kv_bf16 ? "bf16" : "fp32", per_token / 1024, per_token * (double)o.max_batch * r.eo.max_len / (1 << 30));
        }
        run_generate(&r, argv + optind, argc - optind);
    }
    if (tp_jsonl_writer_close(r.out, &err) < 0) tp_die_err(&err);
    double secs = tp_now() - start;
    if (!tp_cli.quiet) {
        if (o.score) tp_info("%llu completions scored, %.2f s", (unsigned long long)r.samples, secs);
        else
            tp_info("%llu problems, %llu samples, %llu decode tokens, %.2f s (%.1f tokens/s)", (unsigned long long)r.groups,
                    (unsigned long long)r.samples, (unsigned long long)r.tokens, secs, secs > 0 ? r.tokens / secs : 0);
    }
    tp_engine_free(r.engine);
    tp_tok_state_free(r.tst);
    tp_tokenizer_free(r.tok);
    tp_model_free(r.m);
    return 0;
}
