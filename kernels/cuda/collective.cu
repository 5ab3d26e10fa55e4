// collective.cu — NCCL all-reduce of device buffers across ranks (data parallelism).
//
// libnccl is loaded with dlopen when a run first asks for it, not linked: it is 200+ MB,
// the CUDA toolkit and PyTorch's wheels each bring their own, and a program that never
// sums across GPUs must start without it. The few entry points used are declared here
// with NCCL 2's stable C ABI.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>

typedef struct ncclComm *ncclComm_t;
typedef int ncclResult_t;  // 0: ncclSuccess
enum { NCCL_FLOAT32 = 7, NCCL_SUM = 0 };  // ncclFloat32, ncclSum

static struct {
    void *lib;
    ncclResult_t (*get_version)(int *);
    ncclResult_t (*get_unique_id)(void *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, cuda_nccl_id, int);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, int, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    const char *(*error_string)(ncclResult_t);
    ncclComm_t comm;
} nccl;

static int fail(char *err, int cap, const char *what, ncclResult_t r) {
    snprintf(err, (size_t)cap, "NCCL %s: %s", what, nccl.error_string ? nccl.error_string(r) : "failed");
    return -1;
}

static int load(char *err, int cap) {
    if (nccl.lib) return 0;
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(err, (size_t)cap, "cannot load NCCL (libnccl.so.2: %s); install it or put it on LD_LIBRARY_PATH",
                 dlerror());
        return -1;
    }
    *(void **)&nccl.get_version = dlsym(lib, "ncclGetVersion");
    *(void **)&nccl.get_unique_id = dlsym(lib, "ncclGetUniqueId");
    *(void **)&nccl.comm_init_rank = dlsym(lib, "ncclCommInitRank");
    *(void **)&nccl.all_reduce = dlsym(lib, "ncclAllReduce");
    *(void **)&nccl.comm_destroy = dlsym(lib, "ncclCommDestroy");
    *(void **)&nccl.error_string = dlsym(lib, "ncclGetErrorString");
    if (!nccl.get_version || !nccl.get_unique_id || !nccl.comm_init_rank || !nccl.all_reduce || !nccl.comm_destroy) {
        snprintf(err, (size_t)cap, "libnccl.so.2 lacks the NCCL 2 entry points");
        dlclose(lib);
        return -1;
    }
    nccl.lib = lib;
    return 0;
}

extern "C" int cuda_nccl_unique_id(cuda_nccl_id *id, char *err, int cap) {
    if (load(err, cap) < 0) return -1;
    ncclResult_t r = nccl.get_unique_id(id);
    return r ? fail(err, cap, "unique id", r) : 0;
}

extern "C" int cuda_nccl_init(int rank, int world, const cuda_nccl_id *id, char *version, int vcap, char *err,
                              int cap) {
    if (load(err, cap) < 0) return -1;
    int v = 0;
    nccl.get_version(&v);
    // 2.9 and later encode MAJOR*10000 + MINOR*100 + PATCH
    snprintf(version, (size_t)vcap, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    ncclResult_t r = nccl.comm_init_rank(&nccl.comm, world, *id, rank);
    return r ? fail(err, cap, "init", r) : 0;
}

extern "C" int cuda_nccl_sum_f32(float *x, size_t n, char *err, int cap) {
    if (!nccl.comm) {
        snprintf(err, (size_t)cap, "NCCL is not initialised");
        return -1;
    }
    ncclResult_t r = nccl.all_reduce(x, x, n, NCCL_FLOAT32, NCCL_SUM, nccl.comm, cuda_stream());
    if (r) return fail(err, cap, "all-reduce", r);
    return cuda_take_error(err, cap);  // synchronizes: the sums are there on return
}

extern "C" void cuda_nccl_finalize(void) {
    if (nccl.comm) nccl.comm_destroy(nccl.comm);
    nccl.comm = NULL;
}

extern "C" int cuda_select_device(int local_rank) {
    int n = cuda_device_count();
    if (n <= 0) return -1;
    int d = local_rank % n;
    return cudaSetDevice(d) == cudaSuccess ? d : -1;
}
