// jq programs compiled once and run per record.
#include "jqprog.h"
#include "test.h"

static void test_run_and_first(void) {
    tp_err err;
    tp_jq *q = tp_jq_compile(".items[] | select(. > $min)", jv_parse("{\"min\":2}"), &err);
    CHECK_MSG(q != NULL, "%s", err.msg);
    jv in = jv_parse("{\"items\":[1,2,3,4]}");
    jv out;
    CHECK(tp_jq_run(q, in, &out, &err) == 0);
    jv s = jv_dump_string(out, 0);
    CHECK_STR(jv_string_value(s), "[3,4]");
    jv_free(s);
    bool found;
    CHECK(tp_jq_first(q, in, &out, &found, &err) == 0);
    CHECK(found && jv_number_value(out) == 3);
    jv_free(out);
    // The same compiled program runs again on the next record.
    for (int i = 0; i < 1000; i++) {
        jv rec = jv_parse("{\"items\":[5]}");
        CHECK(tp_jq_first(q, rec, &out, &found, &err) == 0 && found && jv_number_value(out) == 5);
        jv_free(out);
        jv_free(rec);
    }
    jv_free(in);
    tp_jq_free(q);
}

static void test_predicates(void) {
    tp_err err;
    tp_jq *q = tp_jq_compile(".score >= 0.5 and (.text | test(\"boxed\"))", jv_null(), &err);
    bool yes;
    jv a = jv_parse("{\"score\":0.7,\"text\":\"\\\\boxed{4}\"}"), b = jv_parse("{\"score\":0.7,\"text\":\"4\"}");
    CHECK(tp_jq_test(q, a, &yes, &err) == 0 && yes);
    CHECK(tp_jq_test(q, b, &yes, &err) == 0 && !yes);
    jv_free(a);
    jv_free(b);
    tp_jq_free(q);
    q = tp_jq_compile("empty", jv_null(), &err);
    jv n = jv_null();
    CHECK(tp_jq_test(q, n, &yes, &err) == 0 && !yes);  // no output counts as false
    tp_jq_free(q);
}

static void test_errors(void) {
    tp_err err = {{0}};
    CHECK(tp_jq_compile(".a | | .b", jv_null(), &err) == NULL);
    CHECK_CONTAINS(err.msg, "jq program '.a | | .b': ");
    CHECK_CONTAINS(err.msg, "syntax error");
    tp_jq *q = tp_jq_compile(".a + 1", jv_null(), &err);
    jv in = jv_parse("{\"a\":\"x\"}"), out;
    CHECK(tp_jq_run(q, in, &out, &err) == -1);
    CHECK_CONTAINS(err.msg, "jq program '.a + 1': string (\"x\") and number (1) cannot be added");
    bool found;
    CHECK(tp_jq_first(q, in, &out, &found, &err) == -1);
    jv_free(in);
    tp_jq_free(q);
    q = tp_jq_compile("error({\"code\":7})", jv_null(), &err);
    CHECK(tp_jq_run(q, jv_null(), &out, &err) == -1);
    CHECK_CONTAINS(err.msg, "{\"code\":7}");
    tp_jq_free(q);
}

int main(void) {
    RUN(test_run_and_first);
    RUN(test_predicates);
    RUN(test_errors);
    return TEST_SUMMARY();
}
