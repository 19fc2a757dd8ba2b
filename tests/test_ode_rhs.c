/* test_ode_rhs.c — the right-hand sides beyond the dense ones (ode.h), each test naming its oracle:
 *   user callbacks            rb_op_ode_linear (to rounding through the explicit methods); the
 *                             conformance suite (finite differences); CVODE orders; central
 *                             differences of the integration; analytic products vs finite-difference mode
 *   weights smooth in t       cos(k acos u) (Chebyshev's definition); the conformance suite; CVODE
 *                             orders; central differences; one term = constant weights (bit-identical)
 *   convolutional F           the conformance suite; -K^T K assembled from a plain conv op (and its
 *                             eigenvalues <= 0, dsyev); CVODE orders on a 2-channel 6x6 grid; central
 *                             differences
 *   bad input                 statuses and messages; outputs untouched
 * Every test prints what it measured (cmocka print_message). */
#include "conformance.h"
#include "ode_checks.h"
#include "testkit.h"

#include <math.h>


/* ---- callbacks: F = W x (params W), written like a user would ------------------------------- */

typedef struct lin_user { size_t n; } lin_user;

static int lin_f(double t, const double *x, const double *W, void *user, double *fx)
{
    (void)t;
    size_t n = ((lin_user *)user)->n;
    for (size_t i = 0; i < n; i++) {
        double acc = 0.0;
        for (size_t j = 0; j < n; j++) acc += W[i * n + j] * x[j];
        fx[i] = acc;
    }
    return 0;
}

static int lin_vjp(double t, const double *x, const double *W, const double *w, void *user, double *out)
{
    (void)t, (void)x;
    size_t n = ((lin_user *)user)->n;
    for (size_t j = 0; j < n; j++) {
        out[j] = 0;
        for (size_t i = 0; i < n; i++) out[j] += W[i * n + j] * w[i];
    }
    return 0;
}

static int lin_param_vjp(double t, const double *x, const double *W, const double *w, void *user, double *out)
{
    (void)t, (void)W;
    size_t n = ((lin_user *)user)->n;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) out[i * n + j] = w[i] * x[j];
    return 0;
}

/* ---- callbacks: Lotka-Volterra pairs with a time factor ---------------------------------------
 * (x, y)' = g(t) (a x - b x y, c x y - d y), g(t) = 1 + sin(t)/2, params (a, b, c, d). */

typedef struct lv_user {
    long fail_after; /* f returns 7 once it has been called this many times; < 0: never */
    long calls;
} lv_user;

static double lv_g(double t) { return 1 + 0.5 * sin(t); }

static int lv_f(double t, const double *x, const double *p, void *user, double *fx)
{
    lv_user *u = user;
    if (u->fail_after >= 0 && u->calls++ >= u->fail_after) return 7;
    double g = lv_g(t);
    fx[0] = g * (p[0] * x[0] - p[1] * x[0] * x[1]);
    fx[1] = g * (p[2] * x[0] * x[1] - p[3] * x[1]);
    return 0;
}

static int lv_jvp(double t, const double *x, const double *p, const double *v, void *user, double *out)
{
    (void)user;
    double g = lv_g(t);
    out[0] = g * ((p[0] - p[1] * x[1]) * v[0] - p[1] * x[0] * v[1]);
    out[1] = g * (p[2] * x[1] * v[0] + (p[2] * x[0] - p[3]) * v[1]);
    return 0;
}

static int lv_vjp(double t, const double *x, const double *p, const double *w, void *user, double *out)
{
    (void)user;
    double g = lv_g(t);
    out[0] = g * ((p[0] - p[1] * x[1]) * w[0] + p[2] * x[1] * w[1]);
    out[1] = g * (-p[1] * x[0] * w[0] + (p[2] * x[0] - p[3]) * w[1]);
    return 0;
}

static int lv_param_vjp(double t, const double *x, const double *p, const double *w, void *user, double *out)
{
    (void)p, (void)user;
    double g = lv_g(t);
    out[0] = g * x[0] * w[0];
    out[1] = -g * x[0] * x[1] * w[0];
    out[2] = g * x[0] * x[1] * w[1];
    out[3] = -g * x[1] * w[1];
    return 0;
}

static const double lv_params[4] = {1.0, 0.5, 0.6, 0.8};

typedef enum lv_mode { LV_ANALYTIC, LV_JVP_FD, LV_FD, LV_NONE, LV_STATE_ONLY } lv_mode;

static rb_op *make_lv(rb_context *ctx, lv_mode mode, lv_user *u)
{
    rb_ode_callbacks cb = {.f = lv_f, .user = u};
    if (mode == LV_ANALYTIC) cb.vjp = lv_vjp, cb.param_vjp = lv_param_vjp;
    if (mode == LV_JVP_FD) cb.jvp = lv_jvp;
    if (mode == LV_STATE_ONLY) cb.vjp = lv_vjp;
    unsigned flags = mode == LV_JVP_FD || mode == LV_FD ? RB_ODE_CALLBACK_FD : 0;
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_callback_create(ctx, 2, &cb, 4, lv_params, flags, &F));
    return F;
}

static rb_tensor lv_x0(rb_context *ctx)
{
    rb_tensor x0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(2)));
    x0.data[0] = 1.0, x0.data[1] = 0.6;
    return x0;
}

/* ---- callback = library: W x through the explicit methods, to rounding (the library sums W x with
 * BLAS, the callback in a plain loop) ------------------------------------------------------------ */

static void test_callback_is_ode_linear(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 5;
    double W[25];
    rb_test_rng r = {1};
    for (size_t k = 0; k < n * n; k++) W[k] = rb_test_uniform(&r, -1, 1) - (k % (n + 1) == 0 ? 0.5 : 0.0);
    lin_user u = {n};
    rb_ode_callbacks cb = {.f = lin_f, .vjp = lin_vjp, .param_vjp = lin_param_vjp, .user = &u};
    rb_op *Fc, *Fl;
    RB_CHECK(ctx, rb_op_ode_callback_create(ctx, n, &cb, n * n, W, RB_ODE_CALLBACK_LINEAR, &Fc));
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, W, &Fl));
    rb_conformance_case c = rb_conformance_default(Fc, rb_shape_vec(n), "ode_callback W x (linear)");
    rb_conformance_run(ctx, &c);
    rb_tensor x0, yc, yl, dc, dl, w;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yl, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dc, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dl, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &w, rb_shape_vec(n)));
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &w, -1, 1);
    const rb_ode_method *explicit_methods[] = {rb_ode_euler, rb_ode_heun, rb_ode_rk4};
    double ey = 0;
    for (int m = 0; m < 3; m++) {
        RB_CHECK(ctx, rb_ode_integrate(ctx, explicit_methods[m], Fc, 0.0, 1.0, 16, &x0, &yc, NULL, NULL));
        RB_CHECK(ctx, rb_ode_integrate(ctx, explicit_methods[m], Fl, 0.0, 1.0, 16, &x0, &yl, NULL, NULL));
        ey = fmax(ey, rb_tensor_max_rel_diff(&yc, &yl));
        assert_true(rb_tensor_max_rel_diff(&yc, &yl) <= 1e-14);
        assert_true(rb_tensor_max_rel_diff(&yc, &x0) > 0.1); /* the state moved */
    }
    /* and the gradients agree to rounding (the products sum in another order) */
    double thc[25] = {0}, thl[25] = {0};
    rb_ode_tape tc, tl;
    rb_ode_tape_init(&tc, 0), rb_ode_tape_init(&tl, 0);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, Fc, 0.0, 1.0, 16, &x0, &yc, NULL, &tc));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, Fl, 0.0, 1.0, 16, &x0, &yl, NULL, &tl));
    rb_tensor_fill(ctx, &dc, 0.0), rb_tensor_fill(ctx, &dl, 0.0);
    RB_CHECK(ctx, rb_ode_backward(ctx, &tc, Fc, &w, &dc, thc));
    RB_CHECK(ctx, rb_ode_backward(ctx, &tl, Fl, &w, &dl, thl));
    double ex = rb_tensor_max_rel_diff(&dc, &dl), et = rb_test_rel_diff(thc, thl, n * n);
    print_message("callback W x = rb_op_ode_linear: euler, heun, rk4 (16 steps) differ by %.1e (<= 1e-14); rk4 "
                  "gradients differ by %.1e (x0), %.1e (W) (<= 1e-13)\n", ey, ex, et);
    assert_true(ex <= 1e-13 && et <= 1e-13);
    rb_ode_tape_release(ctx, &tc), rb_ode_tape_release(ctx, &tl);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &yc), rb_tensor_release(ctx, &yl);
    rb_tensor_release(ctx, &dc), rb_tensor_release(ctx, &dl), rb_tensor_release(ctx, &w);
    rb_op_free(ctx, Fc), rb_op_free(ctx, Fl);
}

/* ---- callback: conformance and the gradient sources ------------------------------------------------ */

static void test_callback_conform(void **state)
{
    rb_context *ctx = *state;
    const lv_mode modes[3] = {LV_ANALYTIC, LV_JVP_FD, LV_FD};
    const rb_ode_grad want_state[3] = {RB_ODE_GRAD_VJP, RB_ODE_GRAD_JVP, RB_ODE_GRAD_FD};
    const rb_ode_grad want_params[3] = {RB_ODE_GRAD_VJP, RB_ODE_GRAD_FD, RB_ODE_GRAD_FD};
    for (int m = 0; m < 3; m++) {
        lv_user u = {-1, 0};
        rb_op *F = make_lv(ctx, modes[m], &u);
        rb_ode_grad gs, gp;
        RB_CHECK(ctx, rb_op_ode_callback_gradients(ctx, F, &gs, &gp));
        assert_int_equal(gs, want_state[m]);
        assert_int_equal(gp, want_params[m]);
        print_message("Lotka-Volterra callback, mode %d: state gradient by %s, parameter gradient by %s\n", m,
                      rb_ode_grad_name(gs), rb_ode_grad_name(gp));
        F->t = 0.7;
        rb_conformance_case c = rb_conformance_default(F, rb_shape_vec(2), "ode_callback Lotka-Volterra");
        c.lo = 0.2, c.hi = 1.5;
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, F);
    }
}

/* ---- callback: orders against CVODE, backprop against central differences, FD mode vs analytic ---- */

static void test_callback_orders_and_gradients(void **state)
{
    rb_context *ctx = *state;
    lv_user u = {-1, 0};
    rb_op *F = make_lv(ctx, LV_ANALYTIC, &u);
    rb_tensor x0 = lv_x0(ctx), c, dA, dB;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dA, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dB, rb_shape_vec(2)));
    c.data[0] = 0.8, c.data[1] = -0.6;
    rb_test_ode_orders(ctx, F, "callback LV", &x0, 1.0);
    rb_test_ode_backprop_vs_fd(ctx, F, "callback LV", &x0, &c, 10, 1e-5);
    /* the finite-difference and jvp modes against the analytic products, through each method's backprop */
    for (int mode = 0; mode < 2; mode++) {
        rb_op *G = make_lv(ctx, mode == 0 ? LV_FD : LV_JVP_FD, &u);
        double worst = 0;
        for (size_t m = 0; rb_ode_methods[m] != NULL; m++) {
            if (!rb_test_ode_applicable(rb_ode_methods[m], F)) continue;
            double tA[4] = {0}, tB[4] = {0};
            rb_tensor_fill(ctx, &dA, 0.0), rb_tensor_fill(ctx, &dB, 0.0);
            rb_op *ops[2] = {F, G};
            rb_tensor *dx[2] = {&dA, &dB};
            double *dt[2] = {tA, tB};
            for (int k = 0; k < 2; k++) {
                rb_ode_tape tape;
                rb_ode_tape_init(&tape, 0);
                RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_methods[m], ops[k], 0.0, 1.0, 20, &x0, dx[k], NULL, &tape));
                rb_tensor_fill(ctx, dx[k], 0.0);
                RB_CHECK(ctx, rb_ode_backward(ctx, &tape, ops[k], &c, dx[k], dt[k]));
                rb_ode_tape_release(ctx, &tape);
            }
            worst = fmax(worst, fmax(rb_tensor_max_rel_diff(&dB, &dA), rb_test_rel_diff(tB, tA, 4)));
        }
        print_message("callback LV, %s: backprop gradients (x0 and params, every applicable method) vs analytic products %.1e "
                      "(<= 1e-8)\n", mode == 0 ? "finite differences for both" : "jvp columns + FD for params", worst);
        assert_true(worst <= 1e-8 && worst > 0); /* FD: close, but not the same numbers */
        rb_op_free(ctx, G);
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &dA), rb_tensor_release(ctx, &dB);
    rb_op_free(ctx, F);
}

/* ---- callback: refusals and failures ---------------------------------------------------------------- */

static void test_callback_refusals(void **state)
{
    rb_context *ctx = *state;
    lv_user u = {-1, 0};
    rb_tensor x0 = lv_x0(ctx), xT, dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, rb_shape_vec(2)));
    rb_arena work = {0};
    double dth[4] = {0};
    /* no vjp, no jvp, no RB_ODE_CALLBACK_FD: forward works, every gradient is refused */
    rb_op *F = make_lv(ctx, LV_NONE, &u);
    rb_ode_grad gs, gp;
    RB_CHECK(ctx, rb_op_ode_callback_gradients(ctx, F, &gs, &gp));
    assert_int_equal(gs, RB_ODE_GRAD_NONE);
    assert_int_equal(gp, RB_ODE_GRAD_NONE);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(F, x0.shape)));
    rb_tensor_fill(ctx, &dx, 3.0);
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "RB_ODE_CALLBACK_FD", rb_op_vjp(ctx, F, &x0, &x0, 1.0, &dx, &work));
    print_message("no vjp and no RB_ODE_CALLBACK_FD: \"%s\"\n", rb_context_message(ctx));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "param_vjp", rb_op_param_grad(ctx, F, &x0, &x0, 1.0, dth, &work));
    assert_true(rb_test_untouched(&dx, 3.0) && dth[0] == 0);
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, 0);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, F, 0, 1, 8, &x0, &xT, NULL, &tape));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "no vjp or jvp callback", rb_ode_backward(ctx, &tape, F, &x0, &dx, NULL));
    rb_ode_tape_release(ctx, &tape);
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "RB_ODE_CALLBACK_FD",
              rb_ode_integrate(ctx, rb_ode_beuler, F, 0, 1, 8, &x0, &xT, NULL, NULL)); /* Newton needs J */
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "RB_ODE_CALLBACK_FD",
              rb_ref_cvodes_adjoint(ctx, F, 0, 1, &x0, &x0, &dx, NULL, 1e-8, 1e-10));
    assert_true(rb_test_untouched(&dx, 3.0));
    rb_op_free(ctx, F);
    /* a state vjp but no param_vjp: dL/dx0 alone works, dL/dtheta is refused */
    F = make_lv(ctx, LV_STATE_ONLY, &u);
    RB_CHECK(ctx, rb_op_ode_callback_gradients(ctx, F, &gs, &gp));
    assert_int_equal(gs, RB_ODE_GRAD_VJP);
    assert_int_equal(gp, RB_ODE_GRAD_NONE);
    rb_ode_tape_init(&tape, 0);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_heun, F, 0, 1, 8, &x0, &xT, NULL, &tape));
    RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &x0, &dx, NULL));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "param_vjp", rb_ode_backward(ctx, &tape, F, &x0, &dx, dth));
    rb_ode_tape_release(ctx, &tape);
    rb_op_free(ctx, F);
    /* f failing at its 4th call: RB_ECALLBACK naming the callback, its value and t; outputs untouched */
    F = make_lv(ctx, LV_ANALYTIC, &u);
    rb_tensor_fill(ctx, &xT, 7.0);
    u.fail_after = 3, u.calls = 0;
    RB_EXPECT(ctx, RB_ECALLBACK, "the f callback returned 7 at t = ",
              rb_ode_integrate(ctx, rb_ode_rk4, F, 0, 1, 8, &x0, &xT, NULL, NULL));
    print_message("f returning 7: \"%s\"\n", rb_context_message(ctx));
    u.fail_after = 3, u.calls = 0;
    RB_EXPECT(ctx, RB_ECALLBACK, "returned 7",
              rb_ref_cvode(ctx, F, 0, 1, &x0, &xT, RB_REF_CVODE_BDF, 1e-8, 1e-10, 0, NULL));
    assert_true(rb_test_untouched(&xT, 7.0));
    u.fail_after = -1;
    /* create and query */
    rb_op *G;
    rb_ode_callbacks none = {0}, ok = {.f = lv_f, .user = &u};
    double bad[4] = {1, NAN, 0, 0};
    RB_EXPECT(ctx, RB_ENULL, "cb", rb_op_ode_callback_create(ctx, 2, NULL, 0, NULL, 0, &G));
    RB_EXPECT(ctx, RB_ENULL, "f is required", rb_op_ode_callback_create(ctx, 2, &none, 0, NULL, 0, &G));
    RB_EXPECT(ctx, RB_EINVAL, "n = 0", rb_op_ode_callback_create(ctx, 0, &ok, 0, NULL, 0, &G));
    RB_EXPECT(ctx, RB_EINVAL, "flags", rb_op_ode_callback_create(ctx, 2, &ok, 0, NULL, 8u, &G));
    RB_EXPECT(ctx, RB_EINVAL, "params[1]", rb_op_ode_callback_create(ctx, 2, &ok, 4, bad, 0, &G));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_ode_callback_create(ctx, 2, &ok, 0, NULL, 0, NULL));
    rb_tensor x3;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x3, rb_shape_vec(3)));
    RB_EXPECT(ctx, RB_ESHAPE, "the callbacks take 2", rb_ode_integrate(ctx, rb_ode_euler, F, 0, 1, 2, &x3, &x3, NULL, NULL));
    rb_op *lin;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, 2, NULL, &lin));
    RB_EXPECT(ctx, RB_EINVAL, "not a callback", rb_op_ode_callback_gradients(ctx, lin, &gs, &gp));
    RB_EXPECT(ctx, RB_ENULL, "op is NULL", rb_op_ode_callback_gradients(ctx, NULL, &gs, &gp));
    rb_op_free(ctx, lin), rb_op_free(ctx, F);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &x3);
}

/* ---- neural F with weights smooth in t (Chebyshev series) ------------------------------------------ */

static rb_op *make_smooth(rb_context *ctx, size_t n, rb_activation act, size_t terms, double ta, double tb, double w,
                          uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_neural_smooth_create(ctx, n, act, terms, ta, tb, NULL, &F));
    rb_test_rng r = {seed};
    for (size_t k = 0; k < terms; k++) { /* coefficients decaying like a smooth function's */
        double *p = F->params + k * (n * n + n), scale = pow(0.5, (double)k);
        for (size_t q = 0; q < n * n; q++) p[q] = scale * rb_test_uniform(&r, -w, w);
        for (size_t q = 0; q < n; q++) p[n * n + q] = scale * rb_test_uniform(&r, -0.5, 0.5);
    }
    return F;
}

static void test_neural_smooth(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3, terms = 4;
    const double ta = 0.0, tb = 1.0;
    /* the weights at t: sum_k cos(k acos u) (W_k x + b_k) with sigma = identity */
    rb_op *F = make_smooth(ctx, n, RB_ACT_IDENTITY, terms, ta, tb, 1.0, 1);
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_vec(n)));
    rb_test_rng r = {2};
    rb_test_fill(&r, &x, -1, 1);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(F, x.shape)));
    double worst = 0;
    for (double t = ta; t <= tb + 1e-12; t += 0.125) {
        F->t = t;
        RB_CHECK(ctx, rb_op_apply(ctx, F, &x, &y, &work));
        double u = 2 * (t - ta) / (tb - ta) - 1, want[3] = {0, 0, 0};
        for (size_t k = 0; k < terms; k++) {
            double Tk = cos((double)k * acos(fmin(1.0, fmax(-1.0, u))));
            const double *p = F->params + k * (n * n + n);
            for (size_t i = 0; i < n; i++) {
                double z = p[n * n + i];
                for (size_t j = 0; j < n; j++) z += p[i * n + j] * x.data[j];
                want[i] += Tk * z;
            }
        }
        worst = fmax(worst, rb_test_rel_diff(y.data, want, n));
    }
    print_message("smooth weights, 4 Chebyshev terms: F(t, x) vs sum_k cos(k acos u) (W_k x + b_k) at 9 times: %.1e "
                  "(<= 1e-14)\n", worst);
    assert_true(worst <= 1e-14);
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, F);
    /* conformance inside the interval, at its ends and beyond (extrapolated) */
    F = make_smooth(ctx, n, RB_ACT_TANH, terms, ta, tb, 1.0, 3);
    const double times[] = {0.0, 0.3, 0.95, 1.0, 1.2};
    for (int k = 0; k < 5; k++) {
        F->t = times[k];
        rb_conformance_case c = rb_conformance_default(F, rb_shape_1d(2, 1, n), "ode_neural_smooth tanh, batch");
        rb_conformance_run(ctx, &c);
    }
    /* orders against CVODE and backprop against central differences */
    rb_tensor x0, cw;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &cw, rb_shape_vec(n)));
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &cw, -1, 1);
    rb_op_free(ctx, F);
    F = make_smooth(ctx, n, RB_ACT_TANH, terms, ta, tb, 1.2, 4);
    rb_test_ode_orders(ctx, F, "smooth W(t)", &x0, 1.0);
    rb_test_ode_backprop_vs_fd(ctx, F, "smooth W(t)", &x0, &cw, 10, 1e-5);
    /* one term is constant weights: the same numbers as rb_op_ode_neural with one set */
    rb_op *S1 = make_smooth(ctx, n, RB_ACT_TANH, 1, ta, tb, 1.0, 5), *N1;
    RB_CHECK(ctx, rb_op_ode_neural_create(ctx, n, RB_ACT_TANH, 1, 1.0, S1->params, &N1));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, S1, 0, 1, 10, &x0, &x, NULL, NULL));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, N1, 0, 1, 10, &x0, &y, NULL, NULL));
    assert_memory_equal(x.data, y.data, n * sizeof(double));
    /* bad input */
    rb_op *G;
    RB_EXPECT(ctx, RB_EINVAL, "terms = 0", rb_op_ode_neural_smooth_create(ctx, n, RB_ACT_TANH, 0, 0, 1, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "terms = 33", rb_op_ode_neural_smooth_create(ctx, n, RB_ACT_TANH, 33, 0, 1, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "tb > ta", rb_op_ode_neural_smooth_create(ctx, n, RB_ACT_TANH, 2, 1, 1, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_op_ode_neural_smooth_create(ctx, n, RB_ACT_TANH, 2, 0, INFINITY, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "n = 0", rb_op_ode_neural_smooth_create(ctx, 0, RB_ACT_TANH, 2, 0, 1, NULL, &G));
    rb_op_free(ctx, S1), rb_op_free(ctx, N1), rb_op_free(ctx, F);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &cw);
}

/* ---- convolutional F on 2D multi-channel grids ------------------------------------------------------ */

static rb_op *make_conv(rb_context *ctx, size_t C, rb_activation act, rb_ode_conv_form form, double w, uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_conv_create(ctx, C, act, form, NULL, &F));
    rb_test_rng r = {seed};
    size_t nw = 9 * C * C;
    for (size_t k = 0; k < F->nparams; k++) F->params[k] = k < nw ? rb_test_uniform(&r, -w, w) : rb_test_uniform(&r, -0.3, 0.3);
    return F;
}

static void test_conv_conform(void **state)
{
    rb_context *ctx = *state;
    for (int form = 0; form < RB_ODE_CONV_FORM_COUNT; form++) {
        rb_op *F = make_conv(ctx, 2, RB_ACT_TANH, (rb_ode_conv_form)form, 0.5, 1 + (uint64_t)form);
        assert_int_equal(F->nparams, rb_ode_conv_nparams(2));
        rb_conformance_case c = rb_conformance_default(F, rb_shape_2d(2, 2, 5, 5), F->type->name);
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, F);
    }
    /* the stable form with sigma = identity and b = 0 is -K^T K, K the plain conv op on the same weights */
    const size_t C = 2, H = 4, m = C * H * H;
    rb_shape s = rb_shape_2d(1, C, H, H);
    rb_op *S = make_conv(ctx, C, RB_ACT_IDENTITY, RB_ODE_CONV_STABLE, 0.5, 3), *K;
    for (size_t k = 9 * C * C; k < S->nparams; k++) S->params[k] = 0;
    rb_conv_desc d = rb_conv_desc_default(2, C, C);
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, S->params, &K));
    double *MK = test_malloc(m * m * sizeof *MK), *MS = test_malloc(m * m * sizeof *MS), *want = test_malloc(m * m * sizeof *want);
    double *ev = test_malloc(m * sizeof *ev);
    RB_CHECK(ctx, rb_ref_assemble(ctx, K, s, MK));
    rb_tensor e, col;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &col, s));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(S, s)));
    for (size_t j = 0; j < m; j++) { /* the stable op's columns (it is linear here, though not declared so) */
        rb_tensor_fill(ctx, &e, 0.0);
        e.data[j] = 1.0;
        RB_CHECK(ctx, rb_op_apply(ctx, S, &e, &col, &work));
        for (size_t i = 0; i < m; i++) MS[i * m + j] = col.data[i];
    }
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) {
            double acc = 0;
            for (size_t k = 0; k < m; k++) acc -= MK[k * m + i] * MK[k * m + j];
            want[i * m + j] = acc;
        }
    double diff = rb_test_rel_diff(MS, want, m * m);
    RB_CHECK(ctx, rb_ref_eig_sym(ctx, MS, m, ev));
    print_message("ode_conv_stable, identity, b = 0, 2 channels 4x4: matrix vs -K^T K %.1e (<= 1e-14); eigenvalues "
                  "in [%.3g, %.3g] (dsyev; <= 0)\n", diff, ev[0], ev[m - 1]);
    assert_true(diff <= 1e-14);
    assert_true(ev[m - 1] <= 1e-12 * fabs(ev[0]) && ev[0] < -1e-3);
    test_free(MK), test_free(MS), test_free(want), test_free(ev);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &col);
    rb_op_free(ctx, S), rb_op_free(ctx, K);
}

static void test_conv_orders_and_gradients(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng r = {11};
    rb_tensor x0, x0s, c;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_2d(1, 2, 6, 6)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0s, rb_shape_2d(1, 2, 4, 4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_2d(1, 2, 4, 4)));
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &x0s, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    const char *labels[2] = {"conv 2ch 6x6", "conv stable 2ch"};
    for (int form = 0; form < RB_ODE_CONV_FORM_COUNT; form++) {
        rb_op *F = make_conv(ctx, 2, RB_ACT_TANH, (rb_ode_conv_form)form, 0.5, 12 + (uint64_t)form);
        rb_test_ode_orders(ctx, F, labels[form], &x0, 1.0);
        rb_test_ode_backprop_vs_fd(ctx, F, form ? "conv stable 4x4" : "conv 2ch 4x4", &x0s, &c, 8, 1e-5);
        rb_op_free(ctx, F);
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &x0s), rb_tensor_release(ctx, &c);
}

static void test_conv_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *F;
    RB_EXPECT(ctx, RB_EINVAL, "channels = 0", rb_op_ode_conv_create(ctx, 0, RB_ACT_TANH, RB_ODE_CONV_PLAIN, NULL, &F));
    RB_EXPECT(ctx, RB_EINVAL, "form", rb_op_ode_conv_create(ctx, 2, RB_ACT_TANH, (rb_ode_conv_form)5, NULL, &F));
    RB_EXPECT(ctx, RB_EINVAL, "sigma", rb_op_ode_conv_create(ctx, 2, (rb_activation)9, RB_ODE_CONV_PLAIN, NULL, &F));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_ode_conv_create(ctx, 2, RB_ACT_TANH, RB_ODE_CONV_PLAIN, NULL, NULL));
    F = make_conv(ctx, 2, RB_ACT_TANH, RB_ODE_CONV_STABLE, 0.5, 1);
    rb_tensor x3, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x3, rb_shape_2d(1, 3, 4, 4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_2d(1, 3, 4, 4)));
    rb_tensor_fill(ctx, &x3, 0.5), rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_ESHAPE, "needs (N,2,1,H,W)", rb_ode_integrate(ctx, rb_ode_rk4, F, 0, 1, 4, &x3, &xT, NULL, NULL));
    print_message("3-channel state into a 2-channel conv F: \"%s\"\n", rb_context_message(ctx));
    assert_true(rb_test_untouched(&xT, 7.0));
    rb_tensor_release(ctx, &x3), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_callback_is_ode_linear, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_callback_conform, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_callback_orders_and_gradients, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_callback_refusals, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_neural_smooth, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conv_conform, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conv_orders_and_gradients, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conv_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("ode_rhs", tests, NULL, NULL);
}
