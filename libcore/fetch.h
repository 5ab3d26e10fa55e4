// fetch.h — many chat-completion requests in flight against one OpenAI-compatible
// endpoint (libcurl's multi interface: reused connections, HTTP/2 multiplexing where the
// server offers it), streamed or whole, with retries that lose nothing: 408, 409, 429 and
// 5xx answers, timeouts, stalls, dropped connections and cut or malformed streams are
// retried with exponential backoff and jitter (a server's Retry-After wins), up to
// max_retries; anything else is final. Requests per minute and tokens per minute are
// rate-limited here.
//
//   tp_fetch *f = tp_fetch_new(&opts, &err);
//   tp_fetch_add(f, job) ...;            // jobs the caller owns, with their request bodies
//   for (tp_fetch_job *j; (j = tp_fetch_next(f));) use j->reply or j->error;
#ifndef TP_FETCH_H
#define TP_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "reply.h"

typedef struct tp_fetch_opts {
    const char *url;      // the endpoint: BASE/chat/completions
    const char *api_key;  // sent as "Authorization: Bearer ..."; never printed; NULL: none
    const char *cacert;   // a CA bundle for private CAs; NULL: the system's
    int concurrency;      // requests in flight at most
    double timeout_s;     // a whole request, 0: none
    double stall_s;       // no byte for this long: the request is retried; 0: none
    int max_retries;      // retries after the first attempt
    double rpm, tpm;      // requests / tokens (usage.total_tokens) per minute; 0: unlimited
    bool stream;          // the bodies ask for streaming (SSE is parsed)
    double backoff_s;     // first retry's delay (doubled each retry, at most 60 s, +-50% jitter)
} tp_fetch_opts;

typedef struct tp_fetch_job {
    // the caller's
    char *body;  // the request JSON
    size_t len;
    void *user;
    // results, once tp_fetch_next returns the job
    bool ok;            // a complete answer is in reply
    tp_reply reply;
    long status;        // the last HTTP status (0: no answer)
    int attempts;
    double latency_ms;  // of the successful attempt
    char error[300];    // why it failed, when !ok
    // the engine's
    double not_before;  // monotonic seconds: a retry waits until then
    double retry_after; // the server's Retry-After (seconds), or -1
    double started;
    struct tp_fetch_job *next;
    void *easy;
    tp_buf raw;         // a whole answer's body
    struct tp_sse *sse;
    char sse_error[200];
} tp_fetch_job;

typedef struct tp_fetch_stats {
    uint64_t started, retries, succeeded, failed;
    uint64_t connections;  // new connections opened (the rest reused one)
    uint64_t prompt_tokens, completion_tokens;
} tp_fetch_stats;

typedef struct tp_fetch tp_fetch;

tp_fetch *tp_fetch_new(const tp_fetch_opts *o, tp_err *err);
void tp_fetch_free(tp_fetch *f);
void tp_fetch_add(tp_fetch *f, tp_fetch_job *j);  // queued in order
// Waits until some job is finished (succeeded, or failed for good) and returns it, or NULL
// when no job is queued, waiting or in flight.
tp_fetch_job *tp_fetch_next(tp_fetch *f);
// No new attempts from now on (a budget ran out): queued and waiting jobs come back from
// tp_fetch_next as failed with "not sent"; in-flight ones finish.
void tp_fetch_drain(tp_fetch *f);
int tp_fetch_in_flight(const tp_fetch *f);
int tp_fetch_pending(const tp_fetch *f);  // queued or waiting to retry
const tp_fetch_stats *tp_fetch_stats_of(const tp_fetch *f);
// Frees what a job's results hold (not body or user).
void tp_fetch_job_clear(tp_fetch_job *j);

#endif
