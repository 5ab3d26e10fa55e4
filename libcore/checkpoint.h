// checkpoint.h — model directories written so that a crash never leaves half of one:
// everything goes into DIR.tmp-PID, which is fsynced and renamed to DIR on commit
// (an existing DIR is moved aside first and removed after).
#ifndef TP_CHECKPOINT_H
#define TP_CHECKPOINT_H

#include "error.h"
#include "model.h"
#include "tensor.h"

typedef struct tp_checkpoint {
    char *dir;  // the final name
    char *tmp;  // where files are written until commit
} tp_checkpoint;

int tp_checkpoint_begin(tp_checkpoint *c, const char *dir, tp_err *err);
int tp_checkpoint_commit(tp_checkpoint *c, tp_err *err);  // frees c either way
void tp_checkpoint_abort(tp_checkpoint *c);                // removes the temporary directory
// Commits by moving each file into DIR (created if needed), config.json last, leaving
// DIR's other entries (e.g. checkpoint-N subdirectories) alone. Each file appears
// whole; a reader that finds the new config.json finds the new weights.
int tp_checkpoint_commit_files(tp_checkpoint *c, tp_err *err);  // frees c either way

// Removes a checkpoint directory (its files, then itself); 0 when it is gone.
int tp_checkpoint_remove(const char *dir);

// config.json (the loaded config, torch_dtype set to dtype) and model.safetensors (every
// parameter in dtype: F32, BF16 or F16; no lm_head.weight when tied), into dir.
int tp_model_save(const tp_model *m, const char *dir, tp_dtype dtype, tp_err *err);
// Copies the tokenizer and generation files a model directory carries (tokenizer.json,
// tokenizer_config.json, special_tokens_map.json, generation_config.json, ... when present)
// from src (a directory, or a tokenizer.json file whose directory is used) to dir.
int tp_copy_model_files(const char *src, const char *dir, tp_err *err);

#endif
