// Tensor streams: round trips (plain, zstd), concatenation, truncation at every
// byte, corrupt headers, flushing through a pipe, write errors.
#include "tensor_stream.h"
#include "test.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

enum { RECORDS = 40 };

typedef struct sample {
    int32_t ids[600];
    uint8_t mask[600];
    float adv[3];
    uint16_t lp[5];
    int64_t n, len;
} sample;

static void make_sample(sample *s, int k) {
    s->len = 1 + (int64_t)(test_rand() % 600);
    for (int i = 0; i < s->len; i++) {
        s->ids[i] = (int32_t)(test_rand() % 151936);
        s->mask[i] = (uint8_t)(i > s->len / 3);
    }
    for (int i = 0; i < 3; i++) s->adv[i] = (float)k + (float)i / 4;
    for (int i = 0; i < 5; i++) s->lp[i] = (uint16_t)test_rand();
    s->n = k;
}

static int write_samples(tp_stream_writer *w, sample *s, int count, tp_err *err) {
    static const int64_t three[] = {3}, five[] = {1, 5};
    for (int k = 0; k < count; k++) {
        int64_t len[] = {s[k].len};
        tp_tensor_ref t[] = {{"input_ids", TP_I32, 1, len, s[k].ids}, {"loss_mask", TP_U8, 1, len, s[k].mask},
                             {"advantages", TP_F32, 1, three, s[k].adv}, {"old_logprobs", TP_BF16, 2, five, s[k].lp}};
        jv meta = k == 0 ? jv_parse("{\"producer\":\"test\",\"vocab_size\":\"151936\"}") : jv_null();
        int rc = tp_stream_write(w, t, 4, meta, err);
        jv_free(meta);
        if (rc) return -1;
    }
    return 0;
}

// Reads the stream at path and compares with the samples; returns records read.
static int check_stream(const char *path, sample *s, int count) {
    tp_err err = {{0}};
    tp_stream_reader *r = tp_stream_open(path, &err);
    CHECK_MSG(r != NULL, "%s", err.msg);
    if (!r) return -1;
    const tp_record *rec;
    int n = 0, got;
    while ((got = tp_stream_next(r, &rec, &err)) > 0) {
        const sample *e = &s[n % count];
        const tp_tensor *ids = tp_record_find(rec, "input_ids"), *mask = tp_record_find(rec, "loss_mask");
        const tp_tensor *adv = tp_record_find(rec, "advantages"), *lp = tp_record_find(rec, "old_logprobs");
        CHECK(ids && mask && adv && lp);
        if (!(ids && mask && adv && lp)) break;
        CHECK(rec->index == (uint64_t)n);
        CHECK(ids->dtype == TP_I32 && ids->shape[0] == e->len && !memcmp(ids->data, e->ids, 4 * (size_t)e->len));
        CHECK(mask->dtype == TP_U8 && !memcmp(mask->data, e->mask, (size_t)e->len));
        CHECK(!memcmp(adv->data, e->adv, sizeof e->adv) && !memcmp(lp->data, e->lp, sizeof e->lp));
        CHECK(lp->ndim == 2 && lp->shape[0] == 1 && lp->shape[1] == 5);
        CHECK(((uintptr_t)ids->data & 3) == 0);
        n++;
    }
    CHECK_MSG(got == 0, "%s", err.msg);
    jv producer = jv_object_get(jv_copy(tp_stream_metadata(r)), jv_string("producer"));
    CHECK(jv_get_kind(producer) == JV_KIND_STRING && !strcmp(jv_string_value(producer), "test"));
    jv_free(producer);
    tp_stream_close(r);
    return n;
}

static char dir[256];

static void path_in_dir(char *out, const char *name) { snprintf(out, 512, "%s/%s", dir, name); }

static void test_round_trip_plain_and_zstd(void) {
    static sample s[RECORDS];
    for (int k = 0; k < RECORDS; k++) make_sample(&s[k], k);
    for (int level = 0; level <= 19; level += level < 3 ? 1 : 16) {
        char path[512];
        path_in_dir(path, "s.stream");
        tp_err err;
        tp_stream_writer *w = tp_stream_writer_open(path, level, &err);
        CHECK(w != NULL);
        CHECK(write_samples(w, s, RECORDS / 2, &err) == 0);
        CHECK(tp_stream_writer_flush(w, &err) == 0);  // a flush mid-stream changes nothing for readers
        CHECK(write_samples(w, s + RECORDS / 2, RECORDS / 2, &err) == 0);
        CHECK(tp_stream_writer_records(w) == RECORDS);
        CHECK(tp_stream_writer_close(w, &err) == 0);
        CHECK_MSG(check_stream(path, s, RECORDS) == RECORDS, "level %d", level);
        unlink(path);
    }
}

static void test_concatenated_streams(void) {
    static sample s[4];
    for (int k = 0; k < 4; k++) make_sample(&s[k], k);
    for (int level = 0; level <= 3; level += 3) {
        char path[512];
        path_in_dir(path, "cat.stream");
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        tp_err err;
        for (int part = 0; part < 2; part++) {  // as `cat a b > c` would
            tp_stream_writer *w = tp_stream_writer_fd(fd, path, level, &err);
            CHECK(write_samples(w, s, 4, &err) == 0);
            CHECK(tp_stream_writer_close(w, &err) == 0);
        }
        close(fd);
        CHECK(check_stream(path, s, 4) == 8);
        unlink(path);
    }
}

// Writes `count` fresh samples as a stream file at zstd `level` and reads the file back into buf.
static size_t stream_file_bytes(int level, int count, unsigned char *buf, size_t cap) {
    static sample s[8];
    for (int k = 0; k < count; k++) make_sample(&s[k], k);
    char path[512];
    path_in_dir(path, "bytes.stream");
    tp_err err;
    tp_stream_writer *w = tp_stream_writer_open(path, level, &err);
    write_samples(w, s, count, &err);
    tp_stream_writer_close(w, &err);
    FILE *f = fopen(path, "rb");
    size_t len = fread(buf, 1, cap, f);
    fclose(f);
    unlink(path);
    return len;
}

static void test_every_truncation_is_reported(void) {
    tp_err err;
    static unsigned char buf[1 << 16];
    size_t len = stream_file_bytes(0, 3, buf, sizeof buf);
    // Record boundaries, from a full read.
    uint64_t starts[4] = {0};
    tp_stream_reader *r = tp_stream_from_input(tp_input_open_mem(buf, len, "t", NULL, &err));
    const tp_record *rec;
    for (int k = 0; k < 3; k++) {
        CHECK(tp_stream_next(r, &rec, &err) == 1);
        starts[k + 1] = rec->offset + rec->size;
    }
    tp_stream_close(r);
    CHECK(starts[3] == len);
    int wrong = 0;
    for (size_t cut = 0; cut < len; cut++) {
        r = tp_stream_from_input(tp_input_open_mem(buf, cut, "t", NULL, &err));
        int n = 0, got;
        while ((got = tp_stream_next(r, &rec, &err)) > 0) n++;
        tp_stream_close(r);
        bool boundary = cut == starts[0] || cut == starts[1] || cut == starts[2];
        if (boundary) {
            if (got != 0) wrong++;  // a cut between records is a shorter, valid stream
            continue;
        }
        char where[64];
        snprintf(where, sizeof where, "t: record %d at byte offset %llu: ", n, (unsigned long long)starts[n]);
        if (got != -1 || !strstr(err.msg, where) || !strstr(err.msg, "truncated")) {
            if (wrong++ < 3) fprintf(stderr, "  cut %zu: got %d, '%s'\n", cut, got, err.msg);
        }
    }
    CHECK_MSG(wrong == 0, "%d truncations misreported", wrong);
}

static void test_every_zstd_truncation_is_reported(void) {
    tp_err err;
    static unsigned char buf[1 << 16];
    size_t len = stream_file_bytes(3, 3, buf, sizeof buf);
    int wrong = 0;
    for (size_t cut = 4; cut < len; cut++) {  // past the magic: still detected as zstd
        tp_stream_reader *r = tp_stream_from_input(tp_input_open_mem(buf, cut, "z", NULL, &err));
        const tp_record *rec;
        int got;
        while ((got = tp_stream_next(r, &rec, &err)) > 0) {}
        tp_stream_close(r);
        if (got != -1 || !strstr(err.msg, "z: ")) wrong++;
    }
    CHECK_MSG(wrong == 0, "%d truncations of a zstd stream went unnoticed", wrong);
}

static void test_corrupt_records(void) {
    static sample s[2];
    for (int k = 0; k < 2; k++) make_sample(&s[k], k);
    char path[512];
    path_in_dir(path, "c.stream");
    tp_err err = {{0}};
    tp_stream_writer *w = tp_stream_writer_open(path, 0, &err);
    write_samples(w, s, 2, &err);
    tp_stream_writer_close(w, &err);
    static unsigned char buf[1 << 16];
    FILE *f = fopen(path, "rb");
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unlink(path);
    uint64_t h0 = 0;
    for (int i = 7; i >= 0; i--) h0 = h0 << 8 | buf[i];
    size_t second = 8 + h0;  // find record 1 by reading record 0
    tp_stream_reader *r = tp_stream_from_input(tp_input_open_mem(buf, len, "c", NULL, &err));
    const tp_record *rec;
    tp_stream_next(r, &rec, &err);
    second = rec->size;
    tp_stream_close(r);
    // A huge header length in record 1.
    static unsigned char bad[1 << 16];
    memcpy(bad, buf, len);
    bad[second + 6] = 0x7f;
    r = tp_stream_from_input(tp_input_open_mem(bad, len, "c", NULL, &err));
    CHECK(tp_stream_next(r, &rec, &err) == 1);
    CHECK(tp_stream_next(r, &rec, &err) == -1);
    char expect[128];
    snprintf(expect, sizeof expect, "c: record 1 at byte offset %zu: header length", second);
    CHECK_CONTAINS(err.msg, expect);
    CHECK_CONTAINS(err.msg, "out of range");
    tp_stream_close(r);
    // A broken header JSON in record 1.
    memcpy(bad, buf, len);
    bad[second + 8] = '[';
    r = tp_stream_from_input(tp_input_open_mem(bad, len, "c", NULL, &err));
    tp_stream_next(r, &rec, &err);
    CHECK(tp_stream_next(r, &rec, &err) == -1);
    CHECK_CONTAINS(err.msg, "record 1 at byte offset");
    CHECK_CONTAINS(err.msg, "header is not valid JSON");
    tp_stream_close(r);
    // JSONL where a stream belongs gets a hint.
    const char *jsonl = "{\"input_ids\":[1,2,3]}\n";
    r = tp_stream_from_input(tp_input_open_mem(jsonl, strlen(jsonl), "x.jsonl", NULL, &err));
    CHECK(tp_stream_next(r, &rec, &err) == -1);
    CHECK_CONTAINS(err.msg, "x.jsonl: record 0 at byte offset 0: header length");
    CHECK_CONTAINS(err.msg, "looks like JSON text, not a tensor stream");
    tp_stream_close(r);
    // A record is a safetensors file: the first one parses on its own.
    tp_safetensors *st = tp_safetensors_from_mem(buf, second, "rec0", &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    CHECK(st && tp_safetensors_find(st, "input_ids") != NULL);
    tp_safetensors_close(st);
}

static void on_alarm(int sig) {
    (void)sig;
    fprintf(stderr, "  timed out: a flushed record did not reach the reader\n");
    _exit(1);
}

static void test_flush_reaches_reader_through_pipe(void) {
    int data[2], go[2];
    if (pipe(data) || pipe(go)) SKIP("no pipes");
    static sample s[1];
    make_sample(&s[0], 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(data[0]);
        close(go[1]);
        tp_err err;
        tp_stream_writer *w = tp_stream_writer_fd(data[1], "pipe", 3, &err);
        write_samples(w, s, 1, &err);
        tp_stream_writer_flush(w, &err);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(2);  // wait until the parent has read the record
        write_samples(w, s, 1, &err);
        tp_stream_writer_close(w, &err);
        close(data[1]);
        _exit(0);
    }
    close(data[1]);
    close(go[0]);
    signal(SIGALRM, on_alarm);
    alarm(20);
    tp_err err;
    tp_stream_reader *r = tp_stream_from_input(tp_input_open_mem("", 0, "x", NULL, &err));
    tp_stream_close(r);
    // Read from the pipe as stdin would be.
    int saved = dup(0);
    dup2(data[0], 0);
    close(data[0]);
    r = tp_stream_open("-", &err);
    const tp_record *rec;
    CHECK(r && tp_stream_next(r, &rec, &err) == 1);
    CHECK(write(go[1], "x", 1) == 1);
    CHECK(r && tp_stream_next(r, &rec, &err) == 1);
    CHECK(r && tp_stream_next(r, &rec, &err) == 0);
    alarm(0);
    tp_stream_close(r);
    close(go[1]);
    dup2(saved, 0);
    close(saved);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_write_errors(void) {
    int fd = open("/dev/full", O_WRONLY);
    if (fd < 0) SKIP("no /dev/full");
    static sample s[1];
    make_sample(&s[0], 0);
    tp_err err = {{0}};
    tp_stream_writer *w = tp_stream_writer_fd(fd, "/dev/full", 0, &err);
    CHECK(write_samples(w, s, 1, &err) == 0);  // buffered
    CHECK(tp_stream_writer_close(w, &err) == -1);
    CHECK_CONTAINS(err.msg, "/dev/full: write failed: No space left on device");
    close(fd);
    CHECK(tp_stream_writer_fd(1, "x", 99, &err) == NULL);
    CHECK_CONTAINS(err.msg, "zstd level 99 is out of range");
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    RUN(test_round_trip_plain_and_zstd);
    RUN(test_concatenated_streams);
    RUN(test_every_truncation_is_reported);
    RUN(test_every_zstd_truncation_is_reported);
    RUN(test_corrupt_records);
    RUN(test_flush_reaches_reader_through_pipe);
    RUN(test_write_errors);
    rmdir(dir);
    return TEST_SUMMARY();
}
