/* cvode.c — the SUNDIALS oracles (see reference.h): CVODE for x(T) and the
 * CVODES continuous adjoint, plus the pieces odeiv2.c shares (ode_internal.h).
 *
 * Only the CVODES library is linked. It contains all of CVODE, and
 * libsundials_cvode defines the same CVode* symbols over a smaller CVodeMem:
 * with both linked, whichever comes first wins, and CVodeCreate from one with
 * CVodeAdjInit from the other crashes.
 *
 * CVODE reports errors through a handler that prints to stderr by default;
 * ours keeps the last message for the status message instead. */
#include "ode_internal.h"

#include <cvodes/cvodes.h>
#include <cvodes/cvodes_ls.h>
#include <math.h>
#include <nvector/nvector_serial.h>
#include <stdio.h>
#include <string.h>
#include <sunlinsol/sunlinsol_dense.h>
#include <sunmatrix/sunmatrix_dense.h>
#include <sunnonlinsol/sunnonlinsol_fixedpoint.h>

/* ---- shared with odeiv2.c ------------------------------------------------------------------ */

rb_status rb_ode_check(rb_context *ctx, const char *fn, const rb_op *F, double t0, double T, const rb_tensor *x0,
                       const rb_tensor *xT, double rtol, double atol)
{
    if (ctx == NULL) return RB_ENULL;
    if (F == NULL) return rb_fail(ctx, RB_ENULL, "%s: F is NULL", fn);
    if (F->type == NULL || F->type->apply == NULL)
        return rb_fail(ctx, RB_EINVAL, "%s: F has no type or no apply", fn);
    char name[64];
    snprintf(name, sizeof name, "%s: x0", fn);
    rb_status st = rb_tensor_check(ctx, x0, name);
    if (st != RB_OK) return st;
    char other[64];
    snprintf(other, sizeof other, "%s: output", fn);
    st = rb_tensor_check_same(ctx, x0, name, xT, other);
    if (st != RB_OK) return st;
    st = rb_op_check_keeps_shape(ctx, F, x0->shape, fn);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x0);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x0->data[i]))
            return rb_fail(ctx, RB_EINVAL, "%s: x0[%zu] = %g is not finite", fn, i, x0->data[i]);
    if (!isfinite(t0) || !isfinite(T))
        return rb_fail(ctx, RB_EINVAL, "%s: t0 = %g and T = %g must be finite", fn, t0, T);
    if (!(isfinite(rtol) && rtol > 0)) return rb_fail(ctx, RB_EINVAL, "%s: rtol = %g must be finite and > 0", fn, rtol);
    if (!(isfinite(atol) && atol > 0)) return rb_fail(ctx, RB_EINVAL, "%s: atol = %g must be finite and > 0", fn, atol);
    return RB_OK;
}

rb_status rb_ode_rhs_open(rb_context *ctx, rb_op *F, rb_shape shape, rb_ode_rhs *r)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->F = F;
    r->shape = shape;
    r->n = rb_shape_count(shape);
    return rb_arena_reserve(ctx, &r->work, rb_op_workspace(F, shape) + 64);
}

void rb_ode_rhs_close(rb_ode_rhs *r) { rb_arena_release(r->ctx, &r->work); }

/* Keep the first failure of F (its message is overwritten by the next rb_fail). */
static int rhs_failed(rb_ode_rhs *r, rb_status st, double t, const char *what)
{
    if (r->status == RB_OK) {
        r->status = st;
        r->fail_t = t;
        r->fail_what = what;
        snprintf(r->message, sizeof r->message, "%s", rb_context_message(r->ctx));
    }
    return -1;
}

static int rhs_finite(rb_ode_rhs *r, double t, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            r->nonfinite = 1;
            r->nonfinite_t = t;
            return 1;
        }
    return 0;
}

static rb_tensor rhs_view(const rb_ode_rhs *r, const double *data)
{
    rb_tensor v = {r->shape, (double *)data, false};
    return v;
}

int rb_ode_rhs_eval(rb_ode_rhs *r, double t, const double *y, double *ydot)
{
    if (r->status != RB_OK) return -1; /* F failed: do not call it again */
    rb_tensor x = rhs_view(r, y), f = rhs_view(r, ydot);
    r->F->t = t;
    size_t mark = rb_arena_mark(&r->work);
    rb_status st = rb_op_apply(r->ctx, r->F, &x, &f, &r->work);
    rb_arena_reset(&r->work, mark);
    if (st != RB_OK) return rhs_failed(r, st, t, "apply");
    return rhs_finite(r, t, ydot, r->n);
}

int rb_ode_rhs_vjp(rb_ode_rhs *r, double t, const double *x, const double *dy, double alpha, double *dx)
{
    if (r->status != RB_OK) return -1; /* F failed: do not call it again */
    rb_tensor xv = rhs_view(r, x), dyv = rhs_view(r, dy), dxv = rhs_view(r, dx);
    memset(dx, 0, r->n * sizeof *dx);
    r->F->t = t;
    size_t mark = rb_arena_mark(&r->work);
    rb_status st = rb_op_vjp(r->ctx, r->F, &xv, &dyv, alpha, &dxv, &r->work);
    rb_arena_reset(&r->work, mark);
    if (st != RB_OK) return rhs_failed(r, st, t, "vjp");
    return rhs_finite(r, t, dx, r->n);
}

int rb_ode_rhs_param_grad(rb_ode_rhs *r, double t, const double *x, const double *dy, double alpha,
                          double *dtheta)
{
    if (r->status != RB_OK) return -1; /* F failed: do not call it again */
    rb_tensor xv = rhs_view(r, x), dyv = rhs_view(r, dy);
    memset(dtheta, 0, r->F->nparams * sizeof *dtheta);
    r->F->t = t;
    size_t mark = rb_arena_mark(&r->work);
    rb_status st = rb_op_param_grad(r->ctx, r->F, &xv, &dyv, alpha, dtheta, &r->work);
    rb_arena_reset(&r->work, mark);
    if (st != RB_OK) return rhs_failed(r, st, t, "param_grad");
    return rhs_finite(r, t, dtheta, r->F->nparams);
}

rb_status rb_ode_rhs_report(const rb_ode_rhs *r, const char *fn, const char *flag)
{
    if (r->status == RB_OK) return RB_OK;
    return rb_fail(r->ctx, r->status, "%s: F (%s) %s failed at t = %.17g (%s): %s", fn, r->F->type->name,
                   r->fail_what, r->fail_t, flag, r->message);
}

/* ---- CVODE return flags -------------------------------------------------------------------- */

typedef struct cv_flag_info {
    int flag;
    const char *name, *meaning;
} cv_flag_info;

static const cv_flag_info cv_flags[] = {
    {CV_TOO_MUCH_WORK, "CV_TOO_MUCH_WORK", "the step limit was reached before T"},
    {CV_TOO_MUCH_ACC, "CV_TOO_MUCH_ACC", "the tolerances are too small for double precision"},
    {CV_ERR_FAILURE, "CV_ERR_FAILURE", "the local error test failed repeatedly or with |h| = hmin"},
    {CV_CONV_FAILURE, "CV_CONV_FAILURE", "the nonlinear solver failed to converge repeatedly or with |h| = hmin"},
    {CV_LINIT_FAIL, "CV_LINIT_FAIL", "the linear solver's initialisation failed"},
    {CV_LSETUP_FAIL, "CV_LSETUP_FAIL", "the linear solver's setup failed unrecoverably"},
    {CV_LSOLVE_FAIL, "CV_LSOLVE_FAIL", "the linear solver's solve failed unrecoverably"},
    {CV_RHSFUNC_FAIL, "CV_RHSFUNC_FAIL", "the right-hand side failed unrecoverably"},
    {CV_FIRST_RHSFUNC_ERR, "CV_FIRST_RHSFUNC_ERR", "the right-hand side failed at its first call"},
    {CV_REPTD_RHSFUNC_ERR, "CV_REPTD_RHSFUNC_ERR", "the right-hand side failed recoverably, repeatedly"},
    {CV_UNREC_RHSFUNC_ERR, "CV_UNREC_RHSFUNC_ERR", "the right-hand side failed recoverably with no way to recover"},
    {CV_RTFUNC_FAIL, "CV_RTFUNC_FAIL", "the root function failed"},
    {CV_NLS_INIT_FAIL, "CV_NLS_INIT_FAIL", "the nonlinear solver's initialisation failed"},
    {CV_NLS_SETUP_FAIL, "CV_NLS_SETUP_FAIL", "the nonlinear solver's setup failed"},
    {CV_CONSTR_FAIL, "CV_CONSTR_FAIL", "the inequality constraints could not be met"},
    {CV_NLS_FAIL, "CV_NLS_FAIL", "the nonlinear solver failed unrecoverably"},
    {CV_MEM_FAIL, "CV_MEM_FAIL", "a memory allocation failed"},
    {CV_MEM_NULL, "CV_MEM_NULL", "the solver memory is NULL"},
    {CV_ILL_INPUT, "CV_ILL_INPUT", "an input was illegal"},
    {CV_NO_MALLOC, "CV_NO_MALLOC", "the solver was not initialised"},
    {CV_BAD_K, "CV_BAD_K", "the derivative order is illegal"},
    {CV_BAD_T, "CV_BAD_T", "the time is outside the last step"},
    {CV_BAD_DKY, "CV_BAD_DKY", "the output vector is NULL"},
    {CV_TOO_CLOSE, "CV_TOO_CLOSE", "T is too close to t0 to start the integration"},
    {CV_VECTOROP_ERR, "CV_VECTOROP_ERR", "a vector operation failed"},
    {CV_NO_QUAD, "CV_NO_QUAD", "quadratures were not initialised"},
    {CV_QRHSFUNC_FAIL, "CV_QRHSFUNC_FAIL", "the quadrature right-hand side failed unrecoverably"},
    {CV_FIRST_QRHSFUNC_ERR, "CV_FIRST_QRHSFUNC_ERR", "the quadrature right-hand side failed at its first call"},
    {CV_REPTD_QRHSFUNC_ERR, "CV_REPTD_QRHSFUNC_ERR", "the quadrature right-hand side failed recoverably, repeatedly"},
    {CV_UNREC_QRHSFUNC_ERR, "CV_UNREC_QRHSFUNC_ERR", "the quadrature right-hand side failed with no way to recover"},
    {CV_CONTEXT_ERR, "CV_CONTEXT_ERR", "the SUNContext is missing or wrong"},
    {CV_UNRECOGNIZED_ERR, "CV_UNRECOGNIZED_ERR", "an unknown error"},
    {CV_NO_ADJ, "CV_NO_ADJ", "the adjoint module was not initialised"},
    {CV_NO_FWD, "CV_NO_FWD", "the forward integration was not run"},
    {CV_NO_BCK, "CV_NO_BCK", "no backward problem was created"},
    {CV_BAD_TB0, "CV_BAD_TB0", "the backward start time is outside the forward interval"},
    {CV_REIFWD_FAIL, "CV_REIFWD_FAIL", "re-initialising the forward problem at a checkpoint failed"},
    {CV_FWD_FAIL, "CV_FWD_FAIL", "re-integrating the forward problem between checkpoints failed"},
    {CV_GETY_BADT, "CV_GETY_BADT", "the forward solution was asked for outside the stored interval"},
};

static const cv_flag_info *cv_flag_lookup(int flag)
{
    static const cv_flag_info unknown = {0, "CV_UNKNOWN_FLAG", "a return flag resbridge does not know"};
    for (size_t i = 0; i < sizeof cv_flags / sizeof cv_flags[0]; i++)
        if (cv_flags[i].flag == flag) return &cv_flags[i];
    return &unknown;
}

/* Flags that follow from F itself misbehaving (recoverable failures, non-finite values). */
static int cv_flag_from_rhs(int flag)
{
    return flag == CV_FIRST_RHSFUNC_ERR || flag == CV_REPTD_RHSFUNC_ERR || flag == CV_UNREC_RHSFUNC_ERR ||
           flag == CV_RHSFUNC_FAIL || flag == CV_CONV_FAILURE || flag == CV_ERR_FAILURE || flag == CV_TOO_MUCH_ACC ||
           flag == CV_FIRST_QRHSFUNC_ERR || flag == CV_REPTD_QRHSFUNC_ERR || flag == CV_UNREC_QRHSFUNC_ERR ||
           flag == CV_QRHSFUNC_FAIL || flag == CV_FWD_FAIL;
}

/* ---- one CVODE(S) run: everything it allocates, freed in one place ------------------------- */

typedef struct cv_run {
    rb_ode_rhs rhs;
    const char *fn;     /* the public function, for messages */
    SUNContext sunctx;
    void *mem;          /* forward problem (and, through it, the backward one) */
    N_Vector y, yB, qB; /* state, adjoint state, parameter-gradient quadrature */
    SUNMatrix A;
    SUNLinearSolver LS;
    SUNNonlinearSolver NLS, NLSB;
    int which;                             /* backward problem index */
    int flag;                              /* first failing CVODE flag (set-up calls) */
    const char *call;                      /* the CVODE call that returned it */
    char cv_message[RB_ODE_MESSAGE_LEN];   /* the last error CVODE reported */
} cv_run;

static void cv_error_handler(int code, const char *module, const char *function, char *msg, void *data)
{
    (void)module;
    if (code == CV_WARNING) return; /* e.g. "t + h = t": a warning, not a failure */
    cv_run *run = data;
    snprintf(run->cv_message, sizeof run->cv_message, "%s: %s", function, msg);
}

/* Run a CVODE set-up call unless an earlier one failed; remember which call failed. */
#define CV_SETUP(run, fname, ...)                  \
    do {                                           \
        if ((run)->flag >= 0) {                    \
            (run)->flag = fname(__VA_ARGS__);      \
            (run)->call = #fname;                  \
        }                                          \
    } while (0)

static N_Vector cv_vector(cv_run *run, size_t n, const double *init)
{
    if (run->flag < 0) return NULL;
    N_Vector v = N_VNew_Serial((sunindextype)n, run->sunctx);
    if (v == NULL) {
        run->flag = CV_MEM_FAIL;
        run->call = "N_VNew_Serial";
        return NULL;
    }
    double *d = N_VGetArrayPointer(v);
    if (init != NULL) memcpy(d, init, n * sizeof *d);
    else memset(d, 0, n * sizeof *d);
    return v;
}

static rb_status cv_open(rb_context *ctx, const char *fn, rb_op *F, const rb_tensor *x0, cv_run *run)
{
    memset(run, 0, sizeof *run);
    run->fn = fn;
    rb_status st = rb_ode_rhs_open(ctx, F, x0->shape, &run->rhs);
    if (st != RB_OK) return st;
    if (SUNContext_Create(NULL, &run->sunctx) != 0) {
        run->sunctx = NULL;
        return rb_fail(ctx, RB_ENOMEM, "%s: SUNContext_Create failed", fn);
    }
    run->y = cv_vector(run, run->rhs.n, x0->data);
    return RB_OK;
}

static void cv_close(cv_run *run)
{
    if (run->mem != NULL) CVodeFree(&run->mem); /* frees the backward problems too */
    if (run->NLS != NULL) SUNNonlinSolFree(run->NLS);
    if (run->NLSB != NULL) SUNNonlinSolFree(run->NLSB);
    if (run->LS != NULL) SUNLinSolFree(run->LS);
    if (run->A != NULL) SUNMatDestroy(run->A);
    if (run->y != NULL) N_VDestroy(run->y);
    if (run->yB != NULL) N_VDestroy(run->yB);
    if (run->qB != NULL) N_VDestroy(run->qB);
    if (run->sunctx != NULL) SUNContext_Free(&run->sunctx);
    rb_ode_rhs_close(&run->rhs);
}

/* The status for a failed run: F's own failure if it had one, else the flag
 * with its name, meaning, where the solver stopped (t, on the way to `target`,
 * named target_name) and CVODE's message. */
static rb_status cv_fail(cv_run *run, int flag, const char *call, double t, const char *target_name, double target)
{
    const cv_flag_info *info = cv_flag_lookup(flag);
    rb_status st = rb_ode_rhs_report(&run->rhs, run->fn, info->name);
    if (st != RB_OK) return st;
    long steps = 0;
    if (run->mem != NULL) CVodeGetNumSteps(run->mem, &steps);
    rb_context *ctx = run->rhs.ctx;
    if (run->rhs.nonfinite && cv_flag_from_rhs(flag))
        return rb_fail(ctx, RB_EDIVERGED, "%s: F (%s) returned non-finite values (last at t = %.17g) and %s gave "
                       "%s: %s", run->fn, run->rhs.F->type->name, run->rhs.nonfinite_t, call, info->name,
                       info->meaning);
    rb_status code = flag == CV_MEM_FAIL ? RB_ENOMEM : RB_ESUNDIALS;
    if (flag == CV_TOO_MUCH_WORK)
        return rb_fail(ctx, code, "%s: %s: %s: %ld steps taken before reaching %s = %.17g (stopped at t = %.17g) "
                       "[%s]", run->fn, call, info->name, steps, target_name, target, t, run->cv_message);
    return rb_fail(ctx, code, "%s: %s: %s (%d): %s (t = %.17g, %ld steps) [%s]", run->fn, call, info->name, flag,
                   info->meaning, t, steps, run->cv_message);
}

/* ---- callbacks ---------------------------------------------------------------------------- */

static int cv_rhs(sunrealtype t, N_Vector y, N_Vector ydot, void *data)
{
    return rb_ode_rhs_eval(data, t, N_VGetArrayPointer(y), N_VGetArrayPointer(ydot));
}

/* CVODES integrates the backward problem yB' = fB(t, y, yB) from T down to t0.
 * The adjoint is λ' = -J_F(t, x)^T λ: fB is F's vjp with alpha = -1. */
static int cv_adjoint_rhs(sunrealtype t, N_Vector y, N_Vector yB, N_Vector yBdot, void *data)
{
    return rb_ode_rhs_vjp(data, t, N_VGetArrayPointer(y), N_VGetArrayPointer(yB), -1.0, N_VGetArrayPointer(yBdot));
}

/* The quadrature qB' = fQB with qB(T) = 0, integrated down to t0, ends at
 * qB(t0) = -∫_{t0}^{T} fQB dt; fQB = -(dF/dθ)^T λ gives dL/dθ = qB(t0). */
static int cv_adjoint_quad(sunrealtype t, N_Vector y, N_Vector yB, N_Vector qBdot, void *data)
{
    return rb_ode_rhs_param_grad(data, t, N_VGetArrayPointer(y), N_VGetArrayPointer(yB), -1.0,
                                 N_VGetArrayPointer(qBdot));
}

/* ---- forward problem ---------------------------------------------------------------------- */

static void cv_setup_forward(cv_run *run, rb_ref_cvode_method method, double t0, double T, double rtol, double atol,
                             long max_steps)
{
    if (run->flag < 0) return;
    run->mem = CVodeCreate(method == RB_REF_CVODE_BDF ? CV_BDF : CV_ADAMS, run->sunctx);
    if (run->mem == NULL) {
        run->flag = CV_MEM_FAIL;
        run->call = "CVodeCreate";
        return;
    }
    CV_SETUP(run, CVodeSetErrHandlerFn, run->mem, cv_error_handler, run);
    CV_SETUP(run, CVodeInit, run->mem, cv_rhs, t0, run->y);
    CV_SETUP(run, CVodeSetUserData, run->mem, &run->rhs);
    CV_SETUP(run, CVodeSStolerances, run->mem, rtol, atol);
    CV_SETUP(run, CVodeSetMaxNumSteps, run->mem, max_steps);
    CV_SETUP(run, CVodeSetStopTime, run->mem, T);
    if (run->flag < 0) return;
    if (method == RB_REF_CVODE_BDF) {
        size_t n = run->rhs.n;
        run->A = SUNDenseMatrix((sunindextype)n, (sunindextype)n, run->sunctx);
        run->LS = run->A == NULL ? NULL : SUNLinSol_Dense(run->y, run->A, run->sunctx);
        if (run->LS == NULL) {
            run->flag = CV_MEM_FAIL;
            run->call = "SUNDenseMatrix/SUNLinSol_Dense";
            return;
        }
        CV_SETUP(run, CVodeSetLinearSolver, run->mem, run->LS, run->A); /* no Jacobian: difference quotients */
    } else {
        run->NLS = SUNNonlinSol_FixedPoint(run->y, 0, run->sunctx);
        if (run->NLS == NULL) {
            run->flag = CV_MEM_FAIL;
            run->call = "SUNNonlinSol_FixedPoint";
            return;
        }
        CV_SETUP(run, CVodeSetNonlinearSolver, run->mem, run->NLS);
    }
}

static void cv_stats(cv_run *run, int with_ls, rb_ref_ode_stats *stats)
{
    rb_ref_ode_stats s = {0};
    long nfe = 0, nfels = 0;
    CVodeGetNumSteps(run->mem, &s.steps);
    CVodeGetNumRhsEvals(run->mem, &nfe);
    if (with_ls) CVodeGetNumLinRhsEvals(run->mem, &nfels), CVodeGetNumJacEvals(run->mem, &s.jac_evals);
    s.rhs_evals = nfe + nfels;
    CVodeGetNumErrTestFails(run->mem, &s.error_test_fails);
    CVodeGetNumNonlinSolvIters(run->mem, &s.nonlin_iters);
    CVodeGetLastStep(run->mem, &s.last_step);
    *stats = s;
}

/* Non-finite output (the solver reported success): RB_EDIVERGED. */
static rb_status cv_check_finite(cv_run *run, const char *what, N_Vector v, size_t n)
{
    const double *d = N_VGetArrayPointer(v);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(d[i]))
            return rb_fail(run->rhs.ctx, RB_EDIVERGED, "%s: %s[%zu] = %g is not finite", run->fn, what, i, d[i]);
    return RB_OK;
}

/* x(T) into run->y. */
static rb_status cv_forward_run(cv_run *run, rb_ref_cvode_method method, double t0, double T, double rtol,
                                double atol, long max_steps)
{
    cv_setup_forward(run, method, t0, T, rtol, atol, max_steps);
    if (run->flag < 0) return cv_fail(run, run->flag, run->call, t0, "T", T);
    double t = t0;
    int flag = CVode(run->mem, T, run->y, &t, CV_NORMAL);
    if (flag < 0) return cv_fail(run, flag, "CVode", t, "T", T);
    return cv_check_finite(run, "x(T)", run->y, run->rhs.n);
}

rb_status rb_ref_cvode(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0, rb_tensor *xT,
                       rb_ref_cvode_method method, double rtol, double atol, long max_steps,
                       rb_ref_ode_stats *stats)
{
    static const char fn[] = "rb_ref_cvode";
    rb_status st = rb_ode_check(ctx, fn, F, t0, T, x0, xT, rtol, atol);
    if (st != RB_OK) return st;
    if ((unsigned)method >= RB_REF_CVODE_METHOD_COUNT)
        return rb_fail(ctx, RB_EINVAL, "%s: method = %d is not an rb_ref_cvode_method", fn, (int)method);
    size_t n = rb_tensor_count(x0);
    if (method == RB_REF_CVODE_BDF && n > RB_REF_CVODE_DENSE_MAX)
        return rb_fail(ctx, RB_EINVAL, "%s: BDF's dense Newton matrix allows %d unknowns, the state has %zu; use "
                       "RB_REF_CVODE_ADAMS", fn, RB_REF_CVODE_DENSE_MAX, n);
    if (max_steps <= 0) max_steps = RB_REF_ODE_MAX_STEPS;
    if (T == t0) {
        memmove(xT->data, x0->data, n * sizeof *xT->data);
        if (stats != NULL) memset(stats, 0, sizeof *stats);
        return RB_OK;
    }
    double t_entry = F->t;
    cv_run run;
    st = cv_open(ctx, fn, F, x0, &run);
    if (st == RB_OK) st = cv_forward_run(&run, method, t0, T, rtol, atol, max_steps);
    if (st == RB_OK) {
        memcpy(xT->data, N_VGetArrayPointer(run.y), n * sizeof *xT->data);
        if (stats != NULL) cv_stats(&run, method == RB_REF_CVODE_BDF, stats);
    }
    cv_close(&run);
    F->t = t_entry;
    return st;
}

/* ---- the adjoint -------------------------------------------------------------------------- */

#define CV_CHECKPOINT_STEPS 100

static void cv_setup_backward(cv_run *run, double T, double rtol, double atol, size_t nparams)
{
    CV_SETUP(run, CVodeCreateB, run->mem, CV_ADAMS, &run->which);
    if (run->flag < 0) return;
    void *bmem = CVodeGetAdjCVodeBmem(run->mem, run->which);
    CV_SETUP(run, CVodeSetErrHandlerFn, bmem, cv_error_handler, run);
    CV_SETUP(run, CVodeInitB, run->mem, run->which, cv_adjoint_rhs, T, run->yB);
    CV_SETUP(run, CVodeSetUserDataB, run->mem, run->which, &run->rhs);
    CV_SETUP(run, CVodeSStolerancesB, run->mem, run->which, rtol, atol);
    CV_SETUP(run, CVodeSetMaxNumStepsB, run->mem, run->which, RB_REF_ODE_MAX_STEPS);
    if (run->flag < 0) return;
    run->NLSB = SUNNonlinSol_FixedPoint(run->yB, 0, run->sunctx);
    if (run->NLSB == NULL) {
        run->flag = CV_MEM_FAIL;
        run->call = "SUNNonlinSol_FixedPoint";
        return;
    }
    CV_SETUP(run, CVodeSetNonlinearSolverB, run->mem, run->which, run->NLSB);
    if (nparams == 0) return;
    CV_SETUP(run, CVodeQuadInitB, run->mem, run->which, cv_adjoint_quad, run->qB);
    CV_SETUP(run, CVodeQuadSStolerancesB, run->mem, run->which, rtol, atol);
    CV_SETUP(run, CVodeSetQuadErrConB, run->mem, run->which, SUNTRUE);
}

/* Forward from t0 to T storing checkpoints, then backward from T to t0; the
 * results stay in run->yB (λ(t0)) and run->qB (dL/dθ). */
static rb_status cv_adjoint_run(cv_run *run, double t0, double T, double rtol, double atol, size_t np)
{
    cv_setup_forward(run, RB_REF_CVODE_ADAMS, t0, T, rtol, atol, RB_REF_ODE_MAX_STEPS);
    CV_SETUP(run, CVodeAdjInit, run->mem, CV_CHECKPOINT_STEPS, CV_POLYNOMIAL);
    if (run->flag < 0) return cv_fail(run, run->flag, run->call, t0, "T", T);
    double t = t0;
    int ncheck, flag = CVodeF(run->mem, T, run->y, &t, CV_NORMAL, &ncheck);
    if (flag < 0) return cv_fail(run, flag, "CVodeF", t, "T", T);
    cv_setup_backward(run, T, rtol, atol, np);
    if (run->flag < 0) return cv_fail(run, run->flag, run->call, T, "t0", t0);
    flag = CVodeB(run->mem, t0, CV_NORMAL);
    if (flag < 0) {
        CVodeGetCurrentTime(CVodeGetAdjCVodeBmem(run->mem, run->which), &t);
        return cv_fail(run, flag, "CVodeB", t, "t0", t0);
    }
    flag = CVodeGetB(run->mem, run->which, &t, run->yB);
    if (flag >= 0 && np > 0) flag = CVodeGetQuadB(run->mem, run->which, &t, run->qB);
    if (flag < 0) return cv_fail(run, flag, "CVodeGetB/CVodeGetQuadB", t, "t0", t0);
    rb_status st = cv_check_finite(run, "dLdx0", run->yB, run->rhs.n);
    if (st == RB_OK && np > 0) st = cv_check_finite(run, "dLdtheta", run->qB, np);
    return st;
}

rb_status rb_ref_cvodes_adjoint(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0,
                                const rb_tensor *dLdxT, rb_tensor *dLdx0, double *dLdtheta, double rtol,
                                double atol)
{
    static const char fn[] = "rb_ref_cvodes_adjoint";
    rb_status st = rb_ode_check(ctx, fn, F, t0, T, x0, dLdx0, rtol, atol);
    if (st == RB_OK)
        st = rb_tensor_check_same(ctx, x0, "rb_ref_cvodes_adjoint: x0", dLdxT, "rb_ref_cvodes_adjoint: dLdxT");
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x0), np = dLdtheta != NULL ? F->nparams : 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dLdxT->data[i]))
            return rb_fail(ctx, RB_EINVAL, "%s: dLdxT[%zu] = %g is not finite", fn, i, dLdxT->data[i]);
    if (T < t0) return rb_fail(ctx, RB_EINVAL, "%s: T = %g < t0 = %g; the adjoint needs T >= t0", fn, T, t0);
    if (F->type->vjp == NULL)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: F (%s) has no vjp; the adjoint needs J_F^T", fn, F->type->name);
    if (np > 0 && F->type->param_grad == NULL)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: F (%s) has no param_grad; pass dLdtheta = NULL", fn, F->type->name);
    if (T == t0) {
        memmove(dLdx0->data, dLdxT->data, n * sizeof *dLdx0->data);
        if (np > 0) memset(dLdtheta, 0, np * sizeof *dLdtheta);
        return RB_OK;
    }
    double t_entry = F->t;
    cv_run run;
    st = cv_open(ctx, fn, F, x0, &run);
    if (st == RB_OK) {
        run.yB = cv_vector(&run, n, dLdxT->data);
        if (np > 0) run.qB = cv_vector(&run, np, NULL);
        st = cv_adjoint_run(&run, t0, T, rtol, atol, np);
    }
    if (st == RB_OK) {
        memcpy(dLdx0->data, N_VGetArrayPointer(run.yB), n * sizeof *dLdx0->data);
        if (np > 0) memcpy(dLdtheta, N_VGetArrayPointer(run.qB), np * sizeof *dLdtheta);
    }
    cv_close(&run);
    F->t = t_entry;
    return st;
}
