/* blas_internal.h — OpenBLAS inside resbridge's own OpenMP threads (private to the library).
 *
 * resbridge splits work over rb_context_threads(ctx) itself; OpenBLAS runs single-threaded
 * inside each part, so a run with T threads uses T cores and is reproducible for fixed T.
 *
 *     int saved = rb_blas_single_begin();
 *     ... cblas_dgemm on each thread's block ...
 *     rb_blas_single_end(saved);
 */
#ifndef RESBRIDGE_BLAS_INTERNAL_H
#define RESBRIDGE_BLAS_INTERNAL_H

#include <cblas.h>

/* OpenBLAS single-threaded; returns the previous setting for rb_blas_single_end. */
static inline int rb_blas_single_begin(void)
{
    int t = openblas_get_num_threads();
    if (t != 1) openblas_set_num_threads(1);
    return t;
}

static inline void rb_blas_single_end(int saved)
{
    if (saved != 1) openblas_set_num_threads(saved);
}

#endif
