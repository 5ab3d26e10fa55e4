// tp_alloc_big (libcore/error.h): 64-byte alignment for small blocks, 2 MB alignment and
// transparent-huge-page advice for large ones (checked in /proc/self/smaps where the
// kernel has THP in "madvise" mode), none with TP_HUGE_PAGES=0 or tp_alloc_lines, none
// left behind on memory that plain malloc hands out after a big block is freed.
#include "error.h"
#include "test.h"

#include <stdint.h>
#include <stdio.h>

// The "THPeligible:" value of the mapping that holds p (-1: no such line); *heap: whether
// that mapping is the brk heap.
static int thp_eligible_in(const void *p, bool *heap) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, found = -1;
    uintptr_t a = (uintptr_t)p;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = a >= lo && a < hi;
            if (in && heap) *heap = strstr(line, "[heap]") != NULL;
        } else if (in && sscanf(line, "THPeligible: %d", &found) == 1) break;
    }
    fclose(f);
    return found;
}

static int thp_eligible(const void *p) { return thp_eligible_in(p, NULL); }

static bool thp_mode_is(const char *mode) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return false;
    char line[128] = "";
    bool is = fgets(line, sizeof line, f) && strstr(line, mode);
    fclose(f);
    return is;
}

static void test_alignment_and_use(void) {
    const size_t sizes[] = {0, 1, 63, 4096, ((size_t)2 << 20) - 64, (size_t)2 << 20, ((size_t)5 << 20) + 7};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = tp_alloc_big(sizes[i]);
        CHECK(p != NULL);
        if (!p) continue;
        size_t align = sizes[i] >= TP_HUGE_PAGE ? TP_HUGE_PAGE : 64;
        CHECK_MSG((uintptr_t)p % align == 0, "%zu bytes at %p", sizes[i], (void *)p);
        memset(p, 0xab, sizes[i] ? sizes[i] : 1);
        CHECK(p[sizes[i] ? sizes[i] - 1 : 0] == 0xab);
        free(p);
    }
}

static void test_huge_page_advice(void) {
    if (!thp_mode_is("[madvise]")) SKIP("transparent huge pages are not in madvise mode here");
    size_t bytes = (size_t)8 << 20;
    unsigned char *big = tp_alloc_big(bytes);
    CHECK(big != NULL);
    if (!big) return;
    memset(big, 1, bytes);
    if (thp_eligible(big) < 0) {
        free(big);
        SKIP("no THPeligible in /proc/self/smaps (an older kernel)");
    }
    CHECK_MSG(thp_eligible(big) == 1, "THPeligible %d", thp_eligible(big));
    free(big);
    // Once a big block is freed glibc would serve the next ones from its heap, where the
    // advice would outlive them: they must still get mappings of their own.
    for (int i = 0; i < 4; i++) {
        unsigned char *next = tp_alloc_big(((size_t)3 + i) << 20);
        bool heap = true;
        if (next) memset(next, 4, (size_t)3 << 20);
        CHECK_MSG(next && thp_eligible_in(next, &heap) == 1 && !heap, "a %d MB block after a free: in the heap", 3 + i);
        free(next);
    }
    for (int i = 0; i < 4; i++) {
        unsigned char *plain = malloc(((size_t)3 + i) << 20);
        CHECK(plain != NULL);
        if (!plain) continue;
        memset(plain, 2, (size_t)3 << 20);
        CHECK_MSG(thp_eligible(plain) == 0, "a plain %d MB block: THPeligible %d", 3 + i, thp_eligible(plain));
        free(plain);
    }
    unsigned char *lines = tp_alloc_lines(bytes);
    CHECK(lines != NULL && (uintptr_t)lines % 64 == 0);
    if (lines) {
        memset(lines, 3, bytes);
        CHECK(thp_eligible(lines) == 0);
    }
    free(lines);
    setenv("TP_HUGE_PAGES", "0", 1);
    big = tp_alloc_big(bytes);
    CHECK(big != NULL);
    if (big) CHECK_MSG(thp_eligible(big) == 0, "with TP_HUGE_PAGES=0: THPeligible %d", thp_eligible(big));
    free(big);
    unsetenv("TP_HUGE_PAGES");
}

int main(void) {
    RUN(test_alignment_and_use);
    RUN(test_huge_page_advice);
    return TEST_SUMMARY();
}
