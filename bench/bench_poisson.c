/* bench_poisson.c — resbridge's side of the multigrid comparison with hypre PFMG
 * (bench/hypre/bench_hypre.c, bench/run_poisson.sh).
 *
 * Problem (the same as bench_hypre's): -Delta u = 1 on the unit square (--dim 2)
 * or cube (--dim 3), n interior points per direction, zero Dirichlet values, zero
 * initial guess, solved by rb_mg_solve (RB-GS V(2,1) cycles by default) until
 * ||f - A u|| / ||f|| <= 1e-8.
 *
 * Timing: rb_mg_create once per thread count (seconds_setup: hierarchy, operators,
 * coarse factorisation, work memory), then --reps rounds of solves from u = 0, each
 * thread count on its own solver in turn (alternated, so that the speed-up between
 * thread counts is not a change of the machine's load); seconds_solve is the best,
 * seconds_solve_median the median. (The first solve also pays the first touch of the
 * level grids' pages.) Then what the machine gives on each thread count, as many rounds:
 * a compute-bound loop and a STREAM triad (seconds_compute, seconds_triad: best and
 * median), the ceilings of the solve's speed-up in those minutes. One JSON line per
 * thread count.
 *
 * --fmg: full multigrid (rb_mg_fmg, one cycle per level) to the discretisation error,
 * HPGMG's metric: -div(a grad u) = f with u* = prod sin(pi x_i), a = 1 (--coef const)
 * or 1 + 1/2 prod sin(2 pi x_i) (--coef smooth, the Galerkin hierarchy), f from u*
 * analytically. Reports unknowns per second of the best of --reps FMG solves (set-up
 * apart), the FMG result's max error against u*, the discrete solution's (solved to
 * 1e-10), their ratio, and the order observed between n and (n-1)/2.
 *
 * --sweeps: the smoother's memory bandwidth instead. Red-black Gauss-Seidel sweeps
 * on the 2D n^2 grid through rb_residual_step: the red step then the black step
 * (two passes), one step of the colour sweep op (one pass), and one step of the
 * colour sweep op doing two sweeps in one pass (time per sweep), against a STREAM
 * triad a = b + s c on n^2 doubles in the same process, interleaved rounds, best
 * of each; 24 bytes per grid point and sweep, as bench_stencil counts.
 *
 * OpenBLAS (linked by resbridge) starts a spinning thread pool when the program
 * loads; unless OPENBLAS_NUM_THREADS is set, the program sets it to 1 and
 * restarts itself (see bench_stencil.c).
 *
 *     bench_poisson --dim 2 --n 1023 --threads 1,2 --reps 10
 * --class-sweeps: one Gauss-Seidel sweep (one step of the colour sweep op) over 3D
 * point-dependent stencils on n^3, as the variable-coefficient levels run them: the 7-point
 * star over red-black colours, and the 27-point stencil of Galerkin levels over its 8 parity
 * classes with the weights read in place and packed (rb_op_parity_pack); kinds interleaved,
 * best of --reps, in nanoseconds per grid point.
 *
 *     bench_poisson --sweeps --n 2047 --threads 1,2 --reps 30
 *     bench_poisson --class-sweeps --n 127 --threads 1,2 --reps 10
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchkit.h"
#include "resbridge/resbridge.h"

#define MAX_LIST 8
#define MAX_REPS 1000
#define TOL 1e-8
#define PI 3.14159265358979323846

static int parse_list(const char *s, long *out, int max)
{
    int k = 0;
    char *end;
    while (*s && k < max) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1) return -1;
        out[k++] = v;
        if (*end && *end != ',') return -1;
        s = *end == ',' ? end + 1 : end;
    }
    return k;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double s[MAX_REPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* The 1-minute load average (Linux), or -1. */
static double load_average(void)
{
    double l = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1) l = -1.0;
        fclose(f);
    }
    return l;
}

static int fail(rb_context *ctx, rb_status st, const char *what)
{
    fprintf(stderr, "bench_poisson: %s: %s (%s)\n", what, rb_status_name(st), rb_context_message(ctx));
    return 1;
}

typedef struct options {
    int dim, reps, pre, post, fine_pre, fine_post, plain_fine, fmg_start, sweeps, fmg, smooth, rediscretise, class_sweeps;
    rb_cycle cycle;
    size_t n;
    double omega;
    long threads[MAX_LIST];
    int nthreads;
} options;

/* ---- time to tolerance ------------------------------------------------------------------------- */

static void first_touch(double *p, size_t len, double v, int threads)
{
    const long long m = (long long)len;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long long i = 0; i < m; i++) p[i] = v + 1e-3 * (double)(i % 1000);
}

/* What the cores and the memory give this process, measured beside the solves: a fixed amount of
 * arithmetic (16 independent multiply-add chains per thread, in registers, no memory traffic)
 * split over T threads, and a STREAM triad over arrays 6x the L3 cache (TRIAD_LEN doubles each).
 * Their speed-ups from 1 to T threads bound any code's in those minutes: on this shared virtual
 * machine neither is always T (the triad's often far from it). */
#define TRIAD_LEN (8u << 20)
#define COMPUTE_ITERS 8000000L
static double compute_seconds(int threads)
{
    double sink = 0.0, t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : sink)
    for (int part = 0; part < threads; part++) {
        double a[16];
        for (int i = 0; i < 16; i++) a[i] = 1.0 + 1e-9 * i;
        for (long k = 0; k < COMPUTE_ITERS / threads; k++)
            for (int i = 0; i < 16; i++) a[i] = a[i] * 0.9999999 + 1e-9;
        for (int i = 0; i < 16; i++) sink += a[i];
    }
    const double t = bench_now() - t0;
    if (!(sink > 0.0)) fprintf(stderr, "bench_poisson: compute loop: %g\n", sink); /* (keeps the loop) */
    return t;
}

/* One hierarchy per thread count (each set up on its own threads, set-up timed), then --reps
 * rounds in which every thread count solves once, in turn (the order reversed every other
 * round): each count's best and median come from the same minutes of the machine, so the
 * speed-up of two cores over one compares like with like. Then as many rounds of the compute
 * loop and the triad (compute_seconds, bench_triad_seconds) on each thread count: seconds_compute and
 * seconds_triad, their best, and their medians. */
static int solve_case(rb_context *ctx, const options *o)
{
    const int K = o->nthreads;
    rb_mg_problem pb = {o->dim, o->n, NULL, 1.0};
    rb_mg_options opt = rb_mg_options_default(o->dim);
    opt.omega = o->omega;
    if (o->pre >= 0) opt.pre = o->pre;
    if (o->post >= 0) opt.post = o->post;
    opt.fine_pre = o->fine_pre, opt.fine_post = o->fine_post, opt.plain_fine = o->plain_fine != 0, opt.cycle = o->cycle;
    opt.fmg_start = o->fmg_start != 0;
    const double load_before = load_average();
    rb_mg *mg[MAX_LIST] = {NULL};
    double setup[MAX_LIST] = {0}, t0;
    rb_status st = RB_OK;
    const char *what = "rb_mg_create";
    for (int i = 0; i < K && st == RB_OK; i++) {
        st = rb_context_set_threads(ctx, (int)o->threads[i]);
        if (st != RB_OK) break;
        t0 = bench_now();
        st = rb_mg_create(ctx, &pb, &opt, &mg[i]);
        setup[i] = bench_now() - t0;
    }
    rb_tensor f = {0}, u = {0};
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &f, rb_mg_shape(mg[0]));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, rb_mg_shape(mg[0]));
    if (st == RB_OK) st = rb_tensor_fill(ctx, &f, 1.0);
    static double t[MAX_LIST][MAX_REPS], ct[MAX_LIST][MAX_REPS], tt[MAX_LIST][MAX_REPS];
    double *ta = malloc(3 * (size_t)TRIAD_LEN * sizeof *ta);
    if (ta == NULL && st == RB_OK) st = rb_fail(ctx, RB_ENOMEM, "triad arrays");
    if (ta != NULL) first_touch(ta, 3 * (size_t)TRIAD_LEN, 1.0, (int)o->threads[K - 1]); /* (counts >= 1: parse_list) */
    rb_mg_report rep[MAX_LIST] = {{0}};
    if (st == RB_OK) what = "rb_mg_solve";
    for (int r = 0; r < o->reps && st == RB_OK; r++)
        for (int j = 0; j < K && st == RB_OK; j++) {
            const int i = r % 2 ? K - 1 - j : j;
            st = rb_context_set_threads(ctx, (int)o->threads[i]);
            if (st == RB_OK) st = rb_tensor_fill(ctx, &u, 0.0);
            t0 = bench_now();
            if (st == RB_OK) st = rb_mg_solve(ctx, mg[i], &f, &u, TOL, 100, &rep[i]);
            t[i][r] = bench_now() - t0;
        }
    /* then the machine, as many rounds (after the solves, so that the triad does not empty the
     * caches they start from) */
    for (int r = 0; r < o->reps && st == RB_OK; r++)
        for (int j = 0; j < K; j++) {
            const int i = r % 2 ? K - 1 - j : j;
            ct[i][r] = compute_seconds((int)o->threads[i]);
            tt[i][r] = bench_triad_seconds(ta, ta + TRIAD_LEN, ta + 2 * (size_t)TRIAD_LEN, TRIAD_LEN, (int)o->threads[i]);
        }
    int rc = st != RB_OK ? fail(ctx, st, what) : 0;
    char fine[64] = "";
    if (o->fine_pre >= 0 || o->fine_post >= 0)
        snprintf(fine, sizeof fine, ", finest (%d,%d)", o->fine_pre >= 0 ? o->fine_pre : opt.pre,
                 o->fine_post >= 0 ? o->fine_post : opt.post);
    const double load_after = load_average();
    for (int i = 0; i < K && rc == 0; i++) {
        double best = t[i][0], cbest = ct[i][0], tbest = tt[i][0];
        for (int r = 1; r < o->reps; r++)
            best = fmin(best, t[i][r]), cbest = fmin(cbest, ct[i][r]), tbest = fmin(tbest, tt[i][r]);
        printf("{\"peer\":\"resbridge\",\"config\":\"rbgs %s(%d,%d)%s%s%s%s\",\"dim\":%d,\"n\":%zu,\"threads\":%ld,"
               "\"cycles\":%d,\"rel_residual\":%.6e,\"convergence_factor\":%.4f,\"levels\":%zu,"
               "\"seconds_setup\":%.6f,\"seconds_solve\":%.6f,\"seconds_solve_median\":%.6f,"
               "\"seconds_first_solve\":%.6f,\"seconds_compute\":%.6f,\"seconds_compute_median\":%.6f,"
               "\"seconds_triad\":%.6f,\"seconds_triad_median\":%.6f,\"reps\":%d,\"alternated_with\":%d,\"omega\":%.4f,"
               "\"loadavg_before\":%.2f,\"loadavg_after\":%.2f}\n",
               rb_cycle_name(opt.cycle), opt.pre, opt.post, fine, o->fmg_start ? ", FMG start" : "", o->omega > 0 ? " omega" : "",
               o->plain_fine ? ", plain finest grid" : "", o->dim, o->n, o->threads[i], rep[i].cycles, rep[i].rel_residual,
               rep[i].convergence_factor, rb_mg_levels(mg[i]), setup[i], best, median(t[i], o->reps), t[i][0], cbest,
               median(ct[i], o->reps), tbest, median(tt[i], o->reps), o->reps, K - 1,
               o->omega > 0 ? o->omega : 1.0, load_before, load_after);
    }
    fflush(stdout);
    free(ta);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    for (int i = 0; i < K; i++) rb_mg_free(ctx, mg[i]);
    return rc;
}

/* ---- full multigrid to the discretisation error (HPGMG's metric) ----------------------------- */

/* u* = prod sin(pi x_i) on the unit square / cube and a = 1 + 1/2 prod sin(2 pi x_i)
 * (--coef smooth) or 1: f = -div(a grad u*) = d pi^2 a u* - grad a . grad u*. */
static double coef_at(int dim, const double *x, int smooth)
{
    double s = 1.0;
    for (int i = 0; i < dim; i++) s *= sin(2.0 * PI * x[i]);
    return smooth ? 1.0 + 0.5 * s : 1.0;
}

static double exact_at(int dim, const double *x)
{
    double s = 1.0;
    for (int i = 0; i < dim; i++) s *= sin(PI * x[i]);
    return s;
}

static double rhs_at(int dim, const double *x, int smooth)
{
    double f = dim * PI * PI * coef_at(dim, x, smooth) * exact_at(dim, x);
    if (smooth)
        for (int i = 0; i < dim; i++) {
            double da = PI * cos(2.0 * PI * x[i]), du = PI * cos(PI * x[i]);
            for (int j = 0; j < dim; j++)
                if (j != i) {
                    da *= sin(2.0 * PI * x[j]);
                    du *= sin(PI * x[j]);
                }
            f -= da * du;
        }
    return f;
}

/* The grid point of linear index p (with or without the boundary, m points per direction). */
static void point_of(int dim, size_t p, size_t m, double h, size_t first, double *x)
{
    for (int i = dim - 1; i >= 0; i--, p /= m) x[i] = (double)(p % m + first) * h;
}

/* Max |u - u*| over the grid. */
static double max_error(const rb_tensor *u, int dim, size_t n)
{
    const double h = 1.0 / (double)(n + 1);
    double e = 0.0, x[3];
    for (size_t p = 0; p < rb_tensor_count(u); p++) {
        point_of(dim, p, n, h, 1, x);
        double d = fabs(u->data[p] - exact_at(dim, x));
        if (d > e) e = d;
    }
    return e;
}

/* One problem of size n: set-up; f; the discrete solution's error (solved to 1e-10); and
 * the FMG solve (one cycle per level), best of reps, with its error. */
typedef struct fmg_result {
    double setup, best, first, err_fmg, err_disc;
    size_t levels;
} fmg_result;

static rb_status fmg_problem(rb_context *ctx, const options *o, size_t n, int reps, fmg_result *res)
{
    const int dim = o->dim;
    const size_t m = n + 2, total = dim == 3 ? m * m * m : m * m;
    const double h = 1.0 / (double)(n + 1);
    double *coef = rb_malloc(ctx, total * sizeof(double)), x[3];
    if (coef == NULL) return rb_context_last_status(ctx);
    for (size_t p = 0; p < total; p++) point_of(dim, p, m, h, 0, x), coef[p] = coef_at(dim, x, o->smooth);
    rb_mg_problem pb = {dim, n, o->smooth ? coef : NULL, 1.0};
    rb_mg_options opt = rb_mg_options_default(dim);
    opt.omega = o->omega;
    if (o->pre >= 0) opt.pre = o->pre;
    if (o->post >= 0) opt.post = o->post;
    opt.coarse = o->rediscretise ? RB_COARSE_REDISCRETISE : RB_COARSE_GALERKIN;
    rb_mg *mg = NULL;
    double t0 = bench_now();
    rb_status st = rb_mg_create(ctx, &pb, &opt, &mg);
    res->setup = bench_now() - t0;
    rb_free(ctx, coef);
    rb_tensor f = {0}, u = {0};
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &f, rb_mg_shape(mg));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, rb_mg_shape(mg));
    rb_mg_report rep;
    if (st == RB_OK) {
        res->levels = rb_mg_levels(mg);
        for (size_t p = 0; p < rb_tensor_count(&f); p++) point_of(dim, p, n, h, 1, x), f.data[p] = rhs_at(dim, x, o->smooth);
        st = rb_mg_solve(ctx, mg, &f, &u, 1e-10, 100, &rep);
        res->err_disc = max_error(&u, dim, n);
    }
    res->best = INFINITY;
    for (int r = 0; r < reps && st == RB_OK; r++) {
        t0 = bench_now();
        st = rb_mg_fmg(ctx, mg, &f, &u, 1, &rep);
        const double t = bench_now() - t0;
        if (r == 0) res->first = t;
        if (t < res->best) res->best = t;
    }
    if (st == RB_OK) res->err_fmg = max_error(&u, dim, n);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg);
    return st;
}

static int fmg_case(rb_context *ctx, const options *o, int T)
{
    rb_status st = rb_context_set_threads(ctx, T);
    if (st != RB_OK) return fail(ctx, st, "--threads");
    const double load_before = load_average();
    fmg_result fine, half;
    st = fmg_problem(ctx, o, (o->n - 1) / 2, 1, &half);
    if (st == RB_OK) st = fmg_problem(ctx, o, o->n, o->reps, &fine);
    if (st != RB_OK) return fail(ctx, st, "FMG");
    const double dof = pow((double)o->n, o->dim);
    rb_mg_options opt = rb_mg_options_default(o->dim);
    printf("{\"bench\":\"fmg\",\"dim\":%d,\"n\":%zu,\"coef\":\"%s\",\"coarse\":\"%s\",\"threads\":%d,"
           "\"config\":\"FMG, rbgs V(%d,%d)%s, 1 cycle per level\",\"levels\":%zu,\"seconds_setup\":%.6f,\"seconds_fmg\":%.6f,\"seconds_first_fmg\":%.6f,"
           "\"dof_per_second\":%.4e,\"error_fmg\":%.4e,\"error_discretisation\":%.4e,\"error_ratio\":%.3f,"
           "\"observed_order\":%.3f,\"reps\":%d,\"loadavg_before\":%.2f,\"loadavg_after\":%.2f}\n",
           o->dim, o->n, o->smooth ? "smooth" : "const", o->smooth && o->rediscretise ? "rediscretise" : o->smooth ? "galerkin" : "rediscretise", T, o->pre >= 0 ? o->pre : opt.pre, o->post >= 0 ? o->post : opt.post,
           o->omega > 0 ? " omega" : "", fine.levels, fine.setup, fine.best, fine.first, dof / fine.best, fine.err_fmg,
           fine.err_disc, fine.err_fmg / fine.err_disc, log2(half.err_disc / fine.err_disc), o->reps, load_before,
           load_average());
    fflush(stdout);
    return 0;
}

/* ---- the smoother's bandwidth ------------------------------------------------------------------ */

enum { K_TRIAD, K_COLOURS, K_SWEEP1, K_SWEEP2, K_SPLIT1, K_SPLIT2, K_COUNT };
static const char *const sweep_names[K_COUNT] = {"STREAM triad", "RB-GS sweep: red step + black step",
                                                 "RB-GS sweep: colour sweep op, 1 sweep per pass",
                                                 "RB-GS sweep: colour sweep op, 2 sweeps per pass (time / 2)",
                                                 "RB-GS sweep: split grid (xsplit), 1 sweep per pass",
                                                 "RB-GS sweep: split grid (xsplit), 2 sweeps per pass (time / 2)"};

static int sweep_case(rb_context *ctx, const options *o, int T)
{
    const size_t n = o->n, len = n * n;
    const rb_shape sh = rb_shape_2d(1, 1, n, n);
    rb_status st = rb_context_set_threads(ctx, T);
    rb_tensor u = {0}, b = {0}, bs = {0};
    rb_op *A = NULL, *J = NULL, *red = NULL, *black = NULL, *gs1 = NULL, *gs2 = NULL, *xs1 = NULL, *xs2 = NULL;
    rb_arena work = {0};
    double *ta = rb_malloc(ctx, len * sizeof(double)), *tb = rb_malloc(ctx, len * sizeof(double));
    double *tc = rb_malloc(ctx, len * sizeof(double));
    if (ta == NULL || tb == NULL || tc == NULL) st = RB_ENOMEM;
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, sh);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &b, sh);
    if (st == RB_OK) st = rb_op_laplacian_create(ctx, 2, 1.0 / (double)(n + 1), &A);
    if (st == RB_OK) st = rb_op_jacobi_create(ctx, A, &b, &J);
    if (st == RB_OK) st = rb_op_colour_create(ctx, J, 0, &red);
    if (st == RB_OK) st = rb_op_colour_create(ctx, J, 1, &black);
    const rb_op *rb[2] = {red, black};
    if (st == RB_OK) st = rb_op_colour_sweep_create(ctx, rb, 2, 1.0, 1, &gs1);
    if (st == RB_OK) st = rb_op_colour_sweep_create(ctx, rb, 2, 1.0, 2, &gs2);
    /* the same sweeps on the grid stored split (xsplit.h), as rb_mg_solve keeps its finest 2D grid */
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &bs, sh);
    if (st == RB_OK) st = rb_op_xsplit_create(ctx, gs1, true, true, &xs1);
    if (st == RB_OK) st = rb_op_xsplit_create(ctx, gs2, true, true, &xs2);
    if (st == RB_OK) st = rb_op_xsplit_rhs(ctx, xs1, &bs, &b);
    if (st == RB_OK) st = rb_op_xsplit_rhs(ctx, xs2, &bs, &b);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_residual_workspace(red, sh));
    int rc = 0;
    if (st != RB_OK) rc = fail(ctx, st, "sweep set-up");
    double best[K_COUNT];
    for (int k = 0; k < K_COUNT; k++) best[k] = INFINITY;
    const double load_before = load_average();
    if (rc == 0) {
        first_touch(ta, len, 0.0, T), first_touch(tb, len, 1.0, T), first_touch(tc, len, 2.0, T);
        first_touch(u.data, len, 0.5, T), first_touch(b.data, len, 1.0, T), first_touch(bs.data, len, 1.0, T);
        for (int round = 0; round <= o->reps && rc == 0; round++) { /* round 0 warms up */
            double t[K_COUNT];
            t[K_TRIAD] = bench_triad_seconds(ta, tb, tc, len, T);
            double t0 = bench_now();
            st = rb_residual_step(ctx, red, 1.0, &u, &u, &work);
            if (st == RB_OK) st = rb_residual_step(ctx, black, 1.0, &u, &u, &work);
            t[K_COLOURS] = bench_now() - t0;
            t0 = bench_now();
            if (st == RB_OK) st = rb_residual_step(ctx, gs1, 1.0, &u, &u, &work);
            t[K_SWEEP1] = bench_now() - t0;
            t0 = bench_now();
            if (st == RB_OK) st = rb_residual_step(ctx, gs2, 1.0, &u, &u, &work);
            t[K_SWEEP2] = 0.5 * (bench_now() - t0);
            t0 = bench_now();
            if (st == RB_OK) st = rb_residual_step(ctx, xs1, 1.0, &u, &u, &work);
            t[K_SPLIT1] = bench_now() - t0;
            t0 = bench_now();
            if (st == RB_OK) st = rb_residual_step(ctx, xs2, 1.0, &u, &u, &work);
            t[K_SPLIT2] = 0.5 * (bench_now() - t0);
            if (st != RB_OK) rc = fail(ctx, st, "sweep");
            for (int k = 0; k < K_COUNT && round > 0; k++)
                if (t[k] < best[k]) best[k] = t[k];
        }
    }
    if (rc == 0) {
        const double triad = 24.0 * (double)len / best[K_TRIAD] * 1e-9;
        for (int k = 0; k < K_COUNT; k++) {
            const double gbps = 24.0 * (double)len / best[k] * 1e-9;
            printf("{\"bench\":\"sweep\",\"kernel\":\"%s\",\"n\":%zu,\"threads\":%d,\"seconds\":%.6e,\"gbps\":%.3f,"
                   "\"triad_gbps\":%.3f,\"ratio_to_triad\":%.3f,\"reps\":%d,\"loadavg_before\":%.2f,"
                   "\"loadavg_after\":%.2f}\n",
                   sweep_names[k], n, T, best[k], gbps, triad, gbps / triad, o->reps, load_before, load_average());
        }
        fflush(stdout);
    }
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, gs1), rb_op_free(ctx, gs2), rb_op_free(ctx, xs1), rb_op_free(ctx, xs2);
    rb_op_free(ctx, red), rb_op_free(ctx, black), rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &bs);
    rb_free(ctx, ta), rb_free(ctx, tb), rb_free(ctx, tc);
    return rc;
}

/* ---- one Gauss-Seidel sweep over point-dependent stencils (--class-sweeps) ----------------- */

/* A 3D point-dependent stencil on n^3 (the 27-point Galerkin shape, or the 7-point star) with
 * weights varying smoothly and a dominant centre, as a Galerkin level of the smooth problem
 * has. */
static rb_status bench_varstencil(rb_context *ctx, size_t n, bool full, rb_op **A)
{
    const rb_shape g = rb_shape_3d(1, 1, n, n, n);
    rb_status st = rb_op_varstencil_create(ctx, 3, full ? RB_STENCIL_FULL : RB_STENCIL_STAR, g, NULL, A);
    if (st != RB_OK) return st;
    int vd, nt, ce;
    rb_shape gg;
    rb_op_varstencil_info(*A, &vd, &nt, &ce, &gg);
    const size_t pts = n * n * n;
    for (int t = 0; t < nt; t++)
        for (size_t p = 0; p < pts; p++)
            (*A)->params[(size_t)t * pts + p] = t == ce ? 2.0 * nt : -1.0 - 0.5 * sin(0.001 * (double)p + (double)t);
    return RB_OK;
}

enum { C_STAR, C_FULL, C_FULL_PACKED, C_COUNT };
static const char *const class_names[C_COUNT] = {
    "7-point star, red-black colours", "27-point, 8 parity classes, weights in place",
    "27-point, 8 parity classes, packed (rb_op_parity_pack)"};

static int class_sweep_case(rb_context *ctx, const options *o, int T)
{
    const size_t n = o->n;
    const rb_shape sh = rb_shape_3d(1, 1, n, n, n);
    rb_status st = rb_context_set_threads(ctx, T);
    rb_tensor u = {0}, b = {0};
    rb_op *A[2] = {NULL, NULL}, *J[2] = {NULL, NULL}, *C[2 + 16] = {NULL}, *G[C_COUNT] = {NULL};
    rb_arena work = {0};
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, sh);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &b, sh);
    for (int k = 0; k < 2 && st == RB_OK; k++) st = bench_varstencil(ctx, n, k == 1, &A[k]);
    for (int k = 0; k < 2 && st == RB_OK; k++) st = rb_op_jacobi_create(ctx, A[k], &b, &J[k]);
    for (int c = 0; c < 2 && st == RB_OK; c++) st = rb_op_colour_create(ctx, J[0], c, &C[c]);
    for (int c = 0; c < 16 && st == RB_OK; c++) st = rb_op_parity_create(ctx, J[1], c % 8, &C[2 + c]);
    for (int c = 8; c < 16 && st == RB_OK; c++) st = rb_op_parity_pack(ctx, C[2 + c]);
    if (st == RB_OK) st = rb_op_colour_sweep_create(ctx, (const rb_op *const *)C, 2, 1.0, 1, &G[C_STAR]);
    if (st == RB_OK) st = rb_op_colour_sweep_create(ctx, (const rb_op *const *)C + 2, 8, 1.0, 1, &G[C_FULL]);
    if (st == RB_OK) st = rb_op_colour_sweep_create(ctx, (const rb_op *const *)C + 10, 8, 1.0, 1, &G[C_FULL_PACKED]);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_residual_workspace(G[C_FULL], sh) + 4096);
    int rc = 0;
    if (st != RB_OK) rc = fail(ctx, st, "class sweep set-up");
    double best[C_COUNT];
    for (int k = 0; k < C_COUNT; k++) best[k] = INFINITY;
    const double load_before = load_average();
    if (rc == 0) {
        first_touch(u.data, n * n * n, 0.5, T), first_touch(b.data, n * n * n, 1.0, T);
        for (int round = 0; round <= o->reps && rc == 0; round++) /* round 0 warms up; kinds interleaved */
            for (int k = 0; k < C_COUNT && rc == 0; k++) {
                const double t0 = bench_now();
                st = rb_residual_step(ctx, G[k], 1.0, &u, &u, &work);
                const double t = bench_now() - t0;
                if (st != RB_OK) rc = fail(ctx, st, "class sweep");
                if (round > 0 && t < best[k]) best[k] = t;
            }
    }
    if (rc == 0) {
        for (int k = 0; k < C_COUNT; k++)
            printf("{\"bench\":\"class_sweep\",\"kernel\":\"%s\",\"n\":%zu,\"threads\":%d,\"seconds\":%.6e,"
                   "\"ns_per_point\":%.3f,\"reps\":%d,\"loadavg_before\":%.2f,\"loadavg_after\":%.2f}\n",
                   class_names[k], n, T, best[k], best[k] / (double)(n * n * n) * 1e9, o->reps, load_before, load_average());
        fflush(stdout);
    }
    rb_arena_release(ctx, &work);
    for (int k = 0; k < C_COUNT; k++) rb_op_free(ctx, G[k]);
    for (int c = 0; c < 18; c++) rb_op_free(ctx, C[c]);
    for (int k = 0; k < 2; k++) rb_op_free(ctx, J[k]), rb_op_free(ctx, A[k]);
    rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &b);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_poisson [--dim 2|3] [--n N] [--threads 1,2] [--reps R] [--omega W] [--pre A --post B]\n"
               "                     [--fine-pre A --fine-post B] [--cycle V|W|F] [--plain-fine] [--fmg-start]\n"
               "       bench_poisson --sweeps [--n N] [--threads 1,2] [--reps R]\n"
               "       bench_poisson --fmg [--dim 2|3] [--n N] [--coef const|smooth] [--coarse galerkin|rediscretise]\n"
               "                     [--threads 1,2] [--reps R]\n"
               "       bench_poisson --class-sweeps [--n N] [--threads 1,2] [--reps R]\n"
               "  Time to ||f - A u|| <= 1e-8 ||f|| for -Delta u = 1, u = 0 on the boundary, from u = 0\n"
               "  (best of R solves after one set-up); or (--sweeps) the red-black sweep's bandwidth\n"
               "  against a STREAM triad; or (--fmg) full multigrid to the discretisation error in unknowns\n"
               "  per second; or (--class-sweeps) one Gauss-Seidel sweep over 3D point-dependent stencils\n"
               "  (7-point red-black, 27-point parity classes with weights in place and packed), in ns per\n"
               "  point. Defaults: --dim 2 --n 1023 --threads 1 --reps 5.\n");
}

int main(int argc, char **argv)
{
    if (getenv("OPENBLAS_NUM_THREADS") == NULL && setenv("OPENBLAS_NUM_THREADS", "1", 1) == 0) {
        execv("/proc/self/exe", argv);
        /* not restarted: measure anyway */
    }
    options o = {.dim = 2, .reps = 5, .pre = -1, .post = -1, .fine_pre = -1, .fine_post = -1, .n = 1023, .threads = {1},
                 .nthreads = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x[1];
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--sweeps")) {
            o.sweeps = 1;
            continue;
        } else if (!strcmp(a, "--fmg")) {
            o.fmg = 1;
            continue;
        } else if (!strcmp(a, "--class-sweeps")) {
            o.class_sweeps = 1;
            continue;
        } else if (!strcmp(a, "--plain-fine")) {
            o.plain_fine = 1;
            continue;
        } else if (!strcmp(a, "--fmg-start")) {
            o.fmg_start = 1;
            continue;
        } else if (v != NULL && !strcmp(a, "--cycle")) {
            ok = !strcmp(v, "V") || !strcmp(v, "W") || !strcmp(v, "F");
            o.cycle = !strcmp(v, "W") ? RB_CYCLE_W : !strcmp(v, "F") ? RB_CYCLE_F : RB_CYCLE_V;
        } else if (v != NULL && !strcmp(a, "--coef")) {
            ok = !strcmp(v, "const") || !strcmp(v, "smooth"), o.smooth = !strcmp(v, "smooth");
        } else if (v != NULL && !strcmp(a, "--coarse")) {
            ok = !strcmp(v, "galerkin") || !strcmp(v, "rediscretise"), o.rediscretise = !strcmp(v, "rediscretise");
        } else if (v == NULL) {
            ok = 0;
        } else if (!strcmp(a, "--dim")) {
            ok = parse_list(v, x, 1) == 1 && (x[0] == 2 || x[0] == 3), o.dim = (int)x[0];
        } else if (!strcmp(a, "--n")) {
            ok = parse_list(v, x, 1) == 1, o.n = (size_t)x[0];
        } else if (!strcmp(a, "--reps")) {
            ok = parse_list(v, x, 1) == 1 && x[0] <= MAX_REPS, o.reps = (int)x[0];
        } else if (!strcmp(a, "--pre") || !strcmp(a, "--post") || !strcmp(a, "--fine-pre") || !strcmp(a, "--fine-post")) {
            char *end;
            long k = strtol(v, &end, 10);
            ok = *end == 0 && end != v && k >= 0 && k <= 16;
            *(!strcmp(a, "--pre") ? &o.pre : !strcmp(a, "--post") ? &o.post : !strcmp(a, "--fine-pre") ? &o.fine_pre : &o.fine_post) = (int)k;
        } else if (!strcmp(a, "--threads")) {
            o.nthreads = parse_list(v, o.threads, MAX_LIST);
            ok = o.nthreads >= 1;
        } else if (!strcmp(a, "--omega")) {
            char *end;
            o.omega = strtod(v, &end);
            ok = *end == 0 && o.omega > 0 && o.omega < 2;
        } else {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "bench_poisson: bad argument near '%s'\n", a);
            usage(stderr);
            return 2;
        }
        i++;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    int rc = 0;
    if (!o.sweeps && !o.class_sweeps && !o.fmg) rc = solve_case(ctx, &o);
    for (int i = 0; i < o.nthreads && rc == 0 && (o.sweeps || o.class_sweeps || o.fmg); i++)
        rc = o.sweeps         ? sweep_case(ctx, &o, (int)o.threads[i])
             : o.class_sweeps ? class_sweep_case(ctx, &o, (int)o.threads[i])
                              : fmg_case(ctx, &o, (int)o.threads[i]);
    rb_context_free(ctx);
    return rc;
}
