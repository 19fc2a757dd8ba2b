/* test_trainer.c — the training loop: one step against finite differences of
 * the loss, learning on synthetic data, bit-for-bit reproducibility, resuming
 * from a checkpoint equals the uninterrupted run, every checkpoint refusal
 * (truncated, corrupt, other model, unwritable) with the model unchanged, and
 * divergence reported with nothing lost. */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char g_dir[4096];

static int group_setup(void **state)
{
    (void)state;
    return rb_test_scratch_dir(g_dir, sizeof g_dir, "trainer");
}

static int group_teardown(void **state)
{
    (void)state;
    rb_test_remove_tree(g_dir);
    return 0;
}

static rb_model *small_mlp(rb_context *ctx, rb_block_kind block)
{
    rb_model_desc d = rb_model_desc_default(RB_MODEL_MLP);
    d.block = block, d.width = 16, d.depth = 3, d.in_w = 4, d.outputs = 2, d.seed = 5;
    rb_model *m;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    return m;
}

static rb_trainer_config small_cfg(rb_optimizer_kind opt)
{
    rb_trainer_config c = rb_trainer_config_default();
    c.opt = rb_optimizer_config_default(opt);
    c.opt.weight_decay = 1e-4;
    c.lr = opt == RB_OPT_ADAM ? 3e-3 : 0.02;
    c.epochs = 4, c.batch = 32, c.seed = 11;
    return c;
}

/* One SGD step (no momentum, no decay) moves the parameters by -lr * dL/dtheta, with the
 * gradient checked against central differences of the batch loss. */
static void step_against_fd(void **state)
{
    rb_context *ctx = *state;
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 8, 4, 2, 0.0, 3, RB_SPLIT_TRAIN, &ds));
    rb_model *m = small_mlp(ctx, RB_BLOCK_V2);
    rb_trainer_config c = small_cfg(RB_OPT_SGD);
    c.opt.momentum = 0, c.opt.weight_decay = 0, c.schedule = RB_LR_CONSTANT, c.batch = 8, c.lr = 0.5;
    rb_trainer tr;
    RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &ds));
    rb_tensor x, out;
    RB_CHECK(ctx, rb_tensor_view(ctx, &x, ds.x, rb_shape_2d(8, 1, 1, 4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &out, rb_shape_2d(8, 1, 1, 2)));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(m->net, x.shape)));
    size_t np = m->net->nparams;
    double *before = malloc(np * sizeof(double)), *fd = malloc(np * sizeof(double));
    memcpy(before, m->net->params, np * sizeof(double));
    for (size_t i = 0; i < np; i++) {
        double keep = m->net->params[i], lp, lm, e = 1e-6;
        m->net->params[i] = keep + e;
        RB_CHECK(ctx, rb_op_apply(ctx, m->net, &x, &out, &work));
        RB_CHECK(ctx, rb_loss_mse(ctx, &out, ds.y, &lp, NULL));
        m->net->params[i] = keep - e;
        RB_CHECK(ctx, rb_op_apply(ctx, m->net, &x, &out, &work));
        RB_CHECK(ctx, rb_loss_mse(ctx, &out, ds.y, &lm, NULL));
        m->net->params[i] = keep;
        fd[i] = (lp - lm) / (2 * e);
    }
    double loss, scale = 0, err = 0;
    RB_CHECK(ctx, rb_trainer_step(ctx, &tr, &x, NULL, ds.y, &loss, NULL));
    for (size_t i = 0; i < np; i++) {
        double g = (before[i] - m->net->params[i]) / 0.5;
        err = fmax(err, fabs(g - fd[i]));
        scale = fmax(scale, fabs(fd[i]));
    }
    assert_true(err <= 1e-7 * scale);
    assert_int_equal(tr.step, 1);
    free(before), free(fd);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &out);
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    rb_dataset_release(ctx, &ds);
}

/* Learning happens (test loss falls by 5x on held-out data from the same teacher), and two
 * runs with the same seed give the same losses bit for bit. */
static void learns_and_reproduces(void **state)
{
    rb_context *ctx = *state;
    rb_dataset train, test;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 512, 4, 2, 0.0, 3, RB_SPLIT_TRAIN, &train));
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 256, 4, 2, 0.0, 3, RB_SPLIT_TEST, &test));
    double losses[2][8];
    for (int run = 0; run < 2; run++) {
        rb_model *m = small_mlp(ctx, RB_BLOCK_V2);
        rb_trainer_config c = small_cfg(RB_OPT_ADAM);
        c.epochs = 8;
        rb_trainer tr;
        RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &train));
        double l0, acc;
        RB_CHECK(ctx, rb_model_evaluate(ctx, m, &test, 64, &l0, &acc));
        for (int e = 0; e < 8; e++) {
            rb_epoch_stats s;
            RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &train, NULL, NULL, &s));
            losses[run][e] = s.loss;
            assert_int_equal(s.epoch, (size_t)e + 1);
        }
        double l1;
        RB_CHECK(ctx, rb_model_evaluate(ctx, m, &test, 64, &l1, &acc));
        assert_true(l1 < l0 / 5);
        rb_trainer_release(ctx, &tr);
        rb_model_free(ctx, m);
    }
    assert_memory_equal(losses[0], losses[1], sizeof losses[0]);
    rb_dataset_release(ctx, &train);
    rb_dataset_release(ctx, &test);
}

/* Train 3 epochs straight, or 1 epoch, checkpoint, a new process-worth of objects, resume for 2:
 * the same losses and parameters bit for bit (SGD momentum and Adam, a BN ResNet and an MLP). */
static void resume_equals_uninterrupted(void **state)
{
    rb_context *ctx = *state;
    char path[4200];
    snprintf(path, sizeof path, "%s/run.ckpt", g_dir);
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 96, 16, 3, 0.1, 8, RB_SPLIT_TRAIN, &ds));
    ds.classes = 3; /* classification: labels from the argmax of the targets */
    ds.labels = malloc(96 * sizeof(int32_t));
    for (size_t i = 0; i < 96; i++) {
        const double *y = ds.y + 3 * i;
        ds.labels[i] = y[0] >= y[1] && y[0] >= y[2] ? 0 : y[1] >= y[2] ? 1 : 2;
    }
    free(ds.y), ds.y = NULL, ds.target_len = 0;
    ds.sample = rb_shape_2d(1, 1, 4, 4);
    for (int variant = 0; variant < 2; variant++) {
        rb_model_desc d = rb_model_desc_default(RB_MODEL_RESNET);
        d.depth = 8, d.width = 2, d.in_h = d.in_w = 4, d.outputs = 3;
        rb_trainer_config c = small_cfg(variant ? RB_OPT_ADAM : RB_OPT_SGD);
        c.epochs = 3, c.batch = 16;
        double straight[3], resumed[3];
        rb_model *m;
        rb_trainer tr;
        RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
        RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &ds));
        for (int e = 0; e < 3; e++) {
            rb_epoch_stats s;
            RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &s));
            straight[e] = s.loss;
            if (e == 0) RB_CHECK(ctx, rb_checkpoint_save(ctx, path, &tr));
        }
        size_t np = m->net->nparams;
        double *final = malloc(np * sizeof(double));
        memcpy(final, m->net->params, np * sizeof(double));
        double rm = rb_op_batchnorm_running_var(m->bn[m->nbn - 1])[0];
        rb_trainer_release(ctx, &tr);
        rb_model_free(ctx, m);

        rb_model_desc d2;
        rb_trainer_config c2;
        RB_CHECK(ctx, rb_checkpoint_peek(ctx, path, &d2, &c2));
        assert_int_equal(d2.depth, 8);
        assert_int_equal(c2.opt.kind, c.opt.kind);
        RB_CHECK(ctx, rb_model_create(ctx, &d2, &m));
        RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c2, &ds));
        RB_CHECK(ctx, rb_checkpoint_load(ctx, path, m, &tr));
        assert_int_equal(tr.epoch, 1);
        resumed[0] = straight[0];
        for (int e = 1; e < 3; e++) {
            rb_epoch_stats s;
            RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &s));
            resumed[e] = s.loss;
        }
        assert_memory_equal(straight, resumed, sizeof straight);
        assert_memory_equal(final, m->net->params, np * sizeof(double));
        assert_true(rb_op_batchnorm_running_var(m->bn[m->nbn - 1])[0] == rm);
        free(final);
        rb_trainer_release(ctx, &tr);
        rb_model_free(ctx, m);
    }
    rb_dataset_release(ctx, &ds);
}

static void checkpoint_refusals(void **state)
{
    rb_context *ctx = *state;
    char path[4200], bad[4300], cmd[20000];
    snprintf(path, sizeof path, "%s/good.ckpt", g_dir);
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 40, 4, 2, 0.0, 3, RB_SPLIT_TRAIN, &ds));
    rb_model *m = small_mlp(ctx, RB_BLOCK_V2);
    rb_trainer_config c = small_cfg(RB_OPT_SGD);
    rb_trainer tr;
    RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &ds));
    rb_epoch_stats s;
    RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &s));
    RB_CHECK(ctx, rb_checkpoint_save(ctx, path, &tr));
    size_t np = m->net->nparams;
    double *keep = malloc(np * sizeof(double));
    RB_CHECK(ctx, rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &s)); /* move on, so a load would change things */
    memcpy(keep, m->net->params, np * sizeof(double));
    /* truncated */
    snprintf(bad, sizeof bad, "%s/trunc.ckpt", g_dir);
    snprintf(cmd, sizeof cmd, "head -c 300 '%s' > '%s'", path, bad);
    assert_int_equal(system(cmd), 0);
    RB_EXPECT(ctx, RB_EFORMAT, "truncated or corrupt", rb_checkpoint_load(ctx, bad, m, &tr));
    /* one flipped byte in the parameters */
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && printf '\\x55' | dd of='%s' bs=1 seek=400 conv=notrunc 2>/dev/null", path, bad, bad);
    assert_int_equal(system(cmd), 0);
    RB_EXPECT(ctx, RB_EFORMAT, "checksum", rb_checkpoint_load(ctx, bad, m, &tr));
    /* not a checkpoint */
    snprintf(cmd, sizeof cmd, "head -c 2000 /dev/zero > '%s'", bad);
    assert_int_equal(system(cmd), 0);
    RB_EXPECT(ctx, RB_EFORMAT, "bad magic", rb_checkpoint_load(ctx, bad, m, &tr));
    /* another model */
    rb_model *other = small_mlp(ctx, RB_BLOCK_PLAIN);
    RB_EXPECT(ctx, RB_EINVAL, "not this", rb_checkpoint_load(ctx, path, other, NULL));
    rb_model_free(ctx, other);
    /* nothing changed by any refusal */
    assert_memory_equal(keep, m->net->params, np * sizeof(double));
    assert_int_equal(tr.epoch, 2);
    RB_EXPECT(ctx, RB_ENOTFOUND, "cannot open", rb_checkpoint_load(ctx, "/nonexistent/x.ckpt", m, &tr));
    /* an unwritable path is an I/O error, and the previous file stays intact */
    RB_EXPECT(ctx, RB_EIO, "cannot create a temporary file", rb_checkpoint_save(ctx, "/nonexistent/dir/x.ckpt", &tr));
    RB_CHECK(ctx, rb_checkpoint_load(ctx, path, m, &tr));
    assert_int_equal(tr.epoch, 1);
    free(keep);
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    rb_dataset_release(ctx, &ds);
}

/* A learning rate that blows the loss up stops training with RB_EDIVERGED: the parameters and
 * the batch-norm statistics are those before the failed step. */
static void divergence_is_reported(void **state)
{
    rb_context *ctx = *state;
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 64, 4, 2, 0.0, 3, RB_SPLIT_TRAIN, &ds));
    rb_model *m = small_mlp(ctx, RB_BLOCK_PLAIN);
    rb_trainer_config c = small_cfg(RB_OPT_SGD);
    c.lr = 1e6, c.schedule = RB_LR_CONSTANT;
    rb_trainer tr;
    RB_CHECK(ctx, rb_trainer_init(ctx, &tr, m, &c, &ds));
    rb_epoch_stats s;
    rb_status st = RB_OK;
    for (int e = 0; e < 20 && st == RB_OK; e++) st = rb_trainer_epoch(ctx, &tr, &ds, NULL, NULL, &s);
    assert_int_equal(st, RB_EDIVERGED);
    assert_non_null(strstr(rb_context_message(ctx), "training diverged in epoch"));
    for (size_t i = 0; i < m->net->nparams; i++) assert_true(isfinite(m->net->params[i]));
    /* bad input */
    rb_trainer t2;
    c.batch = 0;
    RB_EXPECT(ctx, RB_EINVAL, "batch size is 0", rb_trainer_init(ctx, &t2, m, &c, &ds));
    c.batch = 8;
    ds.target_len = 3;
    RB_EXPECT(ctx, RB_ESHAPE, "targets have 3 values", rb_trainer_init(ctx, &t2, m, &c, &ds));
    ds.target_len = 2;
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    rb_dataset_release(ctx, &ds);
}

/* NPY export and import: a round trip restores parameters and statistics exactly; a file of the
 * wrong size or with a NaN is refused and the model keeps its weights. */
static void npy_round_trip(void **state)
{
    rb_context *ctx = *state;
    rb_model_desc d = rb_model_desc_default(RB_MODEL_RESNET);
    d.depth = 8, d.width = 2, d.in_h = d.in_w = 4, d.outputs = 3;
    rb_model *a, *b;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &a));
    d.seed = 99;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &b));
    for (size_t i = 0; i < a->nbn; i++) rb_op_batchnorm_running_var(a->bn[i])[0] = 3.0 + (double)i;
    char prefix[4200], path[4300];
    snprintf(prefix, sizeof prefix, "%s/w_", g_dir);
    RB_CHECK(ctx, rb_model_export_npy(ctx, a, prefix));
    size_t np = a->net->nparams;
    assert_true(memcmp(a->net->params, b->net->params, np * sizeof(double)) != 0);
    RB_CHECK(ctx, rb_model_import_npy(ctx, b, prefix));
    assert_memory_equal(a->net->params, b->net->params, np * sizeof(double));
    for (size_t i = 0; i < a->nbn; i++) assert_true(rb_op_batchnorm_running_var(b->bn[i])[0] == 3.0 + (double)i);
    /* a NaN in the file: refused, nothing changed */
    rb_tensor t;
    snprintf(path, sizeof path, "%sparams.npy", prefix);
    RB_CHECK(ctx, rb_npy_read(ctx, path, &t));
    t.data[5] = NAN;
    RB_CHECK(ctx, rb_npy_write(ctx, path, &t));
    b->net->params[0] += 1;
    double keep = b->net->params[0];
    RB_EXPECT(ctx, RB_EFORMAT, "value 5 is not finite", rb_model_import_npy(ctx, b, prefix));
    assert_true(b->net->params[0] == keep);
    /* the wrong size */
    t.shape = rb_shape_vec(np - 1);
    RB_CHECK(ctx, rb_npy_write(ctx, path, &t));
    RB_EXPECT(ctx, RB_ESHAPE, "the model needs", rb_model_import_npy(ctx, b, prefix));
    rb_tensor_release(ctx, &t);
    rb_model_free(ctx, a);
    rb_model_free(ctx, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(step_against_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(learns_and_reproduces, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(resume_equals_uninterrupted, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(checkpoint_refusals, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(divergence_is_reported, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(npy_round_trip, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
