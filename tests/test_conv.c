/* test_conv.c — stencils and convolutions (reference loops and whatever fast
 * path the op takes): the conformance suite over every descriptor the issue
 * names, an independent PyTorch-style direct formula, closed forms
 * (exactness of the Laplacian on quadratics, full weighting and linear
 * interpolation on linear data) and bad input. */
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static rb_op *make_conv(rb_context *ctx, rb_conv_desc d, uint64_t seed)
{
    rb_test_rng r = {seed};
    size_t np = rb_conv_nparams(&d);
    double *p = test_malloc(np * sizeof *p);
    for (size_t i = 0; i < np; i++) p[i] = rb_test_uniform(&r, -1, 1);
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, p, &op));
    test_free(p);
    return op;
}

/* Input extent accepted by the descriptor near `n`. */
static size_t fit_extent(const rb_conv_desc *d, size_t n)
{
    if (d->transposed || d->stride == 1 || d->grid == RB_GRID_CELL) return n;
    return n % 2 ? n : n + 1; /* vertex stride 2: 2k+1 */
}

static void test_conformance_all_descriptors(void **state)
{
    rb_context *ctx = *state;
    int cases = 0;
    for (int dims = 1; dims <= 3; dims++)
        for (int ksize = 1; ksize <= 3; ksize += 2)
            for (int pattern = 0; pattern < RB_STENCIL_COUNT; pattern++)
                for (int stride = 1; stride <= 2; stride++)
                    for (int grid = 0; grid < RB_GRID_COUNT; grid++)
                        for (int tr = 0; tr <= 1; tr++)
                            for (int bias = 0; bias <= 1; bias++) {
                                if (pattern == RB_STENCIL_STAR && ksize == 1) continue;
                                if (stride == 1 && grid == RB_GRID_CELL) continue; /* same as vertex */
                                if (stride == 1 && tr) continue; /* a transposed stride-1 is the flipped conv */
                                size_t cin = dims == 2 ? 2 : 1, cout = dims == 2 ? 3 : 1;
                                rb_conv_desc d = rb_conv_desc_default(dims, cin, cout);
                                d.ksize = ksize, d.pattern = (rb_stencil)pattern, d.stride = stride;
                                d.grid = (rb_grid)grid, d.transposed = tr, d.bias = bias;
                                size_t n = dims == 1 ? 9 : dims == 2 ? 5 : 5;
                                if (d.grid == RB_GRID_CELL && stride == 2 && !tr) n = dims == 3 ? 4 : 6;
                                if (tr) n = dims == 3 ? 2 : 3;
                                n = fit_extent(&d, n);
                                rb_shape in = {dims == 2 ? 2 : 1, cin, dims == 3 ? n : 1, dims >= 2 ? n : 1, n};
                                if (dims == 2) in.h = n + (d.grid == RB_GRID_VERTEX && stride == 2 && !tr ? 2 : 1);
                                char label[160];
                                snprintf(label, sizeof label, "conv %dD k%d %s s%d %s%s%s", dims, ksize,
                                         pattern ? "star" : "full", stride, grid ? "cell" : "vertex",
                                         tr ? " transposed" : "", bias ? " bias" : "");
                                rb_op *op = make_conv(ctx, d, 1000 + (uint64_t)cases);
                                rb_conformance_case c = rb_conformance_default(op, in, label);
                                rb_conformance_run(ctx, &c);
                                rb_op_free(ctx, op);
                                cases++;
                            }
    assert_true(cases >= 40);
}

/* Oracle: PyTorch's definition of conv2d, written independently of src/conv.c:
 * y[n,o,i,j] = b[o] + sum_{c,ki,kj} w[o,c,ki,kj] x[n,c, s*i - p + ki, s*j - p + kj]. */
static void torch_style_conv2d(const double *x, size_t N, size_t C, size_t H, size_t W, const double *w,
                               const double *b, size_t O, int k, int s, int p, double *y, size_t Ho, size_t Wo)
{
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < O; o++)
            for (size_t i = 0; i < Ho; i++)
                for (size_t j = 0; j < Wo; j++) {
                    double acc = b ? b[o] : 0;
                    for (size_t c = 0; c < C; c++)
                        for (int ki = 0; ki < k; ki++)
                            for (int kj = 0; kj < k; kj++) {
                                long ii = (long)(s * i) - p + ki, jj = (long)(s * j) - p + kj;
                                if (ii < 0 || jj < 0 || ii >= (long)H || jj >= (long)W) continue;
                                acc += w[((o * C + c) * k + ki) * k + kj] * x[((n * C + c) * H + ii) * W + jj];
                            }
                    y[((n * O + o) * Ho + i) * Wo + j] = acc;
                }
}

static void test_against_direct_formula(void **state)
{
    rb_context *ctx = *state;
    struct { int k, s; rb_grid grid; size_t h, w, ho, wo; int pad; } cases[] = {
        {3, 1, RB_GRID_VERTEX, 7, 6, 7, 6, 1}, /* same padding */
        {1, 1, RB_GRID_VERTEX, 5, 4, 5, 4, 0},
        {3, 2, RB_GRID_CELL, 8, 6, 4, 3, 1},   /* CNN: 2k -> k */
        {3, 2, RB_GRID_CELL, 7, 5, 4, 3, 1},   /* odd: ceil(n/2) as PyTorch */
        {1, 2, RB_GRID_CELL, 8, 7, 4, 4, 0},
        {3, 2, RB_GRID_VERTEX, 9, 7, 4, 3, 0}, /* multigrid: 2k+1 -> k, no padding */
    };
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
        rb_conv_desc d = rb_conv_desc_default(2, 3, 4);
        d.ksize = cases[t].k, d.stride = cases[t].s, d.grid = cases[t].grid, d.bias = true;
        rb_op *op = make_conv(ctx, d, 77 + t);
        rb_tensor x, y;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(2, 3, cases[t].h, cases[t].w)));
        rb_test_rng r = {t};
        rb_test_fill(&r, &x, -1, 1);
        rb_shape out;
        RB_CHECK(ctx, rb_op_shape(ctx, op, x.shape, &out));
        assert_int_equal(out.h, cases[t].ho);
        assert_int_equal(out.w, cases[t].wo);
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, out));
        rb_arena a = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &a, rb_op_workspace(op, x.shape) + 64));
        RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, &a));
        double *want = test_malloc(rb_tensor_count(&y) * sizeof *want);
        size_t nw = 3 * 4 * (size_t)(d.ksize * d.ksize);
        torch_style_conv2d(x.data, 2, 3, cases[t].h, cases[t].w, op->params, op->params + nw, 4, d.ksize, d.stride,
                           cases[t].pad, want, cases[t].ho, cases[t].wo);
        rb_tensor wt;
        rb_tensor_view(ctx, &wt, want, out);
        double err = rb_tensor_max_rel_diff(&y, &wt);
        if (!(err <= 1e-14)) fail_msg("case %zu: conv vs direct formula %.3g", t, err);
        test_free(want);
        rb_arena_release(ctx, &a);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
        rb_op_free(ctx, op);
    }
}

/* Closed form: the 3-, 5-, 7-point Laplacian is exact on u = prod x_i (1 - x_i)
 * (quadratic in each direction, zero on the boundary): -Delta_h u = -Delta u. */
static void test_laplacian_exact_on_quadratics(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++) {
        size_t n = dims == 3 ? 15 : 31;
        double h = 1.0 / (double)(n + 1);
        rb_op *A;
        RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, h, &A));
        rb_shape s = {1, 1, dims == 3 ? n : 1, dims >= 2 ? n : 1, n};
        rb_tensor u, f;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, s));
        size_t nz = s.d, ny = s.h;
        for (size_t k = 0; k < nz; k++)
            for (size_t j = 0; j < ny; j++)
                for (size_t i = 0; i < n; i++) {
                    double x[3] = {(double)(i + 1) * h, (double)(j + 1) * h, (double)(k + 1) * h};
                    double q[3] = {x[0] * (1 - x[0]), dims >= 2 ? x[1] * (1 - x[1]) : 1,
                                   dims == 3 ? x[2] * (1 - x[2]) : 1};
                    RB_AT(&u, 0, 0, k, j, i) = q[0] * q[1] * q[2];
                }
        RB_CHECK(ctx, rb_op_apply(ctx, A, &u, &f, NULL));
        double err = 0;
        for (size_t k = 0; k < nz; k++)
            for (size_t j = 0; j < ny; j++)
                for (size_t i = 0; i < n; i++) {
                    double x[3] = {(double)(i + 1) * h, (double)(j + 1) * h, (double)(k + 1) * h};
                    double q[3] = {x[0] * (1 - x[0]), x[1] * (1 - x[1]), x[2] * (1 - x[2])};
                    double want = 2 * (dims == 1 ? 1 : dims == 2 ? q[1] + q[0] : q[1] * q[2] + q[0] * q[2] + q[0] * q[1]);
                    err = fmax(err, fabs(RB_AT(&f, 0, 0, k, j, i) - want));
                }
        if (!(err <= 1e-10)) fail_msg("%dD Laplacian on a quadratic: error %.3g", dims, err);
        rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &f);
        rb_op_free(ctx, A);
    }
}

/* Closed form: full weighting ([1 2 1]/4 per direction, vertex stride 2) and
 * linear interpolation (its transpose scaled by 2^d) reproduce linear data. */
static void test_transfers_exact_on_linear(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++) {
        size_t k = dims == 3 ? 3 : 7, n = 2 * k + 1;
        double w[27];
        int t = 0;
        for (int a = 0; a < (dims >= 3 ? 3 : 1); a++)
            for (int b = 0; b < (dims >= 2 ? 3 : 1); b++)
                for (int c = 0; c < 3; c++) {
                    double wz = dims >= 3 ? (a == 1 ? 0.5 : 0.25) : 1, wy = dims >= 2 ? (b == 1 ? 0.5 : 0.25) : 1;
                    w[t++] = wz * wy * (c == 1 ? 0.5 : 0.25);
                }
        rb_conv_desc d = rb_conv_desc_default(dims, 1, 1);
        d.stride = 2;
        rb_op *R, *P;
        RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &R));
        for (int i = 0; i < t; i++) w[i] *= (double)(1 << dims);
        d.transposed = true;
        RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &P));
        rb_shape fs = {1, 1, dims == 3 ? n : 1, dims >= 2 ? n : 1, n};
        rb_shape cs = {1, 1, dims == 3 ? k : 1, dims >= 2 ? k : 1, k};
        rb_tensor uf, uc, pf;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &uf, fs));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &uc, cs));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &pf, fs));
        /* linear data u = 1 + 2x - 3y + 0.5z at fine points x_i = (i+1)/(n+1) */
        double hf = 1.0 / (double)(n + 1);
        for (size_t c = 0; c < fs.d; c++)
            for (size_t b = 0; b < fs.h; b++)
                for (size_t a = 0; a < n; a++)
                    RB_AT(&uf, 0, 0, c, b, a) = 1 + 2 * (a + 1) * hf - 3 * (b + 1) * hf * (dims >= 2) +
                                                0.5 * (c + 1) * hf * (dims == 3);
        RB_CHECK(ctx, rb_op_apply(ctx, R, &uf, &uc, NULL));
        double err = 0;
        for (size_t c = 0; c < cs.d; c++)
            for (size_t b = 0; b < cs.h; b++)
                for (size_t a = 0; a < k; a++) {
                    size_t fc = dims == 3 ? 2 * c + 1 : 0, fb = dims >= 2 ? 2 * b + 1 : 0;
                    err = fmax(err, fabs(RB_AT(&uc, 0, 0, c, b, a) - RB_AT(&uf, 0, 0, fc, fb, 2 * a + 1)));
                }
        if (!(err <= 1e-14)) fail_msg("%dD full weighting of linear data: error %.3g", dims, err);
        RB_CHECK(ctx, rb_op_apply(ctx, P, &uc, &pf, NULL));
        err = 0;
        /* interior fine points (all of whose coarse neighbours exist) are interpolated exactly */
        for (size_t c = 0; c < fs.d; c++)
            for (size_t b = 0; b < fs.h; b++)
                for (size_t a = 1; a + 1 < n; a++) {
                    if (dims >= 2 && (b == 0 || b + 1 == n)) continue;
                    if (dims == 3 && (c == 0 || c + 1 == n)) continue;
                    err = fmax(err, fabs(RB_AT(&pf, 0, 0, c, b, a) - RB_AT(&uf, 0, 0, c, b, a)));
                }
        if (!(err <= 1e-14)) fail_msg("%dD linear interpolation of linear data: error %.3g", dims, err);
        rb_tensor_release(ctx, &uf), rb_tensor_release(ctx, &uc), rb_tensor_release(ctx, &pf);
        rb_op_free(ctx, R), rb_op_free(ctx, P);
    }
}

static void test_shapes_of_both_conventions(void **state)
{
    rb_context *ctx = *state;
    rb_conv_desc d = rb_conv_desc_default(2, 1, 1);
    d.stride = 2;
    size_t out;
    RB_CHECK(ctx, rb_conv_out_extent(ctx, &d, 63, &out));
    assert_int_equal(out, 31);
    d.transposed = true;
    RB_CHECK(ctx, rb_conv_out_extent(ctx, &d, 31, &out));
    assert_int_equal(out, 63);
    d.grid = RB_GRID_CELL;
    RB_CHECK(ctx, rb_conv_out_extent(ctx, &d, 14, &out));
    assert_int_equal(out, 28);
    d.transposed = false;
    RB_CHECK(ctx, rb_conv_out_extent(ctx, &d, 28, &out));
    assert_int_equal(out, 14);
    d.ksize = 1;
    RB_CHECK(ctx, rb_conv_out_extent(ctx, &d, 28, &out));
    assert_int_equal(out, 14);
    assert_int_equal(rb_conv_ntaps(&(rb_conv_desc){3, 1, 1, 3, RB_STENCIL_STAR, 1, RB_GRID_VERTEX, false, false}), 7);
    assert_int_equal(rb_conv_ntaps(&(rb_conv_desc){3, 1, 1, 3, RB_STENCIL_FULL, 1, RB_GRID_VERTEX, false, false}), 27);
    assert_int_equal(rb_conv_ntaps(&(rb_conv_desc){1, 1, 1, 3, RB_STENCIL_FULL, 1, RB_GRID_VERTEX, false, false}), 3);
    assert_int_equal(rb_conv_ntaps(&(rb_conv_desc){2, 1, 1, 3, RB_STENCIL_STAR, 1, RB_GRID_VERTEX, false, false}), 5);
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *op = NULL;
    rb_conv_desc d = rb_conv_desc_default(2, 2, 2);
    d.dims = 4;
    RB_EXPECT(ctx, RB_EINVAL, "desc.dims = 4", rb_op_conv_create(ctx, &d, NULL, &op));
    d = rb_conv_desc_default(2, 0, 2);
    RB_EXPECT(ctx, RB_EINVAL, "desc.cin = 0", rb_op_conv_create(ctx, &d, NULL, &op));
    d = rb_conv_desc_default(2, 1, 1);
    d.ksize = 5;
    RB_EXPECT(ctx, RB_EINVAL, "desc.ksize = 5", rb_op_conv_create(ctx, &d, NULL, &op));
    d.ksize = 1, d.pattern = RB_STENCIL_STAR;
    RB_EXPECT(ctx, RB_EINVAL, "STAR", rb_op_conv_create(ctx, &d, NULL, &op));
    d = rb_conv_desc_default(2, 1, 1);
    d.stride = 3;
    RB_EXPECT(ctx, RB_EINVAL, "desc.stride = 3", rb_op_conv_create(ctx, &d, NULL, &op));
    d.stride = 2;
    double nanw[9] = {0, 0, 0, 0, NAN, 0, 0, 0, 0};
    RB_EXPECT(ctx, RB_EINVAL, "params[4]", rb_op_conv_create(ctx, &d, nanw, &op));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_conv_create(ctx, &d, NULL, NULL));
    RB_EXPECT(ctx, RB_ENULL, "weights", rb_op_stencil_create(ctx, 2, RB_STENCIL_STAR, NULL, &op));
    RB_EXPECT(ctx, RB_EINVAL, "h = -1", rb_op_laplacian_create(ctx, 2, -1.0, &op));
    RB_EXPECT(ctx, RB_EINVAL, "h = inf", rb_op_laplacian_create(ctx, 2, INFINITY, &op));
    assert_null(op);

    /* vertex stride 2 on an even grid: RB_ESHAPE naming 2k+1, output untouched */
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, NULL, &op));
    rb_tensor x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(1, 1, 8, 9)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(1, 1, 4, 4)));
    rb_tensor_fill(ctx, &y, 3.0);
    RB_EXPECT(ctx, RB_ESHAPE, "2k+1", rb_op_apply(ctx, op, &x, &y, NULL));
    for (size_t i = 0; i < 16; i++) assert_true(y.data[i] == 3.0);
    rb_tensor_release(ctx, &x);
    /* wrong channel count */
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(1, 2, 9, 9)));
    RB_EXPECT(ctx, RB_ESHAPE, "input channels", rb_op_apply(ctx, op, &x, &y, NULL));
    rb_tensor_release(ctx, &x);
    /* a 2D conv on a 3D grid */
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_3d(1, 1, 3, 9, 9)));
    RB_EXPECT(ctx, RB_ESHAPE, "dimension D", rb_op_apply(ctx, op, &x, &y, NULL));
    /* x and y aliasing */
    rb_tensor_release(ctx, &x);
    rb_op_free(ctx, op);
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 2, 0.5, &op));
    RB_EXPECT(ctx, RB_EINVAL, "alias", rb_op_apply(ctx, op, &y, &y, NULL));
    /* vjp with a non-finite alpha */
    RB_EXPECT(ctx, RB_EINVAL, "alpha", rb_op_vjp(ctx, op, &y, &y, NAN, &y, NULL));
    rb_op_free(ctx, op);
    rb_tensor_release(ctx, &y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance_all_descriptors, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_against_direct_formula, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_laplacian_exact_on_quadratics, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_transfers_exact_on_linear, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_shapes_of_both_conventions, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("conv", tests, NULL, NULL);
}
