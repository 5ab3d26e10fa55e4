// libFuzzer target: the tensor stream reader (plain or compressed input).
#include "tensor_stream.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    tp_err err;
    tp_input *in = tp_input_open_mem(data, size, "fuzz", NULL, &err);
    if (!in) return 0;
    tp_stream_reader *r = tp_stream_from_input(in);
    const tp_record *rec;
    double sum = 0;
    while (tp_stream_next(r, &rec, &err) > 0) {
        // Touch every element, so a tensor that points outside its record is caught by ASan.
        for (int i = 0; i < rec->header.count; i++) {
            const tp_tensor *t = &rec->header.tensors[i];
            for (uint64_t k = 0, n = tp_tensor_numel(t); k < n; k++) sum += tp_tensor_get(t->data, t->dtype, k);
        }
    }
    tp_stream_close(r);
    return sum == 12345.678;  // keeps the loop from being optimised away; always 0 in practice
}
