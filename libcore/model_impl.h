// model_impl.h — model internals shared by model.c (forward/backward) and model_load.c
// (layout, loading) and model_gguf.c. Not installed.
#ifndef TP_MODEL_IMPL_H
#define TP_MODEL_IMPL_H

#include "model.h"

// Points T's fields into base, a buffer laid out like tp_model.params.
void tp_model_bind(const tp_model *m, float *base, tp_model_tensors *T);
// Loads a .gguf file through libcore/gguf.h (model_gguf.c).
tp_model *tp_model_load_gguf(const char *path, tp_err *err);
void tp_activations_free(tp_activations *a);

#endif
