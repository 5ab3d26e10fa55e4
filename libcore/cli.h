// cli.h — the options every program shares, on top of getopt_long.
//
//   static const struct option opts[] = { {"seed", required_argument, NULL, 's'}, TP_CLI_COMMON_LONGOPTS, {0} };
//   while ((c = getopt_long(argc, argv, "s:" TP_CLI_COMMON_SHORTOPTS, opts, NULL)) != -1)
//       switch (c) { case 's': ...; break; default: tp_cli_common(c, usage); }
//
// --help prints the usage text to stdout and exits 0; --version prints
// "prog (thinkpipe) VERSION"; an unknown option is a usage error (exit 2).
#ifndef TP_CLI_H
#define TP_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#ifndef TP_VERSION
#define TP_VERSION "0.0.0"
#endif

typedef struct tp_cli_state {
    bool quiet;     // --quiet: no progress, no informational lines
    bool progress;  // --progress: progress bar even when stderr is not a terminal
} tp_cli_state;
extern tp_cli_state tp_cli;

enum { TP_OPT_VERSION = 0x1000, TP_OPT_PROGRESS };

#define TP_CLI_COMMON_LONGOPTS                                                     \
    {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, TP_OPT_VERSION}, \
    {"progress", no_argument, NULL, TP_OPT_PROGRESS}, {"quiet", no_argument, NULL, 'q'}
#define TP_CLI_COMMON_SHORTOPTS "hq"

// Sets the program name for messages. Call first in main().
void tp_cli_init(int argc, char **argv);
// Handles a common option (or getopt's '?'/':'); exits for --help, --version and errors.
// Calling it with any other option character is a bug and is reported as one.
void tp_cli_common(int opt, const char *usage);
// Parses a whole-number option argument within [min, max]; a usage error otherwise.
long long tp_cli_int(const char *option, const char *arg, long long min, long long max);
double tp_cli_double(const char *option, const char *arg, double min, double max);
// arg when it is one of choices ("fp32|tf32|bf16"), else a usage error naming them.
const char *tp_cli_choice(const char *option, const char *arg, const char *choices);

#endif
