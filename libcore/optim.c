// optim.c — AdamW, schedules and gradient clipping (formulas in optim.h).
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    opt->m = tp_xcalloc(opt->n ? opt->n : 1, sizeof *opt->m);
    opt->v = tp_xcalloc(opt->n ? opt->n : 1, sizeof *opt->v);
    opt->decay = tp_xcalloc((size_t)m->n_params + 1, 1);
    for (int i = 0; i < m->n_params; i++)
        opt->decay[i] = m->params[i].kind == TP_PARAM_MATRIX || m->params[i].kind == TP_PARAM_EMBEDDING;
}

void tp_adamw_free(tp_adamw *opt) {
    free(opt->m);
    free(opt->v);
    free(opt->decay);
    memset(opt, 0, sizeof *opt);
}

// The update of n parameters; the arithmetic order follows torch's single-tensor AdamW in
// float: decay first, then the moments, then the step with bias corrections.
static void adamw_span(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                       float decay_factor, float b1, float b2, float step_size, float bc2_sqrt, float eps) {
#pragma omp parallel for schedule(static) if (n > 1 << 15)
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay_factor;
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi, v[i] = vi;
        p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

void tp_adamw_update(tp_adamw *opt, tp_model *model, double lr) {
    opt->step++;
    double bc1 = 1.0 - pow(opt->beta1, (double)opt->step), bc2 = 1.0 - pow(opt->beta2, (double)opt->step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    for (int i = 0; i < model->n_params; i++) {
        const tp_param *p = &model->params[i];
        float decay_factor = opt->decay[i] ? (float)(1.0 - lr * opt->weight_decay) : 1.0f;
        adamw_span(model->w + p->offset, model->g + p->offset, opt->m + p->offset, opt->v + p->offset, p->numel,
                   decay_factor, (float)opt->beta1, (float)opt->beta2, step_size, bc2_sqrt, (float)opt->eps);
    }
}

// Sum of squares in fixed blocks added in a fixed order: the same bits for any thread
// count and every run (an OpenMP reduction may combine partial sums in any order).
static double sum_squares(const float *g, size_t n) {
    enum { BLOCK = 1 << 16 };
    size_t nb = (n + BLOCK - 1) / BLOCK;
    double *part = tp_xcalloc(nb ? nb : 1, sizeof *part);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
        size_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
        double s = 0;
        for (size_t i = b * BLOCK; i < end; i++) s += (double)g[i] * g[i];
        part[b] = s;
    }
    double sum = 0;
    for (size_t b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}

double tp_clip_grad_norm(tp_model *m, double max_norm) {
    double norm = sqrt(sum_squares(m->g, m->n_floats));
    // torch's rule exactly: scale whenever max_norm / (norm + 1e-6) < 1, which includes
    // norms a hair below max_norm.
    if (max_norm > 0 && max_norm / (norm + 1e-6) < 1.0) {
        float scale = (float)(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static) if (m->n_floats > 1 << 15)
        for (size_t i = 0; i < m->n_floats; i++) m->g[i] *= scale;
    }
    return norm;
}

static const char *STATE_PREFIX[3] = {"master.", "exp_avg.", "exp_avg_sq."};

int tp_adamw_save(const tp_adamw *opt, const tp_model *m, const char *path, tp_err *err) {
    int n = m->n_params * 3;
    tp_tensor_ref *refs = tp_xcalloc((size_t)n, sizeof *refs);
    char **names = tp_xcalloc((size_t)n, sizeof *names);
    const float *base[3] = {m->w, opt->m, opt->v};
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
    return rc;
}

int tp_adamw_load(tp_adamw *opt, tp_model *m, const char *path, tp_err *err) {
    tp_safetensors *st = tp_safetensors_open(path, err);
    if (!st) return -1;
    int rc = 0;
    float *base[3] = {m->w, opt->m, opt->v};
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
    return rc;
}
