// dist.c — tp_dist over MPI (OpenMPI from Debian), or a world of one without it.
#include "dist.h"

#include <stdlib.h>
#include <string.h>

#ifdef TP_HAVE_MPI
#include <mpi.h>
#endif
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

static bool launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int tp_dist_init(tp_dist *d, int *argc, char ***argv, tp_err *err) {
    *d = (tp_dist){.rank = 0, .world = 1};
    if (!launched_by_mpirun()) return 0;
#ifdef TP_HAVE_MPI
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        tp_err_set(err, "MPI_Init failed");
        return -1;
    }
    d->mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world);
#ifdef TP_HAVE_CUDA
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (d->world > 1) cuda_select_device(local ? atoi(local) : d->rank);
#endif
    return 0;
#else
    (void)argc, (void)argv;
    tp_err_set(err, "started by mpirun, but this build has no MPI (install libopenmpi-dev and rebuild)");
    return -1;
#endif
}

#ifdef TP_HAVE_MPI
// MPI counts are ints: large buffers go in chunks.
static void sum(void *x, size_t n, size_t elem, MPI_Datatype type) {
    const size_t chunk = (size_t)1 << 30;
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        MPI_Allreduce(MPI_IN_PLACE, (char *)x + i * elem, (int)k, type, MPI_SUM, MPI_COMM_WORLD);
    }
}
#endif

void tp_dist_sum_f32(const tp_dist *d, float *x, size_t n) {
#ifdef TP_HAVE_MPI
    if (d->world > 1) sum(x, n, sizeof *x, MPI_FLOAT);
#else
    (void)d, (void)x, (void)n;
#endif
}

void tp_dist_sum_f64(const tp_dist *d, double *x, size_t n) {
#ifdef TP_HAVE_MPI
    if (d->world > 1) sum(x, n, sizeof *x, MPI_DOUBLE);
#else
    (void)d, (void)x, (void)n;
#endif
}

int tp_dist_use_gpus(tp_dist *d, char *version, int cap, tp_err *err) {
    const char *force = getenv("TP_NCCL");
    if (d->world == 1 && !(force && !strcmp(force, "1"))) return 0;
#ifdef TP_HAVE_CUDA
    cuda_nccl_id id;
    memset(&id, 0, sizeof id);
    if (d->rank == 0 && cuda_nccl_unique_id(&id, err->msg, sizeof err->msg) < 0) return -1;
#ifdef TP_HAVE_MPI
    if (d->world > 1) MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
#endif
    if (cuda_nccl_init(d->rank, d->world, &id, version, cap, err->msg, sizeof err->msg) < 0) return -1;
    d->nccl = true;
    return 1;
#else
    (void)version, (void)cap;
    tp_err_set(err, "NCCL: this build has no CUDA support");
    return -1;
#endif
}

int tp_dist_sum_device_f32(const tp_dist *d, float *x, size_t n, tp_err *err) {
#ifdef TP_HAVE_CUDA
    if (d->nccl) return cuda_nccl_sum_f32(x, n, err->msg, sizeof err->msg);
#endif
    (void)d, (void)x, (void)n;
    tp_err_set(err, "NCCL is not in use");
    return -1;
}

void tp_dist_finalize(tp_dist *d) {
#ifdef TP_HAVE_CUDA
    if (d->nccl) cuda_nccl_finalize();
#endif
    d->nccl = false;
#ifdef TP_HAVE_MPI
    if (d->mpi) MPI_Finalize();
#endif
    d->mpi = false;
}
