// fetch.c — the request engine of fetch.h on libcurl's multi interface.
#include "fetch.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "progress.h"
#include "sse.h"

enum { MAX_SSE_LINE = 16 << 20 };  // a streamed event line longer than this is broken

struct tp_fetch {
    tp_fetch_opts o;
    CURLM *multi;
    struct curl_slist *headers;
    tp_fetch_job *queue, *queue_tail;  // not yet started (FIFO)
    tp_fetch_job *waiting;             // failed attempts waiting for their retry time
    tp_fetch_job *done, *done_tail;    // finished, not yet handed back
    int in_flight;
    bool draining;
    tp_fetch_stats stats;
    // Token buckets refilled continuously (rate/60 a second, at most one second's worth):
    // a request starts when its bucket is positive. Requests take 1 when they start;
    // tokens are taken when an answer's usage arrives (the bucket may go below zero).
    double bucket, bucket_t;          // requests
    double tok_bucket, tok_bucket_t;  // tokens
    uint64_t jitter;    // splitmix state for the backoff jitter
};

static bool curl_ready;

tp_fetch *tp_fetch_new(const tp_fetch_opts *o, tp_err *err) {
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            tp_err_set(err, "libcurl could not be initialised");
            return NULL;
        }
        curl_ready = true;
    }
    tp_fetch *f = tp_xcalloc(1, sizeof *f);
    f->o = *o;
    if (f->o.concurrency < 1) f->o.concurrency = 1;
    if (f->o.backoff_s <= 0) f->o.backoff_s = 1;
    f->multi = curl_multi_init();
    curl_multi_setopt(f->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(f->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)f->o.concurrency);
    f->headers = curl_slist_append(NULL, "Content-Type: application/json");
    f->headers = curl_slist_append(f->headers, o->stream ? "Accept: text/event-stream" : "Accept: application/json");
    if (o->api_key && *o->api_key) {
        char *h = NULL;
        if (asprintf(&h, "Authorization: Bearer %s", o->api_key) < 0) abort();
        f->headers = curl_slist_append(f->headers, h);
        memset(h, 0, strlen(h));  // the key lives on in curl's list only
        free(h);
    }
    f->bucket = f->o.rpm > 0 ? (f->o.rpm < 1 ? 1 : f->o.rpm / 60 + 1) : 0;
    f->tok_bucket = f->o.tpm / 60;
    f->bucket_t = f->tok_bucket_t = tp_now();
    f->jitter = (uint64_t)(tp_now() * 1e9);
    return f;
}

void tp_fetch_free(tp_fetch *f) {
    if (!f) return;
    curl_multi_cleanup(f->multi);
    curl_slist_free_all(f->headers);
    free(f);
}

void tp_fetch_job_clear(tp_fetch_job *j) {
    tp_reply_free(&j->reply);
    tp_buf_free(&j->raw);
    if (j->sse) tp_sse_free(j->sse), free(j->sse), j->sse = NULL;
}

static void push(tp_fetch_job **head, tp_fetch_job **tail, tp_fetch_job *j) {
    j->next = NULL;
    if (*tail) (*tail)->next = j;
    else *head = j;
    *tail = j;
}

void tp_fetch_add(tp_fetch *f, tp_fetch_job *j) {
    j->ok = false, j->status = 0, j->attempts = 0, j->error[0] = 0, j->not_before = 0;
    tp_reply_init(&j->reply);
    push(&f->queue, &f->queue_tail, j);
}

int tp_fetch_in_flight(const tp_fetch *f) { return f->in_flight; }
const tp_fetch_stats *tp_fetch_stats_of(const tp_fetch *f) { return &f->stats; }

int tp_fetch_pending(const tp_fetch *f) {
    int n = 0;
    for (tp_fetch_job *j = f->queue; j; j = j->next) n++;
    for (tp_fetch_job *j = f->waiting; j; j = j->next) n++;
    return n;
}

// ---- one attempt ----

static int on_event(void *ctx, const char *data, size_t len) {
    tp_fetch_job *j = ctx;
    tp_err err;
    if (tp_reply_chunk(&j->reply, data, len, &err) < 0) {
        snprintf(j->sse_error, sizeof j->sse_error, "a malformed stream event: %.160s", err.msg);
        return 1;  // stop reading: the attempt failed
    }
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ctx) {
    tp_fetch_job *j = ctx;
    size_t bytes = size * n;
    long status = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    if (j->sse && status == 200) {
        if (tp_sse_feed(j->sse, p, bytes, MAX_SSE_LINE, on_event, j) != 0) {
            if (!j->sse_error[0]) snprintf(j->sse_error, sizeof j->sse_error, "a stream line longer than 16 MiB");
            return 0;  // curl ends the transfer with a write error
        }
        return bytes;
    }
    if (j->raw.len + bytes > (size_t)64 << 20) return 0;  // no answer is this long
    tp_buf_append(&j->raw, p, bytes);
    return bytes;
}

// Retry-After: delay-seconds (an HTTP date is taken as 1 s: servers rarely send one).
static size_t on_header(char *p, size_t size, size_t n, void *ctx) {
    tp_fetch_job *j = ctx;
    size_t bytes = size * n;
    if (bytes > 12 && !strncasecmp(p, "retry-after:", 12)) {
        char v[64];
        size_t k = bytes - 12 < sizeof v - 1 ? bytes - 12 : sizeof v - 1;
        memcpy(v, p + 12, k);
        v[k] = 0;
        char *end;
        double s = strtod(v, &end);
        j->retry_after = end != v && s >= 0 ? s : 1;
    }
    return bytes;
}

static void start(tp_fetch *f, tp_fetch_job *j) {
    CURL *e = curl_easy_init();
    j->easy = e;
    j->attempts++;
    j->retry_after = -1;
    j->sse_error[0] = 0;
    j->raw.len = 0;
    tp_reply_free(&j->reply);
    tp_reply_init(&j->reply);
    if (f->o.stream) {
        if (j->sse) tp_sse_free(j->sse);
        else j->sse = tp_xcalloc(1, sizeof *j->sse);
    }
    curl_easy_setopt(e, CURLOPT_URL, f->o.url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);  // h2 over TLS, 1.1 in clear
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    if (f->o.cacert) curl_easy_setopt(e, CURLOPT_CAINFO, f->o.cacert);
    if (f->o.timeout_s > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(f->o.timeout_s * 1000));
    if (f->o.stall_s > 0) {  // fewer than 1 byte/s for stall_s: stalled
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)ceil(f->o.stall_s));
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(f->o.stall_s * 1000));
    }
    j->started = tp_now();
    curl_multi_add_handle(f->multi, e);
    f->in_flight++;
    f->stats.started++;
}

static double jitter(tp_fetch *f) {  // uniform in [0.5, 1.5)
    uint64_t z = (f->jitter += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return 0.5 + (double)(z >> 11) * 0x1.0p-53;
}

static void finish(tp_fetch *f, tp_fetch_job *j, bool ok) {
    j->ok = ok;
    if (ok) f->stats.succeeded++;
    else f->stats.failed++;
    push(&f->done, &f->done_tail, j);
}

// An attempt failed with why: retry it later, or give up.
static void failed_attempt(tp_fetch *f, tp_fetch_job *j, bool retryable, const char *why) {
    snprintf(j->error, sizeof j->error, "%s", why);
    if (!retryable || j->attempts > f->o.max_retries || f->draining) {
        if (retryable && j->attempts > f->o.max_retries)
            snprintf(j->error, sizeof j->error, "%s (after %d attempts)", why, j->attempts);
        finish(f, j, false);
        return;
    }
    double delay = f->o.backoff_s * pow(2, j->attempts - 1);
    delay = (delay > 60 ? 60 : delay) * jitter(f);
    if (j->retry_after >= 0) delay = j->retry_after;
    j->not_before = tp_now() + delay;
    j->next = f->waiting;
    f->waiting = j;
    f->stats.retries++;
}

static void refill_buckets(tp_fetch *f, double now) {
    if (f->o.rpm > 0) {
        f->bucket += (now - f->bucket_t) * f->o.rpm / 60;
        if (f->bucket > f->o.rpm / 60 + 1) f->bucket = f->o.rpm / 60 + 1;
    }
    if (f->o.tpm > 0) {
        f->tok_bucket += (now - f->tok_bucket_t) * f->o.tpm / 60;
        if (f->tok_bucket > f->o.tpm / 60) f->tok_bucket = f->o.tpm / 60;
    }
    f->bucket_t = f->tok_bucket_t = now;
}

static void use_tokens(tp_fetch *f, double tokens) {
    if (f->o.tpm <= 0) return;
    refill_buckets(f, tp_now());
    f->tok_bucket -= tokens;
}

static void completed(tp_fetch *f, CURLMsg *m) {
    CURL *e = m->easy_handle;
    tp_fetch_job *j = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&j);
    long status = 0, connects = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
    f->stats.connections += (uint64_t)connects;
    CURLcode rc = m->data.result;
    curl_multi_remove_handle(f->multi, e);
    curl_easy_cleanup(e);
    j->easy = NULL;
    f->in_flight--;
    j->status = status;
    char why[300];
    if (j->sse_error[0]) {
        failed_attempt(f, j, true, j->sse_error);
        return;
    }
    if (rc != CURLE_OK) {
        bool local = rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_SSL_CACERT_BADFILE ||
                     rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CERTPROBLEM;
        snprintf(why, sizeof why, "%s%s", curl_easy_strerror(rc),
                 rc == CURLE_OPERATION_TIMEDOUT && f->o.stall_s > 0 ? " (timeout or stall)" : "");
        failed_attempt(f, j, !local, why);
        return;
    }
    if (status != 200) {
        const char *msg = NULL;
        jv body = jv_invalid();
        tp_err err;
        if (j->raw.len && tp_json_parse(j->raw.data, j->raw.len, &body, &err) == 0) {
            jv e2 = tp_json_get(body, "error");
            msg = jv_get_kind(e2) == JV_KIND_OBJECT ? tp_json_get_string(e2, "message") : NULL;
            snprintf(why, sizeof why, "HTTP %ld%s%.240s", status, msg ? ": " : "", msg ? msg : "");
            jv_free(e2);
        } else {
            snprintf(why, sizeof why, "HTTP %ld", status);
        }
        jv_free(body);
        bool retry = status == 408 || status == 409 || status == 429 || status >= 500;
        failed_attempt(f, j, retry, why);
        return;
    }
    tp_err err;
    if (f->o.stream) {
        if (!j->reply.done && !j->reply.finish[0]) {
            failed_attempt(f, j, true, "the stream ended before its last chunk");
            return;
        }
    } else if (tp_reply_whole(&j->reply, j->raw.data ? j->raw.data : "", j->raw.len, &err) < 0) {
        snprintf(why, sizeof why, "a malformed answer: %.240s", err.msg);
        failed_attempt(f, j, true, why);
        return;
    }
    tp_reply_end(&j->reply);
    j->latency_ms = (tp_now() - j->started) * 1000;
    jv u = j->reply.usage;
    if (jv_get_kind(u) == JV_KIND_OBJECT) {
        jv p = tp_json_get(u, "prompt_tokens"), c = tp_json_get(u, "completion_tokens");
        double pt = jv_get_kind(p) == JV_KIND_NUMBER ? jv_number_value(p) : 0;
        double ct = jv_get_kind(c) == JV_KIND_NUMBER ? jv_number_value(c) : 0;
        jv_free(p), jv_free(c);
        f->stats.prompt_tokens += (uint64_t)pt, f->stats.completion_tokens += (uint64_t)ct;
        use_tokens(f, pt + ct);
    }
    tp_buf_free(&j->raw);
    if (j->sse) tp_sse_free(j->sse), free(j->sse), j->sse = NULL;
    finish(f, j, true);
}

// ---- scheduling ----

static bool rate_allows(tp_fetch *f, double now) {
    refill_buckets(f, now);
    return (f->o.rpm <= 0 || f->bucket >= 1) && (f->o.tpm <= 0 || f->tok_bucket > 0);
}

// Starts what may start now: retries whose time came first, then queued jobs.
static void schedule(tp_fetch *f) {
    double now = tp_now();
    while (f->in_flight < f->o.concurrency && !f->draining) {
        tp_fetch_job **pick = NULL;
        for (tp_fetch_job **w = &f->waiting; *w; w = &(*w)->next)
            if ((*w)->not_before <= now && (!pick || (*w)->not_before < (*pick)->not_before)) pick = w;
        tp_fetch_job *j = NULL;
        if (!rate_allows(f, now)) break;
        if (pick) {
            j = *pick;
            *pick = j->next;
        } else if (f->queue) {
            j = f->queue;
            f->queue = j->next;
            if (!f->queue) f->queue_tail = NULL;
        } else {
            break;
        }
        if (f->o.rpm > 0) f->bucket -= 1;
        start(f, j);
    }
}

// How long to sleep at most before something may start (ms).
static int wait_ms(const tp_fetch *f) {
    double now = tp_now(), best = 1.0;
    for (const tp_fetch_job *w = f->waiting; w; w = w->next)
        if (w->not_before - now < best) best = w->not_before - now;
    if (f->o.rpm > 0 || f->o.tpm > 0) best = best < 0.05 ? best : 0.05;
    return best <= 0 ? 0 : (int)(best * 1000) + 1;
}

void tp_fetch_drain(tp_fetch *f) {
    if (f->draining) return;
    f->draining = true;
    tp_fetch_job *lists[2] = {f->queue, f->waiting};
    f->queue = f->queue_tail = f->waiting = NULL;
    for (int l = 0; l < 2; l++)
        for (tp_fetch_job *j = lists[l], *next; j; j = next) {
            next = j->next;
            if (!j->error[0]) snprintf(j->error, sizeof j->error, "not sent");
            finish(f, j, false);
        }
}

tp_fetch_job *tp_fetch_next(tp_fetch *f) {
    for (;;) {
        if (f->done) {
            tp_fetch_job *j = f->done;
            f->done = j->next;
            if (!f->done) f->done_tail = NULL;
            j->next = NULL;
            return j;
        }
        if (!f->queue && !f->waiting && f->in_flight == 0) return NULL;
        schedule(f);
        int running = 0;
        curl_multi_perform(f->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(f->multi, &left)))
            if (m->msg == CURLMSG_DONE) completed(f, m);
        if (!f->done) curl_multi_poll(f->multi, NULL, 0, f->in_flight ? wait_ms(f) : wait_ms(f), NULL);
    }
}
