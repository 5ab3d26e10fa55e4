// dist.h — data parallelism across processes and machines: ranks started by mpirun
// (OpenMPI), gradients and statistics summed across them.
//
// A program calls tp_dist_init first. When it was not started by mpirun (or this build
// has no MPI) it is rank 0 of a world of 1, and every call below is a no-op, so single-
// process runs need no MPI at all.
#ifndef TP_DIST_H
#define TP_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

typedef struct tp_dist {
    int rank, world;
    bool mpi;   // MPI_Init ran (finalize it)
    bool nccl;  // tp_dist_use_gpus: device buffers are summed by NCCL
} tp_dist;

// Reads the launcher's environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK) and
// initialises MPI when there is one; each rank of a machine takes its own GPU (local rank
// modulo the GPUs there). -1 when a launcher is there but MPI is not built in.
int tp_dist_init(tp_dist *d, int *argc, char ***argv, tp_err *err);
// Sums x [n] across ranks, in place; every rank gets the same bits.
void tp_dist_sum_f32(const tp_dist *d, float *x, size_t n);
void tp_dist_sum_f64(const tp_dist *d, double *x, size_t n);
// For runs on GPUs: joins every rank to one NCCL communicator, so gradients are summed
// on the devices (tp_dist_sum_device_f32) instead of through the host. Only with more
// than one rank, or with TP_NCCL=1 (a world of one then still goes through NCCL: how the
// path is tested on one GPU). version gets NCCL's; 0 when not used, 1 when in use, -1 on
// error.
int tp_dist_use_gpus(tp_dist *d, char *version, int cap, tp_err *err);
// Sums the device buffer x [n] across ranks in place (d->nccl); 0, or -1 with the error.
int tp_dist_sum_device_f32(const tp_dist *d, float *x, size_t n, tp_err *err);
void tp_dist_finalize(tp_dist *d);

#endif
