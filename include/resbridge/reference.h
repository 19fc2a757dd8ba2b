/* reference.h — the LAPACK oracles: matrices of linear operators, direct
 * solves and spectra, for tests, CLI checks and users who want a second opinion.
 *
 *     rb_ref_solve_spd_banded(ctx, A, &f, &u);   // u = A^{-1} f by LAPACKE_dpbsv
 *     double *M = malloc(n * n * sizeof *M);
 *     rb_ref_assemble(ctx, A, shape, M);         // column j = A e_j (row-major n x n)
 *     rb_ref_eig_sym(ctx, M, n, eigenvalues);    // LAPACKE_dsyev, ascending
 *
 * Operators are probed through rb_op_apply, so any linear rb_op (stencils,
 * chains of them) has a matrix. LAPACK's info is mapped to RB_ELAPACK with
 * its meaning in the context message.
 */
#ifndef RESBRIDGE_REFERENCE_H
#define RESBRIDGE_REFERENCE_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Dense matrix of a linear same-shape operator on `shape` (n = count entries):
 * M[i*n + j] = (F e_j)_i. M holds n*n doubles. n <= 20000. */
rb_status rb_ref_assemble(rb_context *ctx, const rb_op *F, rb_shape shape, double *M);

/* Half-bandwidth of a linear same-shape operator on `shape` (max |i - j| over
 * non-zeros, probed on the first, middle and last columns). */
rb_status rb_ref_bandwidth(rb_context *ctx, const rb_op *F, rb_shape shape, size_t *kd);

/* The upper band of a symmetric linear same-shape operator in LAPACK's
 * column-major band storage (ldab = kd + 1; entry (i, j), i <= j, at
 * band[kd + i - j + j * (kd + 1)]), probed with 2 kd + 1 applications.
 * *band is allocated with rb_malloc (release with rb_free). */
rb_status rb_ref_band(rb_context *ctx, const rb_op *F, rb_shape shape, size_t *kd, double **band);

/* x = F^{-1} b for a symmetric positive definite linear operator F, through its
 * band (probed with 2 kd + 1 applications) and LAPACKE_dpbsv. */
rb_status rb_ref_solve_spd_banded(rb_context *ctx, const rb_op *F, const rb_tensor *b, rb_tensor *x);

/* x = M^{-1} b for a dense row-major n x n matrix (LAPACKE_dgesv; M is not changed). */
rb_status rb_ref_solve_dense(rb_context *ctx, const double *M, size_t n, const double *b, double *x);

/* Eigenvalues of a symmetric row-major n x n matrix, ascending (LAPACKE_dsyev). */
rb_status rb_ref_eig_sym(rb_context *ctx, const double *M, size_t n, double *w);

/* Eigenvalues wr + i wi of a general row-major n x n matrix (LAPACKE_dgeev). */
rb_status rb_ref_eig_general(rb_context *ctx, const double *M, size_t n, double *wr, double *wi);

#ifdef __cplusplus
}
#endif
#endif
