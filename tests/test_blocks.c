/* test_blocks.c — sums, concatenation, the highway gate, every block kind and
 * whole models: the conformance suite (finite-difference gradients of inputs
 * and parameters, taped vs untaped passes), closed forms, parameter counts
 * against the architecture's arithmetic, and refusals. */
#include "testkit.h"
#include "conformance.h"

#include <math.h>

static rb_op *conv(rb_context *ctx, size_t cin, size_t cout, int k, int stride, rb_test_rng *r)
{
    rb_conv_desc d = rb_conv_desc_default(2, cin, cout);
    d.ksize = k, d.stride = stride, d.grid = RB_GRID_CELL;
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, NULL, &op));
    for (size_t i = 0; i < op->nparams; i++) op->params[i] = rb_test_uniform(r, -0.4, 0.4);
    return op;
}

static rb_op *act(rb_context *ctx, rb_activation a)
{
    rb_op *op;
    RB_CHECK(ctx, rb_op_activation_create(ctx, a, &op));
    return op;
}

static void sum_concat_gate(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng r = {3};
    rb_shape in = rb_shape_2d(2, 2, 4, 4);
    /* sum: 0.5 A(x) - 2 B(x) with a stride-2 projection on both sides */
    rb_op *S, *C, *G, *H;
    RB_CHECK(ctx, rb_op_sum_create(ctx, conv(ctx, 2, 3, 1, 2, &r), conv(ctx, 2, 3, 3, 2, &r), 0.5, -2.0, &S));
    rb_conformance_case c = rb_conformance_default(S, in, "sum of a 1x1 and a 3x3 stride-2 conv");
    rb_conformance_run(ctx, &c);
    /* closed form: sum of two identities scaled is (a + b) x */
    rb_op *S2;
    RB_CHECK(ctx, rb_op_sum_create(ctx, act(ctx, RB_ACT_IDENTITY), act(ctx, RB_ACT_IDENTITY), 0.25, 2.0, &S2));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, in));
    rb_test_fill(&r, &x, -1, 1);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, 1 << 20));
    RB_CHECK(ctx, rb_op_apply(ctx, S2, &x, &y, &work));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) assert_true(y.data[i] == 2.25 * x.data[i]);
    /* concat: [x, conv(x)] */
    rb_op *parts[2] = {conv(ctx, 2, 3, 3, 1, &r), act(ctx, RB_ACT_TANH)}, *F;
    RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 2, &F));
    RB_CHECK(ctx, rb_op_concat_create(ctx, F, &C));
    rb_shape o;
    RB_CHECK(ctx, rb_op_shape(ctx, C, in, &o));
    assert_true(rb_shape_equal(o, rb_shape_2d(2, 5, 4, 4)));
    c = rb_conformance_default(C, in, "concat [x, tanh(conv x)]");
    rb_conformance_run(ctx, &c);
    rb_tensor yc;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, o));
    RB_CHECK(ctx, rb_op_apply(ctx, C, &x, &yc, &work));
    for (size_t n = 0; n < 2; n++) /* the first 2 channels of each sample are x's */
        for (size_t i = 0; i < 32; i++) assert_true(yc.data[n * 80 + i] == x.data[n * 32 + i]);
    /* highway gate: T = sigmoid(conv), F = tanh(conv); and with T = 1 the highway layer is F(x) exactly */
    rb_op *tp[2] = {conv(ctx, 2, 2, 3, 1, &r), act(ctx, RB_ACT_SIGMOID)}, *fp[2] = {conv(ctx, 2, 2, 3, 1, &r), act(ctx, RB_ACT_TANH)};
    rb_op *T, *FF;
    RB_CHECK(ctx, rb_op_chain_create(ctx, tp, 2, &T));
    RB_CHECK(ctx, rb_op_chain_create(ctx, fp, 2, &FF));
    RB_CHECK(ctx, rb_op_highway_gate_create(ctx, FF, T, &G));
    RB_CHECK(ctx, rb_op_residual_create(ctx, G, 1.0, &H));
    c = rb_conformance_default(H, in, "highway layer");
    rb_conformance_run(ctx, &c);
    /* T(x) = sigmoid(big bias): gate ~ 1 -> y = F(x); gate ~ 0 -> y = x */
    rb_op *t1p[2] = {conv(ctx, 2, 2, 1, 1, &r), act(ctx, RB_ACT_SIGMOID)}, *f1 = act(ctx, RB_ACT_TANH), *T1, *G1, *H1;
    for (size_t i = 0; i < t1p[0]->nparams; i++) t1p[0]->params[i] = 0; /* conv weights 0: sigmoid(0) = 1/2 */
    RB_CHECK(ctx, rb_op_chain_create(ctx, t1p, 2, &T1));
    RB_CHECK(ctx, rb_op_highway_gate_create(ctx, f1, T1, &G1));
    RB_CHECK(ctx, rb_op_residual_create(ctx, G1, 1.0, &H1));
    RB_CHECK(ctx, rb_op_apply(ctx, H1, &x, &y, &work));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) /* T = 1/2: the mean of carry and transform */
        assert_true(fabs(y.data[i] - 0.5 * (tanh(x.data[i]) + x.data[i])) < 1e-15);
    /* refusals */
    rb_op *bad, *a1 = conv(ctx, 2, 3, 1, 1, &r), *a2 = conv(ctx, 2, 3, 1, 2, &r);
    RB_CHECK(ctx, rb_op_sum_create(ctx, a1, a2, 1, 1, &bad));
    RB_EXPECT(ctx, RB_ESHAPE, "sum of branches", rb_op_apply(ctx, bad, &x, &yc, &work));
    rb_op_free(ctx, bad);
    RB_EXPECT(ctx, RB_ENULL, "parts[1] is NULL", rb_op_sum_create(ctx, H1, NULL, 1, 1, &bad));
    /* a chain whose layers do not fit names the layer */
    rb_op *mis[3] = {conv(ctx, 2, 3, 3, 1, &r), act(ctx, RB_ACT_RELU), conv(ctx, 2, 2, 3, 1, &r)}, *M;
    RB_CHECK(ctx, rb_op_chain_create(ctx, mis, 3, &M));
    RB_EXPECT(ctx, RB_ESHAPE, "layer 3 of 3 (conv", rb_op_shape(ctx, M, in, &o));
    rb_op_free(ctx, M);
    rb_op_free(ctx, S), rb_op_free(ctx, S2), rb_op_free(ctx, C), rb_op_free(ctx, H), rb_op_free(ctx, H1);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &yc);
    rb_arena_release(ctx, &work);
}

/* The post-activation residual layer act(x + h F(x)) (the activation fused into the step's
 * pass) against its oracle, the residual layer chained with the activation (identical
 * branches), for ReLU and tanh: outputs bit for bit, input and parameter gradients to
 * rounding (rb_conformance_compare); then the conformance suite on the fused layer. */
static void residual_post_activation(void **state)
{
    rb_context *ctx = *state;
    const rb_shape in = rb_shape_2d(3, 2, 5, 6);
    const double h = 0.7;
    const rb_activation acts[2] = {RB_ACT_RELU, RB_ACT_TANH};
    rb_tensor x, dy;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, in));
    rb_test_rng rx = {21};
    rb_test_fill(&rx, &x, -1, 1);
    rb_test_fill(&rx, &dy, -1, 1);
    for (int a = 0; a < 2; a++) {
        rb_op *op[2];
        for (int k = 0; k < 2; k++) { /* the same branch twice: conv3 - tanh - conv3 */
            rb_test_rng r = {7};
            rb_op *p[3] = {conv(ctx, 2, 2, 3, 1, &r), act(ctx, RB_ACT_TANH), conv(ctx, 2, 2, 3, 1, &r)}, *F, *R;
            RB_CHECK(ctx, rb_op_chain_create(ctx, p, 3, &F));
            if (k == 0) {
                RB_CHECK(ctx, rb_op_residual_act_create(ctx, F, h, acts[a], &op[0]));
            } else {
                RB_CHECK(ctx, rb_op_residual_create(ctx, F, h, &R));
                rb_op *q[2] = {R, act(ctx, acts[a])};
                RB_CHECK(ctx, rb_op_chain_create(ctx, q, 2, &op[1]));
            }
        }
        double cut = rb_conformance_compare(ctx, op[0], op[1], &x, &dy, 0.0, 1e-13);
        if (acts[a] == RB_ACT_RELU) assert_true(cut > 0.2 && cut < 0.8);
        rb_conformance_case c = rb_conformance_default(op[0], in, acts[a] == RB_ACT_RELU ? "residual + relu" : "residual + tanh");
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, op[0]), rb_op_free(ctx, op[1]);
    }
    rb_op *bad, *F = act(ctx, RB_ACT_TANH);
    RB_EXPECT(ctx, RB_EINVAL, "act = 99", rb_op_residual_act_create(ctx, F, h, (rb_activation)99, &bad));
    RB_EXPECT(ctx, RB_EINVAL, "h = inf", rb_op_residual_act_create(ctx, F, INFINITY, RB_ACT_RELU, &bad));
    rb_op_free(ctx, F);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &dy);
}

/* Parameters of the reference network, counted layer by layer (the nets issue says 29,050). */
static void reference_parameter_count(void **state)
{
    rb_context *ctx = *state;
    rb_model_desc d = rb_model_desc_default(RB_MODEL_RESNET);
    rb_model *m;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    size_t stem = 9 * 16 + 2 * 16, basic16 = 2 * (9 * 16 * 16 + 2 * 16);
    size_t down = 9 * 16 * 32 + 2 * 32 + 9 * 32 * 32 + 2 * 32 + 16 * 32 + 2 * 32, head = 32 * 10 + 10;
    assert_int_equal(m->net->nparams, stem + 3 * basic16 + down + head);
    assert_int_equal(m->net->nparams, 29050);
    assert_int_equal(m->nbn, 1 + 3 * 2 + 3);
    rb_shape o;
    RB_CHECK(ctx, rb_op_shape(ctx, m->net, rb_shape_2d(128, 1, 28, 28), &o));
    assert_true(rb_shape_equal(o, rb_shape_2d(128, 1, 1, 10)));
    rb_model_free(ctx, m);
    /* the plain twin: the same layers without the shortcut's 1x1 conv and BN */
    d.kind = RB_MODEL_PLAIN;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    assert_int_equal(m->net->nparams, 29050 - (16 * 32 + 2 * 32));
    rb_model_free(ctx, m);
    /* ResNet-20 (6n+2, n = 3) on 3-channel input with projection shortcuts: the well-known 0.27M */
    d = rb_model_desc_default(RB_MODEL_RESNET);
    d.depth = 20, d.in_channels = 3, d.in_h = d.in_w = 32;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    size_t n20 = (27 * 16 + 32) + 3 * (2 * (9 * 16 * 16 + 32)) + (9 * 16 * 32 + 64 + 9 * 32 * 32 + 64 + 16 * 32 + 64) +
                 2 * (2 * (9 * 32 * 32 + 64)) + (9 * 32 * 64 + 128 + 9 * 64 * 64 + 128 + 32 * 64 + 128) +
                 2 * (2 * (9 * 64 * 64 + 128)) + 64 * 10 + 10;
    assert_int_equal(m->net->nparams, n20);
    assert_true(n20 > 270000 && n20 < 275000);
    rb_model_free(ctx, m);
    d.depth = 21;
    RB_EXPECT(ctx, RB_EINVAL, "6n+2", rb_model_create(ctx, &d, &m));
}

/* Small models of every kind pass the conformance suite end to end (BN in training mode). */
static void models_conform(void **state)
{
    rb_context *ctx = *state;
    const char *labels[] = {"resnet v1", "resnet v2", "resnet highway", "resnet dense", "plain"};
    for (int k = 0; k < 5; k++) {
        rb_model_desc d = rb_model_desc_default(k == 4 ? RB_MODEL_PLAIN : RB_MODEL_RESNET);
        d.block = k == 4 ? RB_BLOCK_V1 : (rb_block_kind)k;
        d.depth = 8, d.width = 2, d.in_h = d.in_w = 6, d.outputs = 3, d.seed = 7 + (unsigned long)k;
        rb_model *m;
        RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
        RB_CHECK(ctx, rb_model_set_mode(ctx, m, RB_BN_TRAIN));
        rb_conformance_case c = rb_conformance_default(m->net, rb_shape_2d(3, 1, 6, 6), labels[k]);
        rb_conformance_run(ctx, &c);
        rb_model_free(ctx, m);
    }
    rb_model_desc d = rb_model_desc_default(RB_MODEL_MLP);
    d.width = 5, d.depth = 3, d.in_w = 4, d.outputs = 2;
    rb_model *m;
    RB_CHECK(ctx, rb_model_create(ctx, &d, &m));
    rb_conformance_case c = rb_conformance_default(m->net, rb_shape_2d(3, 1, 1, 4), "residual MLP");
    c.kink_gap = 0.05;
    rb_conformance_run(ctx, &c);
    rb_model_free(ctx, m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(sum_concat_gate, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(residual_post_activation, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(reference_parameter_count, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(models_conform, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
