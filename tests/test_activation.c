/* test_activation.c — activations: closed-form values, and the conformance
 * suite (vjp against central finite differences). */
#include "conformance.h"

#include <math.h>
#include <string.h>

static void test_values_closed_form(void **state)
{
    rb_context *ctx = *state;
    double xs[] = {-2.0, -0.5, 0.25, 1.5};
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_view(ctx, &x, xs, rb_shape_vec(4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_vec(4)));
    for (int a = 0; a < RB_ACT_COUNT; a++) {
        rb_op *op;
        RB_CHECK(ctx, rb_op_activation_create(ctx, (rb_activation)a, &op));
        RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, NULL));
        for (int i = 0; i < 4; i++) {
            double v = xs[i], want;
            switch (a) {
            case RB_ACT_RELU: want = v > 0 ? v : 0; break;
            case RB_ACT_TANH: want = (exp(2 * v) - 1) / (exp(2 * v) + 1); break;
            /* GELU: x * Phi(x), Phi from the complementary error function */
            case RB_ACT_GELU: want = v * 0.5 * erfc(-v / sqrt(2.0)); break;
            /* sigmoid: (1 + tanh(x/2)) / 2 */
            case RB_ACT_SIGMOID: want = 0.5 * (1 + tanh(v / 2)); break;
            default: want = v;
            }
            assert_float_equal(y.data[i], want, 1e-15 * (1 + fabs(want)));
        }
        rb_op_free(ctx, op);
    }
    /* GELU(1) = Phi(1) = 0.8413447460685429 (tables of the normal distribution) */
    rb_op *gelu;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_GELU, &gelu));
    double one = 1.0, out = 0;
    rb_tensor t1, t2;
    rb_tensor_view(ctx, &t1, &one, rb_shape_vec(1));
    rb_tensor_view(ctx, &t2, &out, rb_shape_vec(1));
    RB_CHECK(ctx, rb_op_apply(ctx, gelu, &t1, &t2, NULL));
    assert_float_equal(out, 0.8413447460685429, 1e-15);
    rb_op_free(ctx, gelu);
    rb_tensor_release(ctx, &y);
}

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    for (int a = 0; a < RB_ACT_COUNT; a++) {
        rb_op *op;
        RB_CHECK(ctx, rb_op_activation_create(ctx, (rb_activation)a, &op));
        rb_conformance_case c = rb_conformance_default(op, rb_shape_2d(2, 3, 4, 5), rb_activation_name(a));
        c.lo = -3, c.hi = 3;
        c.kink_gap = a == RB_ACT_RELU ? 1e-3 : 0;
        rb_conformance_run(ctx, &c);
        rb_op_free(ctx, op);
    }
}

static void test_parse_and_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_activation a;
    RB_CHECK(ctx, rb_activation_parse(ctx, "gelu", &a));
    assert_int_equal(a, RB_ACT_GELU);
    RB_EXPECT(ctx, RB_EINVAL, "swish", rb_activation_parse(ctx, "swish", &a));
    rb_op *op = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "act = 99", rb_op_activation_create(ctx, (rb_activation)99, &op));
    assert_null(op);
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_activation_create(ctx, RB_ACT_RELU, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_values_closed_form, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_parse_and_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("activation", tests, NULL, NULL);
}
