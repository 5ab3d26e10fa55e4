// optim.h — AdamW, learning-rate schedules and gradient clipping, as PyTorch and
// transformers define them (torch.optim.AdamW, clip_grad_norm_, get_*_schedule_with_warmup),
// over the model's flat parameter and gradient buffers.
#ifndef TP_OPTIM_H
#define TP_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef enum tp_schedule { TP_SCHEDULE_CONSTANT, TP_SCHEDULE_LINEAR, TP_SCHEDULE_COSINE } tp_schedule;

typedef struct tp_lr_schedule {
    tp_schedule kind;
    double lr;      // peak learning rate
    double min_lr;  // where linear and cosine end (transformers' cosine_with_min_lr)
    int64_t warmup; // updates of linear warmup from 0
    int64_t total;  // updates in the run (the decay's length)
} tp_lr_schedule;

// The learning rate of update number step (0-based), as transformers' LambdaLR gives it:
// step < warmup: lr * step / warmup (so the first update of a warmed-up run uses 0);
// then constant: lr; linear: min_lr + (lr - min_lr) * (total - step) / (total - warmup);
// cosine: min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))).
// Past total, linear and cosine stay at min_lr.
double tp_lr_at(const tp_lr_schedule *s, int64_t step);
int tp_schedule_parse(const char *name, tp_schedule *out);  // 0 ok, -1 unknown
const char *tp_schedule_name(tp_schedule s);

typedef struct tp_adamw {
    double beta1, beta2, eps, weight_decay;
    int64_t step;  // updates done
    float *m, *v;  // moments [n_floats], laid out like the parameters, in the backend's memory
    const struct tp_backend *be;  // the model's backend when tp_adamw_init ran
    size_t n;
    uint8_t *decay;  // [n_params]: 1 where weight decay applies (matrices and embeddings; not norms or biases)
    struct adamw_range *ranges;  // [n_params]: each parameter's floats, and decay[i]
    float grad_scale;            // applied to the gradients by the next update (tp_adamw_clip_grad_norm), else 1
} tp_adamw;

void tp_adamw_init(tp_adamw *opt, const tp_model *m, double beta1, double beta2, double eps, double weight_decay);
void tp_adamw_free(tp_adamw *opt);
// One update of every parameter of m with its gradient m->g, at learning rate lr:
//   p -= lr * wd * p (decoupled, where decay applies); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// with g the gradient times opt->grad_scale, which is then reset to 1.
void tp_adamw_update(tp_adamw *opt, tp_model *m, double lr);

// The model must already be on its backend (tp_model_use_backend) when tp_adamw_init runs.
// optimizer.safetensors: for every parameter NAME, "master.NAME" (the fp32 weights, so a
// resumed run continues from exactly these values whatever dtype the model was saved in),
// "exp_avg.NAME" and "exp_avg_sq.NAME"; __metadata__ {"step": "N"}. Load checks that every
// tensor is there with the model's shape, and restores weights, moments and step.
int tp_adamw_save(const tp_adamw *opt, const tp_model *m, const char *path, tp_err *err);
int tp_adamw_load(tp_adamw *opt, tp_model *m, const char *path, tp_err *err);

// The L2 norm of all gradients together (in double), and clip_grad_norm_'s scaling: when
// max_norm > 0, gradients are multiplied by max_norm / (norm + 1e-6) if that is below 1.
// Returns the norm before clipping.
double tp_clip_grad_norm(tp_model *m, double max_norm);
// The same norm and factor, the factor kept in opt->grad_scale for the next tp_adamw_update
// to apply as it reads the gradients (which stay as they are): the same update, one pass
// over the gradients fewer.
double tp_adamw_clip_grad_norm(tp_adamw *opt, tp_model *m, double max_norm);

#endif
