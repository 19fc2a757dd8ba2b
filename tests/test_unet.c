/* test_unet.c — the U-Net reading of the V-cycle (unet.h) against its oracles:
 *   central finite differences: EVERY parameter of the flat vector (lifting, A, B, R, P of
 *     every level, projection) and every input entry, for V-, W- and F-cycles, 1D/2D/3D,
 *     tanh, GELU and identity activations, several cycles, batch > 1;
 *   the operator conformance suite on rb_unet_op (vjp and parameter gradients against
 *     central differences, shapes refused, the taped path);
 *   the flat vector is the network: rb_optimizer steps it and the loss falls;
 *   bad input.
 * PyTorch float64 checks outputs and gradients too (tests/peer_torch_unet.py). */
#include "testkit.h"
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* L = <w, U(x)> */
static double loss(rb_context *ctx, rb_unet *net, const rb_tensor *x, const rb_tensor *w, rb_tensor *y)
{
    RB_CHECK(ctx, rb_unet_forward(ctx, net, x, y, false));
    double s = 0;
    for (size_t i = 0; i < rb_tensor_count(y); i++) s += w->data[i] * y->data[i];
    return s;
}

static double fd_check(rb_context *ctx, rb_unet *net, rb_tensor *x, const rb_tensor *w, rb_tensor *y, double *v, double g,
                       const char *label, const char *what, size_t i)
{
    const double eps = 1e-5, keep = *v;
    *v = keep + eps;
    double lp = loss(ctx, net, x, w, y);
    *v = keep - eps;
    double lm = loss(ctx, net, x, w, y);
    *v = keep;
    double fd = (lp - lm) / (2 * eps), err = fabs(fd - g) / fmax(fabs(fd), 1e-3); /* absolute below 1e-3: FD rounding and truncation ~1e-10 */
    if (err >= 1e-6) fail_msg("%s: d/d%s[%zu]: backprop %.10e, FD %.10e", label, what, i, g, fd);
    return err;
}

/* a, b of the net's input shape (b may be NULL), c, d of its output shape */
static void alloc_io(rb_context *ctx, const rb_unet *net, rb_tensor *a, rb_tensor *b, rb_tensor *c, rb_tensor *d)
{
    RB_CHECK(ctx, rb_tensor_alloc(ctx, a, rb_unet_in_shape(net)));
    if (b != NULL) RB_CHECK(ctx, rb_tensor_alloc(ctx, b, rb_unet_in_shape(net)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, c, rb_unet_out_shape(net)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, d, rb_unet_out_shape(net)));
}

static void fd_case(rb_context *ctx, rb_unet_config c, const char *label)
{
    rb_unet *net = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    rb_tensor x, dx, y, w;
    alloc_io(ctx, net, &x, &dx, &y, &w);
    rb_test_rng r = {c.seed + 77};
    rb_test_fill(&r, &x, -1, 1);
    rb_test_fill(&r, &w, -1, 1);
    /* the gradient accumulates: two backward passes give twice one */
    rb_unet_zero_grad(net);
    for (int k = 0; k < 2; k++) {
        RB_CHECK(ctx, rb_unet_forward(ctx, net, &x, &y, true));
        RB_CHECK(ctx, rb_unet_backward(ctx, net, &w, &dx));
    }
    const size_t np = rb_unet_nparams(net);
    double *g = malloc(np * sizeof(double));
    assert_non_null(g);
    for (size_t i = 0; i < np; i++) g[i] = 0.5 * rb_unet_grad(net)[i];
    double worst = 0;
    for (size_t i = 0; i < np; i++) worst = fmax(worst, fd_check(ctx, net, &x, &w, &y, &rb_unet_params(net)[i], g[i], label, "theta", i));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) worst = fmax(worst, fd_check(ctx, net, &x, &w, &y, &x.data[i], dx.data[i], label, "x", i));
    print_message("%s: %zu parameters and %zu inputs vs central FD, worst rel err %.2e\n", label, np, rb_tensor_count(&x), worst);
    free(g);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &w);
    rb_unet_free(ctx, net);
}

static rb_unet_config small(void)
{
    rb_unet_config c = rb_unet_config_default();
    c.n = 7, c.levels = 2, c.in_channels = 2, c.channels = 2, c.out_channels = 2, c.batch = 2, c.seed = 3;
    return c;
}

static void test_gradients_fd(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    fd_case(ctx, c, "2D 2->2->2 tanh V(1,1), 2 cycles");
    c.n = 15, c.levels = 3, c.cycle = RB_CYCLE_W, c.pre = 2, c.post = 1, c.cycles = 1, c.out_channels = 1, c.seed = 4;
    fd_case(ctx, c, "2D W(2,1), 3 levels");
    c = small();
    c.cycle = RB_CYCLE_F, c.levels = 3, c.n = 15, c.act = RB_ACT_GELU, c.cycles = 3, c.batch = 1, c.seed = 5;
    fd_case(ctx, c, "2D F(1,1) gelu, 3 cycles");
    c = small();
    c.dim = 1, c.n = 31, c.levels = 4, c.channels = 3, c.in_channels = 1, c.act = RB_ACT_IDENTITY, c.seed = 6;
    fd_case(ctx, c, "1D 1->3->2 identity");
    c = small();
    c.dim = 3, c.batch = 1, c.in_channels = 1, c.out_channels = 1, c.seed = 7;
    fd_case(ctx, c, "3D tanh");
}

/* The network as an rb_op passes the operator conformance suite. */
static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    rb_unet *net = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    rb_conformance_case cc = rb_conformance_default(rb_unet_op(net), rb_unet_in_shape(net), "unet");
    rb_conformance_run(ctx, &cc);
    rb_unet_free(ctx, net);
}

/* The flat vector is what the forward reads and what rb_optimizer steps: a student net
 * (another seed) learns a teacher net's map on a fixed batch, its MSE falls 10-fold. */
static void test_optimizer_steps_flat_vector(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    c.n = 15, c.levels = 3, c.batch = 4, c.out_channels = 1;
    rb_unet *teacher = NULL, *student = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &teacher));
    c.seed = 99;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &student));
    rb_tensor x, t, y, dy;
    alloc_io(ctx, student, &x, NULL, &t, &y);
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, rb_unet_out_shape(student)));
    rb_test_rng r = {21};
    rb_test_fill(&r, &x, -1, 1);
    RB_CHECK(ctx, rb_unet_forward(ctx, teacher, &x, &t, false));
    rb_optimizer_config oc = rb_optimizer_config_default(RB_OPT_ADAM);
    rb_optimizer opt;
    RB_CHECK(ctx, rb_optimizer_init(ctx, &opt, &oc, rb_unet_nparams(student)));
    double first = 0, last = 0;
    for (int k = 0; k < 150; k++) {
        RB_CHECK(ctx, rb_unet_forward(ctx, student, &x, &y, true));
        RB_CHECK(ctx, rb_loss_mse(ctx, &y, t.data, &last, &dy));
        if (k == 0) first = last;
        rb_unet_zero_grad(student);
        RB_CHECK(ctx, rb_unet_backward(ctx, student, &dy, NULL));
        RB_CHECK(ctx, rb_optimizer_step(ctx, &opt, rb_unet_params(student), rb_unet_grad(student), 0.01));
    }
    print_message("student learns teacher: MSE %.3e -> %.3e after 150 Adam steps\n", first, last);
    assert_true(last < 0.1 * first);
    rb_optimizer_release(ctx, &opt);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &t), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_unet_free(ctx, teacher), rb_unet_free(ctx, student);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    rb_unet *net = NULL;
    c.channels = 0;
    RB_EXPECT(ctx, RB_EINVAL, "each must be >= 1", rb_unet_create(ctx, &c, &net));
    c = small(), c.pre = 0;
    RB_EXPECT(ctx, RB_EINVAL, "the coarsest level is smoothed", rb_unet_create(ctx, &c, &net));
    c = small(), c.cycles = 0;
    RB_EXPECT(ctx, RB_EINVAL, "cycles = 0", rb_unet_create(ctx, &c, &net));
    c = small(), c.n = 8;
    RB_EXPECT(ctx, RB_EINVAL, "does not coarsen", rb_unet_create(ctx, &c, &net));
    assert_null(net);
    c = small();
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    rb_tensor x, y, wrong;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_unet_in_shape(net)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &wrong, rb_shape_2d(2, 1, 7, 7)));
    RB_EXPECT(ctx, RB_ESHAPE, "the net wants", rb_unet_forward(ctx, net, &wrong, &y, false));
    RB_EXPECT(ctx, RB_ESHAPE, "the net wants", rb_unet_forward(ctx, net, &x, &wrong, false));
    RB_EXPECT(ctx, RB_EINVAL, "no taped", rb_unet_backward(ctx, net, &y, NULL));
    RB_CHECK(ctx, rb_unet_forward(ctx, net, &x, &y, false));
    RB_EXPECT(ctx, RB_EINVAL, "no taped", rb_unet_backward(ctx, net, &y, NULL));
    RB_CHECK(ctx, rb_unet_forward(ctx, net, &x, &y, true));
    RB_EXPECT(ctx, RB_ESHAPE, "the net wants", rb_unet_backward(ctx, net, &y, &wrong));
    RB_CHECK(ctx, rb_unet_backward(ctx, net, &y, &x));
    RB_EXPECT(ctx, RB_EINVAL, "no taped", rb_unet_backward(ctx, net, &y, NULL)); /* the tape was consumed */
    RB_EXPECT(ctx, RB_ENULL, "net is NULL", rb_unet_forward(ctx, NULL, &x, &y, false));
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &wrong);
    rb_unet_free(ctx, net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gradients_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_optimizer_steps_flat_vector, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
