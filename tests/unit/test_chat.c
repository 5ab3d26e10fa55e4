// Chat templates against jinja2 renderings of the models' own templates
// (tests/ref/make_chat_fixtures.py), trained spans, and record errors.
#include "chat.h"
#include "json.h"
#include "jsonl.h"
#include "test.h"

static const char *bos_for(tp_template t) {
    if (t == TP_TEMPLATE_DEEPSEEK_R1) return "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
    if (t == TP_TEMPLATE_LLAMA3) return "<|begin_of_text|>";
    return "";
}

static void test_renderings_match_jinja(void) {
    tp_err err;
    tp_jsonl_reader *r = tp_jsonl_open("tests/fixtures/chat/rendered.jsonl", NULL, &err);
    CHECK_MSG(r, "%s", err.msg);
    if (!r) return;
    jv rec;
    int n = 0, seen[TP_TEMPLATE_COUNT] = {0};
    tp_chat_render out = {0};
    while (tp_jsonl_next(r, &rec, &err) == 1) {
        jv name = jv_object_get(jv_copy(rec), jv_string("template"));
        jv record = jv_object_get(jv_copy(rec), jv_string("record"));
        jv text = jv_object_get(jv_copy(rec), jv_string("text"));
        int t = tp_template_parse(jv_string_value(name));
        CHECK(t >= 0);
        tp_chat chat;
        if (t >= 0 && tp_chat_from_record(record, NULL, &chat, &err) == 0) {
            seen[t]++;
            CHECK(tp_chat_render_text((tp_template)t, &chat, bos_for((tp_template)t), &out, &err) == 0);
            CHECK_MSG(out.text.len == (size_t)jv_string_length_bytes(jv_copy(text)) &&
                          memcmp(out.text.data, jv_string_value(text), out.text.len) == 0,
                      "line %d (%s):\n  got:  %s\n  want: %s", n + 1, jv_string_value(name), out.text.data,
                      jv_string_value(text));
            // Each trained span ends with the template's end-of-turn text and every
            // assistant message has one.
            int assistants = 0;
            for (int i = 0; i < chat.count; i++) assistants += strcmp(chat.messages[i].role, "assistant") == 0;
            CHECK(out.n_spans == assistants);
            static const char *eot[] = {"<|im_end|>", "<|im_end|>",
                                        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                                        "<|eot_id|>", "\n"};
            for (int s = 0; s < out.n_spans; s++) {
                const tp_chat_span *sp = &out.spans[s];
                size_t k = strlen(eot[t]);
                CHECK(sp->end <= out.text.len && sp->start < sp->end && sp->end - sp->start >= k &&
                      memcmp(out.text.data + sp->end - k, eot[t], k) == 0);
            }
            tp_chat_free(&chat);
        } else {
            CHECK_MSG(0, "line %d: %s", n + 1, err.msg);
        }
        jv_free(name);
        jv_free(record);
        jv_free(text);
        jv_free(rec);
        n++;
    }
    tp_jsonl_close(r);
    tp_chat_render_free(&out);
    CHECK(n >= 60);
    for (int t = 0; t < TP_TEMPLATE_COUNT; t++) CHECK_MSG(seen[t] >= 10, "template %s: %d renderings", tp_template_name((tp_template)t), seen[t]);
}

static int record_error(const char *json, tp_err *err) {
    jv v;
    if (tp_json_parse(json, strlen(json), &v, err) < 0) return -2;
    tp_chat chat;
    int rc = tp_chat_from_record(v, NULL, &chat, err);
    if (rc == 0) tp_chat_free(&chat);
    jv_free(v);
    return rc;
}

static void test_record_errors(void) {
    tp_err err;
    CHECK(record_error("{\"text\":\"x\"}", &err) < 0);
    CHECK_CONTAINS(err.msg, "expected \"messages\" or a trace");
    CHECK(record_error("{\"messages\":{}}", &err) < 0);
    CHECK_CONTAINS(err.msg, "\"messages\" must be an array");
    CHECK(record_error("{\"messages\":[]}", &err) < 0);
    CHECK_CONTAINS(err.msg, "\"messages\" is empty");
    CHECK(record_error("{\"messages\":[{\"role\":\"user\",\"content\":1}]}", &err) < 0);
    CHECK_CONTAINS(err.msg, "messages[0].\"content\" must be a string");
    CHECK(record_error("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"tool\",\"content\":\"b\"}]}", &err) < 0);
    CHECK_CONTAINS(err.msg, "messages[1].role \"tool\" is not supported");
    CHECK(record_error("{\"problem\":\"p\",\"reasoning\":\"r\"}", &err) < 0);
    CHECK_CONTAINS(err.msg, "\"content\" must be a string");
    CHECK(record_error("{\"problem\":\"p\",\"reasoning\":3,\"content\":\"c\"}", &err) < 0);
    CHECK_CONTAINS(err.msg, "\"reasoning\" must be a string");
}

static void test_prompt_and_auto(void) {
    jv v;
    tp_err err;
    const char *rec = "{\"problem\":\"P1\",\"reasoning\":\"R\",\"content\":\"C\"}";
    CHECK(tp_json_parse(rec, strlen(rec), &v, &err) == 0);
    tp_chat chat;
    CHECK(tp_chat_from_record(v, "Q: {problem} / {problem}", &chat, &err) == 0);
    CHECK(chat.count == 2);
    CHECK_STR(chat.messages[0].content, "Q: P1 / P1");
    CHECK_STR(chat.messages[1].content, "<think>\nR\n</think>\n\nC");
    tp_chat_free(&chat);
    jv_free(v);
    const char *cfg = "{\"chat_template\":\"{{'<|im_start|>' + m}}<think>\"}";
    CHECK(tp_json_parse(cfg, strlen(cfg), &v, &err) == 0);
    CHECK(tp_template_auto(v, &err) == TP_TEMPLATE_QWEN3);
    jv_free(v);
    CHECK(tp_template_auto(jv_null(), &err) < 0);
    CHECK_CONTAINS(err.msg, "no chat_template");
}

int main(void) {
    RUN(test_renderings_match_jinja);
    RUN(test_record_errors);
    RUN(test_prompt_and_auto);
    return TEST_SUMMARY();
}
