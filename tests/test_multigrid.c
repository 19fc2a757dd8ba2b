/* test_multigrid.c — the multigrid solver against its oracles: LAPACK banded
 * Cholesky (dpbsv) on the solver's own fine operator, exact discrete solutions,
 * O(h^2) against analytic solutions, LAPACK spectra (dsyev, dgeev) against
 * closed forms and measured convergence, local Fourier analysis (LFA) values
 * of the convergence factors, FMG against the discretisation error, bad input.
 *
 * Every test prints what it measured (cmocka print_message) so a CI log is the
 * table of measured values against the bounds. */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const double pi = 3.14159265358979323846;

/* ---- helpers --------------------------------------------------------------------------------- */

typedef struct mg_setup {
    int dim;
    size_t n;
    const double *coef; /* NULL: constant a */
    double a;
    rb_smoother smoother;
    double omega;       /* 0: default */
    int pre, post;
    rb_cycle cycle;
    size_t coarse_max;  /* 0: default (7) */
} mg_setup;

static rb_mg *make_mg(rb_context *ctx, mg_setup s)
{
    rb_mg_problem pb = {s.dim, s.n, s.coef, s.a};
    rb_mg_options o = rb_mg_options_default(s.dim);
    o.smoother = s.smoother, o.omega = s.omega, o.pre = s.pre, o.post = s.post, o.cycle = s.cycle;
    if (s.coarse_max > 0) o.coarse_max = s.coarse_max;
    rb_mg *mg = NULL;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    return mg;
}

/* RB-GS V(pre, post) with a constant coefficient. */
static mg_setup rbgs(int dim, size_t n, int pre, int post)
{
    mg_setup s = {dim, n, NULL, 1.0, RB_SMOOTHER_RBGS, 0.0, pre, post, RB_CYCLE_V, 0};
    return s;
}

static rb_tensor grid_tensor(rb_context *ctx, const rb_mg *mg)
{
    rb_tensor t;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &t, rb_mg_shape(mg)));
    return t;
}

static void random_rhs(rb_tensor *f, uint64_t seed)
{
    rb_test_rng r = {seed};
    rb_test_fill(&r, f, -1.0, 1.0);
}

/* Interior point p of a (1,1,D,H,W) grid -> coordinates in (0,1)^dim (unused ones 0.5). */
static void coords(const rb_tensor *t, size_t p, double h, double x[3])
{
    rb_shape s = t->shape;
    size_t i = p % s.w, j = (p / s.w) % s.h, k = p / (s.w * s.h);
    x[0] = (double)(i + 1) * h;
    x[1] = s.h > 1 ? (double)(j + 1) * h : 0.5;
    x[2] = s.d > 1 ? (double)(k + 1) * h : 0.5;
}

/* Point coefficients on the full (n+2)^dim grid (z, y, x row-major, boundary included). */
typedef enum coef_kind { COEF_HALVES, COEF_CHECKER, COEF_ROUGH } coef_kind;

static double *coefficients(int dim, size_t n, coef_kind kind, double high)
{
    size_t m = n + 2, total = m * (dim >= 2 ? m : 1) * (dim == 3 ? m : 1);
    double *a = test_malloc(total * sizeof *a);
    for (size_t p = 0; p < total; p++) {
        size_t x = p % m, y = dim >= 2 ? (p / m) % m : 0, z = dim == 3 ? p / (m * m) : 0;
        double X = (double)x / (double)(n + 1), Y = (double)y / (double)(n + 1), Z = (double)z / (double)(n + 1);
        if (kind == COEF_HALVES) {
            a[p] = X < 0.5 ? 1.0 : high;
        } else if (kind == COEF_CHECKER) { /* 4 blocks per direction */
            int b = (int)(4 * X) + (dim >= 2 ? (int)(4 * Y) : 0) + (dim == 3 ? (int)(4 * Z) : 0);
            a[p] = b % 2 ? high : 1.0;
        } else { /* log-uniform in [1, high], point by point */
            rb_test_rng r = {0x5eed + p};
            a[p] = pow(10.0, rb_test_uniform(&r, 0.0, log10(high)));
        }
    }
    return a;
}

/* u = A^{-1} f by LAPACKE_dpbsv on the solver's own fine operator. */
static void lapack_solve(rb_context *ctx, const rb_mg *mg, const rb_tensor *f, rb_tensor *u)
{
    RB_CHECK(ctx, rb_ref_solve_spd_banded(ctx, rb_mg_operator(mg), f, u));
}

/* The asymptotic residual factor (rb_mg_report.convergence_factor) from a zero guess
 * and a random f. One solve reaches the rounding floor (~1e-15 relative) after ~13
 * fast cycles, before the ratios settle (2D RB-GS V(1,1): 0.054, 0.069, 0.084, ...,
 * 0.110 at cycle 14, 0.118 in the limit), so the iteration is continued through
 * restarts: solve to 1e-6, replace f by the residual f - A u, solve again from zero --
 * the same linear iteration with its residual kept off the floor -- until `cycles`
 * cycles have run; a last solve to 1e-9 reports the factor. */
static double asymptotic_factor(rb_context *ctx, rb_mg *mg, int cycles, uint64_t seed)
{
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg), au = grid_tensor(ctx, mg);
    const rb_op *A = rb_mg_operator(mg);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(A, rb_mg_shape(mg)) + 64));
    random_rhs(&f, seed);
    rb_mg_report rep;
    for (int total = 0;;) {
        bool last = total >= cycles;
        RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.0));
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, last ? 1e-9 : 1e-6, 200, &rep));
        total += rep.cycles;
        if (last) break;
        RB_CHECK(ctx, rb_op_apply(ctx, A, &u, &au, &work));
        RB_CHECK(ctx, rb_tensor_axpy(ctx, -1.0, &au, &f));
    }
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &au);
    return rep.convergence_factor;
}

/* Scratch for running the hierarchy's cycle directly (the spectra tests). */
static rb_arena cycle_arena(rb_context *ctx, const rb_mg *mg)
{
    rb_arena w = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &w, rb_vcycle_workspace(rb_mg_vcycle(mg)) + 4096));
    return w;
}

/* M[i*N + j] = (E e_j)_i for the error propagation E of one cycle (f = 0, u = e_j). */
static void assemble_cycle(rb_context *ctx, const rb_mg *mg, double *M)
{
    const rb_vcycle *vc = rb_mg_vcycle(mg);
    rb_vlevel *top = &vc->level[0];
    size_t N = rb_tensor_count(&top->u);
    rb_arena w = cycle_arena(ctx, mg);
    for (size_t j = 0; j < N; j++) {
        memset(top->f.data, 0, N * sizeof(double));
        memset(top->u.data, 0, N * sizeof(double));
        top->u.data[j] = 1.0;
        RB_CHECK(ctx, rb_vcycle_run(ctx, vc, 0, &w));
        for (size_t i = 0; i < N; i++) M[i * N + j] = top->u.data[i];
    }
    rb_arena_release(ctx, &w);
}

static double spectral_radius(rb_context *ctx, const double *M, size_t N)
{
    double *wr = test_malloc(N * sizeof *wr), *wi = test_malloc(N * sizeof *wi), rho = 0;
    RB_CHECK(ctx, rb_ref_eig_general(ctx, M, N, wr, wi));
    for (size_t i = 0; i < N; i++) rho = fmax(rho, hypot(wr[i], wi[i]));
    test_free(wr), test_free(wi);
    return rho;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- LAPACK: the solver's answers against dpbsv ------------------------------------------------ */

/* Solve f (+ folded Dirichlet values g when with_boundary) by MG and by dpbsv on the
 * same folded right-hand side; return the max relative difference. */
static double versus_lapack(rb_context *ctx, rb_mg *mg, bool pcg, bool with_boundary, double tol, uint64_t seed)
{
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg), v = grid_tensor(ctx, mg);
    random_rhs(&f, seed);
    if (with_boundary) {
        rb_shape s = rb_mg_shape(mg), full = s;
        full.w += 2, full.h += s.h > 1 ? 2 : 0, full.d += s.d > 1 ? 2 : 0;
        rb_tensor g;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &g, full));
        rb_test_rng r = {seed ^ 0xb0u};
        rb_test_fill(&r, &g, 1.0, 3.0); /* interior values are ignored */
        RB_CHECK(ctx, rb_mg_fold_boundary(ctx, mg, &g, &f));
        rb_tensor_release(ctx, &g);
    }
    rb_mg_report rep;
    if (pcg) RB_CHECK(ctx, rb_mg_pcg(ctx, mg, &f, &u, tol, 200, &rep));
    else RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, tol, 200, &rep));
    lapack_solve(ctx, mg, &f, &v);
    double err = rb_tensor_max_rel_diff(&u, &v);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &v);
    return err;
}

/* Oracle: LAPACK dpbsv. Constant coefficients (a = 1 and a = 2.5), 1D/2D/3D, zero
 * and non-zero (folded) Dirichlet values; agreement <= 1e-10 relative. */
static void test_lapack_constant_coefficient(void **state)
{
    rb_context *ctx = *state;
    const size_t ns[4] = {0, 255, 63, 15};
    for (int d = 1; d <= 3; d++)
        for (int b = 0; b < 2; b++) {
            mg_setup s = rbgs(d, ns[d], 2, 1);
            s.a = b ? 2.5 : 1.0;
            rb_mg *mg = make_mg(ctx, s);
            double err = versus_lapack(ctx, mg, false, b == 1, 1e-13, 11 + (uint64_t)d);
            print_message("LAPACK, constant a = %g, %dD n = %zu%s: %.2e (<= 1e-10)\n", s.a, d, s.n,
                          b ? ", folded boundary" : "", err);
            if (!(err <= 1e-10)) fail_msg("%dD: MG vs dpbsv %.3g", d, err);
            rb_mg_free(ctx, mg);
        }
}

/* Oracle: LAPACK dpbsv. Variable coefficients with jumps of four orders of magnitude:
 * a = 1 | 1e4 in halves (rb_mg_solve) and a checkerboard of 4^dim blocks (rb_mg_pcg:
 * with (bi/tri)linear interpolation the plain cycle stagnates there -- a block
 * corner whose coarse point lies on the low side makes the interpolated correction
 * cost ~1e4 times its energy; MG-preconditioned CG still converges), with folded
 * non-zero Dirichlet values (harmonic face coefficients at the boundary too).
 * Solved to tol 1e-14: the condition number grows with the jump (and the folded
 * values make |f| ~1e4 |interior f|), so 1e-13 left up to 3e-10 relative error. */
static void test_lapack_variable_coefficient(void **state)
{
    rb_context *ctx = *state;
    const size_t ns[4] = {0, 31, 31, 15};
    for (int d = 1; d <= 3; d++)
        for (int kind = COEF_HALVES; kind <= COEF_CHECKER; kind++) {
            double *a = coefficients(d, ns[d], (coef_kind)kind, 1e4);
            mg_setup s = rbgs(d, ns[d], 2, 1);
            s.coef = a;
            rb_mg *mg = make_mg(ctx, s);
            bool pcg = kind == COEF_CHECKER;
            for (int b = 0; b < 2; b++) {
                double err = versus_lapack(ctx, mg, pcg, b == 1, 1e-14, 21 + (uint64_t)d);
                print_message("LAPACK, a = 1 | 1e4 %s, %dD n = %zu, %s%s: %.2e (<= 1e-10)\n",
                              kind == COEF_HALVES ? "halves" : "checkerboard", d, s.n, pcg ? "MG-PCG" : "MG",
                              b ? ", folded boundary" : "", err);
                if (!(err <= 1e-10)) fail_msg("%dD kind %d: MG vs dpbsv %.3g", d, kind, err);
            }
            rb_mg_free(ctx, mg);
            test_free(a);
        }
}

/* Rediscretised coarse operators for point coefficients (RB_COARSE_REDISCRETISE).
 * Oracles: a closed form -- with a constant a given as point values every level's
 * operator is a times the level's -Delta_h (rb_op_laplacian_create), applied to a random
 * vector to 1e-13; and LAPACK dpbsv -- with the smooth a = 1 + 1/2 prod sin(2 pi x_i) the
 * solve agrees with dpbsv to 1e-10, at a textbook convergence factor (<= 0.15; the Galerkin
 * hierarchy's is printed beside it) (1D n = 127, 2D n = 63, 3D n = 31). With a jump of 1e4 on
 * a quadrant the rediscretised cycle diverges, and says so (RB_EDIVERGED, history kept). */
static void test_rediscretised_coarse_operators(void **state)
{
    rb_context *ctx = *state;
    const size_t ns[4] = {0, 127, 63, 31};
    for (int d = 1; d <= 3; d++) {
        const size_t n = ns[d], m = n + 2, total = m * (d >= 2 ? m : 1) * (d == 3 ? m : 1);
        double *a = test_malloc(total * sizeof *a);
        rb_mg_options o = rb_mg_options_default(d);
        o.coarse = RB_COARSE_REDISCRETISE;
        /* constant a = 2.5 as point values */
        for (size_t p = 0; p < total; p++) a[p] = 2.5;
        rb_mg_problem pb = {d, n, a, 1.0};
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        for (size_t l = 0; l < vc->nlevels; l++) {
            const size_t nl = rb_mg_level_n(mg, l);
            rb_op *L;
            RB_CHECK(ctx, rb_op_laplacian_create(ctx, d, 1.0 / (double)(nl + 1), &L));
            rb_tensor x, y1, y2;
            rb_shape sh = vc->level[l].u.shape;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &y1, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &y2, sh));
            rb_test_rng r = {77 + l};
            rb_test_fill(&r, &x, -1, 1);
            rb_arena w = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &w, rb_op_workspace(vc->level[l].A, sh) + rb_op_workspace(L, sh) + 64));
            RB_CHECK(ctx, rb_op_apply(ctx, vc->level[l].A, &x, &y1, &w));
            RB_CHECK(ctx, rb_op_apply(ctx, L, &x, &y2, &w));
            for (size_t i = 0; i < rb_tensor_count(&y2); i++) y2.data[i] *= 2.5;
            double err = rb_tensor_max_rel_diff(&y1, &y2);
            if (!(err <= 1e-13)) fail_msg("%dD level %zu (n = %zu): rediscretised operator vs 2.5 (-Delta_h): %.3g", d, l, nl, err);
            rb_arena_release(ctx, &w);
            rb_op_free(ctx, L);
            rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y1), rb_tensor_release(ctx, &y2);
        }
        rb_mg_free(ctx, mg);
        /* the smooth coefficient: dpbsv, and the factor next to Galerkin's */
        for (size_t p = 0; p < total; p++) {
            size_t idx[3] = {p % m, (p / m) % m, p / (m * m)};
            double prod = 1.0;
            for (int i = 0; i < d; i++) prod *= sin(2.0 * acos(-1.0) * (double)idx[i] / (double)(n + 1));
            a[p] = 1.0 + 0.5 * prod;
        }
        double factor[2];
        for (int c = 0; c < 2; c++) {
            o.coarse = c ? RB_COARSE_REDISCRETISE : RB_COARSE_GALERKIN;
            RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
            rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg), v = grid_tensor(ctx, mg);
            random_rhs(&f, 5 + (uint64_t)d);
            rb_mg_report rep;
            RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-13, 100, &rep));
            factor[c] = rep.convergence_factor;
            if (c == 1) {
                lapack_solve(ctx, mg, &f, &v);
                double err = rb_tensor_max_rel_diff(&u, &v);
                print_message("rediscretised coarse levels, smooth a, %dD n = %zu: vs dpbsv %.2e (<= 1e-10), factor %.3f "
                              "(Galerkin %.3f)\n", d, n, err, factor[1], factor[0]);
                if (!(err <= 1e-10)) fail_msg("%dD: rediscretised MG vs dpbsv %.3g", d, err);
                if (!(factor[1] <= 0.15)) fail_msg("%dD: factor %.3f (Galerkin %.3f), not <= 0.15", d, factor[1], factor[0]);
            }
            rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &v);
            rb_mg_free(ctx, mg);
        }
        test_free(a);
    }
    /* a jump of 1e4 on the quadrant x, y > 1/2 (resbridge poisson --coef jump): the injected
     * coarse problems misplace the interface and the cycle diverges -- reported as such, with
     * its history, never as converged */
    double *jump = test_malloc(65 * 65 * sizeof *jump);
    for (size_t y = 0; y < 65; y++)
        for (size_t x = 0; x < 65; x++) jump[y * 65 + x] = x > 32 && y > 32 ? 1e4 : 1.0;
    rb_mg_problem pj = {2, 63, jump, 1.0};
    rb_mg_options oj = rb_mg_options_default(2);
    oj.coarse = RB_COARSE_REDISCRETISE;
    rb_mg *mg;
    RB_CHECK(ctx, rb_mg_create(ctx, &pj, &oj, &mg));
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
    random_rhs(&f, 3);
    rb_mg_report rep;
    RB_EXPECT(ctx, RB_EDIVERGED, "", rb_mg_solve(ctx, mg, &f, &u, 1e-10, 50, &rep));
    assert_false(rep.converged);
    assert_true(rep.cycles >= 1 && rep.history[rep.cycles] > 1.0);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
    test_free(jump);
}

/* Oracle: exactness of the 2nd-order scheme on quadratics. For constant a and u a
 * quadratic polynomial, -a Delta_h u = -a Delta u exactly, so the discrete solution
 * with f = -a Delta u and the Dirichlet values of u folded in is u itself: checks the
 * folding (signs, faces, corners) and the solver together, to 1e-10. */
static double quadratic(int d, const double x[3])
{
    double u = 1.0 + 2.0 * x[0] - 0.5 * x[0] * x[0];
    if (d >= 2) u += -3.0 * x[1] + 1.5 * x[1] * x[1] + 0.75 * x[0] * x[1];
    if (d == 3) u += 0.5 * x[2] - 2.0 * x[2] * x[2] + x[1] * x[2];
    return u;
}

static void test_fold_boundary_reproduces_quadratics(void **state)
{
    rb_context *ctx = *state;
    const size_t ns[4] = {0, 31, 31, 15};
    const double a = 2.5;
    for (int d = 1; d <= 3; d++)
        for (int linear = 0; linear < 2; linear++) {
            mg_setup s = rbgs(d, ns[d], 2, 1);
            s.a = a;
            rb_mg *mg = make_mg(ctx, s);
            size_t n = s.n, m = n + 2;
            double h = 1.0 / (double)(n + 1);
            rb_shape full = {1, 1, d == 3 ? m : 1, d >= 2 ? m : 1, m};
            rb_tensor g, f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &g, full));
            /* g: u_exact on the whole full grid (the solver reads only its faces) */
            for (size_t p = 0; p < rb_tensor_count(&g); p++) {
                size_t i = p % m, j = (p / m) % full.h, k = p / (m * full.h);
                double x[3] = {(double)i * h, (double)j * h, (double)k * h};
                double q = quadratic(d, x);
                g.data[p] = linear ? 1.0 + 2.0 * x[0] - 3.0 * x[1] + 0.5 * x[2] : q;
            }
            /* -a Delta u: 1D -a(-1); 2D -a(-1 + 3); 3D -a(-1 + 3 - 4) */
            double lap = -1.0 + (d >= 2 ? 3.0 : 0.0) + (d == 3 ? -4.0 : 0.0);
            RB_CHECK(ctx, rb_tensor_fill(ctx, &f, linear ? 0.0 : -a * lap));
            RB_CHECK(ctx, rb_mg_fold_boundary(ctx, mg, &g, &f));
            rb_mg_report rep;
            RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-13, 100, &rep));
            double err = 0;
            for (size_t p = 0; p < rb_tensor_count(&u); p++) {
                double x[3];
                coords(&u, p, h, x);
                if (d < 3) x[2] = 0;
                if (d < 2) x[1] = 0;
                double want = linear ? 1.0 + 2.0 * x[0] - 3.0 * x[1] + 0.5 * x[2] : quadratic(d, x);
                err = fmax(err, fabs(u.data[p] - want));
            }
            print_message("folded boundary, %dD %s u_exact: max error %.2e (<= 1e-10)\n", d,
                          linear ? "linear" : "quadratic", err);
            if (!(err <= 1e-10)) fail_msg("%dD %s: max error %.3g", d, linear ? "linear" : "quadratic", err);
            rb_tensor_release(ctx, &g), rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
            rb_mg_free(ctx, mg);
        }
}

/* ---- exact discrete and analytic solutions ------------------------------------------------------ */

/* Oracle: the exact discrete solution. f = d pi^2 prod sin(pi x_i) is an eigenvector
 * of -Delta_h: u_h = c_h prod sin(pi x_i), c_h = pi^2 h^2 / (4 sin^2(pi h / 2)).
 * Solved to tol 1e-12 (for so smooth an f the rounding floor of |f - A u| / |f| is
 * ~h^-2 eps: 5e-13 at 1D n = 255), reproduced to 1e-10. */
static void test_exact_discrete_sine_solution(void **state)
{
    rb_context *ctx = *state;
    const size_t ns[4] = {0, 127, 63, 31};
    for (int d = 1; d <= 3; d++) {
        rb_mg *mg = make_mg(ctx, rbgs(d, ns[d], 2, 1));
        double h = 1.0 / (double)(ns[d] + 1), c_h = pi * pi * h * h / (4 * pow(sin(pi * h / 2), 2));
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg), v = grid_tensor(ctx, mg);
        for (size_t p = 0; p < rb_tensor_count(&f); p++) {
            double x[3];
            coords(&f, p, h, x);
            double s = sin(pi * x[0]) * (d >= 2 ? sin(pi * x[1]) : 1) * (d == 3 ? sin(pi * x[2]) : 1);
            f.data[p] = d * pi * pi * s;
            v.data[p] = c_h * s;
        }
        rb_mg_report rep;
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-12, 100, &rep));
        double err = rb_tensor_max_rel_diff(&u, &v);
        print_message("exact discrete solution, %dD n = %zu: %.2e (<= 1e-10), %d cycles\n", d, ns[d], err, rep.cycles);
        if (!(err <= 1e-10)) fail_msg("%dD: MG vs c_h prod sin %.3g", d, err);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &v);
        rb_mg_free(ctx, mg);
    }
}

/* u = e^x sin(pi x) [sin(pi y)] [sin(pi z)], f = -Delta u. */
static double u_analytic(int d, const double x[3])
{
    return exp(x[0]) * sin(pi * x[0]) * (d >= 2 ? sin(pi * x[1]) : 1) * (d == 3 ? sin(pi * x[2]) : 1);
}

static double f_analytic(int d, const double x[3])
{
    return exp(x[0]) * ((d * pi * pi - 1) * sin(pi * x[0]) - 2 * pi * cos(pi * x[0])) * (d >= 2 ? sin(pi * x[1]) : 1) *
           (d == 3 ? sin(pi * x[2]) : 1);
}

static void analytic_rhs(int d, rb_tensor *f, double h)
{
    for (size_t p = 0; p < rb_tensor_count(f); p++) {
        double x[3];
        coords(f, p, h, x);
        f->data[p] = f_analytic(d, x);
    }
}

static double max_error_analytic(int d, const rb_tensor *u, double h)
{
    double err = 0;
    for (size_t p = 0; p < rb_tensor_count(u); p++) {
        double x[3];
        coords(u, p, h, x);
        err = fmax(err, fabs(u->data[p] - u_analytic(d, x)));
    }
    return err;
}

/* The converged discrete solution's max-norm error against the analytic u. */
static double discretisation_error(rb_context *ctx, int d, size_t n)
{
    rb_mg *mg = make_mg(ctx, rbgs(d, n, 2, 1));
    double h = 1.0 / (double)(n + 1);
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
    analytic_rhs(d, &f, h);
    rb_mg_report rep;
    RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-11, 100, &rep));
    double err = max_error_analytic(d, &u, h);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
    return err;
}

/* Oracle: the analytic solution; the observed order of the max-norm error over three
 * refinements is 2.0 +- 0.1 (2D n = 15..127, 3D n = 7..63). */
static void test_analytic_second_order(void **state)
{
    rb_context *ctx = *state;
    const size_t n2[4] = {15, 31, 63, 127}, n3[4] = {7, 15, 31, 63};
    for (int d = 2; d <= 3; d++) {
        const size_t *ns = d == 2 ? n2 : n3;
        double e[4];
        for (int k = 0; k < 4; k++) e[k] = discretisation_error(ctx, d, ns[k]);
        for (int k = 0; k < 3; k++) {
            double order = log2(e[k] / e[k + 1]);
            print_message("analytic, %dD n = %zu -> %zu: error %.3e -> %.3e, order %.3f (2.0 +- 0.1)\n", d, ns[k],
                          ns[k + 1], e[k], e[k + 1], order);
            if (!(fabs(order - 2.0) <= 0.1)) fail_msg("%dD n = %zu -> %zu: order %.3f", d, ns[k], ns[k + 1], order);
        }
    }
}

/* ---- spectra ------------------------------------------------------------------------------------ */

/* Oracle: LAPACK dsyev against the closed form. The solver's own Jacobi smoothing
 * step (level 0, f = 0, assembled column by column) is I - omega D^{-1} A, with
 * eigenvalues 1 - (2 omega / d) sum_i sin^2(k_i pi h / 2); the same from A assembled
 * by rb_ref_assemble. 2D n = 15, 3D n = 7, default omega (4/5, 6/7). */
static void test_jacobi_spectrum(void **state)
{
    rb_context *ctx = *state;
    for (int d = 2; d <= 3; d++) {
        size_t n = d == 2 ? 15 : 7, N = d == 2 ? n * n : n * n * n;
        mg_setup s = {d, n, NULL, 1.0, RB_SMOOTHER_JACOBI, 0.0, 1, 1, RB_CYCLE_V, 3};
        rb_mg *mg = make_mg(ctx, s);
        double omega = 2.0 * d / (2.0 * d + 1.0), h = 1.0 / (double)(n + 1), diag = 2.0 * d / (h * h);
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_vlevel *top = &vc->level[0];
        assert_int_equal(top->npre, 1);
        assert_true(fabs(top->pre[0].h - omega) <= 1e-15);
        /* the closed form, ascending */
        double *want = test_malloc(N * sizeof *want), *w = test_malloc(N * sizeof *w), *M = test_malloc(N * N * sizeof *M);
        size_t q = 0;
        for (size_t k = 1; k <= (d == 3 ? n : 1); k++)
            for (size_t j = 1; j <= n; j++)
                for (size_t i = 1; i <= n; i++) {
                    double sum = pow(sin(i * pi * h / 2), 2) + pow(sin(j * pi * h / 2), 2) +
                                 (d == 3 ? pow(sin(k * pi * h / 2), 2) : 0);
                    want[q++] = 1 - 2 * omega / d * sum;
                }
        qsort(want, N, sizeof *want, compare_double);
        /* (a) the smoother as the solver runs it */
        rb_arena work = cycle_arena(ctx, mg);
        rb_tensor col = grid_tensor(ctx, mg);
        memset(top->f.data, 0, N * sizeof(double));
        for (size_t j = 0; j < N; j++) {
            memset(col.data, 0, N * sizeof(double));
            col.data[j] = 1.0;
            RB_CHECK(ctx, rb_residual_step(ctx, top->pre[0].F, top->pre[0].h, &col, &col, &work));
            for (size_t i = 0; i < N; i++) M[i * N + j] = col.data[i];
        }
        RB_CHECK(ctx, rb_ref_eig_sym(ctx, M, N, w));
        double err_step = 0;
        for (size_t i = 0; i < N; i++) err_step = fmax(err_step, fabs(w[i] - want[i]));
        /* (b) I - omega D^{-1} A from the assembled fine operator */
        RB_CHECK(ctx, rb_ref_assemble(ctx, rb_mg_operator(mg), rb_mg_shape(mg), M));
        for (size_t i = 0; i < N; i++)
            for (size_t j = 0; j < N; j++) M[i * N + j] = (i == j) - omega / diag * M[i * N + j];
        RB_CHECK(ctx, rb_ref_eig_sym(ctx, M, N, w));
        double err_op = 0;
        for (size_t i = 0; i < N; i++) err_op = fmax(err_op, fabs(w[i] - want[i]));
        print_message("Jacobi spectrum, %dD n = %zu: smoother step %.2e, assembled A %.2e (<= 1e-12)\n", d, n, err_step,
                      err_op);
        if (!(err_step <= 1e-12) || !(err_op <= 1e-12)) fail_msg("%dD: dsyev vs closed form %.3g / %.3g", d, err_step, err_op);
        rb_arena_release(ctx, &work);
        rb_tensor_release(ctx, &col);
        test_free(want), test_free(w), test_free(M);
        rb_mg_free(ctx, mg);
    }
}

/* Oracle: LAPACK dgeev. The two-grid iteration matrix (n = 15 -> 7 in 2D, 7 -> 3 in
 * 3D) assembled column by column; its spectral radius matches the measured
 * asymptotic factor of the same two-level solver (zero guess, random f) to 10%, and
 * the LFA two-grid values (2D RB-GS V(1,1) 0.074, Jacobi 4/5 0.36; 3D RB-GS 0.20,
 * Jacobi 6/7 0.50) within the bounds. */
static void test_two_grid_spectral_radius(void **state)
{
    rb_context *ctx = *state;
    const struct {
        int d;
        size_t n;
        rb_smoother sm;
        double bound;
    } cases[] = {
        {2, 15, RB_SMOOTHER_RBGS, 0.09},
        {2, 15, RB_SMOOTHER_JACOBI, 0.37},
        {3, 7, RB_SMOOTHER_RBGS, 0.22},
        {3, 7, RB_SMOOTHER_JACOBI, 0.56},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        mg_setup s = {cases[c].d, cases[c].n, NULL, 1.0, cases[c].sm, 0.0, 1, 1, RB_CYCLE_V, (cases[c].n - 1) / 2};
        rb_mg *mg = make_mg(ctx, s);
        assert_int_equal(rb_mg_levels(mg), 2);
        size_t N = rb_tensor_count(&rb_mg_vcycle(mg)->level[0].u);
        double *M = test_malloc(N * N * sizeof *M);
        assemble_cycle(ctx, mg, M);
        double rho = spectral_radius(ctx, M, N);
        double measured = asymptotic_factor(ctx, mg, 40, 5);
        print_message("two-grid %dD n = %zu %s V(1,1): rho (dgeev) %.4f, measured %.4f, ratio %.3f (1 +- 0.1), "
                      "rho <= %.2f\n", s.dim, s.n, rb_smoother_name(s.smoother), rho, measured, measured / rho,
                      cases[c].bound);
        if (!(fabs(measured / rho - 1) <= 0.1)) fail_msg("case %zu: measured %.4f vs rho %.4f", c, measured, rho);
        if (!(rho <= cases[c].bound)) fail_msg("case %zu: rho %.4f > %.2f", c, rho, cases[c].bound);
        test_free(M);
        rb_mg_free(ctx, mg);
    }
}

/* Oracle: LAPACK dgeev. The smoothing sweep of every Galerkin level is a contraction
 * (spectral radius < 1) for rough coefficients (point values over 6 orders of
 * magnitude), where D^{-1} A has eigenvalues up to ~4 and the 9-point stencil couples
 * red points to red points (the fine star level is test_jacobi_spectrum's). Regression test for two
 * set-up bugs: Jacobi omega = 1 and Gauss-Seidel omega = 1.9 (inside the documented
 * stable ranges) used to amplify there, and the cycle diverged (RB_EDIVERGED); now
 * it reduces the residual. */
static void test_smoothers_contract_on_every_level(void **state)
{
    rb_context *ctx = *state;
    size_t n = 31;
    double *a = coefficients(2, n, COEF_ROUGH, 1e6);
    const struct {
        rb_smoother sm;
        double omega;
    } cases[] = {{RB_SMOOTHER_JACOBI, 1.0}, {RB_SMOOTHER_JACOBI, 0.8}, {RB_SMOOTHER_RBGS, 1.9}, {RB_SMOOTHER_RBGS, 1.0}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        mg_setup s = {2, n, a, 1.0, cases[c].sm, cases[c].omega, 1, 1, RB_CYCLE_V, 1};
        rb_mg *mg = make_mg(ctx, s);
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_arena work = cycle_arena(ctx, mg);
        for (size_t l = 1; l + 1 < vc->nlevels; l++) {
            rb_vlevel *lv = &vc->level[l];
            size_t N = rb_tensor_count(&lv->u);
            double *M = test_malloc(N * N * sizeof *M);
            memset(lv->f.data, 0, N * sizeof(double));
            for (size_t j = 0; j < N; j++) {
                memset(lv->u.data, 0, N * sizeof(double));
                lv->u.data[j] = 1.0;
                for (size_t k = 0; k < lv->npre; k++)
                    RB_CHECK(ctx, rb_residual_step(ctx, lv->pre[k].F, lv->pre[k].h, &lv->u, &lv->u, &work));
                for (size_t i = 0; i < N; i++) M[i * N + j] = lv->u.data[i];
            }
            double rho = spectral_radius(ctx, M, N);
            print_message("rough a, %s omega = %.2f, level %zu (n = %zu): smoother spectral radius %.4f (< 1)\n",
                          rb_smoother_name(s.smoother), s.omega, l, rb_mg_level_n(mg, l), rho);
            if (!(rho < 1.0)) fail_msg("%s omega %g level %zu: spectral radius %.4f", rb_smoother_name(s.smoother), s.omega, l, rho);
            test_free(M);
        }
        rb_arena_release(ctx, &work);
        /* and the cycle no longer diverges */
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
        random_rhs(&f, 31);
        rb_mg_report rep;
        rb_status st = rb_mg_solve(ctx, mg, &f, &u, 1e-10, 40, &rep);
        print_message("rough a, %s omega = %.2f: %s, relative residual %.2e after %d cycles (< 1)\n",
                      rb_smoother_name(s.smoother), s.omega, rb_status_name(st), rep.rel_residual, rep.cycles);
        if (st != RB_OK && st != RB_EMAXITER) fail_msg("%s: %s", rb_status_name(st), rb_context_message(ctx));
        if (!(rep.rel_residual < 1.0)) fail_msg("relative residual %.3g after %d cycles", rep.rel_residual, rep.cycles);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
        rb_mg_free(ctx, mg);
    }
    test_free(a);
}

/* ---- convergence factors --------------------------------------------------------------------------- */

typedef struct factor_case {
    const char *name;
    int d;
    rb_smoother sm;
    double omega;
    int pre, post;
    double lfa;      /* the bound: the LFA two-grid value with a margin */
    double vbound;   /* the V-cycle's bound (see test_convergence_factors) */
    size_t n[3];
} factor_case;

static const factor_case factor_cases[] = {
    {"2D RB-GS V(1,1)", 2, RB_SMOOTHER_RBGS, 1.0, 1, 1, 0.09, 0.125, {63, 127, 255}},
    {"2D RB-GS V(2,1)", 2, RB_SMOOTHER_RBGS, 1.0, 2, 1, 0.06, 0.09, {63, 127, 255}},
    {"2D Jacobi 4/5 V(1,1)", 2, RB_SMOOTHER_JACOBI, 0.8, 1, 1, 0.37, 0.37, {63, 127, 255}},
    {"3D RB-GS V(1,1)", 3, RB_SMOOTHER_RBGS, 1.0, 1, 1, 0.22, 0.24, {15, 31, 63}},
    {"3D Jacobi 6/7 V(1,1)", 3, RB_SMOOTHER_JACOBI, 6.0 / 7.0, 1, 1, 0.56, 0.56, {15, 31, 63}},
};

/* Oracle: local Fourier analysis. Asymptotic residual factors (asymptotic_factor:
 * rb_mg_report.convergence_factor, zero guess, random f) of
 *   (a) the two-grid method (coarse grid (n-1)/2 solved exactly) -- what the LFA
 *       two-grid values describe: 2D RB-GS V(1,1) 0.074, V(2,1) 0.053, Jacobi 0.36;
 *       3D RB-GS 0.20, Jacobi 0.50 -- within the bounds at every n;
 *   (b) the W-cycle, which keeps the two-grid rate: within the same bounds;
 *   (c) the V-cycle (coarsest grid 7 in 2D, 1 in 3D), independent of n (largest vs
 *       smallest n within 0.02) and within vbound. A V-cycle converges more slowly
 *       than the two-grid method, as its coarse problem is solved only approximately:
 *       its spectral radius (power iteration on the error) is 0.118 / 0.081 (2D RB-GS
 *       V(1,1) / V(2,1), n = 255) and 0.227 (3D RB-GS, n = 63), and an independent
 *       numpy V-cycle gives the same (0.115 / 0.080 at n = 127, 0.220 at n = 31). So
 *       the bounds 0.09 / 0.06 / 0.22 -- the two-grid LFA values with a
 *       margin -- hold for (a) and (b), not for the V-cycle; vbound is the V-cycle's
 *       measured spectral radius with a margin of ~6%.
 * 3D (a) and (b) at n = 15, 31 only (one 3D n = 63 cycle takes 50 ms). */
static void test_convergence_factors(void **state)
{
    rb_context *ctx = *state;
    for (size_t c = 0; c < sizeof factor_cases / sizeof *factor_cases; c++) {
        const factor_case *fc = &factor_cases[c];
        double v[3], w[3], tg[3];
        for (int k = 0; k < 3; k++) {
            size_t n = fc->n[k];
            mg_setup s = {fc->d, n, NULL, 1.0, fc->sm, fc->omega, fc->pre, fc->post, RB_CYCLE_V, fc->d == 3 ? 1 : 7};
            rb_mg *mg = make_mg(ctx, s);
            int warmup = fc->d == 2 ? 40 : 20;
            v[k] = asymptotic_factor(ctx, mg, warmup, 100 + (uint64_t)k);
            rb_mg_free(ctx, mg);
            w[k] = tg[k] = NAN;
            if (fc->d == 2 || n <= 31) { /* 3D n = 63: one V-cycle is 50 ms; the W-cycle test has 3D n = 31 */
                s.cycle = RB_CYCLE_W;
                mg = make_mg(ctx, s);
                w[k] = asymptotic_factor(ctx, mg, warmup, 100 + (uint64_t)k);
                rb_mg_free(ctx, mg);
                s.cycle = RB_CYCLE_V, s.coarse_max = (n - 1) / 2;
                mg = make_mg(ctx, s);
                assert_int_equal(rb_mg_levels(mg), 2);
                tg[k] = asymptotic_factor(ctx, mg, warmup, 100 + (uint64_t)k);
                rb_mg_free(ctx, mg);
            }
            print_message("%s n = %zu: two-grid %.4f, W %.4f (<= %.2f), V %.4f (<= %.3f)\n", fc->name, n, tg[k], w[k],
                          fc->lfa, v[k], fc->vbound);
            if (!(v[k] <= fc->vbound)) fail_msg("%s n = %zu: V-cycle %.4f > %.3f", fc->name, n, v[k], fc->vbound);
            if (isnan(w[k])) continue;
            if (!(tg[k] <= fc->lfa)) fail_msg("%s n = %zu: two-grid %.4f > %.2f", fc->name, n, tg[k], fc->lfa);
            if (!(w[k] <= fc->lfa)) fail_msg("%s n = %zu: W-cycle %.4f > %.2f", fc->name, n, w[k], fc->lfa);
            if (!(w[k] <= v[k] + 1e-3)) fail_msg("%s n = %zu: W %.4f slower than V %.4f", fc->name, n, w[k], v[k]);
        }
        if (!(fabs(v[2] - v[0]) <= 0.02)) fail_msg("%s: V factor %.4f at n = %zu vs %.4f at n = %zu", fc->name, v[0], fc->n[0], v[2], fc->n[2]);
    }
}

/* Oracle: the V-cycle's own rate. W- and F-cycles converge at least as fast
 * (factor <= V's), 2D and 3D, RB-GS and Jacobi. */
static void test_w_and_f_cycles(void **state)
{
    rb_context *ctx = *state;
    const mg_setup cases[] = {
        {2, 127, NULL, 1.0, RB_SMOOTHER_RBGS, 0.0, 2, 1, RB_CYCLE_V, 0},
        {2, 127, NULL, 1.0, RB_SMOOTHER_JACOBI, 0.0, 1, 1, RB_CYCLE_V, 0},
        {3, 31, NULL, 1.0, RB_SMOOTHER_RBGS, 0.0, 1, 1, RB_CYCLE_V, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        double rate[RB_CYCLE_COUNT];
        for (int k = RB_CYCLE_V; k <= RB_CYCLE_F; k++) { /* the solver cycles (the down-leg corrects nothing) */
            mg_setup s = cases[c];
            s.cycle = (rb_cycle)k;
            rb_mg *mg = make_mg(ctx, s);
            rate[k] = asymptotic_factor(ctx, mg, 40, 7);
            rb_mg_free(ctx, mg);
        }
        print_message("%dD n = %zu %s V(%d,%d): V %.4f, W %.4f, F %.4f (W, F <= V)\n", cases[c].dim, cases[c].n,
                      rb_smoother_name(cases[c].smoother), cases[c].pre, cases[c].post, rate[RB_CYCLE_V], rate[RB_CYCLE_W],
                      rate[RB_CYCLE_F]);
        if (!(rate[RB_CYCLE_W] <= rate[RB_CYCLE_V] + 1e-3) || !(rate[RB_CYCLE_F] <= rate[RB_CYCLE_V] + 1e-3))
            fail_msg("case %zu: V %.4f W %.4f F %.4f", c, rate[RB_CYCLE_V], rate[RB_CYCLE_W], rate[RB_CYCLE_F]);
    }
}

/* rb_vcycle_run_norm: the same cycle as rb_vcycle_run (u bit for bit) and the norm
 * rb_vcycle_residual computes after it (to 1e-13); the red-black smoothers sum it in
 * their last pass, the others in a pass of its own. On 1 and 2 threads, V, W and F. */
static void test_cycle_norm_matches_separate(void **state)
{
    rb_context *ctx = *state;
    mg_setup cases[5] = {rbgs(2, 255, 2, 1), rbgs(2, 255, 1, 2), rbgs(2, 63, 1, 1), rbgs(3, 63, 1, 2), rbgs(3, 31, 2, 0)};
    cases[1].omega = 1.15, cases[1].cycle = RB_CYCLE_W;
    cases[2].smoother = RB_SMOOTHER_JACOBI, cases[2].cycle = RB_CYCLE_F;
    cases[3].omega = 1.25;
    for (size_t c = 0; c < 5; c++) {
        rb_mg *mg = make_mg(ctx, cases[c]);
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_vlevel *top = &vc->level[0];
        const size_t N = rb_tensor_count(&top->u);
        rb_arena w = cycle_arena(ctx, mg);
        rb_tensor u0, u1;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u0, top->u.shape));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u1, top->u.shape));
        rb_test_rng r = {301 + c};
        rb_test_fill(&r, &u0, -1.0, 1.0);
        random_rhs(&top->f, 303 + c);
        for (int threads = 1; threads <= 2; threads++) {
            RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
            memcpy(top->u.data, u0.data, N * sizeof(double));
            RB_CHECK(ctx, rb_vcycle_run(ctx, vc, 0, &w));
            double ref;
            RB_CHECK(ctx, rb_vcycle_residual(ctx, top->A, &top->u, &top->f, NULL, &ref, &w));
            memcpy(u1.data, top->u.data, N * sizeof(double));
            memcpy(top->u.data, u0.data, N * sizeof(double));
            double nrm = -1.0;
            RB_CHECK(ctx, rb_vcycle_run_norm(ctx, vc, 0, &nrm, &w));
            for (size_t i = 0; i < N; i++)
                if (top->u.data[i] != u1.data[i]) fail_msg("case %zu threads %d: u[%zu] differs", c, threads, i);
            if (!(fabs(nrm - ref) <= 1e-13 * ref))
                fail_msg("case %zu threads %d: norm %.17g vs separate %.17g", c, threads, nrm, ref);
        }
        double nrm;
        RB_EXPECT(ctx, RB_ENULL, "norm", rb_vcycle_run_norm(ctx, vc, 0, NULL, &w));
        RB_EXPECT(ctx, RB_EINVAL, "from", rb_vcycle_run_norm(ctx, vc, 99, &nrm, &w));
        rb_arena_release(ctx, &w);
        rb_tensor_release(ctx, &u0), rb_tensor_release(ctx, &u1);
        rb_mg_free(ctx, mg);
    }
}

/* The finest 2D grid stored split while rb_mg_solve cycles (xsplit.h; the default for RB-GS over
 * a constant star). Oracle: the same solve with it plain (rb_mg_options.plain_fine). The split
 * kernels do the plain ones' operations: the same cycles and u bit for bit; the residual norms
 * are summed in another order (history to 1e-12). V, W and F cycles, 1 and 2 threads, a
 * nonzero initial guess, widths n = m 2^k - 1 of several m. */
static void test_split_fine_grid_matches_plain(void **state)
{
    rb_context *ctx = *state;
    mg_setup cases[5] = {rbgs(2, 63, 2, 1), rbgs(2, 95, 1, 2), rbgs(2, 159, 1, 1), rbgs(2, 223, 2, 2), rbgs(2, 255, 1, 2)};
    cases[1].omega = 1.15, cases[1].cycle = RB_CYCLE_W;
    cases[2].cycle = RB_CYCLE_F;
    cases[4].omega = 1.15; /* and on the finest level (0, 3): each cycle's last pass restricts for the next */
    for (size_t c = 0; c < 5; c++)
        for (int threads = 1; threads <= 2; threads++) {
            RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
            rb_mg *mg[2];
            rb_tensor f, u[2];
            rb_mg_report rep[2];
            for (int plain = 0; plain < 2; plain++) {
                rb_mg_problem pb = {2, cases[c].n, NULL, 1.0};
                rb_mg_options o = rb_mg_options_default(2);
                o.pre = cases[c].pre, o.post = cases[c].post, o.cycle = cases[c].cycle, o.plain_fine = plain == 1;
                if (c == 4) o.fine_pre = 0, o.fine_post = 3;
                if (cases[c].omega > 0) o.omega = cases[c].omega;
                RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg[plain]));
                u[plain] = grid_tensor(ctx, mg[plain]);
                rb_test_rng r = {900 + c};
                rb_test_fill(&r, &u[plain], -1.0, 1.0);
            }
            f = grid_tensor(ctx, mg[0]);
            random_rhs(&f, 901 + c);
            for (int plain = 0; plain < 2; plain++) RB_CHECK(ctx, rb_mg_solve(ctx, mg[plain], &f, &u[plain], 1e-10, 60, &rep[plain]));
            double dh = 0.0;
            for (int k = 0; k <= rep[0].cycles && k < RB_MG_MAX_HISTORY; k++)
                dh = fmax(dh, fabs(rep[0].history[k] - rep[1].history[k]) / rep[1].history[k]);
            size_t differ = 0;
            for (size_t i = 0; i < rb_tensor_count(&f); i++) differ += u[0].data[i] != u[1].data[i];
            print_message("2D n = %zu %s V(%d,%d), %d threads: split %d cycles, plain %d; u differs at %zu points; history "
                          "%.1e (<= 1e-12)\n", cases[c].n, rb_cycle_name(cases[c].cycle), cases[c].pre, cases[c].post, threads,
                          rep[0].cycles, rep[1].cycles, differ, dh);
            if (rep[0].cycles != rep[1].cycles || differ != 0 || !(dh <= 1e-12))
                fail_msg("case %zu, %d threads: the split solve differs from the plain one", c, threads);
            for (int plain = 0; plain < 2; plain++) rb_tensor_release(ctx, &u[plain]), rb_mg_free(ctx, mg[plain]);
            rb_tensor_release(ctx, &f);
        }
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
}

/* rb_vcycle_run_next on a hierarchy whose top level has no pre-smoothing (fine_pre = 0): each
 * cycle's last pass also restricts the new residual, and the next cycle starts from it. Oracle:
 * the same cycles by rb_vcycle_run_norm, which restricts in a pass of its own: u bit for bit,
 * the norms equal, cycle after cycle, on 1 and 2 threads, V, W and F, 2D (plain layout here)
 * and 3D. A cycle started with *restricted = false restricts first (the same numbers again). */
static void test_cycle_chain_matches_separate(void **state)
{
    rb_context *ctx = *state;
    mg_setup cases[3] = {rbgs(2, 127, 1, 2), rbgs(2, 63, 1, 1), rbgs(3, 31, 2, 1)};
    cases[1].cycle = RB_CYCLE_W, cases[2].cycle = RB_CYCLE_F;
    for (size_t c = 0; c < 3; c++) {
        rb_mg_problem pb = {cases[c].dim, cases[c].n, NULL, 1.0};
        rb_mg_options o = rb_mg_options_default(cases[c].dim);
        o.pre = cases[c].pre, o.post = cases[c].post, o.cycle = cases[c].cycle, o.fine_pre = 0, o.fine_post = 3;
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_vlevel *top = &vc->level[0];
        assert_int_equal(top->npre, 0);
        const size_t N = rb_tensor_count(&top->u);
        rb_arena w = cycle_arena(ctx, mg);
        rb_tensor u0, u1[4];
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u0, top->u.shape));
        for (int k = 0; k < 4; k++) RB_CHECK(ctx, rb_tensor_alloc(ctx, &u1[k], top->u.shape));
        rb_test_rng r = {501 + c};
        rb_test_fill(&r, &u0, -1.0, 1.0);
        random_rhs(&top->f, 503 + c);
        for (int threads = 1; threads <= 2; threads++) {
            RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
            double ref[4], nrm;
            memcpy(top->u.data, u0.data, N * sizeof(double));
            for (int k = 0; k < 4; k++) {
                RB_CHECK(ctx, rb_vcycle_run_norm(ctx, vc, 0, &ref[k], &w));
                memcpy(u1[k].data, top->u.data, N * sizeof(double));
            }
            memcpy(top->u.data, u0.data, N * sizeof(double));
            bool restricted = false;
            for (int k = 0; k < 4; k++) {
                if (k == 2) restricted = false; /* told nothing is there: restricts again */
                RB_CHECK(ctx, rb_vcycle_run_next(ctx, vc, 0, &nrm, &restricted, &w));
                assert_true(restricted);
                for (size_t i = 0; i < N; i++)
                    if (top->u.data[i] != u1[k].data[i]) fail_msg("case %zu, %d threads, cycle %d: u[%zu] differs", c, threads, k, i);
                if (!(fabs(nrm - ref[k]) <= 1e-13 * ref[k]))
                    fail_msg("case %zu, %d threads, cycle %d: norm %.17g vs %.17g", c, threads, k, nrm, ref[k]);
            }
        }
        RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
        double nrm;
        bool restricted = false;
        RB_EXPECT(ctx, RB_ENULL, "restricted", rb_vcycle_run_next(ctx, vc, 0, &nrm, NULL, &w));
        RB_EXPECT(ctx, RB_ENULL, "norm", rb_vcycle_run_next(ctx, vc, 0, NULL, &restricted, &w));
        RB_EXPECT(ctx, RB_EINVAL, "from", rb_vcycle_run_next(ctx, vc, 99, &nrm, &restricted, &w));
        rb_arena_release(ctx, &w);
        rb_tensor_release(ctx, &u0);
        for (int k = 0; k < 4; k++) rb_tensor_release(ctx, &u1[k]);
        rb_mg_free(ctx, mg);
    }
}

/* The benchmark's kind of hierarchy: RB-GS V(1,2), omega = 1.15, the finest level (0,3) (each
 * cycle one pass over it); plain: the 2D grids kept plain (rb_mg_options.plain_fine). */
static rb_mg_options fine03(int d, bool plain)
{
    rb_mg_options o = rb_mg_options_default(d);
    o.pre = 1, o.post = 2, o.omega = 1.15, o.fine_pre = 0, o.fine_post = 3, o.plain_fine = plain;
    return o;
}

/* rb_mg_solve from u = 0 to 1e-9 (u, *rep), then the same cycles run apart on the hierarchy's plain
 * cycle (rb_vcycle_run_next from u = 0; with the FMG start (mg's option, and fmg_start) first f_1 = R f, rb_vcycle_fmg on level
 * 1 and rb_vcycle_run_up on level 0, whose relative residual goes to *first). Returns at how many
 * points u differs. */
static size_t solve_and_run_apart(rb_context *ctx, rb_mg *mg, bool fmg_start, const rb_tensor *f, rb_tensor *u,
                                  rb_mg_report *rep, double *first)
{
    RB_CHECK(ctx, rb_tensor_fill(ctx, u, 0.0));
    RB_CHECK(ctx, rb_mg_solve(ctx, mg, f, u, 1e-9, 50, rep));
    const rb_vcycle *vc = rb_mg_vcycle(mg);
    rb_vlevel *top = &vc->level[0];
    const size_t N = rb_tensor_count(f);
    memcpy(top->f.data, f->data, N * sizeof(double));
    memset(top->u.data, 0, N * sizeof(double));
    rb_arena w = cycle_arena(ctx, mg);
    bool restricted = false;
    double nrm;
    int k = 0;
    *first = NAN;
    if (fmg_start) {
        RB_CHECK(ctx, rb_op_apply(ctx, top->R, &top->f, &vc->level[1].f, &w));
        RB_CHECK(ctx, rb_vcycle_fmg(ctx, vc, 1, 1, &w));
        RB_CHECK(ctx, rb_vcycle_run_up(ctx, vc, 0, true, &nrm, &restricted, &w));
        double f2 = 0.0;
        for (size_t i = 0; i < N; i++) f2 += f->data[i] * f->data[i];
        *first = nrm / sqrt(f2), k = 1;
    }
    for (; k < rep->cycles; k++) RB_CHECK(ctx, rb_vcycle_run_next(ctx, vc, 0, &nrm, &restricted, &w));
    size_t differ = 0;
    for (size_t i = 0; i < N; i++) differ += top->u.data[i] != u->data[i];
    rb_arena_release(ctx, &w);
    return differ;
}

/* rb_mg_solve from u = 0 with no pre-smoothing on the finest level restricts f itself for the
 * first cycle (no residual pass). Oracle: the same number of cycles run by rb_vcycle_run_next on
 * the hierarchy's plain cycle from u = 0, which restricts f - A 0: u equal at every point, for the
 * solve on split grids (2D) and on plain ones (2D plain_fine, 3D). */
static void test_zero_start_matches_cycles(void **state)
{
    rb_context *ctx = *state;
    for (int c = 0; c < 3; c++) {
        const int d = c == 2 ? 3 : 2;
        rb_mg_problem pb = {d, d == 2 ? 127 : 31, NULL, 1.0};
        rb_mg_options o = fine03(d, c == 1);
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
        random_rhs(&f, 611 + (uint64_t)c);
        rb_mg_report rep;
        double first;
        size_t differ = solve_and_run_apart(ctx, mg, false, &f, &u, &rep, &first);
        print_message("%dD n = %zu%s, from u = 0: %d cycles, u differs at %zu points from the cycles run apart\n", d, pb.n,
                      c == 1 ? " (plain grids)" : d == 2 ? " (split grids)" : "", rep.cycles, differ);
        if (differ != 0) fail_msg("case %d: the zero start changed u", c);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
        rb_mg_free(ctx, mg);
    }
}

/* rb_vcycle_fmg. Oracle: full multigrid written out with the hierarchy's parts -- f_{l+1} = R f_l
 * by rb_op_apply, the coarsest by vc->coarse_solve, then on each level up to `from` u_l = P u_{l+1}
 * by rb_op_apply and the cycles by rb_vcycle_run -- u on level `from` bit for bit (rb_vcycle_fmg
 * takes the interpolation into the first pre-smoothing pass, setting u there: NaN in it on entry
 * changes nothing). 2D and 3D, V, W and F, 1 and 2 cycles per level, from levels 0 and 1, 1 and
 * 2 threads, with and without pre-smoothing on the finest level. */
static void test_vcycle_fmg_matches_written_out(void **state)
{
    rb_context *ctx = *state;
    mg_setup cases[5] = {rbgs(2, 127, 2, 1), rbgs(2, 63, 1, 2), rbgs(3, 31, 1, 1), rbgs(2, 95, 1, 2), rbgs(2, 255, 1, 2)};
    cases[1].cycle = RB_CYCLE_W, cases[2].cycle = RB_CYCLE_F, cases[3].omega = 1.15;
    for (size_t c = 0; c < 5; c++) { /* (n = 255: grids large enough for the threaded kernels) */
        rb_mg_problem pb = {cases[c].dim, cases[c].n, NULL, 1.0};
        rb_mg_options o = rb_mg_options_default(cases[c].dim);
        o.pre = cases[c].pre, o.post = cases[c].post, o.cycle = cases[c].cycle;
        if (cases[c].omega > 0) o.omega = cases[c].omega;
        if (c == 3) o.fine_pre = 0, o.fine_post = 3;
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        const size_t L = vc->nlevels;
        rb_arena w = cycle_arena(ctx, mg);
        for (size_t from = 0; from <= 1; from++)
            for (int cycles = 1; cycles <= 2; cycles++)
                for (int threads = 1; threads <= 2; threads++) {
                    RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
                    rb_vlevel *lv = &vc->level[from];
                    const size_t N = rb_tensor_count(&lv->u);
                    rb_tensor f0, ref;
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f0, lv->u.shape));
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, lv->u.shape));
                    random_rhs(&f0, 700 + 10 * c + from);
                    /* written out */
                    memcpy(lv->f.data, f0.data, N * sizeof(double));
                    for (size_t l = from; l + 1 < L; l++)
                        RB_CHECK(ctx, rb_op_apply(ctx, vc->level[l].R, &vc->level[l].f, &vc->level[l + 1].f, &w));
                    RB_CHECK(ctx, vc->coarse_solve(ctx, vc->coarse_data, &vc->level[L - 1].f, &vc->level[L - 1].u));
                    for (size_t l = L - 1; l-- > from;) {
                        RB_CHECK(ctx, rb_op_apply(ctx, vc->level[l].P, &vc->level[l + 1].u, &vc->level[l].u, &w));
                        for (int k = 0; k < cycles; k++) RB_CHECK(ctx, rb_vcycle_run(ctx, vc, l, &w));
                    }
                    memcpy(ref.data, lv->u.data, N * sizeof(double));
                    /* in one call, from garbage in u and the coarser levels' f */
                    memcpy(lv->f.data, f0.data, N * sizeof(double));
                    for (size_t l = from; l < L; l++) {
                        RB_CHECK(ctx, rb_tensor_fill(ctx, &vc->level[l].u, NAN));
                        if (l > from) RB_CHECK(ctx, rb_tensor_fill(ctx, &vc->level[l].f, NAN));
                    }
                    RB_CHECK(ctx, rb_vcycle_fmg(ctx, vc, from, cycles, &w));
                    size_t differ = 0;
                    for (size_t i = 0; i < N; i++) differ += lv->u.data[i] != ref.data[i];
                    if (differ != 0)
                        fail_msg("case %zu (%dD %s), from %zu, %d cycles, %d threads: u differs at %zu points", c,
                                 cases[c].dim, rb_cycle_name(cases[c].cycle), from, cycles, threads, differ);
                    rb_tensor_release(ctx, &f0), rb_tensor_release(ctx, &ref);
                }
        print_message("rb_vcycle_fmg, %dD n = %zu %s(%d,%d)%s: written out bit for bit (from 0 and 1, 1-2 cycles, "
                      "1-2 threads)\n", cases[c].dim, cases[c].n, rb_cycle_name(cases[c].cycle), cases[c].pre,
                      cases[c].post, c == 3 ? " finest (0,3)" : "");
        RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
        RB_EXPECT(ctx, RB_EINVAL, "from = 99", rb_vcycle_fmg(ctx, vc, 99, 1, &w));
        RB_EXPECT(ctx, RB_EINVAL, "cycles = 0", rb_vcycle_fmg(ctx, vc, 0, 0, &w));
        RB_EXPECT(ctx, RB_EINVAL, "cycles = 65", rb_vcycle_fmg(ctx, vc, 0, 65, &w));
        RB_EXPECT(ctx, RB_ENULL, "hierarchy", rb_vcycle_fmg(ctx, NULL, 0, 1, &w));
        rb_vcycle down = *vc;
        down.cycle = RB_CYCLE_DOWN;
        RB_EXPECT(ctx, RB_EINVAL, "down", rb_vcycle_fmg(ctx, &down, 0, 1, &w));
        rb_arena_release(ctx, &w);
        rb_mg_free(ctx, mg);
    }
}

/* rb_vcycle_run_up: one cycle's up-leg alone. Oracle: rb_vcycle_run_norm, against the cycle run
 * in parts -- the pre-smoothing steps by rb_residual_step, f_1 = R (f - A u) by rb_vlevel_residual
 * and rb_op_apply, u_1 = 0 and rb_vcycle_run on level 1, then rb_vcycle_run_up: u bit for bit, the
 * norm to 1e-13; without pre-smoothing on the finest level the up-leg also restricts its residual
 * (*restricted, and level 1's f equals R (f - A u) written out), with pre-smoothing it does not. */
static void test_vcycle_run_up_matches_cycle(void **state)
{
    rb_context *ctx = *state;
    mg_setup cases[3] = {rbgs(2, 127, 1, 2), rbgs(2, 63, 2, 1), rbgs(3, 31, 1, 2)};
    cases[1].cycle = RB_CYCLE_W;
    for (size_t c = 0; c < 3; c++) {
        rb_mg_problem pb = {cases[c].dim, cases[c].n, NULL, 1.0};
        rb_mg_options o = rb_mg_options_default(cases[c].dim);
        o.pre = cases[c].pre, o.post = cases[c].post, o.cycle = cases[c].cycle;
        if (c != 1) o.fine_pre = 0, o.fine_post = 3;
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_vlevel *top = &vc->level[0], *l1 = &vc->level[1];
        const size_t N = rb_tensor_count(&top->u), N1 = rb_tensor_count(&l1->u);
        rb_arena w = cycle_arena(ctx, mg);
        rb_tensor u0, ref, r1;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u0, top->u.shape));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, top->u.shape));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &r1, l1->u.shape));
        rb_test_rng r = {811 + c};
        rb_test_fill(&r, &u0, -1.0, 1.0);
        random_rhs(&top->f, 813 + c);
        double want, got;
        memcpy(top->u.data, u0.data, N * sizeof(double));
        RB_CHECK(ctx, rb_vcycle_run_norm(ctx, vc, 0, &want, &w));
        memcpy(ref.data, top->u.data, N * sizeof(double));
        memcpy(top->u.data, u0.data, N * sizeof(double));
        for (size_t s = 0; s < top->npre; s++)
            RB_CHECK(ctx, rb_residual_step(ctx, top->pre[s].F, top->pre[s].h, &top->u, &top->u, &w));
        RB_CHECK(ctx, rb_vlevel_residual(ctx, top, &w));
        RB_CHECK(ctx, rb_op_apply(ctx, top->R, &top->r, &l1->f, &w));
        RB_CHECK(ctx, rb_tensor_fill(ctx, &l1->u, 0.0));
        RB_CHECK(ctx, rb_vcycle_run(ctx, vc, 1, &w));
        if (vc->cycle == RB_CYCLE_W && vc->nlevels > 2) RB_CHECK(ctx, rb_vcycle_run(ctx, vc, 1, &w)); /* W visits twice */
        bool restricted = c == 1; /* (an entry value it must not keep) */
        RB_CHECK(ctx, rb_vcycle_run_up(ctx, vc, 0, false, &got, &restricted, &w));
        size_t differ = 0;
        for (size_t i = 0; i < N; i++) differ += top->u.data[i] != ref.data[i];
        double dr = 0.0;
        if (restricted) { /* level 1's f against R (f - A u) written out */
            memcpy(r1.data, l1->f.data, N1 * sizeof(double));
            RB_CHECK(ctx, rb_vlevel_residual(ctx, top, &w));
            RB_CHECK(ctx, rb_op_apply(ctx, top->R, &top->r, &l1->f, &w));
            for (size_t i = 0; i < N1; i++) dr = fmax(dr, fabs(r1.data[i] - l1->f.data[i]));
        }
        print_message("rb_vcycle_run_up, %dD n = %zu %s, finest pre %zu: u differs at %zu points, norm %.1e, "
                      "restricted %d (|R r - f_1| %.1e)\n", cases[c].dim, cases[c].n, rb_cycle_name(cases[c].cycle),
                      top->npre, differ, fabs(got - want) / want, (int)restricted, dr);
        if (differ != 0 || !(fabs(got - want) <= 1e-13 * want) || restricted != (top->npre == 0) || !(dr <= 1e-13))
            fail_msg("case %zu: the up-leg differs from the cycle's", c);
        RB_EXPECT(ctx, RB_EINVAL, "below the coarsest", rb_vcycle_run_up(ctx, vc, vc->nlevels - 1, false, &got, &restricted, &w));
        RB_EXPECT(ctx, RB_EINVAL, "below the coarsest", rb_vcycle_run_up(ctx, vc, SIZE_MAX, false, &got, &restricted, &w));
        RB_EXPECT(ctx, RB_ENULL, "norm", rb_vcycle_run_up(ctx, vc, 0, false, NULL, &restricted, &w));
        RB_EXPECT(ctx, RB_ENULL, "restricted", rb_vcycle_run_up(ctx, vc, 0, false, &got, NULL, &w));
        rb_arena_release(ctx, &w);
        rb_tensor_release(ctx, &u0), rb_tensor_release(ctx, &ref), rb_tensor_release(ctx, &r1);
        rb_mg_free(ctx, mg);
    }
}

/* rb_mg_options.fmg_start. Oracles: (1) the same first cycle run apart on the hierarchy's plain
 * cycle -- f_1 = R f, rb_vcycle_fmg on level 1, rb_vcycle_run_up on level 0, then
 * rb_vcycle_run_next -- u at every point, for the split 2D solve (its grids converted, its kernels
 * the split ones), the plain 2D and 3D; (2) LAPACK dpbsv to 1e-10 (solved to 1e-13); (3) from a
 * nonzero u the option changes nothing (bit for bit). And what it is for: on -Laplace u = 1,
 * n = 1023, RB-GS V(1,2) over the finest level's (0,3), omega = 1.14 (bench/RESULTS.md), the
 * first residual falls below half the zero start's and 1e-8 is reached in 4 cycles instead of 5. */
static void test_fmg_start(void **state)
{
    rb_context *ctx = *state;
    for (int c = 0; c < 4; c++) {
        const int d = c == 2 ? 3 : 2;
        rb_mg_problem pb = {d, d == 2 ? 127 : 31, NULL, 1.0};
        rb_mg_options o = fine03(d, c == 1);
        if (c == 3) o.cycle = RB_CYCLE_W;
        o.fmg_start = true;
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
        random_rhs(&f, 911 + (uint64_t)c);
        rb_mg_report rep;
        double first;
        size_t differ = solve_and_run_apart(ctx, mg, true, &f, &u, &rep, &first);
        const size_t N = rb_tensor_count(&f);
        rb_tensor first_u = grid_tensor(ctx, mg);
        memcpy(first_u.data, u.data, N * sizeof(double));
        print_message("%dD n = %zu%s, FMG start: %d cycles, first residual %.3e (run apart %.3e), u differs at %zu "
                      "points from the cycles run apart\n", d, pb.n, c == 1 ? " (plain grids)" : d == 2 ? " (split grids)" : "",
                      rep.cycles, rep.history[1], first, differ);
        if (differ != 0 || !(fabs(first - rep.history[1]) <= 1e-12 * first))
            fail_msg("case %d: the FMG start differs from its parts", c);
        double err = versus_lapack(ctx, mg, false, c == 0, 1e-13, 921 + (uint64_t)c);
        print_message("  against LAPACK dpbsv: %.2e (<= 1e-10)\n", err);
        if (!(err <= 1e-10)) fail_msg("case %d: %.3g from LAPACK", c, err);
        /* from a nonzero u: as without the option */
        rb_tensor u2 = grid_tensor(ctx, mg);
        rb_test_rng r = {931 + (uint64_t)c};
        rb_test_fill(&r, &u, -1.0, 1.0);
        memcpy(u2.data, u.data, N * sizeof(double));
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-9, 50, &rep));
        rb_mg *plain_mg;
        o.fmg_start = false;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &plain_mg));
        RB_CHECK(ctx, rb_mg_solve(ctx, plain_mg, &f, &u2, 1e-9, 50, &rep));
        differ = 0;
        for (size_t i = 0; i < N; i++) differ += u.data[i] != u2.data[i];
        if (differ != 0) fail_msg("case %d: from a nonzero u the FMG start changed u at %zu points", c, differ);
        /* from u = 0 again, the hierarchy's grids now holding the last solve: the first solve's u */
        RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.0));
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-9, 50, &rep));
        differ = 0;
        for (size_t i = 0; i < N; i++) differ += u.data[i] != first_u.data[i];
        if (differ != 0) fail_msg("case %d: a second FMG start differs from the first at %zu points", c, differ);
        rb_tensor_release(ctx, &first_u);
        rb_mg_free(ctx, plain_mg);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &u2);
        rb_mg_free(ctx, mg);
    }
    /* the benchmark's problem */
    rb_mg_problem pb = {2, 1023, NULL, 1.0};
    rb_mg_report rep[2];
    for (int fmg = 0; fmg < 2; fmg++) {
        rb_mg_options o = rb_mg_options_default(2);
        o.pre = 1, o.post = 2, o.omega = 1.14, o.fine_pre = 0, o.fine_post = 3, o.fmg_start = fmg == 1;
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
        RB_CHECK(ctx, rb_tensor_fill(ctx, &f, 1.0));
        RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.0));
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f, &u, 1e-8, 50, &rep[fmg]));
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
        rb_mg_free(ctx, mg);
    }
    print_message("-Laplace u = 1, 2D n = 1023: first residual %.3e from zero, %.3e FMG start; 1e-8 in %d and %d cycles\n",
                  rep[0].history[1], rep[1].history[1], rep[0].cycles, rep[1].cycles);
    if (!(rep[1].history[1] <= 0.5 * rep[0].history[1]) || rep[0].cycles != 5 || rep[1].cycles != 4)
        fail_msg("the FMG start did not save a cycle");
    /* not reached in max_cycles: RB_EMAXITER, the caller's u untouched (zeros, bit for bit) */
    pb.n = 127;
    rb_mg_options o = fine03(2, false);
    o.fmg_start = true;
    rb_mg *mg;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
    random_rhs(&f, 941);
    RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.0));
    RB_EXPECT(ctx, RB_EMAXITER, "after 1 cycles", rb_mg_solve(ctx, mg, &f, &u, 1e-12, 1, &rep[0]));
    size_t touched = 0;
    for (size_t i = 0; i < rb_tensor_count(&u); i++) touched += u.data[i] != 0.0 || signbit(u.data[i]);
    if (touched != 0 || rep[0].cycles != 1) fail_msg("RB_EMAXITER: u changed at %zu points, %d cycles", touched, rep[0].cycles);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
    /* it needs the finest level without pre-smoothing */
    o.fine_pre = -1;
    RB_EXPECT(ctx, RB_EINVAL, "fmg_start needs fine_pre = 0", rb_mg_create(ctx, &pb, &o, &mg));
}

/* The finest level smoothed apart (fine_pre = 0, fine_post = 3 over coarse V(1,2)): oracle
 * LAPACK dpbsv, 2D (its finest grid split) and 3D, to 1e-10. */
static void test_fine_smoothing_versus_lapack(void **state)
{
    rb_context *ctx = *state;
    for (int d = 2; d <= 3; d++) {
        rb_mg_problem pb = {d, d == 2 ? 127 : 15, NULL, 1.0};
        rb_mg_options o = fine03(d, false);
        rb_mg *mg;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        double err = versus_lapack(ctx, mg, false, false, 1e-13, 77 + (uint64_t)d);
        print_message("LAPACK, finest level (0,3) over V(1,2), %dD n = %zu: %.2e (<= 1e-10)\n", d, pb.n, err);
        if (!(err <= 1e-10)) fail_msg("%dD: %.3g", d, err);
        rb_mg_free(ctx, mg);
    }
}

/* ---- FMG ----------------------------------------------------------------------------------------- */

/* Oracle: the discretisation error. FMG with RB-GS V(2,1) ends within 2.2x (one cycle
 * per level) and 1.1x (two) of the error of the converged discrete solution, both
 * measured against the analytic solution (2D, n = 63 .. 255). FMG's u is output only:
 * NaN in it on entry is fine. */
static void test_fmg_reaches_discretisation_accuracy(void **state)
{
    rb_context *ctx = *state;
    for (size_t n = 63; n <= 255; n = 2 * n + 1) {
        rb_mg *mg = make_mg(ctx, rbgs(2, n, 2, 1));
        double h = 1.0 / (double)(n + 1), disc = discretisation_error(ctx, 2, n);
        rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
        analytic_rhs(2, &f, h);
        for (int cycles = 1; cycles <= 2; cycles++) {
            RB_CHECK(ctx, rb_tensor_fill(ctx, &u, NAN));
            rb_mg_report rep;
            RB_CHECK(ctx, rb_mg_fmg(ctx, mg, &f, &u, cycles, &rep));
            double ratio = max_error_analytic(2, &u, h) / disc, bound = cycles == 1 ? 2.2 : 1.1;
            print_message("FMG V(2,1), %d cycle(s)/level, n = %zu: error / discretisation error = %.3f (<= %.1f)\n",
                          cycles, n, ratio, bound);
            if (!(ratio <= bound)) fail_msg("n = %zu, %d cycles: ratio %.3f", n, cycles, ratio);
        }
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
        rb_mg_free(ctx, mg);
    }
}

/* ---- MG-PCG, many right-hand sides -------------------------------------------------------------- */

/* Oracle: LAPACK dpbsv. MG-preconditioned CG with Jacobi, RB-GS and Chebyshev
 * smoothing (2D n = 63, 3D n = 15; constant and a = 1 | 1e4 halves) converges to the
 * dpbsv solution, <= 1e-10 relative. */
static void test_pcg_versus_lapack(void **state)
{
    rb_context *ctx = *state;
    for (int d = 2; d <= 3; d++) {
        size_t n = d == 2 ? 63 : 15;
        double *a = coefficients(d, n, COEF_HALVES, 1e4);
        for (int sm = 0; sm < RB_SMOOTHER_COUNT; sm++)
            for (int var = 0; var < 2; var++) {
                mg_setup s = {d, n, var ? a : NULL, 1.0, (rb_smoother)sm, 0.0, 2, 2, RB_CYCLE_V, 0};
                rb_mg *mg = make_mg(ctx, s);
                double err = versus_lapack(ctx, mg, true, false, 1e-13, 41 + (uint64_t)sm);
                print_message("MG-PCG %s, %dD n = %zu, %s: vs dpbsv %.2e (<= 1e-10)\n", rb_smoother_name(s.smoother), d, n,
                              var ? "a = 1 | 1e4" : "a = 1", err);
                if (!(err <= 1e-10)) fail_msg("%s %dD: %.3g", rb_smoother_name(s.smoother), d, err);
                rb_mg_free(ctx, mg);
            }
        test_free(a);
    }
}

/* Oracle: LAPACK dpbsv. One set-up, many right-hand sides: two different f solved
 * with the same rb_mg (and the first again) give the dpbsv answers. */
static void test_setup_once_many_rhs(void **state)
{
    rb_context *ctx = *state;
    double *a = coefficients(2, 63, COEF_HALVES, 1e2);
    mg_setup s = rbgs(2, 63, 2, 1);
    s.coef = a;
    rb_mg *mg = make_mg(ctx, s);
    rb_tensor f[2], u = grid_tensor(ctx, mg), v = grid_tensor(ctx, mg);
    for (int k = 0; k < 2; k++) f[k] = grid_tensor(ctx, mg), random_rhs(&f[k], 50 + (uint64_t)k);
    for (int k = 0; k < 3; k++) {
        rb_mg_report rep;
        RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.0));
        RB_CHECK(ctx, rb_mg_solve(ctx, mg, &f[k % 2], &u, 1e-13, 100, &rep));
        lapack_solve(ctx, mg, &f[k % 2], &v);
        double err = rb_tensor_max_rel_diff(&u, &v);
        print_message("one set-up, right-hand side %d: vs dpbsv %.2e (<= 1e-10)\n", k, err);
        if (!(err <= 1e-10)) fail_msg("rhs %d: %.3g", k, err);
    }
    rb_tensor_release(ctx, &f[0]), rb_tensor_release(ctx, &f[1]), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &v);
    rb_mg_free(ctx, mg);
    test_free(a);
}

/* ---- statuses -------------------------------------------------------------------------------------- */

static void expect_create(rb_context *ctx, rb_status want, const char *needle, rb_mg_problem pb, rb_mg_options o)
{
    rb_mg *mg = (rb_mg *)&pb; /* a sentinel: must stay untouched */
    RB_EXPECT(ctx, want, needle, rb_mg_create(ctx, &pb, &o, &mg));
    assert_ptr_equal(mg, (rb_mg *)&pb);
}

/* Refused input, each with its status and a message naming the problem. */
static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_mg_options o = rb_mg_options_default(2);
    size_t lo, hi;
    rb_mg_nearest_sizes(100, &lo, &hi);
    assert_int_equal(lo, 95), assert_int_equal(hi, 111);
    expect_create(ctx, RB_EINVAL, "95 and 111", (rb_mg_problem){2, 100, NULL, 1.0}, o);
    expect_create(ctx, RB_EINVAL, "nearest valid size: 1", (rb_mg_problem){2, 0, NULL, 1.0}, o);
    expect_create(ctx, RB_EINVAL, "dim = 4", (rb_mg_problem){4, 15, NULL, 1.0}, o);
    expect_create(ctx, RB_EINVAL, "dim = 0", (rb_mg_problem){0, 15, NULL, 1.0}, o);
    const double bad[] = {0.0, -1.0, NAN, INFINITY};
    for (int i = 0; i < 4; i++) expect_create(ctx, RB_EINVAL, "must be positive and finite", (rb_mg_problem){2, 15, NULL, bad[i]}, o);
    double *a = coefficients(2, 15, COEF_HALVES, 10.0);
    for (int i = 0; i < 4; i++) {
        a[17] = bad[i];
        expect_create(ctx, RB_EINVAL, "a[17]", (rb_mg_problem){2, 15, a, 1.0}, o);
    }
    test_free(a);
    rb_mg_problem pb = {2, 15, NULL, 1.0};
    rb_mg_options oj = o;
    oj.smoother = RB_SMOOTHER_JACOBI, oj.omega = 1.2;
    expect_create(ctx, RB_EINVAL, "Jacobi omega = 1.2 is outside the stable range", pb, oj);
    oj.smoother = RB_SMOOTHER_RBGS, oj.omega = 2.0;
    expect_create(ctx, RB_EINVAL, "Gauss-Seidel omega = 2 is outside the stable range", pb, oj);
    oj.omega = NAN;
    expect_create(ctx, RB_EINVAL, "omega = nan", pb, oj);
    oj = o, oj.pre = 0, oj.post = 0;
    expect_create(ctx, RB_EINVAL, "at least one", pb, oj);
    oj = o, oj.smoother = RB_SMOOTHER_CHEBYSHEV, oj.cheb_ratio = 1.0;
    expect_create(ctx, RB_EINVAL, "cheb_ratio", pb, oj);
    oj = o, oj.coarse = (rb_coarse)7;
    expect_create(ctx, RB_EINVAL, "coarse = 7", pb, oj);
    oj = o, oj.fine_pre = -2;
    expect_create(ctx, RB_EINVAL, "fine_pre = -2", pb, oj);
    oj = o, oj.fine_post = 17;
    expect_create(ctx, RB_EINVAL, "fine_post = 17", pb, oj);
    oj = o, oj.fine_pre = 0, oj.fine_post = 0;
    expect_create(ctx, RB_EINVAL, "on the finest level", pb, oj);
    {
        rb_mg *m0 = NULL;
        oj = o, oj.fine_pre = 0, oj.fine_post = 3;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &oj, &m0));
        rb_tensor f0 = grid_tensor(ctx, m0), u0 = grid_tensor(ctx, m0);
        random_rhs(&f0, 5);
        rb_mg_report r0;
        RB_EXPECT(ctx, RB_EINVAL, "fine_pre = 0", rb_mg_pcg(ctx, m0, &f0, &u0, 1e-8, 10, &r0));
        rb_tensor_release(ctx, &f0), rb_tensor_release(ctx, &u0);
        rb_mg_free(ctx, m0);
    }
    RB_EXPECT(ctx, RB_ENULL, "problem", rb_mg_create(ctx, NULL, &o, &(rb_mg *){NULL}));

    rb_mg *mg = make_mg(ctx, rbgs(2, 15, 2, 1));
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg), wrong, wrong_u;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &wrong, rb_shape_2d(1, 1, 7, 7)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &wrong_u, rb_shape_2d(1, 1, 15, 16)));
    random_rhs(&f, 3);
    RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.25));
    rb_mg_report rep;
    f.data[5] = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "f[5] = nan is not finite", rb_mg_solve(ctx, mg, &f, &u, 1e-8, 10, &rep));
    RB_EXPECT(ctx, RB_EINVAL, "f[5]", rb_mg_pcg(ctx, mg, &f, &u, 1e-8, 10, &rep));
    RB_EXPECT(ctx, RB_EINVAL, "f[5]", rb_mg_fmg(ctx, mg, &f, &u, 1, &rep));
    f.data[5] = 0.5;
    u.data[3] = INFINITY;
    RB_EXPECT(ctx, RB_EINVAL, "u[3] = inf", rb_mg_solve(ctx, mg, &f, &u, 1e-8, 10, &rep));
    u.data[3] = 0.25;
    RB_EXPECT(ctx, RB_ESHAPE, "the grid is (1,1,1,15,15)", rb_mg_solve(ctx, mg, &wrong, &wrong, 1e-8, 10, &rep));
    RB_EXPECT(ctx, RB_ESHAPE, "u has shape (1,1,1,15,16)", rb_mg_solve(ctx, mg, &f, &wrong_u, 1e-8, 10, &rep));
    RB_EXPECT(ctx, RB_ESHAPE, "the grid is (1,1,1,15,15)", rb_mg_pcg(ctx, mg, &wrong, &wrong, 1e-8, 10, &rep));
    RB_EXPECT(ctx, RB_ESHAPE, "g must be the full grid (1,1,1,17,17)", rb_mg_fold_boundary(ctx, mg, &wrong, &f));
    const double bad_tol[] = {0.0, 1.0, -1e-8, NAN, 2.0};
    for (int i = 0; i < 5; i++) {
        RB_EXPECT(ctx, RB_EINVAL, "must lie in (0, 1)", rb_mg_solve(ctx, mg, &f, &u, bad_tol[i], 10, &rep));
        RB_EXPECT(ctx, RB_EINVAL, "must lie in (0, 1)", rb_mg_pcg(ctx, mg, &f, &u, bad_tol[i], 10, &rep));
    }
    RB_EXPECT(ctx, RB_EINVAL, "max_cycles = 0", rb_mg_solve(ctx, mg, &f, &u, 1e-8, 0, &rep));
    RB_EXPECT(ctx, RB_EINVAL, "cycles_per_level = 0", rb_mg_fmg(ctx, mg, &f, &u, 0, &rep));
    /* nothing above touched u */
    for (size_t i = 0; i < rb_tensor_count(&u); i++) assert_true(u.data[i] == 0.25);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &wrong), rb_tensor_release(ctx, &wrong_u);
    rb_mg_free(ctx, mg);
}

/* A solve that cannot reach its tolerance in max_cycles: RB_EMAXITER, the history
 * of every cycle in the report (decreasing), u untouched. Same for MG-PCG. */
static void test_maxiter_keeps_history_and_u(void **state)
{
    rb_context *ctx = *state;
    rb_mg *mg = make_mg(ctx, rbgs(2, 63, 1, 1));
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
    random_rhs(&f, 9);
    for (int pcg = 0; pcg < 2; pcg++) {
        RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 0.125));
        rb_mg_report rep;
        if (pcg) RB_EXPECT(ctx, RB_EMAXITER, "after 2 iterations", rb_mg_pcg(ctx, mg, &f, &u, 1e-12, 2, &rep));
        else RB_EXPECT(ctx, RB_EMAXITER, "after 3 cycles", rb_mg_solve(ctx, mg, &f, &u, 1e-12, 3, &rep));
        int k = pcg ? 2 : 3;
        assert_int_equal(rep.cycles, k);
        assert_false(rep.converged);
        assert_true(rep.rel_residual == rep.history[k]);
        assert_true(rep.history[k] > 1e-12);
        for (int i = 1; i <= k; i++) assert_true(rep.history[i] < 0.5 * rep.history[i - 1]);
        for (size_t i = 0; i < rb_tensor_count(&u); i++) assert_true(u.data[i] == 0.125);
        print_message("%s: RB_EMAXITER after %d, history %.2e ... %.2e, u untouched\n", pcg ? "MG-PCG" : "MG", k,
                      rep.history[0], rep.history[k]);
    }
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
}

/* RB_EDIVERGED through the public API. With the smoothers contracting on every level
 * (test_smoothers_contract_on_every_level) and an exact coarsest solve, the cycle is
 * an A-norm contraction for Galerkin hierarchies and LFA-convergent for the
 * rediscretised ones: no options the set-up accepts make the iteration itself grow.
 * What remains is a solution beyond the range of doubles: a = 1e-300 and |f| ~ 1e300
 * make u ~ 1e597, the first cycle overflows, and the solve reports a non-finite
 * residual as RB_EDIVERGED with the history so far, leaving u untouched. (Before:
 * |f|^2 overflowed, every relative residual was 0, and the untouched initial guess
 * came back as converged after 0 cycles.) */
static void test_overflow_is_reported_as_diverged(void **state)
{
    rb_context *ctx = *state;
    mg_setup s = rbgs(2, 31, 2, 1);
    s.a = 1e-300;
    rb_mg *mg = make_mg(ctx, s);
    rb_tensor f = grid_tensor(ctx, mg), u = grid_tensor(ctx, mg);
    random_rhs(&f, 13);
    for (size_t i = 0; i < rb_tensor_count(&f); i++) f.data[i] *= 1e300;
    RB_CHECK(ctx, rb_tensor_fill(ctx, &u, 1.0));
    rb_mg_report rep;
    RB_EXPECT(ctx, RB_EDIVERGED, "diverged", rb_mg_solve(ctx, mg, &f, &u, 1e-8, 20, &rep));
    assert_int_equal(rep.cycles, 1);
    assert_false(rep.converged);
    assert_true(rep.history[0] > 0 && isfinite(rep.history[0]));
    assert_false(isfinite(rep.history[1]));
    for (size_t i = 0; i < rb_tensor_count(&u); i++) assert_true(u.data[i] == 1.0);
    /* CG runs on f / |f| and converges; the answer |f| x overflows */
    RB_EXPECT(ctx, RB_EDIVERGED, "the solution overflows", rb_mg_pcg(ctx, mg, &f, &u, 1e-8, 20, &rep));
    assert_false(rep.converged);
    for (size_t i = 0; i < rb_tensor_count(&u); i++) assert_true(u.data[i] == 1.0);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lapack_constant_coefficient, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_lapack_variable_coefficient, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_rediscretised_coarse_operators, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fold_boundary_reproduces_quadratics, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_exact_discrete_sine_solution, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_analytic_second_order, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_jacobi_spectrum, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_two_grid_spectral_radius, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_smoothers_contract_on_every_level, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_convergence_factors, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_w_and_f_cycles, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_norm_matches_separate, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_split_fine_grid_matches_plain, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_chain_matches_separate, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fine_smoothing_versus_lapack, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_zero_start_matches_cycles, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_vcycle_fmg_matches_written_out, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_vcycle_run_up_matches_cycle, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fmg_start, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fmg_reaches_discretisation_accuracy, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_pcg_versus_lapack, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_setup_once_many_rhs, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_maxiter_keeps_history_and_u, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_is_reported_as_diverged, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("multigrid", tests, NULL, NULL);
}
