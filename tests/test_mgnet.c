/* test_mgnet.c — MgNet (the down-leg of the network-mode cycle as a classifier) against its
 * oracles: the operator conformance suite (vjp and every parameter gradient of the whole
 * classifier against central differences); apply over more samples than the cycle's batch
 * against taped forwards of a few samples at a time (<= 1e-14); the model's parameter count
 * against the layer-by-layer formula; bad input. (The trainer and its checkpoints take the
 * flat parameter vector as for every model: tests/test_trainer.c.) With batch-normalised
 * smoothers: the conformance suite in training mode (gamma and beta among the parameters,
 * batch statistics over the samples given, not the cycle's padding); through the model and the
 * trainer, modes reach the cycle's batch norms and a checkpoint or an NPY export restores
 * parameters and running statistics bit for bit. */
#include "testkit.h"
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_op *op = NULL;
    RB_CHECK(ctx, rb_op_mgnet_create(ctx, 1, 5, 6, 2, 1, 3, 7, &op)); /* 5 x 6 images -> grid 7, 3 levels */
    rb_conformance_case c = rb_conformance_default(op, rb_shape_2d(2, 1, 5, 6), "mgnet");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, op);
}

/* apply on more samples than the cycle's batch equals the taped forward batch by batch */
static void test_batches(void **state)
{
    rb_context *ctx = *state;
    rb_op *op = NULL;
    RB_CHECK(ctx, rb_op_mgnet_create(ctx, 1, 9, 9, 3, 2, 4, 3, &op));
    const size_t N = RB_MGNET_BATCH + 5;
    rb_tensor x, y, yb, xb;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(N, 1, 9, 9)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(N, 1, 1, 4)));
    rb_test_rng r = {5};
    rb_test_fill(&r, &x, -1, 1);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(op, x.shape) + rb_op_tape_bytes(op, x.shape) + 4096));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, &work));
    for (size_t r0 = 0; r0 < N; r0 += 5) { /* a few samples at a time, taped */
        size_t rows = N - r0 < 5 ? N - r0 : 5;
        RB_CHECK(ctx, rb_tensor_view(ctx, &xb, x.data + r0 * 81, rb_shape_2d(rows, 1, 9, 9)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &yb, rb_shape_2d(rows, 1, 1, 4)));
        void *tape = rb_arena_alloc(ctx, &work, rb_op_tape_bytes(op, xb.shape));
        RB_CHECK(ctx, rb_op_forward(ctx, op, &xb, &yb, tape, &work));
        for (size_t i = 0; i < rows * 4; i++) assert_true(fabs(yb.data[i] - y.data[r0 * 4 + i]) <= 1e-14 * (1 + fabs(yb.data[i])));
        rb_arena_reset(&work, 0);
        rb_tensor_release(ctx, &yb);
    }
    rb_tensor big;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &big, rb_shape_2d(N, 1, 1, 4)));
    void *tape = rb_arena_alloc(ctx, &work, rb_op_tape_bytes(op, x.shape));
    RB_EXPECT(ctx, RB_EINVAL, "at most", rb_op_forward(ctx, op, &x, &big, tape, &work));
    rb_tensor_release(ctx, &big);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
    rb_op_free(ctx, op);
}

/* the model and the trainer: MgNet trains like a ResNet, and a checkpoint restores it exactly */
static void test_model(void **state)
{
    rb_context *ctx = *state;
    rb_model_desc d = rb_model_desc_default(RB_MODEL_MGNET);
    d.kind = RB_MODEL_MGNET, d.width = 4, d.depth = 1, d.in_h = d.in_w = 6, d.outputs = 3;
    rb_model *m = NULL;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    /* 6 x 6 images with a zero border: grids 15, 7, 3. K 1*4*9; A, B, R, Pi (4*4*9 each) on levels 0
     * and 1, A, B on the coarsest; W 4*3 + b 3 */
    assert_int_equal(m->net->nparams, 36 + 8 * 144 + 2 * 144 + 15);
    d.depth = 9;
    rb_model *bad = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "smoothing steps per level", rb_model_create(ctx, &d, &bad));
    rb_model_free(ctx, m);
    rb_op *op = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "smoothing = 0", rb_op_mgnet_create(ctx, 1, 5, 5, 2, 0, 3, 1, &op));
    RB_EXPECT(ctx, RB_EINVAL, "channels = 0", rb_op_mgnet_create(ctx, 1, 5, 5, 0, 1, 3, 1, &op));
    RB_CHECK(ctx, rb_op_mgnet_create(ctx, 1, 5, 5, 2, 1, 3, 1, &op));
    rb_shape out;
    RB_EXPECT(ctx, RB_ESHAPE, "expected (N,1,1,5,5)", rb_op_shape(ctx, op, rb_shape_2d(1, 1, 5, 6), &out));
    rb_op_free(ctx, op);
}

/* The normalised smoothers in training mode (batch statistics): the conformance suite on 3
 * samples (every gradient of the classifier, gamma and beta included, against central
 * differences). The statistics are the batch's own: 3 samples give the same outputs before and
 * after a batch of 5, and different ones within it; in inference mode (running statistics) each
 * sample's output is its own, alone or among others. */
static void test_normalised_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_op *op = NULL;
    RB_CHECK(ctx, rb_op_mgnet_create_norm(ctx, 1, 5, 6, 2, 1, 3, RB_NORM_BATCH_ALL, 7, &op)); /* grids 15, 7, 3 */
    rb_vnet *net = rb_op_mgnet_vnet(op);
    assert_int_equal(rb_vnet_nbn(net), 10); /* BN_r, BN_B on each level, BN_RT, BN_PI on the two finer ones */
    rb_op *smoothers_only = NULL;
    RB_CHECK(ctx, rb_op_mgnet_create_norm(ctx, 1, 5, 6, 2, 1, 3, RB_NORM_BATCH, 7, &smoothers_only));
    assert_int_equal(rb_vnet_nbn(rb_op_mgnet_vnet(smoothers_only)), 6); /* RB_NORM_BATCH: the smoothers' only */
    assert_int_equal(smoothers_only->nparams, op->nparams - 4 * 2 * 2);
    rb_op_free(ctx, smoothers_only);
    rb_conformance_case c = rb_conformance_default(op, rb_shape_2d(3, 1, 5, 6), "mgnet, batch norm");
    rb_conformance_run(ctx, &c);
    rb_tensor x3, x5, y3, y3b, y5;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x5, rb_shape_2d(5, 1, 5, 6)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y5, rb_shape_2d(5, 1, 1, 3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y3, rb_shape_2d(3, 1, 1, 3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y3b, rb_shape_2d(3, 1, 1, 3)));
    rb_test_rng r = {9};
    rb_test_fill(&r, &x5, 0, 1); /* pixels */
    RB_CHECK(ctx, rb_tensor_view(ctx, &x3, x5.data, rb_shape_2d(3, 1, 5, 6)));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x3, &y3, NULL));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x5, &y5, NULL));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x3, &y3b, NULL));
    assert_memory_equal(y3.data, y3b.data, 9 * sizeof(double));
    double d = 0;
    for (size_t i = 0; i < 9; i++) d = fmax(d, fabs(y3.data[i] - y5.data[i]));
    assert_true(d > 1e-6); /* two more samples change the statistics, and so the outputs */
    /* one tracking forward of the 3 samples: level 0's first batch norm sees f - A 0 = K * x on
     * the 15 x 15 grid; each pixel meets every tap there (the zero border), so its mean over the
     * batch is (sum of K_c's taps) (sum of the pixels) / (3 * 225): 3/128 of that if the
     * cycle's padding counted */
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_TRAIN_TRACK));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x3, &y3, NULL));
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_TRAIN));
    double pixels = 0;
    for (size_t i = 0; i < 90; i++) pixels += x3.data[i];
    for (size_t ch = 0; ch < 2; ch++) {
        double taps = 0;
        for (size_t k = 0; k < 9; k++) taps += op->params[ch * 9 + k]; /* K first in the flat vector, (C, 1, 3, 3) */
        const double want = 0.1 * taps * pixels / (3.0 * 225.0), got = rb_op_batchnorm_running_mean(rb_vnet_bn(net, 0))[ch];
        assert_true(fabs(got - want) <= 1e-12 * fabs(want));
        assert_true(fabs(want) > 1e-4);
    }
    /* inference mode: per sample (the running statistics), so the 3 among 5 equal the 3 alone */
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_EVAL));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x3, &y3, NULL));
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x5, &y5, NULL));
    for (size_t i = 0; i < 9; i++) assert_true(fabs(y3.data[i] - y5.data[i]) <= 1e-14 * (1 + fabs(y3.data[i])));
    rb_tensor_release(ctx, &x5), rb_tensor_release(ctx, &y5), rb_tensor_release(ctx, &y3), rb_tensor_release(ctx, &y3b);
    rb_op_free(ctx, op);
}

/* Every batch norm's running mean and variance of a model, concatenated. */
static size_t model_stats(const rb_model *m, double *out)
{
    size_t k = 0;
    for (size_t i = 0; i < m->nbn; i++) {
        memcpy(out + k, rb_op_batchnorm_running_mean(m->bn[i]), m->bn[i]->nparams * sizeof(double)); /* mean, var */
        k += m->bn[i]->nparams;
    }
    return k;
}

/* A normalised MgNet as a model: rb_model_set_mode reaches the cycle's batch norms; after an
 * epoch of training (a short last batch included) a checkpoint restores the parameters and
 * running statistics bit for bit, and with them the inference-mode outputs; so does the NPY
 * export into a fresh model; a model without normalisation refuses the file. */
static void test_normalised_model(void **state)
{
    rb_context *ctx = *state;
    char dir[4096], path[4200], prefix[4200];
    assert_int_equal(rb_test_scratch_dir(dir, sizeof dir, "mgnet_bn"), 0);
    snprintf(path, sizeof path, "%s/bn.ckpt", dir);
    snprintf(prefix, sizeof prefix, "%s/bn_", dir);
    rb_model_desc d = rb_model_desc_default(RB_MODEL_MGNET);
    d.width = 3, d.depth = 1, d.in_h = d.in_w = 6, d.outputs = 3, d.norm = RB_NORM_BATCH_ALL;
    rb_model *m = NULL, *m2 = NULL, *plain = NULL;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    assert_int_equal(m->nbn, 10); /* grids 15, 7, 3: BN_r, BN_B each, BN_RT, BN_PI on 15 and 7 */
    /* as without normalisation (test_model's count for width 3) and gamma, beta of each batch norm */
    assert_int_equal(m->net->nparams, 27 + 8 * 81 + 2 * 81 + 12 + 10 * 2 * 3);
    RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_EVAL));
    for (size_t i = 0; i < 10; i++) assert_int_equal(rb_op_batchnorm_mode(rb_vnet_bn(rb_op_mgnet_vnet(m->net), i)), RB_BN_EVAL);
    RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_TRAIN));
    const size_t count = 20, per = 36;
    double *x = malloc(count * per * sizeof(double));
    int32_t *labels = malloc(count * sizeof(int32_t));
    rb_test_rng r = {3};
    for (size_t i = 0; i < count * per; i++) x[i] = rb_test_uniform(&r, 0, 1);
    for (size_t i = 0; i < count; i++) labels[i] = (int32_t)(i % 3);
    rb_dataset ds = {.count = count, .sample = rb_shape_2d(1, 1, 6, 6), .x = x, .classes = 3, .labels = labels};
    rb_trainer_config c = rb_trainer_config_default();
    c.lr = 0.05, c.batch = 8, c.epochs = 3;
    rb_trainer tr;
    RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &ds));
    rb_epoch_stats es;
    double s0[128], s1[128], s2[128];
    const size_t ns = model_stats(m, s0), np = m->net->nparams;
    RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &es)); /* batches of 8, 8, 4 */
    RB_CHECK(ctx, rb_checkpoint_save(ctx, path, &tr));
    model_stats(m, s1);
    for (size_t i = 0; i < ns; i++) assert_true(s1[i] != s0[i]);
    double *p1 = malloc(np * sizeof(double)), *y1 = malloc(count * 3 * sizeof(double)), *y2 = malloc(count * 3 * sizeof(double));
    memcpy(p1, m->net->params, np * sizeof(double));
    rb_tensor xt, yt;
    RB_CHECK(ctx, rb_tensor_view(ctx, &xt, x, rb_shape_2d(count, 1, 6, 6)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &yt, y1, rb_shape_2d(count, 1, 1, 3)));
    RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_EVAL));
    RB_CHECK(ctx, rb_op_apply(ctx, m->net, &xt, &yt, NULL));
    RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_TRAIN));
    RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &es)); /* moves on */
    model_stats(m, s2);
    assert_true(memcmp(s1, s2, ns * sizeof(double)) != 0);
    RB_CHECK(ctx, rb_checkpoint_load(ctx, path, m, &tr));
    model_stats(m, s2);
    assert_memory_equal(s1, s2, ns * sizeof(double));
    assert_memory_equal(p1, m->net->params, np * sizeof(double));
    RB_CHECK(ctx, rb_tensor_view(ctx, &yt, y2, rb_shape_2d(count, 1, 1, 3)));
    RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_EVAL));
    RB_CHECK(ctx, rb_op_apply(ctx, m->net, &xt, &yt, NULL));
    assert_memory_equal(y1, y2, count * 3 * sizeof(double));
    /* peek names the normalisation; a fresh model of it loads the file; one without refuses it */
    rb_model_desc pd;
    RB_CHECK(ctx, rb_checkpoint_peek(ctx, path, &pd, NULL));
    assert_int_equal(pd.norm, RB_NORM_BATCH_ALL);
    RB_CHECK(ctx, rb_model_create(ctx, &pd, &m2));
    RB_CHECK(ctx, rb_checkpoint_load(ctx, path, m2, NULL));
    model_stats(m2, s2);
    assert_memory_equal(s1, s2, ns * sizeof(double));
    assert_memory_equal(p1, m2->net->params, np * sizeof(double));
    rb_model_free(ctx, m2);
    d.norm = RB_NORM_NONE;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &plain));
    RB_EXPECT(ctx, RB_EINVAL, "norm batch", rb_checkpoint_load(ctx, path, plain, NULL));
    rb_model_free(ctx, plain);
    /* the NPY export: parameters and running statistics into a fresh model */
    RB_CHECK(ctx, rb_model_export_npy(ctx, m, prefix));
    d.norm = RB_NORM_BATCH_ALL, d.seed = 99;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m2));
    RB_CHECK(ctx, rb_model_import_npy(ctx, m2, prefix));
    model_stats(m2, s2);
    assert_memory_equal(s1, s2, ns * sizeof(double));
    assert_memory_equal(p1, m2->net->params, np * sizeof(double));
    /* norm is MgNet's option only */
    rb_model_desc rd = rb_model_desc_default(RB_MODEL_RESNET);
    rd.norm = RB_NORM_BATCH;
    RB_EXPECT(ctx, RB_EINVAL, "MgNet's option", rb_model_create(ctx, &rd, &plain));
    rb_model_free(ctx, m2);
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    free(x), free(labels), free(p1), free(y1), free(y2);
    rb_test_remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_batches, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_model, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_normalised_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_normalised_model, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
