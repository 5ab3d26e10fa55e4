// libFuzzer target: safetensors validation and tensor access.
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    tp_err err;
    tp_safetensors *st = tp_safetensors_from_mem(data, size, "fuzz", &err);
    if (!st) return 0;
    double sum = 0;
    for (int i = 0; i < st->header.count; i++) {
        const tp_tensor *t = &st->header.tensors[i];
        if (tp_safetensors_find(st, t->name) == NULL) __builtin_trap();
        for (uint64_t k = 0, n = tp_tensor_numel(t); k < n; k++) sum += tp_tensor_get(t->data, t->dtype, k);
    }
    tp_safetensors_close(st);
    return sum == 12345.678;
}
