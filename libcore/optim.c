// optim.c — AdamW, schedules and gradient clipping (formulas in optim.h).
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "json.h"
#include "safetensors.h"
#include <stdio.h>

static const char *SCHEDULE_NAMES[] = {"constant", "linear", "cosine"};

const char *tp_schedule_name(tp_schedule s) { return SCHEDULE_NAMES[s]; }

int tp_schedule_parse(const char *name, tp_schedule *out) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, SCHEDULE_NAMES[i]) == 0) {
            *out = (tp_schedule)i;
            return 0;
        }
    return -1;
}

double tp_lr_at(const tp_lr_schedule *s, int64_t step) {
    if (step < s->warmup) return s->lr * (double)step / (double)s->warmup;
    if (s->kind == TP_SCHEDULE_CONSTANT) return s->lr;
    if (step >= s->total || s->total <= s->warmup) return s->min_lr;
    double progress = (double)(step - s->warmup) / (double)(s->total - s->warmup);
    double frac = s->kind == TP_SCHEDULE_LINEAR ? 1.0 - progress : 0.5 * (1.0 + cos(M_PI * progress));
    return s->min_lr + (s->lr - s->min_lr) * frac;
}

void tp_adamw_init(tp_adamw *opt, const tp_model *m, double beta1, double beta2, double eps, double weight_decay) {
    memset(opt, 0, sizeof *opt);
    opt->beta1 = beta1, opt->beta2 = beta2, opt->eps = eps, opt->weight_decay = weight_decay;
    opt->n = m->n_floats;
    opt->be = tp_model_backend(m);
    size_t bytes = (opt->n ? opt->n : 1) * sizeof(float);
    opt->m = opt->be->alloc(bytes);
    opt->v = opt->be->alloc(bytes);
    if (!opt->m || !opt->v) {  // host: malloc failing is fatal everywhere; device: say how much
        if (!opt->be->device) abort();
        tp_die("out of device memory: AdamW's moments need %.2f GiB (%.2f GiB free); try a smaller model or "
               "--device cpu", 2.0 * (double)bytes / (1 << 30), (double)opt->be->free_bytes() / (1 << 30));
    }
    opt->be->memzero(opt->m, bytes);
    opt->be->memzero(opt->v, bytes);
    opt->decay = tp_xcalloc((size_t)m->n_params + 1, 1);
    opt->ranges = tp_xcalloc((size_t)m->n_params + 1, sizeof *opt->ranges);
    for (int i = 0; i < m->n_params; i++) {
        opt->decay[i] = m->params[i].kind == TP_PARAM_MATRIX || m->params[i].kind == TP_PARAM_EMBEDDING;
        opt->ranges[i] = (adamw_range){m->params[i].offset, m->params[i].numel, opt->decay[i]};
    }
    opt->grad_scale = 1.0f;
}

void tp_adamw_free(tp_adamw *opt) {
    if (opt->be) {
        if (opt->m) opt->be->free(opt->m);
        if (opt->v) opt->be->free(opt->v);
    }
    free(opt->decay), free(opt->ranges);
    memset(opt, 0, sizeof *opt);
}

void tp_adamw_update(tp_adamw *opt, tp_model *model, double lr) {
    opt->step++;
    double bc1 = 1.0 - pow(opt->beta1, (double)opt->step), bc2 = 1.0 - pow(opt->beta2, (double)opt->step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    opt->be->adamw_ranges(tp_model_weights(model), tp_model_grads(model), opt->m, opt->v, opt->ranges, model->n_params,
                          opt->grad_scale, (float)(1.0 - lr * opt->weight_decay), (float)opt->beta1,
                          (float)opt->beta2, step_size, bc2_sqrt, (float)opt->eps);
    opt->grad_scale = 1.0f;
}

// The gradients' L2 norm, and clip_grad_norm_'s factor for them (1: none).
static double grad_norm(tp_model *m, double max_norm, float *factor) {
    double norm = sqrt(tp_model_backend(m)->sum_squares(tp_model_grads(m), m->n_floats));
    // torch's rule exactly: scale whenever max_norm / (norm + 1e-6) < 1, which includes
    // norms a hair below max_norm.
    *factor = max_norm > 0 && max_norm / (norm + 1e-6) < 1.0 ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
    return norm;
}

double tp_clip_grad_norm(tp_model *m, double max_norm) {
    float factor;
    double norm = grad_norm(m, max_norm, &factor);
    if (factor != 1.0f) tp_model_backend(m)->scale(tp_model_grads(m), m->n_floats, factor);
    return norm;
}

double tp_adamw_clip_grad_norm(tp_adamw *opt, tp_model *m, double max_norm) {
    float factor;
    double norm = grad_norm(m, max_norm, &factor);
    opt->grad_scale = factor;
    return norm;
}

static const char *STATE_PREFIX[3] = {"master.", "exp_avg.", "exp_avg_sq."};

int tp_adamw_save(const tp_adamw *opt, const tp_model *m, const char *path, tp_err *err) {
    int n = m->n_params * 3;
    tp_tensor_ref *refs = tp_xcalloc((size_t)n, sizeof *refs);
    char **names = tp_xcalloc((size_t)n, sizeof *names);
    // On a device the state is copied to the host first.
    float *host_m = opt->m, *host_v = opt->v;
    if (opt->be->device) {
        tp_model_pull((tp_model *)m, false);
        host_m = tp_xmalloc(opt->n * sizeof(float) + 1), host_v = tp_xmalloc(opt->n * sizeof(float) + 1);
        opt->be->download(host_m, opt->m, opt->n * sizeof(float));
        opt->be->download(host_v, opt->v, opt->n * sizeof(float));
    }
    const float *base[3] = {m->w, host_m, host_v};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < m->n_params; i++) {
            const tp_param *p = &m->params[i];
            int j = k * m->n_params + i;
            if (asprintf(&names[j], "%s%s", STATE_PREFIX[k], p->name) < 0) abort();
            refs[j] = (tp_tensor_ref){names[j], TP_F32, p->ndim, p->shape, base[k] + p->offset};
        }
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)opt->step);
    jv meta = jv_object_set(jv_object(), jv_string("step"), jv_string(step));
    int rc = tp_safetensors_write(path, refs, n, meta, err);
    jv_free(meta);
    for (int j = 0; j < n; j++) free(names[j]);
    free(names), free(refs);
    if (opt->be->device) free(host_m), free(host_v);
    return rc;
}

int tp_adamw_load(tp_adamw *opt, tp_model *m, const char *path, tp_err *err) {
    tp_safetensors *st = tp_safetensors_open(path, err);
    if (!st) return -1;
    int rc = 0;
    float *host_m = opt->m, *host_v = opt->v;
    if (opt->be->device) host_m = tp_xmalloc(opt->n * sizeof(float) + 1), host_v = tp_xmalloc(opt->n * sizeof(float) + 1);
    float *base[3] = {m->w, host_m, host_v};
    for (int k = 0; k < 3 && rc == 0; k++)
        for (int i = 0; i < m->n_params && rc == 0; i++) {
            const tp_param *p = &m->params[i];
            char name[128];
            snprintf(name, sizeof name, "%s%s", STATE_PREFIX[k], p->name);
            const tp_tensor *t = tp_safetensors_find(st, name);
            if (!t || t->dtype != TP_F32 || t->ndim != p->ndim || t->shape[0] != p->shape[0] ||
                (p->ndim == 2 && t->shape[1] != p->shape[1])) {
                tp_err_set(err, "%s: %s is missing or not F32 with the model's shape", path, name);
                rc = -1;
            } else {
                memcpy(base[k] + p->offset, t->data, p->numel * sizeof(float));
            }
        }
    const char *step = rc == 0 ? tp_json_get_string(st->header.metadata, "step") : NULL;
    char *end = NULL;
    long long s = step ? strtoll(step, &end, 10) : -1;
    if (rc == 0 && (!step || *end || s < 0)) {
        tp_err_set(err, "%s: __metadata__ has no valid \"step\"", path);
        rc = -1;
    }
    if (rc == 0) opt->step = s;
    tp_safetensors_close(st);
    if (opt->be->device) {
        if (rc == 0) {
            opt->be->upload(opt->m, host_m, opt->n * sizeof(float));
            opt->be->upload(opt->v, host_v, opt->n * sizeof(float));
            tp_model_push(m);
        }
        free(host_m), free(host_v);
    }
    return rc;
}
