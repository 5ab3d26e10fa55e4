// Files that are the same file (libcore/fileio.h).
#include <unistd.h>

#include "fileio.h"
#include "test.h"

static void test_same_file(void) {
    char dir[] = "/tmp/tp_fileio_XXXXXX", a[64], b[64], link_a[64], missing[64];
    if (!mkdtemp(dir)) SKIP("mkdtemp failed");
    snprintf(a, sizeof a, "%s/a", dir), snprintf(b, sizeof b, "%s/b", dir);
    snprintf(link_a, sizeof link_a, "%s/link", dir), snprintf(missing, sizeof missing, "%s/new", dir);
    FILE *f = fopen(a, "w");
    if (f) fclose(f);
    f = fopen(b, "w");
    if (f) fclose(f);
    CHECK(symlink(a, link_a) == 0);
    CHECK(tp_same_file(a, a) && tp_same_file(a, link_a) && tp_same_file(link_a, a));
    char dotted[80];
    snprintf(dotted, sizeof dotted, "%s/./a", dir);
    CHECK(tp_same_file(a, dotted));
    CHECK(!tp_same_file(a, b));                                         // two empty files, not one
    CHECK(tp_same_file(missing, missing) && !tp_same_file(missing, a));  // not created yet: by name
    char missing_dotted[80], other_missing[80];
    snprintf(missing_dotted, sizeof missing_dotted, "%s/../%s/new", dir, strrchr(dir, '/') + 1);
    snprintf(other_missing, sizeof other_missing, "%s/new2", dir);
    CHECK(tp_same_file(missing, missing_dotted) && !tp_same_file(missing, other_missing));
    CHECK(!tp_same_file("no-such-dir/x", "other-dir/x") && tp_same_file("no-such-dir/x", "no-such-dir/x"));
    CHECK(tp_same_file("-", "-") && !tp_same_file("-", a) && !tp_same_file(a, "-"));
    CHECK(!tp_same_file("/dev/null", "/dev/null"));  // a device can take both outputs
    unlink(link_a), unlink(a), unlink(b), rmdir(dir);
}

int main(void) {
    RUN(test_same_file);
    return TEST_SUMMARY();
}
