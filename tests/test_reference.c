/* test_reference.c — the LAPACK bridge against closed forms: eigenvalues of
 * the discrete Laplacian and of the damped-Jacobi iteration matrix, the exact
 * discrete solution of a sine problem, dense vs banded solves, bad input. */
#include "testkit.h"

#include <math.h>

static const double pi = 3.14159265358979323846;

/* 1D: eigenvalues of -Delta_h are (4/h^2) sin^2(k pi h / 2), k = 1..n. */
static void test_laplacian_spectrum_1d(void **state)
{
    rb_context *ctx = *state;
    size_t n = 40;
    double h = 1.0 / (double)(n + 1);
    rb_op *A;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 1, h, &A));
    double *M = test_malloc(n * n * sizeof *M), *w = test_malloc(n * sizeof *w);
    RB_CHECK(ctx, rb_ref_assemble(ctx, A, rb_shape_vec(n), M));
    RB_CHECK(ctx, rb_ref_eig_sym(ctx, M, n, w));
    for (size_t k = 1; k <= n; k++) {
        double want = 4 / (h * h) * pow(sin((double)k * pi * h / 2), 2);
        assert_true(fabs(w[k - 1] - want) <= 1e-12 * want * n);
    }
    test_free(M), test_free(w);
    rb_op_free(ctx, A);
}

/* 2D: the damped-Jacobi iteration matrix S = I - omega D^{-1} A has eigenvalues
 * 1 - (2 omega / d) sum_i sin^2(k_i pi h / 2). */
static void test_jacobi_spectrum_2d(void **state)
{
    rb_context *ctx = *state;
    size_t m = 9, n = m * m;
    double h = 1.0 / (double)(m + 1), omega = 0.8, diag = 4 / (h * h);
    rb_op *A;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, h, &A));
    double *M = test_malloc(n * n * sizeof *M), *w = test_malloc(n * sizeof *w), *want = test_malloc(n * sizeof *want);
    RB_CHECK(ctx, rb_ref_assemble(ctx, A, rb_shape_2d(1, 1, m, m), M));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) M[i * n + j] = (i == j) - omega / diag * M[i * n + j];
    RB_CHECK(ctx, rb_ref_eig_sym(ctx, M, n, w));
    for (size_t k = 1; k <= m; k++)
        for (size_t l = 1; l <= m; l++)
            want[(k - 1) * m + l - 1] = 1 - omega * (pow(sin(k * pi * h / 2), 2) + pow(sin(l * pi * h / 2), 2));
    /* sort the closed forms ascending (insertion sort: n = 81) */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && want[j - 1] > want[j]; j--) {
            double t = want[j];
            want[j] = want[j - 1], want[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) assert_true(fabs(w[i] - want[i]) <= 1e-12);
    test_free(M), test_free(w), test_free(want);
    rb_op_free(ctx, A);
}

/* f = d pi^2 prod sin(pi x_i): the discrete solution is c_h prod sin(pi x_i) with
 * c_h = d pi^2 h^2 / (4 sum_i sin^2(pi h / 2)). Banded Cholesky reproduces it; the
 * dense LU solve agrees. */
static void test_exact_discrete_solution(void **state)
{
    rb_context *ctx = *state;
    for (int d = 1; d <= 3; d++) {
        size_t m = d == 3 ? 7 : d == 2 ? 15 : 63;
        double h = 1.0 / (double)(m + 1);
        double c_h = d * pi * pi * h * h / (4 * d * pow(sin(pi * h / 2), 2));
        rb_shape s = {1, 1, d == 3 ? m : 1, d >= 2 ? m : 1, m};
        rb_op *A;
        RB_CHECK(ctx, rb_op_laplacian_create(ctx, d, h, &A));
        rb_tensor f, u, v;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &v, s));
        for (size_t k = 0; k < s.d; k++)
            for (size_t j = 0; j < s.h; j++)
                for (size_t i = 0; i < m; i++) {
                    double p = sin(pi * (i + 1) * h) * (d >= 2 ? sin(pi * (j + 1) * h) : 1) * (d == 3 ? sin(pi * (k + 1) * h) : 1);
                    RB_AT(&f, 0, 0, k, j, i) = d * pi * pi * p;
                    RB_AT(&v, 0, 0, k, j, i) = c_h * p;
                }
        size_t kd;
        RB_CHECK(ctx, rb_ref_bandwidth(ctx, A, s, &kd));
        assert_int_equal(kd, d == 1 ? 1 : d == 2 ? m : m * m);
        RB_CHECK(ctx, rb_ref_solve_spd_banded(ctx, A, &f, &u));
        double err = rb_tensor_max_rel_diff(&u, &v);
        if (!(err <= 1e-12)) fail_msg("%dD: dpbsv vs exact discrete solution %.3g", d, err);
        size_t n = rb_shape_count(s);
        double *M = test_malloc(n * n * sizeof *M);
        RB_CHECK(ctx, rb_ref_assemble(ctx, A, s, M));
        RB_CHECK(ctx, rb_ref_solve_dense(ctx, M, n, f.data, v.data));
        err = rb_tensor_max_rel_diff(&u, &v);
        if (!(err <= 1e-12)) fail_msg("%dD: dpbsv vs dgesv %.3g", d, err);
        test_free(M);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &v);
        rb_op_free(ctx, A);
    }
}

/* dgeev: a rotation has eigenvalues +-i; a triangular matrix its diagonal. */
static void test_general_eigenvalues(void **state)
{
    rb_context *ctx = *state;
    double R[4] = {0, -1, 1, 0}, wr[3], wi[3];
    RB_CHECK(ctx, rb_ref_eig_general(ctx, R, 2, wr, wi));
    assert_float_equal(fabs(wi[0]), 1.0, 1e-15);
    assert_float_equal(wi[0] + wi[1], 0.0, 1e-15);
    assert_float_equal(wr[0], 0.0, 1e-15);
    double T[9] = {3, 1, 2, 0, -1, 5, 0, 0, 0.5};
    RB_CHECK(ctx, rb_ref_eig_general(ctx, T, 3, wr, wi));
    double prod = wr[0] * wr[1] * wr[2], sum = wr[0] + wr[1] + wr[2];
    assert_float_equal(prod, -1.5, 1e-14);
    assert_float_equal(sum, 2.5, 1e-14);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *t, *A;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &t));
    double M[4] = {1, 0, 0, 1}, w[2];
    RB_EXPECT(ctx, RB_EINVAL, "not linear", rb_ref_assemble(ctx, t, rb_shape_vec(2), M));
    rb_op_free(ctx, t);
    /* -A is negative definite: dpbsv refuses with its meaning */
    double neg[3] = {-1, 2, -1};
    for (int i = 0; i < 3; i++) neg[i] = -neg[i];
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 1, RB_STENCIL_FULL, neg, &A));
    rb_tensor b, x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, rb_shape_vec(5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_vec(5)));
    rb_tensor_fill(ctx, &b, 1.0);
    rb_tensor_fill(ctx, &x, 9.0);
    RB_EXPECT(ctx, RB_ELAPACK, "not positive definite", rb_ref_solve_spd_banded(ctx, A, &b, &x));
    assert_true(x.data[0] == 9.0);
    rb_op_free(ctx, A);
    M[1] = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "M[1]", rb_ref_eig_sym(ctx, M, 2, w));
    double S[4] = {1, 2, 2, 4}, xs[2], bs[2] = {1, 1};
    RB_EXPECT(ctx, RB_ELAPACK, "singular", rb_ref_solve_dense(ctx, S, 2, bs, xs));
    RB_EXPECT(ctx, RB_EINVAL, "n = 0", rb_ref_eig_sym(ctx, S, 0, w));
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_laplacian_spectrum_1d, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_jacobi_spectrum_2d, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_exact_discrete_solution, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_general_eigenvalues, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("reference", tests, NULL, NULL);
}
