/* test_unet.c — the U-Net reading of the V-cycle (unet.h) against its oracles:
 *   central finite differences: EVERY parameter of the flat vector (lifting, A, B, R, P of
 *     every level, projection) and every input entry, for V-, W- and F-cycles, 1D/2D/3D,
 *     tanh, GELU and identity activations, several cycles, batch > 1;
 *   the operator conformance suite on rb_unet_op (vjp and parameter gradients against
 *     central differences, shapes refused, the taped path), and on the owning, chunked
 *     rb_op_unet_create (any batch: chunks padded, one taped net per chunk);
 *   the chunked operator against rb_unet_forward / rb_unet_backward on one net holding the
 *     whole batch (the PyTorch-checked path): outputs and gradients to 1e-14 / 1e-13;
 *     central differences, shapes refused, the taped path);
 *   the flat vector is the network: rb_optimizer steps it and the loss falls;
 *   batch-normalised smoothers: every parameter, gamma and beta included, against central
 *     differences (training mode, batch statistics, each batch norm applied several times);
 *   bad input.
 * PyTorch float64 checks outputs and gradients too (tests/peer_torch_unet.py). */
#include "testkit.h"
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Normalised smoothers (vnet.h): gamma and beta of two batch norms per level join the flat
 * vector, and every parameter's gradient matches central differences. The chunked operator
 * refuses them (its chunks would keep statistics of their own). */
static void test_normalised_fd(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    rb_unet *plain = NULL, *net = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &plain));
    c.norm = RB_NORM_BATCH;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    assert_int_equal(rb_unet_nparams(net), rb_unet_nparams(plain) + c.levels * 2 * 2 * c.channels);
    assert_int_equal(rb_vnet_nbn(rb_unet_vnet(net)), 2 * c.levels);
    rb_unet_free(ctx, plain), rb_unet_free(ctx, net);
    fd_case(ctx, c, "normalised 2D 2->2->2 tanh V(1,1), 2 cycles");
    rb_op *op = NULL;
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "does not share batch-norm statistics", rb_op_unet_create(ctx, &c, &op));
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

/* The owning operator passes the suite on 3 samples in chunks of 2 (a padded chunk, two tapes). */
static void test_owning_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    rb_op *op = NULL;
    RB_CHECK(ctx, rb_op_unet_create(ctx, &c, &op));
    rb_shape in = rb_shape_2d(3, c.in_channels, c.n, c.n);
    rb_conformance_case cc = rb_conformance_default(op, in, "unet (owning, chunks of 2)");
    rb_conformance_run(ctx, &cc);
    rb_shape out;
    RB_EXPECT(ctx, RB_ESHAPE, "N samples of", rb_op_shape(ctx, op, rb_shape_2d(3, 1, c.n, c.n), &out));
    rb_op_free(ctx, op);
}

static double max_rel(const double *a, const double *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), m = fmax(m, fabs(b[i]));
    return d / m;
}

/* Oracle: rb_unet_forward / rb_unet_backward (PyTorch-checked) on one net of batch N = 5,
 * against the owning operator in chunks of 2 (and of 8: one padded chunk), after its flat
 * vector was changed (the op reads its own vector). */
static void test_owning_equals_forward(void **state)
{
    rb_context *ctx = *state;
    rb_unet_config c = small();
    c.batch = 5;
    rb_unet *net = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    const size_t np = rb_unet_nparams(net);
    rb_tensor x, y, dy, dx, y2, dx2;
    alloc_io(ctx, net, &x, &dx, &y, &dy);
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y2, y.shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx2, x.shape));
    rb_test_rng r = {91};
    rb_test_fill(&r, &x, -1, 1);
    rb_test_fill(&r, &dy, -1, 1);
    double *grad = calloc(np, sizeof(double)), *init = malloc(np * sizeof(double));
    assert_non_null(grad), assert_non_null(init);
    memcpy(init, rb_unet_params(net), np * sizeof(double));
    const size_t chunks[2] = {2, 8};
    for (int k = 0; k < 2; k++) {
        rb_unet_config oc = c;
        oc.batch = chunks[k];
        rb_op *op = NULL;
        RB_CHECK(ctx, rb_op_unet_create(ctx, &oc, &op));
        assert_int_equal(op->nparams, np);
        assert_memory_equal(op->params, init, np * sizeof(double)); /* the same initialisation */
        for (size_t i = 0; i < np; i++) op->params[i] *= 1.0 + 0.25 * sin((double)i);
        memcpy(rb_unet_params(net), op->params, np * sizeof(double));
        RB_CHECK(ctx, rb_unet_forward(ctx, net, &x, &y, true));
        rb_unet_zero_grad(net);
        RB_CHECK(ctx, rb_unet_backward(ctx, net, &dy, &dx));
        /* untaped and taped through the op */
        rb_arena work = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_backward_workspace(op, x.shape) + 4096));
        RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y2, &work));
        double ey = max_rel(y2.data, y.data, rb_tensor_count(&y));
        if (!(ey <= 1e-14)) fail_msg("chunks of %zu: apply differs from rb_unet_forward by %.3g", chunks[k], ey);
        void *tape = malloc(rb_op_tape_bytes(op, x.shape));
        assert_non_null(tape);
        memset(grad, 0, np * sizeof(double));
        memset(dx2.data, 0, rb_tensor_count(&dx2) * sizeof(double));
        RB_CHECK(ctx, rb_op_forward(ctx, op, &x, &y2, tape, &work));
        RB_CHECK(ctx, rb_op_backward(ctx, op, &x, &y2, tape, &dy, 1.0, &dx2, grad, &work));
        const double eg = max_rel(grad, rb_unet_grad(net), np), ex = max_rel(dx2.data, dx.data, rb_tensor_count(&dx));
        if (!(eg <= 1e-13 && ex <= 1e-13)) fail_msg("chunks of %zu: dtheta differs by %.3g, dx by %.3g", chunks[k], eg, ex);
        print_message("chunks of %zu vs one batch of 5: y %.2g, dtheta %.2g, dx %.2g (relative to the largest)\n", chunks[k], ey,
                      eg, ex);
        free(tape);
        rb_arena_release(ctx, &work);
        rb_op_free(ctx, op);
    }
    free(grad), free(init);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy), rb_tensor_release(ctx, &dx);
    rb_tensor_release(ctx, &y2), rb_tensor_release(ctx, &dx2);
    rb_unet_free(ctx, net);
}

/* The U-Net as a model (RB_MODEL_UNET): the trainer's shapes, and refusals naming the problem. */
static void test_model(void **state)
{
    rb_context *ctx = *state;
    rb_model_desc d = rb_model_desc_default(RB_MODEL_UNET);
    d.in_h = d.in_w = 15, d.outputs = 225, d.width = 3;
    rb_model *m = NULL;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    rb_shape out;
    RB_CHECK(ctx, rb_op_shape(ctx, m->net, rb_shape_2d(40, 2, 15, 15), &out));
    assert_true(rb_shape_equal(out, rb_shape_2d(40, 1, 15, 15)));
    rb_unet_config c = rb_unet_config_default();
    c.n = 15, c.levels = 0, c.channels = 3, c.seed = 1;
    rb_unet *net = NULL;
    RB_CHECK(ctx, rb_unet_create(ctx, &c, &net));
    assert_int_equal(rb_unet_config_of(net)->levels, 3); /* 15, 7, 3 */
    assert_int_equal(m->net->nparams, rb_unet_nparams(net));
    rb_unet_free(ctx, net);
    rb_model_free(ctx, m);
    d.outputs = 100;
    RB_EXPECT(ctx, RB_EINVAL, "n x n grids", rb_model_create(ctx, &d, &m));
    d.outputs = 225, d.in_w = 7;
    RB_EXPECT(ctx, RB_EINVAL, "n x n grids", rb_model_create(ctx, &d, &m));
    rb_model_kind k;
    RB_CHECK(ctx, rb_model_kind_parse(ctx, "unet", &k));
    assert_int_equal(k, RB_MODEL_UNET);
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
        cmocka_unit_test_setup_teardown(test_normalised_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_owning_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_owning_equals_forward, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_model, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_optimizer_steps_flat_vector, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
