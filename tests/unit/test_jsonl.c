// JSONL reading (line numbers, offsets, line ends, malformed input) and writing.
#include "jsonl.h"
#include "test.h"

#include <fcntl.h>
#include <unistd.h>

static tp_jsonl_reader *reader_on(const char *text, const tp_jsonl_opts *opts) {
    tp_err err;
    tp_input *in = tp_input_open_mem(text, strlen(text), "t.jsonl", NULL, &err);
    return tp_jsonl_from_input(in, opts);
}

// Reads all records; returns the count, or -1 with err set.
static int read_all(const char *text, const tp_jsonl_opts *opts, tp_err *err, jv *last) {
    tp_jsonl_reader *r = reader_on(text, opts);
    jv v;
    int n = 0, got;
    if (last) *last = jv_null();
    while ((got = tp_jsonl_next(r, &v, err)) > 0) {
        n++;
        if (last) {
            jv_free(*last);
            *last = v;
        } else {
            jv_free(v);
        }
    }
    tp_jsonl_close(r);
    return got < 0 ? -1 : n;
}

static void test_lines_offsets_and_text(void) {
    const char *text = "\xEF\xBB\xBF{\"a\":1}\r\n\n  \t\n{\"b\":[1,2]}\n{\"c\":\"x\"}";
    tp_jsonl_reader *r = reader_on(text, NULL);
    tp_err err;
    jv v;
    CHECK(tp_jsonl_next(r, &v, &err) == 1);
    CHECK(tp_jsonl_line(r) == 1 && tp_jsonl_offset(r) == 0);
    size_t n;
    const char *t = tp_jsonl_text(r, &n);
    CHECK(n == 7 && !memcmp(t, "{\"a\":1}", 7));  // BOM and \r removed
    CHECK(jv_number_value(jv_object_get(v, jv_string("a"))) == 1);
    CHECK(tp_jsonl_next(r, &v, &err) == 1);
    CHECK(tp_jsonl_line(r) == 4);  // blank lines are skipped but counted
    CHECK(tp_jsonl_offset(r) == 17);
    jv_free(v);
    CHECK(tp_jsonl_next(r, &v, &err) == 1);  // last line without a newline
    CHECK(tp_jsonl_line(r) == 5);
    jv_free(v);
    CHECK(tp_jsonl_next(r, &v, &err) == 0);
    tp_jsonl_close(r);
}

static void test_malformed_lines(void) {
    static const struct { const char *text, *message; } cases[] = {
        {"{\"a\":1}\n{\"a\":\n", "t.jsonl:2: invalid JSON: expected a value at end of input"},
        {"{\"a\":1}\n\n[1,2]\n", "t.jsonl:3: expected a JSON object, got an array"},
        {"\"str\"\n", "t.jsonl:1: expected a JSON object, got a string"},
        {"{\"a\":1} {\"b\":2}\n", "t.jsonl:1: invalid JSON: unexpected text after the JSON value at column 9"},
        {"{\"a\":1}\n{a:1}\n", "t.jsonl:2: invalid JSON: expected a string key in object at column 2"},
        {"{\"a\":tru}\n", "t.jsonl:1: invalid JSON: invalid literal at column 6"},
        {"{\"a\":\"\x01\"}\n", "t.jsonl:1: invalid JSON: control characters (U+0000 to U+001F) must be "
                             "escaped in strings at column 7"},
        {"null\n", "t.jsonl:1: expected a JSON object, got null"},
        {"{\"a\":1}\n{\"a\":[1,2}\n", "t.jsonl:2: invalid JSON: expected ',' or ']' in array at column 10"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tp_err err = {{0}};
        int n = read_all(cases[i].text, NULL, &err, NULL);
        CHECK_MSG(n == -1, "case %zu read %d records", i, n);
        CHECK_CONTAINS(err.msg, cases[i].message);
        CHECK_MSG(strlen(err.msg) < 200, "message too long: %s", err.msg);  // never the whole line
    }
}

static void test_nul_byte(void) {
    static const char text[] = "{\"a\":1}\n{}\0{}\n";
    tp_err err = {{0}};
    tp_input *in = tp_input_open_mem(text, sizeof text - 1, "t.jsonl", NULL, &err);
    tp_jsonl_reader *r = tp_jsonl_from_input(in, NULL);
    jv v;
    CHECK(tp_jsonl_next(r, &v, &err) == 1);
    jv_free(v);
    CHECK(tp_jsonl_next(r, &v, &err) == -1);
    CHECK_CONTAINS(err.msg, "t.jsonl:2: invalid JSON: ");
    tp_jsonl_close(r);
}

static void test_skip_bad_counts(void) {
    tp_jsonl_opts opts = {.skip_bad = true, .max_warnings = 1};
    const char *text = "{\"a\":1}\nnot json\n{\"a\":2}\n[3]\n{\"a\":3}\n";
    tp_jsonl_reader *r = reader_on(text, &opts);
    tp_err err;
    jv v;
    int n = 0;
    while (tp_jsonl_next(r, &v, &err) > 0) {
        n++;
        jv_free(v);
    }
    CHECK(n == 3);
    CHECK(tp_jsonl_skipped(r) == 2);
    tp_jsonl_close(r);
    // allow_scalar takes any value.
    tp_jsonl_opts any = {.allow_scalar = true};
    CHECK(read_all("1\n\"x\"\n[1]\n", &any, &err, NULL) == 3);
}

static void test_long_lines(void) {
    // A line far longer than the read chunk, split across many reads.
    size_t n = 3 * 1000 * 1000;
    char *text = malloc(n + 64);
    strcpy(text, "{\"t\":\"");
    size_t len = strlen(text);
    for (size_t i = 0; i < n; i++) text[len++] = (char)('a' + i % 26);
    strcpy(text + len, "\"}\n{\"u\":1}\n");
    tp_err err;
    jv last;
    CHECK(read_all(text, NULL, &err, &last) == 2);
    CHECK(jv_number_value(jv_object_get(last, jv_string("u"))) == 1);
    free(text);
}

static void test_writer_whole_lines(void) {
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/out.jsonl", dir);
    tp_err err;
    tp_jsonl_writer *w = tp_jsonl_writer_open(path, false, &err);
    CHECK(w != NULL);
    jv rec = jv_parse("{\"id\":\"x\",\"ids\":[1,2,3],\"lp\":[-0.5,-1e-07],\"s\":\"a\\nb\"}");
    CHECK(tp_jsonl_write(w, rec, &err) == 0);
    CHECK(tp_jsonl_write_text(w, "{\"raw\":true}", 12, &err) == 0);
    CHECK(tp_jsonl_writer_close(w, &err) == 0);
    // Appending adds lines after the existing ones.
    w = tp_jsonl_writer_open(path, true, &err);
    CHECK(tp_jsonl_write(w, rec, &err) == 0);
    tp_jsonl_writer_close(w, &err);
    jv_free(rec);
    FILE *f = fopen(path, "rb");
    char buf[512] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    const char *line = "{\"id\":\"x\",\"ids\":[1,2,3],\"lp\":[-0.5,-1e-07],\"s\":\"a\\nb\"}\n";
    char expected[512];
    snprintf(expected, sizeof expected, "%s{\"raw\":true}\n%s", line, line);
    CHECK(got == strlen(expected));
    CHECK_STR(buf, expected);
    unlink(path);
    rmdir(dir);
}

static void test_writer_error_names_output(void) {
    tp_err err = {{0}};
    CHECK(tp_jsonl_writer_open("/nonexistent-dir/x.jsonl", false, &err) == NULL);
    CHECK_CONTAINS(err.msg, "/nonexistent-dir/x.jsonl: No such file or directory");
    // Writing to a full device fails with a message naming it.
    int fd = open("/dev/full", O_WRONLY);
    if (fd < 0) SKIP("no /dev/full");
    tp_jsonl_writer *w = tp_jsonl_writer_fd(fd, "/dev/full");
    jv rec = jv_parse("{\"a\":1}");
    CHECK(tp_jsonl_write(w, rec, &err) == -1);
    CHECK_CONTAINS(err.msg, "/dev/full: write failed: No space left on device");
    jv_free(rec);
    tp_jsonl_writer_close(w, &err);
    close(fd);
}

int main(void) {
    RUN(test_lines_offsets_and_text);
    RUN(test_malformed_lines);
    RUN(test_nul_byte);
    RUN(test_skip_bad_counts);
    RUN(test_long_lines);
    RUN(test_writer_whole_lines);
    RUN(test_writer_error_names_output);
    return TEST_SUMMARY();
}
