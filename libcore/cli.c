#include "cli.h"
#include "error.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tp_cli_state tp_cli;

void tp_cli_init(int argc, char **argv) {
    tp_set_program(argc > 0 ? argv[0] : NULL);
    // getopt_long names the program from argv[0] in its own messages.
    if (argc > 0) argv[0] = (char *)tp_program();
    // getopt's own message ("unrecognized option '--x'") names the option; we add the hint.
    opterr = 1;
}

void tp_cli_common(int opt, const char *usage) {
    switch (opt) {
    case 'h':
        fputs(usage, stdout);
        exit(TP_EXIT_OK);
    case TP_OPT_VERSION:
        printf("%s (thinkpipe) %s\n", tp_program(), TP_VERSION);
        exit(TP_EXIT_OK);
    case TP_OPT_PROGRESS:
        tp_cli.progress = true;
        return;
    case 'q':
        tp_cli.quiet = true;
        return;
    case '?':
    case ':':
        fprintf(stderr, "Try '%s --help' for more information.\n", tp_program());
        exit(TP_EXIT_USAGE);
    default:
        tp_die("internal error: option %d not handled", opt);
    }
}

long long tp_cli_int(const char *option, const char *arg, long long min, long long max) {
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end)
        tp_die_usage("%s: '%s' is not a whole number", option, arg);
    if (v < min || v > max)
        tp_die_usage("%s: %lld is out of range [%lld, %lld]", option, v, min, max);
    return v;
}

double tp_cli_double(const char *option, const char *arg, double min, double max) {
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || isnan(v))
        tp_die_usage("%s: '%s' is not a number", option, arg);
    if (v < min || v > max)
        tp_die_usage("%s: %g is out of range [%g, %g]", option, v, min, max);
    return v;
}

const char *tp_cli_choice(const char *option, const char *arg, const char *choices) {
    size_t n = strlen(arg);
    for (const char *c = choices; *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && !strncmp(c, arg, n)) return arg;
        c += len + (bar != NULL);
    }
    tp_die_usage("%s: '%s' is not one of %s", option, arg, choices);
}
