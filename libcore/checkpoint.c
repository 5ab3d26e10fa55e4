// checkpoint.c — atomic model directories and HF-layout model files.
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "fileio.h"
#include "input.h"
#include "json.h"
#include "safetensors.h"

// Removes a checkpoint directory: its files, then itself (our checkpoints hold no subdirectories).
int tp_checkpoint_remove(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *path;
        if (asprintf(&path, "%s/%s", dir, e->d_name) < 0) abort();
        if (unlink(path) < 0) rc = -1;
        free(path);
    }
    closedir(d);
    return rmdir(dir) < 0 ? -1 : rc;
}

int tp_checkpoint_begin(tp_checkpoint *c, const char *dir, tp_err *err) {
    c->dir = tp_xstrdup(dir);
    if (asprintf(&c->tmp, "%s.tmp-%ld", dir, (long)getpid()) < 0) c->tmp = NULL;
    if (!c->tmp) {
        tp_err_set(err, "%s: unusable directory name", dir);
        free(c->dir), free(c->tmp);
        return -1;
    }
    tp_checkpoint_remove(c->tmp);  // left by an earlier crash of a process with our pid
    if (mkdir(c->tmp, 0755) < 0) {
        tp_err_set(err, "%s: %s", c->tmp, strerror(errno));
        free(c->dir), free(c->tmp);
        return -1;
    }
    return 0;
}

static void sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int tp_checkpoint_commit(tp_checkpoint *c, tp_err *err) {
    int rc = 0;
    sync_dir(c->tmp);
    char *old = NULL;
    struct stat st;
    if (stat(c->dir, &st) == 0) {
        if (asprintf(&old, "%s.old-%ld", c->dir, (long)getpid()) < 0 || rename(c->dir, old) < 0) {
            tp_err_set(err, "%s: cannot move the previous checkpoint aside: %s", c->dir, strerror(errno));
            rc = -1;
        }
    }
    if (rc == 0 && rename(c->tmp, c->dir) < 0) {
        tp_err_set(err, "%s: %s", c->dir, strerror(errno));
        if (old) rename(old, c->dir);
        rc = -1;
    }
    if (rc == 0) {
        char *parent = tp_xstrdup(c->dir);
        char *slash = strrchr(parent, '/');
        sync_dir(slash ? (slash == parent ? "/" : (*slash = 0, parent)) : ".");
        free(parent);
        if (old) tp_checkpoint_remove(old);
    } else {
        tp_checkpoint_remove(c->tmp);
    }
    free(old), free(c->dir), free(c->tmp);
    return rc;
}

static int move_file(const char *from_dir, const char *to_dir, const char *name, tp_err *err) {
    char *from, *to;
    if (asprintf(&from, "%s/%s", from_dir, name) < 0 || asprintf(&to, "%s/%s", to_dir, name) < 0) abort();
    int rc = rename(from, to);
    if (rc < 0) tp_err_set(err, "%s: %s", to, strerror(errno));
    free(from), free(to);
    return rc;
}

int tp_checkpoint_commit_files(tp_checkpoint *c, tp_err *err) {
    int rc = 0;
    sync_dir(c->tmp);
    if (mkdir(c->dir, 0755) < 0 && errno != EEXIST) {
        tp_err_set(err, "%s: %s", c->dir, strerror(errno));
        rc = -1;
    }
    DIR *d = rc == 0 ? opendir(c->tmp) : NULL;
    if (rc == 0 && !d) {
        tp_err_set(err, "%s: %s", c->tmp, strerror(errno));
        rc = -1;
    }
    bool has_config = false;
    struct dirent *e;
    while (d && rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (!strcmp(e->d_name, "config.json")) {
            has_config = true;
            continue;
        }
        rc = move_file(c->tmp, c->dir, e->d_name, err);
    }
    if (d) closedir(d);
    if (rc == 0 && has_config) rc = move_file(c->tmp, c->dir, "config.json", err);
    if (rc == 0) sync_dir(c->dir);
    tp_checkpoint_remove(c->tmp);
    free(c->dir), free(c->tmp);
    return rc;
}

void tp_checkpoint_abort(tp_checkpoint *c) {
    tp_checkpoint_remove(c->tmp);
    free(c->dir), free(c->tmp);
}

static int write_text(const char *path, const char *text, size_t n, tp_err *err) {
    tp_atomic_file f;
    if (tp_atomic_open(&f, path, err) < 0) return -1;
    if (tp_write_all(f.fd, text, n, path, err) < 0) {
        tp_atomic_abort(&f);
        return -1;
    }
    return tp_atomic_commit(&f, err);
}

static const char *dtype_torch_name(tp_dtype t) {
    return t == TP_BF16 ? "bfloat16" : t == TP_F16 ? "float16" : "float32";
}

int tp_model_save(const tp_model *m, const char *dir, tp_dtype dtype, tp_err *err) {
    if (dtype != TP_F32 && dtype != TP_BF16 && dtype != TP_F16) {
        tp_err_set(err, "cannot save weights as %s (F32, BF16, F16)", tp_dtype_name(dtype));
        return -1;
    }
    char *path;
    jv cfg = jv_object_set(jv_copy(m->config_json), jv_string("torch_dtype"), jv_string(dtype_torch_name(dtype)));
    jv text = jv_dump_string(cfg, JV_PRINT_PRETTY | JV_PRINT_SPACE1);
    if (asprintf(&path, "%s/config.json", dir) < 0) abort();
    tp_buf t = {0};
    tp_buf_puts(&t, jv_string_value(text));
    tp_buf_putc(&t, '\n');
    int rc = write_text(path, t.data, t.len, err);
    tp_buf_free(&t);
    jv_free(text);
    free(path);
    if (rc < 0) return -1;
    tp_tensor_ref *refs = tp_xcalloc((size_t)m->n_params, sizeof *refs);
    void *conv = NULL;
    if (dtype != TP_F32) {
        uint16_t *h = tp_xmalloc((m->n_floats ? m->n_floats : 1) * sizeof *h);
        for (size_t i = 0; i < m->n_floats; i++) h[i] = dtype == TP_BF16 ? tp_f32_to_bf16(m->w[i]) : tp_f32_to_f16(m->w[i]);
        conv = h;
    }
    for (int i = 0; i < m->n_params; i++) {
        const tp_param *p = &m->params[i];
        const void *data = conv ? (const void *)((const uint16_t *)conv + p->offset) : (const void *)(m->w + p->offset);
        refs[i] = (tp_tensor_ref){p->name, dtype, p->ndim, p->shape, data};
    }
    // transformers refuses safetensors files without {"format": "pt"}.
    jv meta = jv_object_set(jv_object(), jv_string("format"), jv_string("pt"));
    if (asprintf(&path, "%s/model.safetensors", dir) < 0) abort();
    rc = tp_safetensors_write(path, refs, m->n_params, meta, err);
    jv_free(meta);
    free(path);
    free(refs);
    free(conv);
    return rc;
}

int tp_copy_model_files(const char *src, const char *dir, tp_err *err) {
    static const char *names[] = {"tokenizer.json", "tokenizer.json.zst", "tokenizer_config.json", "special_tokens_map.json",
                                  "generation_config.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"};
    struct stat st;
    char *from_dir;
    int rc = 0;
    if (stat(src, &st) == 0 && S_ISDIR(st.st_mode)) {
        from_dir = tp_xstrdup(src);
    } else {
        // A tokenizer file under any name (and compressed or not) becomes tokenizer.json.
        const char *slash = strrchr(src, '/');
        from_dir = slash ? strndup(src, (size_t)(slash - src) + (slash == src)) : tp_xstrdup(".");
        tp_buf text = {0};
        char *to;
        if (asprintf(&to, "%s/tokenizer.json", dir) < 0) abort();
        rc = tp_input_read_all(src, &text, err);
        if (rc == 0) rc = write_text(to, text.data ? text.data : "", text.len, err);
        tp_buf_free(&text);
        free(to);
    }
    for (size_t i = 0; i < sizeof names / sizeof *names && rc == 0; i++) {
        char *from, *to;
        if (asprintf(&from, "%s/%s", from_dir, names[i]) < 0 || asprintf(&to, "%s/%s", dir, names[i]) < 0) abort();
        bool have = stat(to, &st) == 0;  // the tokenizer file given itself
        if (!have && stat(from, &st) == 0 && S_ISREG(st.st_mode)) {
            tp_buf data = {0};
            // Read raw bytes (no decompression): the copy is byte for byte.
            FILE *f = fopen(from, "rb");
            if (!f) {
                tp_err_set(err, "%s: %s", from, strerror(errno));
                rc = -1;
            } else {
                char chunk[1 << 16];
                size_t got;
                while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) tp_buf_append(&data, chunk, got);
                if (ferror(f)) {
                    tp_err_set(err, "%s: read error", from);
                    rc = -1;
                }
                fclose(f);
            }
            if (rc == 0) rc = write_text(to, data.data ? data.data : "", data.len, err);
            tp_buf_free(&data);
        }
        free(from), free(to);
    }
    free(from_dir);
    return rc;
}
