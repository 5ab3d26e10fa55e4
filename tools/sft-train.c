// sft-train — supervised fine-tuning on tokenized traces (man 1 sft-train).
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli.h"
#include "dataset.h"
#include "error.h"
#include "fileio.h"
#include "input.h"
#include "json.h"
#include "jsonl.h"
#include "backend.h"
#include "dist.h"
#include "model.h"
#include "optim.h"
#include "progress.h"
#include "rng.h"
#include "tokenizer.h"

static const char usage[] =
    "Usage: sft-train (-m MODEL | --init CONFIG.json | --resume DIR) -d DATA... -o OUT_DIR [OPTIONS]\n"
    "Fine-tune on tensor streams from tokenize --template; metrics JSONL on stdout.\n"
    "  -m, --model DIR|FILE.gguf   start weights      --init CONFIG.json  random start\n"
    "      --tokenizer DIR|FILE    an --init model's tokenizer (copied into checkpoints)\n"
    "  -d, --data FILE             training stream ('-': stdin), repeatable\n"
    "  -o, --output DIR            final model; checkpoints in DIR/checkpoint-STEP\n"
    "      --resume DIR            continue from a checkpoint, exactly\n"
    "      --lr X (2e-5)  --schedule constant|linear|cosine (linear)  --warmup N (0)\n"
    "      --min-lr X (0)  --epochs N (1)  --steps N (overrides --epochs)\n"
    "      --micro-batch N (1) | --batch-tokens N  --grad-accum N (1)  --recompute\n"
    "      --loss-norm token|sequence  mean over the update's target tokens (token),\n"
    "                              or the mean of each record's mean (sequence)\n"
    "      --weight-decay X (0, not on norms/biases)  --beta1 X (0.9)  --beta2 X (0.999)\n"
    "      --eps X (1e-8)  --max-grad-norm X (1.0; 0: off)  --seed N (42)\n"
    "      --eval FILE  --eval-every N  --save-every N (0: final only)  --keep N (all)\n"
    "      --save-dtype f32|bf16|f16 (the input model's)  --metrics FILE (stdout)\n"
    "      --device cpu|cuda|auto (auto)  --matmul fp32|tf32|bf16 (cuda: bf16)\n"
    "  -j, --threads N  --progress  -q, --quiet  -h, --help  --version\n"
    "SIGINT/SIGTERM save a checkpoint and exit 1. Exit: 0 ok, 1 error, 2 usage error.\n"
    "See sft-train(1).\n";

enum {
    OPT_INIT = 0x100, OPT_TOKENIZER, OPT_RESUME, OPT_LR, OPT_SCHEDULE, OPT_WARMUP, OPT_MIN_LR, OPT_EPOCHS, OPT_STEPS,
    OPT_MICRO, OPT_ACCUM, OPT_BATCH_TOKENS, OPT_LOSS_NORM, OPT_RECOMPUTE, OPT_WD, OPT_BETA1, OPT_BETA2, OPT_EPS, OPT_CLIP, OPT_SEED,
    OPT_EVAL, OPT_EVAL_EVERY, OPT_SAVE_EVERY, OPT_KEEP, OPT_SAVE_DTYPE, OPT_METRICS, OPT_DEVICE, OPT_MATMUL,
};

typedef struct options {
    const char *model, *init, *tokenizer, *output, *resume, *eval, *metrics, *save_dtype, *device, *matmul;
    const char *data[64];
    int n_data;
    tp_lr_schedule sched;
    long long epochs, steps, micro, accum, batch_tokens, eval_every, save_every, keep, seed, threads;
    bool sequence_norm, recompute, micro_given;
    double wd, beta1, beta2, eps, clip;
} options;

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"init", required_argument, NULL, OPT_INIT},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER}, {"data", required_argument, NULL, 'd'},
        {"output", required_argument, NULL, 'o'}, {"resume", required_argument, NULL, OPT_RESUME},
        {"lr", required_argument, NULL, OPT_LR}, {"schedule", required_argument, NULL, OPT_SCHEDULE},
        {"warmup", required_argument, NULL, OPT_WARMUP}, {"min-lr", required_argument, NULL, OPT_MIN_LR},
        {"epochs", required_argument, NULL, OPT_EPOCHS}, {"steps", required_argument, NULL, OPT_STEPS},
        {"micro-batch", required_argument, NULL, OPT_MICRO}, {"grad-accum", required_argument, NULL, OPT_ACCUM},
        {"batch-tokens", required_argument, NULL, OPT_BATCH_TOKENS},
        {"loss-norm", required_argument, NULL, OPT_LOSS_NORM}, {"recompute", no_argument, NULL, OPT_RECOMPUTE},
        {"weight-decay", required_argument, NULL, OPT_WD}, {"beta1", required_argument, NULL, OPT_BETA1},
        {"beta2", required_argument, NULL, OPT_BETA2}, {"eps", required_argument, NULL, OPT_EPS},
        {"max-grad-norm", required_argument, NULL, OPT_CLIP}, {"seed", required_argument, NULL, OPT_SEED},
        {"eval", required_argument, NULL, OPT_EVAL}, {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
        {"save-every", required_argument, NULL, OPT_SAVE_EVERY}, {"keep", required_argument, NULL, OPT_KEEP},
        {"save-dtype", required_argument, NULL, OPT_SAVE_DTYPE}, {"metrics", required_argument, NULL, OPT_METRICS},
        {"device", required_argument, NULL, OPT_DEVICE}, {"matmul", required_argument, NULL, OPT_MATMUL},
        {"threads", required_argument, NULL, 'j'}, TP_CLI_COMMON_LONGOPTS, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:d:o:j:" TP_CLI_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_INIT: o->init = optarg; break;
        case OPT_TOKENIZER: o->tokenizer = optarg; break;
        case 'd':
            if (o->n_data == 64) tp_die_usage("at most 64 -d streams");
            o->data[o->n_data++] = optarg;
            break;
        case 'o': o->output = optarg; break;
        case OPT_RESUME: o->resume = optarg; break;
        case OPT_LR: o->sched.lr = tp_cli_double("--lr", optarg, 0, 10); break;
        case OPT_SCHEDULE:
            if (tp_schedule_parse(optarg, &o->sched.kind) < 0) tp_die_usage("--schedule: constant, linear or cosine");
            break;
        case OPT_WARMUP: o->sched.warmup = tp_cli_int("--warmup", optarg, 0, INT32_MAX); break;
        case OPT_MIN_LR: o->sched.min_lr = tp_cli_double("--min-lr", optarg, 0, 10); break;
        case OPT_EPOCHS: o->epochs = tp_cli_int("--epochs", optarg, 1, 1000000); break;
        case OPT_STEPS: o->steps = tp_cli_int("--steps", optarg, 1, INT32_MAX); break;
        case OPT_MICRO: o->micro = tp_cli_int("--micro-batch", optarg, 1, 65536), o->micro_given = true; break;
        case OPT_BATCH_TOKENS: o->batch_tokens = tp_cli_int("--batch-tokens", optarg, 1, INT32_MAX); break;
        case OPT_ACCUM: o->accum = tp_cli_int("--grad-accum", optarg, 1, 65536); break;
        case OPT_LOSS_NORM:
            if (strcmp(optarg, "token") && strcmp(optarg, "sequence")) tp_die_usage("--loss-norm: token or sequence");
            o->sequence_norm = strcmp(optarg, "sequence") == 0;
            break;
        case OPT_RECOMPUTE: o->recompute = true; break;
        case OPT_WD: o->wd = tp_cli_double("--weight-decay", optarg, 0, 10); break;
        case OPT_BETA1: o->beta1 = tp_cli_double("--beta1", optarg, 0, 0.999999); break;
        case OPT_BETA2: o->beta2 = tp_cli_double("--beta2", optarg, 0, 0.999999999); break;
        case OPT_EPS: o->eps = tp_cli_double("--eps", optarg, 0, 1); break;
        case OPT_CLIP: o->clip = tp_cli_double("--max-grad-norm", optarg, 0, 1e9); break;
        case OPT_SEED: o->seed = tp_cli_int("--seed", optarg, 0, INT64_MAX); break;
        case OPT_EVAL: o->eval = optarg; break;
        case OPT_EVAL_EVERY: o->eval_every = tp_cli_int("--eval-every", optarg, 1, INT32_MAX); break;
        case OPT_SAVE_EVERY: o->save_every = tp_cli_int("--save-every", optarg, 0, INT32_MAX); break;
        case OPT_KEEP: o->keep = tp_cli_int("--keep", optarg, 1, INT32_MAX); break;
        case OPT_SAVE_DTYPE: o->save_dtype = optarg; break;
        case OPT_METRICS: o->metrics = optarg; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_MATMUL: o->matmul = tp_cli_choice("--matmul", optarg, "fp32|tf32|bf16"); break;
        case 'j': o->threads = tp_cli_int("--threads", optarg, 1, 4096); break;
        default: tp_cli_common(c, usage);
        }
    }
    if (optind < argc) tp_die_usage("unexpected argument \"%s\" (data goes with -d)", argv[optind]);
    if (!!o->model + !!o->init + !!o->resume != 1) tp_die_usage("give one of -m MODEL, --init CONFIG.json or --resume DIR");
    if (o->tokenizer && !o->init) tp_die_usage("--tokenizer goes with --init (a model directory carries its own)");
    if (!o->n_data) tp_die_usage("-d DATA is required");
    if (!o->output) tp_die_usage("-o OUT_DIR is required");
    if (o->save_dtype && strcmp(o->save_dtype, "f32") && strcmp(o->save_dtype, "bf16") && strcmp(o->save_dtype, "f16"))
        tp_die_usage("--save-dtype: f32, bf16 or f16");
    if (o->sched.min_lr > o->sched.lr) tp_die_usage("--min-lr must not exceed --lr");
    if (o->batch_tokens && o->micro_given) tp_die_usage("give --micro-batch or --batch-tokens, not both");
}

// ---- the run's state, saved in trainer_state.json ----

typedef struct run_state {
    int64_t step, epoch, pos;  // updates done; current epoch; next record of the epoch's order
    uint64_t tokens;           // tokens seen
    double elapsed;            // seconds of training before this process
} run_state;

static volatile sig_atomic_t stop_signal;
static bool stopping;  // agreed by all ranks after an update: a signal reached one of them
static void on_signal(int sig) { stop_signal = sig; }

// The record order of an epoch: a Fisher-Yates shuffle seeded by (seed, epoch), so a
// resumed run sees the same order without saving it.
static void epoch_order(size_t *order, size_t n, uint64_t seed, int64_t epoch) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch;
    for (size_t i = 0; i < n; i++) order[i] = i;
    tp_shuffle(order, n, sizeof *order, &s);
}

// Where the data stream stands: the epoch, the next record of its order, and the order.
typedef struct cursor {
    int64_t epoch, pos;
    size_t *order;  // [records]
} cursor;

// One update's records in epoch order, cut into micro-batches: rec [n], mb [n_mb + 1]
// (micro-batch j is rec[mb[j]] .. rec[mb[j+1]-1]).
typedef struct update {
    size_t *rec;
    int n, cap;
    int *mb, n_mb;
} update;

typedef struct trainer {
    options *o;
    tp_model *m;
    tp_adamw opt;
    tp_dataset data, eval;
    size_t *order;
    tp_batch_buf buf;
    run_state st;
    tp_dtype save_dtype;
    const char *files_src;  // where tokenizer files come from
    tp_jsonl_writer *metrics;
    char **kept;
    int n_kept;
    tp_dist dist;  // ranks under mpirun; rank 0 writes metrics and checkpoints
    update upd;  // the current update's records
} trainer;

static double eval_loss(trainer *t) {
    tp_loss sum = {0, 0};
    // With --batch-tokens, as many records as surely fit: the budget over the longest.
    int micro = (int)t->o->micro;
    if (t->o->batch_tokens) micro = (int)(t->o->batch_tokens / (t->eval.max_len ? t->eval.max_len : 1));
    if (micro < 1) micro = 1;
    size_t *idx = tp_xmalloc((size_t)micro * sizeof *idx);
    tp_err err;
    // Ranks take turns by micro-batch; the sums are added across ranks below.
    size_t stride = (size_t)micro * (size_t)t->dist.world;
    for (size_t i = (size_t)micro * (size_t)t->dist.rank; i < t->eval.n; i += stride) {
        int n = 0;
        for (; n < micro && i + (size_t)n < t->eval.n; n++) idx[n] = i + (size_t)n;
        tp_dataset_batch(&t->eval, idx, n, 0, &t->buf);
        tp_loss l;
        if (tp_model_forward(t->m, &t->buf.batch, &l, NULL, 0, NULL, &err) < 0) tp_die("eval: %s", err.msg);
        sum.sum += l.sum, sum.count += l.count;
    }
    free(idx);
    double both[2] = {sum.sum, (double)sum.count};
    tp_dist_sum_f64(&t->dist, both, 2);
    return both[1] > 0 ? both[0] / both[1] : NAN;
}

static void write_trainer_state(const trainer *t, const char *dir) {
    jv s = jv_object();
    s = jv_object_set(s, jv_string("step"), jv_number((double)t->st.step));
    s = jv_object_set(s, jv_string("epoch"), jv_number((double)t->st.epoch));
    s = jv_object_set(s, jv_string("position"), jv_number((double)t->st.pos));
    s = jv_object_set(s, jv_string("tokens"), jv_number((double)t->st.tokens));
    s = jv_object_set(s, jv_string("elapsed"), jv_number(t->st.elapsed));
    s = jv_object_set(s, jv_string("seed"), jv_number((double)t->o->seed));
    s = jv_object_set(s, jv_string("records"), jv_number((double)t->data.n));
    s = jv_object_set(s, jv_string("schedule"), jv_string(tp_schedule_name(t->o->sched.kind)));
    s = jv_object_set(s, jv_string("lr"), jv_number(t->o->sched.lr));
    s = jv_object_set(s, jv_string("min_lr"), jv_number(t->o->sched.min_lr));
    s = jv_object_set(s, jv_string("warmup"), jv_number((double)t->o->sched.warmup));
    s = jv_object_set(s, jv_string("total_steps"), jv_number((double)t->o->sched.total));
    jv text = jv_dump_string(s, JV_PRINT_PRETTY | JV_PRINT_SPACE1);
    char *path;
    if (asprintf(&path, "%s/trainer_state.json", dir) < 0) abort();
    tp_err err;
    tp_atomic_file f;
    if (tp_atomic_open(&f, path, &err) < 0 || tp_write_all(f.fd, jv_string_value(text), strlen(jv_string_value(text)), path, &err) < 0 ||
        tp_atomic_commit(&f, &err) < 0)
        tp_die_err(&err);
    jv_free(text);
    free(path);
}

// A checkpoint directory: the model as a HF directory plus the training state. final:
// into OUT_DIR itself, beside its checkpoint-N directories.
static void save(trainer *t, const char *dir, bool final) {
    bool with_state = true;
    tp_checkpoint c;
    tp_err err;
    if (tp_checkpoint_begin(&c, dir, &err) < 0) tp_die_err(&err);
    char *opt_path;
    if (asprintf(&opt_path, "%s/optimizer.safetensors", c.tmp) < 0) abort();
    tp_model_pull(t->m, false);  // a device's weights into the host copy that is written
    if (tp_model_save(t->m, c.tmp, t->save_dtype, &err) < 0 || (t->files_src && tp_copy_model_files(t->files_src, c.tmp, &err) < 0) ||
        (with_state && tp_adamw_save(&t->opt, t->m, opt_path, &err) < 0)) {
        tp_checkpoint_abort(&c);
        tp_die_err(&err);
    }
    free(opt_path);
    if (with_state) write_trainer_state(t, c.tmp);
    if ((final ? tp_checkpoint_commit_files(&c, &err) : tp_checkpoint_commit(&c, &err)) < 0) tp_die_err(&err);
    if (!tp_cli.quiet) tp_info("saved %s (step %lld)", dir, (long long)t->st.step);
}

static void save_checkpoint(trainer *t) {
    if (t->dist.rank != 0) return;  // every rank holds the same weights; one writes them
    char *dir;
    if (asprintf(&dir, "%s/checkpoint-%lld", t->o->output, (long long)t->st.step) < 0) abort();
    save(t, dir, false);
    t->kept = tp_xrealloc(t->kept, (size_t)(t->n_kept + 1) * sizeof *t->kept);
    t->kept[t->n_kept++] = dir;
    while (t->o->keep && t->n_kept > t->o->keep) {
        if (tp_checkpoint_remove(t->kept[0]) < 0) tp_warn("could not remove %s", t->kept[0]);
        free(t->kept[0]);
        memmove(t->kept, t->kept + 1, (size_t)--t->n_kept * sizeof *t->kept);
    }
}

// Appends the next micro-batch to u: --micro-batch records, or with --batch-tokens as many
// as fit padded to the longest (a longer record goes alone). 0 when the epoch ended and
// the update already has records: an update never spans two epochs.
static int next_micro(const trainer *t, cursor *c, update *u) {
    const options *o = t->o;
    const tp_dataset *d = &t->data;
    int n = 0;
    uint64_t longest = 0;
    for (;;) {
        if ((size_t)c->pos >= d->n) {
            if (u->n > 0 || n > 0) break;
            c->epoch++, c->pos = 0;
            epoch_order(c->order, d->n, (uint64_t)o->seed, c->epoch);
        }
        size_t r = c->order[c->pos];
        if (o->batch_tokens) {
            uint64_t l = d->samples[r].len > longest ? d->samples[r].len : longest;
            if (n > 0 && (uint64_t)(n + 1) * l > (uint64_t)o->batch_tokens) break;
            longest = l;
        } else if (n == o->micro) {
            break;
        }
        if (u->n == u->cap) u->cap = u->cap ? 2 * u->cap : 64, u->rec = tp_xrealloc(u->rec, (size_t)u->cap * sizeof *u->rec);
        u->rec[u->n++] = r, n++, c->pos++;
    }
    return n;
}

// The next update: grad-accum × world micro-batches (fewer at the end of an epoch).
static void next_update(const trainer *t, cursor *c, update *u) {
    int want = (int)t->o->accum * t->dist.world;
    u->n = 0, u->n_mb = 0;
    u->mb = tp_xrealloc(u->mb, (size_t)(want + 1) * sizeof *u->mb);
    u->mb[0] = 0;
    while (u->n_mb < want && next_micro(t, c, u) > 0) u->mb[++u->n_mb] = u->n;
}

// Updates in the first `epochs` epochs, walking the same orders training will.
static int64_t updates_in_epochs(const trainer *t, int64_t epochs) {
    cursor c = {0, 0, tp_xmalloc(t->data.n * sizeof(size_t))};
    epoch_order(c.order, t->data.n, (uint64_t)t->o->seed, 0);
    update u = {0};
    int64_t count = 0;
    for (;;) {
        next_update(t, &c, &u);
        if (c.epoch >= epochs) break;  // this update belongs to the next epoch
        count++;
    }
    free(c.order), free(u.rec), free(u.mb);
    return count;
}

// "8 records" or "4 x 2 micro-batches of <= 4096 tokens", for the log.
static const char *per_update_text(const trainer *t, char *buf, size_t cap) {
    const options *o = t->o;
    long long mbs = o->accum * t->dist.world;
    if (o->batch_tokens)
        snprintf(buf, cap, "%lld micro-batches of <= %lld tokens", mbs, o->batch_tokens);
    else
        snprintf(buf, cap, "%lld records", mbs * o->micro);
    return buf;
}

// Sums the gradients of all ranks (each computed its share of the update's records):
// on GPUs with NCCL, device to device; otherwise through the host with MPI.
static void sum_gradients(trainer *t) {
    tp_model *m = t->m;
    const tp_backend *be = tp_model_backend(m);
    tp_err err;
    if (t->dist.nccl && tp_dist_sum_device_f32(&t->dist, tp_model_grads(m), m->n_floats, &err) < 0) tp_die_err(&err);
    if (t->dist.nccl || t->dist.world == 1) return;
    tp_model_pull(m, true);
    tp_dist_sum_f32(&t->dist, m->g, m->n_floats);
    if (be->device) be->upload(tp_model_grads(m), m->g, m->n_floats * sizeof(float));
}

// One update: the next micro × accum × world records in the epoch order (the same on
// every rank), rank r taking the r-th share; the loss is normalised over the whole
// update's targets, which every rank knows from the dataset without communicating.
static void train_step(trainer *t, double start) {
    const options *o = t->o;
    int world = t->dist.world;
    cursor c = {t->st.epoch, t->st.pos, t->order};
    next_update(t, &c, &t->upd);
    t->st.epoch = c.epoch, t->st.pos = c.pos;
    const update *u = &t->upd;
    uint64_t targets = 0, tokens = 0;
    for (int i = 0; i < u->n; i++) targets += t->data.samples[u->rec[i]].targets, tokens += t->data.samples[u->rec[i]].len;
    // Rank r computes the r-th share of the micro-batches.
    int share = (u->n_mb + world - 1) / world, mb0 = share * t->dist.rank;
    int mb1 = mb0 + share < u->n_mb ? mb0 + share : u->n_mb;
    tp_model_zero_grad(t->m);
    tp_loss total = {0, 0};
    double seq_loss = 0;
    int n_seq = 0;
    tp_err err;
    for (int j = mb0; j < mb1; j++) {
        for (int i = u->mb[j]; i < u->mb[j + 1];) {
            // Sequence norm: each record alone, weighted 1/(its targets * records).
            int k = o->sequence_norm ? 1 : u->mb[j + 1] - i;
            float scale;
            if (o->sequence_norm) {
                uint32_t cnt = t->data.samples[u->rec[i]].targets;
                scale = cnt ? 1.0f / ((float)cnt * (float)u->n) : 0.0f;
            } else {
                scale = targets ? 1.0f / (float)targets : 0.0f;
            }
            tp_dataset_batch(&t->data, u->rec + i, k, 0, &t->buf);
            tp_loss l;
            if (tp_model_forward_backward(t->m, &t->buf.batch, scale, &l, &err) < 0) tp_die_err(&err);
            total.sum += l.sum, total.count += l.count;
            if (o->sequence_norm && l.count) seq_loss += l.sum / (double)l.count, n_seq++;
            i += k;
        }
    }
    sum_gradients(t);
    // Loss statistics of all ranks, and whether any rank was asked to stop (so all stop
    // after the same update instead of waiting for each other forever).
    double stats[5] = {total.sum, (double)total.count, seq_loss, (double)n_seq, stop_signal ? 1.0 : 0.0};
    tp_dist_sum_f64(&t->dist, stats, 5);
    total.sum = stats[0], total.count = (int64_t)stats[1], seq_loss = stats[2], n_seq = (int)stats[3];
    stopping = stats[4] > 0;
    if (stopping && !stop_signal) stop_signal = SIGTERM;
    double norm = tp_adamw_clip_grad_norm(&t->opt, t->m, o->clip);
    double lr = tp_lr_at(&o->sched, t->st.step);
    tp_adamw_update(&t->opt, t->m, lr);
    t->st.step++;
    t->st.tokens += tokens;
    double elapsed = t->st.elapsed + tp_now() - start;
    double loss = o->sequence_norm ? (n_seq ? seq_loss / n_seq : NAN) : (total.count ? total.sum / (double)total.count : NAN);
    jv line = jv_object();
    line = jv_object_set(line, jv_string("step"), jv_number((double)t->st.step));
    line = jv_object_set(line, jv_string("epoch"), jv_number((double)t->st.epoch + (double)t->st.pos / (double)t->data.n));
    line = jv_object_set(line, jv_string("loss"), jv_number(loss));
    line = jv_object_set(line, jv_string("lr"), jv_number(lr));
    line = jv_object_set(line, jv_string("grad_norm"), jv_number(norm));
    line = jv_object_set(line, jv_string("tokens"), jv_number((double)t->st.tokens));
    line = jv_object_set(line, jv_string("tokens_per_s"), jv_number(elapsed > 0 ? (double)t->st.tokens / elapsed : 0));
    line = jv_object_set(line, jv_string("elapsed"), jv_number(elapsed));
    bool last = t->st.step >= o->sched.total;
    if (t->eval.n && ((o->eval_every && t->st.step % o->eval_every == 0) || last))
        line = jv_object_set(line, jv_string("eval_loss"), jv_number(eval_loss(t)));
    if (t->dist.rank == 0 && tp_jsonl_write(t->metrics, line, &err) < 0) tp_die_err(&err);
    jv_free(line);
}

static tp_dtype parse_dtype(const char *s, tp_dtype dflt) {
    if (!s) return dflt;
    return strcmp(s, "bf16") == 0 ? TP_BF16 : strcmp(s, "f16") == 0 ? TP_F16 : TP_F32;
}

static jv read_json_file(const char *path) {
    tp_buf text = {0};
    tp_err err;
    jv v;
    if (tp_input_read_all(path, &text, &err) < 0 || tp_json_parse(text.data, text.len, &v, &err) < 0) {
        if (!strstr(err.msg, path)) tp_err_prefix(&err, "%s", path);
        tp_die_err(&err);
    }
    tp_buf_free(&text);
    return v;
}

// The stream must have been made with the model's tokenizer (when both say which).
static void check_tokenizer(const trainer *t) {
    const char *want = tp_json_get_string(t->data.metadata, "tokenizer_hash");
    if (!want || !t->files_src) return;
    tp_err err;
    tp_tokenizer *tok = tp_tokenizer_load(t->files_src, &err);
    if (!tok) return;  // a model without tokenizer files: nothing to compare
    if (strcmp(tp_tokenizer_hash(tok), want) != 0)
        tp_die("%s: made with tokenizer %s, but %s has tokenizer %s; tokenize the data with the model's tokenizer",
               t->o->data[0], want, t->files_src, tp_tokenizer_hash(tok));
    tp_tokenizer_free(tok);
}

static void load_model(trainer *t) {
    options *o = t->o;
    tp_err err;
    if (o->init) {
        t->m = tp_model_new(read_json_file(o->init), &err);
        if (!t->m) tp_die("%s: %s", o->init, err.msg);
        tp_model_init_weights(t->m, (uint64_t)o->seed);
        t->files_src = o->tokenizer;
    } else {
        const char *path = o->resume ? o->resume : o->model;
        t->m = tp_model_load(path, &err);
        if (!t->m) tp_die_err(&err);
        t->files_src = path;
        if (t->m->load_note && !tp_cli.quiet) tp_info("%s", t->m->load_note);
    }
    t->m->recompute = o->recompute;
    t->save_dtype = parse_dtype(o->save_dtype, t->m->cfg.dtype);
    char desc[300];
    if (tp_model_place(t->m, o->device, o->matmul, true, desc, sizeof desc, &err) < 0) tp_die_err(&err);
    if (!tp_cli.quiet) tp_info("device %s", desc);
    tp_adamw_init(&t->opt, t->m, o->beta1, o->beta2, o->eps, o->wd);
}

static void resume_state(trainer *t) {
    options *o = t->o;
    tp_err err;
    char *path;
    if (asprintf(&path, "%s/optimizer.safetensors", o->resume) < 0) abort();
    if (tp_adamw_load(&t->opt, t->m, path, &err) < 0) tp_die("cannot resume: %s", err.msg);
    free(path);
    if (asprintf(&path, "%s/trainer_state.json", o->resume) < 0) abort();
    jv s = read_json_file(path);
    jv v;
    double num[5];
    const char *keys[5] = {"step", "epoch", "position", "tokens", "elapsed"};
    for (int i = 0; i < 5; i++) {
        v = tp_json_get(s, keys[i]);
        if (jv_get_kind(v) != JV_KIND_NUMBER) tp_die("cannot resume: %s has no \"%s\"", path, keys[i]);
        num[i] = jv_number_value(v);
        jv_free(v);
    }
    v = tp_json_get(s, "records");
    if (jv_get_kind(v) != JV_KIND_NUMBER || (size_t)jv_number_value(v) != t->data.n)
        tp_die("cannot resume: %s was trained on %.0f records, the data has %zu", path,
               jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -1.0, t->data.n);
    jv_free(v);
    t->st = (run_state){(int64_t)num[0], (int64_t)num[1], (int64_t)num[2], (uint64_t)num[3], num[4]};
    if (t->st.step != t->opt.step) tp_die("cannot resume: %s says step %lld, the optimizer state %lld", path,
                                         (long long)t->st.step, (long long)t->opt.step);
    jv seed = tp_json_get(s, "seed");
    if (jv_get_kind(seed) == JV_KIND_NUMBER) o->seed = (long long)jv_number_value(seed);
    jv_free(seed);
    jv_free(s);
    free(path);
}

int main(int argc, char **argv) {
    tp_cli_init(argc, argv);
    trainer t = {0};
    tp_err err;
    if (tp_dist_init(&t.dist, &argc, &argv, &err) < 0) tp_die_err(&err);
    options o = {.sched = {.kind = TP_SCHEDULE_LINEAR, .lr = 2e-5}, .epochs = 1, .micro = 1, .accum = 1, .seed = 42,
                 .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .clip = 1.0};
    parse_options(argc, argv, &o);
    if (o.threads) omp_set_num_threads((int)o.threads);
    t.o = &o;
    if (t.dist.rank != 0) tp_cli.quiet = true;  // one voice: rank 0's
    load_model(&t);
    if (tp_model_backend(t.m)->device) {
        char version[32];
        int rc = tp_dist_use_gpus(&t.dist, version, sizeof version, &err);
        if (rc < 0) tp_die_err(&err);
        if (rc > 0 && !tp_cli.quiet) tp_info("gradients summed on the GPUs with NCCL %s", version);
    }
    if (tp_dataset_load(&t.data, o.data, o.n_data, t.m->cfg.vocab_size, &err) < 0) tp_die_err(&err);
    if (o.eval && tp_dataset_load(&t.eval, (const char *[]){o.eval}, 1, t.m->cfg.vocab_size, &err) < 0) tp_die_err(&err);
    check_tokenizer(&t);
    t.order = tp_xmalloc(t.data.n * sizeof *t.order);
    o.sched.total = o.steps ? o.steps : updates_in_epochs(&t, o.epochs);
    if (o.resume) resume_state(&t);
    epoch_order(t.order, t.data.n, (uint64_t)o.seed, t.st.epoch);
    if (t.dist.rank == 0) {
        if (mkdir(o.output, 0755) < 0 && errno != EEXIST) tp_die("%s: %s", o.output, strerror(errno));
        t.metrics = o.metrics ? tp_jsonl_writer_open(o.metrics, o.resume != NULL, &err)
                              : tp_jsonl_writer_fd(STDOUT_FILENO, "<stdout>");
        if (!t.metrics) tp_die_err(&err);
    }
    char per_update[96], ranks[32] = "";
    if (t.dist.world > 1) snprintf(ranks, sizeof ranks, "; %d ranks", t.dist.world);
    if (!tp_cli.quiet)
        tp_info("%s, %zu parameters; %zu records, %zu tokens, %llu targets; %lld updates of %s from step %lld"
                "%s",
                tp_arch_name(t.m->cfg.arch), t.m->n_floats, t.data.n, t.data.tokens, (unsigned long long)t.data.targets,
                (long long)o.sched.total, per_update_text(&t, per_update, sizeof per_update), (long long)t.st.step,
                ranks);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    tp_progress progress;
    tp_progress_start(&progress, "steps", (uint64_t)o.sched.total);
    double start = tp_now();
    while (t.st.step < o.sched.total && !stopping) {
        train_step(&t, start);
        tp_progress_update(&progress, (uint64_t)t.st.step);
        if (o.save_every && t.st.step % o.save_every == 0 && t.st.step < o.sched.total) {
            t.st.elapsed += tp_now() - start, start = tp_now();
            save_checkpoint(&t);
        }
    }
    tp_progress_finish(&progress);
    t.st.elapsed += tp_now() - start;
    if (t.metrics && tp_jsonl_writer_close(t.metrics, &err) < 0) tp_die_err(&err);
    if (stopping) {
        if (t.dist.rank == 0) tp_warn("%s: saving a checkpoint and stopping", strsignal(stop_signal));
        save_checkpoint(&t);
        tp_dist_finalize(&t.dist);
        return 1;
    }
    if (t.dist.rank == 0) save(&t, o.output, true);
    tp_dist_finalize(&t.dist);
    tp_adamw_free(&t.opt);
    tp_dataset_free(&t.data);
    tp_dataset_free(&t.eval);
    tp_batch_buf_free(&t.buf);
    free(t.upd.rec), free(t.upd.mb);
    for (int i = 0; i < t.n_kept; i++) free(t.kept[i]);
    free(t.kept);
    free(t.order);
    tp_model_free(t.m);
    return 0;
}
