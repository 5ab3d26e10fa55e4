// model_load.c — config.json parsing, the parameter layout, random initialisation and
// loading weights from safetensors checkpoints or GGUF files.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"
#include "input.h"
#include "json.h"
#include "model.h"
#include "model_impl.h"
#include "rng.h"
#include "safetensors.h"

// ---- config.json ----

static const struct {
    const char *class_name, *model_type;
    tp_arch arch;
} ARCHS[] = {
    {"LlamaForCausalLM", "llama", TP_ARCH_LLAMA},
    {"Qwen2ForCausalLM", "qwen2", TP_ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", TP_ARCH_QWEN3},
};

const char *tp_arch_name(tp_arch a) { return ARCHS[a].class_name; }

// A whole number in [lo, hi] from cfg[key], or dflt when absent (dflt < lo: required).
static int get_int(jv cfg, const char *key, long dflt, long lo, long hi, int *out, tp_err *err) {
    jv v = tp_json_get(cfg, key);
    jv_kind k = jv_get_kind(v);
    double d = k == JV_KIND_NUMBER ? jv_number_value(v) : (double)dflt;
    jv_free(v);
    if (k != JV_KIND_NUMBER && k != JV_KIND_INVALID && k != JV_KIND_NULL) {
        tp_err_set(err, "config.json: \"%s\" must be a number", key);
        return -1;
    }
    if ((k == JV_KIND_INVALID || k == JV_KIND_NULL) && dflt < lo) {
        tp_err_set(err, "config.json: \"%s\" is required", key);
        return -1;
    }
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        tp_err_set(err, "config.json: \"%s\" = %g is not a whole number in [%ld, %ld]", key, d, lo, hi);
        return -1;
    }
    *out = (int)d;
    return 0;
}

static int get_num(jv cfg, const char *key, double dflt, double *out, tp_err *err) {
    jv v = tp_json_get(cfg, key);
    jv_kind k = jv_get_kind(v);
    *out = k == JV_KIND_NUMBER ? jv_number_value(v) : dflt;
    jv_free(v);
    if (k != JV_KIND_NUMBER && k != JV_KIND_INVALID && k != JV_KIND_NULL) {
        tp_err_set(err, "config.json: \"%s\" must be a number", key);
        return -1;
    }
    if (!isfinite(*out) || *out < 0) {
        tp_err_set(err, "config.json: \"%s\" = %g is out of range", key, *out);
        return -1;
    }
    return 0;
}

static int parse_arch(jv cfg, tp_arch *arch, tp_err *err) {
    jv archs = tp_json_get(cfg, "architectures");
    const char *name = NULL;
    if (jv_get_kind(archs) == JV_KIND_ARRAY && jv_array_length(jv_copy(archs)) > 0) {
        jv first = jv_array_get(jv_copy(archs), 0);
        if (jv_get_kind(first) == JV_KIND_STRING) {
            for (size_t i = 0; i < sizeof ARCHS / sizeof *ARCHS; i++)
                if (strcmp(jv_string_value(first), ARCHS[i].class_name) == 0) name = ARCHS[i].class_name, *arch = ARCHS[i].arch;
            if (!name) {
                tp_err_set(err, "config.json: architecture \"%s\" is not supported "
                                "(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)", jv_string_value(first));
                jv_free(first);
                jv_free(archs);
                return -1;
            }
        }
        jv_free(first);
    }
    jv_free(archs);
    if (name) return 0;
    const char *type = tp_json_get_string(cfg, "model_type");
    for (size_t i = 0; type && i < sizeof ARCHS / sizeof *ARCHS; i++)
        if (strcmp(type, ARCHS[i].model_type) == 0) {
            *arch = ARCHS[i].arch;
            return 0;
        }
    tp_err_set(err, "config.json: model_type \"%s\" is not supported (llama, qwen2, qwen3)", type ? type : "(none)");
    return -1;
}

static int parse_rope_scaling(jv cfg, tp_model_config *c, tp_err *err) {
    jv rs = tp_json_get(cfg, "rope_scaling");
    int rc = 0;
    if (jv_get_kind(rs) == JV_KIND_OBJECT) {
        const char *type = tp_json_get_string(rs, "rope_type");
        if (!type) type = tp_json_get_string(rs, "type");
        if (type && strcmp(type, "llama3") == 0) {
            c->rope_llama3 = true;
            rc = get_num(rs, "factor", -1, &c->rope_factor, err) < 0 ||
                         get_num(rs, "low_freq_factor", -1, &c->rope_low_freq_factor, err) < 0 ||
                         get_num(rs, "high_freq_factor", -1, &c->rope_high_freq_factor, err) < 0 ||
                         get_int(rs, "original_max_position_embeddings", -1, 1, 1 << 30,
                                 &c->rope_original_max_position_embeddings, err) < 0
                     ? -1
                     : 0;
            if (rc == 0 && (c->rope_factor <= 0 || c->rope_low_freq_factor <= 0 ||
                            c->rope_high_freq_factor <= c->rope_low_freq_factor)) {
                tp_err_set(err, "config.json: rope_scaling llama3 needs factor > 0 and high_freq_factor > low_freq_factor > 0");
                rc = -1;
            }
        } else if (type && strcmp(type, "freq_factors") == 0) {
            c->rope_freq_factors = true;  // from a GGUF file; its loader divides inv_freq by the factors
        } else if (!type || strcmp(type, "default") != 0) {
            tp_err_set(err, "config.json: rope_scaling type \"%s\" is not supported (llama3 only)", type ? type : "(none)");
            rc = -1;
        }
    } else if (jv_get_kind(rs) != JV_KIND_NULL && jv_get_kind(rs) != JV_KIND_INVALID) {
        tp_err_set(err, "config.json: rope_scaling must be an object or null");
        rc = -1;
    }
    jv_free(rs);
    return rc;
}

int tp_model_config_parse(jv cfg, tp_model_config *c, tp_err *err) {
    memset(c, 0, sizeof *c);
    if (jv_get_kind(cfg) != JV_KIND_OBJECT) {
        tp_err_set(err, "config.json: expected a JSON object");
        return -1;
    }
    if (parse_arch(cfg, &c->arch, err) < 0) return -1;
    if (get_int(cfg, "vocab_size", -1, 1, 1 << 24, &c->vocab_size, err) < 0 ||
        get_int(cfg, "hidden_size", -1, 1, 1 << 16, &c->hidden_size, err) < 0 ||
        get_int(cfg, "intermediate_size", -1, 1, 1 << 18, &c->intermediate_size, err) < 0 ||
        get_int(cfg, "num_hidden_layers", -1, 1, 1024, &c->num_layers, err) < 0 ||
        get_int(cfg, "num_attention_heads", -1, 1, 1024, &c->num_heads, err) < 0 ||
        get_int(cfg, "num_key_value_heads", c->num_heads, 1, 1024, &c->num_kv_heads, err) < 0 ||
        get_int(cfg, "head_dim", c->hidden_size / c->num_heads, 2, 1024, &c->head_dim, err) < 0 ||
        get_int(cfg, "max_position_embeddings", 2048, 1, 1 << 30, &c->max_position_embeddings, err) < 0 ||
        get_num(cfg, "rope_theta", 10000.0, &c->rope_theta, err) < 0 ||
        get_num(cfg, "rms_norm_eps", 1e-6, &c->rms_norm_eps, err) < 0 ||
        get_num(cfg, "initializer_range", 0.02, &c->initializer_range, err) < 0 ||
        parse_rope_scaling(cfg, c, err) < 0)
        return -1;
    if (c->num_heads % c->num_kv_heads != 0) {
        tp_err_set(err, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->num_heads,
                   c->num_kv_heads);
        return -1;
    }
    if (c->head_dim % 2 != 0) {
        tp_err_set(err, "config.json: head_dim %d must be even for rotary embeddings", c->head_dim);
        return -1;
    }
    if (c->rope_theta <= 0) {
        tp_err_set(err, "config.json: rope_theta must be positive");
        return -1;
    }
    const char *act = tp_json_get_string(cfg, "hidden_act");
    if (act && strcmp(act, "silu") != 0) {
        tp_err_set(err, "config.json: hidden_act \"%s\" is not supported (silu only)", act);
        return -1;
    }
    if (tp_json_get_bool(cfg, "mlp_bias", false)) {
        tp_err_set(err, "config.json: mlp_bias is not supported");
        return -1;
    }
    if (tp_json_get_bool(cfg, "use_sliding_window", false)) {
        tp_err_set(err, "config.json: use_sliding_window is not supported (every layer attends to the whole sequence)");
        return -1;
    }
    // transformers' defaults: Llama and Qwen3 untie unless told; Qwen2's class default ties.
    c->tie_word_embeddings = tp_json_get_bool(cfg, "tie_word_embeddings", c->arch == TP_ARCH_QWEN2);
    bool attention_bias = tp_json_get_bool(cfg, "attention_bias", false);
    c->qkv_bias = c->arch == TP_ARCH_QWEN2 || attention_bias;
    c->o_bias = c->arch != TP_ARCH_QWEN2 && attention_bias;
    c->qk_norm = c->arch == TP_ARCH_QWEN3;
    const char *dtype = tp_json_get_string(cfg, "torch_dtype");
    if (!dtype) dtype = tp_json_get_string(cfg, "dtype");
    c->dtype = TP_F32;
    if (dtype && strcmp(dtype, "bfloat16") == 0) c->dtype = TP_BF16;
    if (dtype && strcmp(dtype, "float16") == 0) c->dtype = TP_F16;
    return 0;
}

// ---- parameter layout ----

static void add_param(tp_model *m, size_t *off, tp_param_kind kind, int64_t d0, int64_t d1, const char *fmt, int layer) {
    tp_param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, fmt, layer);
    p->kind = kind;
    p->ndim = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    p->offset = *off;
    *off += p->numel;
}

// The HF tensor names in checkpoint order, with their shapes.
static void layout_params(tp_model *m) {
    const tp_model_config *c = &m->cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size, Q = (int64_t)c->num_heads * c->head_dim,
            KV = (int64_t)c->num_kv_heads * c->head_dim;
    m->params = tp_xcalloc((size_t)c->num_layers * 17 + 3, sizeof *m->params);
    size_t off = 0;
    add_param(m, &off, TP_PARAM_EMBEDDING, c->vocab_size, C, "model.embed_tokens.weight", 0);
    for (int l = 0; l < c->num_layers; l++) {
        add_param(m, &off, TP_PARAM_NORM, C, 0, "model.layers.%d.input_layernorm.weight", l);
        add_param(m, &off, TP_PARAM_MATRIX, Q, C, "model.layers.%d.self_attn.q_proj.weight", l);
        if (c->qkv_bias) add_param(m, &off, TP_PARAM_BIAS, Q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
        add_param(m, &off, TP_PARAM_MATRIX, KV, C, "model.layers.%d.self_attn.k_proj.weight", l);
        if (c->qkv_bias) add_param(m, &off, TP_PARAM_BIAS, KV, 0, "model.layers.%d.self_attn.k_proj.bias", l);
        add_param(m, &off, TP_PARAM_MATRIX, KV, C, "model.layers.%d.self_attn.v_proj.weight", l);
        if (c->qkv_bias) add_param(m, &off, TP_PARAM_BIAS, KV, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        add_param(m, &off, TP_PARAM_MATRIX, C, Q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (c->o_bias) add_param(m, &off, TP_PARAM_BIAS, C, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        if (c->qk_norm) {
            add_param(m, &off, TP_PARAM_NORM, c->head_dim, 0, "model.layers.%d.self_attn.q_norm.weight", l);
            add_param(m, &off, TP_PARAM_NORM, c->head_dim, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        add_param(m, &off, TP_PARAM_NORM, C, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        add_param(m, &off, TP_PARAM_MATRIX, F, C, "model.layers.%d.mlp.gate_proj.weight", l);
        add_param(m, &off, TP_PARAM_MATRIX, F, C, "model.layers.%d.mlp.up_proj.weight", l);
        add_param(m, &off, TP_PARAM_MATRIX, C, F, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add_param(m, &off, TP_PARAM_NORM, C, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) add_param(m, &off, TP_PARAM_MATRIX, c->vocab_size, C, "lm_head.weight", 0);
    m->n_floats = off;
}

const tp_param *tp_model_find_param(const tp_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

static float *tensor_at(const tp_model *m, float *base, const char *fmt, int layer) {
    char name[80];
    snprintf(name, sizeof name, fmt, layer);
    const tp_param *p = tp_model_find_param(m, name);
    return p ? base + p->offset : NULL;
}

// Points T's fields into base (a parameter-shaped buffer).
void tp_model_bind(const tp_model *m, float *base, tp_model_tensors *T) {
    int L = m->cfg.num_layers;
    if (!T->layers) T->layers = tp_xcalloc((size_t)L, sizeof *T->layers);
    T->embed = base;  // model.embed_tokens.weight comes first
    for (int l = 0; l < L; l++) {
        tp_layer_tensors *t = &T->layers[l];
        t->ln1 = tensor_at(m, base, "model.layers.%d.input_layernorm.weight", l);
        t->wq = tensor_at(m, base, "model.layers.%d.self_attn.q_proj.weight", l);
        t->bq = tensor_at(m, base, "model.layers.%d.self_attn.q_proj.bias", l);
        t->wk = tensor_at(m, base, "model.layers.%d.self_attn.k_proj.weight", l);
        t->bk = tensor_at(m, base, "model.layers.%d.self_attn.k_proj.bias", l);
        t->wv = tensor_at(m, base, "model.layers.%d.self_attn.v_proj.weight", l);
        t->bv = tensor_at(m, base, "model.layers.%d.self_attn.v_proj.bias", l);
        t->wo = tensor_at(m, base, "model.layers.%d.self_attn.o_proj.weight", l);
        t->bo = tensor_at(m, base, "model.layers.%d.self_attn.o_proj.bias", l);
        t->q_norm = tensor_at(m, base, "model.layers.%d.self_attn.q_norm.weight", l);
        t->k_norm = tensor_at(m, base, "model.layers.%d.self_attn.k_norm.weight", l);
        t->ln2 = tensor_at(m, base, "model.layers.%d.post_attention_layernorm.weight", l);
        t->w_gate = tensor_at(m, base, "model.layers.%d.mlp.gate_proj.weight", l);
        t->w_up = tensor_at(m, base, "model.layers.%d.mlp.up_proj.weight", l);
        t->w_down = tensor_at(m, base, "model.layers.%d.mlp.down_proj.weight", l);
    }
    T->norm = tensor_at(m, base, "model.norm.weight", 0);
    T->lm_head = m->cfg.tie_word_embeddings ? T->embed : tensor_at(m, base, "lm_head.weight", 0);
}

// RoPE frequencies as transformers computes them (float32), with llama3 scaling.
static void rope_frequencies(tp_model *m) {
    const tp_model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    m->inv_freq = tp_xmalloc((size_t)half * sizeof *m->inv_freq);
    for (int i = 0; i < half; i++) {
        float f = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / c->head_dim));
        if (c->rope_llama3) {
            // Long wavelengths are divided by factor, short ones kept, the band between blended.
            double wavelen = 2 * M_PI / f, old = c->rope_original_max_position_embeddings;
            double low_wavelen = old / c->rope_low_freq_factor, high_wavelen = old / c->rope_high_freq_factor;
            if (wavelen > low_wavelen) {
                f = (float)(f / c->rope_factor);
            } else if (wavelen >= high_wavelen) {
                double smooth = (old / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (float)((1 - smooth) * f / c->rope_factor + smooth * f);
            }
        }
        m->inv_freq[i] = f;
    }
}

tp_model *tp_model_new(jv config, tp_err *err) {
    tp_model *m = tp_xcalloc(1, sizeof *m);
    m->config_json = config;
    if (tp_model_config_parse(config, &m->cfg, err) < 0) {
        tp_model_free(m);
        return NULL;
    }
    layout_params(m);
    if (m->n_floats > ((size_t)1 << 40) / sizeof(float)) {
        tp_err_set(err, "config.json: %zu parameters do not fit in memory", m->n_floats);
        tp_model_free(m);
        return NULL;
    }
    m->w = tp_alloc_big(m->n_floats * sizeof *m->w);
    if (m->w) memset(m->w, 0, m->n_floats * sizeof *m->w);
    if (!m->w) {
        tp_err_set(err, "out of memory for %zu parameters (%.1f GB)", m->n_floats, m->n_floats * 4e-9);
        tp_model_free(m);
        return NULL;
    }
    tp_model_bind(m, m->w, &m->W);
    rope_frequencies(m);
    return m;
}

// ---- random initialisation ----

void tp_model_init_weights(tp_model *m, uint64_t seed) {
    for (int i = 0; i < m->n_params; i++) {
        const tp_param *p = &m->params[i];
        float *w = m->w + p->offset;
        // Each tensor has its own stream, so adding a tensor does not change the others.
        uint64_t s0 = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1));
        // Pieces of the tensor's stream in parallel (two draws a normal): the same values
        // as one thread, minutes faster for billions of weights.
        enum { PIECE = 1 << 16 };
        size_t pieces = (p->numel + PIECE - 1) / PIECE;
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (size_t c = 0; c < pieces; c++) {
            uint64_t s = tp_splitmix64_skip(s0, 2 * (uint64_t)c * PIECE);
            size_t end = (c + 1) * PIECE < p->numel ? (c + 1) * PIECE : p->numel;
            for (size_t k = c * PIECE; k < end; k++) {
                switch (p->kind) {
                case TP_PARAM_NORM: w[k] = 1.0f; break;
                case TP_PARAM_BIAS: w[k] = 0.0f; break;
                default: w[k] = (float)(tp_normal(&s) * m->cfg.initializer_range); break;
                }
            }
        }
    }
}

// ---- loading ----

static int read_config(const char *dir, jv *out, tp_err *err) {
    char *path;
    if (asprintf(&path, "%s/config.json", dir) < 0) {
        tp_err_set(err, "out of memory");
        return -1;
    }
    tp_buf text = {0};
    int rc = tp_input_read_all(path, &text, err);
    if (rc == 0 && (rc = tp_json_parse(text.data, text.len, out, err)) < 0) tp_err_prefix(err, "%s", path);
    tp_buf_free(&text);
    free(path);
    return rc;
}

// Converts a checkpoint tensor to fp32, refusing NaN/Inf.
static int convert_tensor(const tp_tensor *t, float *dst, size_t n, tp_err *err) {
    if (t->dtype != TP_F32 && t->dtype != TP_BF16 && t->dtype != TP_F16) {
        tp_err_set(err, "tensor %s: dtype %s is not supported (F32, BF16, F16)", t->name, tp_dtype_name(t->dtype));
        return -1;
    }
    const unsigned char *src = t->data;
    for (size_t i = 0; i < n; i++) {
        float v;
        if (t->dtype == TP_F32) {
            memcpy(&v, src + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            v = t->dtype == TP_BF16 ? tp_bf16_to_f32(h) : tp_f16_to_f32(h);
        }
        if (!isfinite(v)) {
            tp_err_set(err, "tensor %s: element %zu is %s", t->name, i, isnan(v) ? "NaN" : "Inf");
            return -1;
        }
        dst[i] = v;
    }
    return 0;
}

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim) {
    int w = snprintf(buf, n, "[");
    for (int d = 0; d < ndim && w < (int)n; d++) w += snprintf(buf + w, n - (size_t)w, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (w < (int)n) snprintf(buf + w, n - (size_t)w, "]");
}

static bool same_shape(const tp_param *p, const int64_t *shape, int ndim) {
    if (ndim != p->ndim) return false;
    for (int d = 0; d < ndim; d++)
        if (shape[d] != p->shape[d]) return false;
    return true;
}

static int shape_error(const tp_param *p, const int64_t *shape, int ndim, tp_err *err) {
    char got[96], want[96];
    shape_str(got, sizeof got, shape, ndim);
    shape_str(want, sizeof want, p->shape, p->ndim);
    tp_err_set(err, "tensor %s has shape %s, the config says %s", p->name, got, want);
    return -1;
}

static bool is_known_extra(const char *name) {
    // Old Llama checkpoints carry the RoPE table; tied checkpoints may still carry lm_head.
    return tp_ends_with(name, ".rotary_emb.inv_freq") || strcmp(name, "lm_head.weight") == 0;
}

static int load_safetensors(tp_model *m, const char *dir, tp_err *err) {
    tp_weights *w = tp_weights_open(dir, err);
    if (!w) return -1;
    int rc = 0;
    for (int i = 0; i < m->n_params && rc == 0; i++) {
        const tp_param *p = &m->params[i];
        const tp_tensor *t = tp_weights_find(w, p->name);
        if (!t) {
            tp_err_set(err, "tensor %s is missing (expected shape [%lld%s%.0lld])", p->name, (long long)p->shape[0],
                       p->ndim == 2 ? ", " : "", p->ndim == 2 ? (long long)p->shape[1] : 0LL);
            rc = -1;
        } else if (!same_shape(p, t->shape, t->ndim)) {
            rc = shape_error(p, t->shape, t->ndim, err);
        } else {
            rc = convert_tensor(t, m->w + p->offset, p->numel, err);
        }
    }
    for (int s = 0; s < w->nshards && rc == 0; s++) {
        const tp_st_header *h = &w->shards[s]->header;
        for (int i = 0; i < h->count && rc == 0; i++) {
            const char *name = h->tensors[i].name;
            if (!tp_model_find_param(m, name) && !is_known_extra(name)) {
                tp_err_set(err, "tensor %s is not part of a %s with this config", name, tp_arch_name(m->cfg.arch));
                rc = -1;
            }
        }
    }
    tp_weights_close(w);
    return rc;
}

tp_model *tp_model_load(const char *path, tp_err *err) {
    if (tp_ends_with(path, ".gguf")) return tp_model_load_gguf(path, err);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        tp_err_set(err, "%s: not a model directory (config.json + model.safetensors) or a .gguf file", path);
        return NULL;
    }
    jv cfg;
    if (read_config(path, &cfg, err) < 0) return NULL;
    tp_model *m = tp_model_new(cfg, err);
    if (m && load_safetensors(m, path, err) < 0) {
        tp_model_free(m);
        m = NULL;
    }
    if (!m) tp_err_prefix(err, "%s", path);
    return m;
}
