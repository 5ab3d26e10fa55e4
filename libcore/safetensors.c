#include "safetensors.h"
#include "fileio.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const double MAX_EXACT = 9007199254740992.0;  // 2^53: larger doubles are not exact integers

static bool as_uint(jv v, uint64_t *out) {
    if (jv_get_kind(v) != JV_KIND_NUMBER) return false;
    double d = jv_number_value(v);
    if (!(d >= 0 && d <= MAX_EXACT) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static int parse_tensor(const char *name, jv spec, tp_tensor *t, tp_err *err) {
    if (jv_get_kind(spec) != JV_KIND_OBJECT) {
        tp_err_set(err, "tensor '%s': entry is not an object", name);
        return -1;
    }
    jv dtype = jv_object_get(jv_copy(spec), jv_string("dtype"));
    jv shape = jv_object_get(jv_copy(spec), jv_string("shape"));
    jv offsets = jv_object_get(jv_copy(spec), jv_string("data_offsets"));
    int rc = -1;
    uint64_t numel, nbytes;
    if (jv_get_kind(dtype) != JV_KIND_STRING) {
        tp_err_set(err, "tensor '%s': \"dtype\" missing or not a string", name);
    } else if (tp_dtype_parse(jv_string_value(dtype), &t->dtype)) {
        tp_err_set(err, "tensor '%s': unknown dtype '%s'", name, jv_string_value(dtype));
    } else if (jv_get_kind(shape) != JV_KIND_ARRAY) {
        tp_err_set(err, "tensor '%s': \"shape\" missing or not an array", name);
    } else if (jv_array_length(jv_copy(shape)) > TP_MAX_DIMS) {
        tp_err_set(err, "tensor '%s': %d dimensions, at most %d supported", name, jv_array_length(jv_copy(shape)),
                   TP_MAX_DIMS);
    } else if (jv_get_kind(offsets) != JV_KIND_ARRAY || jv_array_length(jv_copy(offsets)) != 2) {
        tp_err_set(err, "tensor '%s': \"data_offsets\" missing or not [begin, end]", name);
    } else {
        t->ndim = jv_array_length(jv_copy(shape));
        bool ok = true;
        for (int i = 0; i < t->ndim && ok; i++) {
            uint64_t d = 0;
            jv item = jv_array_get(jv_copy(shape), i);
            ok = as_uint(item, &d);
            jv_free(item);
            t->shape[i] = (int64_t)d;
        }
        jv b = jv_array_get(jv_copy(offsets), 0), e = jv_array_get(jv_copy(offsets), 1);
        if (!ok) {
            tp_err_set(err, "tensor '%s': shape entries must be whole numbers >= 0", name);
        } else if (!as_uint(b, &t->begin) || !as_uint(e, &t->end) || t->begin > t->end) {
            tp_err_set(err, "tensor '%s': data_offsets must be whole numbers with begin <= end", name);
        } else if (!tp_numel(t->shape, t->ndim, t->dtype, &numel, &nbytes)) {
            tp_err_set(err, "tensor '%s': shape is too large", name);
        } else if (nbytes != t->end - t->begin) {
            tp_err_set(err, "tensor '%s': shape and %s need %llu bytes but data_offsets [%llu, %llu] hold %llu", name,
                       tp_dtype_name(t->dtype), (unsigned long long)nbytes, (unsigned long long)t->begin,
                       (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
        } else {
            rc = 0;
        }
        jv_free(b);
        jv_free(e);
    }
    jv_free(dtype);
    jv_free(shape);
    jv_free(offsets);
    return rc;
}

static int by_offset(const void *a, const void *b) {
    const tp_tensor *x = *(const tp_tensor *const *)a, *y = *(const tp_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

// Tensors must tile [0, data_len) exactly: sorted by offset, each starts where the last ended.
static int check_tiling(tp_st_header *h, tp_err *err) {
    tp_tensor **order = tp_xmalloc(sizeof *order * (size_t)(h->count ? h->count : 1));
    for (int i = 0; i < h->count; i++) order[i] = &h->tensors[i];
    qsort(order, (size_t)h->count, sizeof *order, by_offset);
    uint64_t at = 0;
    int rc = 0;
    for (int i = 0; i < h->count && !rc; i++) {
        if (order[i]->begin > at) {
            tp_err_set(err, "tensor '%s' starts at byte %llu, leaving a hole after byte %llu of the data",
                       order[i]->name, (unsigned long long)order[i]->begin, (unsigned long long)at);
            rc = -1;
        } else if (order[i]->begin < at) {
            tp_err_set(err, "tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'", order[i]->name,
                       (unsigned long long)order[i]->begin, (unsigned long long)order[i]->end, order[i - 1]->name);
            rc = -1;
        }
        at = order[i]->end;
    }
    h->data_len = at;
    free(order);
    return rc;
}

int tp_st_header_parse(const char *json, size_t len, tp_st_header *h, tp_err *err) {
    memset(h, 0, sizeof *h);
    h->metadata = jv_null();
    if (len < 2 || len > TP_ST_MAX_HEADER) {
        tp_err_set(err, "header length %zu is out of range [2, %llu]", len, (unsigned long long)TP_ST_MAX_HEADER);
        return -1;
    }
    jv root;
    if (tp_json_parse(json, len, &root, err)) {
        tp_err_prefix(err, "header is not valid JSON");
        return -1;
    }
    if (jv_get_kind(root) != JV_KIND_OBJECT) {
        tp_err_set(err, "header is not a JSON object");
        jv_free(root);
        return -1;
    }
    int n = jv_object_length(jv_copy(root));
    h->tensors = tp_xcalloc((size_t)(n ? n : 1), sizeof *h->tensors);
    int rc = 0;
    jv_object_foreach(root, key, value) {
        const char *name = jv_string_value(key);
        if (rc) {
        } else if (strlen(name) != (size_t)jv_string_length_bytes(jv_copy(key))) {
            tp_err_set(err, "a tensor name contains a NUL byte");
            rc = -1;
        } else if (!strcmp(name, "__metadata__")) {
            if (jv_get_kind(value) != JV_KIND_OBJECT) {
                tp_err_set(err, "__metadata__ is not an object");
                rc = -1;
            } else {
                jv_object_foreach(value, mk, mv) {
                    if (!rc && jv_get_kind(mv) != JV_KIND_STRING) {
                        tp_err_set(err, "__metadata__ value of '%s' is not a string", jv_string_value(mk));
                        rc = -1;
                    }
                    jv_free(mk);
                    jv_free(mv);
                }
                jv_free(h->metadata);
                h->metadata = jv_copy(value);
            }
        } else {
            tp_tensor *t = &h->tensors[h->count];
            if (parse_tensor(name, value, t, err)) rc = -1;
            else {
                t->name = tp_xstrdup(name);
                h->count++;
            }
        }
        jv_free(key);
        jv_free(value);
    }
    jv_free(root);
    if (!rc) rc = check_tiling(h, err);
    if (rc) tp_st_header_free(h);
    return rc;
}

void tp_st_header_free(tp_st_header *h) {
    for (int i = 0; i < h->count; i++) free(h->tensors[i].name);
    free(h->tensors);
    jv_free(h->metadata);
    memset(h, 0, sizeof *h);
    h->metadata = jv_null();
}

const tp_tensor *tp_st_header_find(const tp_st_header *h, const char *name) {
    for (int i = 0; i < h->count; i++)
        if (!strcmp(h->tensors[i].name, name)) return &h->tensors[i];
    return NULL;
}

int tp_st_header_build(tp_buf *out, const tp_tensor_ref *tensors, int count, jv metadata, uint64_t *data_len,
                       tp_err *err) {
    size_t start = out->len;
    tp_buf_append(out, "\0\0\0\0\0\0\0\0{", 9);
    bool first = true;
    if (jv_get_kind(metadata) == JV_KIND_OBJECT) {
        jv_object_foreach(metadata, k, v) {
            bool ok = jv_get_kind(v) == JV_KIND_STRING;
            if (!ok) tp_err_set(err, "__metadata__ value of '%s' is not a string", jv_string_value(k));
            jv_free(k);
            jv_free(v);
            if (!ok) {
                out->len = start;
                return -1;
            }
        }
        tp_buf_puts(out, "\"__metadata__\":");
        tp_json_dump(out, metadata);
        first = false;
    } else if (jv_get_kind(metadata) != JV_KIND_NULL && jv_get_kind(metadata) != JV_KIND_INVALID) {
        tp_err_set(err, "__metadata__ must be an object of strings");
        out->len = start;
        return -1;
    }
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        const tp_tensor_ref *t = &tensors[i];
        uint64_t numel, nbytes;
        const char *bad = NULL;
        if (!strcmp(t->name, "__metadata__")) bad = "the name __metadata__ is reserved";
        else if ((unsigned)t->dtype >= TP_DTYPE_COUNT) bad = "unknown dtype";
        else if (t->ndim < 0 || t->ndim > TP_MAX_DIMS) bad = "too many dimensions";
        else if (!tp_numel(t->shape, t->ndim, t->dtype, &numel, &nbytes)) bad = "invalid shape";
        for (int j = 0; j < i && !bad; j++)
            if (!strcmp(tensors[j].name, t->name)) bad = "name used twice";
        if (bad) {
            tp_err_set(err, "tensor '%s': %s", t->name, bad);
            out->len = start;
            return -1;
        }
        if (!first) tp_buf_putc(out, ',');
        first = false;
        tp_json_dump_string(out, t->name, strlen(t->name));
        tp_buf_printf(out, ":{\"dtype\":\"%s\",\"shape\":[", tp_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) tp_buf_printf(out, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        tp_buf_printf(out, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                      (unsigned long long)(offset + nbytes));
        offset += nbytes;
    }
    tp_buf_putc(out, '}');
    while ((out->len - start) % 8) tp_buf_putc(out, ' ');
    uint64_t header_len = out->len - start - 8;
    for (int i = 0; i < 8; i++) out->data[start + (size_t)i] = (char)((header_len >> (8 * i)) & 0xff);
    *data_len = offset;
    return 0;
}

uint64_t tp_st_read_header_len(const void *p) {
    const uint8_t *b = p;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

static int parse_file(tp_safetensors *st, const uint8_t *bytes, size_t len, tp_err *err) {
    if (len < 8) {
        tp_err_set(err, "%s: %zu bytes, too short for a safetensors header", st->path, len);
        return -1;
    }
    uint64_t header_len = tp_st_read_header_len(bytes);
    if (header_len > len - 8) {
        tp_err_set(err, "%s: header length %llu runs past the end of the file (%zu bytes)", st->path,
                   (unsigned long long)header_len, len);
        return -1;
    }
    if (tp_st_header_parse((const char *)bytes + 8, header_len, &st->header, err)) {
        tp_err_prefix(err, "%s", st->path);
        return -1;
    }
    uint64_t have = len - 8 - header_len;
    if (st->header.data_len != have) {
        if (st->header.data_len > have)
            tp_err_set(err, "%s: truncated: the header describes %llu bytes of data, the file holds %llu", st->path,
                       (unsigned long long)st->header.data_len, (unsigned long long)have);
        else
            tp_err_set(err, "%s: %llu bytes after the last tensor", st->path,
                       (unsigned long long)(have - st->header.data_len));
        tp_st_header_free(&st->header);
        return -1;
    }
    const uint8_t *data = bytes + 8 + header_len;
    for (int i = 0; i < st->header.count; i++) st->header.tensors[i].data = data + st->header.tensors[i].begin;
    return 0;
}

tp_safetensors *tp_safetensors_from_mem(const void *data, size_t len, const char *name, tp_err *err) {
    tp_safetensors *st = tp_xcalloc(1, sizeof *st);
    st->path = tp_xstrdup(name);
    if (parse_file(st, data, len, err)) {
        free(st->path);
        free(st);
        return NULL;
    }
    return st;
}

tp_safetensors *tp_safetensors_open(const char *path, tp_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tp_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    const char *bad = fstat(fd, &sb) ? strerror(errno)
                      : S_ISDIR(sb.st_mode) ? "is a directory"
                      : !S_ISREG(sb.st_mode) ? "not a regular file" : NULL;
    if (bad) {
        tp_err_set(err, "%s: %s", path, bad);
        close(fd);
        return NULL;
    }
    tp_safetensors *st = tp_xcalloc(1, sizeof *st);
    st->path = tp_xstrdup(path);
    st->map_len = (size_t)sb.st_size;
    if (st->map_len) {
        st->map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (st->map == MAP_FAILED) {
            tp_err_set(err, "%s: mmap failed: %s", path, strerror(errno));
            st->map = NULL;
        }
    }
    close(fd);
    if ((st->map_len && !st->map) || parse_file(st, st->map, st->map_len, err)) {
        if (st->map) munmap(st->map, st->map_len);
        free(st->path);
        free(st);
        return NULL;
    }
    return st;
}

const tp_tensor *tp_safetensors_find(const tp_safetensors *st, const char *name) {
    return tp_st_header_find(&st->header, name);
}

void tp_safetensors_close(tp_safetensors *st) {
    if (!st) return;
    tp_st_header_free(&st->header);
    if (st->map) munmap(st->map, st->map_len);
    free(st->path);
    free(st);
}

int tp_safetensors_write(const char *path, const tp_tensor_ref *tensors, int count, jv metadata, tp_err *err) {
    tp_buf header = {0};
    uint64_t data_len;
    if (tp_st_header_build(&header, tensors, count, metadata, &data_len, err)) {
        tp_err_prefix(err, "%s", path);
        tp_buf_free(&header);
        return -1;
    }
    tp_atomic_file f;
    if (tp_atomic_open(&f, path, err)) {
        tp_buf_free(&header);
        return -1;
    }
    int rc = tp_write_all(f.fd, header.data, header.len, path, err);
    for (int i = 0; i < count && !rc; i++) {
        uint64_t numel, nbytes;
        tp_numel(tensors[i].shape, tensors[i].ndim, tensors[i].dtype, &numel, &nbytes);
        rc = tp_write_all(f.fd, tensors[i].data, nbytes, path, err);
    }
    tp_buf_free(&header);
    if (rc) {
        tp_atomic_abort(&f);
        return -1;
    }
    return tp_atomic_commit(&f, err);
}

// --- sharded checkpoints ---

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = tp_xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}


static int read_small_file(const char *path, char **out, size_t *len, tp_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        tp_err_set(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    tp_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) tp_buf_append(&b, chunk, n);
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        tp_err_set(err, "%s: read failed", path);
        tp_buf_free(&b);
        return -1;
    }
    tp_buf_putc(&b, 0);
    *out = b.data;
    *len = b.len - 1;
    return 0;
}

static int open_index(tp_weights *w, const char *index_path, tp_err *err) {
    char *text;
    size_t len;
    if (read_small_file(index_path, &text, &len, err)) return -1;
    jv root = jv_invalid();
    tp_err parse_err;
    if (tp_json_parse(text, len, &root, &parse_err)) {
        free(text);
        tp_err_set(err, "%s: invalid JSON: %s", index_path, parse_err.msg);
        return -1;
    }
    free(text);
    jv map = jv_is_valid(root) && jv_get_kind(root) == JV_KIND_OBJECT
                 ? jv_object_get(jv_copy(root), jv_string("weight_map")) : jv_invalid();
    if (jv_get_kind(map) != JV_KIND_OBJECT) {
        tp_err_set(err, "%s: not a safetensors index (an object with a \"weight_map\" object)", index_path);
        jv_free(root);
        jv_free(map);
        return -1;
    }
    jv meta = jv_object_get(jv_copy(root), jv_string("metadata"));
    w->metadata = jv_is_valid(meta) ? meta : jv_null();
    jv_free(root);
    char *copy = tp_xstrdup(index_path);
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (*slash = 0, copy) : ".";
    int rc = 0;
    // Open each shard once, in order of first mention; then check every entry.
    jv_object_foreach(map, name, file) {
        if (rc) {
        } else if (jv_get_kind(file) != JV_KIND_STRING || strchr(jv_string_value(file), '/')) {
            tp_err_set(err, "%s: weight_map entry '%s' must name a shard file in the same directory", index_path,
                       jv_string_value(name));
            rc = -1;
        } else {
            char *shard_path = join_path(dir, jv_string_value(file));
            int found = -1;
            for (int i = 0; i < w->nshards && found < 0; i++)
                if (!strcmp(w->shards[i]->path, shard_path)) found = i;
            if (found < 0) {
                tp_safetensors *st = tp_safetensors_open(shard_path, err);
                if (!st) rc = -1;
                else {
                    w->shards = tp_xrealloc(w->shards, sizeof *w->shards * (size_t)(w->nshards + 1));
                    found = w->nshards;
                    w->shards[w->nshards++] = st;
                }
            }
            if (!rc && !tp_safetensors_find(w->shards[found], jv_string_value(name))) {
                tp_err_set(err, "%s: tensor '%s' is listed in %s but that shard does not hold it", index_path,
                           jv_string_value(name), jv_string_value(file));
                rc = -1;
            }
            free(shard_path);
        }
        jv_free(name);
        jv_free(file);
    }
    jv_free(map);
    free(copy);
    return rc;
}

static int open_single(tp_weights *w, const char *file, tp_err *err) {
    tp_safetensors *st = tp_safetensors_open(file, err);
    if (!st) return -1;
    w->shards = tp_xmalloc(sizeof *w->shards);
    w->shards[0] = st;
    w->nshards = 1;
    jv_free(w->metadata);
    w->metadata = jv_copy(st->header.metadata);
    return 0;
}

tp_weights *tp_weights_open(const char *path, tp_err *err) {
    tp_weights *w = tp_xcalloc(1, sizeof *w);
    w->metadata = jv_null();
    struct stat sb;
    int rc = -1;
    if (stat(path, &sb) != 0) {
        tp_err_set(err, "%s: %s", path, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        char *index = join_path(path, "model.safetensors.index.json");
        char *single = join_path(path, "model.safetensors");
        if (access(index, F_OK) == 0) rc = open_index(w, index, err);
        else if (access(single, F_OK) == 0) rc = open_single(w, single, err);
        else tp_err_set(err, "%s: holds neither model.safetensors nor model.safetensors.index.json", path);
        free(index);
        free(single);
    } else if (tp_ends_with(path, ".json")) {
        rc = open_index(w, path, err);
    } else {
        rc = open_single(w, path, err);
    }
    if (rc) {
        tp_weights_close(w);
        return NULL;
    }
    return w;
}

const tp_tensor *tp_weights_find(const tp_weights *w, const char *name) {
    for (int i = 0; i < w->nshards; i++) {
        const tp_tensor *t = tp_safetensors_find(w->shards[i], name);
        if (t) return t;
    }
    return NULL;
}

void tp_weights_close(tp_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->nshards; i++) tp_safetensors_close(w->shards[i]);
    free(w->shards);
    jv_free(w->metadata);
    free(w);
}
