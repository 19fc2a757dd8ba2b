/* test_train.c — losses, optimisers and schedules against closed forms and
 * finite differences (PyTorch runs the same rules in tests/peer_torch_nets). */
#include "testkit.h"

#include <math.h>
#include <stdlib.h>

/* Two classes: L = softplus(z_other - z_label) = log(1 + exp(z_o - z_l)), closed form. */
static void xent_two_classes(void **state)
{
    rb_context *ctx = *state;
    double z[6] = {0.3, -1.2, 5.0, 4.0, -700.0, 700.0}, g[6];
    int32_t lab[3] = {1, 0, 0};
    rb_tensor t, dt;
    RB_CHECK(ctx, rb_tensor_view(ctx, &t, z, rb_shape_vec(6)));
    t.shape = rb_shape_2d(3, 1, 1, 2);
    RB_CHECK(ctx, rb_tensor_view(ctx, &dt, g, t.shape));
    double loss;
    size_t correct;
    RB_CHECK(ctx, rb_loss_softmax_xent(ctx, &t, lab, &loss, &dt, &correct));
    double want = (log1p(exp(0.3 - -1.2)) + log1p(exp(4.0 - 5.0)) + 1400.0 /* log1p(e^1400) = 1400 + tiny */) / 3;
    assert_true(fabs(loss - want) <= 1e-13 * want);
    assert_int_equal(correct, 1); /* only sample 1 (z = 5 > 4, label 0) */
    /* gradient: (sigmoid(z_o - z_l)) on the other class, its negative on the label, /N */
    double s0 = 1 / (1 + exp(-(0.3 - -1.2)));
    assert_true(fabs(g[0] - s0 / 3) < 1e-15 && fabs(g[1] + s0 / 3) < 1e-15);
    assert_true(fabs(g[4] + 1.0 / 3) < 1e-15 && fabs(g[5] - 1.0 / 3) < 1e-15);
}

/* Many classes: the gradient against central differences; the gradient of each sample sums to 0. */
static void xent_fd(void **state)
{
    rb_context *ctx = *state;
    enum { N = 4, K = 7 };
    double z[N * K], g[N * K];
    int32_t lab[N] = {0, 6, 3, 3};
    rb_test_rng r = {17};
    for (int i = 0; i < N * K; i++) z[i] = rb_test_uniform(&r, -3, 3);
    rb_tensor t, dt;
    RB_CHECK(ctx, rb_tensor_view(ctx, &t, z, rb_shape_2d(N, 1, 1, K)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &dt, g, t.shape));
    double loss, lp, lm;
    RB_CHECK(ctx, rb_loss_softmax_xent(ctx, &t, lab, &loss, &dt, NULL));
    for (int i = 0; i < N * K; i++) {
        double keep = z[i], e = 1e-5;
        z[i] = keep + e;
        RB_CHECK(ctx, rb_loss_softmax_xent(ctx, &t, lab, &lp, NULL, NULL));
        z[i] = keep - e;
        RB_CHECK(ctx, rb_loss_softmax_xent(ctx, &t, lab, &lm, NULL, NULL));
        z[i] = keep;
        assert_true(fabs((lp - lm) / (2 * e) - g[i]) < 1e-9);
    }
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += g[i * K + k];
        assert_true(fabs(s) < 1e-16);
    }
    /* bad input */
    lab[2] = 7;
    RB_EXPECT(ctx, RB_EINVAL, "label 7 of sample 2", rb_loss_softmax_xent(ctx, &t, lab, &loss, NULL, NULL));
    lab[2] = 3;
    z[5] = NAN;
    RB_EXPECT(ctx, RB_EDIVERGED, "not finite", rb_loss_softmax_xent(ctx, &t, lab, &loss, NULL, NULL));
    t.shape = rb_shape_2d(N * K, 1, 1, 1);
    RB_EXPECT(ctx, RB_ESHAPE, "at least 2 classes", rb_loss_softmax_xent(ctx, &t, lab, &loss, NULL, NULL));
}

static void mse_closed_form(void **state)
{
    rb_context *ctx = *state;
    double p[4] = {1, 2, 3, 4}, y[4] = {0, 2, 5, 3}, g[4];
    rb_tensor t, dt;
    RB_CHECK(ctx, rb_tensor_view(ctx, &t, p, rb_shape_2d(2, 1, 1, 2)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &dt, g, t.shape));
    double loss;
    RB_CHECK(ctx, rb_loss_mse(ctx, &t, y, &loss, &dt));
    assert_true(loss == (1.0 + 0 + 4 + 1) / 4);
    assert_true(g[0] == 0.5 && g[1] == 0 && g[2] == -1 && g[3] == 0.5);
    RB_EXPECT(ctx, RB_ENULL, "target", rb_loss_mse(ctx, &t, NULL, &loss, NULL));
}

/* SGD with momentum mu on a constant gradient g: b_k = g (1 - mu^k) / (1 - mu), so after t steps
 * p_t = p_0 - lr g (t - mu (1 - mu^t) / (1 - mu)) / (1 - mu). */
static void sgd_momentum_closed_form(void **state)
{
    rb_context *ctx = *state;
    rb_optimizer_config c = rb_optimizer_config_default(RB_OPT_SGD);
    c.momentum = 0.9;
    rb_optimizer o;
    RB_CHECK(ctx, rb_optimizer_init(ctx, &o, &c, 2));
    double p[2] = {1.0, -2.0}, g[2] = {0.5, -0.25};
    const double lr = 0.1, mu = 0.9;
    for (int t = 1; t <= 40; t++) {
        RB_CHECK(ctx, rb_optimizer_step(ctx, &o, p, g, lr));
        double s = (t - mu * (1 - pow(mu, t)) / (1 - mu)) / (1 - mu);
        assert_true(fabs(p[0] - (1.0 - lr * 0.5 * s)) < 1e-13);
        assert_true(fabs(p[1] - (-2.0 + lr * 0.25 * s)) < 1e-13);
    }
    rb_optimizer_release(ctx, &o);
    /* weight decay alone (zero loss gradient, no momentum): p_t = p_0 (1 - lr wd)^t */
    c.momentum = 0;
    c.weight_decay = 5e-4;
    RB_CHECK(ctx, rb_optimizer_init(ctx, &o, &c, 1));
    double q = 3.0, zero = 0.0;
    for (int t = 0; t < 100; t++) RB_CHECK(ctx, rb_optimizer_step(ctx, &o, &q, &zero, 0.1));
    assert_true(fabs(q - 3.0 * pow(1 - 0.1 * 5e-4, 100)) < 1e-14);
    /* a non-finite gradient stops training without touching anything */
    double bad = NAN, keep = q;
    RB_EXPECT(ctx, RB_EDIVERGED, "gradient entry 0", rb_optimizer_step(ctx, &o, &q, &bad, 0.1));
    assert_true(q == keep && o.steps == 100);
    RB_EXPECT(ctx, RB_EINVAL, "lr = 0", rb_optimizer_step(ctx, &o, &q, &zero, 0.0));
    rb_optimizer_release(ctx, &o);
    c.momentum = 1.0;
    RB_EXPECT(ctx, RB_EINVAL, "momentum = 1", rb_optimizer_init(ctx, &o, &c, 1));
}

/* Adam on a constant gradient: the bias-corrected moments are exactly g and g^2, so every
 * step moves lr g / (|g| + eps); on a quadratic p^2/2 from p_0 = 1 the first step is lr
 * (Adam's first step is lr sign(g) up to eps). */
static void adam_closed_form(void **state)
{
    rb_context *ctx = *state;
    rb_optimizer_config c = rb_optimizer_config_default(RB_OPT_ADAM);
    rb_optimizer o;
    RB_CHECK(ctx, rb_optimizer_init(ctx, &o, &c, 3));
    double p[3] = {0, 0, 0}, g[3] = {2.0, -1e-3, 0.0};
    for (int t = 1; t <= 25; t++) {
        RB_CHECK(ctx, rb_optimizer_step(ctx, &o, p, g, 0.01));
        for (int i = 0; i < 3; i++) assert_true(fabs(p[i] + t * 0.01 * g[i] / (fabs(g[i]) + 1e-8)) < 1e-12);
    }
    rb_optimizer_release(ctx, &o);
    RB_CHECK(ctx, rb_optimizer_init(ctx, &o, &c, 1));
    double x = 1.0, gx = x;
    RB_CHECK(ctx, rb_optimizer_step(ctx, &o, &x, &gx, 0.05));
    assert_true(fabs(x - (1.0 - 0.05 / (1 + 1e-8))) < 1e-15);
    rb_optimizer_release(ctx, &o);
    c.eps = 0;
    RB_EXPECT(ctx, RB_EINVAL, "eps", rb_optimizer_init(ctx, &o, &c, 1));
    rb_optimizer_kind k;
    RB_CHECK(ctx, rb_optimizer_parse(ctx, "adam", &k));
    assert_int_equal(k, RB_OPT_ADAM);
    RB_EXPECT(ctx, RB_EINVAL, "unknown optimiser 'rmsprop'", rb_optimizer_parse(ctx, "rmsprop", &k));
}

static void schedules(void **state)
{
    rb_context *ctx = *state;
    rb_lr_schedule s = {.kind = RB_LR_COSINE, .base = 0.1, .period = 100, .floor = 0.0};
    RB_CHECK(ctx, rb_lr_check(ctx, &s));
    assert_true(rb_lr_at(&s, 0) == 0.1);
    assert_true(fabs(rb_lr_at(&s, 50) - 0.05) < 1e-17);
    assert_true(fabs(rb_lr_at(&s, 25) - 0.05 * (1 + sqrt(0.5))) < 1e-16);
    assert_true(rb_lr_at(&s, 100) == 0.0 && rb_lr_at(&s, 1000) == 0.0);
    s = (rb_lr_schedule){.kind = RB_LR_STEP, .base = 0.1, .period = 30, .gamma = 0.1};
    RB_CHECK(ctx, rb_lr_check(ctx, &s));
    assert_true(rb_lr_at(&s, 29) == 0.1);
    assert_true(fabs(rb_lr_at(&s, 30) - 0.01) < 1e-17 && fabs(rb_lr_at(&s, 65) - 0.001) < 1e-17);
    s.gamma = 0;
    RB_EXPECT(ctx, RB_EINVAL, "gamma", rb_lr_check(ctx, &s));
    s.gamma = 0.5, s.period = 0;
    RB_EXPECT(ctx, RB_EINVAL, "period", rb_lr_check(ctx, &s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(xent_two_classes, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(xent_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(mse_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(sgd_momentum_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(adam_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(schedules, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
