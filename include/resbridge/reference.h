/* reference.h — the oracles: LAPACK for matrices of linear operators, direct
 * solves and spectra; SUNDIALS CVODE/CVODES and GSL odeiv2 for ODEs
 * dx/dt = F(t, x) and their adjoints. For tests, CLI checks and users who want
 * a second opinion.
 *
 *     rb_ref_solve_spd_banded(ctx, A, &f, &u);   // u = A^{-1} f by LAPACKE_dpbsv
 *     double *M = malloc(n * n * sizeof *M);
 *     rb_ref_assemble(ctx, A, shape, M);         // column j = A e_j (row-major n x n)
 *     rb_ref_eig_sym(ctx, M, n, eigenvalues);    // LAPACKE_dsyev, ascending
 *     rb_ref_cvode(ctx, F, 0.0, 1.0, &x0, &x1, RB_REF_CVODE_BDF, 1e-12, 1e-14, 0, &stats);
 *     rb_ref_cvodes_adjoint(ctx, F, 0.0, 1.0, &x0, &dLdx1, &dLdx0, dLdtheta, 1e-10, 1e-12);
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

/* ---- ODE oracles: dx/dt = F(t, x) -------------------------------------------
 *
 * F is any rb_op that keeps the shape; the state is a tensor of that shape (a
 * vector, a grid, a batch of images). The time reaches F through its `t`
 * field: these functions take `rb_op *F` (not const) because they set F->t
 * before every evaluation of F (and of its vjp and param_grad); they restore
 * the value F->t had on entry before returning, on every path. Only F->t is
 * written: a composite F must pass its own t on to inner operators. F must not
 * be used by another thread meanwhile.
 *
 * Arguments: t0 and T finite; T == t0 copies x0 (F is not evaluated); T < t0
 * integrates backwards in time (forward solvers only; the adjoint refuses it).
 * rtol and atol finite and > 0 (the error weight of component i is
 * rtol |x_i| + atol). Outputs may alias inputs (x0 is copied in first, results
 * are copied out last); on error every output is left untouched.
 *
 * Failures: an error status returned by F (apply, vjp or param_grad) is
 * returned as it is, with F's message after "F (<type>) apply failed at t = ...";
 * non-finite values from F make the solver retry with smaller steps and, if
 * that does not help, RB_EDIVERGED. CVODE/CVODES return flags become
 * RB_ESUNDIALS (RB_ENOMEM for CV_MEM_FAIL) with the flag's name and meaning and
 * CVODE's own message in the context message ("CV_TOO_MUCH_WORK: 500 steps
 * taken before reaching T = 1 (stopped at t = 0.25)"); nothing is printed.
 * SUNDIALS and GSL allocate their own memory with malloc (these are oracles,
 * not hot loops).
 */

/* Linear multistep family of CVODE. */
typedef enum rb_ref_cvode_method {
    RB_REF_CVODE_ADAMS, /* Adams-Moulton, orders 1..12, fixed-point iteration: non-stiff, matrix-free */
    RB_REF_CVODE_BDF,   /* BDF, orders 1..5, Newton iteration with a dense difference-quotient Jacobian
                         * (SUNDenseMatrix + SUNLinSol_Dense; n <= RB_REF_CVODE_DENSE_MAX): stiff */
    RB_REF_CVODE_METHOD_COUNT
} rb_ref_cvode_method;

/* Largest state (entries) BDF accepts: the Newton matrix is n x n doubles. */
#define RB_REF_CVODE_DENSE_MAX 4096
/* Step limit used when max_steps <= 0, and always by the adjoint and rk8pd. */
#define RB_REF_ODE_MAX_STEPS 100000L

/* What an integration cost (CVODE's counters). */
typedef struct rb_ref_ode_stats {
    long steps;            /* accepted internal steps */
    long rhs_evals;        /* evaluations of F, including those for the DQ Jacobian */
    long error_test_fails; /* steps rejected by the local error test */
    long nonlin_iters;     /* fixed-point or Newton iterations */
    long jac_evals;        /* dense difference-quotient Jacobians (BDF; 0 for Adams) */
    double last_step;      /* size of the last internal step */
} rb_ref_ode_stats;

/* x(T) of dx/dt = F(t, x), x(t0) = x0, by SUNDIALS CVODE (the CVODES library)
 * with scalar tolerances, integrating exactly up to T (stop time T, no
 * interpolation past it). max_steps: internal step limit (<= 0:
 * RB_REF_ODE_MAX_STEPS); reaching it is CV_TOO_MUCH_WORK. stats may be NULL;
 * it is written on success only. */
rb_status rb_ref_cvode(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0, rb_tensor *xT,
                       rb_ref_cvode_method method, double rtol, double atol, long max_steps,
                       rb_ref_ode_stats *stats);

/* The continuous adjoint of L(x(T)) by CVODES (Adams, fixed-point iteration,
 * checkpoints every 100 steps with cubic Hermite interpolation): given
 * dLdxT = dL/dx(T), solves backwards from T to t0
 *     dλ/dt = -J_F(t, x(t))^T λ,        λ(T) = dLdxT          (F's vjp)
 *     dL/dθ = ∫_{t0}^{T} (∂F/∂θ)(t, x(t))^T λ(t) dt          (F's param_grad, a quadrature)
 * and WRITES (does not accumulate) dLdx0 = λ(t0) (shape of x0) and
 * dLdtheta[0..F->nparams). dLdtheta may be NULL (then the parameter gradient
 * is not computed); it is ignored when F has no parameters. T >= t0 (T == t0:
 * dLdx0 = dLdxT, dLdtheta = 0). F needs a vjp, and a param_grad when dLdtheta
 * is given (else RB_EUNSUPPORTED). The backward quadrature is part of the
 * error test, with the same rtol and atol. */
rb_status rb_ref_cvodes_adjoint(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0,
                                const rb_tensor *dLdxT, rb_tensor *dLdx0, double *dLdtheta, double rtol,
                                double atol);

/* x(T) by GSL's gsl_odeiv2_driver with the Prince-Dormand 8(9) Runge-Kutta
 * stepper gsl_odeiv2_step_rk8pd: an independent second reference. Error
 * control gsl_odeiv2_control_y_new(atol, rtol): per step, |err_i| <=
 * atol + rtol |x_i|; at most RB_REF_ODE_MAX_STEPS steps. GSL's codes:
 * GSL_EMAXITER -> RB_EMAXITER, GSL_FAILURE/GSL_ENOPROG (the step size cannot
 * shrink further to meet the tolerance) -> RB_EDIVERGED, GSL_ENOMEM ->
 * RB_ENOMEM; the message names GSL's code. */
rb_status rb_ref_odeiv2(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0, rb_tensor *xT,
                        double rtol, double atol);

#ifdef __cplusplus
}
#endif
#endif
