// Progress lines: content, and silence unless asked for or on a terminal.
#include "cli.h"
#include "error.h"
#include "progress.h"
#include "test.h"

static void test_format(void) {
    tp_set_program("tool");
    tp_progress p = {.label = "records", .done = 50, .total = 200, .start = 10};
    char line[256];
    tp_progress_format(&p, 15, line, sizeof line);
    CHECK_STR(line, "tool: [#####...............] 50/200 records  25.0% 10/s eta 15s");
    p.total = 0;
    tp_progress_format(&p, 15, line, sizeof line);
    CHECK_STR(line, "tool: 50 records 10/s 5.0s");
}

static void test_enabled_only_when_asked(void) {
    // Tests run with stderr redirected, so the default is off.
    tp_progress p;
    tp_cli.progress = false;
    tp_cli.quiet = false;
    tp_progress_start(&p, "x", 0);
    CHECK(!p.enabled);
    tp_cli.progress = true;
    tp_progress_start(&p, "x", 0);
    CHECK(p.enabled);
    tp_cli.quiet = true;  // --quiet wins over --progress
    tp_progress_start(&p, "x", 0);
    CHECK(!p.enabled);
    tp_cli.progress = tp_cli.quiet = false;
}

static void test_error_formatting(void) {
    tp_err err;
    tp_err_set(&err, "line %d: %s", 17, "\"messages\" must be an array");
    tp_err_prefix(&err, "data.jsonl");
    CHECK_STR(err.msg, "data.jsonl: line 17: \"messages\" must be an array");
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    tp_err_set(&err, "%s", big);  // long messages are cut, never overflow
    CHECK(strlen(err.msg) == sizeof err.msg - 1);
    tp_err_prefix(&err, "%s", big);
    CHECK(strlen(err.msg) == sizeof err.msg - 1);
}

int main(void) {
    RUN(test_format);
    RUN(test_enabled_only_when_asked);
    RUN(test_error_formatting);
    return TEST_SUMMARY();
}
