/* test_learn.c — multigrid learned by backpropagation, against its oracles:
 *   LAPACK: the spectral radius (dgeev) of the learned cycle's error propagation I - M A,
 *     assembled column by column, is below damped Jacobi's, and the measured asymptotic
 *     factor agrees with it;
 *   LAPACK: the learned cycle as a standalone solver and as a CG preconditioner converges to
 *     the banded Cholesky solution (dpbsv) to <= 1e-10;
 *   the weights carry over to a finer grid without retraining (factor still below Jacobi's);
 *   a divergent smoother is refused as a solver; bad input. */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static rb_vnet *poisson(rb_context *ctx, size_t n, size_t levels, size_t batch)
{
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = levels, c.batch = batch;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_CHECK(ctx, rb_vnet_set_poisson(ctx, net, 0.8));
    return net;
}


static rb_vnet *trained(rb_context *ctx)
{
    rb_vnet *net = poisson(ctx, 15, 2, 2); /* a two-grid cycle, learned on 15 x 15 */
    rb_learn_config lc = rb_learn_config_default();
    lc.cycles = 4, lc.steps = 80, lc.lr = 0.02;
    rb_learn_report rep;
    RB_CHECK(ctx, rb_learn_smoother(ctx, net, &lc, &rep));
    print_message("trained: loss %.4f -> %.4f in %d steps (%.2f s)\n", rep.loss_first, rep.loss_last, rep.steps, rep.seconds);
    assert_true(rep.loss_last < rep.loss_first - 0.3);
    return net;
}

static void test_learned_beats_jacobi(void **state)
{
    rb_context *ctx = *state;
    {
        rb_vnet *net = trained(ctx);
        /* measured on n = 15 (a batch-1 copy of the weights), and the LAPACK spectral radius there */
        rb_vnet *jac = poisson(ctx, 15, 2, 1), *lrn = poisson(ctx, 15, 2, 1);
        RB_CHECK(ctx, rb_vnet_copy_smoothers(ctx, net, lrn));
        double fj, fl;
        RB_CHECK(ctx, rb_vnet_measure_factor(ctx, jac, 7, 80, &fj));
        RB_CHECK(ctx, rb_vnet_measure_factor(ctx, lrn, 7, 80, &fl));
        double rj = rb_test_vnet_error_radius(ctx, jac), rl = rb_test_vnet_error_radius(ctx, lrn);
        print_message("n = 15: factor Jacobi %.4f (dgeev %.4f), learned %.4f (dgeev %.4f)\n", fj, rj, fl, rl);
        assert_true(rl < 0.7 * rj);                   /* >= 30 %% below damped Jacobi */
        assert_true(fabs(fl - rl) < 0.1 * rl + 0.01); /* the measured factor is the spectral radius */
        assert_true(fabs(fj - rj) < 0.1 * rj);
        /* a finer grid, the weights reused as they are */
        rb_vnet *jac2 = poisson(ctx, 127, 5, 1), *lrn2 = poisson(ctx, 127, 5, 1);
        RB_CHECK(ctx, rb_vnet_copy_smoothers(ctx, net, lrn2));
        RB_CHECK(ctx, rb_vnet_measure_factor(ctx, jac2, 7, 80, &fj));
        RB_CHECK(ctx, rb_vnet_measure_factor(ctx, lrn2, 7, 80, &fl));
        print_message("n = 127 (not retrained): factor Jacobi %.4f, learned %.4f\n", fj, fl);
        assert_true(fl < 0.8 * fj);
        rb_vnet_free(ctx, jac), rb_vnet_free(ctx, lrn), rb_vnet_free(ctx, jac2), rb_vnet_free(ctx, lrn2);
        rb_vnet_free(ctx, net);
    }
}

static void test_learned_solves(void **state)
{
    rb_context *ctx = *state;
    rb_vnet *net = trained(ctx), *lrn = poisson(ctx, 31, 3, 1); /* reused on a three-level cycle */
    RB_CHECK(ctx, rb_vnet_copy_smoothers(ctx, net, lrn));
    const rb_shape s = rb_vnet_shape(lrn, 0);
    rb_tensor f, u, x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
    rb_test_rng r = {3};
    rb_test_fill(&r, &f, -1, 1);
    RB_CHECK(ctx, rb_ref_solve_spd_banded(ctx, rb_vnet_op(lrn, 0, RB_VNET_A), &f, &x)); /* LAPACK dpbsv */
    const size_t N = rb_tensor_count(&f);
    double xm = 0;
    for (size_t i = 0; i < N; i++) xm = fmax(xm, fabs(x.data[i]));
    for (int pcg = 0; pcg < 2; pcg++) {
        rb_mg_report rep;
        memset(u.data, 0, N * sizeof(double));
        if (pcg) RB_CHECK(ctx, rb_vnet_pcg(ctx, lrn, &f, &u, 1e-13, 100, &rep));
        else RB_CHECK(ctx, rb_vnet_solve(ctx, lrn, &f, &u, 1e-13, 100, &rep));
        double d = 0;
        for (size_t i = 0; i < N; i++) d = fmax(d, fabs(u.data[i] - x.data[i]));
        print_message("learned cycle %s: %d iterations, |u - u_lapack| / |u_lapack| = %.2e\n", pcg ? "as CG preconditioner" : "as solver",
                      rep.cycles, d / xm);
        assert_true(d <= 1e-10 * xm);
    }
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &x);
    rb_vnet_free(ctx, lrn), rb_vnet_free(ctx, net);
}

static void test_divergent_refused(void **state)
{
    rb_context *ctx = *state;
    rb_vnet *net = poisson(ctx, 31, 3, 1);
    for (size_t l = 0; l + 1 < 3; l++) rb_vnet_op(net, l, RB_VNET_B)->params[4] *= 3; /* Richardson far beyond 2/lambda_max */
    double factor = 0;
    RB_EXPECT(ctx, RB_EDIVERGED, "does not converge", rb_vnet_measure_factor(ctx, net, 1, 40, &factor));
    assert_true(factor >= 1);
    rb_vnet_free(ctx, net);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.channels = 2, c.coarse_solve = false;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    rb_learn_config lc = rb_learn_config_default();
    RB_EXPECT(ctx, RB_EINVAL, "needs a net with C = 1", rb_learn_smoother(ctx, net, &lc, NULL));
    rb_vnet_free(ctx, net);
    net = poisson(ctx, 15, 2, 1);
    lc.cycles = 0;
    RB_EXPECT(ctx, RB_EINVAL, "cycles = 0", rb_learn_smoother(ctx, net, &lc, NULL));
    lc = rb_learn_config_default();
    lc.lr = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "lr = nan", rb_learn_smoother(ctx, net, &lc, NULL));
    rb_vnet *big = NULL;
    c = rb_vnet_config_default();
    c.channels = 2, c.coarse_solve = false;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &big));
    RB_EXPECT(ctx, RB_EINVAL, "needs a net with C = 1", rb_vnet_copy_smoothers(ctx, net, big));
    rb_tensor f, u;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_vnet_shape(net, 0)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, rb_vnet_shape(net, 0)));
    RB_EXPECT(ctx, RB_EINVAL, "tol = 2", rb_vnet_pcg(ctx, net, &f, &u, 2, 10, NULL));
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_vnet_free(ctx, big), rb_vnet_free(ctx, net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_learned_beats_jacobi, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_learned_solves, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_divergent_refused, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
