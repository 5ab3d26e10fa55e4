// tp_alloc_big (libcore/error.h): 64-byte alignment for small blocks, 2 MB alignment and
// transparent-huge-page advice for large ones (checked in /proc/self/smaps where the
// kernel has THP in "madvise" mode), none with TP_HUGE_PAGES=0, and usable memory.
#include "error.h"
#include "test.h"

#include <stdint.h>
#include <stdio.h>

// The "THPeligible:" value of the mapping that holds p (-1: no such line).
static int thp_eligible(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, found = -1;
    uintptr_t a = (uintptr_t)p;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) in = a >= lo && a < hi;
        else if (in && sscanf(line, "THPeligible: %d", &found) == 1) break;
    }
    fclose(f);
    return found;
}

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
    CHECK_MSG(thp_eligible(big) == 1, "THPeligible %d", thp_eligible(big));
    free(big);
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
