/* test_mg_kernels.c — the fast multigrid kernels against their reference paths.
 *
 * Oracles, each the path the fast kernel stands in for:
 *   red-black half-sweep (colour op's fused kernel)    rb_residual_step_generic (mask of F, then x + h F), 1e-13
 *   colour sweep op, fused (h = omega)                 the colour steps one after another: equal bit for bit
 *   colour sweep op, any h                             rb_residual_step_generic and the conformance suite
 *   3D 7-point stencil y = A x                         rb_conv_gather (the reference loop): equal
 *   residual r = f - A u (+ norm), 2D and 3D           rb_conv_gather, then f - Au: equal; the norm to 1e-14
 *   restriction / prolongation / prolongation added    rb_conv_gather / rb_conv_scatter (+ the sum): equal
 *   residual restricted in one pass                    residual by the reference loop, then rb_conv_gather: equal
 *   colour sweep op with the stages around it          P c by rb_conv_scatter added, the sweep op's step, the
 *     (rb_residual_step_pass: prolongation added,        residual by the reference loop, its sum of squares and
 *     residual norm, restriction; in 3D also in        rb_conv_gather: grids equal, norm 1e-13
 *     tiles of rows)
 *   the same in tiles on grids of few rows             the pass without tiles on one thread: equal, norm 1e-13
 *   the threads' schedule of the wavefront             the schedule written out line by line: each line and
 *     (rb_redblack_bound, rb_redblack_reach)             stage once, no triangle beside work on its lines
 * on odd and even sizes, degenerate ones (extent 1, 2), batches, 1..3 threads, in place
 * and out of place; and thread counts against each other (bit for bit).
 */
#include "conformance.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "grid_fast.h"
#include "redblack_internal.h"

static const int THREADS[] = {1, 2, 3};
#define NTHREADS 3
/* Rows per tile of the 3D wavefront (rb_colour_sweep_set_tile): chosen (none on these grids),
 * the fewest (as many as the pass has stages), and a few, so that the tiles meet the threads'
 * blocks, the coarse rows and the grid's edge in every way. */
static const size_t TILES[] = {0, 1, 4, 9};
#define NTILES 4

/* max |a - b| (NaN if either has one) */
static double max_abs_diff(const double *a, const double *b, size_t n)
{
    double d = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (isnan(e)) return NAN;
        if (e > d) d = e;
    }
    return d;
}

/* A constant star (2 dims + 1 taps) with random off-centre weights and a dominant centre. */
static rb_op *random_star(rb_context *ctx, int dims, uint64_t seed)
{
    rb_test_rng r = {seed};
    double w[7];
    int nt = 2 * dims + 1;
    for (int t = 0; t < nt; t++) w[t] = rb_test_uniform(&r, -1.5, -0.2);
    w[dims] = 2.0 * dims + rb_test_uniform(&r, 0.5, 1.5);
    rb_op *A;
    RB_CHECK(ctx, rb_op_stencil_create(ctx, dims, RB_STENCIL_STAR, w, &A));
    return A;
}

static rb_tensor alloc_random(rb_context *ctx, rb_shape s, uint64_t seed)
{
    rb_tensor t;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &t, s));
    rb_test_rng r = {seed};
    rb_test_fill(&r, &t, -1, 1);
    return t;
}

/* Shapes (N, 1, D, H, W) for the red-black kernels: tiny, odd / even, and big enough
 * (>= 32768 points, >= 3 * 14 lines) to run on several threads. */
static const size_t SHAPES2[][3] = {{1, 1, 1}, {1, 1, 2}, {1, 2, 1}, {1, 3, 3}, {2, 4, 7}, {1, 9, 9},   {1, 10, 17},
                                    {2, 17, 16}, {1, 33, 40}, {1, 200, 181}, {1, 201, 164}, {2, 185, 190}};
static const size_t SHAPES3[][4] = {{1, 1, 1, 1},  {1, 2, 3, 4},   {2, 3, 3, 3},   {1, 5, 6, 9},
                                    {1, 7, 12, 17}, {1, 48, 33, 31}, {1, 45, 34, 24}, {2, 44, 30, 27}};

static rb_shape shape_of(int dims, size_t i)
{
    if (dims == 2) return rb_shape_2d(SHAPES2[i][0], 1, SHAPES2[i][1], SHAPES2[i][2]);
    return rb_shape_3d(SHAPES3[i][0], 1, SHAPES3[i][1], SHAPES3[i][2], SHAPES3[i][3]);
}
static size_t nshapes(int dims) { return dims == 2 ? sizeof SHAPES2 / sizeof *SHAPES2 : sizeof SHAPES3 / sizeof *SHAPES3; }

/* ---- the threads' schedule of the wavefront ----------------------------------------------------- */

/* Lines touched (read or written) by stage s on line l: l - 1 .. l + 1. */
typedef struct span {
    long long lo, hi; /* [lo, hi]; lo > hi: none */
} span;
static void span_add(span *a, long long l) { a->lo = l - 1 < a->lo ? l - 1 : a->lo, a->hi = l + 1 > a->hi ? l + 1 : a->hi; }
static bool span_meets(span a, span b) { return a.lo <= a.hi && b.lo <= b.hi && a.lo <= b.hi && b.lo <= a.hi; }

/* Oracle: the schedule written out line by line. For every L < 160, S <= 12 stages and T = 2..6
 * threads that rb_redblack_run takes (T <= L / (2S + 2)), with rb_redblack_bound's blocks and
 * rb_redblack_reach's mark:
 *   - the trapezoids (stage s on [lo + s, hi - s), shrinking only at inner boundaries) and the
 *     triangles (stage s on [r - s, r + s) at each inner boundary r) compute every line at every
 *     stage exactly once;
 *   - a triangle (with the straddling restriction's residual lines 2C .. 2C + 2 around
 *     b = r + S - 1, when S >= 2) touches no line that work running beside it touches: any other triangle,
 *     any other thread's trapezoid except the next thread's first `reach` times (which it
 *     waits for), at any time. */
static void test_wavefront_schedule(void **state)
{
    (void)state;
    enum { LMAX = 160, SMAX = 12, TMAX = 6 };
    static int count[LMAX][SMAX];
    int cases = 0;
    for (long long L = 1; L < LMAX; L++)
        for (int S = 1; S <= SMAX; S++)
            for (int T = 2; T <= TMAX && T <= L / (2LL * S + 2); T++, cases++) {
                long long b[TMAX + 1];
                for (int t = 0; t <= T; t++) b[t] = rb_redblack_bound(L, S, T, t);
                if (b[0] != 0 || b[T] != L) fail_msg("L %lld S %d T %d: the blocks do not cover [0, L)", L, S, T);
                for (int t = 0; t < T; t++) /* (before any line is counted: the lines stay in [0, L)) */
                    if (b[t + 1] <= b[t]) fail_msg("L %lld S %d T %d: block %d empty", L, S, T, t);
                memset(count, 0, sizeof count);
                span tri[TMAX];
                for (int t = 0; t + 1 < T; t++) {
                    const long long r = b[t + 1], C = (r + S) / 2 - 1; /* b + 1 = r + S */
                    tri[t] = (span){LLONG_MAX, LLONG_MIN};
                    for (int s = 0; s < S; s++)
                        for (long long l = r - s; l < r + s; l++) {
                            if (l < 0 || l >= L) fail_msg("L %lld S %d T %d: triangle %d leaves the grid", L, S, T, t);
                            count[l][s]++, span_add(&tri[t], l);
                        }
                    if (S >= 2) /* a residual stage after one colour step at least */
                        for (long long l = 2 * C; l <= 2 * C + 2; l++) span_add(&tri[t], l);
                }
                for (int t = 0; t < T; t++) {
                    const long long lo = b[t], hi = b[t + 1], times = hi + S - 1 - lo;
                    const long long mark = rb_redblack_reach(S) < times ? rb_redblack_reach(S) : times;
                    const int slo = t > 0, shi = t + 1 < T;
                    for (long long x = lo; x < hi + S - 1; x++) {
                        span touched = {LLONG_MAX, LLONG_MIN};
                        for (int s = 0; s < S; s++) {
                            const long long l = x - s;
                            if (l >= lo + s * slo && l < hi - s * shi) count[l][s]++, span_add(&touched, l);
                        }
                        for (int u = 0; u + 1 < T; u++) { /* the triangle thread u fills beside this time */
                            if (u == t) continue;                         /* its own: after its trapezoid */
                            if (u == t - 1 && x - lo < mark) continue; /* waits for these times */
                            if (span_meets(tri[u], touched))
                                fail_msg("L %lld S %d T %d: thread %d at time %lld touches lines %lld..%lld of the "
                                         "triangle at %lld", L, S, T, t, x, touched.lo, touched.hi, b[u + 1]);
                        }
                    }
                }
                for (int t = 0; t + 1 < T; t++)
                    for (int u = t + 1; u + 1 < T; u++)
                        if (span_meets(tri[t], tri[u])) fail_msg("L %lld S %d T %d: triangles %d and %d meet", L, S, T, t, u);
                for (long long l = 0; l < L; l++)
                    for (int s = 0; s < S; s++)
                        if (count[l][s] != 1)
                            fail_msg("L %lld S %d T %d: stage %d on line %lld done %d times", L, S, T, s, l, count[l][s]);
            }
    assert_true(cases > 1000);
}

/* ---- red-black half-sweeps -------------------------------------------------------------------- */

static void test_half_sweep_vs_generic(void **state)
{
    rb_context *ctx = *state;
    const double hs[] = {1.0, 0.75, 1.3};
    for (int dims = 2; dims <= 3; dims++)
        for (size_t si = 0; si < nshapes(dims); si++) {
            rb_shape s = shape_of(dims, si);
            size_t n = rb_shape_count(s);
            rb_tensor b = alloc_random(ctx, s, 11 + si), x = alloc_random(ctx, s, 101 + si);
            rb_tensor yg, yf, first;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &first, s));
            rb_op *A = random_star(ctx, dims, 7 + si), *J, *C[2];
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &C[0]));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &C[1]));
            rb_arena work = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(C[0], s) + 4096));
            for (int c = 0; c < 2; c++)
                for (int hi = 0; hi < 3; hi++)
                    for (int ti = 0; ti < NTHREADS; ti++) {
                        RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
                        RB_CHECK(ctx, rb_residual_step_generic(ctx, C[c], hs[hi], &x, &yg, &work));
                        /* out of place, then in place */
                        RB_CHECK(ctx, rb_residual_step(ctx, C[c], hs[hi], &x, &yf, &work));
                        double e1 = rb_tensor_max_rel_diff(&yf, &yg);
                        rb_tensor_copy(ctx, &x, &yf);
                        RB_CHECK(ctx, rb_residual_step(ctx, C[c], hs[hi], &yf, &yf, &work));
                        double e2 = rb_tensor_max_rel_diff(&yf, &yg);
                        if (!(e1 <= 1e-13 && e2 <= 1e-13))
                            fail_msg("%dD shape %zu colour %d h %g threads %d: half-sweep vs generic %.3g / %.3g", dims, si, c,
                                     hs[hi], THREADS[ti], e1, e2);
                        if (ti == 0) rb_tensor_copy(ctx, &yf, &first);
                        else if (max_abs_diff(yf.data, first.data, n) != 0.0)
                            fail_msg("%dD shape %zu: %d threads differ from 1 thread", dims, si, THREADS[ti]);
                    }
            rb_arena_release(ctx, &work);
            rb_op_free(ctx, C[0]), rb_op_free(ctx, C[1]), rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yg);
            rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &first);
        }
}

/* ---- the colour sweep op ---------------------------------------------------------------------- */

/* Fused: all sweeps in one pass; oracle: the colour steps one after another (equal). */
static void test_sweep_op_vs_colour_steps(void **state)
{
    rb_context *ctx = *state;
    const double omegas[] = {1.0, 1.15, 0.8};
    for (int dims = 2; dims <= 3; dims++)
        for (size_t si = 0; si < nshapes(dims); si++) {
            rb_shape s = shape_of(dims, si);
            size_t n = rb_shape_count(s);
            rb_tensor b = alloc_random(ctx, s, 21 + si), x = alloc_random(ctx, s, 201 + si);
            rb_tensor ref, y, yo, yg;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yo, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, s));
            rb_op *A = random_star(ctx, dims, 17 + si), *J, *C[2];
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &C[0]));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &C[1]));
            for (int order = 0; order < 2; order++)
                for (int sweeps = 1; sweeps <= 3; sweeps++)
                    for (int wi = 0; wi < 3; wi++) {
                        const rb_op *cols[2] = {C[order], C[1 - order]};
                        rb_op *G;
                        RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, 2, omegas[wi], sweeps, &G));
                        rb_arena work = {0};
                        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(G, s) + 4096));
                        for (int ti = 0; ti < NTHREADS; ti++) {
                            RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
                            rb_tensor_copy(ctx, &x, &ref);
                            for (int k = 0; k < 2 * sweeps; k++)
                                RB_CHECK(ctx, rb_residual_step(ctx, cols[k % 2], omegas[wi], &ref, &ref, &work));
                            rb_tensor_copy(ctx, &x, &y);
                            RB_CHECK(ctx, rb_residual_step(ctx, G, omegas[wi], &y, &y, &work));
                            RB_CHECK(ctx, rb_residual_step(ctx, G, omegas[wi], &x, &yo, &work));
                            double e1 = max_abs_diff(y.data, ref.data, n), e2 = max_abs_diff(yo.data, ref.data, n);
                            if (e1 != 0.0 || e2 != 0.0)
                                fail_msg("%dD shape %zu order %d sweeps %d omega %g threads %d: fused vs colour steps "
                                         "%.3g (in place) / %.3g", dims, si, order, sweeps, omegas[wi], THREADS[ti], e1, e2);
                        }
                        /* the generic path: x + omega (S(x) - x) / omega, to rounding */
                        RB_CHECK(ctx, rb_residual_step_generic(ctx, G, omegas[wi], &x, &yg, &work));
                        double eg = rb_tensor_max_rel_diff(&yg, &ref);
                        if (!(eg <= 1e-13))
                            fail_msg("%dD shape %zu sweeps %d: generic path vs colour steps %.3g", dims, si, sweeps, eg);
                        rb_arena_release(ctx, &work);
                        rb_op_free(ctx, G);
                    }
            rb_op_free(ctx, C[0]), rb_op_free(ctx, C[1]), rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &ref);
            rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &yo), rb_tensor_release(ctx, &yg);
        }
}

/* The shared suite: vjp by finite differences, fused vs generic with h = omega (the
 * suite's h is 0.3), in place; 1D (generic path only), 2D and 3D. */
static void test_sweep_op_conformance(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++)
        for (int sweeps = 1; sweeps <= 2; sweeps++) {
            rb_shape s = dims == 1 ? rb_shape_2d(2, 1, 1, 9) : dims == 2 ? rb_shape_2d(2, 1, 6, 7) : rb_shape_3d(1, 1, 4, 5, 6);
            rb_tensor b = alloc_random(ctx, s, 31);
            rb_op *A, *J, *C[2], *G;
            RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, 0.25, &A));
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &C[0]));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &C[1]));
            const rb_op *cols[2] = {C[0], C[1]};
            RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, 2, 0.3, sweeps, &G));
            char label[64];
            snprintf(label, sizeof label, "colour sweep, %dD, %d sweeps", dims, sweeps);
            rb_conformance_case cc = rb_conformance_default(G, s, label);
            rb_conformance_run(ctx, &cc);
            rb_op_free(ctx, G), rb_op_free(ctx, C[0]), rb_op_free(ctx, C[1]), rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b);
        }
}

static void test_sweep_op_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *a, *g = NULL;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &a));
    const rb_op *cols[2] = {a, a};
    RB_EXPECT(ctx, RB_EINVAL, "sweeps = 0", rb_op_colour_sweep_create(ctx, cols, 2, 1.0, 0, &g));
    RB_EXPECT(ctx, RB_EINVAL, "ncolours = 9", rb_op_colour_sweep_create(ctx, cols, 9, 1.0, 1, &g));
    RB_EXPECT(ctx, RB_EINVAL, "omega", rb_op_colour_sweep_create(ctx, cols, 2, 0.0, 1, &g));
    RB_EXPECT(ctx, RB_ENULL, "colours", rb_op_colour_sweep_create(ctx, NULL, 2, 1.0, 1, &g));
    assert_null(g);
    rb_op_free(ctx, a);
}

/* ---- stencils and residuals ------------------------------------------------------------------- */

/* y = A x by the reference loop */
static void gather_ref(rb_context *ctx, const rb_op *A, const rb_tensor *x, double *y)
{
    rb_conv_geom g;
    rb_shape out;
    RB_CHECK(ctx, rb_conv_geometry(ctx, A, x->shape, &g, &out));
    rb_conv_gather(1, rb_conv_state_of(A), &g, A->params, NULL, x->data, 1.0, 0.0, y);
}

static void test_stencil3d_vs_gather(void **state)
{
    rb_context *ctx = *state;
    for (size_t si = 0; si < nshapes(3); si++) {
        rb_shape s = shape_of(3, si);
        size_t n = rb_shape_count(s);
        rb_tensor x = alloc_random(ctx, s, 41 + si), y;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
        double *ref = test_malloc(n * sizeof *ref);
        rb_op *A = random_star(ctx, 3, 43 + si);
        gather_ref(ctx, A, &x, ref);
        for (int ti = 0; ti < NTHREADS; ti++) {
            RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
            RB_CHECK(ctx, rb_op_apply(ctx, A, &x, &y, NULL));
            double e = max_abs_diff(y.data, ref, n);
            if (e != 0.0) fail_msg("3D shape %zu threads %d: 7-point A x vs rb_conv_gather %.3g", si, THREADS[ti], e);
        }
        test_free(ref);
        rb_op_free(ctx, A);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
    }
}

/* 2D 5-point and 3x3 (random weights) and 3D 7-point: r = f - A u and its norm, with r and alone. */
static void test_residual_vs_reference(void **state)
{
    rb_context *ctx = *state;
    for (int kind = 0; kind < 5; kind++) {
        const int dims = kind == 2 ? 3 : 2;
        for (size_t si = 0; si < nshapes(dims); si++) {
            rb_shape s = shape_of(dims, si);
            size_t n = rb_shape_count(s);
            rb_op *A;
            if (kind == 1) {
                rb_test_rng r = {51 + si};
                double w[9];
                for (int t = 0; t < 9; t++) w[t] = rb_test_uniform(&r, -1, 1);
                RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_FULL, w, &A));
            } else {
                A = random_star(ctx, dims, 53 + si);
            }
            rb_tensor u = alloc_random(ctx, s, 55 + si), f = alloc_random(ctx, s, 57 + si), r;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &r, s));
            double *ref = test_malloc(n * sizeof *ref), s2 = 0.0;
            gather_ref(ctx, A, &u, ref);
            for (size_t i = 0; i < n; i++) ref[i] = f.data[i] - ref[i], s2 += ref[i] * ref[i];
            rb_arena work = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &work, n * sizeof(double) + 65536));
            for (int ti = 0; ti < NTHREADS; ti++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
                double norm = -1, alone = -1;
                RB_CHECK(ctx, rb_vcycle_residual(ctx, A, &u, &f, &r, &norm, &work));
                RB_CHECK(ctx, rb_vcycle_residual(ctx, A, &u, &f, NULL, &alone, &work));
                double e = max_abs_diff(r.data, ref, n);
                if (e != 0.0) fail_msg("kind %d shape %zu threads %d: residual vs reference %.3g", kind, si, THREADS[ti], e);
                if (!(fabs(norm - sqrt(s2)) <= 1e-14 * sqrt(s2) && fabs(alone - sqrt(s2)) <= 1e-14 * sqrt(s2)))
                    fail_msg("kind %d shape %zu: norm %.17g / alone %.17g vs %.17g", kind, si, norm, alone, sqrt(s2));
                assert_int_equal(work.used, 0);
            }
            /* huge values: the squares overflow, the norm does not */
            for (size_t i = 0; i < n; i++) f.data[i] *= 1e300, u.data[i] = 0.0;
            double big = 0, big_alone = 0, want = 0, sc = 0;
            for (size_t i = 0; i < n; i++) sc = fmax(sc, fabs(f.data[i]));
            for (size_t i = 0; i < n; i++) want += (f.data[i] / sc) * (f.data[i] / sc);
            want = sc * sqrt(want);
            RB_CHECK(ctx, rb_vcycle_residual(ctx, A, &u, &f, &r, &big, &work));
            RB_CHECK(ctx, rb_vcycle_residual(ctx, A, &u, &f, NULL, &big_alone, &work));
            if (!(fabs(big - want) <= 1e-14 * want && fabs(big_alone - want) <= 1e-14 * want))
                fail_msg("kind %d shape %zu: overflowing norm %.17g / %.17g vs %.17g", kind, si, big, big_alone, want);
            f.data[n / 2] = NAN;
            RB_CHECK(ctx, rb_vcycle_residual(ctx, A, &u, &f, NULL, &big_alone, &work));
            assert_true(isnan(big_alone));
            rb_arena_release(ctx, &work);
            test_free(ref);
            rb_op_free(ctx, A);
            rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &r);
        }
    }
}

static void test_residual_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_shape s = rb_shape_2d(1, 1, 5, 5);
    rb_tensor u, f, r;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &r, rb_shape_2d(1, 1, 5, 4)));
    rb_op *A;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, 0.25, &A));
    double nm;
    RB_EXPECT(ctx, RB_ESHAPE, "r", rb_vcycle_residual(ctx, A, &u, &f, &r, &nm, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "alias", rb_vcycle_residual(ctx, A, &u, &f, &u, &nm, NULL));
    RB_EXPECT(ctx, RB_ENULL, "work arena", rb_vcycle_residual(ctx, A, &u, &f, NULL, &nm, NULL));
    RB_EXPECT(ctx, RB_ENULL, "both NULL", rb_vcycle_residual(ctx, A, &u, &f, NULL, NULL, NULL));
    rb_op_free(ctx, A);
    rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &r);
}

/* ---- transfers -------------------------------------------------------------------------------- */

static rb_op *random_transfer(rb_context *ctx, int dims, bool transposed, uint64_t seed)
{
    rb_test_rng r = {seed};
    double w[27];
    int nt = dims == 3 ? 27 : 9;
    for (int t = 0; t < nt; t++) w[t] = rb_test_uniform(&r, -1, 1);
    rb_conv_desc d = rb_conv_desc_default(dims, 1, 1);
    d.stride = 2, d.transposed = transposed;
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &op));
    return op;
}

/* Coarse shapes (N, D, H, W); the fine grid is 2k + 1 on each axis. */
static const size_t COARSE[][4] = {{1, 1, 1, 1}, {2, 1, 2, 3}, {1, 3, 1, 2}, {1, 2, 4, 5},
                                   {2, 3, 6, 4}, {1, 4, 7, 9}, {1, 5, 31, 33}, {1, 12, 48, 50}};

static void transfer_shapes(int dims, size_t i, rb_shape *coarse, rb_shape *fine)
{
    const size_t *c = COARSE[i];
    if (dims == 2) {
        *coarse = rb_shape_2d(c[0], 1, c[2], c[3]);
        *fine = rb_shape_2d(c[0], 1, 2 * c[2] + 1, 2 * c[3] + 1);
    } else {
        *coarse = rb_shape_3d(c[0], 1, c[1], c[2], c[3]);
        *fine = rb_shape_3d(c[0], 1, 2 * c[1] + 1, 2 * c[2] + 1, 2 * c[3] + 1);
    }
}

static void test_transfers_vs_reference(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 2; dims <= 3; dims++)
        for (size_t si = 0; si < sizeof COARSE / sizeof *COARSE; si++) {
            rb_shape cs, fs;
            transfer_shapes(dims, si, &cs, &fs);
            const size_t nc = rb_shape_count(cs), nf = rb_shape_count(fs);
            rb_op *R = random_transfer(ctx, dims, false, 61 + si), *P = random_transfer(ctx, dims, true, 63 + si);
            rb_tensor fine = alloc_random(ctx, fs, 65 + si), coarse = alloc_random(ctx, cs, 67 + si), yc, yf, acc;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, cs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, fs));
            rb_tensor base = alloc_random(ctx, fs, 69 + si);
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &acc, fs));
            double *rc = test_malloc(nc * sizeof *rc), *rf = test_malloc(nf * sizeof *rf);
            rb_conv_geom g;
            rb_shape out;
            RB_CHECK(ctx, rb_conv_geometry(ctx, R, fs, &g, &out));
            rb_conv_gather(1, rb_conv_state_of(R), &g, R->params, NULL, fine.data, 1.0, 0.0, rc);
            RB_CHECK(ctx, rb_conv_geometry(ctx, P, cs, &g, &out));
            rb_conv_scatter(1, rb_conv_state_of(P), &g, P->params, NULL, coarse.data, 1.0, 0.0, rf);
            for (int ti = 0; ti < NTHREADS; ti++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
                RB_CHECK(ctx, rb_op_apply(ctx, R, &fine, &yc, NULL));
                double e1 = max_abs_diff(yc.data, rc, nc);
                RB_CHECK(ctx, rb_op_apply(ctx, P, &coarse, &yf, NULL));
                double e2 = max_abs_diff(yf.data, rf, nf);
                /* fine += P coarse against (P coarse by the reference loop) added */
                rb_tensor_copy(ctx, &base, &acc);
                assert_true(rb_transfer_prolong_add(ctx, P, &coarse, &acc));
                double e3 = 0.0;
                for (size_t i = 0; i < nf; i++) e3 = fmax(e3, fabs(acc.data[i] - (base.data[i] + 1.0 * rf[i])));
                if (e1 != 0.0 || e2 != 0.0 || e3 != 0.0)
                    fail_msg("%dD coarse shape %zu threads %d: restriction %.3g, prolongation %.3g, added %.3g vs reference",
                             dims, si, THREADS[ti], e1, e2, e3);
            }
            test_free(rc), test_free(rf);
            rb_op_free(ctx, R), rb_op_free(ctx, P);
            rb_tensor_release(ctx, &fine), rb_tensor_release(ctx, &coarse), rb_tensor_release(ctx, &yc);
            rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &base), rb_tensor_release(ctx, &acc);
        }
}

/* coarse = R (f - A u) in one pass against the reference loops one after another. */
static void test_restrict_residual_vs_reference(void **state)
{
    rb_context *ctx = *state;
    for (int kind = 0; kind < 5; kind++) {
        const int dims = kind == 2 ? 3 : 2;
        for (size_t si = 0; si < sizeof COARSE / sizeof *COARSE; si++) {
            rb_shape cs, fs;
            transfer_shapes(dims, si, &cs, &fs);
            const size_t nc = rb_shape_count(cs), nf = rb_shape_count(fs);
            rb_op *A;
            if (kind == 1) {
                rb_test_rng r = {71 + si};
                double w[9];
                for (int t = 0; t < 9; t++) w[t] = rb_test_uniform(&r, -1, 1);
                RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_FULL, w, &A));
            } else {
                A = random_star(ctx, dims, 73 + si);
            }
            rb_op *R = random_transfer(ctx, dims, false, 75 + si);
            rb_tensor u = alloc_random(ctx, fs, 77 + si), f = alloc_random(ctx, fs, 79 + si), yc;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, cs));
            double *r = test_malloc(nf * sizeof *r), *ref = test_malloc(nc * sizeof *ref);
            gather_ref(ctx, A, &u, r);
            for (size_t i = 0; i < nf; i++) r[i] = f.data[i] - r[i];
            rb_conv_geom g;
            rb_shape out;
            RB_CHECK(ctx, rb_conv_geometry(ctx, R, fs, &g, &out));
            rb_conv_gather(1, rb_conv_state_of(R), &g, R->params, NULL, r, 1.0, 0.0, ref);
            rb_arena work = {0};
            size_t ws = rb_transfer_restrict_residual_workspace(A, R, fs);
            assert_true(ws > 0);
            RB_CHECK(ctx, rb_arena_reserve(ctx, &work, ws));
            for (int ti = 0; ti < NTHREADS; ti++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti]));
                rb_tensor_fill(ctx, &yc, 7.0);
                assert_true(rb_transfer_restrict_residual(ctx, A, R, &u, &f, &yc, &work));
                double e = max_abs_diff(yc.data, ref, nc);
                if (e != 0.0) fail_msg("kind %d coarse shape %zu threads %d: fused vs reference %.3g", kind, si, THREADS[ti], e);
                assert_int_equal(work.used, 0);
                /* the same on split grids (xsplit.h): u and f split, the coarse grid plain or split, through
                 * the split views of A and R; a stencil the split residual lines do not take: declined */
                for (int csplit = 0; dims == 2 && csplit < 2; csplit++) {
                    rb_op *As, *Rs;
                    rb_tensor us, fsp, ycs, back;
                    RB_CHECK(ctx, rb_op_xsplit_create(ctx, A, true, true, &As));
                    RB_CHECK(ctx, rb_op_xsplit_create(ctx, R, true, csplit == 1, &Rs));
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &us, fs));
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &fsp, fs));
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ycs, cs));
                    RB_CHECK(ctx, rb_tensor_alloc(ctx, &back, cs));
                    RB_CHECK(ctx, rb_xsplit(ctx, &u, &us, true));
                    RB_CHECK(ctx, rb_xsplit(ctx, &f, &fsp, true));
                    rb_tensor_fill(ctx, &ycs, 7.0);
                    const bool took = rb_transfer_restrict_residual(ctx, As, Rs, &us, &fsp, &ycs, &work);
                    if (took != (kind != 1)) fail_msg("kind %d coarse shape %zu: split views %s", kind, si, took ? "taken" : "declined");
                    if (csplit) RB_CHECK(ctx, rb_xsplit(ctx, &ycs, &back, false));
                    else rb_tensor_copy(ctx, &ycs, &back);
                    double es = took ? max_abs_diff(back.data, ref, nc) : 0.0;
                    if (es != 0.0)
                        fail_msg("kind %d coarse shape %zu threads %d, split (coarse %s): %.3g vs reference", kind, si,
                                 THREADS[ti], csplit ? "split" : "plain", es);
                    assert_int_equal(work.used, 0);
                    rb_op_free(ctx, As), rb_op_free(ctx, Rs);
                    rb_tensor_release(ctx, &us), rb_tensor_release(ctx, &fsp), rb_tensor_release(ctx, &ycs);
                    rb_tensor_release(ctx, &back);
                }
            }
            /* no room for the line buffers: declined, nothing written */
            rb_arena small = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &small, 64));
            rb_tensor_fill(ctx, &yc, 7.0);
            if (ws > 64) {
                assert_false(rb_transfer_restrict_residual(ctx, A, R, &u, &f, &yc, &small));
                for (size_t i = 0; i < nc; i++) assert_true(yc.data[i] == 7.0);
            }
            assert_false(rb_transfer_restrict_residual(ctx, A, R, &u, &f, &yc, NULL));
            rb_arena_release(ctx, &small);
            rb_arena_release(ctx, &work);
            test_free(r), test_free(ref);
            rb_op_free(ctx, A), rb_op_free(ctx, R);
            rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &yc);
        }
    }
}

/* ---- the colour sweep with the stages around it (rb_residual_step_pass) ----------------------- */

/* Coarse shapes (N, D, H, W) for the fused passes: small ones, and fine grids big enough
 * for the red-black kernel to run on 2 and 3 threads. */
static const size_t PASS_COARSE[][4] = {{1, 1, 1, 1},   {2, 1, 2, 3},    {1, 3, 1, 2},    {2, 3, 6, 4},
                                        {1, 1, 100, 90}, {2, 1, 97, 83},  {1, 12, 48, 50}, {1, 15, 30, 33},
                                        {2, 10, 10, 10}, {1, 4, 9, 3}};

/* The same pass on the grid stored split (xsplit.h): the split views of G, P, A and R, u and f
 * split, G's right-hand side split (rb_op_xsplit_rhs), and with coarse_split the coarse grids
 * (P's c, R's output) split too; u brought back to the plain layout must equal u1 (the plain
 * pass's oracle) bit for bit, the coarse grid (brought back) ref, the norm s2 to 1e-13. A
 * residual stencil the split kernel does not take (kind 1: 3x3): declined, nothing changed. */
static void check_split_pass(rb_context *ctx, const rb_op *G, double omega, const rb_residual_pass *plain,
                             const rb_tensor *x, const rb_tensor *f, const rb_tensor *u1, const double *ref, double s2,
                             bool takes, rb_arena *work, const char *what, bool coarse_split)
{
    const rb_shape fs = x->shape;
    const size_t nf = rb_shape_count(fs);
    rb_op *Gs, *Ps = NULL, *As = NULL, *Rs = NULL;
    RB_CHECK(ctx, rb_op_xsplit_create(ctx, G, true, true, &Gs));
    rb_tensor fsplit, us, back, yc, ycs, cs;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &fsplit, fs));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &us, fs));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &back, fs));
    RB_CHECK(ctx, rb_xsplit(ctx, f, &fsplit, true));
    RB_CHECK(ctx, rb_xsplit(ctx, x, &us, true));
    if (plain->assign && takes) rb_tensor_fill(ctx, &us, NAN); /* u = P c: not read */
    RB_CHECK(ctx, rb_op_xsplit_rhs(ctx, Gs, &fsplit, (rb_tensor *)f)); /* (f: the plain rhs G's Jacobi op reads) */
    rb_residual_pass pass = *plain;
    double t2 = -1.0;
    if (plain->P != NULL) {
        RB_CHECK(ctx, rb_op_xsplit_create(ctx, plain->P, coarse_split, true, &Ps));
        pass.P = Ps;
        if (coarse_split) { /* the coarse grid c split too */
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &cs, plain->c->shape));
            RB_CHECK(ctx, rb_xsplit(ctx, plain->c, &cs, true));
            pass.c = &cs;
        }
    }
    if (plain->A != NULL) {
        RB_CHECK(ctx, rb_op_xsplit_create(ctx, plain->A, true, true, &As));
        pass.A = As, pass.f = &fsplit;
    }
    if (plain->R != NULL) {
        RB_CHECK(ctx, rb_op_xsplit_create(ctx, plain->R, true, coarse_split, &Rs));
        pass.R = Rs;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, plain->coarse->shape));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &ycs, plain->coarse->shape));
        rb_tensor_fill(ctx, &yc, 7.0);
        pass.coarse = coarse_split ? &ycs : &yc;
    }
    if (plain->norm2 != NULL) pass.norm2 = &t2;
    bool done = false;
    RB_CHECK(ctx, rb_residual_step_pass(ctx, Gs, omega, &us, &pass, &done, work));
    RB_CHECK(ctx, rb_xsplit(ctx, &us, &back, false));
    if (done && coarse_split && pass.R != NULL) RB_CHECK(ctx, rb_xsplit(ctx, &ycs, &yc, false));
    if (!takes) {
        if (done || max_abs_diff(back.data, x->data, nf) != 0.0) fail_msg("%s: split pass not declined", what);
    } else {
        assert_true(done);
        assert_int_equal(work->used, 0);
        double eu = max_abs_diff(back.data, u1->data, nf);
        double ec = pass.R != NULL ? max_abs_diff(yc.data, ref, rb_tensor_count(&yc)) : 0.0;
        double en = pass.norm2 != NULL ? fabs(sqrt(t2) - sqrt(s2)) / sqrt(s2) : 0.0;
        if (eu != 0.0 || ec != 0.0 || !(en <= 1e-13))
            fail_msg("%s, split: grid %.3g, coarse %.3g, norm %.3g vs reference", what, eu, ec, en);
    }
    if (Rs != NULL) rb_tensor_release(ctx, &yc), rb_tensor_release(ctx, &ycs);
    if (Ps != NULL && coarse_split) rb_tensor_release(ctx, &cs);
    rb_op_free(ctx, Gs), rb_op_free(ctx, Ps), rb_op_free(ctx, As), rb_op_free(ctx, Rs);
    rb_tensor_release(ctx, &fsplit), rb_tensor_release(ctx, &us), rb_tensor_release(ctx, &back);
}

/* u += P c, u <- S(u), and the residual's norm and restriction, all in the sweep's pass;
 * oracle: P c by the reference loop (rb_conv_scatter) added, the sweep op's step (itself
 * equal to the colour steps), the residual by the reference loop (rb_conv_gather), its
 * plain sum of squares and R by rb_conv_gather. The grids equal bit for bit, the norm to
 * 1e-13. The residual operator may be another stencil than the smoother's (kind 1: a
 * 3x3 stencil in 2D). Kinds 3 to 5: point-dependent stencils (varstencils; the residual
 * by applying the op, itself checked against the definition in test_varstencil): a 2D
 * star with red-black colours, a 3D 27-point stencil with its 8 parity classes, packed, and
 * a 3D star with red-black colours (the class kernel with point weights, which 3D tiles by
 * default on big grids). Every combination of the three parts; in 3D also in tiles of rows. */
static void test_sweep_pass_vs_reference(void **state)
{
    rb_context *ctx = *state;
    for (int kind = 0; kind < 6; kind++) {
        const int dims = kind == 2 || kind >= 4 ? 3 : 2;
        for (size_t si = 0; si < sizeof PASS_COARSE / sizeof *PASS_COARSE; si++) {
            const size_t *c = PASS_COARSE[si];
            if (dims == 2 && c[1] != 1) continue;
            rb_shape cs = dims == 2 ? rb_shape_2d(c[0], 1, c[2], c[3]) : rb_shape_3d(c[0], 1, c[1], c[2], c[3]);
            rb_shape fs = dims == 2 ? rb_shape_2d(c[0], 1, 2 * c[2] + 1, 2 * c[3] + 1)
                                    : rb_shape_3d(c[0], 1, 2 * c[1] + 1, 2 * c[2] + 1, 2 * c[3] + 1);
            const size_t nc = rb_shape_count(cs), nf = rb_shape_count(fs);
            if (kind == 4 && (nf / fs.n > 20000 || c[1] == 1)) continue; /* small 3D grids (threads: kind 3) */
            if (kind == 5 && nf / fs.n > 150000) continue;
            rb_op *Asm = kind < 3 ? random_star(ctx, dims, 81 + si) : rb_test_varstencil(ctx, dims, kind == 4 ? RB_STENCIL_FULL : RB_STENCIL_STAR, fs, 81 + si);
            rb_op *A = Asm, *J, *C[8];
            const int ncol = kind == 4 ? 8 : 2;
            if (kind == 1) {
                rb_test_rng r = {83 + si};
                double w[9];
                for (int t = 0; t < 9; t++) w[t] = rb_test_uniform(&r, -1, 1);
                RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_FULL, w, &A));
            }
            rb_op *R = random_transfer(ctx, dims, false, 85 + si), *P = random_transfer(ctx, dims, true, 86 + si);
            rb_tensor f = alloc_random(ctx, fs, 87 + si), x = alloc_random(ctx, fs, 89 + si);
            rb_tensor cu = alloc_random(ctx, cs, 90 + si), xp, pc, u1, u2, yc;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &xp, fs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &pc, fs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &u1, fs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &u2, fs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, cs));
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, Asm, &f, &J));
            for (int k = 0; k < ncol; k++) {
                if (kind == 4) {
                    RB_CHECK(ctx, rb_op_parity_create(ctx, J, k, &C[k]));
                    RB_CHECK(ctx, rb_op_parity_pack(ctx, C[k]));
                } else {
                    RB_CHECK(ctx, rb_op_colour_create(ctx, J, k, &C[k]));
                }
            }
            double *r = test_malloc(nf * sizeof *r), *ref = test_malloc(nc * sizeof *ref);
            rb_conv_geom g, gp;
            rb_shape out;
            RB_CHECK(ctx, rb_conv_geometry(ctx, R, fs, &g, &out));
            RB_CHECK(ctx, rb_conv_geometry(ctx, P, cs, &gp, &out));
            rb_conv_scatter(1, rb_conv_state_of(P), &gp, P->params, NULL, cu.data, 1.0, 0.0, r);
            for (size_t i = 0; i < nf; i++) xp.data[i] = x.data[i] + r[i], pc.data[i] = r[i]; /* x + P c, P c */
            for (int sweeps = 1; sweeps <= 2; sweeps++)
                for (int order = 0; order < 2; order++) {
                    if (kind >= 4 && (sweeps == 2 || order == 1)) continue; /* (the sweeps' variants: test_colour) */
                    const rb_op *cols[8];
                    for (int k = 0; k < ncol; k++) cols[k] = C[order ? ncol - 1 - k : k];
                    const double omega = sweeps == 1 ? 1.15 : 1.0;
                    rb_op *G;
                    RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, ncol, omega, sweeps, &G));
                    rb_arena work = {0};
                    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_transfer_restrict_residual_workspace(A, R, fs) + 4096));
                    for (int with_p = 0; with_p < 3; with_p++) { /* no P, u += P c, u = P c (assign) */
                        rb_tensor_copy(ctx, with_p == 2 ? &pc : with_p ? &xp : &x, &u1);
                        RB_CHECK(ctx, rb_residual_step(ctx, G, omega, &u1, &u1, &work));
                        if (kind < 3) {
                            gather_ref(ctx, A, &u1, r);
                        } else {
                            rb_tensor rt;
                            RB_CHECK(ctx, rb_tensor_view(ctx, &rt, r, fs));
                            RB_CHECK(ctx, rb_op_apply(ctx, A, &u1, &rt, NULL));
                        }
                        double s2 = 0.0;
                        for (size_t i = 0; i < nf; i++) r[i] = f.data[i] - r[i], s2 += r[i] * r[i];
                        rb_conv_gather(1, rb_conv_state_of(R), &g, R->params, NULL, r, 1.0, 0.0, ref);
                        for (int ti = 0; ti < NTHREADS * NTILES; ti++)
                            for (int what = 0; what < 4; what++) { /* norm and R, norm, R, neither */
                                if (!with_p && what == 3) continue;
                                if (ti >= NTHREADS && dims != 3) break; /* (tiles: 3D only) */
                                RB_CHECK(ctx, rb_context_set_threads(ctx, THREADS[ti % NTHREADS]));
                                RB_CHECK(ctx, rb_colour_sweep_set_tile(ctx, G, TILES[ti / NTHREADS]));
                                rb_tensor_copy(ctx, &x, &u2);
                                if (with_p == 2) rb_tensor_fill(ctx, &u2, NAN); /* assign: not read */
                                rb_tensor_fill(ctx, &yc, 7.0);
                                double t2 = -1.0;
                                rb_residual_pass pass = {0};
                                if (with_p) pass.P = P, pass.c = &cu, pass.assign = with_p == 2;
                                if (what < 3) pass.A = A, pass.f = &f;
                                if (what < 2) pass.norm2 = &t2;
                                if (what == 0 || what == 2) pass.R = R, pass.coarse = &yc;
                                bool done = false;
                                RB_CHECK(ctx, rb_residual_step_pass(ctx, G, omega, &u2, &pass, &done, &work));
                                assert_true(done);
                                assert_int_equal(work.used, 0);
                                double eu = max_abs_diff(u2.data, u1.data, nf);
                                double ec = pass.R != NULL ? max_abs_diff(yc.data, ref, nc) : 0.0;
                                double en = pass.norm2 != NULL ? fabs(sqrt(t2) - sqrt(s2)) / sqrt(s2) : 0.0;
                                char label[160];
                                snprintf(label, sizeof label,
                                         "kind %d shape %zu sweeps %d order %d P %d threads %d tile %zu what %d", kind, si,
                                         sweeps, order, with_p, THREADS[ti % NTHREADS], TILES[ti / NTHREADS], what);
                                if (eu != 0.0 || ec != 0.0 || !(en <= 1e-13))
                                    fail_msg("%s: grid %.3g, coarse %.3g, norm %.3g vs reference", label, eu, ec, en);
                                for (int cs_ = 0; kind <= 1 && cs_ < 2; cs_++) /* the coarse grid plain, then split */
                                    check_split_pass(ctx, G, omega, &pass, &x, &f, &u1, ref, s2, kind == 0 || what == 3,
                                                     &work, label, cs_ == 1);
                            }
                    }
                    rb_arena_release(ctx, &work);
                    rb_op_free(ctx, G);
                }
            test_free(r), test_free(ref);
            if (A != Asm) rb_op_free(ctx, A);
            for (int k = 0; k < ncol; k++) rb_op_free(ctx, C[k]);
            rb_op_free(ctx, J), rb_op_free(ctx, Asm);
            rb_op_free(ctx, R), rb_op_free(ctx, P);
            rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &cu);
            rb_tensor_release(ctx, &xp), rb_tensor_release(ctx, &pc), rb_tensor_release(ctx, &u1), rb_tensor_release(ctx, &u2);
            rb_tensor_release(ctx, &yc);
        }
    }
}

/* Tiles on grids of few rows (H = 1 .. 5, fewer than the pass has stages) and many planes (so
 * that 2 and 3 threads run), batches of 2, 1 to 3 sweeps, with the residual's norm or without:
 * every tile size from none to 8 rows and every thread count against one thread without tiles
 * (which the test above checks against the reference): grids bit for bit, norm to 1e-13. The
 * constant star and a star with point weights (the class kernel). */
static void test_tiles_few_rows(void **state)
{
    rb_context *ctx = *state;
    static const size_t shapes[][4] = {{2, 2000, 1, 17}, {2, 1800, 2, 9}, {2, 1300, 3, 9},
                                       {1, 900, 4, 11},  {2, 700, 5, 10}, {2, 60, 23, 30}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int kind = 0; kind < 2; kind++) {
            const size_t *c = shapes[si];
            const rb_shape fs = rb_shape_3d(c[0], 1, c[1], c[2], c[3]);
            const size_t nf = rb_shape_count(fs);
            rb_op *A = kind == 0 ? random_star(ctx, 3, 7 + si) : rb_test_varstencil(ctx, 3, RB_STENCIL_STAR, fs, 7 + si);
            rb_op *J, *C[2];
            rb_tensor f = alloc_random(ctx, fs, 17 + si), x = alloc_random(ctx, fs, 19 + si), u0, u2;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &u0, fs));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &u2, fs));
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &f, &J));
            for (int k = 0; k < 2; k++) RB_CHECK(ctx, rb_op_colour_create(ctx, J, k, &C[k]));
            for (int sweeps = 1; sweeps <= 3; sweeps++) {
                const rb_op *cols[2] = {C[0], C[1]};
                rb_op *G;
                RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, 2, 1.0, sweeps, &G));
                rb_arena work = {0};
                RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(G, fs) + (1u << 20)));
                for (int with_norm = 0; with_norm < 2; with_norm++) {
                    double n0 = -1.0;
                    for (int th = 1; th <= 3; th++)
                        for (size_t tile = 0; tile <= 8; tile++) {
                            RB_CHECK(ctx, rb_context_set_threads(ctx, th));
                            RB_CHECK(ctx, rb_colour_sweep_set_tile(ctx, G, tile));
                            rb_tensor_copy(ctx, &x, &u2);
                            double t2 = -1.0;
                            rb_residual_pass pass = {0};
                            if (with_norm) pass.A = A, pass.f = &f, pass.norm2 = &t2;
                            bool done = false;
                            RB_CHECK(ctx, rb_residual_step_pass(ctx, G, 1.0, &u2, &pass, &done, &work));
                            assert_true(done);
                            if (th == 1 && tile == 0) {
                                rb_tensor_copy(ctx, &u2, &u0), n0 = t2;
                                continue;
                            }
                            const double eu = max_abs_diff(u2.data, u0.data, nf);
                            const double en = with_norm ? fabs(t2 - n0) / n0 : 0.0;
                            if (eu != 0.0 || !(en <= 1e-13))
                                fail_msg("shape %zu kind %d sweeps %d norm %d threads %d tile %zu: grid %.3g, norm %.3g",
                                         si, kind, sweeps, with_norm, th, tile, eu, en);
                        }
                }
                rb_arena_release(ctx, &work);
                rb_op_free(ctx, G);
            }
            for (int k = 0; k < 2; k++) rb_op_free(ctx, C[k]);
            rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &x);
            rb_tensor_release(ctx, &u0), rb_tensor_release(ctx, &u2);
        }
}

/* What the fused pass declines (nothing done at all: the grid and the coarse grid
 * untouched), and bad arguments. */
static void test_sweep_pass_declines(void **state)
{
    rb_context *ctx = *state;
    rb_shape fs = rb_shape_2d(1, 1, 9, 11), cs = rb_shape_2d(1, 1, 4, 5);
    rb_tensor f = alloc_random(ctx, fs, 91), x = alloc_random(ctx, fs, 93), cu = alloc_random(ctx, cs, 94), u2, yc;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u2, fs));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yc, cs));
    rb_op *A = random_star(ctx, 2, 95), *J, *C[2], *G, *R = random_transfer(ctx, 2, false, 97);
    rb_op *P = random_transfer(ctx, 2, true, 98);
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &f, &J));
    RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &C[0]));
    RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &C[1]));
    const rb_op *cols[2] = {C[0], C[1]};
    RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, 2, 1.0, 1, &G));
    rb_arena work = {0}, small = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(G, fs) + 4096));
    RB_CHECK(ctx, rb_arena_reserve(ctx, &small, 64));
    double t2 = -1.0;
    rb_residual_pass pass = {P, &cu, A, &f, &t2, R, &yc, false};
    /* declined: an operator without the kernel, h != omega, no room for the ring lines,
     * P not a prolongation (R in its place) */
    const rb_op *Fs[4] = {J, G, G, G};
    const double hs[4] = {0.8, 0.5, 1.0, 1.0};
    rb_arena *works[4] = {&work, &work, &small, &work};
    for (int c = 0; c < 4; c++) {
        rb_tensor_copy(ctx, &x, &u2);
        rb_tensor_fill(ctx, &yc, 7.0);
        rb_residual_pass p = pass;
        if (c == 3) p.P = R;
        bool done = true;
        RB_CHECK(ctx, rb_residual_step_pass(ctx, Fs[c], hs[c], &u2, &p, &done, works[c]));
        assert_false(done);
        assert_true(max_abs_diff(u2.data, x.data, rb_shape_count(fs)) == 0.0);
        for (size_t i = 0; i < rb_shape_count(cs); i++) assert_true(yc.data[i] == 7.0);
        assert_true(t2 == -1.0);
    }
    bool done;
    RB_EXPECT(ctx, RB_ENULL, "done", rb_residual_step_pass(ctx, G, 1.0, &u2, &pass, NULL, &work));
    RB_EXPECT(ctx, RB_ENULL, "pass is NULL", rb_residual_step_pass(ctx, G, 1.0, &u2, NULL, &done, &work));
    rb_residual_pass bad = pass;
    bad.A = NULL;
    RB_EXPECT(ctx, RB_ENULL, "needs pass->A", rb_residual_step_pass(ctx, G, 1.0, &u2, &bad, &done, &work));
    bad = pass, bad.coarse = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "pass->R and pass->coarse", rb_residual_step_pass(ctx, G, 1.0, &u2, &bad, &done, &work));
    bad = pass, bad.c = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "pass->P and pass->c", rb_residual_step_pass(ctx, G, 1.0, &u2, &bad, &done, &work));
    bad = pass, bad.f = &yc;
    RB_EXPECT(ctx, RB_ESHAPE, "pass->f", rb_residual_step_pass(ctx, G, 1.0, &u2, &bad, &done, &work));
    RB_EXPECT(ctx, RB_EINVAL, "not finite", rb_residual_step_pass(ctx, G, NAN, &u2, &pass, &done, &work));
    rb_arena_release(ctx, &work), rb_arena_release(ctx, &small);
    rb_op_free(ctx, G), rb_op_free(ctx, C[0]), rb_op_free(ctx, C[1]), rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_op_free(ctx, R), rb_op_free(ctx, P);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &cu), rb_tensor_release(ctx, &u2);
    rb_tensor_release(ctx, &yc);
}

/* What the fast transfers must decline: cell grids, several channels, a star pattern. */
static void test_transfers_decline(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(2, 1, 1);
    d.stride = 2;
    d.grid = RB_GRID_CELL;
    double w[18] = {0};
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &op));
    rb_conv_geom g;
    rb_shape out;
    RB_CHECK(ctx, rb_conv_geometry(ctx, op, rb_shape_2d(1, 1, 8, 8), &g, &out));
    assert_false(rb_transfer_fast_apply(ctx, rb_conv_state_of(op), &g, op->params, NULL, NULL));
    rb_op_free(ctx, op);
    d = rb_conv_desc_default(2, 2, 1);
    d.stride = 2;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &op));
    RB_CHECK(ctx, rb_conv_geometry(ctx, op, rb_shape_2d(1, 2, 9, 9), &g, &out));
    assert_false(rb_transfer_fast_apply(ctx, rb_conv_state_of(op), &g, op->params, NULL, NULL));
    rb_op_free(ctx, op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wavefront_schedule),
        cmocka_unit_test_setup_teardown(test_half_sweep_vs_generic, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_op_vs_colour_steps, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_op_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_op_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_stencil3d_vs_gather, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_residual_vs_reference, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_residual_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_transfers_vs_reference, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_restrict_residual_vs_reference, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_pass_vs_reference, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_tiles_few_rows, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_pass_declines, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_transfers_decline, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("mg_kernels", tests, NULL, NULL);
}
