// tensor.h — element types and tensor descriptions shared by safetensors files
// and tensor streams.
#ifndef TP_TENSOR_H
#define TP_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

// Names and sizes follow the safetensors spec.
typedef enum tp_dtype {
    TP_BOOL, TP_U8, TP_I8, TP_F8_E4M3, TP_F8_E5M2, TP_I16, TP_U16, TP_F16, TP_BF16,
    TP_I32, TP_U32, TP_F32, TP_F64, TP_I64, TP_U64,
    TP_DTYPE_COUNT
} tp_dtype;

enum { TP_MAX_DIMS = 8 };

// A tensor inside a loaded file or record. data points into memory owned by the
// container. Alignment is not promised: a record's data section is 8-byte aligned
// when read from a stream, and in files whose header length is a multiple of 8 (our
// writers pad it so), but other writers may not pad. Read elements through
// tp_tensor_get() or memcpy; typed pointers need an alignment check first.
typedef struct tp_tensor {
    char *name;
    tp_dtype dtype;
    int ndim;
    int64_t shape[TP_MAX_DIMS];
    uint64_t begin, end;  // byte range within the data section
    const void *data;
} tp_tensor;

// A tensor to be written: the caller keeps name, shape and data alive.
typedef struct tp_tensor_ref {
    const char *name;
    tp_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} tp_tensor_ref;

size_t tp_dtype_size(tp_dtype t);
const char *tp_dtype_name(tp_dtype t);
int tp_dtype_parse(const char *name, tp_dtype *out);  // 0 ok, -1 unknown
// Element count; false on negative dims or overflow past 2^62 bytes.
bool tp_numel(const int64_t *shape, int ndim, tp_dtype t, uint64_t *numel, uint64_t *nbytes);
uint64_t tp_tensor_numel(const tp_tensor *t);

// Conversions (round to nearest even; NaN stays NaN).
float tp_bf16_to_f32(uint16_t h);
uint16_t tp_f32_to_bf16(float f);
float tp_f16_to_f32(uint16_t h);
uint16_t tp_f32_to_f16(float f);

#endif

// Element i of a tensor of any dtype as a double (F8/F16/BF16 decoded, integers exact below 2^53).
double tp_tensor_get(const void *data, tp_dtype t, uint64_t i);
// Stores v as element i; fails (false) when v does not fit the dtype exactly:
// integers must be whole and in range, BOOL 0 or 1; floats are rounded once, to
// nearest even, from the double (F8_E4M3 saturates at ±448, having no Inf).
bool tp_tensor_set(void *data, tp_dtype t, uint64_t i, double v);
