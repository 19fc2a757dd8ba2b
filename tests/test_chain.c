/* test_chain.c — composition: conformance (finite differences, adjoint
 * identity for linear chains), closed-form values, ownership, bad input. */
#include "conformance.h"

#include <math.h>

static rb_op *conv(rb_context *ctx, size_t cin, size_t cout, uint64_t seed)
{
    rb_conv_desc d = rb_conv_desc_default(2, cin, cout);
    d.bias = true;
    rb_test_rng r = {seed};
    double p[512];
    for (size_t i = 0; i < rb_conv_nparams(&d); i++) p[i] = rb_test_uniform(&r, -0.5, 0.5);
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, p, &op));
    return op;
}

static void test_conformance_residual_branch(void **state)
{
    rb_context *ctx = *state;
    rb_op *act, *parts[3];
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &act));
    parts[0] = conv(ctx, 2, 3, 1), parts[1] = act, parts[2] = conv(ctx, 3, 2, 2);
    rb_op *F;
    RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 3, &F));
    assert_int_equal(F->nparams, 2 * 3 * 9 + 3 + 3 * 2 * 9 + 2);
    rb_conformance_case c = rb_conformance_default(F, rb_shape_2d(2, 2, 4, 5), "conv-tanh-conv branch");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, F); /* frees the parts too (ASan/valgrind would see a leak or double free) */
}

static void test_linear_chain_is_linear(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(2, 1, 1);
    d.stride = 2;
    double w[9] = {1, 2, 1, 2, 4, 2, 1, 2, 1};
    rb_op *R, *P, *A, *parts[3];
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &R));
    d.transposed = true;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &P));
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, 0.125, &A));
    parts[0] = R, parts[1] = A, parts[2] = P; /* P A R: a Galerkin-like product, linear */
    rb_op *G;
    RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 3, &G));
    assert_true(G->type->flags & RB_OP_LINEAR);
    rb_conformance_case c = rb_conformance_default(G, rb_shape_2d(1, 1, 7, 7), "P A R");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, G);
}

/* Closed form: chain(identity, scalar 2, tanh) applied to x is tanh(2x). */
static void test_values(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(1, 1, 1);
    d.ksize = 1;
    double two = 2.0;
    rb_op *id, *sc, *th, *parts[3], *F;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_IDENTITY, &id));
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, &two, &sc));
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &th));
    parts[0] = id, parts[1] = sc, parts[2] = th;
    RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 3, &F));
    double xs[5] = {-1, -0.2, 0, 0.3, 2}, ys[5];
    rb_tensor x, y;
    rb_tensor_view(ctx, &x, xs, rb_shape_vec(5));
    rb_tensor_view(ctx, &y, ys, rb_shape_vec(5));
    /* two intermediates need work memory; without it a clear error */
    RB_EXPECT(ctx, RB_ENULL, "work arena", rb_op_apply(ctx, F, &x, &y, NULL));
    rb_arena a = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &a, rb_op_workspace(F, x.shape)));
    RB_CHECK(ctx, rb_op_apply(ctx, F, &x, &y, &a));
    for (int i = 0; i < 5; i++) assert_float_equal(ys[i], tanh(2 * xs[i]), 1e-15);
    /* the chain's parameter vector is the parts' parameters */
    F->params[0] = 3.0;
    RB_CHECK(ctx, rb_op_apply(ctx, F, &x, &y, &a));
    assert_float_equal(ys[4], tanh(6.0), 1e-15);
    rb_arena_release(ctx, &a);
    rb_op_free(ctx, F);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = NULL, *a;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_RELU, &a));
    rb_op *parts[2] = {a, a};
    RB_EXPECT(ctx, RB_EINVAL, "repeats", rb_op_chain_create(ctx, parts, 2, &F));
    RB_EXPECT(ctx, RB_EINVAL, "count = 0", rb_op_chain_create(ctx, parts, 0, &F));
    parts[1] = NULL;
    RB_EXPECT(ctx, RB_ENULL, "parts[1]", rb_op_chain_create(ctx, parts, 2, &F));
    assert_null(F);
    rb_op_free(ctx, a); /* still the caller's after a failed create */
    /* incompatible shapes are reported when the chain is used */
    rb_op *c1 = conv(ctx, 1, 2, 5), *c2 = conv(ctx, 3, 1, 6);
    rb_op *p2[2] = {c1, c2};
    RB_CHECK(ctx, rb_op_chain_create(ctx, p2, 2, &F));
    rb_shape out;
    RB_EXPECT(ctx, RB_ESHAPE, "3 input channels", rb_op_shape(ctx, F, rb_shape_2d(1, 1, 4, 4), &out));
    rb_op_free(ctx, F);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance_residual_branch, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_linear_chain_is_linear, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_values, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("chain", tests, NULL, NULL);
}
