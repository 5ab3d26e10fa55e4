// nccl.c — the simulator's libnccl.so.2: a world of one rank, for sft-train's NCCL path on
// tests/sim (kernels/cuda/collective.cu loads NCCL with dlopen; the simulator's programs find
// this one first, through their run path). The sum over one rank is the buffer itself.
#include <stddef.h>
#include <string.h>

typedef int ncclResult_t;
enum { NCCL_SUCCESS = 0, NCCL_INVALID_ARGUMENT = 4 };
struct ncclComm {
    int unused;
};
typedef struct {
    char internal[128];
} ncclUniqueId;  // passed by value, as NCCL's ABI has it
static struct ncclComm the_comm;

ncclResult_t ncclGetVersion(int *v) {
    *v = 29999;  // 2.99.99: no real NCCL has it
    return NCCL_SUCCESS;
}
ncclResult_t ncclGetUniqueId(void *id) {
    memset(id, 0, 128);
    return NCCL_SUCCESS;
}
ncclResult_t ncclCommInitRank(struct ncclComm **comm, int world, ncclUniqueId id, int rank) {
    (void)id;
    if (world != 1 || rank != 0) return NCCL_INVALID_ARGUMENT;  // one process: no peers to reach
    *comm = &the_comm;
    return NCCL_SUCCESS;
}
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, struct ncclComm *comm,
                           void *stream) {
    (void)op, (void)comm, (void)stream;
    if (type != 7) return NCCL_INVALID_ARGUMENT;  // ncclFloat32 only, as collective.cu sends
    if (send != recv) memmove(recv, send, count * 4);
    return NCCL_SUCCESS;
}
ncclResult_t ncclCommDestroy(struct ncclComm *comm) {
    (void)comm;
    return NCCL_SUCCESS;
}
const char *ncclGetErrorString(ncclResult_t r) {
    return r == NCCL_SUCCESS ? "no error" : "invalid argument (the simulator's NCCL has one rank)";
}
