/* integrate.c — integrators as stacks of residual steps, and the discrete
 * adjoint with checkpointing (see ode.h).
 *
 * Every x + c F(u) with u = x goes through rb_residual_step: Euler is one
 * residual step, Heun two, RK4 starts with one (its other stage inputs x + c k
 * are linear combinations of stage values), and the implicit methods solve
 * m = x + c F(m) by Newton's method on r(m) = rb_residual_step(F, -c, m) - x.
 * Implicit midpoint is that solve with c = h/2 followed by the explicit half
 * step y = m + (h/2) F(m). */
#include "resbridge/ode.h"

#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "resbridge/residual.h"
#include "ode_private.h"

rb_ode_options rb_ode_options_default(void)
{
    rb_ode_options o = {1e-12, 25};
    return o;
}

static size_t state_bytes(rb_shape in) { return rb_arena_bytes(rb_shape_count(in) * sizeof(double)); }

/* A scratch state from the arena (real mode only). */
static rb_status scratch(rb_context *ctx, rb_arena *work, rb_shape shape, rb_tensor *t)
{
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "ode step: needs a work arena (rb_ode_step_workspace bytes)");
    rb_status st = rb_arena_tensor(ctx, work, t, shape);
    if (st == RB_OK && t->data == NULL) st = rb_fail(ctx, RB_EINVAL, "ode step: work arena is in measuring mode");
    return st;
}

static void zero(rb_tensor *t) { memset(t->data, 0, rb_tensor_count(t) * sizeof(double)); }

/* dθ += alpha (∂F/∂θ)(u)^T v, when asked for. */
static rb_status param_grad(rb_context *ctx, rb_op *F, const rb_tensor *u, const rb_tensor *v, double alpha,
                            double *dtheta, rb_arena *work)
{
    if (dtheta == NULL || F->nparams == 0) return RB_OK;
    return rb_op_param_grad(ctx, F, u, v, alpha, dtheta, work);
}

/* ---- forward Euler: the ResNet layer -------------------------------------------------------- */

static size_t euler_workspace(const rb_op *F, rb_shape in) { return rb_residual_workspace(F, in); }

static rb_status euler_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                            const rb_ode_options *opt, rb_arena *work)
{
    (void)opt;
    F->t = t;
    return rb_residual_step(ctx, F, h, x, y, work);
}

static rb_status euler_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, const rb_tensor *y,
                                const rb_tensor *dy, rb_tensor *dx, double *dtheta, rb_arena *work)
{
    (void)y;
    F->t = t;
    return rb_residual_backward(ctx, F, h, x, dy, dx, dtheta, work);
}

/* ---- Heun: two residual steps and their mean with x ----------------------------------------- */

static size_t heun_workspace(const rb_op *F, rb_shape in) { return 3 * state_bytes(in) + rb_residual_workspace(F, in); }

rb_status rb_ode_heun_pair(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *xe,
                           rb_tensor *y, rb_arena *work)
{
    F->t = t;
    rb_status st = rb_residual_step(ctx, F, h, x, xe, work);                   /* x~ = x + h F(t, x) */
    if (st == RB_OK) F->t = t + h, st = rb_residual_step(ctx, F, h, xe, y, work); /* z = x~ + h F(t+h, x~) */
    if (st == RB_OK) {
        size_t n = rb_tensor_count(x);
        for (size_t i = 0; i < n; i++) y->data[i] = 0.5 * (x->data[i] + y->data[i]); /* y = (x + z) / 2 */
    }
    return st;
}

static rb_status heun_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                           const rb_ode_options *opt, rb_arena *work)
{
    (void)opt;
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor xt;
    rb_status st = scratch(ctx, work, x->shape, &xt);
    if (st == RB_OK) st = rb_ode_heun_pair(ctx, F, t, h, x, &xt, y, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status heun_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, const rb_tensor *y,
                               const rb_tensor *dy, rb_tensor *dx, double *dtheta, rb_arena *work)
{
    (void)y;
    size_t mark = work ? rb_arena_mark(work) : 0, n = rb_tensor_count(x);
    rb_tensor xt, dz, dxt;
    rb_status st = scratch(ctx, work, x->shape, &xt);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &dz);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &dxt);
    if (st == RB_OK) F->t = t, st = rb_residual_step(ctx, F, h, x, &xt, work);
    if (st == RB_OK) {
        for (size_t i = 0; i < n; i++) dz.data[i] = 0.5 * dy->data[i];
        zero(&dxt);
        F->t = t + h;
        st = rb_residual_backward(ctx, F, h, &xt, &dz, &dxt, dtheta, work);
    }
    if (st == RB_OK) F->t = t, st = rb_residual_backward(ctx, F, h, x, &dxt, dx, dtheta, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &dz, dx); /* the x in (x + z) / 2 */
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* ---- classical RK4 ----------------------------------------------------------------------------
 * u1 = x + (h/2) F(t, x)              a residual step
 * k2 = F(t + h/2, u1), u2 = x + (h/2) k2
 * k3 = F(t + h/2, u2), u3 = x + h k3
 * k4 = F(t + h, u3)
 * y  = (2 x + u1) / 3 + (h/3) (k2 + k3) + (h/6) k4      ((u1 - x)/3 = (h/6) k1) */

static size_t rk4_workspace(const rb_op *F, rb_shape in) { return 6 * state_bytes(in) + rb_residual_workspace(F, in); }

/* The stage inputs u1, u2, u3 (u3 may be NULL) and, if y != NULL, the step. k: scratch. */
static rb_status rk4_stages(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *u1,
                            rb_tensor *u2, rb_tensor *u3, rb_tensor *k, rb_tensor *y, rb_arena *work)
{
    size_t n = rb_tensor_count(x);
    const double *xd = x->data;
    F->t = t;
    rb_status st = rb_residual_step(ctx, F, 0.5 * h, x, u1, work);
    if (st != RB_OK) return st;
    if (y) for (size_t i = 0; i < n; i++) y->data[i] = (2.0 * xd[i] + u1->data[i]) / 3.0;
    F->t = t + 0.5 * h;
    if ((st = rb_op_apply(ctx, F, u1, k, work)) != RB_OK) return st;       /* k2 */
    for (size_t i = 0; i < n; i++) u2->data[i] = xd[i] + 0.5 * h * k->data[i];
    if (y) for (size_t i = 0; i < n; i++) y->data[i] += h / 3.0 * k->data[i];
    if ((st = rb_op_apply(ctx, F, u2, k, work)) != RB_OK) return st;       /* k3 */
    for (size_t i = 0; i < n; i++) u3->data[i] = xd[i] + h * k->data[i];
    if (y) for (size_t i = 0; i < n; i++) y->data[i] += h / 3.0 * k->data[i];
    if (y == NULL) return RB_OK;
    F->t = t + h;
    if ((st = rb_op_apply(ctx, F, u3, k, work)) != RB_OK) return st;       /* k4 */
    for (size_t i = 0; i < n; i++) y->data[i] += h / 6.0 * k->data[i];
    return RB_OK;
}

static rb_status rk4_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                          const rb_ode_options *opt, rb_arena *work)
{
    (void)opt;
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor u, k, u2, u3; /* the stage inputs u1, u2, u3 and one stage value k */
    rb_status st = scratch(ctx, work, x->shape, &u);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &k);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u2);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u3);
    if (st == RB_OK) st = rk4_stages(ctx, F, t, h, x, &u, &u2, &u3, &k, y, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status rk4_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, const rb_tensor *y,
                              const rb_tensor *dy, rb_tensor *dx, double *dtheta, rb_arena *work)
{
    (void)y;
    size_t mark = work ? rb_arena_mark(work) : 0, n = rb_tensor_count(x);
    rb_tensor u1, u2, u3, k, du, dk;
    rb_status st = scratch(ctx, work, x->shape, &u1);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u2);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u3);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &k);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &du);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &dk);
    if (st == RB_OK) st = rk4_stages(ctx, F, t, h, x, &u1, &u2, &u3, &k, NULL, work);
    /* k4 = F(t + h, u3) with weight h/6 */
    if (st == RB_OK) {
        zero(&du);
        F->t = t + h;
        st = rb_op_vjp(ctx, F, &u3, dy, h / 6.0, &du, work);
    }
    if (st == RB_OK) st = param_grad(ctx, F, &u3, dy, h / 6.0, dtheta, work);
    /* u3 = x + h k3; k3 = F(t + h/2, u2) with weight h/3 */
    if (st == RB_OK) {
        for (size_t i = 0; i < n; i++) dx->data[i] += du.data[i], dk.data[i] = h / 3.0 * dy->data[i] + h * du.data[i];
        zero(&du);
        F->t = t + 0.5 * h;
        st = rb_op_vjp(ctx, F, &u2, &dk, 1.0, &du, work);
    }
    if (st == RB_OK) st = param_grad(ctx, F, &u2, &dk, 1.0, dtheta, work);
    /* u2 = x + (h/2) k2; k2 = F(t + h/2, u1) with weight h/3 */
    if (st == RB_OK) {
        for (size_t i = 0; i < n; i++)
            dx->data[i] += du.data[i], dk.data[i] = h / 3.0 * dy->data[i] + 0.5 * h * du.data[i];
        for (size_t i = 0; i < n; i++) du.data[i] = dy->data[i] / 3.0; /* u1 in y */
        st = rb_op_vjp(ctx, F, &u1, &dk, 1.0, &du, work);
    }
    if (st == RB_OK) st = param_grad(ctx, F, &u1, &dk, 1.0, dtheta, work);
    /* u1 = x + (h/2) F(t, x): the residual step's backward */
    if (st == RB_OK) F->t = t, st = rb_residual_backward(ctx, F, 0.5 * h, x, &du, dx, dtheta, work);
    if (st == RB_OK)
        for (size_t i = 0; i < n; i++) dx->data[i] += 2.0 / 3.0 * dy->data[i];
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* ---- implicit: Newton on m = x + c F(tF, m) --------------------------------------------------- */

static size_t implicit_workspace(const rb_op *F, rb_shape in)
{
    size_t n = rb_shape_count(in);
    size_t dense = n <= RB_ODE_NEWTON_MAX ? rb_arena_bytes(n * n * sizeof(double)) + rb_arena_bytes(n * sizeof(lapack_int)) : 0;
    return dense + 6 * state_bytes(in) + rb_residual_workspace(F, in);
}

/* M = I - c J_F(tF, m) (row-major; rows of J from the vjp on unit vectors). e: scratch state. */
static rb_status newton_matrix(rb_context *ctx, rb_op *F, double c, const rb_tensor *m, double *M, rb_tensor *e,
                               rb_arena *work)
{
    size_t n = rb_tensor_count(m);
    memset(M, 0, n * n * sizeof *M);
    zero(e);
    for (size_t i = 0; i < n; i++) {
        rb_tensor row = {m->shape, M + i * n, false};
        e->data[i] = 1.0;
        rb_status st = rb_op_vjp(ctx, F, m, e, -c, &row, work); /* row i of -c J */
        e->data[i] = 0.0;
        if (st != RB_OK) return st;
        M[i * n + i] += 1.0;
    }
    return RB_OK;
}

/* Solve M z = b (transpose: M^T z = b) in place in b; M is overwritten (LU). */
static rb_status dense_solve(rb_context *ctx, double *M, size_t n, int transpose, double *b, lapack_int *piv,
                             const char *what)
{
    /* a row-major buffer read column-major is the transpose */
    lapack_int info = LAPACKE_dgesv(transpose ? LAPACK_COL_MAJOR : LAPACK_ROW_MAJOR, (lapack_int)n, 1, M,
                                    (lapack_int)n, piv, b, transpose ? (lapack_int)n : 1);
    if (info > 0)
        return rb_fail(ctx, RB_EDIVERGED, "%s: the Newton matrix I - c J is singular (dgesv: U(%d,%d) = 0)", what,
                       (int)info, (int)info);
    if (info < 0) return rb_fail(ctx, RB_ELAPACK, "%s: dgesv argument %d had an illegal value", what, (int)-info);
    return RB_OK;
}

/* m solving m = x + c F(tF, m), starting from m = x. */
static rb_status newton_solve(rb_context *ctx, rb_op *F, double tF, double c, const rb_tensor *x, rb_tensor *m,
                              const rb_ode_options *opt, rb_arena *work)
{
    rb_ode_options o = opt ? *opt : rb_ode_options_default();
    size_t n = rb_tensor_count(x), mark = work ? rb_arena_mark(work) : 0;
    if (n > RB_ODE_NEWTON_MAX)
        return rb_fail(ctx, RB_EUNSUPPORTED, "implicit step: the state has %zu entries; the dense Newton solve allows %d",
                       n, RB_ODE_NEWTON_MAX);
    rb_tensor r, e;
    rb_status st = scratch(ctx, work, x->shape, &r);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &e);
    double *M = NULL;
    lapack_int *piv = NULL;
    if (st == RB_OK) {
        M = rb_arena_alloc(ctx, work, n * n * sizeof *M);
        piv = rb_arena_alloc(ctx, work, n * sizeof *piv);
        if (M == NULL || piv == NULL) st = rb_fail(ctx, RB_ENOMEM, "implicit step: work arena too small for the Newton matrix");
    }
    if (st == RB_OK) st = rb_tensor_copy(ctx, x, m);
    F->t = tF;
    double xnorm = rb_tensor_norm2(x), rnorm = 0;
    for (int it = 0; st == RB_OK; it++) {
        st = rb_residual_step(ctx, F, -c, m, &r, work); /* r = m - c F(m) - x */
        if (st != RB_OK) break;
        st = rb_tensor_axpy(ctx, -1.0, x, &r);
        if (st != RB_OK) break;
        rnorm = rb_tensor_norm2(&r);
        if (!isfinite(rnorm) || !rb_ode_all_finite(m->data, n)) {
            st = rb_fail(ctx, RB_EDIVERGED, "implicit step at t = %g: Newton iterate %d is not finite", tF, it);
            break;
        }
        if (rnorm == 0 || rnorm <= o.newton_tol * (xnorm + rb_tensor_norm2(m))) break;
        if (it >= o.newton_max_iter) {
            st = rb_fail(ctx, RB_EMAXITER, "implicit step at t = %g: Newton did not converge in %d iterations "
                         "(residual %.3e > tol %.1e)", tF, o.newton_max_iter, rnorm, o.newton_tol);
            break;
        }
        st = newton_matrix(ctx, F, c, m, M, &e, work);
        if (st != RB_OK) break;
        st = dense_solve(ctx, M, n, 0, r.data, piv, "implicit step");
        if (st != RB_OK) break;
        for (size_t i = 0; i < n; i++) m->data[i] -= r.data[i];
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* The adjoint of m = x + c F(tF, m): solve (I - c J(m))^T mu = dm; dx += mu, dθ += c (∂F/∂θ)(m)^T mu. */
static rb_status newton_backward(rb_context *ctx, rb_op *F, double tF, double c, const rb_tensor *m,
                                 const rb_tensor *dm, rb_tensor *dx, double *dtheta, rb_arena *work)
{
    size_t n = rb_tensor_count(m), mark = work ? rb_arena_mark(work) : 0;
    if (n > RB_ODE_NEWTON_MAX)
        return rb_fail(ctx, RB_EUNSUPPORTED, "implicit step backward: the state has %zu entries; the dense solve allows %d",
                       n, RB_ODE_NEWTON_MAX);
    rb_tensor mu, e;
    rb_status st = scratch(ctx, work, m->shape, &mu);
    if (st == RB_OK) st = scratch(ctx, work, m->shape, &e);
    double *M = NULL;
    lapack_int *piv = NULL;
    if (st == RB_OK) {
        M = rb_arena_alloc(ctx, work, n * n * sizeof *M);
        piv = rb_arena_alloc(ctx, work, n * sizeof *piv);
        if (M == NULL || piv == NULL) st = rb_fail(ctx, RB_ENOMEM, "implicit step backward: work arena too small");
    }
    F->t = tF;
    if (st == RB_OK) st = newton_matrix(ctx, F, c, m, M, &e, work);
    if (st == RB_OK) st = rb_tensor_copy(ctx, dm, &mu);
    if (st == RB_OK) st = dense_solve(ctx, M, n, 1, mu.data, piv, "implicit step backward");
    if (st == RB_OK) st = param_grad(ctx, F, m, &mu, c, dtheta, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &mu, dx);
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status beuler_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                             const rb_ode_options *opt, rb_arena *work)
{
    return newton_solve(ctx, F, t + h, h, x, y, opt, work);
}

static rb_status beuler_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x,
                                 const rb_tensor *y, const rb_tensor *dy, rb_tensor *dx, double *dtheta,
                                 rb_arena *work)
{
    (void)x;
    return newton_backward(ctx, F, t + h, h, y, dy, dx, dtheta, work);
}

/* m = x + (h/2) F(t + h/2, m) (implicit), then y = m + (h/2) F(t + h/2, m) (a residual step). */
static rb_status imidpoint_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                                const rb_ode_options *opt, rb_arena *work)
{
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor m;
    rb_status st = scratch(ctx, work, x->shape, &m);
    if (st == RB_OK) st = newton_solve(ctx, F, t + 0.5 * h, 0.5 * h, x, &m, opt, work);
    if (st == RB_OK) F->t = t + 0.5 * h, st = rb_residual_step(ctx, F, 0.5 * h, &m, y, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status imidpoint_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x,
                                    const rb_tensor *y, const rb_tensor *dy, rb_tensor *dx, double *dtheta,
                                    rb_arena *work)
{
    size_t mark = work ? rb_arena_mark(work) : 0, n = rb_tensor_count(x);
    rb_tensor m, dm;
    rb_status st = scratch(ctx, work, x->shape, &m);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &dm);
    if (st == RB_OK) {
        for (size_t i = 0; i < n; i++) m.data[i] = 0.5 * (x->data[i] + y->data[i]); /* y = 2 m - x */
        zero(&dm);
        F->t = t + 0.5 * h;
        st = rb_residual_backward(ctx, F, 0.5 * h, &m, dy, &dm, dtheta, work);
    }
    if (st == RB_OK) st = newton_backward(ctx, F, t + 0.5 * h, 0.5 * h, &m, &dm, dx, dtheta, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* ---- symplectic leapfrog (Stormer-Verlet, kick-drift-kick) on a partitioned F ------------------
 * u = x + (h/2) P_Z F(t, x),  v = u + h P_Y F(t + h/2, u),  y = v + (h/2) P_Z F(t + h, v):
 * three residual steps, each moving one half of the state (see ode.h). */

static size_t leapfrog_workspace(const rb_op *F, rb_shape in) { return 4 * state_bytes(in) + rb_residual_workspace(F, in); }

typedef struct leapfrog_plan {
    rb_op *part[3];  /* P_Z F, P_Y F, P_Z F */
    double t[3], c[3]; /* times and step factors of the three residual steps */
} leapfrog_plan;

static rb_status leapfrog_plan_make(rb_context *ctx, rb_op *F, double t, double h, leapfrog_plan *p)
{
    rb_op *Y, *Z;
    rb_status st = rb_op_ode_part(ctx, F, RB_ODE_PART_Y, &Y);
    if (st == RB_OK) st = rb_op_ode_part(ctx, F, RB_ODE_PART_Z, &Z);
    if (st != RB_OK) return st;
    *p = (leapfrog_plan){{Z, Y, Z}, {t, t + 0.5 * h, t + h}, {0.5 * h, h, 0.5 * h}};
    return RB_OK;
}

/* The three sub-steps from x: s[0] = u, s[1] = v, and y (any may be NULL to stop early). */
static rb_status leapfrog_run(rb_context *ctx, const leapfrog_plan *p, const rb_tensor *x, rb_tensor *u, rb_tensor *v,
                              rb_tensor *y, rb_arena *work)
{
    const rb_tensor *in[3] = {x, u, v};
    rb_tensor *out[3] = {u, v, y};
    rb_status st = RB_OK;
    for (int k = 0; k < 3 && st == RB_OK && out[k] != NULL; k++) {
        p->part[k]->t = p->t[k];
        st = rb_residual_step(ctx, p->part[k], p->c[k], in[k], out[k], work);
    }
    return st;
}

static rb_status leapfrog_step(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                               const rb_ode_options *opt, rb_arena *work)
{
    (void)opt;
    size_t mark = work ? rb_arena_mark(work) : 0;
    leapfrog_plan p;
    rb_tensor u, v;
    rb_status st = leapfrog_plan_make(ctx, F, t, h, &p);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &v);
    if (st == RB_OK) st = leapfrog_run(ctx, &p, x, &u, &v, y, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* Back through the three residual steps, last first (their inputs x, u, v recomputed from x). */
static rb_status leapfrog_backward(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x,
                                   const rb_tensor *y, const rb_tensor *dy, rb_tensor *dx, double *dtheta,
                                   rb_arena *work)
{
    (void)y;
    size_t mark = work ? rb_arena_mark(work) : 0;
    leapfrog_plan p;
    rb_tensor u, v, dv, du;
    rb_status st = leapfrog_plan_make(ctx, F, t, h, &p);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &u);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &v);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &dv);
    if (st == RB_OK) st = scratch(ctx, work, x->shape, &du);
    if (st == RB_OK) st = leapfrog_run(ctx, &p, x, &u, &v, NULL, work);
    const rb_tensor *in[3] = {x, &u, &v}, *dout[3] = {&du, &dv, dy};
    rb_tensor *din[3] = {dx, &du, &dv};
    if (st == RB_OK) zero(&du), zero(&dv);
    for (int k = 2; k >= 0 && st == RB_OK; k--) {
        p.part[k]->t = p.t[k];
        st = rb_residual_backward(ctx, p.part[k], p.c[k], in[k], dout[k], din[k], dtheta, work);
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* ---- the method objects ----------------------------------------------------------------------- */

static const rb_ode_method method_euler = {"euler", 1, 0, euler_workspace, euler_step, euler_backward, 0};
static const rb_ode_method method_heun = {"heun", 2, 0, heun_workspace, heun_step, heun_backward, 0};
static const rb_ode_method method_rk4 = {"rk4", 4, 0, rk4_workspace, rk4_step, rk4_backward, 0};
static const rb_ode_method method_beuler = {"beuler", 1, 1, implicit_workspace, beuler_step, beuler_backward, 0};
static const rb_ode_method method_imidpoint = {"imidpoint", 2, 1, implicit_workspace, imidpoint_step,
                                               imidpoint_backward, 0};
static const rb_ode_method method_leapfrog = {"leapfrog", 2, 0, leapfrog_workspace, leapfrog_step, leapfrog_backward, 1};

const rb_ode_method *const rb_ode_euler = &method_euler;
const rb_ode_method *const rb_ode_heun = &method_heun;
const rb_ode_method *const rb_ode_rk4 = &method_rk4;
const rb_ode_method *const rb_ode_beuler = &method_beuler;
const rb_ode_method *const rb_ode_imidpoint = &method_imidpoint;
const rb_ode_method *const rb_ode_leapfrog = &method_leapfrog;
const rb_ode_method *const rb_ode_methods[] = {&method_euler, &method_heun, &method_rk4, &method_beuler,
                                               &method_imidpoint, &method_leapfrog, NULL};

rb_status rb_ode_method_parse(rb_context *ctx, const char *name, const rb_ode_method **method)
{
    if (ctx == NULL) return RB_ENULL;
    if (name == NULL || method == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_ode_method_parse: %s is NULL", name ? "method" : "name");
    for (size_t i = 0; rb_ode_methods[i] != NULL; i++)
        if (strcmp(name, rb_ode_methods[i]->name) == 0) {
            *method = rb_ode_methods[i];
            return RB_OK;
        }
    return rb_fail(ctx, RB_EINVAL, "unknown ODE method '%s' (euler, heun, rk4, beuler, imidpoint, leapfrog)", name);
}

size_t rb_ode_step_workspace(const rb_ode_method *method, const rb_op *F, rb_shape in)
{
    if (method == NULL || method->workspace == NULL) return 0;
    return method->workspace(F, in) + 64;
}

/* ---- integrate and the tape ------------------------------------------------------------------- */

void rb_ode_tape_init(rb_ode_tape *tape, size_t every)
{
    if (tape == NULL) return;
    memset(tape, 0, sizeof *tape);
    tape->every = every;
}

void rb_ode_tape_release(rb_context *ctx, rb_ode_tape *tape)
{
    if (tape == NULL) return;
    rb_arena_release(ctx, &tape->arena);
    size_t every = tape->every;
    rb_ode_tape_init(tape, every);
}

rb_status rb_ode_check_problem(rb_context *ctx, const char *fn, const rb_ode_method *method, const rb_op *F, double t0,
                               double T, const rb_tensor *x0, const rb_tensor *xT)
{
    if (ctx == NULL) return RB_ENULL;
    if (method == NULL) return rb_fail(ctx, RB_ENULL, "%s: method is NULL", fn);
    if (F == NULL || F->type == NULL) return rb_fail(ctx, RB_ENULL, "%s: F is NULL", fn);
    char xname[96], tname[96];
    snprintf(xname, sizeof xname, "%s: x0", fn);
    snprintf(tname, sizeof tname, "%s: xT", fn);
    rb_status st = rb_tensor_check(ctx, x0, xname);
    if (st == RB_OK) st = rb_tensor_check_same(ctx, x0, xname, xT, tname);
    if (st == RB_OK) st = rb_op_check_keeps_shape(ctx, F, x0->shape, fn);
    if (st != RB_OK) return st;
    if (method->partitioned && !rb_op_ode_is_partitioned(F))
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: %s needs a partitioned right-hand side (y' = f(t, z), z' = g(t, y), "
                       "e.g. rb_op_ode_hamiltonian_create); F (%s) is not", fn, method->name, F->type->name);
    if (!isfinite(t0) || !isfinite(T)) return rb_fail(ctx, RB_EINVAL, "%s: t0 = %g and T = %g must be finite", fn, t0, T);
    size_t n = rb_tensor_count(x0);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x0->data[i])) return rb_fail(ctx, RB_EINVAL, "%s: x0[%zu] = %g is not finite", fn, i, x0->data[i]);
    return RB_OK;
}

static rb_status check_integrate(rb_context *ctx, const rb_ode_method *method, const rb_op *F, double t0, double T,
                                 size_t L, const rb_tensor *x0, const rb_tensor *xT, const rb_ode_options *opt)
{
    const char *fn = "rb_ode_integrate";
    rb_status st = rb_ode_check_problem(ctx, fn, method, F, t0, T, x0, xT);
    if (st != RB_OK) return st;
    if (L == 0) return rb_fail(ctx, RB_EINVAL, "%s: L = 0 layers; needs L >= 1", fn);
    double h = (T - t0) / (double)L;
    if (!(isfinite(h) && h != 0))
        return rb_fail(ctx, RB_EINVAL, "%s: step h = (T - t0) / L = %g must be finite and non-zero", fn, h);
    size_t n = rb_tensor_count(x0);
    if (method->implicit && n > RB_ODE_NEWTON_MAX)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: %s needs a dense Newton matrix; the state has %zu > %d entries", fn,
                       method->name, n, RB_ODE_NEWTON_MAX);
    if (opt != NULL && !(isfinite(opt->newton_tol) && opt->newton_tol > 0 && opt->newton_max_iter >= 1))
        return rb_fail(ctx, RB_EINVAL, "%s: newton_tol = %g must be > 0 and newton_max_iter = %d >= 1", fn,
                       opt->newton_tol, opt->newton_max_iter);
    return RB_OK;
}

static double *block(rb_context *ctx, rb_arena *a, size_t doubles)
{
    return doubles ? rb_arena_alloc(ctx, a, doubles * sizeof(double)) : NULL;
}

rb_status rb_ode_integrate(rb_context *ctx, const rb_ode_method *method, rb_op *F, double t0, double T, size_t L,
                           const rb_tensor *x0, rb_tensor *xT, const rb_ode_options *opt, rb_ode_tape *tape)
{
    rb_status st = check_integrate(ctx, method, F, t0, T, L, x0, xT, opt);
    if (st != RB_OK) return st;
    const double h = (T - t0) / (double)L;
    const rb_shape shape = x0->shape;
    const size_t n = rb_shape_count(shape), S = state_bytes(shape);
    size_t k = 1, ncheck = 0;
    if (tape != NULL) {
        k = tape->every ? tape->every : (size_t)ceil(sqrt((double)L));
        if (k > L) k = L;
        if (k == 0) k = 1;
        ncheck = L / k + 1 + (L % k != 0);
    }
    size_t bytes = (ncheck + 2 + (k - 1)) * S + rb_arena_bytes(F->nparams * sizeof(double)) +
                   rb_ode_step_workspace(method, F, shape) + 256;

    rb_arena local = {0}, *a = &local;
    if (tape != NULL) {
        rb_ode_tape_release(ctx, tape);
        a = &tape->arena;
    }
    st = rb_arena_reserve(ctx, a, bytes);
    if (st != RB_OK) return st;
    double *check = block(ctx, a, ncheck * n), *buf = block(ctx, a, 2 * n);
    double *seg = tape && k > 1 ? block(ctx, a, (k - 1) * n) : NULL;
    double *dth = tape ? block(ctx, a, F->nparams) : NULL;
    if (buf == NULL || (tape && ncheck && check == NULL)) {
        rb_arena_release(ctx, a);
        return rb_fail(ctx, RB_ENOMEM, "rb_ode_integrate: tape arena of %zu bytes exhausted", bytes);
    }

    rb_tensor cur = {shape, buf, false}, next = {shape, buf + n, false};
    memcpy(cur.data, x0->data, n * sizeof(double));
    if (tape) memcpy(check, cur.data, n * sizeof(double));
    const double t_entry = F->t;
    for (size_t j = 0; j < L && st == RB_OK; j++) {
        st = method->step(ctx, F, t0 + (double)j * h, h, &cur, &next, opt, a);
        if (st != RB_OK) break;
        if (!rb_ode_all_finite(next.data, n)) {
            st = rb_fail(ctx, RB_EDIVERGED, "rb_ode_integrate: %s step %zu of %zu (t = %g -> %g) gave a non-finite state",
                         method->name, j, L, t0 + (double)j * h, t0 + (double)(j + 1) * h);
            break;
        }
        double *swap = cur.data;
        cur.data = next.data, next.data = swap;
        if (tape && (j + 1) % k == 0) memcpy(check + (j + 1) / k * n, cur.data, n * sizeof(double));
    }
    F->t = t_entry;
    if (st != RB_OK) {
        if (tape) rb_ode_tape_release(ctx, tape);
        else rb_arena_release(ctx, a);
        return st;
    }
    if (tape) memcpy(check + (ncheck - 1) * n, cur.data, n * sizeof(double)); /* x_L */
    memcpy(xT->data, cur.data, n * sizeof(double));
    if (tape == NULL) {
        rb_arena_release(ctx, a);
        return RB_OK;
    }
    tape->stride = k, tape->method = method, tape->F = F, tape->opt = opt ? *opt : rb_ode_options_default();
    tape->t0 = t0, tape->h = h, tape->L = L, tape->shape = shape, tape->ncheck = ncheck;
    tape->check = check, tape->buf = buf, tape->seg = seg, tape->dtheta = dth;
    tape->peak_bytes = rb_arena_peak(a);
    tape->ready = 1;
    return RB_OK;
}

/* State s of the taped run inside segment [s0, e]: a checkpoint or a recomputed one. */
static double *tape_state(const rb_ode_tape *tp, size_t s0, size_t s)
{
    size_t n = rb_shape_count(tp->shape);
    if (s == tp->L) return tp->check + (tp->ncheck - 1) * n;
    if (s % tp->stride == 0) return tp->check + s / tp->stride * n;
    return tp->seg + (s - s0 - 1) * n;
}

rb_status rb_ode_backward(rb_context *ctx, rb_ode_tape *tape, rb_op *F, const rb_tensor *dLdxT, rb_tensor *dLdx0,
                          double *dLdtheta)
{
    const char *fn = "rb_ode_backward";
    if (ctx == NULL) return RB_ENULL;
    if (tape == NULL || !tape->ready) return rb_fail(ctx, RB_EINVAL, "%s: tape is NULL or was not filled by rb_ode_integrate", fn);
    if (F == NULL) return rb_fail(ctx, RB_ENULL, "%s: F is NULL", fn);
    if (F != tape->F) return rb_fail(ctx, RB_EINVAL, "%s: F is not the operator the tape was recorded with", fn);
    rb_status st = rb_tensor_check(ctx, dLdxT, "rb_ode_backward: dLdxT");
    if (st == RB_OK) st = rb_tensor_check(ctx, dLdx0, "rb_ode_backward: dLdx0");
    if (st != RB_OK) return st;
    if (!rb_shape_equal(dLdxT->shape, tape->shape) || !rb_shape_equal(dLdx0->shape, tape->shape)) {
        char a[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: dLdxT and dLdx0 must have the state's shape %s", fn,
                       rb_shape_format(tape->shape, a, sizeof a));
    }
    const rb_ode_method *method = tape->method;
    const size_t n = rb_shape_count(tape->shape), k = tape->stride, L = tape->L;
    const double h = tape->h, t0 = tape->t0;
    rb_arena *a = &tape->arena;
    rb_tensor lam = {tape->shape, tape->buf, false}, lam2 = {tape->shape, tape->buf + n, false};
    memcpy(lam.data, dLdxT->data, n * sizeof(double));
    if (F->nparams) memset(tape->dtheta, 0, F->nparams * sizeof(double));
    double *dth = dLdtheta ? tape->dtheta : NULL;
    const double t_entry = F->t;
    size_t nseg = (L + k - 1) / k;
    for (size_t c = nseg; c-- > 0 && st == RB_OK;) {
        size_t s0 = c * k, e = s0 + k < L ? s0 + k : L;
        /* recompute the states strictly inside the segment with the same steps */
        for (size_t s = s0; s + 1 < e && st == RB_OK; s++) {
            rb_tensor x = {tape->shape, tape_state(tape, s0, s), false};
            rb_tensor y = {tape->shape, tape_state(tape, s0, s + 1), false};
            st = method->step(ctx, F, t0 + (double)s * h, h, &x, &y, &tape->opt, a);
        }
        for (size_t s = e; s-- > s0 && st == RB_OK;) {
            rb_tensor x = {tape->shape, tape_state(tape, s0, s), false};
            rb_tensor y = {tape->shape, tape_state(tape, s0, s + 1), false};
            memset(lam2.data, 0, n * sizeof(double));
            st = method->step_backward(ctx, F, t0 + (double)s * h, h, &x, &y, &lam, &lam2, dth, a);
            double *swap = lam.data;
            lam.data = lam2.data, lam2.data = swap;
        }
    }
    F->t = t_entry;
    if (tape->arena.peak > tape->peak_bytes) tape->peak_bytes = tape->arena.peak;
    if (st != RB_OK) return st;
    if (!rb_ode_all_finite(lam.data, n) || (dth && !rb_ode_all_finite(dth, F->nparams)))
        return rb_fail(ctx, RB_EDIVERGED, "%s: the adjoint is not finite", fn);
    for (size_t i = 0; i < n; i++) dLdx0->data[i] += lam.data[i];
    if (dLdtheta)
        for (size_t i = 0; i < F->nparams; i++) dLdtheta[i] += dth[i];
    return RB_OK;
}
