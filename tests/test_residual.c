/* test_residual.c — the primitive y = x + h F(x) and its backward pass:
 * closed forms (Euler on y' = -y), finite differences for the backward pass,
 * and every bad-input rule. */
#include "conformance.h"

#include <math.h>
#include <string.h>

/* F(x) = lambda x as a 1-wide 1D stencil. */
static rb_op *scalar_op(rb_context *ctx, double lambda)
{
    rb_conv_desc d = rb_conv_desc_default(1, 1, 1);
    d.ksize = 1;
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, &lambda, &op));
    return op;
}

/* Oracle: closed forms. L Euler steps of y' = -y from 1 give (1 - h)^L, and the
 * error against exp(-T) halves when L doubles (observed order 1). */
static void test_euler_stack_closed_form(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = scalar_op(ctx, -1.0);
    double T = 1.0, err[4];
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(F, rb_shape_vec(1))));
    for (int r = 0; r < 4; r++) {
        int L = 16 << r;
        double h = T / L, v = 1.0;
        rb_tensor x;
        RB_CHECK(ctx, rb_tensor_view(ctx, &x, &v, rb_shape_vec(1)));
        for (int l = 0; l < L; l++) RB_CHECK(ctx, rb_residual_step(ctx, F, h, &x, &x, &work));
        assert_float_equal(v, pow(1 - h, L), 1e-14);
        err[r] = fabs(v - exp(-T));
    }
    for (int r = 0; r + 1 < 4; r++) {
        double order = log2(err[r] / err[r + 1]);
        if (!(fabs(order - 1.0) < 0.05)) fail_msg("observed order %.3f between L=%d and %d", order, 16 << r, 32 << r);
    }
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, F);
}

/* Oracle: central finite differences of L(x, theta) = <w, x + h F(x)>. */
static void test_backward_finite_differences(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(2, 2, 2);
    d.bias = true;
    rb_test_rng r = {42};
    size_t np = rb_conv_nparams(&d);
    double p[64];
    for (size_t i = 0; i < np; i++) p[i] = rb_test_uniform(&r, -1, 1);
    rb_op *F; /* a branch with parameters (weights and bias) */
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, p, &F));
    const double h = 0.37;
    rb_shape s = rb_shape_2d(2, 2, 4, 3);
    rb_tensor x, y, w, dx, dx0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &w, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, s));
    rb_test_fill(&r, &x, -1, 1);
    rb_test_fill(&r, &w, -1, 1);
    rb_test_fill(&r, &dx0, -1, 1);
    rb_tensor_copy(ctx, &dx0, &dx);
    double dth[64] = {0};
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(F, s)));
    RB_CHECK(ctx, rb_residual_backward(ctx, F, h, &x, &w, &dx, dth, &work));
    size_t n = rb_tensor_count(&x);
    double maxerr = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double keep = x.data[i], f[2];
        for (int sg = 0; sg < 2; sg++) {
            x.data[i] = keep + (sg ? -1e-6 : 1e-6);
            RB_CHECK(ctx, rb_residual_step(ctx, F, h, &x, &y, &work));
            f[sg] = rb_tensor_dot(&w, &y);
        }
        x.data[i] = keep;
        double fd = (f[0] - f[1]) / 2e-6, an = dx.data[i] - dx0.data[i];
        maxerr = fmax(maxerr, fabs(fd - an));
        scale = fmax(scale, fabs(an));
    }
    if (!(maxerr <= 1e-6 * scale)) fail_msg("dx vs finite differences: %.3g (scale %.3g)", maxerr, scale);
    maxerr = 0, scale = 0;
    for (size_t i = 0; i < np; i++) {
        double keep = F->params[i], f[2];
        for (int sg = 0; sg < 2; sg++) {
            F->params[i] = keep + (sg ? -1e-6 : 1e-6);
            RB_CHECK(ctx, rb_residual_step(ctx, F, h, &x, &y, &work));
            f[sg] = rb_tensor_dot(&w, &y);
        }
        F->params[i] = keep;
        double fd = (f[0] - f[1]) / 2e-6;
        maxerr = fmax(maxerr, fabs(fd - dth[i]));
        scale = fmax(scale, fabs(dth[i]));
    }
    if (!(maxerr <= 1e-6 * scale)) fail_msg("dtheta vs finite differences: %.3g (scale %.3g)", maxerr, scale);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &w);
    rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &dx0);
    rb_op_free(ctx, F);
}

/* Closed form: with F = tanh, y = x + h tanh(x) elementwise; in place equals out of place. */
static void test_in_place_and_values(void **state)
{
    rb_context *ctx = *state;
    rb_op *F;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &F));
    rb_shape s = rb_shape_2d(1, 3, 5, 5);
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
    rb_test_rng r = {3};
    rb_test_fill(&r, &x, -2, 2);
    RB_CHECK(ctx, rb_residual_step(ctx, F, 0.25, &x, &y, NULL)); /* out of place: no scratch */
    for (size_t i = 0; i < rb_tensor_count(&x); i++) assert_float_equal(y.data[i], x.data[i] + 0.25 * tanh(x.data[i]), 1e-15);
    /* in place without work memory: a clear error, x untouched */
    double first = x.data[0];
    RB_EXPECT(ctx, RB_ENULL, "work arena", rb_residual_step(ctx, F, 0.25, &x, &x, NULL));
    assert_true(x.data[0] == first);
    /* a measured (dry-run) arena gives exactly the bytes needed */
    rb_arena work;
    rb_arena_measure(&work);
    rb_tensor scratch;
    RB_CHECK(ctx, rb_arena_tensor(ctx, &work, &scratch, s)); /* what the step takes for F(x) */
    assert_int_equal(rb_arena_peak(&work), rb_residual_workspace(F, s));
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(F, s)));
    RB_CHECK(ctx, rb_residual_step(ctx, F, 0.25, &x, &x, &work));
    assert_int_equal(rb_arena_mark(&work), 0); /* scratch handed back */
    assert_memory_equal(x.data, y.data, rb_tensor_count(&x) * sizeof(double));
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
    rb_op_free(ctx, F);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *F;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, 0.1, &F));
    rb_tensor x, y, z, dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(1, 1, 5, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(1, 1, 5, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, rb_shape_2d(1, 1, 5, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &z, rb_shape_2d(1, 1, 5, 6)));
    rb_tensor_fill(ctx, &y, 5.0);
    RB_EXPECT(ctx, RB_EINVAL, "h = nan", rb_residual_step(ctx, F, NAN, &x, &y, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "h = inf", rb_residual_step(ctx, F, INFINITY, &x, &y, NULL));
    RB_EXPECT(ctx, RB_ENULL, "F is NULL", rb_residual_step(ctx, NULL, 0.1, &x, &y, NULL));
    RB_EXPECT(ctx, RB_ENULL, "x is NULL", rb_residual_step(ctx, F, 0.1, NULL, &y, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "(1,1,1,5,6)", rb_residual_step(ctx, F, 0.1, &x, &z, NULL));
    assert_int_equal(rb_residual_step(NULL, F, 0.1, &x, &y, NULL), RB_ENULL);
    for (size_t i = 0; i < 25; i++) assert_true(y.data[i] == 5.0);
    RB_EXPECT(ctx, RB_EINVAL, "alias", rb_residual_backward(ctx, F, 0.1, &x, &y, &y, NULL, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "dx", rb_residual_backward(ctx, F, 0.1, &x, &y, &z, NULL, NULL));
    rb_op_free(ctx, F);
    /* a shape-changing F cannot be a residual branch */
    rb_conv_desc d = rb_conv_desc_default(2, 1, 1);
    d.stride = 2;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, NULL, &F));
    RB_EXPECT(ctx, RB_ESHAPE, "keep the shape", rb_residual_step(ctx, F, 0.1, &x, &y, NULL));
    rb_op_free(ctx, F);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &z), rb_tensor_release(ctx, &dx);
}

/* The residual layer as an op: conformance (FD gradients, taped passes), the same
 * values as rb_residual_step and rb_residual_backward, and a nested layer. */
static void test_residual_op(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng r = {21};
    rb_conv_desc d = rb_conv_desc_default(2, 2, 2);
    double w1[36], w2[36];
    for (int i = 0; i < 36; i++) w1[i] = rb_test_uniform(&r, -0.5, 0.5), w2[i] = rb_test_uniform(&r, -0.5, 0.5);
    rb_op *parts[3], *F, *R, *RR;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w1, &parts[0]));
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &parts[1]));
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w2, &parts[2]));
    RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 3, &F));
    rb_shape in = rb_shape_2d(2, 2, 5, 4);
    /* references before F is handed over: the primitive's own step and backward */
    rb_tensor x, y_ref, y, dy, dx_ref, dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y_ref, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx_ref, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, in));
    rb_test_fill(&r, &x, -1, 1);
    rb_test_fill(&r, &dy, -1, 1);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, 1 << 20));
    double g_ref[72] = {0}, g[72] = {0};
    RB_CHECK(ctx, rb_residual_step(ctx, F, 0.4, &x, &y_ref, &work));
    RB_CHECK(ctx, rb_residual_backward(ctx, F, 0.4, &x, &dy, &dx_ref, g_ref, &work));
    RB_CHECK(ctx, rb_op_residual_create(ctx, F, 0.4, &R));
    assert_int_equal(R->nparams, 72);
    RB_CHECK(ctx, rb_op_apply(ctx, R, &x, &y, &work));
    assert_memory_equal(y.data, y_ref.data, rb_tensor_count(&y) * sizeof(double));
    RB_CHECK(ctx, rb_op_backward(ctx, R, &x, NULL, NULL, &dy, 1.0, &dx, g, &work));
    assert_true(rb_tensor_max_rel_diff(&dx, &dx_ref) <= 1e-15);
    for (int i = 0; i < 72; i++) assert_true(fabs(g[i] - g_ref[i]) <= 1e-15 * (1 + fabs(g_ref[i])));
    rb_conformance_case c = rb_conformance_default(R, in, "residual layer (conv-tanh-conv)");
    rb_conformance_run(ctx, &c);
    /* nested: x + h2 (x + h F(x)) is a residual layer of a residual layer */
    RB_CHECK(ctx, rb_op_residual_create(ctx, R, -0.3, &RR));
    c = rb_conformance_default(RR, in, "residual layer of a residual layer");
    rb_conformance_run(ctx, &c);
    rb_op *bad;
    RB_EXPECT(ctx, RB_EINVAL, "not finite", rb_op_residual_create(ctx, RR, NAN, &bad));
    rb_op_free(ctx, RR);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y_ref), rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &dy), rb_tensor_release(ctx, &dx_ref), rb_tensor_release(ctx, &dx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_euler_stack_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_backward_finite_differences, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_in_place_and_values, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_residual_op, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("residual", tests, NULL, NULL);
}
