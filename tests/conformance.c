/* conformance.c — the shared rb_op conformance suite (see conformance.h). */
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define FULL_FD_LIMIT 400 /* up to this many components: check each; beyond: random directions */
#define FD_DIRECTIONS 12

rb_conformance_case rb_conformance_default(rb_op *op, rb_shape in, const char *label)
{
    rb_conformance_case c = {label, op, in, 1e-6, -1.0, 1.0, 0.0, 12345};
    return c;
}

typedef struct suite {
    rb_context *ctx;
    const rb_conformance_case *c;
    rb_shape out;
    rb_arena work;
    rb_test_rng rng;
} suite;

static void fill_input(suite *s, rb_tensor *t)
{
    rb_test_fill(&s->rng, t, s->c->lo, s->c->hi);
    if (s->c->kink_gap > 0)
        for (size_t i = 0; i < rb_tensor_count(t); i++)
            if (fabs(t->data[i]) < s->c->kink_gap) t->data[i] = t->data[i] < 0 ? -s->c->kink_gap : s->c->kink_gap;
}

/* <dy, F(x)> */
static double loss(suite *s, const rb_tensor *x, const rb_tensor *dy, rb_tensor *y)
{
    RB_CHECK(s->ctx, rb_op_apply(s->ctx, s->c->op, x, y, &s->work));
    return rb_tensor_dot(dy, y);
}

/* Relative error of an analytic gradient g (len n) against finite differences fd. */
static double rel_err(const double *g, const double *fd, size_t n)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs(g[i] - fd[i]));
        scale = fmax(scale, fmax(fabs(g[i]), fabs(fd[i])));
    }
    return scale > 0 ? diff / scale : diff;
}

static void check_shapes(suite *s, const rb_tensor *x)
{
    rb_context *ctx = s->ctx;
    /* a wrong output shape is refused and the output left untouched */
    rb_shape bad = s->out;
    bad.w += 1;
    rb_tensor y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, bad));
    rb_tensor_fill(ctx, &y, 7.0);
    rb_status st = rb_op_apply(ctx, s->c->op, x, &y, &s->work);
    if (st != RB_ESHAPE) fail_msg("%s: wrong output shape gave %s, not RB_ESHAPE", s->c->label, rb_status_name(st));
    for (size_t i = 0; i < rb_tensor_count(&y); i++)
        if (y.data[i] != 7.0) fail_msg("%s: output changed although the call was refused", s->c->label);
    rb_tensor_release(ctx, &y);
    st = rb_op_apply(ctx, s->c->op, NULL, &y, &s->work);
    if (st != RB_ENULL) fail_msg("%s: NULL x gave %s", s->c->label, rb_status_name(st));
}

static void check_vjp(suite *s, const rb_tensor *x0)
{
    rb_context *ctx = s->ctx;
    const double alpha = 0.7;
    rb_tensor x, y, dy, dx, dx0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, s->c->in));
    rb_test_fill(&s->rng, &dy, -1, 1);
    rb_test_fill(&s->rng, &dx0, -1, 1);
    rb_tensor_copy(ctx, &dx0, &dx);
    RB_CHECK(ctx, rb_op_vjp(ctx, s->c->op, x0, &dy, alpha, &dx, &s->work));
    size_t n = rb_tensor_count(x0);
    size_t ndir = n <= FULL_FD_LIMIT ? n : FD_DIRECTIONS;
    double *g = test_malloc(ndir * sizeof *g), *fd = test_malloc(ndir * sizeof *fd);
    rb_tensor v;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &v, s->c->in));
    for (size_t k = 0; k < ndir; k++) {
        if (ndir == n) {
            rb_tensor_fill(ctx, &v, 0.0);
            v.data[k] = 1.0;
        } else {
            rb_test_fill(&s->rng, &v, -1, 1);
        }
        /* analytic: <v, (dx - dx0) / alpha> */
        double a = 0;
        for (size_t i = 0; i < n; i++) a += v.data[i] * (dx.data[i] - dx0.data[i]) / alpha;
        double eps = 1e-5;
        rb_tensor_copy(ctx, x0, &x);
        rb_tensor_axpy(ctx, eps, &v, &x);
        double fp = loss(s, &x, &dy, &y);
        rb_tensor_copy(ctx, x0, &x);
        rb_tensor_axpy(ctx, -eps, &v, &x);
        double fm = loss(s, &x, &dy, &y);
        g[k] = a;
        fd[k] = (fp - fm) / (2 * eps);
    }
    double err = rel_err(g, fd, ndir);
    if (!(err <= s->c->tol))
        fail_msg("%s: vjp vs central finite differences: relative error %.3g > %.1g", s->c->label, err, s->c->tol);
    test_free(g), test_free(fd);
    rb_tensor_release(ctx, &v);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &dx0);
}

static void check_params(suite *s, const rb_tensor *x0)
{
    rb_context *ctx = s->ctx;
    rb_op *op = s->c->op;
    size_t np = op->nparams;
    if (np == 0) return;
    const double alpha = 1.3;
    rb_tensor y, dy;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, s->out));
    rb_test_fill(&s->rng, &dy, -1, 1);
    double *d0 = test_malloc(np * sizeof *d0), *d = test_malloc(np * sizeof *d), *saved = test_malloc(np * sizeof *saved);
    for (size_t i = 0; i < np; i++) d0[i] = d[i] = rb_test_uniform(&s->rng, -1, 1);
    memcpy(saved, op->params, np * sizeof *saved);
    RB_CHECK(ctx, rb_op_param_grad(ctx, op, x0, &dy, alpha, d, &s->work));
    size_t ndir = np <= FULL_FD_LIMIT ? np : FD_DIRECTIONS;
    double *g = test_malloc(ndir * sizeof *g), *fd = test_malloc(ndir * sizeof *fd), *v = test_malloc(np * sizeof *v);
    for (size_t k = 0; k < ndir; k++) {
        for (size_t i = 0; i < np; i++) v[i] = ndir == np ? (i == k) : rb_test_uniform(&s->rng, -1, 1);
        double a = 0;
        for (size_t i = 0; i < np; i++) a += v[i] * (d[i] - d0[i]) / alpha;
        double eps = 1e-5, f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t i = 0; i < np; i++) op->params[i] = saved[i] + (sgn ? -eps : eps) * v[i];
            f[sgn] = loss(s, x0, &dy, &y);
        }
        memcpy(op->params, saved, np * sizeof *saved);
        g[k] = a;
        fd[k] = (f[0] - f[1]) / (2 * eps);
    }
    double err = rel_err(g, fd, ndir);
    if (!(err <= s->c->tol))
        fail_msg("%s: param_grad vs central finite differences: relative error %.3g > %.1g", s->c->label, err,
                 s->c->tol);
    test_free(g), test_free(fd), test_free(v), test_free(d0), test_free(d), test_free(saved);
    rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
}

static void check_linearity(suite *s, const rb_tensor *x0)
{
    if (!(s->c->op->type->flags & RB_OP_LINEAR)) return;
    rb_context *ctx = s->ctx;
    rb_tensor z, comb, fx, fz, fc, w, jw;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &z, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &comb, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &jw, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &fx, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &fz, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &fc, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &w, s->out));
    rb_test_fill(&s->rng, &z, -1, 1);
    rb_test_fill(&s->rng, &w, -1, 1);
    const double a = 0.37, b = -1.9;
    rb_tensor_axpy(ctx, a, x0, &comb);
    rb_tensor_axpy(ctx, b, &z, &comb);
    RB_CHECK(ctx, rb_op_apply(ctx, s->c->op, x0, &fx, &s->work));
    RB_CHECK(ctx, rb_op_apply(ctx, s->c->op, &z, &fz, &s->work));
    RB_CHECK(ctx, rb_op_apply(ctx, s->c->op, &comb, &fc, &s->work));
    rb_tensor_axpy(ctx, -a, &fx, &fc);
    rb_tensor_axpy(ctx, -b, &fz, &fc);
    double scale = fabs(a) * rb_tensor_norm2(&fx) + fabs(b) * rb_tensor_norm2(&fz);
    double err = rb_tensor_norm2(&fc) / (scale > 0 ? scale : 1);
    if (!(err <= 1e-12)) fail_msg("%s: declared linear but F(ax+bz) - aF(x) - bF(z) = %.3g relative", s->c->label, err);
    /* adjoint identity <F(x), w> = <x, J^T w> */
    RB_CHECK(ctx, rb_op_vjp(ctx, s->c->op, x0, &w, 1.0, &jw, &s->work));
    double lhs = rb_tensor_dot(&fx, &w), rhs = rb_tensor_dot(x0, &jw);
    double sc = rb_tensor_norm2(&fx) * rb_tensor_norm2(&w) + rb_tensor_norm2(x0) * rb_tensor_norm2(&jw);
    if (!(fabs(lhs - rhs) <= 1e-12 * (sc > 0 ? sc : 1)))
        fail_msg("%s: adjoint identity <F x, w> = %.17g vs <x, J^T w> = %.17g", s->c->label, lhs, rhs);
    rb_tensor_release(ctx, &z), rb_tensor_release(ctx, &comb), rb_tensor_release(ctx, &jw);
    rb_tensor_release(ctx, &fx), rb_tensor_release(ctx, &fz), rb_tensor_release(ctx, &fc), rb_tensor_release(ctx, &w);
}

static void check_residual(suite *s, const rb_tensor *x0)
{
    if (!rb_shape_equal(s->out, s->c->in)) return;
    rb_context *ctx = s->ctx;
    const double h = 0.3;
    rb_tensor yg, yf, yi;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yi, s->c->in));
    RB_CHECK(ctx, rb_residual_step_generic(ctx, s->c->op, h, x0, &yg, &s->work));
    RB_CHECK(ctx, rb_residual_step(ctx, s->c->op, h, x0, &yf, &s->work));
    rb_tensor_copy(ctx, x0, &yi);
    RB_CHECK(ctx, rb_residual_step(ctx, s->c->op, h, &yi, &yi, &s->work));
    double e1 = rb_tensor_max_rel_diff(&yf, &yg), e2 = rb_tensor_max_rel_diff(&yi, &yg);
    if (!(e1 <= 1e-13 && e2 <= 1e-13))
        fail_msg("%s: residual step fused/in-place vs generic differ: %.3g / %.3g", s->c->label, e1, e2);
    rb_tensor_release(ctx, &yg), rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &yi);
}

/* The taped passes: forward with a tape equals apply bit for bit; backward from
 * the tape, backward without one (recomputing) and, where the type has one, the
 * backward pass that overwrites dx, equal vjp + param_grad. */
static void check_taped(suite *s, const rb_tensor *x0)
{
    rb_context *ctx = s->ctx;
    const rb_op *op = s->c->op;
    size_t tb = rb_op_tape_bytes(op, s->c->in), np = op->nparams;
    void *tape = tb ? rb_malloc(ctx, tb) : NULL;
    rb_tensor y, yt, dy, dx_ref, dx, dx2;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yt, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, s->out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx_ref, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, s->c->in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx2, s->c->in));
    rb_test_fill(&s->rng, &dy, -1, 1);
    double *gp = rb_calloc(ctx, 3 * np + 3, sizeof(double)), *gp_ref = gp + np + 1, *gp2 = gp_ref + np + 1;
    RB_CHECK(ctx, rb_op_apply(ctx, op, x0, &y, &s->work));
    RB_CHECK(ctx, rb_op_forward(ctx, op, x0, &yt, tape, &s->work));
    if (memcmp(y.data, yt.data, rb_tensor_count(&y) * sizeof(double)) != 0)
        fail_msg("%s: taped forward differs from apply", s->c->label);
    RB_CHECK(ctx, rb_op_vjp(ctx, op, x0, &dy, 0.7, &dx_ref, &s->work));
    if (np) RB_CHECK(ctx, rb_op_param_grad(ctx, op, x0, &dy, 0.7, gp_ref, &s->work));
    RB_CHECK(ctx, rb_op_backward(ctx, op, x0, &yt, tape, &dy, 0.7, &dx, np ? gp : NULL, &s->work));
    RB_CHECK(ctx, rb_op_backward(ctx, op, x0, NULL, NULL, &dy, 0.7, &dx2, np ? gp2 : NULL, &s->work));
    double e1 = rb_tensor_max_rel_diff(&dx, &dx_ref), e2 = rb_tensor_max_rel_diff(&dx2, &dx_ref);
    double e3 = np ? rel_err(gp, gp_ref, np) : 0, e4 = np ? rel_err(gp2, gp_ref, np) : 0;
    if (!(e1 <= 1e-13 && e2 <= 1e-13 && e3 <= 1e-13 && e4 <= 1e-13))
        fail_msg("%s: taped / recomputing backward vs vjp+param_grad differ: dx %.3g / %.3g, dtheta %.3g / %.3g",
                 s->c->label, e1, e2, e3, e4);
    if (op->type->backward_overwrite != NULL) { /* overwrites dx (NaN before: never read), dtheta accumulates */
        for (size_t i = 0; i < rb_tensor_count(&dx2); i++) dx2.data[i] = NAN;
        memset(gp2, 0, np * sizeof(double));
        RB_CHECK(ctx, op->type->backward_overwrite(ctx, op, x0, &yt, tb ? tape : NULL, &dy, 0.7, &dx2, np ? gp2 : NULL,
                                                   &s->work));
        double e5 = rb_tensor_max_rel_diff(&dx2, &dx_ref), e6 = np ? rel_err(gp2, gp_ref, np) : 0;
        if (!(e5 <= 1e-13 && e6 <= 1e-13))
            fail_msg("%s: overwriting backward vs vjp+param_grad differ: dx %.3g, dtheta %.3g", s->c->label, e5, e6);
    }
    rb_free(ctx, gp);
    rb_free(ctx, tape);
    rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &yt), rb_tensor_release(ctx, &dy);
    rb_tensor_release(ctx, &dx_ref), rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &dx2);
}

void rb_conformance_run(rb_context *ctx, const rb_conformance_case *c)
{
    suite s = {ctx, c, {0}, {0}, {c->seed}};
    RB_CHECK(ctx, rb_op_shape(ctx, c->op, c->in, &s.out));
    size_t ws = rb_residual_workspace(c->op, c->in) + rb_op_backward_workspace(c->op, c->in) + 4096;
    RB_CHECK(ctx, rb_arena_reserve(ctx, &s.work, ws));
    rb_tensor x0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, c->in));
    fill_input(&s, &x0);
    check_shapes(&s, &x0);
    check_vjp(&s, &x0);
    check_params(&s, &x0);
    check_linearity(&s, &x0);
    check_residual(&s, &x0);
    check_taped(&s, &x0);
    rb_tensor_release(ctx, &x0);
    rb_arena_release(ctx, &s.work);
}

double rb_conformance_compare(rb_context *ctx, const rb_op *fused, const rb_op *unfused, const rb_tensor *x,
                              const rb_tensor *dy, double tol_y, double tol_grad)
{
    const rb_op *op[2] = {fused, unfused};
    const size_t np = fused->nparams;
    assert_int_equal(np, unfused->nparams);
    rb_tensor y[2], dx[2];
    double *dp = rb_calloc(ctx, 2 * np + 2, sizeof(double)), *dpk[2] = {dp, dp + np + 1};
    for (int k = 0; k < 2; k++) {
        rb_shape out;
        RB_CHECK(ctx, rb_op_shape(ctx, op[k], x->shape, &out));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y[k], out));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx[k], x->shape));
        rb_arena work = {0};
        size_t tb = rb_op_tape_bytes(op[k], x->shape);
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_arena_bytes(tb) + rb_op_backward_workspace(op[k], x->shape)));
        void *tape = tb ? rb_arena_alloc(ctx, &work, tb) : NULL;
        RB_CHECK(ctx, rb_op_forward(ctx, op[k], x, &y[k], tape, &work));
        RB_CHECK(ctx, rb_op_backward(ctx, op[k], x, &y[k], tape, dy, 0.7, &dx[k], np ? dpk[k] : NULL, &work));
        rb_arena_release(ctx, &work);
    }
    double ey = rb_tensor_max_rel_diff(&y[0], &y[1]), ex = rb_tensor_max_rel_diff(&dx[0], &dx[1]);
    double ep = np ? rel_err(dpk[0], dpk[1], np) : 0;
    bool same_y = tol_y > 0 ? ey <= tol_y : memcmp(y[0].data, y[1].data, rb_tensor_count(&y[0]) * sizeof(double)) == 0;
    if (!(same_y && ex <= tol_grad && ep <= tol_grad))
        fail_msg("%s vs %s: y %.3g, dx %.3g, dtheta %.3g", fused->type->name, unfused->type->name, ey, ex, ep);
    size_t zeros = 0, n = rb_tensor_count(&y[1]);
    for (size_t i = 0; i < n; i++) zeros += y[1].data[i] == 0.0;
    for (int k = 0; k < 2; k++) rb_tensor_release(ctx, &y[k]), rb_tensor_release(ctx, &dx[k]);
    rb_free(ctx, dp);
    return (double)zeros / (double)n;
}
