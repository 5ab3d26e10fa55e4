// teacher-server — a stand-in for a paid OpenAI-compatible reasoning API (DeepSeek R1 and the
// like), for the tests of cot-fetch (which must lose nothing under faults) and the offline demo.
// It answers arithmetic questions with R1-style traces, deterministically, and fails on purpose.
//
//   teacher-server [--host ADDR (127.0.0.1)] [--port N (0: any free port)] [--seed N (0)]
//                  [--faults SPEC] [--max-faults N (2)] [--reasoning field|inline|mixed (field)]
//                  [--token-delay-ms N (0)] [--hang-ms N (30000)] [--api-key-env NAME] [--log FILE]
//
// On start it prints "teacher-server: listening on http://HOST:PORT" on stderr (IPv6 hosts in
// brackets); SIGTERM or SIGINT stop it (exit 0). Bad options exit 2, other start errors 1.
//
// Endpoints:
//   GET  /health               {"status":"ok"} (never needs the API key)
//   GET  /v1/models            {"object":"list","data":[{"id":"teacher-r1","object":"model"}]}
//   POST /v1/chat/completions  OpenAI's body: model, messages (content a string, null, or text
//        parts), temperature (0..2), top_p (0..1), max_tokens (or max_completion_tokens), seed,
//        stream, stream_options.include_usage, n (1 only). Anything else is ignored.
//   With --api-key-env NAME, every other request needs "Authorization: Bearer $NAME" (401).
//   Errors are OpenAI's {"error":{"message","type","param","code"}}: 400 invalid_request_error
//   (not JSON, no messages, n != 1, a bad number), 401, 404, 405, 413 (body over 16 MiB).
//
// The answer. The last user message is scanned for the first "A+B", "A-B" or "A*B" (whole
// numbers of up to 18 digits, optionally negative, B also as "(-N)"; spaces allowed around the
// operator; "×" counts as "*"; a result of 10^18 or more counts as no problem). The reply is an R1-style
// trace: reasoning that works the sum column by column (or the product digit by digit), about
// 200-600 characters, and a content with the result in \boxed{N} ("The answer is \boxed{579}.").
// Without a problem: a short reasoning and the content "I cannot tell." (no \boxed).
//   Quality, by the answer hash: 8% WRONG (the boxed number, and the reasoning's conclusion,
//   off by +-1, +10 or two swapped digits; finish_reason "stop"), 4% TRUNCATED (the reasoning
//   cut mid-sentence, content "", finish_reason "length"), the rest correct ("stop"). A
//   max_tokens below the trace's token count also truncates it ("length").
//   Tokens are characters / 4, rounded up: prompt_tokens from the messages' contents,
//   completion_tokens from reasoning + content (without <think> tags), reasoning_tokens
//   (usage.completion_tokens_details) from the reasoning. max_tokens keeps 4*max_tokens
//   characters of reasoning-then-content.
//   Where the reasoning goes (--reasoning): field: message.reasoning_content (DeepSeek's API);
//   inline: content = "<think>\n" + reasoning + "\n</think>\n\n" + content (vLLM without a
//   reasoning parser; a trace cut inside the reasoning has no "</think>"); mixed: per answer,
//   by its hash, one of reasoning_content, reasoning (OpenRouter's name) or inline.
//   The request key is a 64-bit hash of the messages' roles and contents and of "seed" when
//   given. With a seed the answer is a pure function of (messages, seed, --seed): the same
//   request gets the same bytes but for "id" and "created". Without one, a per-request counter
//   is mixed in: each request is a new sample. "model" echoes the request's (default teacher-r1).
//
// Streaming (stream: true): text/event-stream of "data: {chunk}\n\n" lines, OpenAI's
// chat.completion.chunk objects: a delta {"role":"assistant","content":""}, the reasoning in
// pieces of a few characters to a word (deltas of reasoning_content or reasoning; inline: of
// content), the content likewise, a chunk with an empty delta and the finish_reason, with
// stream_options.include_usage a chunk with "choices":[] and the usage, then "data: [DONE]".
// --token-delay-ms N sleeps N ms between chunks. The deltas add up to the non-streamed answer.
//
// Faults (--faults KIND:RATE,...), to test a client's retries. The attempt number of a request
// is how many times this server has seen its key before (0 for the first). Failing faults,
// tried only while attempt < --max-faults (so a client that retries always gets through):
//   429        status 429, "Retry-After: 1", an OpenAI rate_limit_error body
//   500, 503   status 500 (server_error) or 503 (overloaded)
//   408, 409   status 408 (request timeout) or 409 (conflict): retryable too
//   hang       no bytes for --hang-ms, then the connection closes without a response
//   drop       streamed: 20-80% of the chunks, then the connection closes abruptly (no [DONE],
//              no end of the chunked body); not streamed: closed without any response
//   malformed  streamed: some chunks, then one "data:" line of broken JSON, then the stream
//              ends (and the connection closes) without [DONE]; not streamed: status 200 with
//              the JSON body cut in half
// Pacing faults, on streamed requests only, at any attempt; not failures (the answer is whole):
//   slow       300 ms between chunks
//   keepalive  ": keep-alive" comment lines and blank lines between the chunks
// Each group draws one number from a hash of (request key, attempt, --seed) and the RATEs are
// slices of it, in the order given: "429:0.2,drop:0.1" fails about 20% of first attempts with
// 429 and 10% with drop. A group's RATEs add up to at most 1.
//
// --log FILE appends one JSON line per request, written with one write():
//   {"time":unix s,"path","key":"16 hex digits"|null,"attempt":N|null,"status":HTTP status (0:
//    no response),"fault":KIND|null,"stream":bool,"bytes":body bytes sent}
//
// Threads: one per connection (libmicrohttpd's), up to 4096; the only lock guards the table
// of attempts, held for a lookup, never while writing.
#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "cli.h"
#include "error.h"
#include "input.h"
#include "json.h"
#include "rng.h"

static const char usage[] =
    "Usage: teacher-server [OPTIONS]\n"
    "A stand-in for a paid OpenAI-compatible reasoning API, for testing cot-fetch: R1-style traces\n"
    "of arithmetic problems, deterministic, with faults on purpose. Prints\n"
    "\"teacher-server: listening on http://HOST:PORT\" on stderr; SIGINT/SIGTERM stop it.\n"
    "      --host ADDR (127.0.0.1; IPv4 or IPv6)  --port N (0: any free port)\n"
    "      --tls-cert PEM --tls-key PEM  serve HTTPS (\"listening on https://...\")\n"
    "      --seed N (0)             mixed into every answer and fault\n"
    "      --reasoning MODE (field) field: message.reasoning_content; inline: \"<think>\\n...\\n\n"
    "                               </think>\\n\\n\" before the content; mixed: per answer one of\n"
    "                               those or \"reasoning\" (OpenRouter's field)\n"
    "      --faults KIND:RATE,...   faults for testing retries (below)\n"
    "      --max-faults N (2)       only a request key's first N attempts may fail\n"
    "      --hang-ms N (30000)      how long a hang sends nothing before it closes\n"
    "      --token-delay-ms N (0)   sleep between streamed chunks\n"
    "      --api-key-env NAME       require \"Authorization: Bearer $NAME\" (401 otherwise;\n"
    "                               not for /health)\n"
    "      --log FILE               one JSON line per request, one write() each: {time, path,\n"
    "                               key, attempt, status (0: none sent), fault, stream, bytes}\n"
    "  -q, --quiet  -h, --help  --version\n"
    "Endpoints: GET /health, GET /v1/models (\"teacher-r1\"), POST /v1/chat/completions with\n"
    "model, messages, temperature, top_p, max_tokens, seed, stream, stream_options.include_usage,\n"
    "n (1 only); bad requests get 400 and OpenAI's {\"error\": {message, type, param, code}}.\n"
    "Answers: the first A+B, A-B or A*B (whole numbers) in the last user message is worked column\n"
    "by column in the reasoning (200-600 characters) and the content gives \\boxed{N}; without\n"
    "one, content \"I cannot tell.\". 8% are wrong (N off by 1 or 10, or two digits swapped),\n"
    "4% truncated (reasoning cut mid-sentence, no content, finish_reason \"length\"); max_tokens\n"
    "truncates too. Tokens are characters/4 (usage has completion_tokens_details.reasoning_tokens).\n"
    "The request key hashes the messages' roles and contents and \"seed\": with a seed the answer\n"
    "is a function of (messages, seed, --seed); without, each request is a new sample.\n"
    "Streams: OpenAI chat.completion.chunk events, a role delta, the reasoning and content in\n"
    "pieces of a few characters, a finish_reason chunk, a usage chunk when asked, data: [DONE].\n"
    "Faults: an attempt is the number of times the key was seen before. Failing kinds, only on\n"
    "attempts below --max-faults: 408, 409, 429 (Retry-After: 1), 500, 503, hang (silence for --hang-ms,\n"
    "then a close), drop (streamed: some chunks, then an abrupt close; else a close without any\n"
    "response), malformed (streamed: a data: line of broken JSON, then the end, no [DONE]; else\n"
    "the JSON body cut in half). On streams at any attempt, not failures: slow (300 ms between\n"
    "chunks), keepalive (\": keep-alive\" and blank lines between chunks). Each group draws once\n"
    "from a hash of (key, attempt, --seed), RATEs are slices of that draw (sum <= 1).\n"
    "Exit: 0 stopped by SIGINT/SIGTERM, 1 error, 2 usage error.\n";

enum { OPT_HOST = 0x100, OPT_PORT, OPT_SEED, OPT_FAULTS, OPT_MAX_FAULTS, OPT_REASONING, OPT_DELAY, OPT_HANG,
       OPT_KEY, OPT_LOG, OPT_TLS_CERT, OPT_TLS_KEY };

enum { F_NONE, F_408, F_409, F_429, F_500, F_503, F_HANG, F_DROP, F_MALFORMED, F_SLOW, F_KEEPALIVE, F_COUNT };
static const char *const fault_names[F_COUNT] = {NULL, "408", "409", "429", "500", "503", "hang", "drop", "malformed", "slow",
                                                 "keepalive"};
enum { R_FIELD, R_INLINE, R_MIXED };                  // --reasoning
enum { P_REASONING_CONTENT, P_REASONING, P_INLINE };  // where one answer's reasoning goes
static const char *const model_default = "teacher-r1";

static struct {
    const char *host, *key_env, *log_path;
    tp_buf tls_cert, tls_key;  // PEM, with --tls-cert / --tls-key: HTTPS (libmicrohttpd's GnuTLS)
    long long port, max_faults, delay_ms, hang_ms;
    uint64_t seed;
    int reasoning;
    int order[F_COUNT], n_order;  // the fault kinds in the order given: slices of the draw
    double rate[F_COUNT];
    char *api_key;
    int log_fd;
    atomic_uint_fast64_t requests;  // chat requests so far: ids, and the nonce of unseeded ones
    // attempts per request key: open addressing, key 0 marks an empty slot
    pthread_mutex_t lock;
    uint64_t *keys;
    uint32_t *counts;
    size_t cap, used;
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .log_fd = -1};

static uint64_t started;  // the start time, mixed into ids so that runs differ
static atomic_bool stopping;
static void on_signal(int sig) { (void)sig, atomic_store(&stopping, true); }

// ---- hashing ----

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static uint64_t combine(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b + 0x9e3779b97f4a7c15ULL)); }
static double unit(uint64_t h) { return (double)(h >> 11) * 0x1p-53; }  // [0, 1)

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL;
    return h;
}

// How many times the key was seen before; counts this sighting.
static unsigned attempt_next(uint64_t key) {
    if (!key) key = 1;
    pthread_mutex_lock(&S.lock);
    if (2 * (S.used + 1) > S.cap) {  // grow at half full: probes stay short
        size_t cap = S.cap ? 2 * S.cap : 1024;
        uint64_t *keys = tp_xcalloc(cap, sizeof *keys);
        uint32_t *counts = tp_xcalloc(cap, sizeof *counts);
        for (size_t i = 0; i < S.cap; i++) {
            if (!S.keys[i]) continue;
            size_t j = S.keys[i] & (cap - 1);
            while (keys[j]) j = (j + 1) & (cap - 1);
            keys[j] = S.keys[i], counts[j] = S.counts[i];
        }
        free(S.keys), free(S.counts);
        S.keys = keys, S.counts = counts, S.cap = cap;
    }
    size_t i = key & (S.cap - 1);
    while (S.keys[i] && S.keys[i] != key) i = (i + 1) & (S.cap - 1);
    if (!S.keys[i]) S.keys[i] = key, S.used++;
    unsigned n = S.counts[i];
    if (S.counts[i] < UINT32_MAX) S.counts[i]++;
    pthread_mutex_unlock(&S.lock);
    return n;
}

// The fault of one attempt: a failing kind while attempt < --max-faults, else maybe a pacing one.
static int pick_fault(uint64_t key, unsigned attempt, bool stream) {
    uint64_t h = combine(combine(key, S.seed ^ 0x5eedfa17ULL), attempt);
    double fail = unit(h), pace = unit(combine(h, 1)), at_fail = 0, at_pace = 0;
    for (int i = 0; i < S.n_order; i++) {
        int f = S.order[i];
        if (f < F_SLOW) {
            at_fail += S.rate[f];
            if ((long long)attempt < S.max_faults && fail < at_fail) return f;
        }
    }
    if (!stream) return F_NONE;
    for (int i = 0; i < S.n_order; i++) {
        int f = S.order[i];
        if (f >= F_SLOW && pace < (at_pace += S.rate[f])) return f;
    }
    return F_NONE;
}

// ---- the request ----

typedef struct request {
    uint64_t key;
    bool has_seed, stream, include_usage;
    long long seed, max_tokens;  // max_tokens 0: no limit
    long prompt_chars;
    char *model;
    bool found;  // a problem in the last user message
    long long a, b;
    char op;
} request;

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A whole number at s[*i..n): optional minus, 1-18 digits. Advances *i past it.
static bool scan_number(const char *s, size_t n, size_t *i, long long *out) {
    size_t j = *i;
    bool neg = j < n && s[j] == '-';
    if (neg) j++;
    size_t d0 = j;
    long long v = 0;
    while (j < n && is_digit(s[j]) && j - d0 < 18) v = 10 * v + (s[j++] - '0');
    if (j == d0 || (j < n && is_digit(s[j]))) return false;  // none, or over 18 digits
    *i = j, *out = neg ? -v : v;
    return true;
}

// The first "A op B" in s[0..n).
static bool scan_problem(const char *s, size_t n, request *r) {
    for (size_t i = 0; i < n; i++) {
        bool starts = is_digit(s[i]) || (s[i] == '-' && i + 1 < n && is_digit(s[i + 1]));
        if (!starts || (i > 0 && (is_digit(s[i - 1]) || s[i - 1] == '.' || ((s[i - 1] | 32) >= 'a' && (s[i - 1] | 32) <= 'z'))))
            continue;
        size_t j = i;
        long long a, b;
        if (!scan_number(s, n, &j, &a)) {
            while (i + 1 < n && is_digit(s[i + 1])) i++;  // past a number too long to read
            continue;
        }
        while (j < n && s[j] == ' ') j++;
        char op = 0;
        if (j < n && (s[j] == '+' || s[j] == '-' || s[j] == '*')) op = s[j++];
        else if (j + 1 < n && (unsigned char)s[j] == 0xC3 && (unsigned char)s[j + 1] == 0x97) op = '*', j += 2;  // ×
        while (op && j < n && s[j] == ' ') j++;
        bool paren = op && j + 1 < n && s[j] == '(' && s[j + 1] == '-';  // "3*(-4)"
        j += paren;
        if (op && scan_number(s, n, &j, &b) && (!paren || (j < n && s[j] == ')'))) {
            r->a = a, r->b = b, r->op = op;
            return true;
        }
        while (i + 1 < n && is_digit(s[i + 1])) i++;
    }
    return false;
}

// A number field: 0 absent or null, 1 read (a whole number when whole), -1 not a number in [lo, hi].
static int get_number(jv req, const char *key, double lo, double hi, bool whole, double *out) {
    jv v = tp_json_get(req, key);
    jv_kind kind = jv_get_kind(v);
    double x = kind == JV_KIND_NUMBER ? jv_number_value(v) : 0;
    jv_free(v);
    if (kind == JV_KIND_INVALID || kind == JV_KIND_NULL) return 0;
    if (kind != JV_KIND_NUMBER || !(x >= lo && x <= hi) || (whole && x != (double)(long long)x)) return -1;
    *out = x;
    return 1;
}

// Hashes one message (borrowed) into the key; a user message's text is scanned for a problem.
static const char *read_message(jv m, request *r, uint64_t *h) {
    if (jv_get_kind(m) != JV_KIND_OBJECT) return "each message must be an object";
    jv role = tp_json_get(m, "role"), content = tp_json_get(m, "content");
    const char *bad = NULL;
    if (jv_get_kind(role) != JV_KIND_STRING) bad = "each message needs a string \"role\"";
    jv_kind ck = jv_get_kind(content);
    if (!bad && ck != JV_KIND_STRING && ck != JV_KIND_ARRAY && ck != JV_KIND_NULL && ck != JV_KIND_INVALID)
        bad = "a message's content must be a string, text parts or null";
    if (!bad) {
        bool user = !strcmp(jv_string_value(role), "user");
        *h = fnv(*h, jv_string_value(role), (size_t)jv_string_length_bytes(jv_copy(role)) + 1);
        if (user) r->found = false;  // only the last user message counts
        int parts = ck == JV_KIND_ARRAY ? jv_array_length(jv_copy(content)) : ck == JV_KIND_STRING;
        for (int i = 0; i < parts && !bad; i++) {
            jv t = ck == JV_KIND_STRING ? jv_copy(content) : jv_array_get(jv_copy(content), i);
            if (ck == JV_KIND_ARRAY) {
                jv text = tp_json_get(t, "text");
                jv_free(t);
                t = text;
            }
            if (jv_get_kind(t) == JV_KIND_STRING) {
                size_t n = (size_t)jv_string_length_bytes(jv_copy(t));
                *h = fnv(*h, jv_string_value(t), n);
                r->prompt_chars += (long)n;
                if (user && !r->found) r->found = scan_problem(jv_string_value(t), n, r);
            } else {
                bad = "a content part must be {\"type\":\"text\",\"text\":...}";
            }
            jv_free(t);
        }
        *h = fnv(*h, "\1", 1);  // ends the message: ("ab","c") and ("a","bc") differ
    }
    jv_free(role), jv_free(content);
    return bad;
}

// Reads an OpenAI chat request; false with a message for the 400 when it is not one.
static bool parse_request(const char *body, size_t len, request *r, char *msg, size_t cap) {
    tp_err err;
    jv req;
    if (tp_json_parse(body, len, &req, &err) < 0) {
        snprintf(msg, cap, "the body is not JSON: %s", err.msg);
        return false;
    }
    const char *bad = jv_get_kind(req) == JV_KIND_OBJECT ? NULL : "the body must be a JSON object";
    jv msgs = tp_json_get(req, "messages");
    int n_msgs = jv_get_kind(msgs) == JV_KIND_ARRAY ? jv_array_length(jv_copy(msgs)) : 0;
    if (!bad && n_msgs == 0) bad = "messages must be a non-empty array";
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < n_msgs && !bad; i++) {
        jv m = jv_array_get(jv_copy(msgs), i);
        bad = read_message(m, r, &h);
        jv_free(m);
    }
    jv_free(msgs);
    double x;
    if (!bad && get_number(req, "n", 1, 1, true, &x) < 0) bad = "n: only 1 is supported";
    if (!bad && get_number(req, "temperature", 0, 2, false, &x) < 0) bad = "temperature must be a number from 0 to 2";
    if (!bad && get_number(req, "top_p", 0, 1, false, &x) < 0) bad = "top_p must be a number from 0 to 1";
    int has_max = bad ? 0 : get_number(req, "max_tokens", 1, 1e15, true, &x);
    if (!bad && has_max == 0) has_max = get_number(req, "max_completion_tokens", 1, 1e15, true, &x);
    if (!bad && has_max < 0) bad = "max_tokens must be a whole number of at least 1";
    if (!bad && has_max > 0) r->max_tokens = (long long)x;
    int has_seed = bad ? 0 : get_number(req, "seed", -9.2e18, 9.2e18, true, &x);
    if (!bad && has_seed < 0) bad = "seed must be a whole number";
    if (!bad && has_seed > 0) {
        r->has_seed = true, r->seed = (long long)x;
        h = fnv(fnv(h, "\2", 1), &r->seed, sizeof r->seed);
    }
    if (!bad) {
        r->key = mix64(h);
        r->stream = tp_json_get_bool(req, "stream", false);
        jv so = tp_json_get(req, "stream_options");
        r->include_usage = tp_json_get_bool(so, "include_usage", false);
        jv_free(so);
        const char *model = tp_json_get_string(req, "model");
        r->model = tp_xstrdup(model && *model ? model : model_default);
    }
    jv_free(req);
    if (bad) snprintf(msg, cap, "%s", bad);
    return !bad;
}

// ---- the answer: an R1-style trace ----

typedef struct answer {
    tp_buf reasoning, content;
    bool thought_done;   // the reasoning ended (inline: "</think>" follows)
    const char *finish;  // "stop" or "length"
    int placement;
    long long completion_tokens, reasoning_tokens;
} answer;

static uint64_t pick(uint64_t *rng, uint64_t n) { return tp_splitmix64(rng) % n; }

// A number as it reads inside an expression: negative ones in parentheses.
static void put_operand(tp_buf *b, long long v) { tp_buf_printf(b, v < 0 ? "(%lld)" : "%lld", v); }

static const char *column(int i) {
    static const char *const names[] = {"ones", "tens", "hundreds", "thousands"};
    return i < 4 ? names[i] : "next";
}

static void columns_add(tp_buf *b, unsigned long long x, unsigned long long y) {
    tp_buf_puts(b, "Adding column by column from the ones place: ");
    int carry = 0, i = 0;
    do {
        int dx = (int)(x % 10), dy = (int)(y % 10), s = dx + dy + carry;
        tp_buf_printf(b, "%s%s: %d+%d%s=%d", i ? "; " : "", column(i), dx, dy, carry ? "+1" : "", s);
        if (s >= 10) tp_buf_printf(b, ", write %d and carry 1", s - 10);
        carry = s >= 10, x /= 10, y /= 10, i++;
    } while (x || y || carry);
    tp_buf_puts(b, ". Reading the digits from the highest column down gives the sum. ");
}

// x >= y.
static void columns_sub(tp_buf *b, unsigned long long x, unsigned long long y) {
    tp_buf_puts(b, "Subtracting column by column from the ones place: ");
    int borrow = 0, i = 0;
    do {
        int dx = (int)(x % 10), dy = (int)(y % 10), d = dx - borrow - dy;
        const char *less = borrow ? "-1" : "";
        tp_buf_printf(b, "%s%s: %d%s-%d", i ? "; " : "", column(i), dx, less, dy);
        if (d >= 0) tp_buf_printf(b, "=%d", d);
        else tp_buf_printf(b, " is negative, so borrow ten: %d%s-%d=%d", dx + 10, less, dy, d + 10);
        borrow = d < 0, x /= 10, y /= 10, i++;
    } while (x);
    tp_buf_puts(b, ". Reading the digits from the highest column down gives the difference. ");
}

static void columns_mul(tp_buf *b, unsigned long long x, unsigned long long y) {
    if (y > x) {  // the shorter number gives the partial products
        unsigned long long t = x;
        x = y, y = t;
    }
    if (y == 0) {
        tp_buf_puts(b, "Anything times zero is zero. ");
        return;
    }
    tp_buf_printf(b, "Multiplying %llu by each digit of %llu, from the ones place: ", x, y);
    unsigned long long place = 1, sum = 0, parts[20];
    int n = 0;
    for (unsigned long long m = y; m; m /= 10, place *= 10) {
        int d = (int)(m % 10);
        parts[n++] = x * (unsigned long long)d * place;
        sum += parts[n - 1];
        tp_buf_printf(b, "%s%llu*%d=%llu", n > 1 ? "; " : "", x, d, x * (unsigned long long)d);
        if (place > 1 && d) tp_buf_printf(b, ", shifted %d place%s: %llu", n - 1, n > 2 ? "s" : "", parts[n - 1]);
    }
    tp_buf_puts(b, ". ");
    if (n == 1) return;
    tp_buf_puts(b, "Adding the partial products: ");
    for (int i = 0; i < n; i++) tp_buf_printf(b, "%s%llu", i ? "+" : "", parts[i]);
    tp_buf_printf(b, "=%llu. ", sum);
}

static unsigned long long mag(long long v) { return v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v; }

// The worked steps of a op b, with a sentence about the signs when there are negatives.
static void work(tp_buf *b, long long x, char op, long long y) {
    if (op == '*') {
        if (x < 0 || y < 0)
            tp_buf_puts(b, (x < 0) == (y < 0) ? "Two negatives make a positive, so I multiply the sizes. "
                                              : "One factor is negative, so the product is negative; first the sizes. ");
        columns_mul(b, mag(x), mag(y));
        return;
    }
    if (op == '-') {
        if (x >= 0 && y >= 0) {
            if (x >= y) return columns_sub(b, mag(x), mag(y));
            tp_buf_printf(b, "%lld is smaller than %lld, so I compute %lld-%lld and make it negative. ", x, y, y, x);
            return columns_sub(b, mag(y), mag(x));
        }
        tp_buf_printf(b, "Subtracting %lld is the same as adding %lld. ", y, -y);
        y = -y;
    }
    if ((x < 0) == (y < 0)) {
        if (x < 0) tp_buf_puts(b, "Both numbers are negative, so I add their sizes and keep the minus sign. ");
        return columns_add(b, mag(x), mag(y));
    }
    tp_buf_puts(b, "The signs differ, so I subtract the smaller size from the larger and keep the larger's sign. ");
    unsigned long long mx = mag(x), my = mag(y);
    columns_sub(b, mx > my ? mx : my, mx > my ? my : mx);
}

// A slip: the result off by one or ten, or two neighbouring digits swapped.
static long long slip(long long v, uint64_t *rng) {
    static const long long off[] = {1, -1, 10, -10};
    uint64_t k = pick(rng, 5);
    if (k < 4) return v + off[k];
    char d[24];
    int n = snprintf(d, sizeof d, "%llu", mag(v));
    for (int i = n - 2; i >= 0; i--)
        if (d[i] != d[i + 1]) {
            char t = d[i];
            d[i] = d[i + 1], d[i + 1] = t;
            long long w = strtoll(d, NULL, 10);
            return v < 0 ? -w : w;
        }
    return v + 1;
}

static void think(tp_buf *b, const request *r, long long result, long long said, uint64_t *rng) {
    static const char *const open[][2] = {{"Okay, so I need to find ", ". "},
                                          {"Let me work out ", ". "},
                                          {"Alright, the question asks for ", ". "},
                                          {"Hmm, ", ". Let me compute it carefully. "}};
    static const char *const aside[] = {"", "I'll go one column at a time. ", "Let me be careful with each step. "};
    static const char *const conclude[] = {"So ", "That gives ", "Putting it together, "};
    tp_buf expr = {0};
    tp_buf_printf(&expr, "%lld%c", r->a, r->op);
    put_operand(&expr, r->b);
    const char *const *o = open[pick(rng, 4)];
    tp_buf_printf(b, "%s%s%s%s", o[0], expr.data, o[1], aside[pick(rng, 3)]);
    work(b, r->a, r->op, r->b);
    tp_buf_printf(b, "%s%s = %lld.", conclude[pick(rng, 3)], expr.data, said);
    if (said != result) tp_buf_puts(b, " That looks right.");  // the slip goes unnoticed
    else {  // a check by the inverse operation
        if (r->op == '*' && r->b == 0) tp_buf_puts(b, " Anything times zero is zero, so that checks out.");
        else {
            tp_buf_printf(b, " Checking: %lld%c", result, r->op == '+' ? '-' : r->op == '-' ? '+' : '/');
            put_operand(b, r->b);
            tp_buf_printf(b, "=%lld, which matches.", r->a);
        }
    }
    tp_buf_free(&expr);
}

static void boxed(tp_buf *b, const request *r, long long said, uint64_t *rng) {
    switch (pick(rng, 4)) {
    case 0: tp_buf_printf(b, "The answer is \\boxed{%lld}.", said); break;
    case 1: tp_buf_printf(b, "**Answer:** \\boxed{%lld}", said); break;
    case 2:
        tp_buf_printf(b, "%lld%c", r->a, r->op);
        put_operand(b, r->b);
        tp_buf_printf(b, " = \\boxed{%lld}", said);
        break;
    default: tp_buf_printf(b, "Therefore, the final answer is $\\boxed{%lld}$.", said);
    }
}

// The first n bytes of b, less a UTF-8 character that would be cut.
static size_t utf8_cut(const tp_buf *b, size_t n) {
    while (n > 0 && n < b->len && ((unsigned char)b->data[n] & 0xC0) == 0x80) n--;
    return n;
}

static void make_answer(const request *r, uint64_t h, answer *a) {
    uint64_t rng = combine(h, 3);
    double quality = unit(combine(h, 1));
    bool truncated = false;
    long long result = 0;
    bool ok = r->found;
    if (ok && r->op == '+') result = r->a + r->b;
    if (ok && r->op == '-') result = r->a - r->b;
    if (ok && r->op == '*') ok = !__builtin_mul_overflow(r->a, r->b, &result);
    ok = ok && mag(result) < 1000000000000000000ULL;  // slips and sums stay far from overflow
    if (ok) {
        long long said = quality < 0.08 ? slip(result, &rng) : result;
        truncated = quality >= 0.08 && quality < 0.12;
        think(&a->reasoning, r, result, said, &rng);
        boxed(&a->content, r, said, &rng);
    } else {
        static const char *const none[] = {
            "Let me read the question again. I don't see a calculation with two whole numbers in it that I could "
            "work out, so there is nothing to compute here, and I shouldn't guess.",
            "Hmm, the question doesn't contain a sum, a difference or a product of whole numbers that I can find. "
            "Without numbers to work with, any answer would be a guess."};
        tp_buf_puts(&a->reasoning, none[pick(&rng, 2)]);
        tp_buf_puts(&a->content, "I cannot tell.");
    }
    a->thought_done = true, a->finish = "stop";
    if (truncated) {  // cut mid-sentence, somewhere in 30-80% of the reasoning
        size_t n = a->reasoning.len, p = (size_t)((double)n * (0.3 + 0.5 * unit(combine(h, 4))));
        const char *s = a->reasoning.data;
        if (p < 2) p = 2;
        while (p < n && (s[p - 1] == '.' || (s[p - 1] == ' ' && s[p - 2] == '.'))) p++;
        a->reasoning.len = p < n ? p : n - 1;
        a->content.len = 0, a->thought_done = false, a->finish = "length";
    }
    size_t rl = a->reasoning.len, cl = a->content.len;
    if (r->max_tokens && (long long)((rl + cl + 3) / 4) > r->max_tokens) {
        size_t keep = (size_t)r->max_tokens * 4;
        if (keep <= rl) a->reasoning.len = utf8_cut(&a->reasoning, keep), a->content.len = 0, a->thought_done = false;
        else a->content.len = utf8_cut(&a->content, keep - rl);
        a->finish = "length";
    }
    tp_buf_putc(&a->reasoning, 0), a->reasoning.len--;  // data never NULL, even when empty
    tp_buf_putc(&a->content, 0), a->content.len--;
    a->completion_tokens = (long long)(a->reasoning.len + a->content.len + 3) / 4;
    a->reasoning_tokens = (long long)(a->reasoning.len + 3) / 4;
    a->placement = S.reasoning == R_FIELD ? P_REASONING_CONTENT : S.reasoning == R_INLINE ? P_INLINE
                                                                                          : (int)(combine(h, 2) % 3);
}

// The content as sent: with inline reasoning, "<think>\n" + reasoning [+ "\n</think>\n\n" + content].
static void sent_content(tp_buf *b, const answer *a) {
    if (a->placement == P_INLINE) {
        tp_buf_puts(b, "<think>\n");
        tp_buf_append(b, a->reasoning.data, a->reasoning.len);
        if (!a->thought_done) return;
        tp_buf_puts(b, "\n</think>\n\n");
    }
    tp_buf_append(b, a->content.data, a->content.len);
}

static void usage_json(tp_buf *b, const request *r, const answer *a) {
    long long p = (r->prompt_chars + 3) / 4;
    tp_buf_printf(b,
                  "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                  "\"completion_tokens_details\":{\"reasoning_tokens\":%lld}}",
                  p, a->completion_tokens, p + a->completion_tokens, a->reasoning_tokens);
}

// {"id","object","created","model", — what every answer object starts with.
static void envelope(tp_buf *b, const char *id, long created, const char *object, const request *r) {
    tp_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", id, object, created);
    tp_json_dump_string(b, r->model, strlen(r->model));
}

static const char *reasoning_field(int placement) {
    return placement == P_REASONING ? "reasoning" : "reasoning_content";
}

static void full_json(tp_buf *b, const char *id, long created, const request *r, const answer *a) {
    envelope(b, id, created, "chat.completion", r);
    tp_buf_puts(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    tp_buf text = {0};
    sent_content(&text, a);
    tp_json_dump_string(b, text.data ? text.data : "", text.len);
    tp_buf_free(&text);
    if (a->placement != P_INLINE) {
        tp_buf_printf(b, ",\"%s\":", reasoning_field(a->placement));
        tp_json_dump_string(b, a->reasoning.data, a->reasoning.len);
    }
    tp_buf_printf(b, "},\"logprobs\":null,\"finish_reason\":\"%s\"}],", a->finish);
    usage_json(b, r, a);
    tp_buf_puts(b, "}");
}

// ---- connections ----

typedef struct conn {
    struct MHD_Connection *c;
    tp_buf upload;
    bool too_large;
    char path[96];
    // for the log
    bool chat, stream;
    uint64_t key;
    long long attempt;  // -1: not a chat request
    int status, fault;
    size_t bytes;
    // a streamed answer: units (a chunk, a keep-alive) of out, released one at a time when paced
    tp_buf out;
    size_t *ends;
    int n_units, cap_units, next;
    size_t at, released;
    long long delay_ms;
    bool drop;  // after the last unit, close without ending the body
} conn;

static void unit_end(conn *k) {
    if (k->n_units == k->cap_units)
        k->cap_units = k->cap_units ? 2 * k->cap_units : 64,
        k->ends = tp_xrealloc(k->ends, (size_t)k->cap_units * sizeof *k->ends);
    k->ends[k->n_units++] = k->out.len;
}

// True when the client closed its end.
static bool client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return false;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

// Sleeps ms in short naps; false when the server stops or the client leaves first.
static bool nap(struct MHD_Connection *c, long long ms) {
    while (ms > 0) {
        if (atomic_load(&stopping) || client_gone(c)) return false;
        long long step = ms < 50 ? ms : 50;
        struct timespec t = {0, (long)step * 1000000};
        nanosleep(&t, NULL);
        ms -= step;
    }
    return !atomic_load(&stopping);
}

static enum MHD_Result send_body(conn *k, unsigned status, const char *type, const char *body, size_t len,
                                 bool retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", "1");
    enum MHD_Result rc = MHD_queue_response(k->c, status, r);
    MHD_destroy_response(r);
    k->status = (int)status, k->bytes = len;
    return rc;
}

static enum MHD_Result send_json(conn *k, unsigned status, const char *json) {
    return send_body(k, status, "application/json", json, strlen(json), false);
}

// OpenAI's error object: {"error": {"message", "type", "param", "code"}}.
static enum MHD_Result send_error(conn *k, unsigned status, const char *type, const char *code, const char *msg) {
    tp_buf b = {0};
    tp_buf_puts(&b, "{\"error\":{\"message\":");
    jv m = jv_string(msg);  // whatever the bytes, valid UTF-8
    tp_json_dump(&b, m);
    jv_free(m);
    tp_buf_printf(&b, ",\"type\":\"%s\",\"param\":null,\"code\":", type);
    if (code) tp_buf_printf(&b, "\"%s\"}}", code);
    else tp_buf_printf(&b, "%u}}", status);
    enum MHD_Result rc = send_body(k, status, "application/json", b.data, b.len, status == 429);
    tp_buf_free(&b);
    return rc;
}

// One SSE chunk: head (envelope and "choices":[) + {"index":0,"delta":{FIELD:TEXT}...}.
static void delta_chunk(conn *k, const tp_buf *head, const char *field, const char *text, size_t n, const char *finish) {
    tp_buf_append(&k->out, head->data, head->len);
    tp_buf_puts(&k->out, "{\"index\":0,\"delta\":{");
    if (field) {
        tp_buf_printf(&k->out, "\"%s\":", field);
        tp_json_dump_string(&k->out, text, n);
    }
    tp_buf_printf(&k->out, "},\"finish_reason\":%s%s%s}]}\n\n", finish ? "\"" : "", finish ? finish : "null",
                  finish ? "\"" : "");
}

// The next piece of s[at..n): a few characters, finished to the end of a word when that is near.
static size_t piece_end(const char *s, size_t at, size_t n, uint64_t *rng) {
    size_t e = at + 1 + pick(rng, 5), w = e;
    while (w < n && w < e + 4 && s[w] != ' ') w++;
    if (w < n && s[w] == ' ') e = w + 1;
    if (e > n) e = n;
    while (e < n && ((unsigned char)s[e] & 0xC0) == 0x80) e++;
    return e;
}

static void stream_pieces(conn *k, const tp_buf *head, const char *field, const char *s, size_t n, uint64_t *rng) {
    for (size_t at = 0, e; at < n; at = e) {
        e = piece_end(s, at, n, rng);
        delta_chunk(k, head, field, s + at, e - at, NULL);
        unit_end(k);
    }
}

// Composes the whole event stream as units; a drop or malformed fault keeps only a part.
static void compose_stream(conn *k, const char *id, long created, const request *r, const answer *a, uint64_t h) {
    tp_buf head = {0};
    tp_buf_puts(&head, "data: ");
    envelope(&head, id, created, "chat.completion.chunk", r);
    tp_buf_puts(&head, ",\"choices\":[");
    uint64_t rng = combine(h, 5);
    tp_buf_append(&k->out, head.data, head.len);
    tp_buf_puts(&k->out, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
    unit_end(k);
    if (a->placement == P_INLINE) {
        tp_buf text = {0};
        sent_content(&text, a);
        stream_pieces(k, &head, "content", text.data, text.len, &rng);
        tp_buf_free(&text);
    } else {
        stream_pieces(k, &head, reasoning_field(a->placement), a->reasoning.data, a->reasoning.len, &rng);
        stream_pieces(k, &head, "content", a->content.data, a->content.len, &rng);
    }
    delta_chunk(k, &head, NULL, NULL, 0, a->finish);
    unit_end(k);
    if (r->include_usage) {
        tp_buf_append(&k->out, head.data, head.len - 1);  // "choices":[ without its "["
        tp_buf_puts(&k->out, "[],");
        usage_json(&k->out, r, a);
        tp_buf_puts(&k->out, "}\n\n");
        unit_end(k);
    }
    tp_buf_puts(&k->out, "data: [DONE]\n\n");
    unit_end(k);
    tp_buf_free(&head);

    int cut = 2 + (int)(unit(combine(h, 6)) * 0.6 * (k->n_units - 2) + 0.2 * (k->n_units - 2));
    if (k->fault == F_DROP) k->n_units = cut, k->drop = true;
    if (k->fault == F_MALFORMED) {  // the cut unit's JSON loses its second half
        size_t start = k->ends[cut - 1], len = k->ends[cut] - start - 2;
        k->out.len = start + len / 2;
        tp_buf_puts(&k->out, "\n\n");
        k->n_units = cut;
        unit_end(k);
    }
    if (k->fault == F_KEEPALIVE) {  // a comment first, then blank and comment lines every few units
        tp_buf out = {0};
        size_t *ends = tp_xmalloc((size_t)k->n_units * sizeof *ends), prev = 0;
        for (int i = 0; i < k->n_units; i++) {
            if (i % 4 == 0) tp_buf_puts(&out, i ? "\n: keep-alive\n\n" : ": keep-alive\n\n");
            tp_buf_append(&out, k->out.data + prev, k->ends[i] - prev);
            prev = k->ends[i], ends[i] = out.len;
        }
        tp_buf_free(&k->out), free(k->ends);
        k->out = out, k->ends = ends, k->cap_units = k->n_units;
    }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    conn *k = cls;
    if (k->at == k->released) {
        if (k->next == k->n_units)
            return k->drop ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
        if (k->delay_ms && k->next > 0 && !nap(k->c, k->delay_ms)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (atomic_load(&stopping)) return MHD_CONTENT_READER_END_WITH_ERROR;
        k->next = k->delay_ms ? k->next + 1 : k->n_units;  // unpaced: all at once
        k->released = k->ends[k->next - 1];
    }
    size_t n = k->released - k->at < max ? k->released - k->at : max;
    memcpy(buf, k->out.data + k->at, n);
    k->at += n, k->bytes += n;
    return (ssize_t)n;
}

static enum MHD_Result chat(conn *k) {
    request r = {0};
    char msg[1200];
    tp_buf_putc(&k->upload, 0);
    if (!parse_request(k->upload.data, k->upload.len - 1, &r, msg, sizeof msg))
        return send_error(k, 400, "invalid_request_error", NULL, msg);
    k->chat = true, k->stream = r.stream, k->key = r.key;
    unsigned attempt = attempt_next(r.key);
    k->attempt = attempt;
    k->fault = pick_fault(r.key, attempt, r.stream);
    uint64_t n = atomic_fetch_add(&S.requests, 1);
    enum MHD_Result rc = MHD_NO;  // hang, and drop unstreamed: no response at all
    // The faults answered with an error status (429's Retry-After is send_error's).
    static const struct {
        unsigned status;
        const char *type, *code, *message;
    } ERRORS[F_COUNT] = {
        [F_408] = {408, "timeout", NULL, "Request timed out; please retry."},
        [F_409] = {409, "conflict", NULL, "A conflicting request is in progress; please retry."},
        [F_429] = {429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached; please retry after 1s."},
        [F_500] = {500, "server_error", NULL, "The server had an error while processing your request."},
        [F_503] = {503, "server_error", "overloaded", "The engine is currently overloaded; please try again later."},
    };
    switch (k->fault) {
    case F_408:
    case F_409:
    case F_429:
    case F_500:
    case F_503:
        rc = send_error(k, ERRORS[k->fault].status, ERRORS[k->fault].type, ERRORS[k->fault].code,
                        ERRORS[k->fault].message);
        break;
    case F_HANG: nap(k->c, S.hang_ms); break;
    case F_DROP:
        if (!r.stream) break;
        // fall through
    default: {
        char id[40];
        snprintf(id, sizeof id, "chatcmpl-%016" PRIx64, combine(started, n));
        long created = (long)time(NULL);
        uint64_t h = combine(r.key, S.seed ^ 0xa115e7ULL);
        if (!r.has_seed) h = combine(h, n);  // a new sample each time
        answer a = {0};
        make_answer(&r, h, &a);
        if (r.stream) {
            compose_stream(k, id, created, &r, &a, h);
            k->delay_ms = k->fault == F_SLOW ? (S.delay_ms > 300 ? S.delay_ms : 300) : S.delay_ms;
            struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, k, NULL);
            MHD_add_response_header(resp, "Content-Type", "text/event-stream");
            MHD_add_response_header(resp, "Cache-Control", "no-cache");
            if (k->fault == F_MALFORMED) MHD_add_response_header(resp, "Connection", "close");
            rc = MHD_queue_response(k->c, 200, resp);
            MHD_destroy_response(resp);
            k->status = 200;
        } else {
            tp_buf b = {0};
            full_json(&b, id, created, &r, &a);
            if (k->fault == F_MALFORMED) b.len /= 2;
            rc = send_body(k, 200, "application/json", b.data, b.len, false);
            tp_buf_free(&b);
        }
        tp_buf_free(&a.reasoning), tp_buf_free(&a.content);
    }
    }
    free(r.model);
    return rc;
}

static bool authorized(struct MHD_Connection *c) {
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return auth && !strncmp(auth, "Bearer ", 7) && !strcmp(auth + 7, S.api_key);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls, (void)version;
    conn *k = *con_cls;
    if (!k) {
        k = tp_xcalloc(1, sizeof *k);
        k->c = c, k->attempt = -1;
        size_t i = 0;
        for (; url[i] && i < sizeof k->path - 1; i++)  // the log's copy: printable, no JSON escapes needed
            k->path[i] = url[i] > ' ' && url[i] < 127 && url[i] != '"' && url[i] != '\\' ? url[i] : '?';
        k->path[i] = 0;
        *con_cls = k;
        return MHD_YES;
    }
    if (*upload_size) {
        if (k->upload.len + *upload_size > (16u << 20)) k->too_large = true;  // the rest is read and dropped
        if (!k->too_large) tp_buf_append(&k->upload, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->too_large) return send_error(k, 413, "invalid_request_error", NULL, "the body is over 16 MiB");
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health"))
        return get ? send_json(k, 200, "{\"status\":\"ok\"}") : send_error(k, 405, "invalid_request_error", NULL, "use GET");
    if (S.api_key && !authorized(c))
        return send_error(k, 401, "invalid_request_error", "invalid_api_key",
                          "a valid API key is required (Authorization: Bearer ...)");
    if (!strcmp(url, "/v1/models"))
        return get ? send_json(k, 200, "{\"object\":\"list\",\"data\":[{\"id\":\"teacher-r1\",\"object\":\"model\"}]}")
                   : send_error(k, 405, "invalid_request_error", NULL, "use GET");
    if (strcmp(url, "/v1/chat/completions")) return send_error(k, 404, "not_found_error", NULL, "no such endpoint");
    if (!post) return send_error(k, 405, "invalid_request_error", NULL, "use POST");
    return chat(k);
}

// The end of a request, answered or not: its log line, then the connection state goes.
static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode code) {
    (void)cls, (void)c, (void)code;
    conn *k = *con_cls;
    if (!k) return;
    if (S.log_fd >= 0) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        char line[512], key[24] = "null", attempt[24] = "null", fault[24] = "null";
        if (k->chat) snprintf(key, sizeof key, "\"%016" PRIx64 "\"", k->key);
        if (k->attempt >= 0) snprintf(attempt, sizeof attempt, "%lld", k->attempt);
        if (k->fault) snprintf(fault, sizeof fault, "\"%s\"", fault_names[k->fault]);
        int n = snprintf(line, sizeof line,
                         "{\"time\":%lld.%03ld,\"path\":\"%s\",\"key\":%s,\"attempt\":%s,\"status\":%d,\"fault\":%s,"
                         "\"stream\":%s,\"bytes\":%zu}\n",
                         (long long)t.tv_sec, t.tv_nsec / 1000000, k->path, key, attempt, k->status, fault,
                         k->stream ? "true" : "false", k->bytes);
        if (write(S.log_fd, line, (size_t)n) != n) tp_warn("--log %s: a line was not written whole", S.log_path);
    }
    tp_buf_free(&k->upload), tp_buf_free(&k->out);
    free(k->ends);
    free(k);
    *con_cls = NULL;
}

// libmicrohttpd's messages, but for those of the faults that close a connection on purpose.
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = 0;
    if (strstr(msg, "Application reported internal error") || strstr(msg, "application error generating response"))
        return;
    tp_warn("%s", msg);
}

// ---- options ----

static void parse_faults(const char *spec) {
    char *copy = tp_xstrdup(spec), *save = NULL;
    double fail = 0, pace = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        if (!colon) tp_die_usage("--faults: '%s' is not KIND:RATE", tok);
        *colon = 0;
        int f = F_NONE + 1;
        while (f < F_COUNT && strcmp(tok, fault_names[f])) f++;
        if (f == F_COUNT) tp_die_usage("--faults: unknown kind '%s' (408 409 429 500 503 hang drop malformed slow keepalive)", tok);
        for (int i = 0; i < S.n_order; i++)
            if (S.order[i] == f) tp_die_usage("--faults: %s given twice", tok);
        S.rate[f] = tp_cli_double("--faults", colon + 1, 0, 1);
        S.order[S.n_order++] = f;
        *(f < F_SLOW ? &fail : &pace) += S.rate[f];
    }
    if (fail > 1 + 1e-9) tp_die_usage("--faults: the failing kinds' rates add up to %g, over 1", fail);
    if (pace > 1 + 1e-9) tp_die_usage("--faults: slow and keepalive add up to %g, over 1", pace);
    free(copy);
}

static void parse_options(int argc, char **argv) {
    static const struct option longopts[] = {
        {"host", required_argument, NULL, OPT_HOST}, {"port", required_argument, NULL, OPT_PORT},
        {"seed", required_argument, NULL, OPT_SEED}, {"faults", required_argument, NULL, OPT_FAULTS},
        {"max-faults", required_argument, NULL, OPT_MAX_FAULTS}, {"reasoning", required_argument, NULL, OPT_REASONING},
        {"token-delay-ms", required_argument, NULL, OPT_DELAY}, {"hang-ms", required_argument, NULL, OPT_HANG},
        {"api-key-env", required_argument, NULL, OPT_KEY}, {"log", required_argument, NULL, OPT_LOG},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT}, {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HOST: S.host = optarg; break;
        case OPT_PORT: S.port = tp_cli_int("--port", optarg, 0, 65535); break;
        case OPT_SEED: S.seed = (uint64_t)tp_cli_int("--seed", optarg, 0, INT64_MAX); break;
        case OPT_FAULTS: parse_faults(optarg); break;
        case OPT_MAX_FAULTS: S.max_faults = tp_cli_int("--max-faults", optarg, 0, 1000000); break;
        case OPT_DELAY: S.delay_ms = tp_cli_int("--token-delay-ms", optarg, 0, 60000); break;
        case OPT_HANG: S.hang_ms = tp_cli_int("--hang-ms", optarg, 0, 3600000); break;
        case OPT_KEY: S.key_env = optarg; break;
        case OPT_LOG: S.log_path = optarg; break;
        case OPT_TLS_CERT:
        case OPT_TLS_KEY: {
            tp_err err;
            tp_buf *b = c == OPT_TLS_CERT ? &S.tls_cert : &S.tls_key;
            if (tp_input_read_all(optarg, b, &err) < 0) tp_die_err(&err);
            tp_buf_putc(b, 0);  // libmicrohttpd takes NUL-terminated PEM
            break;
        }
        case OPT_REASONING:
            if (!strcmp(optarg, "field")) S.reasoning = R_FIELD;
            else if (!strcmp(optarg, "inline")) S.reasoning = R_INLINE;
            else if (!strcmp(optarg, "mixed")) S.reasoning = R_MIXED;
            else tp_die_usage("--reasoning: field, inline or mixed");
            break;
        default: tp_cli_common(c, usage);
        }
    }
    if (optind < argc) tp_die_usage("unexpected argument \"%s\"", argv[optind]);
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    S.host = "127.0.0.1", S.max_faults = 2, S.hang_ms = 30000;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    started = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    parse_options(argc, argv);
    if (S.key_env) {
        const char *k = getenv(S.key_env);
        if (!k || !*k) tp_die("--api-key-env %s: the variable is not set", S.key_env);
        S.api_key = tp_xstrdup(k);  // never printed
    }
    if (S.log_path) {
        S.log_fd = open(S.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (S.log_fd < 0) tp_die("--log %s: cannot open it", S.log_path);
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.port)};
    struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)S.port)};
    bool v6 = inet_pton(AF_INET6, S.host, &addr6.sin6_addr) == 1;
    if (!v6 && inet_pton(AF_INET, S.host, &addr.sin_addr) != 1)
        tp_die_usage("--host %s: not an IPv4 or IPv6 address", S.host);
    // A thousand connections need a thousand descriptors, and threads.
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) rl.rlim_cur = rl.rlim_max, setrlimit(RLIMIT_NOFILE, &rl);
    // SIGINT and SIGTERM go to the main thread only: blocked before the threads start (they
    // inherit the mask), taken in sigsuspend below, which unblocks and waits in one step.
    sigset_t stop, waiting;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, &waiting);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    bool tls = S.tls_cert.len > 0;
    if (tls != (S.tls_key.len > 0)) tp_die_usage("--tls-cert and --tls-key go together");
    if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        tp_die("--tls-cert: this libmicrohttpd was built without TLS");
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL | MHD_USE_ERROR_LOG |
            (v6 ? MHD_USE_IPv6 : 0) | (tls ? MHD_USE_TLS : 0),
        0, NULL, NULL, handle, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,  // first, to see every message
        MHD_OPTION_SOCK_ADDR, v6 ? (struct sockaddr *)&addr6 : (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED,
        completed, NULL, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096, MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 << 10),
        tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, S.tls_cert.data, MHD_OPTION_HTTPS_MEM_KEY, S.tls_key.data,
        MHD_OPTION_END);
    if (!d) tp_die("cannot listen on %s:%lld (in use, or not allowed)", S.host, S.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "%s: listening on %s://%s%s%s:%u\n", tp_program(), tls ? "https" : "http", v6 ? "[" : "", S.host,
            v6 ? "]" : "",
            di ? di->port : (unsigned)S.port);
    fflush(stderr);
    while (!atomic_load(&stopping)) sigsuspend(&waiting);
    MHD_stop_daemon(d);
    if (S.log_fd >= 0) close(S.log_fd);
    free(S.api_key), free(S.keys), free(S.counts);
    return 0;
}
