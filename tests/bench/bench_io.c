// bench_io — tensor stream and JSONL throughput, against `jq -c .` in the same run.
//
//   make bench            (or: build/release/bench/bench_io [--runs N] [--mb N])
//
// Prints medians of several runs and ratios; a benchmark, never a test.
#include "bench_median.h"
#include "cli.h"
#include "json.h"
#include "jsonl.h"
#include "progress.h"
#include "tensor_stream.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static unsigned long long rng = 88172645463325252ULL;
static unsigned long long next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

// Token ids with a text-like (Zipf-ish) distribution, so zstd sees realistic redundancy.
static int32_t token_id(void) {
    double u = (double)(next_rand() >> 11) / 9007199254740992.0;
    return (int32_t)(151936.0 * u * u * u * u);
}

enum { T = 4096 };

static double time_shell(const char *cmd);

enum { POOL = 256 };  // distinct rows, 4 MiB: more than zstd-3's window, so no record repeats in view

static void bench_stream(const char *dir, int runs, size_t mib) {
    static int32_t pool[POOL][T], pos[T];
    static uint8_t mask[T];
    for (int k = 0; k < POOL; k++)
        for (int i = 0; i < T; i++) pool[k][i] = token_id();
    for (int i = 0; i < T; i++) pos[i] = i % 1024, mask[i] = (uint8_t)(i % 1024 > 200);
    int32_t *ids = pool[0];
    int64_t shape[] = {T};
    tp_tensor_ref rec[] = {{"input_ids", TP_I32, 1, shape, ids}, {"loss_mask", TP_U8, 1, shape, mask},
                           {"position_ids", TP_I32, 1, shape, pos}};
    size_t record_bytes = (size_t)T * 9;
    size_t records = mib * 1024 * 1024 / record_bytes;
    printf("tensor stream: %zu records of %d tokens (input_ids I32, loss_mask U8, position_ids I32; %zu KiB), "
           "%.0f MiB, file in %s, median of %d runs, one core\n",
           records, T, record_bytes / 1024, (double)records * (double)record_bytes / (1 << 20), dir, runs);
    char path[512];
    snprintf(path, sizeof path, "%s/bench.stream", dir);
    const int levels[] = {0, 3};
    double peer_w[2] = {0}, peer_r[2] = {0};
    for (int l = 0; l < 2; l++) {
        double wr[32], rd[32];
        uint64_t bytes = 0, file_bytes = 0;
        for (int r = 0; r < runs; r++) {
            tp_err err;
            double t0 = tp_now();
            tp_stream_writer *w = tp_stream_writer_open(path, levels[l], &err);
            if (!w) tp_die_err(&err);
            for (size_t k = 0; k < records; k++) {
                rec[0].data = pool[k % POOL];
                if (tp_stream_write(w, rec, 3, jv_null(), &err)) tp_die_err(&err);
            }
            bytes = tp_stream_writer_bytes(w);
            if (tp_stream_writer_close(w, &err)) tp_die_err(&err);
            double t1 = tp_now();
            tp_stream_reader *rd_ = tp_stream_open(path, &err);
            const tp_record *rc;
            uint64_t sum = 0;
            int got;
            while ((got = tp_stream_next(rd_, &rc, &err)) > 0) sum += ((const int32_t *)rc->header.tensors[0].data)[7];
            if (got < 0) tp_die_err(&err);
            tp_stream_close(rd_);
            double t2 = tp_now();
            FILE *f = fopen(path, "rb");
            fseek(f, 0, SEEK_END);
            file_bytes = (uint64_t)ftell(f);
            fclose(f);
            wr[r] = (double)bytes / (t1 - t0) / 1e9;
            rd[r] = (double)bytes / (t2 - t1) / 1e9;
            if (sum == 42) printf(" ");  // keeps the read loop from being optimised away
        }
        // Peers on the same bytes: cat (plain), the zstd CLI at the same level, one thread.
        double pw[32], pr[32];
        char cmd[1400], plain[600], packed[600];
        snprintf(plain, sizeof plain, "%s.plain", path);
        snprintf(packed, sizeof packed, "%s.peer.zst", path);
        if (l == 0) rename(path, plain);
        for (int r = 0; r < runs; r++) {
            if (l == 0) {
                snprintf(cmd, sizeof cmd, "cat '%s' > '%s'", plain, packed);
                pw[r] = time_shell(cmd);
                snprintf(cmd, sizeof cmd, "cat '%s' > /dev/null", plain);
                pr[r] = time_shell(cmd);
            } else {
                snprintf(cmd, sizeof cmd, "zstd -q -3 -T1 -f -c '%s' > '%s'", plain, packed);
                pw[r] = time_shell(cmd);
                snprintf(cmd, sizeof cmd, "zstd -q -d -c '%s' > /dev/null", packed);
                pr[r] = time_shell(cmd);
            }
        }
        peer_w[l] = pw[0] < 0 ? 0 : (double)bytes / bench_median(pw, runs) / 1e9;
        peer_r[l] = pr[0] < 0 ? 0 : (double)bytes / bench_median(pr, runs) / 1e9;
        unlink(packed);
        printf("  %-6s write %6.2f GB/s (%.2fx %s)   read %6.2f GB/s (%.2fx %s)   %.2fx smaller\n",
               levels[l] ? "zstd-3" : "plain", bench_median(wr, runs), peer_w[l] > 0 ? bench_median(wr, runs) / peer_w[l] : 0,
               levels[l] ? "zstd -3 -T1" : "cat a>b", bench_median(rd, runs), peer_r[l] > 0 ? bench_median(rd, runs) / peer_r[l] : 0,
               levels[l] ? "zstd -d" : "cat a>/dev/null", (double)bytes / (double)file_bytes);
    }
    char plain[600];
    snprintf(plain, sizeof plain, "%s.plain", path);
    unlink(plain);
    unlink(path);
}

static void append_text(tp_buf *b, int words) {
    static const char *vocab[] = {"the", "answer", "is", "so", "we", "get", "Let", "me", "check", "\\frac{1}{2}",
                                  "x^2", "+", "=", "Wait,", "therefore", "\\boxed{42}", "\\n", "total", "apples",
                                  "\\\"quoted\\\"", "step", "3.5", "é", "数学", "→"};
    for (int i = 0; i < words; i++) {
        if (i) tp_buf_putc(b, ' ');
        tp_buf_puts(b, vocab[next_rand() % (sizeof vocab / sizeof vocab[0])]);
    }
}

// Trace-like and completion-like records, the two kinds of JSONL the pipeline moves most.
static size_t make_jsonl(const char *path, size_t mib) {
    FILE *f = fopen(path, "wb");
    if (!f) tp_die("%s: cannot create", path);
    tp_buf b = {0};
    size_t total = 0;
    for (int k = 0; total < mib * 1024 * 1024; k++) {
        b.len = 0;
        if (k % 2 == 0) {
            tp_buf_printf(&b, "{\"id\":\"gsm8k-%d\",\"problem\":\"", k);
            append_text(&b, 60);
            tp_buf_puts(&b, "\",\"answer\":\"42\",\"sample\":0,\"model\":\"deepseek-reasoner\",\"reasoning\":\"");
            append_text(&b, 700);
            tp_buf_puts(&b, "\",\"content\":\"");
            append_text(&b, 80);
            tp_buf_printf(&b, "\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},"
                              "\"latency_ms\":%d}\n", 80 + k % 50, 900 + k % 700, 12000 + k % 9000);
        } else {
            tp_buf_printf(&b, "{\"id\":\"gsm8k-%d/3\",\"group\":\"gsm8k-%d\",\"sample\":3,\"tokens\":[", k, k);
            for (int i = 0; i < 300; i++) tp_buf_printf(&b, i ? ",%d" : "%d", token_id());
            tp_buf_puts(&b, "],\"logprobs\":[");
            for (int i = 0; i < 300; i++) {
                char num[TP_JSON_NUMBER_MAX];
                tp_json_format_number(num, -(double)(next_rand() % 100000) / 7919.0);
                tp_buf_printf(&b, i ? ",%s" : "%s", num);
            }
            tp_buf_puts(&b, "],\"text\":\"");
            append_text(&b, 250);
            tp_buf_puts(&b, "\",\"finish_reason\":\"stop\",\"reward\":1.0}\n");
        }
        fwrite(b.data, 1, b.len, f);
        total += b.len;
    }
    fclose(f);
    tp_buf_free(&b);
    return total;
}

// Wall time of `sh -c CMD`, or -1 when it fails (the peer tool is missing).
static double time_shell(const char *cmd) {
    char *argv[] = {"sh", "-c", (char *)cmd, NULL};
    pid_t pid;
    double t0 = tp_now();
    if (posix_spawnp(&pid, "sh", NULL, NULL, argv, environ)) return -1;
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? tp_now() - t0 : -1;
}

static double time_jq(const char *path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    char *argv[] = {"jq", "-c", ".", (char *)path, NULL};
    pid_t pid;
    double t0 = tp_now();
    if (posix_spawnp(&pid, "jq", &fa, NULL, argv, environ)) return -1;
    int status;
    waitpid(pid, &status, 0);
    posix_spawn_file_actions_destroy(&fa);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? tp_now() - t0 : -1;
}

static double time_ours(const char *path, bool print) {
    tp_err err;
    double t0 = tp_now();
    tp_jsonl_reader *r = tp_jsonl_open(path, NULL, &err);
    if (!r) tp_die_err(&err);
    tp_jsonl_writer *w = print ? tp_jsonl_writer_open("/dev/null", false, &err) : NULL;
    jv v;
    int got;
    while ((got = tp_jsonl_next(r, &v, &err)) > 0) {
        if (w && tp_jsonl_write(w, v, &err)) tp_die_err(&err);
        jv_free(v);
    }
    if (got < 0) tp_die_err(&err);
    tp_jsonl_close(r);
    tp_jsonl_writer_close(w, &err);
    return tp_now() - t0;
}

static void bench_jsonl(const char *dir, int runs, size_t mib) {
    char path[512];
    snprintf(path, sizeof path, "%s/bench.jsonl", dir);
    size_t bytes = make_jsonl(path, mib);
    printf("JSONL: %.0f MB of trace and completion records, median of %d runs, one core\n", (double)bytes / 1e6, runs);
    double jq[32], parse[32], both[32];
    for (int r = 0; r < runs; r++) {
        jq[r] = time_jq(path);
        if (jq[r] < 0) {
            printf("  jq not found or failed; install it with make deps\n");
            unlink(path);
            return;
        }
        parse[r] = time_ours(path, false);
        both[r] = time_ours(path, true);
    }
    double tj = bench_median(jq, runs), tp = bench_median(parse, runs), tb = bench_median(both, runs);
    printf("  %-34s %7.1f MB/s   1.00x\n", "jq -c . (jq 1.6 CLI)", (double)bytes / tj / 1e6);
    printf("  %-34s %7.1f MB/s   %.2fx jq\n", "thinkpipe JSONL read (parse)", (double)bytes / tp / 1e6, tj / tp);
    printf("  %-34s %7.1f MB/s   %.2fx jq\n", "thinkpipe read + write (= jq -c .)", (double)bytes / tb / 1e6, tj / tb);
    unlink(path);
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    int runs = 5;
    size_t stream_mib = 512, jsonl_mib = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--runs")) runs = (int)tp_cli_int("--runs", argv[i + 1], 1, 31);
        else if (!strcmp(argv[i], "--mb")) stream_mib = jsonl_mib = (size_t)tp_cli_int("--mb", argv[i + 1], 1, 4096);
    }
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    bench_stream(dir, runs, stream_mib);
    bench_jsonl(dir, runs, jsonl_mib);
    return 0;
}
