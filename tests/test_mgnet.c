/* test_mgnet.c — MgNet (the down-leg of the network-mode cycle as a classifier) against its
 * oracles: the operator conformance suite (vjp and every parameter gradient of the whole
 * classifier against central differences); apply over more samples than the cycle's batch
 * against taped forwards of a few samples at a time (<= 1e-14); the model's parameter count
 * against the layer-by-layer formula; bad input. (The trainer and its checkpoints take the
 * flat parameter vector as for every model: tests/test_trainer.c.) */
#include "testkit.h"
#include "conformance.h"

#include <math.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_batches, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_model, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
