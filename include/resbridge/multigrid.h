/* multigrid.h — geometric multigrid for -div(a grad u) = f on the unit
 * interval, square or cube, built on the residual primitive.
 *
 * Vertex-centred grids with n = m 2^k - 1 interior points per direction
 * (m in {1, 3, 5, 7}), Dirichlet boundary values (folded into f with
 * rb_mg_fold_boundary). The coefficient a is a constant (3-, 5-, 7-point
 * stencils, coarse levels rediscretised) or given per grid point including
 * the boundary ((n+2)^dim values; face coefficients are harmonic means of the
 * two points; coarse levels by Galerkin R A P). Smoothers are residual steps:
 * damped Jacobi, red-black Gauss-Seidel (a residual step per colour) or
 * Chebyshev (residual steps with step sizes from Chebyshev roots). Transfers
 * are the stride-2 convolutions of conv.h: full weighting and its scaled
 * transpose, (bi/tri)linear interpolation. The coarsest level is solved by
 * LAPACK banded Cholesky, factorised once at set-up.
 *
 *     rb_mg_problem pb = {2, 1023, NULL, 1.0};
 *     rb_mg_options opt = rb_mg_options_default(2);     // RB-GS V(2,1)
 *     rb_mg *mg; rb_mg_create(ctx, &pb, &opt, &mg);      // set-up: once
 *     rb_mg_report rep;
 *     rb_mg_solve(ctx, mg, &f, &u, 1e-8, 50, &rep);       // any number of right-hand sides
 *     rb_mg_free(ctx, mg);
 */
#ifndef RESBRIDGE_MULTIGRID_H
#define RESBRIDGE_MULTIGRID_H

#include <stdbool.h>
#include "resbridge/vcycle.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rb_smoother { RB_SMOOTHER_JACOBI, RB_SMOOTHER_RBGS, RB_SMOOTHER_CHEBYSHEV, RB_SMOOTHER_COUNT } rb_smoother;

const char *rb_smoother_name(rb_smoother s);
rb_status rb_smoother_parse(rb_context *ctx, const char *name, rb_smoother *s);
rb_status rb_cycle_parse(rb_context *ctx, const char *name, rb_cycle *c);

typedef struct rb_mg_problem {
    int dim;             /* 1, 2 or 3 */
    size_t n;            /* interior points per direction, m 2^k - 1 */
    const double *coef;  /* NULL: constant coef_value; else (n+2)^dim point values (z, y, x row-major, with boundary) */
    double coef_value;
} rb_mg_problem;

/* Coarse operators for point coefficients (constant ones are always rediscretised):
 * GALERKIN: R A P (a 3^d-point stencil on every coarse level; robust for jumping
 * coefficients); REDISCRETISE: the coefficients injected to each coarse grid (coarse point
 * I = fine point 2I, boundary included) and the 2d+1-point operator discretised there
 * (as HPGMG does; cheaper, for smooth coefficients: with jumps the injected coarse
 * problems misplace the interfaces and the cycle can diverge -- e.g. 2D a = 1e4 on a
 * quadrant, 1 elsewhere, n = 63: factor ~600, reported as RB_EDIVERGED -- where Galerkin
 * converges). */
typedef enum rb_coarse { RB_COARSE_GALERKIN, RB_COARSE_REDISCRETISE, RB_COARSE_COUNT } rb_coarse;

const char *rb_coarse_name(rb_coarse c);
rb_status rb_coarse_parse(rb_context *ctx, const char *name, rb_coarse *c);

typedef struct rb_mg_options {
    rb_smoother smoother;
    double omega;        /* relaxation weight; 0: default (Jacobi 2d/(2d+1), RB-GS 1) */
    int pre, post;       /* smoothing steps before / after the coarse-grid correction */
    rb_cycle cycle;
    size_t coarse_max;   /* coarsen while n > coarse_max (and n is odd) */
    double cheb_ratio;   /* Chebyshev interval [cheb_ratio * lmax, lmax] of D^{-1} A */
    rb_coarse coarse;    /* coarse operators for point coefficients (default GALERKIN) */
    int fine_pre, fine_post; /* smoothing steps on the finest level; -1: pre / post (the default from
                          * rb_mg_options_default, which options should start from).
                          * fine_pre = 0 (e.g. 0 and pre + post, with coarse levels V(pre, post)):
                          * rb_mg_solve restricts each cycle's new residual in the pass that
                          * computes its norm (rb_vcycle_run_next), one pass over the finest grid
                          * per cycle instead of two */
    bool plain_fine;     /* rb_mg_solve keeps its grids in the plain layout. By default a 2D RB-GS
                          * hierarchy over a constant 5-point star stores every level but the
                          * coarsest split while it cycles (each row's even points, then its odd
                          * ones: xsplit.h), which its smoothing and transfer kernels read without
                          * deinterleaving: the same iterates bit for bit (the norms to rounding),
                          * faster. true: for comparison. The caller's f and u stay plain. */
    bool fmg_start;      /* rb_mg_solve from u = 0 (needs fine_pre = 0): the first cycle's
                          * coarse-grid problem, R f, is solved by full multigrid (rb_vcycle_fmg:
                          * each coarser level from the next one's result interpolated, one cycle
                          * each) instead of by one cycle from zero; the finest level then sets
                          * u = P u_1 and post-smooths (rb_vcycle_run_up). It costs about a third
                          * of a coarse cycle more (2D). For a smooth f the first residual is
                          * smaller (f = 1, 2D n = 1023: 2.3e-2 -> 5.4e-3) and 1e-8 comes a cycle
                          * sooner; for a rough one (random f) it is about the same. From a
                          * nonzero u, and in rb_mg_pcg, it does nothing. */
} rb_mg_options;

rb_mg_options rb_mg_options_default(int dim);

#define RB_MG_MAX_HISTORY 512

typedef struct rb_mg_report {
    int cycles;                       /* cycles (or PCG iterations) run */
    double history[RB_MG_MAX_HISTORY]; /* relative residual |f - A u| / |f| after each; history[0] before the first */
    double rel_residual;              /* the last one */
    double convergence_factor;        /* geometric mean of the ratios over the second half */
    bool converged;
} rb_mg_report;

typedef struct rb_mg rb_mg;

/* Set-up: hierarchy, operators, smoothers, transfers, coarse factorisation,
 * and all work memory. Refuses n of the wrong form (naming the nearest valid
 * sizes), coefficients <= 0 or not finite, omega outside the stable range. */
rb_status rb_mg_create(rb_context *ctx, const rb_mg_problem *pb, const rb_mg_options *opt, rb_mg **out);
void rb_mg_free(rb_context *ctx, rb_mg *mg);

size_t rb_mg_levels(const rb_mg *mg);
size_t rb_mg_level_n(const rb_mg *mg, size_t level);
/* The shape of the finest grid (1,1,n,n,n) with unused dimensions 1. */
rb_shape rb_mg_shape(const rb_mg *mg);
/* The fine-grid operator A (for residuals, LAPACK checks). */
const rb_op *rb_mg_operator(const rb_mg *mg);
/* The cycle over the hierarchy (the generic skeleton of vcycle.h), on grids in the plain layout.
 * Its level grids are the drivers' work memory: each driver fills them on entry (rb_mg_solve
 * leaves them in the split layout when it used it, see plain_fine). */
const rb_vcycle *rb_mg_vcycle(const rb_mg *mg);

/* Full weighting R (the tensor product of [1/4 1/2 1/4], a 3^dim stride-2 vertex-grid
 * convolution) and (bi/tri)linear interpolation P = 2^dim R^T (its transposed conv). */
rb_status rb_mg_transfers_create(rb_context *ctx, int dim, rb_op **R, rb_op **P);

/* The report of a cycling driver (used by rb_mg_solve and the network-mode cycle):
 * begin; record each relative residual (RB_EDIVERGED, with a message naming `what`,
 * when it is not finite or above 1e6); end computes convergence_factor. */
void rb_mg_report_begin(rb_mg_report *rep);
rb_status rb_mg_report_record(rb_context *ctx, rb_mg_report *rep, double rel, const char *what);
void rb_mg_report_end(rb_mg_report *rep);

/* Valid n (m 2^k - 1, m in {1,3,5,7}, k >= 1) nearest to n below and above. */
void rb_mg_nearest_sizes(size_t n, size_t *below, size_t *above);

/* f += the contributions of Dirichlet values g (a full (n+2)^dim grid, boundary
 * values on its faces; interior values ignored) to the equations next to the boundary. */
rb_status rb_mg_fold_boundary(rb_context *ctx, const rb_mg *mg, const rb_tensor *g, rb_tensor *f);

/* Cycles from u (initial guess; overwritten with the result on success, untouched on
 * failure) until |f - A u| <= tol |f| or max_cycles (from u = 0 with opt.fmg_start, the
 * first one full multigrid's). RB_EMAXITER when the limit is reached first, RB_EDIVERGED when
 * the residual grows 1e6-fold or is not finite; the report holds the history
 * in every case. Allocates nothing. */
rb_status rb_mg_solve(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, double tol, int max_cycles,
                      rb_mg_report *report);

/* Cycles from u = 0 against a known solution u_ref (the classical side of a comparison with a
 * learned solver): until |u_k - u_ref| <= target |u_ref| or max_cycles (1 .. RB_MG_MAX_HISTORY - 1).
 * *cycles = k taken; errors (may be NULL; room for max_cycles) gets the relative error after
 * each. Allocates nothing. */
rb_status rb_mg_cycles_to_error(rb_context *ctx, rb_mg *mg, const rb_tensor *f, const rb_tensor *u_ref, double target,
                                int max_cycles, int *cycles, double *errors);

/* Full multigrid (rb_vcycle_fmg on the plain hierarchy): f restricted to every level, coarsest
 * solved, then on each finer level u = P u_coarse followed by `cycles_per_level` cycles. u is
 * output only. */
rb_status rb_mg_fmg(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, int cycles_per_level,
                    rb_mg_report *report);

/* Conjugate gradients preconditioned by one (symmetric) cycle per iteration. */
rb_status rb_mg_pcg(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, double tol, int max_iter,
                    rb_mg_report *report);

/* Preconditioned conjugate gradients for A u = f from u (A and M symmetric positive
 * definite), M given as z = M r; vectors: five work grids of f's shape. The report as
 * rb_mg_solve's (relative residuals); `what` names the method in messages. rb_mg_pcg and
 * rb_vnet_pcg are this with one cycle as M. */
typedef rb_status (*rb_precond_fn)(rb_context *ctx, void *data, const rb_tensor *r, rb_tensor *z);
rb_status rb_pcg(rb_context *ctx, const rb_op *A, rb_precond_fn M, void *data, const rb_tensor *f, rb_tensor *u, double tol,
                 int max_iter, rb_tensor *vectors, rb_arena *work, rb_mg_report *report, const char *what);

/* z = B r: one cycle from a zero initial guess (the preconditioner; linear and
 * symmetric when the smoothing is symmetric). */
rb_status rb_mg_precondition(rb_context *ctx, rb_mg *mg, const rb_tensor *r, rb_tensor *z);

#ifdef __cplusplus
}
#endif
#endif
