// libFuzzer target: GGUF validation, metadata, dequantization and the Hugging Face view.
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    tp_err err;
    tp_gguf *g = tp_gguf_from_mem(data, size, "fuzz", &err);
    if (!g) return 0;
    jv meta = tp_gguf_metadata(g);
    jv_free(meta);
    double sum = 0;
    for (int i = 0; i < tp_gguf_tensor_count(g); i++) {
        const tp_gguf_tensor *t = tp_gguf_tensor_at(g, i);
        if (tp_gguf_find(g, t->name) != t) __builtin_trap();
        if (t->nelem > (1 << 20)) continue;  // valid but large: validation is what matters
        float *out = malloc(sizeof *out * (t->nelem + 1));
        if (tp_gguf_dequantize(t, out, &err) == 0)
            for (uint64_t k = 0; k < t->nelem; k++) sum += out[k];
        free(out);
        char hf[256];
        if (tp_gguf_hf_name(t->name, hf, sizeof hf)) {
            int64_t shape[TP_GGUF_MAX_DIMS];
            int ndim;
            float *w = malloc(sizeof *w * (t->nelem + 1));
            if (tp_gguf_read_hf(g, hf, w, t->nelem, shape, &ndim, &err) == 1)
                for (uint64_t k = 0; k < t->nelem; k++) sum += w[k];
            free(w);
        }
    }
    jv cfg = tp_gguf_hf_config(g, &err);
    jv_free(cfg);
    char summary[256];
    tp_gguf_tokenizer_summary(g, summary, sizeof summary);
    tp_gguf_close(g);
    return sum == 12345.678;
}
