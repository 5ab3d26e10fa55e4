// model_gguf.c — a model from a GGUF file: the configuration and transformers-named fp32
// tensors come from gguf.h, which undoes llama.cpp's conversions.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "model_impl.h"

static int check_finite(const tp_param *p, const float *w, tp_err *err) {
    for (size_t k = 0; k < p->numel; k++)
        if (!isfinite(w[k])) {
            tp_err_set(err, "tensor %s: element %zu is %s", p->name, k, isnan(w[k]) ? "NaN" : "Inf");
            return -1;
        }
    return 0;
}

static int read_params(tp_model *m, const tp_gguf *g, tp_err *err) {
    for (int i = 0; i < m->n_params; i++) {
        const tp_param *p = &m->params[i];
        int64_t shape[TP_GGUF_MAX_DIMS];
        int ndim;
        int got = tp_gguf_read_hf(g, p->name, m->w + p->offset, p->numel, shape, &ndim, err);
        if (got < 0) return -1;
        if (got == 0) {
            tp_err_set(err, "tensor %s is missing", p->name);
            return -1;
        }
        if (ndim != p->ndim || shape[0] != p->shape[0] || (ndim == 2 && shape[1] != p->shape[1])) {
            tp_err_set(err, "tensor %s has shape [%lld%s%.0lld], the config says [%lld%s%.0lld]", p->name,
                       (long long)shape[0], ndim == 2 ? ", " : "", ndim == 2 ? (long long)shape[1] : 0LL,
                       (long long)p->shape[0], p->ndim == 2 ? ", " : "", p->ndim == 2 ? (long long)p->shape[1] : 0LL);
            return -1;
        }
        if (check_finite(p, m->w + p->offset, err) < 0) return -1;
    }
    // Every tensor of the file must be one the model uses (or have no transformers equivalent).
    for (int i = 0; i < tp_gguf_tensor_count(g); i++) {
        char hf[128];
        const char *name = tp_gguf_tensor_at(g, i)->name;
        if (tp_gguf_hf_name(name, hf, sizeof hf) && !tp_model_find_param(m, hf) &&
            !(m->cfg.tie_word_embeddings && strcmp(hf, "lm_head.weight") == 0)) {
            tp_err_set(err, "tensor %s (%s) is not part of a %s with this config", name, hf, tp_arch_name(m->cfg.arch));
            return -1;
        }
    }
    return 0;
}

// llama.cpp stores Llama 3 rope scaling as per-frequency divisors.
static int apply_freq_factors(tp_model *m, const tp_gguf *g, tp_err *err) {
    const tp_gguf_tensor *t = tp_gguf_find(g, "rope_freqs.weight");
    int half = m->cfg.head_dim / 2;
    if (!t || t->n_dims != 1 || t->ne[0] != half) {
        tp_err_set(err, "rope_freqs.weight: expected %d frequency factors", half);
        return -1;
    }
    float *f = tp_xmalloc((size_t)half * sizeof *f);
    int rc = tp_gguf_dequantize(t, f, err);
    for (int i = 0; rc == 0 && i < half; i++) {
        if (!(f[i] > 0) || !isfinite(f[i])) {
            tp_err_set(err, "rope_freqs.weight: factor %d is %g", i, f[i]);
            rc = -1;
        } else {
            m->inv_freq[i] /= f[i];
        }
    }
    free(f);
    return rc;
}

tp_model *tp_model_load_gguf(const char *path, tp_err *err) {
    tp_gguf *g = tp_gguf_open(path, err);
    if (!g) return NULL;
    jv cfg = tp_gguf_hf_config(g, err);
    tp_model *m = NULL;
    if (jv_is_valid(cfg)) {
        m = tp_model_new(cfg, err);
        if (m && (read_params(m, g, err) < 0 || (m->cfg.rope_freq_factors && apply_freq_factors(m, g, err) < 0))) {
            tp_model_free(m);
            m = NULL;
        }
    }
    if (m) {
        char summary[512];
        if (tp_gguf_tokenizer_summary(g, summary, sizeof summary) > 0 && asprintf(&m->load_note, "GGUF tokenizer: %s", summary) < 0)
            m->load_note = NULL;
    } else {
        tp_err_prefix(err, "%s", path);
    }
    tp_gguf_close(g);
    return m;
}
