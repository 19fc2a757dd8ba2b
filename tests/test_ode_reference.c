/* test_ode_reference.c — the ODE oracles (CVODE Adams and BDF, the CVODES
 * adjoint, GSL rk8pd) against closed forms and against each other:
 *   y' = -y (a 1-wide conv)                      closed form e^{-(T - t0)} y0, also backwards in time
 *   y' = W y                                     exp(W T) y0 by scaling and squaring (in this file)
 *   y' = g(t) W y, g a Chebyshev series          exp(W tau) y0, tau = int g dt in closed form
 *   y' = tanh(g(t) (W y + b))                    CVODE against rk8pd
 * The right-hand sides are the library's (rb_op_ode_linear, rb_op_ode_neural_smooth, callbacks).
 *   adjoint of <c, x(T)>                         exp(W^T tau) c and Van Loan's block exponential for dL/dW;
 *                                                central finite differences of CVODE for the nonlinear F
 *   bad input, F failing, stiffness, blow-up     statuses and messages; outputs untouched; no leaks
 * Every test prints what it measured (cmocka print_message). */
#include "conformance.h"
#include "ode_checks.h"
#include "testkit.h"

#include <math.h>

/* ---- right-hand sides: the library's ------------------------------------------------------------
 *
 * Time-dependent F come from rb_op_ode_neural_smooth_create with every term a multiple of one
 * (W, b): F(t, x) = act(g(t) (W x + b)) with g(t) = sum_k g_k T_k(u), u = 2 t / 3 - 1 (the
 * Chebyshev basis over [0, 3]; g_const: constant). With act = identity and b = 0 this is x' = g(t) W x, whose
 * solution is exp(tau W) x0 with tau = int g dt. */

#define SPAN 3.0 /* the basis interval [0, SPAN] */

static rb_op *smooth_create(rb_context *ctx, size_t n, rb_activation act, const double g[3], int bias, double w,
                            uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_neural_smooth_create(ctx, n, act, 3, 0.0, SPAN, NULL, &F));
    rb_test_rng r = {seed};
    double *W = F->params; /* set 0 holds (W, b); set k holds g_k (W, b) */
    for (size_t q = 0; q < n * n; q++) W[q] = rb_test_uniform(&r, -w, w);
    for (size_t q = 0; q < n; q++) W[n * n + q] = bias ? rb_test_uniform(&r, -1, 1) : 0.0;
    for (size_t k = 3; k-- > 0;) /* set 0 last: the others read it */
        for (size_t q = 0; q < n * n + n; q++) F->params[k * (n * n + n) + q] = g[k] * W[q];
    return F;
}

/* tau = int_{t0}^{T} g(t) dt for g = sum_k g_k T_k(2 t / SPAN - 1): antiderivatives in u of
 * T_0 = 1, T_1 = u, T_2 = 2 u^2 - 1 are u, u^2 / 2, 2 u^3 / 3 - u; dt = SPAN / 2 du. */
static double tau_of(const double g[3], double t0, double T)
{
    double G[2];
    for (int e = 0; e < 2; e++) {
        double u = 2 * (e ? T : t0) / SPAN - 1;
        G[e] = g[0] * u + g[1] * u * u / 2 + g[2] * (2 * u * u * u / 3 - u);
    }
    return SPAN / 2 * (G[1] - G[0]);
}

static const double g_const[3] = {1, 0, 0}, g_varying[3] = {1, 0.3, 0.25};

/* A callback wrapping a library op that counts its calls and fails on demand (f returns 5, the vjp 6). */
typedef struct wrapped {
    rb_context *ctx;
    rb_op *inner;
    rb_shape shape;
    rb_arena work;
    long fail_after, vjp_fail_after; /* fail once called this many times; < 0: never */
    long calls, vjp_calls;
} wrapped;

static int wrapped_f(double t, const double *x, const double *params, void *user, double *fx)
{
    (void)params;
    wrapped *w = user;
    if (w->fail_after >= 0 && w->calls >= w->fail_after) return 5;
    w->calls++;
    rb_tensor xv, yv;
    w->inner->t = t;
    if (rb_tensor_view(w->ctx, &xv, (double *)x, w->shape) != RB_OK || rb_tensor_view(w->ctx, &yv, fx, w->shape) != RB_OK)
        return 1;
    return rb_op_apply(w->ctx, w->inner, &xv, &yv, &w->work) == RB_OK ? 0 : 2;
}

static int wrapped_vjp(double t, const double *x, const double *params, const double *v, void *user, double *out)
{
    (void)params;
    wrapped *w = user;
    if (w->vjp_fail_after >= 0 && w->vjp_calls >= w->vjp_fail_after) return 6;
    w->vjp_calls++;
    rb_tensor xv, vv, ov;
    w->inner->t = t;
    if (rb_tensor_view(w->ctx, &xv, (double *)x, w->shape) != RB_OK ||
        rb_tensor_view(w->ctx, &vv, (double *)v, w->shape) != RB_OK || rb_tensor_view(w->ctx, &ov, out, w->shape) != RB_OK)
        return 1;
    memset(out, 0, rb_shape_count(w->shape) * sizeof *out);
    return rb_op_vjp(w->ctx, w->inner, &xv, &vv, 1.0, &ov, &w->work) == RB_OK ? 0 : 2;
}

/* The callback op over `inner` (owned by w; release with wrapped_release). */
static rb_op *wrapped_create(rb_context *ctx, wrapped *w, rb_op *inner, rb_shape shape)
{
    *w = (wrapped){ctx, inner, shape, {0}, -1, -1, 0, 0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &w->work, rb_op_workspace(inner, shape)));
    rb_ode_callbacks cb = {.f = wrapped_f, .vjp = wrapped_vjp, .user = w};
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_callback_create(ctx, rb_shape_count(shape), &cb, 0, NULL, 0, &F));
    return F;
}

static void wrapped_release(rb_context *ctx, wrapped *w, rb_op *F)
{
    rb_op_free(ctx, F), rb_op_free(ctx, w->inner);
    rb_arena_release(ctx, &w->work);
}

/* y' = y^2 (blows up at t = 1 from y(0) = 1) */
static int square_f(double t, const double *x, const double *p, void *user, double *fx)
{
    (void)t, (void)p, (void)user;
    fx[0] = x[0] * x[0];
    return 0;
}

static int square_vjp(double t, const double *x, const double *p, const double *v, void *user, double *out)
{
    (void)t, (void)p, (void)user;
    out[0] = 2 * x[0] * v[0];
    return 0;
}

/* An operator without a vjp (F(x) = -x), for the adjoint's refusal. */
static rb_status novjp_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)ctx, (void)op, (void)work;
    for (size_t i = 0; i < rb_tensor_count(x); i++) y->data[i] = -x->data[i];
    return RB_OK;
}
static const rb_op_type novjp_type = {.name = "no_vjp", .flags = RB_OP_SAME_SHAPE, .apply = novjp_apply};

/* ---- closed forms -------------------------------------------------------------------------- */

/* C = A B, all m x m row-major (C distinct from A and B). */
static void matmul(const double *A, const double *B, double *C, size_t m)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) {
            double s = 0;
            for (size_t k = 0; k < m; k++) s += A[i * m + k] * B[k * m + j];
            C[i * m + j] = s;
        }
}

/* E = exp(A) for an m x m matrix: scale by 2^-s until the row-sum norm is <= 1/2,
 * Taylor series to 24 terms (remainder < 1e-30), square s times. */
static void expm(const double *A, size_t m, double *E)
{
    double norm = 0;
    for (size_t i = 0; i < m; i++) {
        double row = 0;
        for (size_t j = 0; j < m; j++) row += fabs(A[i * m + j]);
        norm = fmax(norm, row);
    }
    int s = 0;
    while (norm > 0.5) norm /= 2, s++;
    double *B = test_malloc(m * m * sizeof *B), *term = test_malloc(m * m * sizeof *term);
    double *tmp = test_malloc(m * m * sizeof *tmp);
    for (size_t k = 0; k < m * m; k++) B[k] = ldexp(A[k], -s);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) E[i * m + j] = term[i * m + j] = i == j;
    for (int k = 1; k <= 24; k++) {
        matmul(term, B, tmp, m);
        for (size_t q = 0; q < m * m; q++) term[q] = tmp[q] / k, E[q] += term[q];
    }
    for (int k = 0; k < s; k++) {
        matmul(E, E, tmp, m);
        memcpy(E, tmp, m * m * sizeof *E);
    }
    test_free(B), test_free(term), test_free(tmp);
}

/* y = exp(tau W) x (transpose: exp(tau W^T) x) for an n x n W. */
static void expm_apply(const double *W, size_t n, double tau, int transpose, const double *x, double *y)
{
    double *A = test_malloc(n * n * sizeof *A), *E = test_malloc(n * n * sizeof *E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) A[i * n + j] = tau * (transpose ? W[j * n + i] : W[i * n + j]);
    expm(A, n, E);
    for (size_t i = 0; i < n; i++) {
        y[i] = 0;
        for (size_t j = 0; j < n; j++) y[i] += E[i * n + j] * x[j];
    }
    test_free(A), test_free(E);
}

/* dL/dW for L = <c, x(T)>, x' = s(t) W x: in tau = ∫ s dt the system is autonomous and
 * dL/dW = ∫_0^tau exp(W^T (tau - u)) c x0^T exp(W^T u) du, the upper-right block of
 * exp(tau [[W^T, c x0^T], [0, W^T]]) (Van Loan 1978). */
static void vanloan_dW(const double *W, size_t n, double tau, const double *c, const double *x0, double *dW)
{
    size_t m = 2 * n;
    double *A = test_calloc(m * m, sizeof *A), *E = test_malloc(m * m * sizeof *E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double wt = tau * W[j * n + i];
            A[i * m + j] = wt, A[(n + i) * m + n + j] = wt;
            A[i * m + n + j] = tau * c[i] * x0[j];
        }
    expm(A, m, E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) dW[i * n + j] = E[i * m + n + j];
    test_free(A), test_free(E);
}


#define RTOL 1e-12
#define ATOL 1e-14

static const char *method_name(rb_ref_cvode_method m) { return m == RB_REF_CVODE_BDF ? "BDF" : "Adams"; }

/* ---- forward oracles against closed forms --------------------------------------------------- */

/* y' = -y by a 1-wide conv with weight -1 on a batch of two 1D grids: y(T) = e^{-(T - t0)} y0,
 * forwards (t0 = 0.25 -> 2.25) and backwards in time (1 -> -1). */
static void test_decay_closed_form(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(1, 1, 1);
    d.ksize = 1;
    double w = -1.0;
    rb_op *F;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, &w, &F));
    rb_shape s = rb_shape_1d(2, 1, 7);
    rb_tensor x0, xT, want;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &want, s));
    rb_test_rng r = {7};
    rb_test_fill(&r, &x0, -2, 2);
    const double spans[2][2] = {{0.25, 2.25}, {1.0, -1.0}};
    for (int k = 0; k < 2; k++) {
        double t0 = spans[k][0], T = spans[k][1];
        for (size_t i = 0; i < rb_tensor_count(&x0); i++) want.data[i] = x0.data[i] * exp(-(T - t0));
        for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
            rb_ref_ode_stats st;
            RB_CHECK(ctx, rb_ref_cvode(ctx, F, t0, T, &x0, &xT, m, RTOL, ATOL, 0, &st));
            double err = rb_tensor_max_rel_diff(&xT, &want);
            print_message("y' = -y, t %g -> %g, CVODE %s: rel error %.2e (<= 1e-9), %ld steps, %ld F evals\n", t0, T,
                          method_name(m), err, st.steps, st.rhs_evals);
            if (!(err <= 1e-9)) fail_msg("CVODE %s: %.3g", method_name(m), err);
            assert_true(st.steps > 10 && st.rhs_evals >= st.steps);
            assert_true(m == RB_REF_CVODE_BDF ? st.jac_evals > 0 : st.jac_evals == 0);
        }
        RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, t0, T, &x0, &xT, RTOL, ATOL));
        double err = rb_tensor_max_rel_diff(&xT, &want);
        print_message("y' = -y, t %g -> %g, GSL rk8pd: rel error %.2e (<= 1e-9)\n", t0, T, err);
        if (!(err <= 1e-9)) fail_msg("rk8pd: %.3g", err);
    }
    /* in place: xT may be x0 */
    RB_CHECK(ctx, rb_tensor_copy(ctx, &x0, &xT));
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0, 1, &xT, &xT, RB_REF_CVODE_ADAMS, RTOL, ATOL, 0, NULL));
    for (size_t i = 0; i < rb_tensor_count(&x0); i++) want.data[i] = x0.data[i] * exp(-1.0);
    assert_true(rb_tensor_max_rel_diff(&xT, &want) <= 1e-9);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &want);
    rb_op_free(ctx, F);
}

/* y' = W y (rb_op_ode_linear) and y' = g(t) W y (rb_op_ode_neural_smooth, identity, b = 0) for a
 * random 6x6 W: y(T) = exp(tau W) y0 with tau = T - t0, and tau = int g dt. */
static void test_linear_closed_form(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 6;
    const double t0 = 0.3, T = 2.3;
    rb_shape s = rb_shape_vec(n);
    rb_tensor x0, xT, want, autonomous;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &want, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &autonomous, s));
    rb_test_rng r = {11};
    rb_test_fill(&r, &x0, -1, 1);
    rb_op *Fg = smooth_create(ctx, n, RB_ACT_IDENTITY, g_varying, 0, 0.6, 3), *Fw;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, Fg->params, &Fw)); /* W = set 0 of Fg */
    for (int k = 0; k < 2; k++) {
        int amp = k; /* time-dependent */
        rb_op *F = k ? Fg : Fw;
        double tau = tau_of(k ? g_varying : g_const, t0, T);
        expm_apply(Fg->params, n, tau, 0, x0.data, want.data);
        if (k == 0) RB_CHECK(ctx, rb_tensor_copy(ctx, &want, &autonomous));
        else assert_true(rb_tensor_max_rel_diff(&autonomous, &want) > 1e-2); /* the time dependence matters */
        F->t = 42.0;
        for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
            rb_ref_ode_stats st;
            RB_CHECK(ctx, rb_ref_cvode(ctx, F, t0, T, &x0, &xT, m, RTOL, ATOL, 0, &st));
            double err = rb_tensor_max_rel_diff(&xT, &want);
            print_message("y' = %sW y, CVODE %s: rel error %.2e (<= 1e-9), %ld steps, %ld F evals\n",
                          amp ? "g(t) " : "", method_name(m), err, st.steps, st.rhs_evals);
            if (!(err <= 1e-9)) fail_msg("CVODE %s: %.3g", method_name(m), err);
            assert_true(F->t == 42.0); /* restored */
        }
        RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, t0, T, &x0, &xT, RTOL, ATOL));
        double err = rb_tensor_max_rel_diff(&xT, &want);
        print_message("y' = %sW y, GSL rk8pd: rel error %.2e (<= 1e-9)\n", amp ? "g(t) " : "", err);
        if (!(err <= 1e-9)) fail_msg("rk8pd: %.3g", err);
        assert_true(F->t == 42.0);
    }
    rb_op_free(ctx, Fg), rb_op_free(ctx, Fw);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &want);
    rb_tensor_release(ctx, &autonomous);
}

/* y' = tanh(g(t) (W y + b)): CVODE Adams and BDF against rk8pd. */
static void test_nonlinear_cvode_vs_rk8pd(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 5;
    const double t0 = 0.0, T = 3.0;
    rb_op *F = smooth_create(ctx, n, RB_ACT_TANH, g_varying, 1, 1.5, 5);
    rb_tensor x0, gsl, cv;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &gsl, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &cv, rb_shape_vec(n)));
    rb_test_rng r = {13};
    rb_test_fill(&r, &x0, -1, 1);
    RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, t0, T, &x0, &gsl, RTOL, ATOL));
    for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
        RB_CHECK(ctx, rb_ref_cvode(ctx, F, t0, T, &x0, &cv, m, RTOL, ATOL, 0, NULL));
        double err = rb_tensor_max_rel_diff(&cv, &gsl);
        print_message("tanh(g(t) (W y + b)): CVODE %s vs rk8pd %.2e (<= 1e-8)\n", method_name(m), err);
        if (!(err <= 1e-8)) fail_msg("CVODE %s vs rk8pd: %.3g", method_name(m), err);
    }
    /* the state moved: agreement is not trivial */
    assert_true(rb_tensor_max_rel_diff(&x0, &gsl) > 0.1);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &gsl), rb_tensor_release(ctx, &cv);
    rb_op_free(ctx, F);
}

/* ---- the adjoint ---------------------------------------------------------------------------- */

/* Linear F = W (rb_op_ode_linear) and F = g(t) W (smooth weights, W_k = g_k W): dL/dx0 = exp(tau W^T) c,
 * dL/dW by Van Loan's block exponential; for the smooth op dL/dW = sum_k g_k dL/dW_k. */
static void test_adjoint_linear_closed_form(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    const double t0 = 0.2, T = 1.7;
    rb_op *Fg = smooth_create(ctx, n, RB_ACT_IDENTITY, g_varying, 0, 0.7, 17), *Fw;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, Fg->params, &Fw));
    for (int k = 0; k < 2; k++) {
        int amp = k;
        rb_op *F = k ? Fg : Fw;
        rb_tensor x0, c, dx0;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(n)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, rb_shape_vec(n)));
        rb_test_rng r = {19};
        rb_test_fill(&r, &x0, -1, 1);
        rb_test_fill(&r, &c, -1, 1);
        double dth[3 * 20], dW[16], want_x0[4], want_W[16];
        RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, t0, T, &x0, &c, &dx0, dth, 1e-10, 1e-12));
        for (size_t q = 0; q < n * n; q++) /* W enters set k as g_k W */
            dW[q] = k ? g_varying[0] * dth[q] + g_varying[1] * dth[20 + q] + g_varying[2] * dth[40 + q] : dth[q];
        double tau = tau_of(k ? g_varying : g_const, t0, T);
        expm_apply(Fg->params, n, tau, 1, c.data, want_x0);
        vanloan_dW(Fg->params, n, tau, c.data, x0.data, want_W);
        double ex = rb_test_rel_diff(dx0.data, want_x0, n), ew = rb_test_rel_diff(dW, want_W, n * n);
        print_message("CVODES adjoint, x' = %sW x: dL/dx0 vs exp(W^T tau) c %.2e, dL/dW vs Van Loan %.2e (<= 1e-7)\n",
                      amp ? "g(t) " : "", ex, ew);
        if (!(ex <= 1e-7 && ew <= 1e-7)) fail_msg("adjoint: dx0 %.3g, dW %.3g", ex, ew);
        rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &dx0);
    }
    rb_op_free(ctx, Fg), rb_op_free(ctx, Fw);
}

/* L = <c, x(T)> through CVODE */
static double loss_cvode(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0, const rb_tensor *c,
                         rb_tensor *xT)
{
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, t0, T, x0, xT, RB_REF_CVODE_ADAMS, 1e-13, 1e-15, 0, NULL));
    return rb_tensor_dot(c, xT);
}

/* Nonlinear non-autonomous F: the adjoint's dL/dx0 and dL/dθ (W and b) against central
 * differences of the forward CVODE solve. */
static void test_adjoint_vs_finite_differences(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    const double t0 = 0.1, T = 1.6, eps = 1e-5;
    rb_op *F = smooth_create(ctx, n, RB_ACT_TANH, g_varying, 1, 1.0, 23);
    size_t np = F->nparams;
    rb_tensor x0, c, dx0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_test_rng r = {29};
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    double *dth = test_malloc(np * sizeof *dth), *fd = test_malloc((n + np) * sizeof *fd);
    RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, t0, T, &x0, &c, &dx0, dth, 1e-10, 1e-12));
    for (size_t i = 0; i < n + np; i++) {
        double *v = i < n ? &x0.data[i] : &F->params[i - n], keep = *v;
        *v = keep + eps;
        double lp = loss_cvode(ctx, F, t0, T, &x0, &c, &xT);
        *v = keep - eps;
        double lm = loss_cvode(ctx, F, t0, T, &x0, &c, &xT);
        *v = keep;
        fd[i] = (lp - lm) / (2 * eps);
    }
    double ex = rb_test_rel_diff(dx0.data, fd, n), et = rb_test_rel_diff(dth, fd + n, np);
    print_message("CVODES adjoint, tanh(g(t) (W x + b)): dL/dx0 %.2e, dL/dtheta (%zu) %.2e vs central "
                  "differences (<= 1e-6)\n", ex, np, et);
    if (!(ex <= 1e-6 && et <= 1e-6)) fail_msg("adjoint vs FD: dx0 %.3g, dtheta %.3g", ex, et);
    /* dLdtheta = NULL: dL/dx0 alone, the same */
    rb_tensor dx0b;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0b, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, t0, T, &x0, &c, &dx0b, NULL, 1e-10, 1e-12));
    assert_true(rb_tensor_max_rel_diff(&dx0b, &dx0) <= 1e-8);
    /* T == t0: λ(t0) = c, no parameter gradient */
    RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, t0, t0, &x0, &c, &dx0b, dth, 1e-10, 1e-12));
    assert_true(rb_tensor_max_rel_diff(&dx0b, &c) == 0 && dth[0] == 0 && dth[np - 1] == 0);
    test_free(dth), test_free(fd);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &dx0);
    rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &dx0b);
    rb_op_free(ctx, F);
}

/* ---- bad input -------------------------------------------------------------------------------- */


static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3;
    wrapped w; /* tanh(W x + b), counting its calls */
    rb_op *F = wrapped_create(ctx, &w, smooth_create(ctx, n, RB_ACT_TANH, g_const, 1, 1.0, 31), rb_shape_vec(n));
    rb_tensor x0, xT, x4;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x4, rb_shape_vec(n + 1)));
    rb_tensor_fill(ctx, &x0, 0.5);
    rb_tensor_fill(ctx, &xT, 7.0);
    const rb_ref_cvode_method A = RB_REF_CVODE_ADAMS;
    /* NULL pointers */
    assert_int_equal(rb_ref_cvode(NULL, F, 0, 1, &x0, &xT, A, RTOL, ATOL, 0, NULL), RB_ENULL);
    RB_EXPECT(ctx, RB_ENULL, "F is NULL", rb_ref_cvode(ctx, NULL, 0, 1, &x0, &xT, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_ENULL, "x0", rb_ref_cvode(ctx, F, 0, 1, NULL, &xT, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_ENULL, "output", rb_ref_cvode(ctx, F, 0, 1, &x0, NULL, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_ENULL, "F is NULL", rb_ref_odeiv2(ctx, NULL, 0, 1, &x0, &xT, RTOL, ATOL));
    RB_EXPECT(ctx, RB_ENULL, "output", rb_ref_odeiv2(ctx, F, 0, 1, &x0, NULL, RTOL, ATOL));
    RB_EXPECT(ctx, RB_ENULL, "dLdxT", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, NULL, &xT, NULL, RTOL, ATOL));
    RB_EXPECT(ctx, RB_ENULL, "output", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, NULL, NULL, RTOL, ATOL));
    /* shapes: x0 vs xT, x0 vs F, and an F that changes the shape */
    RB_EXPECT(ctx, RB_ESHAPE, "shape", rb_ref_cvode(ctx, F, 0, 1, &x0, &x4, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "the callbacks take 3", rb_ref_odeiv2(ctx, F, 0, 1, &x4, &x4, RTOL, ATOL));
    rb_conv_desc d = rb_conv_desc_default(1, 1, 2);
    d.ksize = 1;
    double w2[2] = {1, -1};
    rb_op *widen;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w2, &widen));
    RB_EXPECT(ctx, RB_ESHAPE, "keep the shape", rb_ref_cvode(ctx, widen, 0, 1, &x0, &xT, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "keep the shape", rb_ref_odeiv2(ctx, widen, 0, 1, &x0, &xT, RTOL, ATOL));
    RB_EXPECT(ctx, RB_ESHAPE, "keep the shape",
              rb_ref_cvodes_adjoint(ctx, widen, 0, 1, &x0, &x0, &xT, NULL, RTOL, ATOL));
    rb_op_free(ctx, widen);
    /* tolerances, times, method, x0 */
    const double bad_tol[] = {0.0, -1e-8, NAN, INFINITY};
    for (int k = 0; k < 4; k++) {
        RB_EXPECT(ctx, RB_EINVAL, "rtol", rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, A, bad_tol[k], ATOL, 0, NULL));
        RB_EXPECT(ctx, RB_EINVAL, "atol", rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, A, RTOL, bad_tol[k], 0, NULL));
        RB_EXPECT(ctx, RB_EINVAL, "rtol", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, bad_tol[k], ATOL));
        RB_EXPECT(ctx, RB_EINVAL, "atol", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, NULL, RTOL, bad_tol[k]));
    }
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_ref_cvode(ctx, F, NAN, 1, &x0, &xT, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_ref_odeiv2(ctx, F, 0, INFINITY, &x0, &xT, RTOL, ATOL));
    RB_EXPECT(ctx, RB_EINVAL, "method",
              rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, (rb_ref_cvode_method)7, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "T >= t0", rb_ref_cvodes_adjoint(ctx, F, 1, 0, &x0, &x0, &xT, NULL, RTOL, ATOL));
    x0.data[1] = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "x0[1]", rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, A, RTOL, ATOL, 0, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "x0[1]", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, RTOL, ATOL));
    RB_EXPECT(ctx, RB_EINVAL, "dLdxT[1]", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &xT, &x0, &xT, NULL, RTOL, ATOL));
    x0.data[1] = 0.5;
    assert_true(rb_test_untouched(&xT, 7.0));
    /* BDF's dense matrix has a size limit */
    rb_conv_desc d1 = rb_conv_desc_default(1, 1, 1);
    d1.ksize = 1;
    double w1 = -1.0;
    rb_op *big;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d1, &w1, &big));
    rb_tensor xb;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xb, rb_shape_vec(RB_REF_CVODE_DENSE_MAX + 1)));
    RB_EXPECT(ctx, RB_EINVAL, "RB_REF_CVODE_ADAMS",
              rb_ref_cvode(ctx, big, 0, 1, &xb, &xb, RB_REF_CVODE_BDF, RTOL, ATOL, 0, NULL));
    rb_tensor_release(ctx, &xb);
    rb_op_free(ctx, big);
    /* the adjoint needs a vjp */
    rb_op *novjp;
    RB_CHECK(ctx, rb_op_new(ctx, &novjp_type, NULL, 0, &novjp));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "no vjp", rb_ref_cvodes_adjoint(ctx, novjp, 0, 1, &x0, &x0, &xT, NULL, RTOL, ATOL));
    rb_op_free(ctx, novjp);
    /* T == t0 copies without evaluating F */
    w.fail_after = 0;
    for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
        rb_tensor_fill(ctx, &xT, 7.0);
        RB_CHECK(ctx, rb_ref_cvode(ctx, F, 2, 2, &x0, &xT, m, RTOL, ATOL, 0, NULL));
        assert_true(rb_test_untouched(&xT, 0.5));
    }
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, 2, 2, &x0, &xT, RTOL, ATOL));
    assert_true(rb_test_untouched(&xT, 0.5));
    assert_int_equal(w.calls, 0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &x4);
    wrapped_release(ctx, &w, F);
}

/* ---- failures inside the solve ---------------------------------------------------------------- */

/* F's own status comes back with F's message; xT untouched; F->t restored. */
static void test_rhs_failure_propagates(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3;
    wrapped w; /* tanh(g(t) (W x + b)) through a callback that fails on demand */
    rb_op *F = wrapped_create(ctx, &w, smooth_create(ctx, n, RB_ACT_TANH, g_varying, 1, 1.0, 37), rb_shape_vec(n));
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_tensor_fill(ctx, &x0, 0.5);
    F->t = -3.0;
    const long after[] = {0, 1, 25};
    for (int k = 0; k < 3; k++) {
        for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
            w.fail_after = after[k], w.calls = 0;
            rb_tensor_fill(ctx, &xT, 7.0);
            RB_EXPECT(ctx, RB_ECALLBACK, "the f callback returned 5", rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, m, RTOL, ATOL, 0, NULL));
            assert_non_null(strstr(rb_context_message(ctx), "F (ode_callback) apply failed"));
            assert_true(rb_test_untouched(&xT, 7.0) && F->t == -3.0);
        }
        w.fail_after = after[k], w.calls = 0;
        RB_EXPECT(ctx, RB_ECALLBACK, "the f callback returned 5", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, RTOL, ATOL));
        assert_true(rb_test_untouched(&xT, 7.0) && F->t == -3.0);
        w.fail_after = after[k], w.calls = 0;
        RB_EXPECT(ctx, RB_ECALLBACK, "the f callback returned 5",
                  rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, NULL, RTOL, ATOL));
        assert_true(rb_test_untouched(&xT, 7.0) && F->t == -3.0);
    }
    print_message("F failing at call 0, 1, 25: its RB_ECALLBACK comes back (\"%s\")\n", rb_context_message(ctx));
    /* a failing vjp in the backward sweep */
    w.fail_after = -1;
    w.vjp_fail_after = 3;
    double dth[1];
    RB_EXPECT(ctx, RB_ECALLBACK, "vjp failed", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, dth, RTOL, ATOL));
    assert_true(rb_test_untouched(&xT, 7.0) && F->t == -3.0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    assert_non_null(strstr(rb_context_message(ctx), "the vjp callback returned 6"));
    wrapped_release(ctx, &w, F);
}

/* y' = -1e6 y: Adams (stability-limited steps) runs out of a small step budget
 * (CV_TOO_MUCH_WORK); BDF solves it in few steps; rk8pd exceeds its step limit. */
static void test_stiff_problem(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(1, 1, 1);
    d.ksize = 1;
    double w = -1e6;
    rb_op *F;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, &w, &F));
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(2)));
    rb_tensor_fill(ctx, &x0, 1.0);
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_ESUNDIALS, "CV_TOO_MUCH_WORK",
              rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, RB_REF_CVODE_ADAMS, 1e-8, 1e-10, 200, NULL));
    print_message("stiff, Adams, 200 steps: \"%s\"\n", rb_context_message(ctx));
    assert_true(rb_test_untouched(&xT, 7.0));
    rb_ref_ode_stats st;
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, RB_REF_CVODE_BDF, 1e-8, 1e-10, 2000, &st));
    print_message("stiff, BDF: |x(1)| = %.1e (e^-1e6 = 0), %ld steps\n", fmax(fabs(xT.data[0]), fabs(xT.data[1])),
                  st.steps);
    assert_true(fabs(xT.data[0]) <= 1e-9 && st.steps < 2000);
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_EMAXITER, "GSL_EMAXITER", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, 1e-8, 1e-10));
    assert_true(rb_test_untouched(&xT, 7.0));
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* y' = y^2, y(0) = 1 blows up at t = 1: neither oracle presents a result for T = 2. */
static void test_blow_up(void **state)
{
    rb_context *ctx = *state;
    rb_ode_callbacks cb = {.f = square_f, .vjp = square_vjp};
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_callback_create(ctx, 1, &cb, 0, NULL, 0, &F));
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(1)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(1)));
    x0.data[0] = 1.0, xT.data[0] = 7.0;
    for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
        rb_status st = rb_ref_cvode(ctx, F, 0, 2, &x0, &xT, m, 1e-10, 1e-12, 0, NULL);
        print_message("y' = y^2 past t = 1, CVODE %s: %s \"%s\"\n", method_name(m), rb_status_name(st),
                      rb_context_message(ctx));
        assert_true(st == RB_ESUNDIALS || st == RB_EDIVERGED);
        assert_true(xT.data[0] == 7.0);
    }
    rb_status st = rb_ref_odeiv2(ctx, F, 0, 2, &x0, &xT, 1e-10, 1e-12);
    print_message("y' = y^2 past t = 1, rk8pd: %s \"%s\"\n", rb_status_name(st), rb_context_message(ctx));
    assert_true(st == RB_EDIVERGED || st == RB_EMAXITER);
    assert_true(xT.data[0] == 7.0);
    /* and up to t = 0.9 both are right: y = 1 / (1 - t) */
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0, 0.9, &x0, &xT, RB_REF_CVODE_BDF, RTOL, ATOL, 0, NULL));
    assert_true(fabs(xT.data[0] - 10.0) <= 1e-8 * 10);
    RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, 0, 0.9, &x0, &xT, RTOL, ATOL));
    assert_true(fabs(xT.data[0] - 10.0) <= 1e-8 * 10);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* Tolerances below double precision: CV_TOO_MUCH_ACC with its meaning. */
static void test_too_much_accuracy(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = smooth_create(ctx, 3, RB_ACT_TANH, g_const, 1, 1.0, 41);
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(3)));
    rb_tensor_fill(ctx, &x0, 1.0);
    RB_EXPECT(ctx, RB_ESUNDIALS, "CV_TOO_MUCH_ACC",
              rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, RB_REF_CVODE_BDF, 1e-30, 1e-30, 0, NULL));
    print_message("rtol = 1e-30: \"%s\"\n", rb_context_message(ctx));
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* Every allocation failing in turn: RB_OK or RB_ENOMEM, and no block left behind. */
static void test_allocation_failures(void **state)
{
    (void)state;
    rb_failing_alloc fa = {-1, 0};
    rb_allocator a = rb_failing_allocator(&fa);
    rb_context *ctx;
    assert_int_equal(rb_context_create(&ctx, &a), RB_OK);
    rb_op *F = smooth_create(ctx, 3, RB_ACT_TANH, g_varying, 1, 1.0, 43);
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(3)));
    rb_tensor_fill(ctx, &x0, 0.5);
    double dth[3 * 12];
    long live = fa.live;
    int failures = 0;
    for (long budget = 0; budget < 4; budget++)
        for (int which = 0; which < 4; which++) {
            fa.budget = budget;
            rb_status st = which < 2 ? rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, which, 1e-8, 1e-10, 0, NULL)
                         : which == 2 ? rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, 1e-8, 1e-10)
                                      : rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, dth, 1e-8, 1e-10);
            fa.budget = -1;
            assert_true(st == RB_OK || st == RB_ENOMEM);
            failures += st == RB_ENOMEM;
            assert_int_equal(fa.live, live);
        }
    assert_true(failures > 0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
    rb_context_free(ctx);
    assert_int_equal(fa.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_decay_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_linear_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_nonlinear_cvode_vs_rk8pd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_adjoint_linear_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_adjoint_vs_finite_differences, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_rhs_failure_propagates, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_stiff_problem, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_blow_up, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_too_much_accuracy, rb_test_setup, rb_test_teardown),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests_name("ode_reference", tests, NULL, NULL);
}
