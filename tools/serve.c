// serve — an OpenAI-compatible HTTP server for a local model: chat and text completions
// (streamed or not), models, health. Concurrent requests share one batched decode loop
// (libcore/engine.h). HTTP is libmicrohttpd's. See serve(1).
#include <arpa/inet.h>
#include <getopt.h>
#include <microhttpd.h>
#include <omp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "chat.h"
#include "cli.h"
#include "engine.h"
#include "error.h"
#include "json.h"
#include "model.h"
#include "rng.h"
#include "tokenizer.h"

static const char usage[] =
    "Usage: serve -m MODEL [OPTIONS]\n"
    "An OpenAI-compatible server: POST /v1/chat/completions, POST /v1/completions,\n"
    "GET /v1/models, GET /health.\n"
    "  -m, --model DIR|FILE.gguf    the model (tokenizer files beside it)\n"
    "      --host ADDR (127.0.0.1; IPv4 or IPv6)  --port N (8000; 0: any free port, printed)\n"
    "      --api-key-env NAME       require \"Authorization: Bearer $NAME\"\n"
    "      --template NAME (auto)   chatml qwen3 deepseek-r1 llama3 nemo auto\n"
    "      --allow-template-mismatch  stop on the end-of-turn text the tokenizer lacks\n"
    "      --reasoning-parser think  <think> text goes to reasoning_content\n"
    "      --served-model-name NAME (the model path's last part)\n"
    "      --max-batch N (16)  --max-len N (model's, <= 4096)  --max-tokens N (1024)\n"
    "      --device cpu|cuda|auto (auto)  --matmul fp32|tf32|bf16 (cuda: bf16)\n"
    "      --kv-cache fp32|bf16 (fp32)  the cache's precision (bf16: cpu only)\n"
    "  -j, --threads N  -q, --quiet  -h, --help  --version\n"
    "Exit: 0 stopped by SIGINT/SIGTERM, 1 error, 2 usage error. See serve(1).\n";

enum { OPT_HOST = 0x100, OPT_PORT, OPT_KEY, OPT_TEMPLATE, OPT_REASONING, OPT_NAME, OPT_MAX_BATCH, OPT_MAX_LEN,
       OPT_MAX_TOKENS, OPT_DEVICE, OPT_MATMUL, OPT_MISMATCH, OPT_KV_CACHE };

typedef struct options {
    const char *model, *host, *key_env, *template_name, *name, *device, *matmul, *kv_cache;
    long long port, max_batch, max_len, max_tokens, threads;
    bool think, allow_mismatch;
} options;

// ---- the shared state: one lock, the engine loop owns the engine ----

typedef struct job {
    // the request, fixed once queued
    bool chat, stream, include_usage;
    bool logprobs;  // the sampled tokens' log-probs in the answer
    int top;        // and the top most likely tokens at each position
    tp_ids prompt;
    tp_request_opts ro;
    char id[48];
    long created;
    // under the lock
    tp_request *req;  // while running and once done
    int state;        // 0 queued, 1 running, 2 done
    bool abandoned;   // the client went away: the loop frees it
    struct job *next; // the queue of jobs not yet submitted
    // streaming progress (the connection's thread)
    size_t *sent_reason, *sent_content;  // [n] bytes sent of each text
    bool *sent_first, *sent_finish;      // [n]
    tp_buf *text;                        // [n] each sample's text so far, decoded incrementally
    size_t *decoded;                     // [n] tokens decoded into it
    size_t *lp_sent, *lp_bytes;          // [n] tokens whose log-probs were streamed; their text's bytes
    bool sent_done;
    tp_buf body;  // the uploaded request body
} job;

static struct {
    options o;
    tp_model *m;
    tp_tokenizer *tok;
    tp_template tmpl;
    tp_engine *engine;
    char *api_key;
    pthread_mutex_t lock;
    pthread_cond_t work, progress;  // work: a job arrived; progress: a step or a job finished
    job *queue_head, *queue_tail;
    job **running;
    int n_running, cap_running;
    uint64_t requests;
    const char *eot_stop;  // the template's end of turn when the tokenizer spells it in pieces
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER, .progress = PTHREAD_COND_INITIALIZER};

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig, stopping = 1; }

static void job_free(job *j) {
    if (!j) return;
    for (int i = 0; i < j->ro.n_stop; i++) free((char *)j->ro.stop[i]);  // copied from the request
    if (j->req) tp_request_free(j->req);
    tp_ids_free(&j->prompt);
    tp_buf_free(&j->body);
    free(j->sent_reason), free(j->sent_content), free(j->sent_first), free(j->sent_finish);
    for (int k = 0; j->text && k < j->ro.n; k++) tp_buf_free(&j->text[k]);
    free(j->text), free(j->decoded), free(j->lp_sent), free(j->lp_bytes);
    free(j);
}

// The engine loop (main thread): submit queued jobs while slots are free, step, hand back.
static void engine_loop(void) {
    tp_err err;
    pthread_mutex_lock(&S.lock);
    while (!stopping) {
        while (S.queue_head && (S.queue_head->abandoned || tp_engine_can_submit(S.engine))) {
            job *j = S.queue_head;
            S.queue_head = j->next;
            if (!S.queue_head) S.queue_tail = NULL;
            if (j->abandoned) {
                job_free(j);
                continue;
            }
            j->req = tp_engine_submit(S.engine, j->prompt.ids, (int)j->prompt.count, &j->ro, j, &err);
            if (!j->req) tp_die_err(&err);  // prompts are checked against max_len before they queue
            j->state = 1;
            if (S.n_running == S.cap_running)
                S.cap_running = S.cap_running ? 2 * S.cap_running : 16,
                S.running = tp_xrealloc(S.running, (size_t)S.cap_running * sizeof *S.running);
            S.running[S.n_running++] = j;
        }
        if (tp_engine_busy(S.engine)) {
            if (tp_engine_step(S.engine, &err) < 0) tp_die_err(&err);
        }
        // requests whose samples all finished (or were cancelled) leave the engine
        for (int i = 0; i < S.n_running;) {
            job *j = S.running[i];
            if (j->abandoned && j->req && j->req->done < j->req->n) {
                if (!tp_cli.quiet) tp_info("%s: the client went away; its running samples stopped", j->id);
                tp_engine_cancel(S.engine, j->req);
            }
            if (j->req && j->req->done == j->req->n) {
                tp_engine_remove(S.engine, j->req);
                j->state = 2;
                S.running[i] = S.running[--S.n_running];
                if (j->abandoned) job_free(j);
                continue;
            }
            i++;
        }
        pthread_cond_broadcast(&S.progress);
        // Let the connections in between steps (they read tokens and queue jobs under the
        // lock): a short wait when busy, up to 200 ms when idle (to see a signal).
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += tp_engine_busy(S.engine) || S.queue_head ? 200000 : 200000000;
        if (t.tv_nsec >= 1000000000) t.tv_sec++, t.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&S.work, &S.lock, &t);
    }
    pthread_mutex_unlock(&S.lock);
}

// ---- responses ----

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, jv body) {
    jv text = jv_dump_string(body, 0);
    const char *s = jv_string_value(text);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), (void *)s, MHD_RESPMEM_MUST_COPY);
    jv_free(text);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

// OpenAI's error object: {"error": {"message", "type", "param", "code"}}.
static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *type, const char *msg) {
    jv e = jv_object();
    e = jv_object_set(e, jv_string("message"), jv_string(msg));
    e = jv_object_set(e, jv_string("type"), jv_string(type));
    e = jv_object_set(e, jv_string("param"), jv_null());
    e = jv_object_set(e, jv_string("code"), jv_number(status));
    return send_json(c, status, jv_object_set(jv_object(), jv_string("error"), e));
}

// Bytes of s[0..n) that end on a whole UTF-8 character (a decode may stop inside one).
static size_t utf8_whole(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return back + 1 >= need ? n : i - 1;
}

// A sample's text split for --reasoning-parser think (think: true): reasoning between
// "<think>\n" and "\n</think>", content after it (leading newlines dropped). Without the
// parser all of it is content.
// While running, the tail that could still become "</think>" is held back (final: false).
// hold: bytes at the end that could still turn into a stop string (not sent yet).
static void split_text(const char *t, size_t n, bool think, bool final, size_t hold, size_t *r0, size_t *r1,
                       size_t *c0, size_t *c1) {
    if (!final) n = n > hold ? n - hold : 0;
    size_t whole = final ? n : utf8_whole(t, n);
    *r0 = *r1 = 0, *c0 = 0, *c1 = whole;
    if (!think) return;
    const char *end = memmem(t, n, "</think>", 8);
    size_t start = n >= 7 && !memcmp(t, "<think>", 7) ? 7 : 0;
    while (start < n && t[start] == '\n') start++;
    if (end) {
        *r0 = start, *r1 = (size_t)(end - t);
        if (*r1 > *r0 && t[*r1 - 1] == '\n') (*r1)--;  // the template's "\n</think>"
        *c0 = (size_t)(end - t) + 8;
        while (*c0 < whole && t[*c0] == '\n') (*c0)++;
        if (*c0 > whole) *c0 = whole;
    } else {
        size_t hold = final ? 0 : 7;  // "</think" could still be arriving
        *r0 = start, *r1 = whole > hold ? whole - hold : 0;
        if (*r1 < *r0) *r1 = *r0;
        *c0 = *c1 = 0;
    }
}

static jv usage_json(const job *j) {
    long comp = 0;
    for (int k = 0; k < j->req->n; k++) comp += (long)j->req->s[k].tokens.count;
    jv u = jv_object();
    u = jv_object_set(u, jv_string("prompt_tokens"), jv_number((double)j->prompt.count));
    u = jv_object_set(u, jv_string("completion_tokens"), jv_number((double)comp));
    return jv_object_set(u, jv_string("total_tokens"), jv_number((double)(comp + (long)j->prompt.count)));
}

static jv envelope(const job *j, const char *object) {
    jv o = jv_object();
    o = jv_object_set(o, jv_string("id"), jv_string(j->id));
    o = jv_object_set(o, jv_string("object"), jv_string(object));
    o = jv_object_set(o, jv_string("created"), jv_number((double)j->created));
    return jv_object_set(o, jv_string("model"), jv_string(S.o.name));
}

// A token's text and bytes (special tokens as they are written).
static jv token_json(jv o, int32_t id, tp_buf *piece) {
    tp_err err;
    piece->len = 0;
    if (tp_tokenizer_decode(S.tok, &id, 1, false, piece, &err) < 0) piece->len = 0;
    jv bytes = jv_array();
    for (size_t i = 0; i < piece->len; i++) bytes = jv_array_append(bytes, jv_number((unsigned char)piece->data[i]));
    o = jv_object_set(o, jv_string("token"), jv_string_sized(piece->data, (int)piece->len));
    return jv_object_set(o, jv_string("bytes"), bytes);
}

// Log-probs of tokens ids[0..G) (lp, and k alternatives each in top/top_lp) in the chat
// API's shape ({"content": [{token, logprob, bytes, top_logprobs}]}) or the completions
// API's ({tokens, token_logprobs, top_logprobs, text_offset}; offsets from offset0).
static jv logprobs_shape(const job *j, const int32_t *ids, int G, const double *lp, int k, const int32_t *top,
                         const double *top_lp, size_t offset0) {
    tp_buf piece = {0};
    jv content = jv_array(), tokens = jv_array(), token_lp = jv_array(), tops = jv_array(), offsets = jv_array();
    size_t offset = offset0;
    for (int t = 0; t < G; t++) {
        jv e = jv_object_set(token_json(jv_object(), ids[t], &piece), jv_string("logprob"), jv_number(lp[t]));
        tokens = jv_array_append(tokens, jv_string_sized(piece.data, (int)piece.len));
        token_lp = jv_array_append(token_lp, jv_number(lp[t]));
        offsets = jv_array_append(offsets, jv_number((double)offset));
        offset += piece.len;
        jv alt = jv_array(), alt_map = jv_object();
        for (int i = 0; i < k; i++) {
            jv a = token_json(jv_object(), top[(size_t)t * k + i], &piece);
            alt = jv_array_append(alt, jv_object_set(a, jv_string("logprob"), jv_number(top_lp[(size_t)t * k + i])));
            alt_map = jv_object_set(alt_map, jv_string_sized(piece.data, (int)piece.len),
                                    jv_number(top_lp[(size_t)t * k + i]));
        }
        content = jv_array_append(content, jv_object_set(e, jv_string("top_logprobs"), alt));
        tops = jv_array_append(tops, alt_map);
    }
    tp_buf_free(&piece);
    if (j->chat) {
        jv_free(tokens), jv_free(token_lp), jv_free(tops), jv_free(offsets);
        return jv_object_set(jv_object(), jv_string("content"), content);
    }
    jv_free(content);
    jv out = jv_object_set(jv_object(), jv_string("tokens"), tokens);
    out = jv_object_set(out, jv_string("token_logprobs"), token_lp);
    out = jv_object_set(out, jv_string("top_logprobs"), k ? tops : (jv_free(tops), jv_null()));
    return jv_object_set(out, jv_string("text_offset"), offsets);
}

// The sampled tokens' log-probs under the model (temperature 1: vLLM's raw log-probs), by
// the training forward over prompt and completion (under the lock: the engine waits), in
// the chat API's shape ({"content": [{token, logprob, bytes, top_logprobs}]}) or the
// completions API's ({tokens, token_logprobs, top_logprobs, text_offset}).
static jv logprobs_json(const job *j, const tp_sample_out *s) {
    int P = (int)j->prompt.count, G = (int)s->tokens.count, T = P + G, k = j->top;
    if (G == 0) return j->chat ? jv_object_set(jv_object(), jv_string("content"), jv_array()) : jv_null();
    int32_t *ids = tp_xmalloc(sizeof *ids * (size_t)T), *pos = tp_xmalloc(sizeof *pos * (size_t)T);
    int32_t *seg = tp_xcalloc((size_t)T, sizeof *seg), *rows = tp_xmalloc(sizeof *rows * (size_t)G);
    int32_t *top = tp_xmalloc(sizeof *top * (size_t)G * (k ? k : 1));
    double *lp = tp_xmalloc(sizeof *lp * (size_t)G), *top_lp = tp_xmalloc(sizeof *top_lp * (size_t)G * (k ? k : 1));
    memcpy(ids, j->prompt.ids, sizeof *ids * (size_t)P);
    memcpy(ids + P, s->tokens.ids, sizeof *ids * (size_t)G);
    for (int t = 0; t < T; t++) pos[t] = t;
    for (int t = 0; t < G; t++) rows[t] = P - 1 + t;
    tp_batch b = {1, T, ids, pos, seg, NULL};
    tp_err err;
    jv out;
    if (tp_model_logprobs_top(S.m, &b, rows, ids + P, G, 1.0f, lp, k, top, top_lp, &err) < 0) {
        tp_warn("%s: log-probs: %s", j->id, err.msg);
        out = jv_null();
    } else {
        out = logprobs_shape(j, ids + P, G, lp, k, top, top_lp, 0);
    }
    free(ids), free(pos), free(seg), free(rows), free(top), free(lp), free(top_lp);
    return out;
}

// The whole answer of a finished job (under the lock).
static jv final_json(const job *j) {
    jv choices = jv_array();
    tp_buf text = {0};
    tp_err err;
    for (int k = 0; k < j->req->n; k++) {
        const tp_sample_out *s = &j->req->s[k];
        if (tp_engine_text(S.engine, s, &text, &err) < 0) text.len = 0;
        size_t r0, r1, c0, c1;
        split_text(text.data, text.len, S.o.think, true, 0, &r0, &r1, &c0, &c1);
        jv ch = jv_object_set(jv_object(), jv_string("index"), jv_number(k));
        if (j->chat) {
            jv msg = jv_object_set(jv_object(), jv_string("role"), jv_string("assistant"));
            msg = jv_object_set(msg, jv_string("content"), jv_string_sized(text.data + c0, (int)(c1 - c0)));
            if (S.o.think) msg = jv_object_set(msg, jv_string("reasoning_content"), jv_string_sized(text.data + r0, (int)(r1 - r0)));
            ch = jv_object_set(ch, jv_string("message"), msg);
        } else {
            ch = jv_object_set(ch, jv_string("text"), jv_string_sized(text.data, (int)text.len));
        }
        ch = jv_object_set(ch, jv_string("logprobs"), j->logprobs ? logprobs_json(j, s) : jv_null());
        ch = jv_object_set(ch, jv_string("finish_reason"), jv_string(s->finish));
        choices = jv_array_append(choices, ch);
    }
    tp_buf_free(&text);
    jv o = envelope(j, j->chat ? "chat.completion" : "text_completion");
    o = jv_object_set(o, jv_string("choices"), choices);
    return jv_object_set(o, jv_string("usage"), usage_json(j));
}

static bool client_gone(struct MHD_Connection *c);

// ---- streaming: server-sent events ----

static void sse(tp_buf *out, jv chunk) {
    jv text = jv_dump_string(chunk, 0);
    tp_buf_puts(out, "data: ");
    tp_buf_puts(out, jv_string_value(text));
    tp_buf_puts(out, "\n\n");
    jv_free(text);
}

static jv delta_chunk(const job *j, int k, jv delta, const char *finish) {
    jv ch = jv_object_set(jv_object(), jv_string("index"), jv_number(k));
    if (j->chat) ch = jv_object_set(ch, jv_string("delta"), delta);
    else {
        jv t = jv_object_get(jv_copy(delta), jv_string("content"));
        jv_free(delta);
        ch = jv_object_set(ch, jv_string("text"), jv_get_kind(t) == JV_KIND_STRING ? t : (jv_free(t), jv_string("")));
    }
    ch = jv_object_set(ch, jv_string("logprobs"), jv_null());
    ch = jv_object_set(ch, jv_string("finish_reason"), finish ? jv_string(finish) : jv_null());
    jv o = envelope(j, j->chat ? "chat.completion.chunk" : "text_completion");
    return jv_object_set(o, jv_string("choices"), jv_array_append(jv_array(), ch));
}

// The longest stop string of the job, less one: a text ending in that many bytes may yet
// end in a stop string, which is never sent.
static size_t stop_hold(const job *j) {
    size_t hold = S.eot_stop ? strlen(S.eot_stop) : 0;
    for (int i = 0; i < j->ro.n_stop; i++) hold = strlen(j->ro.stop[i]) > hold ? strlen(j->ro.stop[i]) : hold;
    return hold > 0 ? hold - 1 : 0;
}

// What is new since the last call (under the lock): deltas of each sample's texts, a
// finishing chunk when it ended, and [DONE] once all did.
// Sends the chunk held in *last (if any) and holds chunk instead: a sample's newest chunk
// waits until its log-probs are known.
static void hold_chunk(tp_buf *out, jv *last, jv chunk) {
    if (jv_is_valid(*last)) sse(out, *last);
    *last = chunk;
}

// How many of sample k's tokens have all their text sent (sent_end bytes of it), from the
// last count on; all of them once it finished. Keeps lp_bytes in step.
static size_t tokens_sent(job *j, int k, const tp_sample_out *s, bool final, size_t sent_end) {
    size_t t = j->lp_sent[k], at = j->lp_bytes[k];
    tp_buf piece = {0};
    tp_err err;
    for (; t < s->tokens.count; t++) {
        piece.len = 0;
        if (tp_tokenizer_decode(S.tok, s->tokens.ids + t, 1, true, &piece, &err) < 0) piece.len = 0;
        if (!final && at + piece.len > sent_end) break;
        at += piece.len;
    }
    tp_buf_free(&piece);
    j->lp_bytes[k] = at;
    return t;
}

// The log-probs of the tokens sent since the last chunk, on the chunk held in *last (a
// chunk with an empty delta when there is none).
static void attach_logprobs(job *j, int k, const tp_sample_out *s, bool final, size_t sent_end, jv *last) {
    size_t from = j->lp_sent[k], offset = j->lp_bytes[k], upto = tokens_sent(j, k, s, final, sent_end);
    if (upto <= from || !s->logprob) return;
    int kk = j->top;
    jv lps = logprobs_shape(j, s->tokens.ids + from, (int)(upto - from), s->logprob + from, kk,
                            s->top + from * (size_t)kk, s->top_logprob + from * (size_t)kk, offset);
    if (!jv_is_valid(*last)) *last = delta_chunk(j, k, jv_object(), NULL);
    jv choices = jv_object_get(jv_copy(*last), jv_string("choices"));
    jv ch = jv_object_set(jv_array_get(jv_copy(choices), 0), jv_string("logprobs"), lps);
    *last = jv_object_set(*last, jv_string("choices"), jv_array_set(choices, 0, ch));
    j->lp_sent[k] = upto;
}

static void stream_news(job *j, tp_buf *out) {
    tp_err err;
    for (int k = 0; k < j->req->n; k++) {
        const tp_sample_out *s = &j->req->s[k];
        bool final = s->finish != NULL;
        // Only the tokens since the last call are decoded: a long answer costs O(n), not O(n^2).
        if (j->sent_finish[k] || tp_engine_text_append(S.engine, s, j->decoded[k], &j->text[k], &err) < 0) continue;
        j->decoded[k] = s->tokens.count;
        const tp_buf text = j->text[k];
        size_t r0, r1, c0, c1;
        // text completions stream the raw text, as their whole answer is (no reasoning split)
        bool think = S.o.think && j->chat;
        split_text(text.data, text.len, think, final, stop_hold(j), &r0, &r1, &c0, &c1);
        jv last = jv_invalid();
        if (!j->sent_first[k] && j->chat) {
            jv d = jv_object_set(jv_object(), jv_string("role"), jv_string("assistant"));
            hold_chunk(out, &last, delta_chunk(j, k, jv_object_set(d, jv_string("content"), jv_string("")), NULL));
        }
        j->sent_first[k] = true;
        if (r1 > r0 + j->sent_reason[k]) {
            jv d = jv_object_set(jv_object(), jv_string("reasoning_content"),
                                 jv_string_sized(text.data + r0 + j->sent_reason[k], (int)(r1 - r0 - j->sent_reason[k])));
            hold_chunk(out, &last, delta_chunk(j, k, d, NULL));
            j->sent_reason[k] = r1 - r0;
        }
        if (c1 > c0 + j->sent_content[k]) {
            jv d = jv_object_set(jv_object(), jv_string("content"),
                                 jv_string_sized(text.data + c0 + j->sent_content[k], (int)(c1 - c0 - j->sent_content[k])));
            hold_chunk(out, &last, delta_chunk(j, k, d, NULL));
            j->sent_content[k] = c1 - c0;
        }
        if (final) {
            hold_chunk(out, &last, delta_chunk(j, k, jv_object(), s->finish));
            j->sent_finish[k] = true;
        }
        if (j->logprobs) {
            size_t sent_end = j->sent_content[k] > 0 ? c0 + j->sent_content[k] : think ? r0 + j->sent_reason[k] : 0;
            attach_logprobs(j, k, s, final, sent_end, &last);
        }
        if (jv_is_valid(last)) sse(out, last);
    }
    if (j->state == 2 && !j->sent_done) {
        if (j->include_usage) {  // OpenAI's stream_options.include_usage: a last chunk with no choices
            jv o = envelope(j, j->chat ? "chat.completion.chunk" : "text_completion");
            o = jv_object_set(o, jv_string("choices"), jv_array());
            sse(out, jv_object_set(o, jv_string("usage"), usage_json(j)));
        }
        tp_buf_puts(out, "data: [DONE]\n\n");
        j->sent_done = true;
    }
}

typedef struct stream_state {
    job *j;
    struct MHD_Connection *c;
    tp_buf pending;  // bytes composed, not yet handed to MHD
    size_t at;
} stream_state;

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_state *st = cls;
    pthread_mutex_lock(&S.lock);
    while (st->at == st->pending.len) {
        st->pending.len = 0, st->at = 0;
        if (st->j->sent_done) {
            pthread_mutex_unlock(&S.lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (st->j->state >= 1) stream_news(st->j, &st->pending);
        if (st->pending.len > 0) break;
        // The client left (or the server stops): MHD then calls completed(), which hands the
        // job to the loop (abandoned). Not here too: the loop could free it before
        // completed() reads it (a use after free ASan caught).
        if (client_gone(st->c) || stopping) {
            pthread_mutex_unlock(&S.lock);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 50000000;
        if (t.tv_nsec >= 1000000000) t.tv_sec++, t.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&S.progress, &S.lock, &t);
    }
    size_t n = st->pending.len - st->at < max ? st->pending.len - st->at : max;
    memcpy(buf, st->pending.data + st->at, n);
    st->at += n;
    pthread_mutex_unlock(&S.lock);
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream_state *st = cls;
    tp_buf_free(&st->pending);
    free(st);
}

// ---- requests ----

typedef struct conn {
    tp_buf body;
    job *j;
} conn;

// Reads an OpenAI request body into a job; NULL with a message for a 400.
static job *parse_request(const char *body, size_t len, bool chat, char *msg, size_t cap) {
    tp_err err;
    jv req;
    if (tp_json_parse(body, len, &req, &err) < 0) {
        snprintf(msg, cap, "the body is not JSON: %s", err.msg);
        return NULL;
    }
    if (jv_get_kind(req) != JV_KIND_OBJECT) {
        jv_free(req);
        snprintf(msg, cap, "the body must be a JSON object");
        return NULL;
    }
    job *j = tp_xcalloc(1, sizeof *j);
    j->chat = chat;
    tp_tok_state *st = tp_tok_state_new(S.tok);  // per request: connections run in their own threads
    j->ro = (tp_request_opts){.sampler = {.temperature = 1.0, .top_p = 1.0}, .n = 1, .max_new = (int)S.o.max_tokens};
    const char *bad = NULL;
    jv v;
#define NUM(key, lo, hi, dst)                                                                     \
    v = tp_json_get(req, key);                                                                    \
    if (!bad && jv_get_kind(v) == JV_KIND_NUMBER) {                                               \
        double x = jv_number_value(v);                                                            \
        if (x < (lo) || x > (hi)) bad = key " is out of range";                                   \
        else dst;                                                                                 \
    } else if (!bad && jv_get_kind(v) != JV_KIND_INVALID && jv_get_kind(v) != JV_KIND_NULL) {    \
        bad = key " must be a number";                                                           \
    }                                                                                             \
    jv_free(v);
    NUM("n", 1, S.o.max_batch, j->ro.n = (int)x)
    NUM("temperature", 0, 100, j->ro.sampler.temperature = x)
    NUM("top_p", 1e-9, 1, j->ro.sampler.top_p = x)
    NUM("top_k", -1, 1 << 30, j->ro.sampler.top_k = x < 0 ? 0 : (int)x)
    NUM("min_p", 0, 1, j->ro.sampler.min_p = x)
    NUM("max_tokens", 1, 1 << 24, j->ro.max_new = (int)x)
    NUM("max_completion_tokens", 1, 1 << 24, j->ro.max_new = (int)x)
    NUM("seed", -9.2e18, 9.2e18, j->ro.seed = (uint64_t)(int64_t)x)
#undef NUM
    if (j->ro.sampler.temperature == 0) j->ro.sampler.greedy = true;
    v = tp_json_get(req, "seed");
    if (jv_get_kind(v) != JV_KIND_NUMBER) j->ro.seed = tp_splitmix64(&(uint64_t){(uint64_t)time(NULL) ^ S.requests});
    jv_free(v);
    v = tp_json_get(req, "stream");
    if (!bad && jv_get_kind(v) == JV_KIND_TRUE) j->stream = true;
    else if (!bad && jv_get_kind(v) != JV_KIND_FALSE && jv_get_kind(v) != JV_KIND_INVALID && jv_get_kind(v) != JV_KIND_NULL)
        bad = "stream must be a boolean";
    jv_free(v);
    // logprobs: chat's boolean (+ top_logprobs), or the completions API's count.
    v = tp_json_get(req, "logprobs");
    if (!bad && jv_get_kind(v) == JV_KIND_TRUE && chat) j->logprobs = true;
    else if (!bad && jv_get_kind(v) == JV_KIND_NUMBER && !chat) {
        double x = jv_number_value(v);
        if (x < 0 || x > 20 || x != (int)x) bad = "logprobs must be an integer from 0 to 20";
        else j->logprobs = true, j->top = (int)x;
    } else if (!bad && jv_get_kind(v) != JV_KIND_FALSE && jv_get_kind(v) != JV_KIND_INVALID && jv_get_kind(v) != JV_KIND_NULL)
        bad = chat ? "logprobs must be a boolean" : "logprobs must be an integer from 0 to 20";
    jv_free(v);
    v = tp_json_get(req, "top_logprobs");
    if (!bad && chat && jv_get_kind(v) == JV_KIND_NUMBER) {
        double x = jv_number_value(v);
        if (x < 0 || x > 20 || x != (int)x) bad = "top_logprobs must be an integer from 0 to 20";
        else if (!j->logprobs && x > 0) bad = "top_logprobs needs logprobs: true";
        else j->top = (int)x;
    }
    jv_free(v);
    v = tp_json_get(req, "stream_options");
    if (!bad && jv_get_kind(v) == JV_KIND_OBJECT) {
        jv u = jv_object_get(jv_copy(v), jv_string("include_usage"));
        j->include_usage = jv_get_kind(u) == JV_KIND_TRUE;
        jv_free(u);
    }
    jv_free(v);
    v = tp_json_get(req, "ignore_eos");
    if (!bad && jv_get_kind(v) == JV_KIND_TRUE) j->ro.ignore_eos = true;
    jv_free(v);
    v = tp_json_get(req, "stop");
    if (!bad && jv_get_kind(v) == JV_KIND_STRING) {
        if (jv_string_length_bytes(jv_copy(v)) > 0) j->ro.stop[j->ro.n_stop++] = tp_xstrdup(jv_string_value(v));
    } else if (!bad && jv_get_kind(v) == JV_KIND_ARRAY) {
        for (int i = 0; i < jv_array_length(jv_copy(v)) && !bad; i++) {
            jv x = jv_array_get(jv_copy(v), i);
            if (jv_get_kind(x) != JV_KIND_STRING || i >= 16) bad = "stop must be a string or up to 16 strings";
            else if (jv_string_length_bytes(jv_copy(x)) > 0) j->ro.stop[j->ro.n_stop++] = tp_xstrdup(jv_string_value(x));
            jv_free(x);
        }
    } else if (!bad && jv_get_kind(v) != JV_KIND_INVALID && jv_get_kind(v) != JV_KIND_NULL) {
        bad = "stop must be a string or up to 16 strings";
    }
    jv_free(v);
    if (!bad && chat) {
        jv msgs = tp_json_get(req, "messages");
        if (jv_get_kind(msgs) != JV_KIND_ARRAY || jv_array_length(jv_copy(msgs)) == 0) bad = "messages must be a non-empty array";
        jv_free(msgs);
        if (!bad && tp_chat_prompt_ids(S.tok, st, S.tmpl, req, NULL, NULL, &j->prompt, &err) < 0) {
            snprintf(msg, cap, "%s", err.msg);
            bad = msg;
        }
    } else if (!bad) {
        jv p = tp_json_get(req, "prompt");
        if (jv_get_kind(p) != JV_KIND_STRING) bad = "prompt must be a string";
        else if (tp_tokenizer_encode(S.tok, st, jv_string_value(p), (size_t)jv_string_length_bytes(jv_copy(p)), true,
                                     &j->prompt, &err) < 0) {
            snprintf(msg, cap, "%s", err.msg);
            bad = msg;
        }
        jv_free(p);
    }
    int room = S.o.max_len - (int)j->prompt.count;
    if (!bad && (j->prompt.count == 0 || room < 1)) {
        snprintf(msg, cap, "This model's maximum context length is %lld tokens; the prompt has %zu", S.o.max_len,
                 j->prompt.count);
        bad = msg;
    }
    jv_free(req);
    tp_tok_state_free(st);
    if (bad) {
        if (bad != msg) snprintf(msg, cap, "%s", bad);
        job_free(j);
        return NULL;
    }
    if (j->ro.max_new > room) j->ro.max_new = room;
    int n = j->ro.n;
    j->sent_reason = tp_xcalloc((size_t)n, sizeof *j->sent_reason), j->sent_content = tp_xcalloc((size_t)n, sizeof *j->sent_content);
    j->sent_first = tp_xcalloc((size_t)n, sizeof *j->sent_first), j->sent_finish = tp_xcalloc((size_t)n, sizeof *j->sent_finish);
    j->text = tp_xcalloc((size_t)n, sizeof *j->text), j->decoded = tp_xcalloc((size_t)n, sizeof *j->decoded);
    j->lp_sent = tp_xcalloc((size_t)n, sizeof *j->lp_sent), j->lp_bytes = tp_xcalloc((size_t)n, sizeof *j->lp_bytes);
    // A stream's log-probs are the engine's, recorded as tokens are drawn (vLLM's way); a
    // whole answer's come from the training forward afterwards (rollout --score's numbers).
    j->ro.logprobs = j->logprobs && j->stream, j->ro.top_logprobs = j->top;
    j->created = (long)time(NULL);
    return j;
}

// True when the client closed its end (checked while a non-streamed answer is computed).
static bool client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return false;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls, (void)version;
    conn *k = *con_cls;
    if (!k) {
        *con_cls = tp_xcalloc(1, sizeof(conn));
        return MHD_YES;
    }
    if (*upload_size) {
        if (k->body.len + *upload_size > (64u << 20)) return send_error(c, 413, "invalid_request_error", "body too large");
        tp_buf_append(&k->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (S.api_key) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!auth || strncmp(auth, "Bearer ", 7) || strcmp(auth + 7, S.api_key))
            return send_error(c, 401, "authentication_error", "a valid API key is required (Authorization: Bearer ...)");
    }
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (get && !strcmp(url, "/health")) return send_json(c, 200, jv_object_set(jv_object(), jv_string("status"), jv_string("ok")));
    if (get && !strcmp(url, "/v1/models")) {
        jv m = jv_object_set(jv_object(), jv_string("id"), jv_string(S.o.name));
        m = jv_object_set(m, jv_string("object"), jv_string("model"));
        m = jv_object_set(m, jv_string("created"), jv_number(0));
        m = jv_object_set(m, jv_string("owned_by"), jv_string("thinkpipe"));
        m = jv_object_set(m, jv_string("max_model_len"), jv_number((double)S.o.max_len));
        jv list = jv_object_set(jv_object(), jv_string("object"), jv_string("list"));
        return send_json(c, 200, jv_object_set(list, jv_string("data"), jv_array_append(jv_array(), m)));
    }
    bool chat = !strcmp(url, "/v1/chat/completions");
    if (!chat && strcmp(url, "/v1/completions")) return send_error(c, 404, "not_found_error", "no such endpoint");
    if (!post) return send_error(c, 405, "invalid_request_error", "use POST");
    char msg[1200];
    tp_buf_putc(&k->body, 0);
    job *j = parse_request(k->body.data, k->body.len - 1, chat, msg, sizeof msg);
    if (!j) return send_error(c, 400, "invalid_request_error", msg);
    pthread_mutex_lock(&S.lock);
    snprintf(j->id, sizeof j->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)S.requests++);
    if (S.queue_tail) S.queue_tail->next = j;
    else S.queue_head = j;
    S.queue_tail = j;
    k->j = j;
    pthread_cond_signal(&S.work);
    if (j->stream) {
        pthread_mutex_unlock(&S.lock);
        stream_state *st = tp_xcalloc(1, sizeof *st);
        st->j = j, st->c = c;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, st, stream_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result rc = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return rc;
    }
    while (j->state != 2 && !stopping) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 50000000;
        if (t.tv_nsec >= 1000000000) t.tv_sec++, t.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&S.progress, &S.lock, &t);
        if (j->state != 2 && client_gone(c)) break;  // notify_completed abandons it
    }
    if (j->state != 2) {
        pthread_mutex_unlock(&S.lock);
        return MHD_NO;  // the client left, or the server is stopping
    }
    jv answer = final_json(j);
    pthread_mutex_unlock(&S.lock);
    return send_json(c, 200, answer);
}

// The end of a request, answered or not: a job still queued or running is abandoned
// (the engine loop frees it and its slots), a finished one freed here.
static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode code) {
    (void)cls, (void)c, (void)code;
    conn *k = *con_cls;
    if (!k) return;
    pthread_mutex_lock(&S.lock);
    if (k->j) {
        if (k->j->state == 2) {
            job_free(k->j);
        } else {
            k->j->abandoned = true;
        }
    }
    pthread_mutex_unlock(&S.lock);
    tp_buf_free(&k->body);
    free(k);
    *con_cls = NULL;
}

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT}, {"api-key-env", required_argument, NULL, OPT_KEY},
        {"template", required_argument, NULL, OPT_TEMPLATE}, {"reasoning-parser", required_argument, NULL, OPT_REASONING},
        {"served-model-name", required_argument, NULL, OPT_NAME}, {"max-batch", required_argument, NULL, OPT_MAX_BATCH},
        {"max-len", required_argument, NULL, OPT_MAX_LEN}, {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"device", required_argument, NULL, OPT_DEVICE}, {"matmul", required_argument, NULL, OPT_MATMUL},
        {"allow-template-mismatch", no_argument, NULL, OPT_MISMATCH}, {"kv-cache", required_argument, NULL, OPT_KV_CACHE},
        {"threads", required_argument, NULL, 'j'}, TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:j:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_HOST: o->host = optarg; break;
        case OPT_PORT: o->port = tp_cli_int("--port", optarg, 0, 65535); break;
        case OPT_KEY: o->key_env = optarg; break;
        case OPT_TEMPLATE: o->template_name = optarg; break;
        case OPT_REASONING:
            if (strcmp(optarg, "think")) tp_die_usage("--reasoning-parser: think");
            o->think = true;
            break;
        case OPT_NAME: o->name = optarg; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_MISMATCH: o->allow_mismatch = true; break;
        case OPT_MATMUL: o->matmul = tp_cli_choice("--matmul", optarg, "fp32|tf32|bf16"); break;
        case OPT_KV_CACHE: o->kv_cache = tp_cli_choice("--kv-cache", optarg, "fp32|bf16"); break;
        case OPT_MAX_BATCH: o->max_batch = tp_cli_int("--max-batch", optarg, 1, 65536); break;
        case OPT_MAX_LEN: o->max_len = tp_cli_int("--max-len", optarg, 2, 1 << 24); break;
        case OPT_MAX_TOKENS: o->max_tokens = tp_cli_int("--max-tokens", optarg, 1, 1 << 24); break;
        case 'j': o->threads = tp_cli_int("--threads", optarg, 1, 4096); break;
        default: tp_cli_common(c, usage);
        }
    }
    if (optind < argc) tp_die_usage("unexpected argument \"%s\"", argv[optind]);
    if (!o->model) tp_die_usage("-m MODEL is required");
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    S.o = (options){.host = "127.0.0.1", .port = 8000, .template_name = "auto", .max_batch = 16, .max_tokens = 1024};
    parse_options(argc, argv, &S.o);
    if (S.o.threads) omp_set_num_threads((int)S.o.threads);
    tp_err err;
    if (S.o.key_env) {
        const char *k = getenv(S.o.key_env);
        if (!k || !*k) tp_die("--api-key-env %s: the variable is not set", S.o.key_env);
        S.api_key = tp_xstrdup(k);  // never printed
    }
    if (!S.o.name) {
        const char *slash = strrchr(S.o.model, '/');
        S.o.name = slash && slash[1] ? slash + 1 : S.o.model;
    }
    S.m = tp_model_load(S.o.model, &err);
    if (!S.m) tp_die_err(&err);
    char desc[300];
    if (tp_model_place(S.m, S.o.device, S.o.matmul, false, desc, sizeof desc, &err) < 0) tp_die_err(&err);
    if (!tp_cli.quiet) tp_info("device %s", desc);
    S.tok = tp_tokenizer_load(S.o.model, &err);
    if (!S.tok) tp_die("%s: the model's tokenizer: %s", S.o.model, err.msg);
    int tm = tp_template_resolve(S.o.template_name, S.tok, &err);
    if (tm < 0) tp_die("%s (--template NAME picks one)", err.msg);
    S.tmpl = (tp_template)tm;
    if (!S.o.max_len) S.o.max_len = S.m->cfg.max_position_embeddings < 4096 ? S.m->cfg.max_position_embeddings : 4096;
    int32_t eos[16];
    int n_eos = tp_engine_eos(S.m, S.tok, S.tmpl, eos, 16, &S.eot_stop);
    if (S.eot_stop && !S.o.allow_mismatch)
        tp_die("the tokenizer has no %s token: template %s is not this model's (--template auto reads the model's; "
               "--allow-template-mismatch stops on the text instead)", S.eot_stop, tp_template_name(S.tmpl));
    if (S.eot_stop && !tp_cli.quiet)
        tp_warn("the tokenizer has no %s token: template %s may not be this model's (stopping on the text)",
                S.eot_stop, tp_template_name(S.tmpl));
    tp_engine_opts eo = {.max_batch = (int)S.o.max_batch, .max_len = (int)S.o.max_len, .eos = eos, .n_eos = n_eos,
                         .stop = S.eot_stop,
                         .bf16_weights = !tp_model_backend(S.m)->device && S.o.matmul && !strcmp(S.o.matmul, "bf16"),
                         .kv_bf16 = S.o.kv_cache && !strcmp(S.o.kv_cache, "bf16")};
    S.engine = tp_engine_new(S.m, S.tok, &eo, &err);
    if (!S.engine) tp_die_err(&err);  // the cache's own message says what to try
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.o.port)};
    struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)S.o.port)};
    bool v6 = inet_pton(AF_INET6, S.o.host, &addr6.sin6_addr) == 1;
    if (!v6 && inet_pton(AF_INET, S.o.host, &addr.sin_addr) != 1)
        tp_die_usage("--host %s: not an IPv4 or IPv6 address", S.o.host);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                                                MHD_USE_POLL | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0),
                                            0, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR,
                                            v6 ? (struct sockaddr *)&addr6 : (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d) tp_die("cannot listen on %s:%lld (in use, or not allowed)", S.o.host, S.o.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    tp_info("%s (%s, template %s) on http://%s%s%s:%u%s", S.o.name, tp_arch_name(S.m->cfg.arch),
            tp_template_name(S.tmpl), v6 ? "[" : "", S.o.host, v6 ? "]" : "", di ? di->port : (unsigned)S.o.port,
            S.api_key ? ", API key required" : "");
    engine_loop();
    pthread_mutex_lock(&S.lock);
    pthread_cond_broadcast(&S.progress);
    pthread_mutex_unlock(&S.lock);
    MHD_stop_daemon(d);
    // Connections still open at the stop were abandoned by completed() with no loop left
    // to free their jobs: free them here (out of the engine first: it frees what it holds).
    for (int i = 0; i < S.n_running; i++) {
        job *j = S.running[i];
        if (j->req && j->state != 2) tp_engine_cancel(S.engine, j->req), tp_engine_remove(S.engine, j->req);
        job_free(j);
    }
    while (S.queue_head) {
        job *j = S.queue_head;
        S.queue_head = j->next;
        job_free(j);
    }
    tp_engine_free(S.engine);
    tp_tokenizer_free(S.tok);
    tp_model_free(S.m);
    free(S.api_key), free(S.running);
    return 0;
}
