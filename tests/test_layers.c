/* test_layers.c — dense, flatten, global average pooling, batch and layer
 * normalisation: the rb_op conformance suite (finite-difference vjp and
 * parameter gradients, linearity/adjointness where declared), closed forms,
 * GSL's statistics as the oracle for the running statistics, and refusals. */
#include "testkit.h"
#include "conformance.h"

#include <math.h>
#include <gsl/gsl_statistics_double.h>

static void conformance_all(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng r = {5};
    double p[7 * 12 + 7];
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) p[i] = rb_test_uniform(&r, -1, 1);
    rb_op *op;

    RB_CHECK(ctx, rb_op_dense_create(ctx, 12, 7, true, p, &op));
    rb_conformance_case c = rb_conformance_default(op, rb_shape_2d(3, 3, 2, 2), "dense 12 -> 7 (from images)");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);
    RB_CHECK(ctx, rb_op_dense_create(ctx, 12, 7, false, p, &op));
    assert_true(op->type->flags & RB_OP_LINEAR);
    c = rb_conformance_default(op, rb_shape_2d(4, 1, 1, 12), "dense 12 -> 7, no bias");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);

    RB_CHECK(ctx, rb_op_flatten_create(ctx, &op));
    c = rb_conformance_default(op, rb_shape_3d(2, 3, 2, 3, 2), "flatten");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);
    RB_CHECK(ctx, rb_op_global_avg_pool_create(ctx, &op));
    c = rb_conformance_default(op, rb_shape_2d(2, 3, 4, 5), "global average pool");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);

    for (int mode = 0; mode < RB_BN_MODE_COUNT; mode++) {
        RB_CHECK(ctx, rb_op_batchnorm_create(ctx, 3, 1e-5, 0.1, &op));
        for (size_t i = 0; i < op->nparams; i++) op->params[i] = rb_test_uniform(&r, 0.5, 1.5) * (i < 3 ? 1 : -1);
        double *rm = rb_op_batchnorm_running_mean(op), *rv = rb_op_batchnorm_running_var(op);
        for (int g = 0; g < 3; g++) rm[g] = 0.1 * g, rv[g] = 0.5 + g;
        RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, op, (rb_bn_mode)mode));
        c = rb_conformance_default(op, rb_shape_2d(4, 3, 3, 3), mode == RB_BN_EVAL ? "batch norm (eval)" : "batch norm (train)");
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, op);
    }
    RB_CHECK(ctx, rb_op_layernorm_create(ctx, 2 * 3 * 3, 1e-5, &op));
    for (size_t i = 0; i < op->nparams; i++) op->params[i] = rb_test_uniform(&r, 0.5, 1.5);
    c = rb_conformance_default(op, rb_shape_2d(3, 2, 3, 3), "layer norm");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);
}

/* Batch norm + ReLU fused in one op against its oracle, the unfused chain (batch norm, then
 * ReLU) with the same parameters and running statistics, in every mode: outputs (bit for
 * bit), input and parameter gradients to rounding (rb_conformance_compare), and the running
 * statistics; then the conformance suite (finite differences, taped, overwriting) on it. */
static void batchnorm_relu_fused(void **state)
{
    rb_context *ctx = *state;
    const size_t C = 3;
    rb_test_rng r = {11};
    rb_tensor x, dy;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(5, C, 4, 7)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, x.shape));
    rb_test_fill(&r, &x, -2, 3);
    rb_test_fill(&r, &dy, -1, 1);
    for (int mode = 0; mode < RB_BN_MODE_COUNT; mode++) {
        rb_op *fused, *bn, *relu, *chain;
        RB_CHECK(ctx, rb_op_batchnorm_relu_create(ctx, C, 1e-5, 0.1, &fused));
        RB_CHECK(ctx, rb_op_batchnorm_create(ctx, C, 1e-5, 0.1, &bn));
        RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_RELU, &relu));
        assert_true(rb_op_is_batchnorm(fused) && fused->nparams == 2 * C);
        rb_op *ops[2] = {bn, relu};
        RB_CHECK(ctx, rb_op_chain_create(ctx, ops, 2, &chain));
        for (size_t i = 0; i < 2 * C; i++) /* gamma of both signs; beta so that about half is cut */
            fused->params[i] = chain->params[i] = i < C ? rb_test_uniform(&r, 0.5, 1.5) * (i == 1 ? -1 : 1)
                                                        : rb_test_uniform(&r, -0.5, 0.5);
        for (size_t g = 0; g < 2 * C; g++) /* running mean, then variance */
            rb_op_batchnorm_running_mean(fused)[g] = rb_op_batchnorm_running_mean(bn)[g] = 0.2 * (double)g + 0.3;
        RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, fused, (rb_bn_mode)mode));
        RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, bn, (rb_bn_mode)mode));
        double cut = rb_conformance_compare(ctx, fused, chain, &x, &dy, 0.0, 1e-13);
        assert_true(cut > 0.2 && cut < 0.8); /* the ReLU is exercised */
        for (size_t g = 0; g < 2 * C; g++) /* tracked alike */
            assert_true(rb_op_batchnorm_running_mean(fused)[g] == rb_op_batchnorm_running_mean(bn)[g]);
        rb_conformance_case c = rb_conformance_default(fused, rb_shape_2d(4, C, 3, 3), "batch norm + relu");
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, fused);
        rb_op_free(ctx, chain);
    }
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &dy);
}

static void dense_closed_form(void **state)
{
    rb_context *ctx = *state;
    /* W = [[1, 2, 3], [4, 5, 6]], b = [10, 20]; x = [1, 0, -1] and [2, 1, 0] */
    double p[8] = {1, 2, 3, 4, 5, 6, 10, 20}, xd[6] = {1, 0, -1, 2, 1, 0}, yd[4];
    rb_op *op;
    RB_CHECK(ctx, rb_op_dense_create(ctx, 3, 2, true, p, &op));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_view(ctx, &x, xd, rb_shape_2d(2, 1, 1, 3)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &y, yd, rb_shape_2d(2, 1, 1, 2)));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, NULL));
    assert_true(yd[0] == 1 - 3 + 10 && yd[1] == 4 - 6 + 20 && yd[2] == 2 + 2 + 10 && yd[3] == 8 + 5 + 20);
    rb_tensor bad;
    RB_CHECK(ctx, rb_tensor_view(ctx, &bad, xd, rb_shape_2d(1, 1, 1, 4)));
    RB_EXPECT(ctx, RB_ESHAPE, "dense 3 -> 2", rb_op_apply(ctx, op, &bad, &y, NULL));
    rb_op_free(ctx, op);
    RB_EXPECT(ctx, RB_EINVAL, "in = 0", rb_op_dense_create(ctx, 0, 2, true, NULL, &op));
}

static void pooling_closed_form(void **state)
{
    rb_context *ctx = *state;
    rb_op *op;
    RB_CHECK(ctx, rb_op_global_avg_pool_create(ctx, &op));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(2, 3, 4, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(2, 1, 1, 3)));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) x.data[i] = (double)(i % 20); /* each (n, c) plane holds 0..19 */
    for (size_t i = 0; i < 60; i++) x.data[60 + i] += 100; /* second sample shifted */
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, NULL));
    for (int k = 0; k < 3; k++) assert_true(y.data[k] == 9.5 && y.data[3 + k] == 109.5);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_op_free(ctx, op);
}

/* Training-mode batch norm normalises each channel to mean 0 and variance var/(var + eps);
 * a tracked forward moves the running statistics by PyTorch's rule, with GSL's mean and
 * (unbiased) variance as the oracle; evaluation mode then uses them. */
static void batchnorm_statistics(void **state)
{
    rb_context *ctx = *state;
    const size_t N = 5, C = 2, S = 6, M = N * S;
    rb_op *bn;
    RB_CHECK(ctx, rb_op_batchnorm_create(ctx, C, 1e-5, 0.1, &bn));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(N, C, 2, 3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, x.shape));
    rb_test_rng r = {9};
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < C; c++)
            for (size_t s = 0; s < S; s++) x.data[(n * C + c) * S + s] = rb_test_uniform(&r, -1, 1) * (c + 1) + 3.0 * c;
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(bn, x.shape)));
    RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, bn, RB_BN_TRAIN_TRACK));
    RB_CHECK(ctx, rb_op_apply(ctx, bn, &x, &y, &work));
    double vals[30], outs[30];
    for (size_t c = 0; c < C; c++) {
        for (size_t n = 0; n < N; n++)
            for (size_t s = 0; s < S; s++) vals[n * S + s] = x.data[(n * C + c) * S + s], outs[n * S + s] = y.data[(n * C + c) * S + s];
        double mu = gsl_stats_mean(vals, 1, M), var_unbiased = gsl_stats_variance(vals, 1, M);
        double var = var_unbiased * (M - 1) / M;
        assert_true(fabs(gsl_stats_mean(outs, 1, M)) < 1e-14);
        assert_true(fabs(gsl_stats_variance(outs, 1, M) * (M - 1) / M - var / (var + 1e-5)) < 1e-13);
        assert_true(fabs(rb_op_batchnorm_running_mean(bn)[c] - 0.1 * mu) < 1e-15);
        assert_true(fabs(rb_op_batchnorm_running_var(bn)[c] - (0.9 + 0.1 * var_unbiased)) < 1e-14);
    }
    /* untracked training forwards (and all backward passes) leave the statistics alone */
    double keep = rb_op_batchnorm_running_mean(bn)[1];
    rb_tensor dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, x.shape));
    RB_CHECK(ctx, rb_op_vjp(ctx, bn, &x, &y, 1.0, &dx, &work)); /* still in TRACK mode */
    RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, bn, RB_BN_TRAIN));
    RB_CHECK(ctx, rb_op_apply(ctx, bn, &x, &y, &work));
    assert_true(rb_op_batchnorm_running_mean(bn)[1] == keep);
    /* evaluation: y = gamma (x - running mean) / sqrt(running var + eps) + beta */
    RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, bn, RB_BN_EVAL));
    bn->params[0] = 2.0, bn->params[3] = -1.0; /* gamma_0, beta_1 */
    RB_CHECK(ctx, rb_op_apply(ctx, bn, &x, &y, &work));
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < C; c++)
            for (size_t s = 0; s < S; s++) {
                size_t at = (n * C + c) * S + s;
                double want = bn->params[c] * (x.data[at] - rb_op_batchnorm_running_mean(bn)[c]) /
                                  sqrt(rb_op_batchnorm_running_var(bn)[c] + 1e-5) + bn->params[C + c];
                assert_true(fabs(y.data[at] - want) < 1e-14);
            }
    /* refusals: wrong channel count names the layer; one value per channel in training */
    rb_tensor wrong;
    RB_CHECK(ctx, rb_tensor_view(ctx, &wrong, x.data, rb_shape_2d(1, 3, 1, 1)));
    RB_EXPECT(ctx, RB_ESHAPE, "batch norm (2 channels)", rb_op_apply(ctx, bn, &wrong, &y, &work));
    RB_CHECK(ctx, rb_op_batchnorm_set_mode(ctx, bn, RB_BN_TRAIN));
    rb_tensor one, one_out;
    RB_CHECK(ctx, rb_tensor_view(ctx, &one, x.data, rb_shape_2d(1, 2, 1, 1)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &one_out, y.data, rb_shape_2d(1, 2, 1, 1)));
    RB_EXPECT(ctx, RB_ESHAPE, "need 2", rb_op_apply(ctx, bn, &one, &one_out, &work));
    RB_EXPECT(ctx, RB_EINVAL, "not a batch-norm", rb_op_batchnorm_set_mode(ctx, NULL, RB_BN_EVAL));
    rb_op *bad;
    RB_EXPECT(ctx, RB_EINVAL, "eps", rb_op_batchnorm_create(ctx, 2, 0.0, 0.1, &bad));
    RB_EXPECT(ctx, RB_EINVAL, "momentum", rb_op_batchnorm_create(ctx, 2, 1e-5, 1.5, &bad));
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &dx);
    rb_op_free(ctx, bn);
}

static void layernorm_statistics(void **state)
{
    rb_context *ctx = *state;
    rb_op *ln;
    RB_CHECK(ctx, rb_op_layernorm_create(ctx, 12, 1e-5, &ln));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(3, 3, 2, 2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, x.shape));
    rb_test_rng r = {3};
    rb_test_fill(&r, &x, -2, 5);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(ln, x.shape)));
    RB_CHECK(ctx, rb_op_apply(ctx, ln, &x, &y, &work));
    for (int n = 0; n < 3; n++) {
        double var = gsl_stats_variance(x.data + 12 * n, 1, 12) * 11 / 12;
        assert_true(fabs(gsl_stats_mean(y.data + 12 * n, 1, 12)) < 1e-14);
        assert_true(fabs(gsl_stats_variance(y.data + 12 * n, 1, 12) * 11 / 12 - var / (var + 1e-5)) < 1e-13);
    }
    rb_tensor wrong;
    RB_CHECK(ctx, rb_tensor_view(ctx, &wrong, x.data, rb_shape_2d(2, 1, 1, 10)));
    RB_EXPECT(ctx, RB_ESHAPE, "layer norm (12 values)", rb_op_apply(ctx, ln, &wrong, &y, &work));
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_op_free(ctx, ln);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(conformance_all, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(batchnorm_relu_fused, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(dense_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(pooling_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(batchnorm_statistics, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(layernorm_statistics, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
