// The input layer: plain, compressed, archive members, stdin, memory, errors.
#include "input.h"
#include "test.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/input/"
static const char lines[] = "{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":2}\n{\"id\":\"c\",\"n\":3}\n";

// Reads the whole input in small, odd-sized pieces to exercise buffering.
static char *slurp(tp_input *in, size_t *len, tp_err *err, int *rc) {
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    *rc = 0;
    for (;;) {
        ssize_t k = tp_input_read(in, buf + n, n + 7 < cap ? 7 : cap - n, err);
        if (k < 0) { *rc = -1; break; }
        if (k == 0) break;
        n += (size_t)k;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static void expect_content(const char *path, const char *expected, const char *format) {
    tp_err err = {{0}};
    tp_input *in = tp_input_open(path, &err);
    CHECK_MSG(in != NULL, "%s: %s", path, err.msg);
    if (!in) return;
    size_t n;
    int rc;
    char *got = slurp(in, &n, &err, &rc);
    CHECK_MSG(rc == 0, "%s: %s", path, err.msg);
    CHECK_STR(got, expected);
    CHECK(tp_input_offset(in) == strlen(expected));
    if (format) CHECK_STR(tp_input_format(in), format);
    free(got);
    tp_input_close(in);
}

static void expect_open_error(const char *path, const char *fragment) {
    tp_err err = {{0}};
    tp_input *in = tp_input_open(path, &err);
    CHECK_MSG(in == NULL, "%s opened but should not", path);
    CHECK_CONTAINS(err.msg, fragment);
    tp_input_close(in);
}

static void test_plain_and_compressed(void) {
    expect_content(FIX "lines.jsonl", lines, "plain");
    expect_content(FIX "lines.jsonl.gz", lines, "gzip");
    expect_content(FIX "lines.jsonl.xz", lines, "xz");
    expect_content(FIX "lines.jsonl.bz2", lines, "bzip2");
    expect_content(FIX "lines.jsonl.zst", lines, "zstd");
}

static void test_concatenated_gzip_members(void) {
    char twice[sizeof lines * 2];
    snprintf(twice, sizeof twice, "%s%s", lines, lines);
    expect_content(FIX "twice.jsonl.gz", twice, "gzip");
}

static void test_archive_members(void) {
    expect_content(FIX "data.tar/dir/a.jsonl", lines, "tar");
    expect_content(FIX "data.tar/b.jsonl", "{\"id\":\"z\"}\n", "tar");
    expect_content(FIX "data.tar.gz/dir/a.jsonl", lines, "tar/gzip");
    expect_content(FIX "data.tar.zst/b.jsonl", "{\"id\":\"z\"}\n", "tar/zstd");
    expect_content(FIX "data.zip/dir/a.jsonl", lines, "zip");
    expect_content(FIX "data.zip/b.jsonl", "{\"id\":\"z\"}\n", "zip");
}

static void test_errors(void) {
    expect_open_error(FIX "nope.jsonl", "nope.jsonl: No such file or directory");
    expect_open_error(FIX, "is a directory");
    expect_open_error(FIX "data.tar.gz/missing.jsonl", "archive has no member 'missing.jsonl'");
    expect_open_error(FIX "data.tar.gz", "name the member to read, e.g. " FIX "data.tar.gz/");
    expect_open_error(FIX "data.zip", "is a zip archive");
    expect_open_error(FIX "data.tar/dir", "not a regular file");
    expect_open_error(FIX "lines.jsonl/x", "not a tar or zip archive");
    expect_open_error(FIX "lines.jsonl.gz/x", "not a tar or zip archive");
    // A truncated compressed file: what came before the cut is delivered, then an error
    // that names the file and the offset.
    tp_err err = {{0}};
    tp_input *in = tp_input_open(FIX "truncated.jsonl.gz", &err);
    CHECK_MSG(in != NULL, "%s", err.msg);
    if (in) {
        size_t n;
        int rc;
        char *got = slurp(in, &n, &err, &rc);
        CHECK(rc == -1);
        CHECK(n > 10000 && !strncmp(got, "{\"i\":1}\n{\"i\":2}\n", 16));
        char where[128];
        snprintf(where, sizeof where, "truncated.jsonl.gz: truncated gzip data after %zu bytes", n);
        CHECK_CONTAINS(err.msg, where);
        free(got);
        tp_input_close(in);
    }
    // Data after the last gzip member is an error, not silently ignored.
    in = tp_input_open(FIX "trailing.jsonl.gz", &err);
    if (in) {
        size_t n;
        int rc;
        char *got = slurp(in, &n, &err, &rc);
        CHECK(rc == -1);
        CHECK_STR(got, lines);
        CHECK_CONTAINS(err.msg, "trailing.jsonl.gz: unexpected data after the gzip stream after 51 bytes");
        free(got);
        tp_input_close(in);
    }
    expect_open_error("", "an empty file name");
}

static void test_empty_compressed_files(void) {
    expect_content(FIX "empty.jsonl.gz", "", "gzip");
    expect_content(FIX "empty.jsonl.xz", "", "xz");
}

static void test_text_is_not_tar(void) {
    // "ustar" at byte 257 of a text file without a valid tar checksum is just text.
    char text[700];
    memset(text, 'a', sizeof text);
    memcpy(text + 257, "ustard", 6);
    text[sizeof text - 1] = '\n';
    tp_err err;
    tp_input *in = tp_input_open_mem(text, sizeof text, "custard.txt", NULL, &err);
    CHECK(in != NULL && !strcmp(tp_input_format(in), "plain"));
    tp_input_close(in);
}

// A writer sends one short unit, then waits for the reader to answer: the reader
// must get it without waiting for more bytes or for the end of the pipe.
static void expect_no_wait(const char *label, const void *first, size_t n, const char *expected) {
    int data[2], go[2];
    if (pipe(data) || pipe(go)) return;
    pid_t pid = fork();
    if (pid == 0) {
        close(data[0]);
        close(go[1]);
        if (write(data[1], first, n) != (ssize_t)n) _exit(2);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(2);
        _exit(0);
    }
    close(data[1]);
    close(go[0]);
    alarm(10);  // a hang fails the test instead of stalling the suite
    int saved = dup(0);
    dup2(data[0], 0);
    close(data[0]);
    tp_err err;
    tp_input *in = tp_input_open("-", &err);
    char buf[1024] = {0};
    ssize_t got = in ? tp_input_read(in, buf, sizeof buf - 1, &err) : -1;
    // Only the first `got` bytes are data: the decoders may use the rest of buf as scratch.
    CHECK_MSG(got == (ssize_t)strlen(expected) && !memcmp(buf, expected, (size_t)got), "%s: read %zd (%s)", label,
              got, got < 0 ? err.msg : "");
    if (write(go[1], "x", 1) != 1) {}
    alarm(0);
    tp_input_close(in);
    close(go[1]);
    dup2(saved, 0);
    close(saved);
    int status;
    waitpid(pid, &status, 0);
}

static void test_pipes_do_not_wait(void) {
    char line[200];
    memset(line, 'x', sizeof line);
    line[0] = '{', line[1] = '"', line[2] = 'a', line[3] = '"', line[4] = ':', line[5] = '"';
    memcpy(line + sizeof line - 3, "\"}\n", 3);
    char expected[201];
    memcpy(expected, line, sizeof line);
    expected[200] = 0;
    expect_no_wait("a 200-byte line", line, sizeof line, expected);
    expect_no_wait("a short line", "{}\n", 3, "{}\n");
    FILE *f = fopen(FIX "lines.jsonl.gz", "rb");
    char gz[256];
    size_t n = fread(gz, 1, sizeof gz, f);
    fclose(f);
    expect_no_wait("a gzip member", gz, n, lines);
    f = fopen(FIX "lines.jsonl.zst", "rb");
    n = fread(gz, 1, sizeof gz, f);
    fclose(f);
    expect_no_wait("a zstd frame", gz, n, lines);
}

static void test_stdin(void) {
    // Point fd 0 at a compressed file: "-" sniffs stdin the same way.
    int saved = dup(0);
    int fd = open(FIX "lines.jsonl.zst", O_RDONLY);
    CHECK(fd >= 0);
    dup2(fd, 0);
    close(fd);
    tp_err err = {{0}};
    tp_input *in = tp_input_open("-", &err);
    CHECK(in != NULL);
    if (in) {
        size_t n;
        int rc;
        char *got = slurp(in, &n, &err, &rc);
        CHECK_STR(got, lines);
        CHECK_STR(tp_input_name(in), "<stdin>");
        free(got);
        tp_input_close(in);
    }
    dup2(saved, 0);
    close(saved);
}

static void test_memory(void) {
    tp_err err = {{0}};
    tp_input *in = tp_input_open_mem(lines, strlen(lines), "mem", NULL, &err);
    size_t n;
    int rc;
    char *got = slurp(in, &n, &err, &rc);
    CHECK_STR(got, lines);
    free(got);
    tp_input_close(in);
    // Compressed memory goes through the same detection.
    FILE *f = fopen(FIX "data.tar.gz", "rb");
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    in = tp_input_open_mem(buf, len, "mem.tar.gz", "dir/a.jsonl", &err);
    CHECK_MSG(in != NULL, "%s", err.msg);
    if (in) {
        got = slurp(in, &n, &err, &rc);
        CHECK_STR(got, lines);
        free(got);
        tp_input_close(in);
    }
    // An empty input is a valid empty stream.
    in = tp_input_open_mem("", 0, "empty", NULL, &err);
    char c;
    CHECK(tp_input_read(in, &c, 1, &err) == 0);
    tp_input_close(in);
}

static void test_large_plain_file(void) {
    // More than the sniff buffer and any internal block: every byte arrives once, in order.
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/big.bin", dir);
    size_t n = 3 * 1000 * 1000 + 17;
    unsigned char *data = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (unsigned char)(test_rand() >> 56);
    data[0] = 'x';  // not a compression magic
    test_write_file(path, data, n);
    tp_err err;
    tp_input *in = tp_input_open(path, &err);
    unsigned char *got = malloc(n + 1);
    ssize_t k = tp_input_read_full(in, got, n + 1, &err);
    CHECK(k == (ssize_t)n);
    CHECK(memcmp(got, data, n) == 0);
    tp_input_close(in);
    unlink(path);
    rmdir(dir);
    free(data);
    free(got);
}

int main(void) {
    RUN(test_plain_and_compressed);
    RUN(test_concatenated_gzip_members);
    RUN(test_archive_members);
    RUN(test_errors);
    RUN(test_empty_compressed_files);
    RUN(test_text_is_not_tar);
    RUN(test_pipes_do_not_wait);
    RUN(test_stdin);
    RUN(test_memory);
    RUN(test_large_plain_file);
    return TEST_SUMMARY();
}
