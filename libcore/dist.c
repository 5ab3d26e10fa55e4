// dist.c — tp_dist over MPI (OpenMPI from Debian), or a world of one without it.
#include "dist.h"

#include <stdlib.h>

#ifdef TP_HAVE_MPI
#include <mpi.h>
#endif

static bool launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int tp_dist_init(tp_dist *d, int *argc, char ***argv, tp_err *err) {
    *d = (tp_dist){0, 1, false};
    if (!launched_by_mpirun()) return 0;
#ifdef TP_HAVE_MPI
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        tp_err_set(err, "MPI_Init failed");
        return -1;
    }
    d->mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world);
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

void tp_dist_finalize(tp_dist *d) {
#ifdef TP_HAVE_MPI
    if (d->mpi) MPI_Finalize();
#endif
    d->mpi = false;
}
