/* test_jacobi.c — the memory-bound grid kernels: the fast 2D stencil
 * (stencil_fast.c) and the fused damped-Jacobi sweep behind rb_residual_step
 * (jacobi_fused.c).
 *
 * Oracles: the reference paths (rb_conv_gather for y = A x;
 * rb_residual_step_generic for the sweep), the closed-form damping factors of
 * the Fourier modes of the Poisson stencils, the conformance suite, and the
 * error contract (status, message, outputs untouched). The row kernels' variants
 * (vectorised in place, streaming stores) are checked against the plain row.
 */
#include "testkit.h"
#include "conformance.h"
#include "jacobi_internal.h"

#include <math.h>
#include <string.h>

#define PI 3.14159265358979323846

typedef struct grid_case {
    size_t n, h, w; /* (N,1,1,H,W) */
} grid_case;

static const grid_case grid_cases[] = {
    {1, 1, 1}, {1, 1, 5}, {1, 7, 3}, {3, 7, 3}, {1, 33, 31}, {3, 33, 31}, {1, 64, 64}, {3, 64, 64},
    {1, 5, 1}, {2, 2, 2}, {1, 4, 9}, {2, 5, 10}, {1, 6, 12}, {1, 3, 13}, {2, 9, 17},
};
static const int thread_counts[] = {1, 2, 3};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* A random single-channel 2D stencil (5-point or 3x3), centre weight kept away from 0. */
static rb_op *random_stencil(rb_context *ctx, rb_stencil pattern, rb_test_rng *rng)
{
    double w[9];
    int taps = pattern == RB_STENCIL_STAR ? 5 : 9, centre = taps / 2;
    for (int t = 0; t < taps; t++) w[t] = rb_test_uniform(rng, -1.0, 1.0);
    w[centre] = 3.0 + rb_test_uniform(rng, 0.0, 2.0);
    rb_op *A;
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, pattern, w, &A));
    return A;
}

/* max |a - b| over all entries, exact (0 when bit-for-bit equal up to the sign of zero). */
static double max_abs_diff(const rb_tensor *a, const rb_tensor *b)
{
    double d = 0.0;
    const size_t n = rb_tensor_count(a);
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a->data[i] - b->data[i]);
        if (!(e <= d)) d = e;
    }
    return d;
}

/* ---- fused sweep against the generic path -------------------------------------------------- */

/* Oracle: rb_residual_step_generic (F evaluated into memory, then x + h F). The fused
 * kernel must agree to rounding (it uses the same operation order, so in fact
 * exactly); in place must equal out of place exactly (Jacobi, not Gauss-Seidel). */
static void test_fused_vs_generic(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {42};
    const double omega = 0.8;
    for (int p = 0; p < 2; p++) {
        rb_stencil pattern = p == 0 ? RB_STENCIL_STAR : RB_STENCIL_FULL;
        for (size_t c = 0; c < COUNT(grid_cases); c++) {
            const grid_case *gc = &grid_cases[c];
            rb_shape sh = rb_shape_2d(gc->n, 1, gc->h, gc->w);
            rb_op *A = random_stencil(ctx, pattern, &rng), *J;
            rb_tensor b, x, yg, yf, yi, yg_in;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yi, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg_in, sh));
            rb_test_fill(&rng, &b, -1, 1);
            rb_test_fill(&rng, &x, -1, 1);
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            rb_arena work = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(J, sh)));
            for (size_t k = 0; k < COUNT(thread_counts); k++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, thread_counts[k]));
                RB_CHECK(ctx, rb_residual_step_generic(ctx, J, omega, &x, &yg, &work));
                RB_CHECK(ctx, rb_tensor_copy(ctx, &x, &yg_in));
                RB_CHECK(ctx, rb_residual_step_generic(ctx, J, omega, &yg_in, &yg_in, &work));
                RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &x, &yf, &work));
                RB_CHECK(ctx, rb_tensor_copy(ctx, &x, &yi));
                RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &yi, &yi, &work));
                assert_int_equal(rb_arena_mark(&work), 0); /* scratch given back */
                double e_fused = rb_tensor_max_rel_diff(&yf, &yg), e_in = max_abs_diff(&yi, &yf);
                double e_gen_in = max_abs_diff(&yg_in, &yg);
                if (!(e_fused <= 1e-14) || !(e_in == 0.0) || !(e_gen_in == 0.0))
                    fail_msg("%s (%zu,1,1,%zu,%zu) threads %d: fused vs generic %.3g, in place vs out of place %.3g, "
                             "generic in place %.3g",
                             pattern == RB_STENCIL_STAR ? "5-point" : "3x3", gc->n, gc->h, gc->w, thread_counts[k],
                             e_fused, e_in, e_gen_in);
            }
            RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
            rb_arena_release(ctx, &work);
            rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yg);
            rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &yi), rb_tensor_release(ctx, &yg_in);
        }
    }
}

/* Several sweeps in place, with an arena that has room for the row buffers of one
 * thread only (the kernel then runs fewer threads), against generic sweeps. */
static void test_fused_small_arena_repeated(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {7};
    rb_shape sh = rb_shape_2d(2, 1, 40, 37);
    rb_op *A = random_stencil(ctx, RB_STENCIL_FULL, &rng), *J;
    rb_tensor b, x, xg;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xg, sh));
    rb_test_fill(&rng, &b, -1, 1);
    rb_test_fill(&rng, &x, -1, 1);
    RB_CHECK(ctx, rb_tensor_copy(ctx, &x, &xg));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    rb_arena big = {0}, small = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &big, rb_residual_workspace(J, sh)));
    RB_CHECK(ctx, rb_arena_reserve(ctx, &small, rb_arena_bytes(3 * sh.w * sizeof(double))));
    RB_CHECK(ctx, rb_context_set_threads(ctx, 2));
    for (int it = 0; it < 5; it++) {
        RB_CHECK(ctx, rb_residual_step_generic(ctx, J, 0.9, &xg, &xg, &big));
        /* the generic path could not run in place on `small`: success means the fused kernel ran */
        RB_CHECK(ctx, rb_residual_step(ctx, J, 0.9, &x, &x, &small));
    }
    assert_true(max_abs_diff(&x, &xg) == 0.0);
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
    rb_arena_release(ctx, &big), rb_arena_release(ctx, &small);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &xg);
}

/* ---- fast stencil against the reference loop ---------------------------------------------- */

/* Oracle: rb_conv_gather, the reference loop the conv op falls back to. */
static void test_stencil_fast_vs_gather(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {99};
    for (int p = 0; p < 2; p++) {
        rb_stencil pattern = p == 0 ? RB_STENCIL_STAR : RB_STENCIL_FULL;
        for (size_t c = 0; c < COUNT(grid_cases); c++) {
            const grid_case *gc = &grid_cases[c];
            rb_shape sh = rb_shape_2d(gc->n, 1, gc->h, gc->w), out;
            rb_op *A = random_stencil(ctx, pattern, &rng);
            const rb_conv_state *cs = rb_conv_state_of(A);
            assert_non_null(cs);
            rb_conv_geom g;
            RB_CHECK(ctx, rb_conv_geometry(ctx, A, sh, &g, &out));
            assert_true(rb_shape_equal(out, sh));
            rb_tensor x, yf, yr, ya;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &yr, sh));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &ya, sh));
            rb_test_fill(&rng, &x, -1, 1);
            rb_conv_gather(1, cs, &g, A->params, NULL, x.data, 1.0, 0.0, yr.data);
            for (size_t k = 0; k < COUNT(thread_counts); k++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, thread_counts[k]));
                rb_tensor_fill(ctx, &yf, NAN);
                assert_true(rb_stencil_fast_forward(ctx, cs, &g, A->params, x.data, yf.data));
                RB_CHECK(ctx, rb_op_apply(ctx, A, &x, &ya, NULL));
                double e = max_abs_diff(&yf, &yr), ea = max_abs_diff(&ya, &yr);
                if (!(e == 0.0) || !(ea == 0.0))
                    fail_msg("%s (%zu,1,1,%zu,%zu) threads %d: fast vs gather %.3g, apply vs gather %.3g",
                             pattern == RB_STENCIL_STAR ? "5-point" : "3x3", gc->n, gc->h, gc->w, thread_counts[k],
                             e, ea);
            }
            RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
            rb_op_free(ctx, A);
            rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &yr);
            rb_tensor_release(ctx, &ya);
        }
    }
}

/* What the fast path must leave to the reference loop. */
static void test_stencil_fast_declines(void **state)
{
    rb_context *ctx = *state;
    double y[64], x[64] = {0};
    rb_conv_desc descs[6];
    rb_shape shapes[6];
    descs[0] = rb_conv_desc_default(1, 1, 1), shapes[0] = rb_shape_1d(1, 1, 8);           /* 1D */
    descs[1] = rb_conv_desc_default(3, 1, 1), shapes[1] = rb_shape_3d(1, 1, 3, 3, 3);     /* 3D */
    descs[2] = rb_conv_desc_default(2, 2, 1), shapes[2] = rb_shape_2d(1, 2, 4, 4);        /* 2 channels */
    descs[3] = rb_conv_desc_default(2, 1, 1), shapes[3] = rb_shape_2d(1, 1, 5, 5);
    descs[3].stride = 2;                                                                  /* stride 2 */
    descs[4] = rb_conv_desc_default(2, 1, 1), shapes[4] = rb_shape_2d(1, 1, 4, 4);
    descs[4].bias = true;                                                                 /* bias */
    descs[5] = rb_conv_desc_default(2, 1, 1), shapes[5] = rb_shape_2d(1, 1, 4, 4);
    descs[5].transposed = true;                                                           /* transposed */
    for (int k = 0; k < 6; k++) {
        rb_op *op;
        RB_CHECK(ctx, rb_op_conv_create(ctx, &descs[k], NULL, &op));
        rb_conv_geom g;
        RB_CHECK(ctx, rb_conv_geometry(ctx, op, shapes[k], &g, NULL));
        if (rb_stencil_fast_forward(ctx, rb_conv_state_of(op), &g, op->params, x, y))
            fail_msg("case %d: the fast stencil accepted a conv it does not handle", k);
        rb_op_free(ctx, op);
    }
}

/* ---- the row kernels' variants against the plain row ---------------------------------------- */

/* Oracle: rb_stencil2d_row without streaming stores. The streaming variant (aligned
 * vector stores after a scalar peel) and the in-place row (old values kept in
 * registers and handed back in `save`) must give the same numbers, for every row
 * length around the vector widths, every alignment of y, with and without the rows
 * above/below, for y = A x and for the Jacobi update. */
static void test_row_variants(void **state)
{
    (void)state;
    rb_test_rng rng = {11};
    enum { WMAX = 80, PAD = 4 };
    double up[WMAX], mid[WMAX], dn[WMAX], b[WMAX], ref[WMAX], got[WMAX + PAD], row[WMAX], save[WMAX];
    for (int p = 0; p < 2; p++) {
        int taps = p == 0 ? 5 : 9;
        rb_conv_desc d = rb_conv_desc_default(2, 1, 1);
        d.pattern = p == 0 ? RB_STENCIL_STAR : RB_STENCIL_FULL;
        rb_conv_state cs = {d, taps, {{0}}};
        for (int t = 0, k = 0; t < 9; t++) {
            int dy = t / 3 - 1, dx = t % 3 - 1;
            if (taps == 5 && dy != 0 && dx != 0) continue;
            cs.tap[k][0] = 0, cs.tap[k][1] = dy, cs.tap[k][2] = dx;
            k++;
        }
        double w[9];
        for (int t = 0; t < taps; t++) w[t] = rb_test_uniform(&rng, -1, 1);
        rb_stencil2d st;
        assert_true(rb_stencil2d_init(&cs, w, &st));
        for (size_t W = 1; W <= WMAX; W++) {
            for (size_t j = 0; j < W; j++) {
                up[j] = rb_test_uniform(&rng, -1, 1), mid[j] = rb_test_uniform(&rng, -1, 1);
                dn[j] = rb_test_uniform(&rng, -1, 1), b[j] = rb_test_uniform(&rng, -1, 1);
            }
            for (int edge = 0; edge < 3; edge++) { /* 0: interior row, 1: no row above, 2: no row below */
                const double *u = edge == 1 ? NULL : up, *dd = edge == 2 ? NULL : dn;
                for (int jac = 0; jac < 2; jac++) {
                    const double *bb = jac ? b : NULL;
                    rb_stencil2d_row(&st, W, u, mid, dd, bb, 0.7, 0.9, ref, W, W, false);
                    for (int off = 0; off < PAD; off++) { /* y at every alignment */
                        rb_stencil2d_row(&st, W, u, mid, dd, bb, 0.7, 0.9, got + off, W, W, true);
                        rb_stencil2d_stream_fence();
                        for (size_t j = 0; j < W; j++)
                            if (!(got[off + j] == ref[j]))
                                fail_msg("%d taps, W %zu, edge %d, jacobi %d, offset %d: streaming row differs at %zu",
                                         taps, W, edge, jac, off, j);
                    }
                    if (!jac) continue;
                    memcpy(row, mid, W * sizeof(double));
                    rb_stencil2d_row_in_place(&st, W, u, row, save, dd, b, 0.7, 0.9, W, W);
                    for (size_t j = 0; j < W; j++)
                        if (!(row[j] == ref[j]) || !(save[j] == mid[j]))
                            fail_msg("%d taps, W %zu, edge %d: in-place row differs at %zu", taps, W, edge, j);
                }
            }
        }
    }
}

/* Streaming stores are chosen above 32 MiB (or the last-level cache, if smaller). */
static void test_stream_threshold(void **state)
{
    (void)state;
    assert_false(rb_stencil2d_stream_stores(1u << 20));
#if defined(__AVX2__)
    assert_true(rb_stencil2d_stream_stores((size_t)33 << 20));
#endif
}

/* Grids larger than the last-level cache (streaming stores), through the public entry
 * points. Oracles: rb_conv_gather for y = A x, the generic path for the sweep. */
static void test_large_grid(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {3};
    rb_shape sh = rb_shape_2d(2, 1, 1100, 1101); /* 2 x 9.7 MB: y = A x touches 39 MB, a sweep 58 MB */
    rb_op *A = random_stencil(ctx, RB_STENCIL_FULL, &rng), *J;
    rb_tensor b, x, yr, yf, yg, yi;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yr, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yi, sh));
    rb_test_fill(&rng, &b, -1, 1);
    rb_test_fill(&rng, &x, -1, 1);
    rb_conv_geom g;
    RB_CHECK(ctx, rb_conv_geometry(ctx, A, sh, &g, NULL));
    rb_conv_gather(1, rb_conv_state_of(A), &g, A->params, NULL, x.data, 1.0, 0.0, yr.data);
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(J, sh)));
    for (int threads = 1; threads <= 2; threads++) {
        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
        RB_CHECK(ctx, rb_op_apply(ctx, A, &x, &yf, NULL));
        assert_true(max_abs_diff(&yf, &yr) == 0.0);
        RB_CHECK(ctx, rb_residual_step_generic(ctx, J, 0.7, &x, &yg, &work));
        RB_CHECK(ctx, rb_residual_step(ctx, J, 0.7, &x, &yf, &work));
        RB_CHECK(ctx, rb_tensor_copy(ctx, &x, &yi));
        RB_CHECK(ctx, rb_residual_step(ctx, J, 0.7, &yi, &yi, &work));
        assert_true(rb_tensor_max_rel_diff(&yf, &yg) <= 1e-14);
        assert_true(max_abs_diff(&yi, &yf) == 0.0);
    }
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yr);
    rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &yg), rb_tensor_release(ctx, &yi);
}

/* ---- closed forms: damping of Fourier modes ------------------------------------------------ */

/* Oracle (closed form): for the Poisson stencil on n interior points, h = 1/(n+1),
 * b = 0, one damped-Jacobi sweep multiplies sin(k pi x_i) by 1 - omega (1 - cos(k pi h)):
 * A v = (2 - 2 cos(k pi h))/h^2 v and D = 2/h^2. (1D: the generic path.) */
static void test_oracle_fourier_1d(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 63;
    const double h = 1.0 / (double)(n + 1), omega = 2.0 / 3.0;
    rb_shape sh = rb_shape_1d(1, 1, n);
    rb_op *A, *J;
    rb_tensor b, v, y;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 1, h, &A));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &v, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, sh));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(J, sh)));
    const int ks[] = {1, 2, 5, 17, 32, 50, 63};
    for (size_t q = 0; q < COUNT(ks); q++) {
        double k = ks[q], factor = 1.0 - omega * (1.0 - cos(k * PI * h));
        for (size_t i = 0; i < n; i++) v.data[i] = sin(k * PI * (double)(i + 1) * h);
        RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &v, &y, &work));
        double err = 0.0;
        for (size_t i = 0; i < n; i++) err = fmax(err, fabs(y.data[i] - factor * v.data[i]));
        if (!(err <= 1e-13)) fail_msg("1D mode k = %g: damping factor %.17g, max error %.3g", k, factor, err);
        RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &v, &v, &work)); /* in place */
        for (size_t i = 0; i < n; i++) assert_true(v.data[i] == y.data[i]);
    }
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &v), rb_tensor_release(ctx, &y);
}

/* Oracle (closed form): 5-point Laplacian on an n x n interior grid, b = 0: one
 * sweep multiplies sin(k pi x) sin(l pi y) by 1 - (omega/2)(2 - cos(k pi h) - cos(l pi h)):
 * A v = (4 - 2 cos(k pi h) - 2 cos(l pi h))/h^2 v and D = 4/h^2. Through the fused
 * kernel: out of place needs no arena at all, and in place the arena only holds
 * row buffers (too small for the generic path, which needs a whole grid). */
static void test_oracle_fourier_2d_fused(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 63;
    const double h = 1.0 / (double)(n + 1);
    rb_shape sh = rb_shape_2d(1, 1, n, n);
    rb_op *A, *J;
    rb_tensor b, v, y;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, h, &A));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &v, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, sh));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    rb_arena rows = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &rows, 2 * rb_arena_bytes(3 * n * sizeof(double))));
    assert_true(rows.cap < rb_arena_bytes(n * n * sizeof(double)));
    const int kl[][2] = {{1, 1}, {1, 2}, {3, 5}, {16, 16}, {31, 7}, {40, 60}, {63, 63}};
    const double omegas[] = {0.8, 1.0};
    for (int threads = 1; threads <= 2; threads++) {
        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
        for (size_t o = 0; o < COUNT(omegas); o++)
            for (size_t q = 0; q < COUNT(kl); q++) {
                double k = kl[q][0], l = kl[q][1], omega = omegas[o];
                double factor = 1.0 - omega / 2.0 * (2.0 - cos(k * PI * h) - cos(l * PI * h));
                for (size_t i = 0; i < n; i++)
                    for (size_t j = 0; j < n; j++)
                        RB_AT(&v, 0, 0, 0, i, j) = sin(k * PI * (double)(i + 1) * h) * sin(l * PI * (double)(j + 1) * h);
                RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &v, &y, NULL));
                double err = 0.0;
                for (size_t i = 0; i < n * n; i++) err = fmax(err, fabs(y.data[i] - factor * v.data[i]));
                if (!(err <= 1e-13))
                    fail_msg("2D mode (%g, %g), omega %g, threads %d: factor %.17g, max error %.3g", k, l, omega,
                             threads, factor, err);
                RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &v, &v, &rows));
                assert_true(max_abs_diff(&v, &y) == 0.0);
            }
    }
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
    rb_arena_release(ctx, &rows);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &v), rb_tensor_release(ctx, &y);
}

/* ---- conformance ----------------------------------------------------------------------------- */

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {5};
    rb_op *A5 = random_stencil(ctx, RB_STENCIL_STAR, &rng), *A9 = random_stencil(ctx, RB_STENCIL_FULL, &rng), *A1;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 1, 0.25, &A1));
    rb_shape s2 = rb_shape_2d(2, 1, 6, 5), s1 = rb_shape_1d(2, 1, 9);
    rb_tensor b2, b1;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b2, s2));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b1, s1));
    rb_test_fill(&rng, &b2, -1, 1);
    rb_test_fill(&rng, &b1, -1, 1);
    rb_op *J5, *J9, *J1;
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A5, &b2, &J5));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A9, &b2, &J9));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A1, &b1, &J1));
    for (int threads = 1; threads <= 2; threads++) {
        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
        rb_conformance_case c;
        c = rb_conformance_default(J5, s2, "jacobi 2D 5-point");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(J9, s2, "jacobi 2D 3x3");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(J1, s1, "jacobi 1D Poisson");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(A5, rb_shape_2d(2, 1, 7, 6), "stencil 2D 5-point");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(A9, rb_shape_2d(1, 1, 5, 8), "stencil 2D 3x3");
        rb_conformance_run(ctx, &c);
    }
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
    rb_op_free(ctx, J5), rb_op_free(ctx, J9), rb_op_free(ctx, J1);
    rb_op_free(ctx, A5), rb_op_free(ctx, A9), rb_op_free(ctx, A1);
    rb_tensor_release(ctx, &b2), rb_tensor_release(ctx, &b1);
}

/* ---- bad input ------------------------------------------------------------------------------- */

static void test_jacobi_create_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_tensor b;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, rb_shape_2d(1, 1, 5, 5)));
    rb_op *J = NULL, *conv;

    rb_conv_desc d = rb_conv_desc_default(2, 2, 1); /* two input channels */
    double w2[18];
    for (int i = 0; i < 18; i++) w2[i] = 1.0;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w2, &conv));
    RB_EXPECT(ctx, RB_EINVAL, "single-channel", rb_op_jacobi_create(ctx, conv, &b, &J));
    assert_null(J);
    rb_op_free(ctx, conv);

    d = rb_conv_desc_default(2, 1, 1);
    d.stride = 2;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w2, &conv));
    RB_EXPECT(ctx, RB_EINVAL, "stride-1", rb_op_jacobi_create(ctx, conv, &b, &J));
    assert_null(J);
    rb_op_free(ctx, conv);

    double w5[5] = {-1, -1, 0, -1, -1}; /* zero centre weight */
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_STAR, w5, &conv));
    RB_EXPECT(ctx, RB_EINVAL, "centre weight", rb_op_jacobi_create(ctx, conv, &b, &J));
    assert_null(J);
    RB_EXPECT(ctx, RB_ENULL, "b is NULL", rb_op_jacobi_create(ctx, conv, NULL, &J));
    assert_null(J);
    RB_EXPECT(ctx, RB_ENULL, "A is NULL", rb_op_jacobi_create(ctx, NULL, &b, &J));
    assert_null(J);
    rb_op_free(ctx, conv);
    rb_tensor_release(ctx, &b);
}

/* y untouched (still 7) */
static void assert_untouched(const rb_tensor *y)
{
    const size_t n = rb_tensor_count(y);
    for (size_t i = 0; i < n; i++)
        if (y->data[i] != 7.0) fail_msg("output changed at %zu although the call was refused", i);
}

static void test_residual_step_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_shape sh = rb_shape_2d(1, 1, 6, 6);
    rb_op *A, *J;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, 0.1, &A));
    rb_tensor b, x, y, xs, ys;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, sh));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xs, rb_shape_2d(1, 1, 6, 7)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ys, rb_shape_2d(1, 1, 6, 7)));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(J, sh)));
    rb_tensor_fill(ctx, &x, 1.0);
    rb_tensor_fill(ctx, &y, 7.0);
    rb_tensor_fill(ctx, &ys, 7.0);

    RB_EXPECT(ctx, RB_EINVAL, "not finite", rb_residual_step(ctx, J, NAN, &x, &y, &work));
    assert_untouched(&y);
    RB_EXPECT(ctx, RB_EINVAL, "not finite", rb_residual_step(ctx, J, INFINITY, &y, &y, &work));
    assert_untouched(&y);
    /* x and y agree with each other but not with b */
    RB_EXPECT(ctx, RB_ESHAPE, "right-hand side", rb_residual_step(ctx, J, 0.8, &xs, &ys, &work));
    assert_untouched(&ys);
    RB_EXPECT(ctx, RB_ESHAPE, "right-hand side", rb_residual_step(ctx, J, 0.8, &ys, &ys, &work));
    assert_untouched(&ys);
    RB_EXPECT(ctx, RB_ESHAPE, "right-hand side", rb_residual_step_generic(ctx, J, 0.8, &xs, &ys, &work));
    assert_untouched(&ys);
    /* x and y disagree */
    RB_EXPECT(ctx, RB_ESHAPE, "shape", rb_residual_step(ctx, J, 0.8, &x, &ys, &work));
    assert_untouched(&ys);
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_residual_step(ctx, J, 0.8, &x, NULL, &work));
    RB_EXPECT(ctx, RB_ENULL, "F is NULL", rb_residual_step(ctx, NULL, 0.8, &x, &y, &work));
    assert_untouched(&y);
    /* in place without an arena: no room for the row buffers nor for F(x) */
    RB_EXPECT(ctx, RB_ENULL, "work arena", rb_residual_step(ctx, J, 0.8, &y, &y, NULL));
    assert_untouched(&y);
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &xs), rb_tensor_release(ctx, &ys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fused_vs_generic, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fused_small_arena_repeated, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_stencil_fast_vs_gather, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_stencil_fast_declines, rb_test_setup, rb_test_teardown),
        cmocka_unit_test(test_row_variants),
        cmocka_unit_test(test_stream_threshold),
        cmocka_unit_test_setup_teardown(test_large_grid, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_oracle_fourier_1d, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_oracle_fourier_2d_fused, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_jacobi_create_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_residual_step_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("jacobi", tests, NULL, NULL);
}
