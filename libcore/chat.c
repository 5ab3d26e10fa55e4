#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "json.h"
#include "unicode.h"

static const char *NAMES[TP_TEMPLATE_COUNT] = {"chatml", "qwen3", "deepseek-r1", "llama3", "nemo"};
static const char QWEN25_SYSTEM[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

const char *tp_template_name(tp_template t) { return t < TP_TEMPLATE_COUNT ? NAMES[t] : "?"; }

int tp_template_parse(const char *name) {
    for (int i = 0; i < TP_TEMPLATE_COUNT; i++)
        if (strcmp(name, NAMES[i]) == 0) return i;
    return -1;
}

int tp_template_auto(jv config, tp_err *err) {
    jv t = tp_json_get(config, "chat_template");
    int r = -1;
    if (jv_get_kind(t) == JV_KIND_STRING) {
        const char *s = jv_string_value(t);
        if (strstr(s, "<|im_start|>")) r = strstr(s, "<think>") ? TP_TEMPLATE_QWEN3 : TP_TEMPLATE_CHATML;
        else if (strstr(s, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>")) r = TP_TEMPLATE_DEEPSEEK_R1;
        else if (strstr(s, "<|start_header_id|>")) r = TP_TEMPLATE_LLAMA3;
        else if (strstr(s, "<extra_id_1>")) r = TP_TEMPLATE_NEMO;
        else tp_err_set(err, "tokenizer_config.json: chat_template is not one thinkpipe knows; choose --template");
    } else {
        tp_err_set(err, "tokenizer_config.json has no chat_template; choose --template");
    }
    jv_free(t);
    return r;
}

// ---- records ----

static char *str_field(jv obj, const char *key, bool required, const char *where, tp_err *err, bool *bad) {
    jv v = tp_json_get(obj, key);
    char *r = NULL;
    if (jv_get_kind(v) == JV_KIND_STRING) {
        r = tp_xstrdup(jv_string_value(v));
    } else if (required || (jv_get_kind(v) != JV_KIND_NULL && jv_get_kind(v) != JV_KIND_INVALID)) {
        tp_err_set(err, "%s\"%s\" must be a string", where, key);
        *bad = true;
    }
    jv_free(v);
    return r;
}

static void add_message(tp_chat *c, const char *role, char *content, char *reasoning) {
    c->messages = tp_xrealloc(c->messages, (size_t)(c->count + 1) * sizeof *c->messages);
    c->messages[c->count++] = (tp_chat_message){tp_xstrdup(role), content, reasoning};
}

// "<think>\n{reasoning}\n</think>\n\n{content}", the form every template trains on.
static char *think_block(const char *reasoning, const char *content) {
    tp_buf b = {0};
    tp_buf_printf(&b, "<think>\n%s\n</think>\n\n%s", reasoning, content);
    return b.data;
}

static char *fill_prompt(const char *prompt, const char *problem) {
    tp_buf b = {0};
    const char *p = prompt;
    for (const char *at; (at = strstr(p, "{problem}")); p = at + 9) {
        tp_buf_append(&b, p, (size_t)(at - p));
        tp_buf_puts(&b, problem);
    }
    tp_buf_puts(&b, p);
    tp_buf_putc(&b, 0);
    return b.data;
}

static int from_messages(jv list, tp_chat *out, tp_err *err) {
    if (jv_get_kind(list) != JV_KIND_ARRAY) {
        tp_err_set(err, "\"messages\" must be an array");
        return -1;
    }
    int n = jv_array_length(jv_copy(list));
    if (n == 0) {
        tp_err_set(err, "\"messages\" is empty");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        jv m = jv_array_get(jv_copy(list), i);
        char where[64];
        snprintf(where, sizeof where, "messages[%d].", i);
        bool bad = false;
        if (jv_get_kind(m) != JV_KIND_OBJECT) {
            tp_err_set(err, "messages[%d] must be an object", i);
            bad = true;
        }
        char *role = bad ? NULL : str_field(m, "role", true, where, err, &bad);
        char *content = bad ? NULL : str_field(m, "content", true, where, err, &bad);
        char *reasoning = bad ? NULL : str_field(m, "reasoning_content", false, where, err, &bad);
        if (!bad && strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
            tp_err_set(err, "messages[%d].role \"%s\" is not supported (system, user or assistant)", i, role);
            bad = true;
        }
        jv_free(m);
        if (bad) {
            free(role);
            free(content);
            free(reasoning);
            return -1;
        }
        if (reasoning) {
            // A reasoning_content field joins the content as a <think> block.
            char *joined = think_block(reasoning, content);
            free(content);
            free(reasoning);
            content = joined;
        }
        add_message(out, role, content, NULL);
        free(role);
    }
    return 0;
}

static int from_trace(jv rec, const char *prompt, tp_chat *out, tp_err *err) {
    bool bad = false;
    char *problem = str_field(rec, "problem", true, "", err, &bad);
    char *reasoning = bad ? NULL : str_field(rec, "reasoning", false, "", err, &bad);
    char *content = bad ? NULL : str_field(rec, "content", true, "", err, &bad);
    char *system = bad ? NULL : str_field(rec, "system", false, "", err, &bad);
    if (bad) {
        free(problem);
        free(reasoning);
        free(content);
        free(system);
        return -1;
    }
    if (system) add_message(out, "system", system, NULL);
    add_message(out, "user", fill_prompt(prompt ? prompt : TP_DEFAULT_PROMPT, problem), NULL);
    if (reasoning) {
        add_message(out, "assistant", think_block(reasoning, content), NULL);
        free(content);
    } else {
        add_message(out, "assistant", content, NULL);
    }
    free(reasoning);
    free(problem);
    return 0;
}

int tp_chat_from_record(jv rec, const char *prompt, tp_chat *out, tp_err *err) {
    memset(out, 0, sizeof *out);
    jv messages = tp_json_get(rec, "messages");
    jv problem = tp_json_get(rec, "problem");
    int rc;
    if (jv_get_kind(messages) != JV_KIND_INVALID && jv_get_kind(messages) != JV_KIND_NULL) {
        rc = from_messages(messages, out, err);
    } else if (jv_get_kind(problem) != JV_KIND_INVALID) {
        rc = from_trace(rec, prompt, out, err);
    } else {
        tp_err_set(err, "expected \"messages\" or a trace (\"problem\", \"reasoning\", \"content\")");
        rc = -1;
    }
    jv_free(messages);
    jv_free(problem);
    if (rc < 0) tp_chat_free(out);
    return rc;
}

static bool has_field(jv rec, const char *key) {
    jv v = tp_json_get(rec, key);
    bool has = jv_get_kind(v) != JV_KIND_INVALID && jv_get_kind(v) != JV_KIND_NULL;
    jv_free(v);
    return has;
}

int tp_chat_from_problem(jv rec, const char *prompt, const char *system, tp_chat *out, tp_err *err) {
    memset(out, 0, sizeof *out);
    jv messages = tp_json_get(rec, "messages");
    int rc = 0;
    bool bad = false;
    if (jv_get_kind(messages) != JV_KIND_INVALID && jv_get_kind(messages) != JV_KIND_NULL) {
        tp_chat m;
        memset(&m, 0, sizeof m);
        rc = from_messages(messages, &m, err);
        if (rc == 0) {
            if (system && !(m.count > 0 && strcmp(m.messages[0].role, "system") == 0))
                add_message(out, "system", tp_xstrdup(system), NULL);
            for (int i = 0; i < m.count; i++) {
                add_message(out, m.messages[i].role, m.messages[i].content, m.messages[i].reasoning);
                free(m.messages[i].role);
            }
            free(m.messages);
        }
    } else if (!has_field(rec, "problem")) {
        tp_err_set(err, "a problem needs \"problem\" (a string) or \"messages\"");
        rc = -1;
    } else {
        char *problem = str_field(rec, "problem", true, "", err, &bad);
        char *own = bad ? NULL : str_field(rec, "system", false, "", err, &bad);
        if (bad) {
            free(problem), free(own);
            rc = -1;
        } else {
            if (own || system) add_message(out, "system", own ? own : tp_xstrdup(system), NULL);
            add_message(out, "user", fill_prompt(prompt ? prompt : TP_DEFAULT_PROMPT, problem), NULL);
            free(problem);
        }
    }
    jv_free(messages);
    if (rc < 0) tp_chat_free(out);
    return rc;
}

void tp_chat_free(tp_chat *c) {
    for (int i = 0; i < c->count; i++) {
        free(c->messages[i].role);
        free(c->messages[i].content);
        free(c->messages[i].reasoning);
    }
    free(c->messages);
    memset(c, 0, sizeof *c);
}

void tp_chat_render_free(tp_chat_render *r) {
    tp_buf_free(&r->text);
    free(r->spans);
    memset(r, 0, sizeof *r);
}

// ---- rendering ----

static void put(tp_chat_render *r, const char *s) { tp_buf_puts(&r->text, s); }
static void put_n(tp_chat_render *r, const char *s, size_t n) { tp_buf_append(&r->text, s, n); }

static void span_begin(tp_chat_render *r, int turn) {
    if (r->n_spans == r->cap_spans) {
        r->cap_spans = r->cap_spans ? r->cap_spans * 2 : 8;
        r->spans = tp_xrealloc(r->spans, (size_t)r->cap_spans * sizeof *r->spans);
    }
    r->spans[r->n_spans++] = (tp_chat_span){r->text.len, r->text.len, turn};
}
static void span_end(tp_chat_render *r) { r->spans[r->n_spans - 1].end = r->text.len; }

// Python's str.isspace(), which Jinja's trim filter (str.strip) uses.
static bool py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static void trimmed(const char *s, const char **start, size_t *len) {
    size_t n = strlen(s), a = 0, b = n;
    while (a < n) {
        uint32_t cp;
        int l = tp_utf8_next((const unsigned char *)s + a, &cp);
        if (!py_space(cp)) break;
        a += (size_t)l;
    }
    while (b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        uint32_t cp;
        tp_utf8_next((const unsigned char *)s + k, &cp);
        if (!py_space(cp)) break;
        b = k;
    }
    *start = s + a;
    *len = b - a;
}

static void render_chatml(const tp_chat *c, tp_chat_render *r) {
    int first = 0;
    put(r, "<|im_start|>system\n");
    if (c->count > 0 && strcmp(c->messages[0].role, "system") == 0) {
        put(r, c->messages[0].content);
        first = 1;
    } else {
        put(r, QWEN25_SYSTEM);
    }
    put(r, "<|im_end|>\n");
    for (int i = first; i < c->count; i++) {
        const tp_chat_message *m = &c->messages[i];
        put(r, "<|im_start|>");
        put(r, m->role);
        put(r, "\n");
        bool train = strcmp(m->role, "assistant") == 0;
        if (train) span_begin(r, i);
        put(r, m->content);
        put(r, "<|im_end|>");
        if (train) span_end(r);
        put(r, "\n");
    }
}

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

// Python's str.split(sep)[-1] / [0] and strip('\n') variants, on [s, s+n).
static const char *last_after(const char *s, const char *sep) {
    const char *r = s;
    for (const char *at; (at = strstr(r, sep));) r = at + strlen(sep);
    return r;
}

static void strip_nl(const char **s, size_t *n, bool left, bool right) {
    while (left && *n > 0 && **s == '\n') { (*s)++; (*n)--; }
    while (right && *n > 0 && (*s)[*n - 1] == '\n') (*n)--;
}

static void render_qwen3(const tp_chat *c, tp_chat_render *r) {
    if (c->count > 0 && strcmp(c->messages[0].role, "system") == 0) {
        put(r, "<|im_start|>system\n");
        put(r, c->messages[0].content);
        put(r, "<|im_end|>\n");
    }
    int last_query = c->count - 1;
    for (int i = c->count - 1; i >= 0; i--) {
        const tp_chat_message *m = &c->messages[i];
        if (strcmp(m->role, "user") == 0 &&
            !(starts_with(m->content, "<tool_response>") && tp_ends_with(m->content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < c->count; i++) {
        const tp_chat_message *m = &c->messages[i];
        if (strcmp(m->role, "user") == 0 || (strcmp(m->role, "system") == 0 && i > 0)) {
            put(r, "<|im_start|>");
            put(r, m->role);
            put(r, "\n");
            put(r, m->content);
            put(r, "<|im_end|>\n");
            continue;
        }
        if (strcmp(m->role, "assistant") != 0) continue;
        const char *content = m->content, *reasoning = "";
        size_t content_len = strlen(content), reasoning_len = 0;
        const char *close = strstr(m->content, "</think>");
        if (close) {
            content = last_after(m->content, "</think>");
            content_len = strlen(content);
            strip_nl(&content, &content_len, true, false);
            // split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
            const char *head = m->content;
            size_t head_len = (size_t)(close - head);
            strip_nl(&head, &head_len, false, true);
            reasoning = head;
            for (const char *at = head; (at = strstr(at, "<think>")) && at + 7 <= head + head_len;)
                reasoning = at = at + 7;
            reasoning_len = head_len - (size_t)(reasoning - head);
            strip_nl(&reasoning, &reasoning_len, true, false);
        }
        put(r, "<|im_start|>assistant\n");
        span_begin(r, i);
        if (i > last_query && (i == c->count - 1 || reasoning_len > 0)) {
            strip_nl(&reasoning, &reasoning_len, true, true);
            strip_nl(&content, &content_len, true, false);
            put(r, "<think>\n");
            put_n(r, reasoning, reasoning_len);
            put(r, "\n</think>\n\n");
        }
        put_n(r, content, content_len);
        put(r, "<|im_end|>");
        span_end(r);
        put(r, "\n");
    }
}

static void render_deepseek(const tp_chat *c, const char *bos, tp_chat_render *r) {
    put(r, bos);
    bool first_system = true;
    for (int i = 0; i < c->count; i++) {
        if (strcmp(c->messages[i].role, "system") != 0) continue;
        if (!first_system) put(r, "\n\n");
        put(r, c->messages[i].content);
        first_system = false;
    }
    for (int i = 0; i < c->count; i++) {
        const tp_chat_message *m = &c->messages[i];
        if (strcmp(m->role, "user") == 0) {
            put(r, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>");
            put(r, m->content);
        } else if (strcmp(m->role, "assistant") == 0) {
            put(r, "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>");
            span_begin(r, i);
            put(r, m->content);
            put(r, "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>");
            span_end(r);
        }
    }
}

static void render_llama3(const tp_chat *c, const char *bos, tp_chat_render *r) {
    for (int i = 0; i < c->count; i++) {
        const tp_chat_message *m = &c->messages[i];
        if (i == 0) put(r, bos);
        put(r, "<|start_header_id|>");
        put(r, m->role);
        put(r, "<|end_header_id|>\n\n");
        bool train = strcmp(m->role, "assistant") == 0;
        if (train) span_begin(r, i);
        const char *s;
        size_t n;
        trimmed(m->content, &s, &n);
        put_n(r, s, n);
        put(r, "<|eot_id|>");
        if (train) span_end(r);
    }
    // The template always ends with an assistant header (its generation prompt).
    put(r, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_nemo(const tp_chat *c, tp_chat_render *r) {
    int first = 0;
    put(r, "<extra_id_0>System\n");
    if (c->count > 0 && strcmp(c->messages[0].role, "system") == 0) {
        put(r, c->messages[0].content);
        first = 1;
    }
    put(r, "\n");
    for (int i = first; i < c->count; i++) {
        const tp_chat_message *m = &c->messages[i];
        bool train = strcmp(m->role, "assistant") == 0;
        put(r, train ? "<extra_id_1>Assistant\n" : strcmp(m->role, "user") == 0 ? "<extra_id_1>User\n"
                                                                                 : "<extra_id_1>System\n");
        if (train) span_begin(r, i);
        put(r, m->content);
        put(r, "\n");
        if (train) span_end(r);
    }
}

int tp_chat_render_text(tp_template t, const tp_chat *chat, const char *bos, tp_chat_render *r, tp_err *err) {
    r->text.len = 0;
    r->n_spans = 0;
    switch (t) {
    case TP_TEMPLATE_CHATML: render_chatml(chat, r); break;
    case TP_TEMPLATE_QWEN3: render_qwen3(chat, r); break;
    case TP_TEMPLATE_DEEPSEEK_R1: render_deepseek(chat, bos ? bos : "", r); break;
    case TP_TEMPLATE_LLAMA3: render_llama3(chat, bos ? bos : "", r); break;
    case TP_TEMPLATE_NEMO: render_nemo(chat, r); break;
    default: tp_err_set(err, "unknown template %d", (int)t); return -1;
    }
    tp_buf_putc(&r->text, 0);  // keep the text NUL-terminated for callers; not counted
    r->text.len--;
    return 0;
}

int tp_chat_render_prompt(tp_template t, const tp_chat *chat, const char *bos, tp_chat_render *r, tp_err *err) {
    if (tp_chat_render_text(t, chat, bos, r, err) < 0) return -1;
    static const char *const GEN[TP_TEMPLATE_COUNT] = {
        [TP_TEMPLATE_CHATML] = "<|im_start|>assistant\n",
        [TP_TEMPLATE_QWEN3] = "<|im_start|>assistant\n",
        [TP_TEMPLATE_DEEPSEEK_R1] = ("<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C><think>\n"),
        [TP_TEMPLATE_LLAMA3] = "",  // render_llama3 already ends with the assistant header
        [TP_TEMPLATE_NEMO] = "<extra_id_1>Assistant\n",
    };
    put(r, GEN[t]);
    tp_buf_putc(&r->text, 0);
    r->text.len--;
    return 0;
}

const char *tp_template_end_of_turn(tp_template t) {
    static const char *const EOT[TP_TEMPLATE_COUNT] = {
        [TP_TEMPLATE_CHATML] = "<|im_end|>",
        [TP_TEMPLATE_QWEN3] = "<|im_end|>",
        [TP_TEMPLATE_DEEPSEEK_R1] = ("<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"),
        [TP_TEMPLATE_LLAMA3] = "<|eot_id|>",
        [TP_TEMPLATE_NEMO] = "<extra_id_1>",
    };
    return EOT[t];
}

const char *tp_template_bos(tp_template t, const tp_tokenizer *tok) {
    if (t != TP_TEMPLATE_DEEPSEEK_R1 && t != TP_TEMPLATE_LLAMA3) return "";
    const char *bos = tp_tokenizer_config_token(tok, "bos_token");
    if (bos) return bos;
    return t == TP_TEMPLATE_LLAMA3 ? "<|begin_of_text|>"
                                   : "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
}

int tp_template_resolve(const char *name, const tp_tokenizer *tok, tp_err *err) {
    if (strcmp(name, "auto") == 0) {
        jv cfg = tp_tokenizer_config(tok);
        int tm = tp_template_auto(cfg, err);
        jv_free(cfg);
        return tm;
    }
    int tm = tp_template_parse(name);
    if (tm < 0) tp_err_set(err, "unknown template \"%s\" (chatml, qwen3, deepseek-r1, llama3, nemo, auto)", name);
    return tm;
}

int tp_chat_prompt_ids(const tp_tokenizer *tok, tp_tok_state *st, tp_template t, jv record, const char *prompt,
                       const char *system, tp_ids *ids, tp_err *err) {
    tp_chat chat;
    if (tp_chat_from_problem(record, prompt, system, &chat, err) < 0) return -1;
    tp_chat_normalize(&chat, tok);
    tp_chat_render r = {0};
    int rc = tp_chat_render_prompt(t, &chat, tp_template_bos(t, tok), &r, err);
    if (rc == 0) rc = tp_tokenizer_encode(tok, st, r.text.data, r.text.len, false, ids, err);
    tp_chat_render_free(&r);
    tp_chat_free(&chat);
    return rc < 0 ? -1 : 0;
}
