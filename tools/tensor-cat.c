// tensor-cat — print, check and build thinkpipe tensor streams (man 1 tensor-cat).
#include "cli.h"
#include "error.h"
#include "json.h"
#include "jsonl.h"
#include "progress.h"
#include "tensor_stream.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "Usage: tensor-cat [OPTIONS] [FILE...]\n"
    "Print, check and build thinkpipe tensor streams (and .safetensors files).\n"
    "\n"
    "Reads each FILE (none or '-': standard input; .zst/.gz/.xz/.bz2 and\n"
    "ARCHIVE/MEMBER work as everywhere in thinkpipe) and writes one JSON line\n"
    "per record: {\"file\",\"record\",\"offset\",\"bytes\",\"tensors\":{NAME:\n"
    "{\"dtype\",\"shape\"}},\"metadata\"}.\n"
    "\n"
    "  -v, --values        add each tensor's values as \"data\" (a flat array)\n"
    "  -c, --check         validate only; print a summary on stderr\n"
    "  -p, --pack          the reverse: read JSON lines shaped like --values output\n"
    "                      ({\"tensors\":{NAME:{\"dtype\",\"shape\",\"data\"}},\"metadata\"})\n"
    "                      and write a tensor stream\n"
    "  -z, --zstd LEVEL    with --pack: compress the stream with zstd (1-19)\n"
    "  -o, --output FILE   write to FILE instead of standard output\n"
    "      --progress      show progress even when stderr is not a terminal\n"
    "  -q, --quiet         no progress, no summary\n"
    "  -h, --help          this text\n"
    "      --version       print the version\n"
    "\n"
    "Exit status: 0 ok, 1 bad input or I/O error, 2 usage error.\n"
    "See tensor-cat(1) and thinkpipe-stream(5).\n";

typedef struct options {
    bool values, check, pack;
    int zstd_level;
    const char *output;
} options;

static void dump_record(tp_buf *b, const char *file, const tp_record *rec, bool values) {
    b->len = 0;
    tp_buf_puts(b, "{\"file\":");
    jv name = jv_string(file);  // a path need not be valid UTF-8; JSON text must be
    tp_json_dump(b, name);
    jv_free(name);
    tp_buf_printf(b, ",\"record\":%llu,\"offset\":%llu,\"bytes\":%llu,\"tensors\":{", (unsigned long long)rec->index,
                  (unsigned long long)rec->offset, (unsigned long long)rec->size);
    for (int i = 0; i < rec->header.count; i++) {
        const tp_tensor *t = &rec->header.tensors[i];
        if (i) tp_buf_putc(b, ',');
        tp_json_dump_string(b, t->name, strlen(t->name));
        tp_buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", tp_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) tp_buf_printf(b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        tp_buf_putc(b, ']');
        if (values) {
            tp_buf_puts(b, ",\"data\":[");
            uint64_t n = tp_tensor_numel(t);
            for (uint64_t k = 0; k < n; k++) {
                if (k) tp_buf_putc(b, ',');
                tp_buf_reserve(b, TP_JSON_NUMBER_MAX);
                b->len += (size_t)tp_json_format_number(b->data + b->len, tp_tensor_get(t->data, t->dtype, k));
            }
            tp_buf_putc(b, ']');
        }
        tp_buf_putc(b, '}');
    }
    tp_buf_puts(b, "},\"metadata\":");
    tp_json_dump(b, rec->header.metadata);
    tp_buf_putc(b, '}');
}

static void print_streams(char **files, int nfiles, const options *o, tp_jsonl_writer *out) {
    tp_buf line = {0};
    tp_progress progress;
    tp_progress_start(&progress, "records", 0);
    uint64_t records = 0, bytes = 0;
    tp_err err;
    for (int f = 0; f < nfiles; f++) {
        tp_stream_reader *r = tp_stream_open(files[f], &err);
        if (!r) tp_die_err(&err);
        const tp_record *rec;
        int got;
        while ((got = tp_stream_next(r, &rec, &err)) > 0) {
            records++;
            bytes += rec->size;
            tp_progress_update(&progress, records);
            if (o->check) continue;
            dump_record(&line, tp_stream_name(r), rec, o->values);
            if (tp_jsonl_write_text(out, line.data, line.len, &err)) tp_die_err(&err);
        }
        if (got < 0) tp_die_err(&err);
        tp_stream_close(r);
    }
    tp_progress_finish(&progress);
    if (o->check)
        tp_info("%d file%s, %llu records, %llu bytes: ok", nfiles, nfiles == 1 ? "" : "s",
                (unsigned long long)records, (unsigned long long)bytes);
    tp_buf_free(&line);
}

// One "tensors" entry of a --pack line into a tensor_ref with freshly allocated data.
static int parse_tensor_json(const char *name, jv spec, tp_tensor_ref *t, int64_t *shape, tp_err *err) {
    jv dtype = jv_object_get(jv_copy(spec), jv_string("dtype"));
    jv data = jv_object_get(jv_copy(spec), jv_string("data"));
    jv jshape = jv_object_get(jv_copy(spec), jv_string("shape"));
    int rc = -1;
    t->name = name;
    t->shape = shape;
    if (jv_get_kind(dtype) != JV_KIND_STRING || tp_dtype_parse(jv_string_value(dtype), &t->dtype)) {
        tp_err_set(err, "tensor '%s': \"dtype\" must be one of F32, BF16, F16, I32, I64, U8, ...", name);
    } else if (jv_get_kind(data) != JV_KIND_ARRAY) {
        tp_err_set(err, "tensor '%s': \"data\" must be an array of numbers", name);
    } else {
        int n = jv_array_length(jv_copy(data));
        t->ndim = 1;
        shape[0] = n;
        bool shape_ok = true;
        if (jv_get_kind(jshape) == JV_KIND_ARRAY) {
            t->ndim = jv_array_length(jv_copy(jshape));
            shape_ok = t->ndim <= TP_MAX_DIMS;
            for (int d = 0; d < t->ndim && shape_ok; d++) {
                jv s = jv_array_get(jv_copy(jshape), d);
                double v = jv_get_kind(s) == JV_KIND_NUMBER ? jv_number_value(s) : -1;
                jv_free(s);
                shape_ok = v >= 0 && v == floor(v) && v < 9e15;
                shape[d] = (int64_t)v;
            }
        } else if (jv_get_kind(jshape) != JV_KIND_INVALID && jv_get_kind(jshape) != JV_KIND_NULL) {
            shape_ok = false;
        }
        uint64_t numel = 0, nbytes = 0;
        if (!shape_ok || !tp_numel(shape, t->ndim, t->dtype, &numel, &nbytes)) {
            tp_err_set(err, "tensor '%s': \"shape\" must be an array of at most %d whole numbers", name, TP_MAX_DIMS);
        } else if (numel != (uint64_t)n) {
            tp_err_set(err, "tensor '%s': shape holds %llu elements but \"data\" has %d", name,
                       (unsigned long long)numel, n);
        } else {
            void *bytes = tp_xmalloc(nbytes);
            rc = 0;
            for (int k = 0; k < n && !rc; k++) {
                jv x = jv_array_get(jv_copy(data), k);
                jv_kind kind = jv_get_kind(x);
                double v = kind == JV_KIND_NUMBER ? jv_number_value(x) : kind == JV_KIND_TRUE ? 1 : 0;
                if ((kind != JV_KIND_NUMBER && kind != JV_KIND_TRUE && kind != JV_KIND_FALSE) ||
                    !tp_tensor_set(bytes, t->dtype, (uint64_t)k, v)) {
                    tp_err_set(err, "tensor '%s': data[%d] does not fit %s", name, k, tp_dtype_name(t->dtype));
                    rc = -1;
                }
                jv_free(x);
            }
            if (rc) free(bytes);
            else t->data = bytes;
        }
    }
    jv_free(dtype);
    jv_free(data);
    jv_free(jshape);
    return rc;
}

static void pack_streams(char **files, int nfiles, tp_stream_writer *w) {
    tp_err err;
    for (int f = 0; f < nfiles; f++) {
        tp_jsonl_reader *r = tp_jsonl_open(files[f], NULL, &err);
        if (!r) tp_die_err(&err);
        jv line;
        int got;
        while ((got = tp_jsonl_next(r, &line, &err)) > 0) {
            jv tensors = jv_object_get(jv_copy(line), jv_string("tensors"));
            jv meta = jv_object_get(jv_copy(line), jv_string("metadata"));
            if (jv_get_kind(tensors) != JV_KIND_OBJECT)
                tp_die("%s:%llu: \"tensors\" must be an object", tp_jsonl_name(r),
                       (unsigned long long)tp_jsonl_line(r));
            int count = jv_object_length(jv_copy(tensors)), i = 0;
            tp_tensor_ref *refs = tp_xcalloc((size_t)(count ? count : 1), sizeof *refs);
            int64_t (*shapes)[TP_MAX_DIMS] = tp_xcalloc((size_t)(count ? count : 1), sizeof *shapes);
            char **names = tp_xcalloc((size_t)(count ? count : 1), sizeof *names);
            jv_object_foreach(tensors, key, spec) {
                names[i] = tp_xstrdup(jv_string_value(key));
                if (parse_tensor_json(names[i], spec, &refs[i], shapes[i], &err)) {
                    tp_err_prefix(&err, "%s:%llu", tp_jsonl_name(r), (unsigned long long)tp_jsonl_line(r));
                    tp_die_err(&err);
                }
                i++;
                jv_free(key);
                jv_free(spec);
            }
            if (tp_stream_write(w, refs, count, jv_get_kind(meta) == JV_KIND_INVALID ? jv_null() : meta, &err)) {
                tp_err_prefix(&err, "%s:%llu", tp_jsonl_name(r), (unsigned long long)tp_jsonl_line(r));
                tp_die_err(&err);
            }
            for (i = 0; i < count; i++) {
                free((void *)refs[i].data);
                free(names[i]);
            }
            free(refs);
            free(shapes);
            free(names);
            jv_free(tensors);
            jv_free(meta);
            jv_free(line);
        }
        if (got < 0) tp_die_err(&err);
        tp_jsonl_close(r);
    }
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    static const struct option long_opts[] = {
        {"values", no_argument, NULL, 'v'}, {"check", no_argument, NULL, 'c'},
        {"pack", no_argument, NULL, 'p'},   {"zstd", required_argument, NULL, 'z'},
        {"output", required_argument, NULL, 'o'}, TP_CLI_COMMON_LONGOPTS, {0}};
    options o = {.output = "-"};
    int c;
    while ((c = getopt_long(argc, argv, "vcpz:o:" TP_CLI_COMMON_SHORTOPTS, long_opts, NULL)) != -1) {
        switch (c) {
        case 'v': o.values = true; break;
        case 'c': o.check = true; break;
        case 'p': o.pack = true; break;
        case 'z': o.zstd_level = (int)tp_cli_int("--zstd", optarg, 1, 19); break;
        case 'o': o.output = optarg; break;
        default: tp_cli_common(c, usage);
        }
    }
    if (o.pack && (o.values || o.check)) tp_die_usage("--pack cannot be combined with --values or --check");
    if (o.zstd_level && !o.pack) tp_die_usage("--zstd only applies to --pack");
    char *stdin_only[] = {"-"};
    char **files = optind < argc ? argv + optind : stdin_only;
    int nfiles = optind < argc ? argc - optind : 1;
    tp_err err;
    if (o.pack) {
        if (!strcmp(o.output, "-") && isatty(STDOUT_FILENO))
            tp_die_usage("refusing to write a binary stream to a terminal; use -o FILE or a redirection");
        tp_stream_writer *w = tp_stream_writer_open(o.output, o.zstd_level, &err);
        if (!w) tp_die_err(&err);
        pack_streams(files, nfiles, w);
        uint64_t records = tp_stream_writer_records(w);
        if (tp_stream_writer_close(w, &err)) tp_die_err(&err);
        tp_info("packed %llu records", (unsigned long long)records);
        return 0;
    }
    tp_jsonl_writer *out = o.check ? NULL : tp_jsonl_writer_open(o.output, false, &err);
    if (!o.check && !out) tp_die_err(&err);
    print_streams(files, nfiles, &o, out);
    if (tp_jsonl_writer_close(out, &err)) tp_die_err(&err);
    return 0;
}
