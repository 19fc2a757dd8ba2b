/* test_ode_reference.c — the ODE oracles (CVODE Adams and BDF, the CVODES
 * adjoint, GSL rk8pd) against closed forms and against each other:
 *   y' = -y (a 1-wide conv)                      closed form e^{-(T - t0)} y0, also backwards in time
 *   y' = W y                                     exp(W T) y0 by scaling and squaring (in this file)
 *   y' = (1 + a sin t) W y                       exp(W tau) y0, tau = T - t0 + a (cos t0 - cos T)
 *   y' = tanh(W y + b)(1 + a sin t)              CVODE against rk8pd
 *   adjoint of <c, x(T)>                         exp(W^T tau) c and Van Loan's block exponential for dL/dW;
 *                                                central finite differences of CVODE for the nonlinear F
 *   bad input, F failing, stiffness, blow-up     statuses and messages; outputs untouched; no leaks
 * Every test prints what it measured (cmocka print_message). */
#include "conformance.h"
#include "testkit.h"

#include <math.h>

/* ---- a test-local dense right-hand side: F(t, x) = (1 + amp sin t) act(W x + b) ---------- */

typedef enum dense_act { DENSE_ID, DENSE_TANH, DENSE_SQUARE } dense_act;

typedef struct dense_state {
    size_t n;
    dense_act act;
    double amp;       /* time modulation */
    int bias;         /* params = W (n*n, row-major), then b (n) if bias */
    long fail_after;  /* apply fails once it has been called this many times; < 0: never */
    long vjp_fail_after;
    long calls, vjp_calls;
} dense_state;

static double act_f(dense_act a, double z) { return a == DENSE_TANH ? tanh(z) : a == DENSE_SQUARE ? z * z : z; }
static double act_df(dense_act a, double z)
{
    if (a == DENSE_TANH) {
        double th = tanh(z);
        return 1 - th * th;
    }
    return a == DENSE_SQUARE ? 2 * z : 1.0;
}

static double dense_z(const rb_op *op, const double *x, size_t i)
{
    const dense_state *s = op->state;
    double z = s->bias ? op->params[s->n * s->n + i] : 0.0;
    for (size_t j = 0; j < s->n; j++) z += op->params[i * s->n + j] * x[j];
    return z;
}

static double dense_scale(const rb_op *op) { return 1 + ((const dense_state *)op->state)->amp * sin(op->t); }

static rb_status dense_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const dense_state *s = op->state;
    if (rb_shape_count(in) != s->n)
        return rb_fail(ctx, RB_ESHAPE, "%s: input has %zu entries, needs %zu", op->type->name, rb_shape_count(in),
                       s->n);
    *out = in;
    return RB_OK;
}

static rb_status dense_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    dense_state *s = op->state;
    if (s->fail_after >= 0 && s->calls++ >= s->fail_after)
        return rb_fail(ctx, RB_EIO, "%s: deliberate failure at call %ld", op->type->name, s->calls);
    double g = dense_scale(op);
    for (size_t i = 0; i < s->n; i++) y->data[i] = g * act_f(s->act, dense_z(op, x->data, i));
    return RB_OK;
}

static rb_status dense_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    (void)work;
    dense_state *s = op->state;
    if (s->vjp_fail_after >= 0 && s->vjp_calls++ >= s->vjp_fail_after)
        return rb_fail(ctx, RB_EIO, "%s: deliberate vjp failure", op->type->name);
    double g = dense_scale(op);
    for (size_t i = 0; i < s->n; i++) {
        double d = alpha * g * act_df(s->act, dense_z(op, x->data, i)) * dy->data[i];
        for (size_t j = 0; j < s->n; j++) dx->data[j] += d * op->params[i * s->n + j];
    }
    return RB_OK;
}

static rb_status dense_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                  double alpha, double *dparams, rb_arena *work)
{
    (void)ctx, (void)work;
    const dense_state *s = op->state;
    double g = dense_scale(op);
    for (size_t i = 0; i < s->n; i++) {
        double d = alpha * g * act_df(s->act, dense_z(op, x->data, i)) * dy->data[i];
        for (size_t j = 0; j < s->n; j++) dparams[i * s->n + j] += d * x->data[j];
        if (s->bias) dparams[s->n * s->n + i] += d;
    }
    return RB_OK;
}

static void dense_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type dense_linear_type = {
    .name = "dense_linear", .flags = RB_OP_LINEAR | RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE, .shape = dense_shape,
    .apply = dense_apply, .vjp = dense_vjp, .param_grad = dense_param_grad, .destroy = dense_destroy};
static const rb_op_type dense_nonlinear_type = {
    .name = "dense_nonlinear", .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE, .shape = dense_shape,
    .apply = dense_apply, .vjp = dense_vjp, .param_grad = dense_param_grad, .destroy = dense_destroy};
static const rb_op_type dense_novjp_type = {
    .name = "dense_novjp", .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE, .shape = dense_shape,
    .apply = dense_apply, .destroy = dense_destroy};

/* W uniform in [-w, w], b in [-1, 1]. */
static rb_op *dense_create(rb_context *ctx, size_t n, dense_act act, double amp, int bias, double w, uint64_t seed)
{
    dense_state *s = rb_calloc(ctx, 1, sizeof *s);
    assert_non_null(s);
    *s = (dense_state){n, act, amp, bias, -1, -1, 0, 0};
    rb_op *op;
    RB_CHECK(ctx, rb_op_new(ctx, act == DENSE_ID ? &dense_linear_type : &dense_nonlinear_type, s,
                            n * n + (bias ? n : 0), &op));
    rb_test_rng r = {seed};
    for (size_t k = 0; k < n * n; k++) op->params[k] = rb_test_uniform(&r, -w, w);
    for (size_t k = n * n; k < op->nparams; k++) op->params[k] = rb_test_uniform(&r, -1, 1);
    return op;
}

static dense_state *dense_of(rb_op *op) { return op->state; }

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

/* y = exp(tau W) x (transpose: exp(tau W^T) x) for the dense op's W. */
static void expm_apply(const rb_op *op, double tau, int transpose, const double *x, double *y)
{
    size_t n = ((const dense_state *)op->state)->n;
    double *A = test_malloc(n * n * sizeof *A), *E = test_malloc(n * n * sizeof *E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) A[i * n + j] = tau * (transpose ? op->params[j * n + i] : op->params[i * n + j]);
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
static void vanloan_dW(const rb_op *op, double tau, const double *c, const double *x0, double *dW)
{
    size_t n = ((const dense_state *)op->state)->n, m = 2 * n;
    double *A = test_calloc(m * m, sizeof *A), *E = test_malloc(m * m * sizeof *E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double wt = tau * op->params[j * n + i];
            A[i * m + j] = wt, A[(n + i) * m + n + j] = wt;
            A[i * m + n + j] = tau * c[i] * x0[j];
        }
    expm(A, m, E);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) dW[i * n + j] = E[i * m + n + j];
    test_free(A), test_free(E);
}

/* max |a - b| / max |b| */
static double rel_diff(const double *a, const double *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), s = fmax(s, fabs(b[i]));
    return s > 0 ? d / s : d;
}

#define RTOL 1e-12
#define ATOL 1e-14

static const char *method_name(rb_ref_cvode_method m) { return m == RB_REF_CVODE_BDF ? "BDF" : "Adams"; }

/* ---- the test-local operators pass the conformance suite ------------------------------------- */

static void test_local_ops_conform(void **state)
{
    rb_context *ctx = *state;
    rb_op *lin = dense_create(ctx, 5, DENSE_ID, 0.5, 0, 0.8, 1), *nl = dense_create(ctx, 5, DENSE_TANH, 0.5, 1, 1.2, 2);
    lin->t = nl->t = 0.7;
    rb_conformance_case c = rb_conformance_default(lin, rb_shape_vec(5), "dense_linear");
    rb_conformance_run(ctx, &c);
    c = rb_conformance_default(nl, rb_shape_2d(1, 1, 1, 5), "dense_nonlinear");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, lin), rb_op_free(ctx, nl);
}

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

/* y' = (1 + a sin t) W y for a random 6x6 W on a (1,2,1,1,3) state: y(T) = exp(tau W) y0 with
 * tau = T - t0 + a (cos t0 - cos T). a = 0 is the autonomous system. */
static void test_linear_closed_form(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 6;
    const double t0 = 0.3, T = 2.3;
    rb_shape s = rb_shape_1d(1, 2, 3);
    rb_tensor x0, xT, want, autonomous;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &want, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &autonomous, s));
    rb_test_rng r = {11};
    rb_test_fill(&r, &x0, -1, 1);
    for (int k = 0; k < 2; k++) {
        double amp = k == 0 ? 0.0 : 0.5;
        rb_op *F = dense_create(ctx, n, DENSE_ID, amp, 0, 0.6, 3);
        double tau = T - t0 + amp * (cos(t0) - cos(T));
        expm_apply(F, tau, 0, x0.data, want.data);
        if (k == 0) RB_CHECK(ctx, rb_tensor_copy(ctx, &want, &autonomous));
        else assert_true(rb_tensor_max_rel_diff(&autonomous, &want) > 1e-2); /* the time dependence matters */
        F->t = 42.0;
        for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
            rb_ref_ode_stats st;
            RB_CHECK(ctx, rb_ref_cvode(ctx, F, t0, T, &x0, &xT, m, RTOL, ATOL, 0, &st));
            double err = rb_tensor_max_rel_diff(&xT, &want);
            print_message("y' = %sW y, CVODE %s: rel error %.2e (<= 1e-9), %ld steps, %ld F evals\n",
                          amp ? "(1 + sin(t)/2) " : "", method_name(m), err, st.steps, st.rhs_evals);
            if (!(err <= 1e-9)) fail_msg("CVODE %s: %.3g", method_name(m), err);
            assert_true(F->t == 42.0); /* restored */
        }
        RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, t0, T, &x0, &xT, RTOL, ATOL));
        double err = rb_tensor_max_rel_diff(&xT, &want);
        print_message("y' = %sW y, GSL rk8pd: rel error %.2e (<= 1e-9)\n", amp ? "(1 + sin(t)/2) " : "", err);
        if (!(err <= 1e-9)) fail_msg("rk8pd: %.3g", err);
        assert_true(F->t == 42.0);
        rb_op_free(ctx, F);
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &want);
    rb_tensor_release(ctx, &autonomous);
}

/* y' = tanh(W y + b)(1 + sin(t)/2): CVODE Adams and BDF against rk8pd. */
static void test_nonlinear_cvode_vs_rk8pd(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 5;
    const double t0 = 0.0, T = 3.0;
    rb_op *F = dense_create(ctx, n, DENSE_TANH, 0.5, 1, 1.5, 5);
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
        print_message("tanh(W y + b)(1 + sin(t)/2): CVODE %s vs rk8pd %.2e (<= 1e-8)\n", method_name(m), err);
        if (!(err <= 1e-8)) fail_msg("CVODE %s vs rk8pd: %.3g", method_name(m), err);
    }
    /* the state moved: agreement is not trivial */
    assert_true(rb_tensor_max_rel_diff(&x0, &gsl) > 0.1);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &gsl), rb_tensor_release(ctx, &cv);
    rb_op_free(ctx, F);
}

/* ---- the adjoint ---------------------------------------------------------------------------- */

/* Linear F = (1 + a sin t) W: dL/dx0 = exp(tau W^T) c, dL/dW by Van Loan's block exponential. */
static void test_adjoint_linear_closed_form(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    const double t0 = 0.2, T = 1.7;
    for (int k = 0; k < 2; k++) {
        double amp = k == 0 ? 0.0 : 0.5;
        rb_op *F = dense_create(ctx, n, DENSE_ID, amp, 0, 0.7, 17);
        rb_tensor x0, c, dx0;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(n)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, rb_shape_vec(n)));
        rb_test_rng r = {19};
        rb_test_fill(&r, &x0, -1, 1);
        rb_test_fill(&r, &c, -1, 1);
        double dW[16], want_x0[4], want_W[16];
        RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, t0, T, &x0, &c, &dx0, dW, 1e-10, 1e-12));
        double tau = T - t0 + amp * (cos(t0) - cos(T));
        expm_apply(F, tau, 1, c.data, want_x0);
        vanloan_dW(F, tau, c.data, x0.data, want_W);
        double ex = rel_diff(dx0.data, want_x0, n), ew = rel_diff(dW, want_W, n * n);
        print_message("CVODES adjoint, x' = %sW x: dL/dx0 vs exp(W^T tau) c %.2e, dL/dW vs Van Loan %.2e (<= 1e-7)\n",
                      amp ? "(1 + sin(t)/2) " : "", ex, ew);
        if (!(ex <= 1e-7 && ew <= 1e-7)) fail_msg("adjoint: dx0 %.3g, dW %.3g", ex, ew);
        rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &dx0);
        rb_op_free(ctx, F);
    }
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
    rb_op *F = dense_create(ctx, n, DENSE_TANH, 0.5, 1, 1.0, 23);
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
    double ex = rel_diff(dx0.data, fd, n), et = rel_diff(dth, fd + n, np);
    print_message("CVODES adjoint, tanh(W x + b)(1 + sin(t)/2): dL/dx0 %.2e, dL/dtheta (%zu) %.2e vs central "
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

static int untouched(const rb_tensor *t, double v)
{
    for (size_t i = 0; i < rb_tensor_count(t); i++)
        if (t->data[i] != v) return 0;
    return 1;
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3;
    rb_op *F = dense_create(ctx, n, DENSE_TANH, 0, 1, 1, 31);
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
    RB_EXPECT(ctx, RB_ESHAPE, "needs 3", rb_ref_odeiv2(ctx, F, 0, 1, &x4, &x4, RTOL, ATOL));
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
    assert_true(untouched(&xT, 7.0));
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
    dense_state *s = rb_calloc(ctx, 1, sizeof *s);
    *s = (dense_state){n, DENSE_ID, 0, 0, -1, -1, 0, 0};
    RB_CHECK(ctx, rb_op_new(ctx, &dense_novjp_type, s, n * n, &novjp));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "no vjp", rb_ref_cvodes_adjoint(ctx, novjp, 0, 1, &x0, &x0, &xT, NULL, RTOL, ATOL));
    rb_op_free(ctx, novjp);
    /* T == t0 copies without evaluating F */
    dense_of(F)->fail_after = 0;
    for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
        rb_tensor_fill(ctx, &xT, 7.0);
        RB_CHECK(ctx, rb_ref_cvode(ctx, F, 2, 2, &x0, &xT, m, RTOL, ATOL, 0, NULL));
        assert_true(untouched(&xT, 0.5));
    }
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, 2, 2, &x0, &xT, RTOL, ATOL));
    assert_true(untouched(&xT, 0.5));
    assert_int_equal(dense_of(F)->calls, 0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &x4);
    rb_op_free(ctx, F);
}

/* ---- failures inside the solve ---------------------------------------------------------------- */

/* F's own status comes back with F's message; xT untouched; F->t restored. */
static void test_rhs_failure_propagates(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3;
    rb_op *F = dense_create(ctx, n, DENSE_TANH, 0.5, 1, 1, 37);
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_tensor_fill(ctx, &x0, 0.5);
    F->t = -3.0;
    const long after[] = {0, 1, 25};
    for (int k = 0; k < 3; k++) {
        for (int m = 0; m < RB_REF_CVODE_METHOD_COUNT; m++) {
            dense_of(F)->fail_after = after[k], dense_of(F)->calls = 0;
            rb_tensor_fill(ctx, &xT, 7.0);
            RB_EXPECT(ctx, RB_EIO, "deliberate failure", rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, m, RTOL, ATOL, 0, NULL));
            assert_non_null(strstr(rb_context_message(ctx), "F (dense_nonlinear) apply failed"));
            assert_true(untouched(&xT, 7.0) && F->t == -3.0);
        }
        dense_of(F)->fail_after = after[k], dense_of(F)->calls = 0;
        RB_EXPECT(ctx, RB_EIO, "deliberate failure", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, RTOL, ATOL));
        assert_true(untouched(&xT, 7.0) && F->t == -3.0);
        dense_of(F)->fail_after = after[k], dense_of(F)->calls = 0;
        RB_EXPECT(ctx, RB_EIO, "deliberate failure",
                  rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, NULL, RTOL, ATOL));
        assert_true(untouched(&xT, 7.0) && F->t == -3.0);
    }
    print_message("F failing at call 0, 1, 25: its RB_EIO comes back (\"%s\")\n", rb_context_message(ctx));
    /* a failing vjp in the backward sweep */
    dense_of(F)->fail_after = -1;
    dense_of(F)->vjp_fail_after = 3;
    double dth[12];
    RB_EXPECT(ctx, RB_EIO, "vjp failed", rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &xT, dth, RTOL, ATOL));
    assert_true(untouched(&xT, 7.0) && F->t == -3.0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
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
    assert_true(untouched(&xT, 7.0));
    rb_ref_ode_stats st;
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, RB_REF_CVODE_BDF, 1e-8, 1e-10, 2000, &st));
    print_message("stiff, BDF: |x(1)| = %.1e (e^-1e6 = 0), %ld steps\n", fmax(fabs(xT.data[0]), fabs(xT.data[1])),
                  st.steps);
    assert_true(fabs(xT.data[0]) <= 1e-9 && st.steps < 2000);
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_EMAXITER, "GSL_EMAXITER", rb_ref_odeiv2(ctx, F, 0, 1, &x0, &xT, 1e-8, 1e-10));
    assert_true(untouched(&xT, 7.0));
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* y' = y^2, y(0) = 1 blows up at t = 1: neither oracle presents a result for T = 2. */
static void test_blow_up(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = dense_create(ctx, 1, DENSE_SQUARE, 0, 0, 0, 1);
    F->params[0] = 1.0;
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
    rb_op *F = dense_create(ctx, 3, DENSE_TANH, 0, 1, 1, 41);
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
    rb_op *F = dense_create(ctx, 3, DENSE_TANH, 0.5, 1, 1, 43);
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(3)));
    rb_tensor_fill(ctx, &x0, 0.5);
    double dth[12];
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
        cmocka_unit_test_setup_teardown(test_local_ops_conform, rb_test_setup, rb_test_teardown),
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
