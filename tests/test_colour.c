/* test_colour.c — red-black half-sweeps as residual steps restricted to one
 * colour: conformance (fused vs generic, vjp by finite differences), and one
 * red-black Gauss-Seidel sweep against the same sweep done with the
 * LAPACK-assembled dense matrix. */
#include "conformance.h"

#include <math.h>
#include <stdio.h>

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++)
        for (int c = 0; c < 2; c++) {
            size_t n = dims == 3 ? 5 : 7;
            rb_shape s = {dims == 2 ? 2 : 1, 1, dims == 3 ? n : 1, dims >= 2 ? n + 1 : 1, n};
            rb_tensor b;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
            rb_test_rng r = {(uint64_t)(dims * 10 + c)};
            rb_test_fill(&r, &b, -1, 1);
            rb_op *A, *J, *C;
            RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, 0.25, &A));
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, c, &C));
            char label[64];
            snprintf(label, sizeof label, "colour %d of Jacobi, %dD", c, dims);
            rb_conformance_case cc = rb_conformance_default(C, s, label);
            rb_conformance_run(ctx, &cc);
            rb_op_free(ctx, C), rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b);
        }
}

/* Oracle: the dense red-black Gauss-Seidel sweep with the assembled matrix. */
static void test_rbgs_against_dense(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++) {
        size_t m = dims == 3 ? 5 : dims == 2 ? 9 : 15;
        rb_shape s = {1, 1, dims == 3 ? m : 1, dims >= 2 ? m : 1, m};
        size_t n = rb_shape_count(s);
        double h = 1.0 / (double)(m + 1);
        rb_tensor b, u;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
        rb_test_rng r = {7};
        rb_test_fill(&r, &b, -1, 1);
        rb_test_fill(&r, &u, -1, 1);
        rb_op *A, *J, *red, *black;
        RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, h, &A));
        RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &red));
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &black));
        double *M = test_malloc(n * n * sizeof *M), *v = test_malloc(n * sizeof *v);
        RB_CHECK(ctx, rb_ref_assemble(ctx, A, s, M));
        for (size_t i = 0; i < n; i++) v[i] = u.data[i];
        for (int colour = 0; colour < 2; colour++)
            for (size_t k = 0; k < s.d; k++)
                for (size_t j = 0; j < s.h; j++)
                    for (size_t i = 0; i < m; i++) {
                        if ((i + j + k) % 2 != (size_t)colour) continue;
                        size_t p = (k * s.h + j) * m + i;
                        double acc = b.data[p];
                        for (size_t q = 0; q < n; q++)
                            if (q != p) acc -= M[p * n + q] * v[q];
                        v[p] = acc / M[p * n + p];
                    }
        rb_arena work = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(red, s)));
        RB_CHECK(ctx, rb_residual_step(ctx, red, 1.0, &u, &u, &work));
        RB_CHECK(ctx, rb_residual_step(ctx, black, 1.0, &u, &u, &work));
        rb_tensor vt;
        rb_tensor_view(ctx, &vt, v, s);
        double err = rb_tensor_max_rel_diff(&u, &vt);
        if (!(err <= 1e-13)) fail_msg("%dD red-black sweep vs dense Gauss-Seidel: %.3g", dims, err);
        test_free(M), test_free(v);
        rb_arena_release(ctx, &work);
        rb_op_free(ctx, red), rb_op_free(ctx, black), rb_op_free(ctx, J), rb_op_free(ctx, A);
        rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &u);
    }
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *a, *c = NULL;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &a));
    RB_EXPECT(ctx, RB_EINVAL, "colour = 2", rb_op_colour_create(ctx, a, 2, &c));
    RB_EXPECT(ctx, RB_ENULL, "base", rb_op_colour_create(ctx, NULL, 0, &c));
    assert_null(c);
    rb_op_free(ctx, a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_rbgs_against_dense, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("colour", tests, NULL, NULL);
}
