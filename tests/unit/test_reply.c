// Server-sent events (sse.h) and chat completions gathered into traces (reply.h): events
// split at every possible byte, CRLF and CR line ends, comments and keep-alive blank lines,
// multi-line data; reasoning as reasoning_content, reasoning, or inline <think> blocks.
#include <string.h>

#include "reply.h"
#include "sse.h"
#include "test.h"

typedef struct events {
    char got[8][256];
    int n;
} events;

static int collect(void *ctx, const char *data, size_t len) {
    events *e = ctx;
    if (e->n < 8) snprintf(e->got[e->n], sizeof e->got[0], "%.*s", (int)len, data);
    e->n++;
    return 0;
}

static void test_sse_any_split(void) {
    const char *stream = ": keep-alive\n\ndata: {\"a\":1}\r\n\r\n\ndata:two\ndata: lines\r\revent: x\nid: 7\ndata: [DONE]\n\n";
    size_t n = strlen(stream);
    for (size_t cut = 0; cut <= n; cut++) {  // every split into two pieces, and byte by byte
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            tp_sse p = {0};
            events e = {0};
            if (bytewise) {
                for (size_t i = 0; i < n; i++) CHECK(tp_sse_feed(&p, stream + i, 1, 0, collect, &e) == 0);
            } else {
                CHECK(tp_sse_feed(&p, stream, cut, 0, collect, &e) == 0);
                CHECK(tp_sse_feed(&p, stream + cut, n - cut, 0, collect, &e) == 0);
            }
            CHECK_MSG(e.n == 3, "cut %zu: %d events", cut, e.n);
            CHECK(!strcmp(e.got[0], "{\"a\":1}") && !strcmp(e.got[1], "two\nlines") && !strcmp(e.got[2], "[DONE]"));
            tp_sse_free(&p);
            if (bytewise) break;
        }
    }
}

static int stop_at_second(void *ctx, const char *data, size_t len) {
    (void)data, (void)len;
    return ++*(int *)ctx == 2 ? 7 : 0;
}

static void test_sse_stop_and_limit(void) {
    tp_sse p = {0};
    int seen = 0;
    CHECK(tp_sse_feed(&p, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 27, 0, stop_at_second, &seen) == 7 && seen == 2);
    tp_sse_free(&p);
    tp_sse q = {0};
    events e = {0};
    CHECK(tp_sse_feed(&q, "data: 0123456789", 16, 8, collect, &e) == -1);  // a line over the limit
    tp_sse_free(&q);
}

static void chunks(tp_reply *r, const char *const *data, int n) {
    tp_err err;
    tp_reply_init(r);
    for (int i = 0; i < n; i++) CHECK_MSG(tp_reply_chunk(r, data[i], strlen(data[i]), &err) == 0, "%s", err.msg);
    tp_reply_end(r);
}

static void test_reply_fields_and_inline(void) {
    tp_reply r;
    const char *deepseek[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
        "{\"choices\":[{\"delta\":{\"reasoning_content\":\"12+3\",\"content\":null}}]}",
        "{\"choices\":[{\"delta\":{\"reasoning_content\":\" is 15\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"\\\\boxed{15}\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}",
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5}}", "[DONE]"};
    chunks(&r, deepseek, 7);
    CHECK(r.done && !strcmp(r.finish, "stop") && !r.inline_think);
    CHECK(r.reasoning.len == 10 && !memcmp(r.reasoning.data, "12+3 is 15", 10));
    CHECK(r.content.len == 10 && !memcmp(r.content.data, "\\boxed{15}", 10));
    CHECK(jv_get_kind(r.usage) == JV_KIND_OBJECT);
    tp_reply_free(&r);
    // both fields with the same text (some servers): taken once
    const char *both[] = {"{\"choices\":[{\"delta\":{\"reasoning_content\":\"ab\",\"reasoning\":\"ab\"}}]}"};
    chunks(&r, both, 1);
    CHECK(r.reasoning.len == 2);
    tp_reply_free(&r);
    // inline, split across chunks, with the template's <think> already in the prompt
    const char *vllm[] = {"{\"choices\":[{\"delta\":{\"content\":\"\\n<thi\"}}]}",
                          "{\"choices\":[{\"delta\":{\"content\":\"nk>\\nwork</th\"}}]}",
                          "{\"choices\":[{\"delta\":{\"content\":\"ink>\\n\\nAnswer 4\"},\"finish_reason\":\"stop\"}]}"};
    chunks(&r, vllm, 3);
    CHECK(r.inline_think && r.reasoning.len == 4 && !memcmp(r.reasoning.data, "work", 4));
    CHECK(r.content.len == 8 && !memcmp(r.content.data, "Answer 4", 8));
    tp_reply_free(&r);
    const char *opened[] = {"{\"choices\":[{\"delta\":{\"content\":\"steps\\n</think>\\n\\n42\"}}]}"};
    chunks(&r, opened, 1);
    CHECK(r.reasoning.len == 5 && r.content.len == 2);
    tp_reply_free(&r);
    const char *cut[] = {"{\"choices\":[{\"delta\":{\"content\":\"<think>\\nhalf a thou\"},\"finish_reason\":\"length\"}]}"};
    chunks(&r, cut, 1);  // unterminated: all reasoning, no content
    CHECK(r.reasoning.len == 11 && r.content.len == 0 && !strcmp(r.finish, "length"));
    tp_reply_free(&r);
    const char *plain[] = {"{\"choices\":[{\"delta\":{\"content\":\"no thinking here\"}}]}"};
    chunks(&r, plain, 1);
    CHECK(!r.inline_think && r.reasoning.len == 0 && r.content.len == 16);
    tp_reply_free(&r);
}

static void test_reply_whole_and_errors(void) {
    tp_reply r;
    tp_err err;
    tp_reply_init(&r);
    const char *body = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"x\",\"reasoning\":\"y\"},"
                       "\"finish_reason\":\"stop\"}],\"usage\":{\"total_tokens\":3}}";
    CHECK(tp_reply_whole(&r, body, strlen(body), &err) == 0);
    tp_reply_end(&r);
    CHECK(r.reasoning.len == 1 && r.content.len == 1 && !strcmp(r.finish, "stop"));
    tp_reply_free(&r);
    tp_reply_init(&r);
    CHECK(tp_reply_chunk(&r, "{\"choices\":[{\"del", 17, &err) == -1);
    const char *e = "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}";
    CHECK(tp_reply_chunk(&r, e, strlen(e), &err) == -1);
    CHECK_CONTAINS(err.msg, "overloaded");
    CHECK(tp_reply_chunk(&r, "[1,2]", 5, &err) == -1);
    tp_reply_free(&r);
}

int main(void) {
    RUN(test_sse_any_split);
    RUN(test_sse_stop_and_limit);
    RUN(test_reply_fields_and_inline);
    RUN(test_reply_whole_and_errors);
    return TEST_SUMMARY();
}
