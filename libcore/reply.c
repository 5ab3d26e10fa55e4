// reply.c — chat completions into reasoning and content (reply.h).
#include "reply.h"

#include <stdio.h>
#include <string.h>

void tp_reply_init(tp_reply *r) {
    memset(r, 0, sizeof *r);
    r->usage = jv_null();
}

void tp_reply_free(tp_reply *r) {
    tp_buf_free(&r->reasoning), tp_buf_free(&r->content);
    jv_free(r->usage);
    memset(r, 0, sizeof *r);
}

static void add_text(tp_buf *to, jv obj, const char *key) {
    const char *s = tp_json_get_string(obj, key);
    if (s) {
        jv v = tp_json_get(obj, key);
        tp_buf_append(to, s, (size_t)jv_string_length_bytes(v));
    }
}

// The parts of one choice's delta (streamed) or message (whole).
static void take(tp_reply *r, jv part) {
    // (servers that send both fields send the same text twice)
    if (tp_json_get_string(part, "reasoning_content")) add_text(&r->reasoning, part, "reasoning_content");
    else add_text(&r->reasoning, part, "reasoning");
    add_text(&r->content, part, "content");
}

// The choices, finish_reason and usage of a chunk or a whole answer; key: "delta" or "message".
static int absorb(tp_reply *r, jv obj, const char *key, tp_err *err) {
    if (jv_get_kind(obj) != JV_KIND_OBJECT) {
        tp_err_set(err, "the answer is not a JSON object");
        return -1;
    }
    jv e = tp_json_get(obj, "error");
    if (jv_get_kind(e) == JV_KIND_OBJECT) {
        const char *msg = tp_json_get_string(e, "message");
        tp_err_set(err, "the server sent an error: %s", msg ? msg : "(no message)");
        jv_free(e);
        return -1;
    }
    jv_free(e);
    jv choices = tp_json_get(obj, "choices");
    if (jv_get_kind(choices) == JV_KIND_ARRAY && jv_array_length(jv_copy(choices)) > 0) {
        jv c = jv_array_get(jv_copy(choices), 0);
        jv part = tp_json_get(c, key);
        if (jv_get_kind(part) == JV_KIND_OBJECT) take(r, part);
        const char *f = tp_json_get_string(c, "finish_reason");
        if (f) snprintf(r->finish, sizeof r->finish, "%s", f);
        jv_free(part), jv_free(c);
    } else if (jv_get_kind(choices) != JV_KIND_ARRAY) {
        jv_free(choices);
        tp_err_set(err, "the answer has no \"choices\"");
        return -1;
    }
    jv_free(choices);
    jv u = tp_json_get(obj, "usage");
    if (jv_get_kind(u) == JV_KIND_OBJECT) jv_free(r->usage), r->usage = u;
    else jv_free(u);
    return 0;
}

int tp_reply_chunk(tp_reply *r, const char *data, size_t len, tp_err *err) {
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        r->done = true;
        return 0;
    }
    jv obj;
    if (tp_json_parse(data, len, &obj, err) < 0) return -1;
    int rc = absorb(r, obj, "delta", err);
    jv_free(obj);
    return rc;
}

int tp_reply_whole(tp_reply *r, const char *body, size_t len, tp_err *err) {
    jv obj;
    if (tp_json_parse(body, len, &obj, err) < 0) return -1;
    int rc = absorb(r, obj, "message", err);
    jv_free(obj);
    return rc;
}

static const char *find(const char *s, size_t n, const char *what) { return memmem(s, n, what, strlen(what)); }

void tp_reply_end(tp_reply *r) {
    if (r->reasoning.len > 0 || !r->content.data) return;
    const char *s = r->content.data, *end = s + r->content.len;
    size_t lead = 0;
    while (s + lead < end && strchr(" \t\r\n", s[lead])) lead++;
    const char *open = end - (s + lead) >= 7 && !memcmp(s + lead, "<think>", 7) ? s + lead : NULL;
    const char *from = open ? open + 7 : s;
    const char *close = find(from, (size_t)(end - from), "</think>");
    if (!open && !close) return;
    // <think> without </think> (a cut-off answer): all of it is reasoning
    const char *rend = close ? close : end, *rest = close ? close + 8 : end;
    tp_buf reasoning = {0}, content = {0};
    while (from < rend && (*from == '\n' || *from == '\r')) from++;
    while (rend > from && (rend[-1] == '\n' || rend[-1] == '\r')) rend--;
    tp_buf_append(&reasoning, from, (size_t)(rend - from));
    while (rest < end && strchr(" \t\r\n", *rest)) rest++;
    tp_buf_append(&content, rest, (size_t)(end - rest));
    tp_buf_free(&r->content);
    r->reasoning = reasoning, r->content = content;
    r->inline_think = true;
}
