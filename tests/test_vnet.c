/* test_vnet.c — the V-cycle in network mode against its oracles:
 *   the multigrid solver (MG mode of the same skeleton): with C = 1, sigma = identity and
 *     the Poisson weights, network mode reproduces damped-Jacobi multigrid iterate for
 *     iterate (<= 1e-13 relative), several sizes, levels, cycles, V and W;
 *   the V-cycle operator: with u0 = 0 one cycle is u = M f, so dL/df for L = <s, u> is
 *     M^T s; M is assembled column by column and the symmetric cycle gives M^T s = M s;
 *     LAPACK (dgeev) on I - M A gives the spectral radius the measured factor approaches;
 *   central finite differences: every gradient (f, u0, each operator's parameters) of a
 *     nonlinear multi-channel network through several V- and W-cycles, and of normalised ones
 *     (batch norms' gamma and beta included);
 *   batch normalisation: the running statistics against the batch's own mean and variance
 *     computed here (moved once per forward, never by the backward, whose gradients equal
 *     those of a non-tracking run bit for bit); inference mode against its closed form;
 *   bad input. */
#include "testkit.h"
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double rel_diff(const double *a, const double *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return m > 0 ? d / m : d;
}

static rb_vnet *poisson_net(rb_context *ctx, size_t n, size_t levels, double omega, int pre, int post, rb_cycle cycle)
{
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = levels, c.pre = pre, c.post = post, c.cycle = cycle;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_CHECK(ctx, rb_vnet_set_poisson(ctx, net, omega));
    return net;
}

/* ---- network mode = MG mode -------------------------------------------------------------------- */

static void equivalence_case(rb_context *ctx, size_t n, int pre, int post, rb_cycle cycle, int cycles)
{
    rb_mg_problem pb = {2, n, NULL, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    o.smoother = RB_SMOOTHER_JACOBI, o.omega = 0.8, o.pre = pre, o.post = post, o.cycle = cycle, o.coarse_max = 7;
    rb_mg *mg = NULL;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    const size_t L = rb_mg_levels(mg);
    rb_vnet *net = poisson_net(ctx, n, L, 0.8, pre, post, cycle);
    const double worst = rb_test_vnet_vs_mg(ctx, net, mg, cycles, n * 7 + (uint64_t)cycle, true);
    assert_true(worst <= 1e-13);
    print_message("net = mg: n %zu, %zu levels, %s(%d,%d), %d cycles: max rel diff %.2e\n", n, L, rb_cycle_name(cycle), pre,
                  post, cycles, worst);
    /* the iterates improve: the net is a solver here, not just equal to one */
    rb_vnet_free(ctx, net);
    rb_mg_free(ctx, mg);
}

static void test_net_equals_mg(void **state)
{
    rb_context *ctx = *state;
    equivalence_case(ctx, 31, 1, 1, RB_CYCLE_V, 4);
    equivalence_case(ctx, 63, 2, 1, RB_CYCLE_V, 3);
    equivalence_case(ctx, 127, 1, 1, RB_CYCLE_V, 3);
    equivalence_case(ctx, 63, 1, 1, RB_CYCLE_W, 3);
    equivalence_case(ctx, 63, 1, 2, RB_CYCLE_F, 2);
}

/* The network-mode solve converges like the damped-Jacobi solver (same history). */
static void test_net_solve_history(void **state)
{
    rb_context *ctx = *state;
    rb_mg_problem pb = {2, 63, NULL, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    o.smoother = RB_SMOOTHER_JACOBI, o.omega = 0.8, o.pre = 1, o.post = 1, o.coarse_max = 7;
    rb_mg *mg = NULL;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    rb_vnet *net = poisson_net(ctx, 63, rb_mg_levels(mg), 0.8, 1, 1, RB_CYCLE_V);
    rb_tensor f, u1, u2;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u1, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u2, rb_mg_shape(mg)));
    rb_test_rng r = {5};
    rb_test_fill(&r, &f, -1, 1);
    rb_mg_report a, b;
    RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u1, 1e-9, 100, &a));
    RB_CHECK(ctx, rb_vnet_solve(ctx, net, &f, &u2, 1e-9, 100, &b));
    assert_int_equal(a.cycles, b.cycles);
    for (int k = 0; k <= a.cycles; k++) assert_true(fabs(a.history[k] - b.history[k]) <= 1e-10 * a.history[k] + 1e-15);
    assert_true(rel_diff(u2.data, u1.data, rb_tensor_count(&f)) < 1e-12);
    print_message("solve: %d cycles each, factor mg %.4f net %.4f\n", a.cycles, a.convergence_factor, b.convergence_factor);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u1), rb_tensor_release(ctx, &u2);
    rb_vnet_free(ctx, net);
    rb_mg_free(ctx, mg);
}

/* ---- dL/df is the cycle operator's transpose --------------------------------------------------- */

static void test_gradient_is_cycle_operator(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 15;
    rb_vnet *net = poisson_net(ctx, n, 3, 0.8, 1, 1, RB_CYCLE_V);
    const rb_shape s = rb_vnet_shape(net, 0);
    const size_t N = rb_shape_count(s);
    rb_tensor e, u, seed, df, Ms;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &seed, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &df, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &Ms, s));
    /* M by columns: u = M e_j */
    double *M = malloc(N * N * sizeof(double));
    assert_non_null(M);
    rb_test_vnet_cycle_matrix(ctx, net, M);
    /* backprop: df = M^T s */
    rb_test_rng r = {11};
    rb_test_fill(&r, &seed, -1, 1);
    rb_test_fill(&r, &e, -1, 1);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &e, NULL, &u, 1, true));
    RB_CHECK(ctx, rb_vnet_backward(ctx, net, &seed, NULL, &df));
    double mts_diff = 0, ms_diff = 0, asym = 0, scale = 0;
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &seed, NULL, &Ms, 1, false)); /* M s: one cycle on the seed */
    for (size_t j = 0; j < N; j++) {
        double mts = 0;
        for (size_t i = 0; i < N; i++) mts += M[i * N + j] * seed.data[i];
        mts_diff = fmax(mts_diff, fabs(mts - df.data[j]));
        ms_diff = fmax(ms_diff, fabs(Ms.data[j] - df.data[j]));
        scale = fmax(scale, fabs(mts));
        for (size_t i = 0; i < N; i++) asym = fmax(asym, fabs(M[i * N + j] - M[j * N + i]));
    }
    print_message("dL/df vs M^T s: %.2e, vs M s (symmetric cycle): %.2e, |M - M^T| %.2e (scale %.2e)\n", mts_diff / scale,
                  ms_diff / scale, asym, scale);
    assert_true(mts_diff <= 1e-13 * scale);
    assert_true(ms_diff <= 1e-12 * scale);
    /* LAPACK: the error propagation I - M A, its spectral radius against the measured factor */
    const double rho = rb_test_vnet_error_radius(ctx, net);
    rb_mg_report rep;
    rb_test_fill(&r, &e, -1, 1);
    memset(u.data, 0, N * sizeof(double));
    rb_status st = rb_vnet_solve(ctx, net, &e, &u, 1e-13, 60, &rep);
    assert_true(st == RB_OK || st == RB_EMAXITER);
    print_message("spectral radius of I - M A (dgeev) %.4f, measured factor %.4f over %d cycles\n", rho,
                  rep.convergence_factor, rep.cycles);
    assert_true(rho < 1);
    assert_true(fabs(rep.convergence_factor - rho) < 0.05 * rho);
    free(M);
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &seed), rb_tensor_release(ctx, &df);
    rb_tensor_release(ctx, &Ms);
    rb_vnet_free(ctx, net);
}

/* ---- every gradient against central differences ------------------------------------------------ */

/* L = <w, u> + <wc, u_coarsest> after `cycles` cycles from u0 for f (wc may be NULL). */
static const rb_tensor *coarse_weight; /* wc of the running case */
static size_t bn_params_checked;       /* batch-norm parameters fd_case compared */

static double loss(rb_context *ctx, rb_vnet *net, const rb_tensor *f, const rb_tensor *u0, const rb_tensor *w, int cycles,
                   rb_tensor *u)
{
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, f, u0, u, cycles, false));
    double s = 0;
    for (size_t i = 0; i < rb_tensor_count(u); i++) s += w->data[i] * u->data[i];
    if (coarse_weight != NULL) {
        const rb_tensor *uc = rb_vnet_level_u(net, rb_vnet_config_of(net)->levels - 1);
        for (size_t i = 0; i < rb_tensor_count(uc); i++) s += coarse_weight->data[i] * uc->data[i];
    }
    return s;
}

/* (L(x + eps) - L(x - eps)) / (2 eps) for the value *x (an input entry or a parameter). */
static double central_difference(rb_context *ctx, rb_vnet *net, const rb_tensor *f, const rb_tensor *u0, const rb_tensor *w,
                                 int cycles, rb_tensor *u, double *x, double eps)
{
    const double keep = *x;
    *x = keep + eps;
    const double lp = loss(ctx, net, f, u0, w, cycles, u);
    *x = keep - eps;
    const double lm = loss(ctx, net, f, u0, w, cycles, u);
    *x = keep;
    return (lp - lm) / (2 * eps);
}

static void fd_case(rb_context *ctx, rb_vnet_config c, int cycles, const char *label)
{
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_CHECK(ctx, rb_vnet_set_step(ctx, net, 0.5));
    const rb_shape s = rb_vnet_shape(net, 0);
    const size_t N = rb_shape_count(s);
    rb_tensor f, u0, w, u, du0, df;
    rb_tensor *all[] = {&f, &u0, &w, &u, &du0, &df};
    for (int i = 0; i < 6; i++) RB_CHECK(ctx, rb_tensor_alloc(ctx, all[i], s));
    rb_test_rng r = {c.seed + 100};
    rb_test_fill(&r, &f, -1, 1);
    rb_test_fill(&r, &u0, -0.5, 0.5);
    rb_test_fill(&r, &w, -1, 1);
    rb_tensor wc = {0};
    const rb_tensor *seeds[16] = {&w};
    if (c.cycle == RB_CYCLE_DOWN || c.projection) { /* MgNet: the coarsest iterate is an output too */
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &wc, rb_vnet_shape(net, c.levels - 1)));
        rb_test_fill(&r, &wc, -1, 1);
        coarse_weight = seeds[c.levels - 1] = &wc;
    }
    rb_vnet_zero_grad(net);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, &u0, &u, cycles, true));
    RB_CHECK(ctx, rb_vnet_backward_levels(ctx, net, seeds, &du0, &df));
    const double eps = 1e-5; /* central: truncation and rounding ~1e-10 of gradients ~1e-3; a missing term shows as >= 1e-3 */
    double worst = 0;
    /* inputs: a few entries of f and u0 */
    for (int t = 0; t < 6; t++) {
        rb_tensor *x = t % 2 ? &u0 : &f;
        const double *g = t % 2 ? du0.data : df.data;
        size_t i = (size_t)(rb_test_uniform(&r, 0, 1) * (double)N) % N;
        double fd = central_difference(ctx, net, &f, &u0, &w, cycles, &u, &x->data[i], eps);
        double err = fabs(fd - g[i]) / fmax(fabs(fd), 1e-3);
        worst = fmax(worst, err);
        if (err >= 1e-5) fail_msg("%s: d/d%s[%zu]: backprop %.10e, FD %.10e", label, t % 2 ? "u0" : "f", i, g[i], fd);
    }
    /* parameters: a few of every learned operator on every level */
    for (size_t l = 0; l < c.levels; l++)
        for (int p = 0; p < RB_VNET_PART_COUNT; p++) {
            rb_op *op = rb_vnet_op(net, l, (rb_vnet_part)p);
            double *g = rb_vnet_grad(net, op);
            if (op == NULL || g == NULL) continue;
            for (int t = 0; t < 3; t++) {
                size_t i = (size_t)(rb_test_uniform(&r, 0, 1) * (double)op->nparams) % op->nparams;
                double fd = central_difference(ctx, net, &f, &u0, &w, cycles, &u, &op->params[i], eps);
                double err = fabs(fd - g[i]) / fmax(fabs(fd), 1e-3);
                worst = fmax(worst, err);
                if (err >= 1e-5) fail_msg("%s: level %zu part %d param %zu: backprop %.10e, FD %.10e", label, l, p, i, g[i], fd);
                if (p >= RB_VNET_BN_R) bn_params_checked++; /* a batch norm's gamma or beta */
            }
        }
    print_message("%s: gradients vs central FD, worst rel err %.2e\n", label, worst);
    coarse_weight = NULL;
    rb_tensor_release(ctx, &wc);
    for (int i = 0; i < 6; i++) rb_tensor_release(ctx, all[i]);
    rb_vnet_free(ctx, net);
}

static void test_gradients_fd(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.n = 15, c.levels = 3, c.channels = 2, c.batch = 2, c.act = RB_ACT_TANH, c.coarse_solve = false, c.seed = 3;
    fd_case(ctx, c, 2, "C=2 tanh V(1,1), 2 cycles");
    c.cycle = RB_CYCLE_W, c.pre = 2, c.post = 1, c.seed = 4;
    fd_case(ctx, c, 2, "C=2 tanh W(2,1)");
    c = rb_vnet_config_default();
    c.n = 15, c.levels = 3, c.cycle = RB_CYCLE_F, c.seed = 5; /* C = 1, linear, coarse LU solve */
    fd_case(ctx, c, 3, "C=1 F(1,1) coarse solve, 3 cycles");
    c = rb_vnet_config_default();
    c.dim = 1, c.n = 31, c.levels = 4, c.channels = 3, c.act = RB_ACT_GELU, c.coarse_solve = false, c.seed = 6;
    fd_case(ctx, c, 2, "1D C=3 gelu");
    c = rb_vnet_config_default(); /* MgNet: the down-leg with feature projections */
    c.n = 31, c.levels = 4, c.channels = 2, c.batch = 2, c.act = RB_ACT_RELU, c.coarse_solve = false, c.projection = true;
    c.cycle = RB_CYCLE_DOWN, c.pre = 2, c.seed = 7;
    fd_case(ctx, c, 1, "MgNet down-leg C=2 relu, projections");
    c.cycle = RB_CYCLE_V, c.act = RB_ACT_TANH, c.pre = 1, c.seed = 8;
    fd_case(ctx, c, 2, "V-cycle with projections C=2 tanh, 2 cycles");
}

/* Normalised smoothers u <- u + h sigma(BN(B * sigma(BN(f - A u)))) in training mode (batch
 * statistics, no tracking): every gradient, gamma and beta of each batch norm included. */
static void test_normalised_gradients_fd(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.n = 15, c.levels = 3, c.channels = 2, c.batch = 2, c.act = RB_ACT_TANH, c.coarse_solve = false, c.seed = 13;
    c.norm = RB_NORM_BATCH;
    bn_params_checked = 0;
    fd_case(ctx, c, 2, "normalised C=2 tanh V(1,1), 2 cycles");
    assert_int_equal(bn_params_checked, 3 * 2 * 3); /* 3 levels, 2 batch norms, 3 samples each */
    c.n = 31, c.levels = 4, c.act = RB_ACT_RELU, c.projection = true, c.cycle = RB_CYCLE_DOWN, c.pre = 2, c.seed = 14;
    c.norm = RB_NORM_BATCH_ALL;
    fd_case(ctx, c, 1, "normalised MgNet down-leg C=2, BN + ReLU fused, projections and transfers");
    assert_int_equal(bn_params_checked, 18 + (4 * 2 + 3 * 2) * 3); /* and the transfers' BN_RT, BN_PI on 3 levels */
    c.act = RB_ACT_IDENTITY, c.cycle = RB_CYCLE_W, c.projection = false, c.pre = 1, c.post = 1, c.levels = 3, c.n = 15, c.seed = 15;
    c.norm = RB_NORM_BATCH;
    fd_case(ctx, c, 2, "normalised C=2 identity W(1,1), 2 cycles");
}

/* Every batch norm's running statistics (mean then variance per channel), in net order. */
static size_t stats_of(const rb_vnet *net, double *out)
{
    size_t k = 0;
    for (size_t i = 0; i < rb_vnet_nbn(net); i++) {
        rb_op *bn = rb_vnet_bn(net, i);
        const size_t C = bn->nparams / 2;
        memcpy(out + k, rb_op_batchnorm_running_mean(bn), C * sizeof(double)), k += C;
        memcpy(out + k, rb_op_batchnorm_running_var(bn), C * sizeof(double)), k += C;
    }
    return k;
}

/* Each gradient accumulator of the net, concatenated. */
static size_t grads_of(const rb_vnet *net, double *out)
{
    size_t k = 0;
    for (size_t i = 0; i < rb_vnet_nlearned(net); i++) {
        const rb_op *op = rb_vnet_learned(net, i);
        memcpy(out + k, rb_vnet_grad(net, op), op->nparams * sizeof(double)), k += op->nparams;
    }
    return k;
}

/* Tracking mode: a forward moves each running statistic once, with PyTorch's rule
 *   running = 0.9 running + 0.1 batch  (unbiased variance),
 * checked for level 0's first batch norm against the mean and variance of f - A u0 computed
 * here; the backward (which recomputes the smoothers) moves nothing, and its gradients equal
 * those of the same pass in non-tracking mode bit for bit (the same batch statistics); a
 * second forward on the same data gives 1.9 m and 1.9 v - 0.9 for every layer. V(1,0) on two
 * levels: every batch norm is applied once per cycle. */
static void test_normalised_running_stats(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.n = 15, c.levels = 2, c.channels = 2, c.batch = 3, c.act = RB_ACT_TANH, c.coarse_solve = false, c.post = 0, c.seed = 21;
    c.norm = RB_NORM_BATCH;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    assert_int_equal(rb_vnet_nbn(net), 4);
    const rb_shape s = rb_vnet_shape(net, 0);
    rb_tensor f, u0, u, du, r;
    rb_tensor *all[] = {&f, &u0, &u, &du, &r};
    for (int i = 0; i < 5; i++) RB_CHECK(ctx, rb_tensor_alloc(ctx, all[i], s));
    rb_test_rng g = {77};
    rb_test_fill(&g, &f, -1, 1), rb_test_fill(&g, &u0, -1, 1), rb_test_fill(&g, &du, -1, 1);
    double s0[8 * 4], s1[8 * 4], s1b[8 * 4], s2[8 * 4], s3[8 * 4];
    const size_t ns = stats_of(net, s0);
    size_t np = 0;
    for (size_t i = 0; i < rb_vnet_nlearned(net); i++) np += rb_vnet_learned(net, i)->nparams;
    double *gt = calloc(np, sizeof(double)), *gn = calloc(np, sizeof(double));
    /* the oracle: level 0's BN_r sees r = f - A u0 */
    rb_arena work = {0};
    const rb_op *A = rb_vnet_op(net, 0, RB_VNET_A);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(A, s) + 4096));
    RB_CHECK(ctx, rb_op_apply(ctx, A, &u0, &r, &work));
    const size_t C = 2, P = s.h * s.w, M = s.n * P;
    double mean[2] = {0, 0}, var[2] = {0, 0};
    for (size_t ch = 0; ch < C; ch++) {
        for (size_t b = 0; b < s.n; b++)
            for (size_t p = 0; p < P; p++) mean[ch] += f.data[(b * C + ch) * P + p] - r.data[(b * C + ch) * P + p];
        mean[ch] /= (double)M;
        for (size_t b = 0; b < s.n; b++)
            for (size_t p = 0; p < P; p++) {
                const double d = f.data[(b * C + ch) * P + p] - r.data[(b * C + ch) * P + p] - mean[ch];
                var[ch] += d * d;
            }
        var[ch] /= (double)M;
    }
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_TRAIN_TRACK));
    rb_vnet_zero_grad(net);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, &u0, &u, 1, true));
    stats_of(net, s1);
    for (size_t ch = 0; ch < C; ch++) {
        assert_true(fabs(s1[ch] - 0.1 * mean[ch]) <= 1e-14 * (1 + fabs(mean[ch])));
        assert_true(fabs(s1[C + ch] - (0.9 + 0.1 * var[ch] * (double)M / (double)(M - 1))) <= 1e-14 * (1 + var[ch]));
    }
    for (size_t i = 0; i < ns; i++) assert_true(s1[i] != s0[i]); /* every statistic moved */
    RB_CHECK(ctx, rb_vnet_backward(ctx, net, &du, NULL, NULL));
    stats_of(net, s1b);
    assert_memory_equal(s1, s1b, ns * sizeof(double)); /* the backward moved nothing */
    grads_of(net, gt);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, &u0, &u, 1, false)); /* the same batch once more */
    stats_of(net, s2);
    for (size_t i = 0; i < ns; i += 2 * C)
        for (size_t ch = 0; ch < C; ch++) {
            assert_true(fabs(s2[i + ch] - 1.9 * s1[i + ch]) <= 1e-14 * (1 + fabs(s1[i + ch])));
            assert_true(fabs(s2[i + C + ch] - (1.9 * s1[i + C + ch] - 0.9)) <= 1e-14 * (1 + s1[i + C + ch]));
        }
    /* the same pass without tracking: the same gradients, bit for bit, and no statistic moves */
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_TRAIN));
    rb_vnet_zero_grad(net);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, &u0, &u, 1, true));
    RB_CHECK(ctx, rb_vnet_backward(ctx, net, &du, NULL, NULL));
    grads_of(net, gn);
    assert_memory_equal(gt, gn, np * sizeof(double));
    stats_of(net, s3);
    assert_memory_equal(s2, s3, ns * sizeof(double));
    /* holding switches tracking layers to RB_BN_TRAIN, releasing switches them back */
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_TRAIN_TRACK));
    RB_CHECK(ctx, rb_vnet_hold_tracking(ctx, net, true));
    assert_int_equal(rb_op_batchnorm_mode(rb_vnet_bn(net, 0)), RB_BN_TRAIN);
    RB_CHECK(ctx, rb_vnet_hold_tracking(ctx, net, false));
    for (size_t i = 0; i < 4; i++) assert_int_equal(rb_op_batchnorm_mode(rb_vnet_bn(net, i)), RB_BN_TRAIN_TRACK);
    free(gt), free(gn);
    rb_arena_release(ctx, &work);
    for (int i = 0; i < 5; i++) rb_tensor_release(ctx, all[i]);
    rb_vnet_free(ctx, net);
}

/* Inference mode: each batch norm is the affine map of its running statistics. One level,
 * one step from u0: u = u0 + h relu(BN_B(B * relu(BN_r(f - A u0)))), computed here with the
 * closed form gamma (x - m) / sqrt(v + eps) + beta of chosen statistics. */
static void test_normalised_eval(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.n = 7, c.levels = 1, c.channels = 2, c.batch = 2, c.act = RB_ACT_RELU, c.coarse_solve = false, c.post = 0, c.seed = 31;
    c.norm = RB_NORM_BATCH;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_CHECK(ctx, rb_vnet_set_step(ctx, net, 0.7));
    rb_test_rng g = {5};
    for (size_t i = 0; i < rb_vnet_nbn(net); i++) {
        rb_op *bn = rb_vnet_bn(net, i);
        for (size_t ch = 0; ch < 2; ch++) {
            rb_op_batchnorm_running_mean(bn)[ch] = rb_test_uniform(&g, -0.5, 0.5);
            rb_op_batchnorm_running_var(bn)[ch] = rb_test_uniform(&g, 0.5, 2.0);
            bn->params[ch] = rb_test_uniform(&g, 0.5, 1.5);     /* gamma */
            bn->params[2 + ch] = rb_test_uniform(&g, -0.3, 0.3); /* beta */
        }
    }
    const rb_shape s = rb_vnet_shape(net, 0);
    rb_tensor f, u0, u, r, z;
    rb_tensor *all[] = {&f, &u0, &u, &r, &z};
    for (int i = 0; i < 5; i++) RB_CHECK(ctx, rb_tensor_alloc(ctx, all[i], s));
    rb_test_fill(&g, &f, -1, 1), rb_test_fill(&g, &u0, -1, 1);
    double before[16], after[16];
    const size_t ns = stats_of(net, before);
    RB_CHECK(ctx, rb_vnet_set_mode(ctx, net, RB_BN_EVAL));
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, &u0, &u, 1, false));
    stats_of(net, after);
    assert_memory_equal(before, after, ns * sizeof(double));
    /* the closed form */
    rb_arena work = {0};
    const rb_op *A = rb_vnet_op(net, 0, RB_VNET_A), *B = rb_vnet_op(net, 0, RB_VNET_B);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(A, s) + rb_op_workspace(B, s) + 4096));
    RB_CHECK(ctx, rb_op_apply(ctx, A, &u0, &r, &work));
    const size_t P = s.h * s.w;
    rb_op *bn[2] = {rb_vnet_op(net, 0, RB_VNET_BN_R), rb_vnet_op(net, 0, RB_VNET_BN_B)};
    for (int k = 0; k < 2; k++) {
        const double *m = rb_op_batchnorm_running_mean(bn[k]), *v = rb_op_batchnorm_running_var(bn[k]), *gb = bn[k]->params;
        for (size_t b = 0; b < s.n; b++)
            for (size_t ch = 0; ch < 2; ch++)
                for (size_t p = 0; p < P; p++) {
                    const size_t i = (b * 2 + ch) * P + p;
                    const double x = k == 0 ? f.data[i] - r.data[i] : z.data[i];
                    const double y = fmax(0.0, gb[ch] * (x - m[ch]) / sqrt(v[ch] + 1e-5) + gb[2 + ch]);
                    if (k == 0) r.data[i] = y;
                    else z.data[i] = u0.data[i] + 0.7 * y;
                }
        if (k == 0) RB_CHECK(ctx, rb_op_apply(ctx, B, &r, &z, &work));
    }
    size_t positive = 0;
    for (size_t i = 0; i < rb_tensor_count(&u); i++) positive += z.data[i] != u0.data[i];
    assert_true(positive > rb_tensor_count(&u) / 5); /* the ReLUs passed a good part */
    assert_true(rel_diff(u.data, z.data, rb_tensor_count(&u)) <= 1e-14);
    rb_arena_release(ctx, &work);
    for (int i = 0; i < 5; i++) rb_tensor_release(ctx, all[i]);
    rb_vnet_free(ctx, net);
}

/* Variable coefficients: the net on the solver's operators with point-dependent Jacobi stencils
 * is the solver's damped-Jacobi cycle; its smoother gradients agree with central differences. */
static void test_variable_coefficients(void **state)
{
    rb_context *ctx = *state;
    coarse_weight = NULL;
    const size_t n = 31, m = n + 2;
    double *a = malloc(m * m * sizeof(double));
    for (size_t y = 0; y < m; y++)
        for (size_t x = 0; x < m; x++) a[y * m + x] = (2 * x > m && 2 * y > m) ? 1e4 : 1.0 + 0.3 * sin((double)(x + 2 * y));
    rb_mg_problem pb = {2, n, a, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    o.smoother = RB_SMOOTHER_JACOBI, o.omega = 0.8, o.pre = 1, o.post = 1, o.coarse_max = 7;
    rb_mg *mg = NULL, *mg2 = NULL;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg2));
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = rb_mg_levels(mg);
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_CHECK(ctx, rb_vnet_use_mg_operators(ctx, net, mg, 0.8));
    RB_EXPECT(ctx, RB_EINVAL, "a solver's operators", rb_vnet_set_poisson(ctx, net, 0.8));
    rb_tensor f, u, w, u2;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u2, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &w, rb_mg_shape(mg)));
    rb_test_rng r = {21};
    rb_test_fill(&r, &f, -1, 1);
    rb_test_fill(&r, &w, -1, 1);
    rb_mg_report ra, rb;
    RB_CHECK(ctx, rb_mg_solve(ctx, mg2, &f, &u, 1e-9, 200, &ra));
    RB_CHECK(ctx, rb_vnet_solve(ctx, net, &f, &u2, 1e-9, 200, &rb));
    assert_int_equal(ra.cycles, rb.cycles);
    double d = rel_diff(u2.data, u.data, rb_tensor_count(&u));
    print_message("jumping coefficients: net = mg (Jacobi V(1,1)): %d cycles each, factor %.4f / %.4f, rel diff %.2e\n", ra.cycles,
                  ra.convergence_factor, rb.convergence_factor, d);
    assert_true(d < 1e-11);
    /* gradients of <w, u_2> with respect to the point-dependent smoother weights */
    RB_CHECK(ctx, rb_vnet_set_step(ctx, net, 1.0));
    rb_vnet_zero_grad(net);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, NULL, &u, 2, true));
    RB_CHECK(ctx, rb_vnet_backward(ctx, net, &w, NULL, NULL));
    double worst = 0;
    for (size_t l = 0; l + 1 < c.levels; l++) {
        rb_op *B = rb_vnet_op(net, l, RB_VNET_B);
        const double *g = rb_vnet_grad(net, B);
        assert_non_null(g);
        for (int t = 0; t < 4; t++) {
            size_t i = (size_t)(rb_test_uniform(&r, 0, 1) * (double)B->nparams) % B->nparams;
            const double h = 1e-4 * fmax(fabs(B->params[i]), 1e-6);
            double fd = central_difference(ctx, net, &f, NULL, &w, 2, &u, &B->params[i], h);
            double err = fabs(fd - g[i]) / fmax(fabs(fd), 1e-8 * fabs(loss(ctx, net, &f, NULL, &w, 2, &u)) / h);
            worst = fmax(worst, err);
            if (err > 1e-5) fail_msg("level %zu B[%zu]: backprop %.10e, FD %.10e", l, i, g[i], fd); /* FD ~1e-7 here */
        }
    }
    print_message("point-dependent smoother gradients vs central FD: worst rel err %.2e\n", worst);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &u2), rb_tensor_release(ctx, &w);
    rb_vnet_free(ctx, net);
    rb_mg_free(ctx, mg), rb_mg_free(ctx, mg2);
    free(a);
}

/* The smoothing operator F(u) = S(f - A u) passes the operator conformance suite. */
static void test_smoother_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    c.n = 7, c.levels = 2, c.channels = 2, c.act = RB_ACT_TANH, c.coarse_solve = false;
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    const rb_vcycle *vc = rb_vnet_vcycle(net);
    rb_test_rng r = {9};
    rb_test_fill(&r, (rb_tensor *)&vc->level[0].f, -1, 1);
    rb_conformance_case cc = rb_conformance_default((rb_op *)vc->level[0].pre[0].F, rb_vnet_shape(net, 0), "smoother");
    rb_conformance_run(ctx, &cc);
    rb_vnet_free(ctx, net);
    c.channels = 1, c.act = RB_ACT_IDENTITY, c.batch = 2, c.n = 15; /* the fused in-place kernel's case */
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    vc = rb_vnet_vcycle(net);
    rb_test_fill(&r, (rb_tensor *)&vc->level[0].f, -1, 1);
    cc = rb_conformance_default((rb_op *)vc->level[0].pre[0].F, rb_vnet_shape(net, 0), "smoother (fused)");
    rb_conformance_run(ctx, &cc);
    rb_vnet_free(ctx, net);
}

/* The fused in-place step (one pass, row blocks per thread) against the generic path: random
 * 3x3 A and S, several grid sizes, 1, 2 and 3 threads. */
static void test_fused_step(void **state)
{
    rb_context *ctx = *state;
    const size_t sizes[3] = {7, 63, 127};
    double worst = 0;
    for (int si = 0; si < 3; si++) {
        rb_vnet_config c = rb_vnet_config_default();
        c.n = sizes[si], c.levels = 2, c.batch = 2, c.seed = 40 + (unsigned long)si;
        rb_vnet *net = NULL;
        RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
        const rb_vcycle *vc = rb_vnet_vcycle(net);
        const rb_op *F = vc->level[0].pre[0].F;
        const rb_shape s = rb_vnet_shape(net, 0);
        rb_test_rng r = {77 + (uint64_t)si};
        rb_test_fill(&r, (rb_tensor *)&vc->level[0].f, -1, 1);
        rb_tensor u0, a, b;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u0, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &a, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
        rb_test_fill(&r, &u0, -1, 1);
        rb_arena work = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(F, s) + 4096));
        for (int threads = 1; threads <= 3; threads++) {
            RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
            RB_CHECK(ctx, rb_tensor_copy(ctx, &u0, &a));
            RB_CHECK(ctx, rb_tensor_copy(ctx, &u0, &b));
            RB_CHECK(ctx, rb_residual_step(ctx, F, 0.7, &a, &a, &work));          /* fused, in place */
            RB_CHECK(ctx, rb_residual_step_generic(ctx, F, 0.7, &b, &b, &work));  /* the reference */
            double d = rel_diff(a.data, b.data, rb_tensor_count(&a));
            worst = fmax(worst, d);
            assert_true(d <= 1e-14);
            assert_true(rel_diff(a.data, u0.data, rb_tensor_count(&a)) > 1e-3); /* it did change u */
        }
        RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
        rb_arena_release(ctx, &work);
        rb_tensor_release(ctx, &u0), rb_tensor_release(ctx, &a), rb_tensor_release(ctx, &b);
        rb_vnet_free(ctx, net);
    }
    print_message("fused smoothing step vs generic: max rel diff %.2e\n", worst);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    rb_vnet *net = NULL;
    c.n = 30;
    RB_EXPECT(ctx, RB_EINVAL, "does not coarsen", rb_vnet_create(ctx, &c, &net));
    c = rb_vnet_config_default();
    c.channels = 2;
    RB_EXPECT(ctx, RB_EINVAL, "coarse solve needs C = 1", rb_vnet_create(ctx, &c, &net));
    c.coarse_solve = false, c.pre = 0;
    RB_EXPECT(ctx, RB_EINVAL, "neither solved nor smoothed", rb_vnet_create(ctx, &c, &net));
    c = rb_vnet_config_default();
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    rb_tensor f, u, wrong;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_vnet_shape(net, 0)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, rb_vnet_shape(net, 0)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &wrong, rb_shape_2d(1, 1, 15, 15)));
    RB_EXPECT(ctx, RB_ESHAPE, "the net's grid is", rb_vnet_forward(ctx, net, &wrong, NULL, &u, 1, false));
    RB_EXPECT(ctx, RB_EINVAL, "cycles = 0", rb_vnet_forward(ctx, net, &f, NULL, &u, 0, false));
    RB_EXPECT(ctx, RB_EINVAL, "no taped", rb_vnet_backward(ctx, net, &u, NULL, &f));
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, NULL, &u, 1, false));
    RB_EXPECT(ctx, RB_EINVAL, "no taped", rb_vnet_backward(ctx, net, &u, NULL, &f));
    RB_EXPECT(ctx, RB_EINVAL, "h = inf", rb_vnet_set_step(ctx, net, INFINITY));
    rb_vnet_free(ctx, net);
    c.channels = 2, c.coarse_solve = false;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_EXPECT(ctx, RB_EINVAL, "needs C = 1", rb_vnet_set_poisson(ctx, net, 0.8));
    rb_vnet_free(ctx, net);
    /* the MG solver's cycle has no S on its steps: it cannot be taped */
    rb_mg_problem pb = {2, 15, NULL, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    rb_mg *mg = NULL;
    o.cycle = RB_CYCLE_DOWN;
    RB_EXPECT(ctx, RB_EINVAL, "a solver needs V, W or F", rb_mg_create(ctx, &pb, &o, &mg));
    o.cycle = RB_CYCLE_V;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    rb_vtape tape;
    RB_CHECK(ctx, rb_vtape_init(ctx, &tape, rb_vcycle_tape_bytes(rb_mg_vcycle(mg), 0)));
    RB_EXPECT(ctx, RB_EINVAL, "has no S", rb_vcycle_run_taped(ctx, rb_mg_vcycle(mg), 0, &tape, NULL));
    rb_vtape_release(ctx, &tape);
    rb_mg_free(ctx, mg);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &wrong);
    /* normalisation */
    c = rb_vnet_config_default();
    c.norm = (rb_norm_kind)7;
    RB_EXPECT(ctx, RB_EINVAL, "unknown normalisation 7", rb_vnet_create(ctx, &c, &net));
    c.norm = RB_NORM_BATCH;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "do not hold batch norms", rb_vnet_save(ctx, net, "/nonexistent/never-written.rbv"));
    RB_EXPECT(ctx, RB_EINVAL, "rows = 2", rb_vnet_set_rows(ctx, net, 2));
    RB_EXPECT(ctx, RB_EINVAL, "rows = 0", rb_vnet_set_rows(ctx, net, 0));
    RB_EXPECT(ctx, RB_EINVAL, "mode = 9", rb_vnet_set_mode(ctx, net, (rb_bn_mode)9));
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    RB_EXPECT(ctx, RB_EINVAL, "no normalisation", rb_vnet_use_mg_operators(ctx, net, mg, 0.8));
    rb_mg_free(ctx, mg);
    rb_vnet_free(ctx, net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_net_equals_mg, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_net_solve_history, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_gradient_is_cycle_operator, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_gradients_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_normalised_gradients_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_normalised_running_stats, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_normalised_eval, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_variable_coefficients, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_smoother_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fused_step, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
