// libFuzzer target: config.json parsing for the model core. Any JSON gives a config
// that satisfies the invariants the model code relies on, or an error; never a crash.
#include <stdio.h>
#include <stdlib.h>

#include "json.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size > (1 << 16)) return 0;
    jv cfg;
    tp_err err;
    if (tp_json_parse((const char *)data, size, &cfg, &err) < 0) return 0;
    tp_model_config c;
    if (tp_model_config_parse(cfg, &c, &err) == 0) {
        bool ok = c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0 &&
                  c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0 && c.head_dim > 0 &&
                  c.head_dim % 2 == 0 && c.rope_theta > 0 && c.rms_norm_eps >= 0 &&
                  (!c.rope_llama3 || (c.rope_factor > 0 && c.rope_high_freq_factor > c.rope_low_freq_factor &&
                                      c.rope_low_freq_factor > 0 && c.rope_original_max_position_embeddings > 0));
        if (!ok) {
            fprintf(stderr, "accepted a config that breaks the model's invariants\n");
            abort();
        }
    }
    jv_free(cfg);
    return 0;
}
