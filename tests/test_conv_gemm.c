/* test_conv_gemm.c — the OpenBLAS GEMM paths of the conv op (src/conv_gemm.c).
 *
 * Oracle: the reference loops rb_conv_gather / rb_conv_scatter / rb_conv_weight_grad
 * (conv_internal.h), called directly on the same geometry. Every case compares
 *   - the op's apply, vjp and param_grad (arena of rb_op_workspace bytes), and
 *   - the three GEMM entries called directly (they must accept the call),
 * with the reference, to 1e-12 relative in the max norm. Shapes: 3x3 and 1x1, stride 1,
 * stride 2 vertex (2k+1) and cell (even, odd), transposed stride 2 in both conventions,
 * bias on/off, N = 1 and 3, channels 1->4, 3->5, 8->8, 16->4, 12->1, rectangular grids,
 * 1 and 2 threads, plus shapes large enough to be cut into several bands.
 * Also: a too-small or NULL arena declines (the reference runs, same result), results
 * are bit-identical run to run, and forward / backward-data do not depend on threads.
 */
#include "testkit.h"
#include "conv_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TOL 1e-12

typedef struct conv_case {
    size_t n, cin, cout, h, w; /* the op's input: (n, cin, 1, h, w) */
    int ksize, stride;
    rb_grid grid;
    bool transposed, bias;
} conv_case;

static double max_rel(const double *a, const double *b, size_t len)
{
    double diff = 0.0, big = 1e-300;
    for (size_t i = 0; i < len; i++) {
        diff = fmax(diff, fabs(a[i] - b[i]));
        big = fmax(big, fabs(b[i]));
    }
    return diff / big;
}

static void fill(rb_test_rng *r, double *p, size_t len)
{
    for (size_t i = 0; i < len; i++) p[i] = rb_test_uniform(r, -1.0, 1.0);
}

static const char *label(const conv_case *c, int threads, char *buf, size_t len)
{
    snprintf(buf, len, "N=%zu %zu->%zu %zux%zu k%d s%d %s%s%s threads %d", c->n, c->cin, c->cout, c->h, c->w,
             c->ksize, c->stride, c->grid == RB_GRID_VERTEX ? "vertex" : "cell", c->transposed ? " transposed" : "",
             c->bias ? " bias" : "", threads);
    return buf;
}

#define EXPECT_CLOSE(what, got, want, len)                                                          \
    do {                                                                                           \
        double e_ = max_rel((got), (want), (len));                                                 \
        if (!(e_ <= TOL)) fail_msg("%s: %s relative error %.3e > %.0e", name, (what), e_, TOL);     \
    } while (0)

static rb_op *make_op(rb_context *ctx, const conv_case *c, rb_test_rng *rng)
{
    rb_conv_desc d = rb_conv_desc_default(2, c->cin, c->cout);
    d.ksize = c->ksize, d.stride = c->stride, d.grid = c->grid, d.transposed = c->transposed, d.bias = c->bias;
    size_t np = rb_conv_nparams(&d);
    double *p = test_malloc(np * sizeof *p);
    fill(rng, p, np);
    rb_op *op;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, p, &op));
    test_free(p);
    return op;
}

/* The op's three products (arena of `arena_bytes`, NULL when SIZE_MAX) against the reference. */
static void check_op(rb_context *ctx, const conv_case *c, rb_op *op, size_t arena_bytes, const char *name)
{
    rb_test_rng rng = {42};
    const rb_conv_state *cs = rb_conv_state_of(op);
    int threads = rb_context_threads(ctx);
    rb_shape in = rb_shape_2d(c->n, c->cin, c->h, c->w), out;
    rb_conv_geom g;
    RB_CHECK(ctx, rb_conv_geometry(ctx, op, in, &g, &out));
    size_t nin = rb_shape_count(in), nout = rb_shape_count(out), nw = c->cin * c->cout * (size_t)cs->ntaps;
    const double *w = op->params, *bias = c->bias ? op->params + nw : NULL;

    rb_arena arena;
    rb_arena_measure(&arena);
    rb_arena *work = NULL;
    if (arena_bytes != SIZE_MAX) {
        RB_CHECK(ctx, rb_arena_reserve(ctx, &arena, arena_bytes > 0 ? arena_bytes : 1));
        arena.cap = arena_bytes;
        work = &arena;
    }
    rb_tensor x, y, dy, dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, out));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, out));
    double *ref = test_malloc((nin > nout ? nin : nout) * sizeof *ref);
    double *dp = test_malloc(op->nparams * sizeof *dp), *dpref = test_malloc(op->nparams * sizeof *dp);
    fill(&rng, x.data, nin);
    fill(&rng, dy.data, nout);

    /* apply: y = F(x) */
    fill(&rng, y.data, nout);
    RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y, work));
    if (c->transposed)
        rb_conv_scatter(threads, cs, &g, w, bias, x.data, 1.0, 0.0, ref);
    else
        rb_conv_gather(threads, cs, &g, w, bias, x.data, 1.0, 0.0, ref);
    EXPECT_CLOSE("apply", y.data, ref, nout);
    assert_int_equal(arena.used, 0);

    /* vjp: dx += 0.7 J^T dy */
    fill(&rng, dx.data, nin);
    memcpy(ref, dx.data, nin * sizeof *ref);
    RB_CHECK(ctx, rb_op_vjp(ctx, op, &x, &dy, 0.7, &dx, work));
    if (c->transposed)
        rb_conv_gather(threads, cs, &g, w, NULL, dy.data, 0.7, 1.0, ref);
    else
        rb_conv_scatter(threads, cs, &g, w, NULL, dy.data, 0.7, 1.0, ref);
    EXPECT_CLOSE("vjp", dx.data, ref, nin);

    /* param_grad: dp += -1.3 dF/dtheta^T dy (weights from the reference loop, bias by hand) */
    fill(&rng, dp, op->nparams);
    memcpy(dpref, dp, op->nparams * sizeof *dp);
    RB_CHECK(ctx, rb_op_param_grad(ctx, op, &x, &dy, -1.3, dp, work));
    rb_conv_weight_grad(threads, cs, &g, c->transposed ? dy.data : x.data, c->transposed ? x.data : dy.data, -1.3,
                        dpref);
    if (c->bias) {
        size_t sp = out.h * out.w;
        for (size_t k = 0; k < c->cout; k++) {
            double acc = 0.0;
            for (size_t n = 0; n < c->n; n++)
                for (size_t i = 0; i < sp; i++) acc += dy.data[(n * c->cout + k) * sp + i];
            dpref[nw + k] += -1.3 * acc;
        }
    }
    EXPECT_CLOSE("param_grad", dp, dpref, op->nparams);

    test_free(ref);
    test_free(dp);
    test_free(dpref);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &dx);
    rb_tensor_release(ctx, &dy);
    if (work != NULL) {
        arena.cap = arena_bytes > 0 ? arena_bytes : 1;
        rb_arena_release(ctx, &arena);
    }
}

/* The three GEMM entries called directly on the op's geometry (fine/coarse terms): they must
 * take the call and agree with the reference loops. */
static void check_entries(rb_context *ctx, const conv_case *c, rb_op *op, const char *name)
{
    rb_test_rng rng = {7};
    const rb_conv_state *cs = rb_conv_state_of(op);
    int threads = rb_context_threads(ctx);
    rb_conv_geom g;
    RB_CHECK(ctx, rb_conv_geometry(ctx, op, rb_shape_2d(c->n, c->cin, c->h, c->w), &g, NULL));
    size_t ws = rb_conv_gemm_workspace(cs, &g);
    assert_true(ws > 0);
    rb_arena arena;
    rb_arena_measure(&arena);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &arena, ws));
    size_t nf = g.n * g.cf * g.fh * g.fw, nc = g.n * g.cc * g.ch * g.cw, nw = g.cf * g.cc * (size_t)cs->ntaps;
    double *fine = test_malloc(nf * sizeof(double)), *coarse = test_malloc(nc * sizeof(double));
    double *ref = test_malloc((nf > nc ? nf : nc) * sizeof(double)), *bias = test_malloc(g.cc * sizeof(double));
    double *dw = test_malloc(nw * sizeof(double)), *dwref = test_malloc(nw * sizeof(double));
    fill(&rng, fine, nf);
    fill(&rng, bias, g.cc);
    const double *w = op->params;

    assert_true(rb_conv_gemm_forward(ctx, cs, &g, w, c->bias ? bias : NULL, fine, coarse, &arena));
    rb_conv_gather(threads, cs, &g, w, c->bias ? bias : NULL, fine, 1.0, 0.0, ref);
    EXPECT_CLOSE("gemm forward", coarse, ref, nc);

    memcpy(ref, fine, nf * sizeof(double));
    assert_true(rb_conv_gemm_backward_data(ctx, cs, &g, w, coarse, -0.6, 1.0, fine, &arena));
    rb_conv_scatter(threads, cs, &g, w, NULL, coarse, -0.6, 1.0, ref);
    EXPECT_CLOSE("gemm backward data", fine, ref, nf);
    /* beta = 0 overwrites: what fine held (NaN here) is never read */
    for (size_t i = 0; i < nf; i++) fine[i] = NAN;
    assert_true(rb_conv_gemm_backward_data(ctx, cs, &g, w, coarse, 0.7, 0.0, fine, &arena));
    rb_conv_scatter(threads, cs, &g, w, NULL, coarse, 0.7, 0.0, ref);
    EXPECT_CLOSE("gemm backward data, beta = 0", fine, ref, nf);
    fill(&rng, fine, nf);

    fill(&rng, dw, nw);
    memcpy(dwref, dw, nw * sizeof(double));
    assert_true(rb_conv_gemm_backward_weight(ctx, cs, &g, fine, coarse, 0.9, dw, &arena));
    rb_conv_weight_grad(threads, cs, &g, fine, coarse, 0.9, dwref);
    EXPECT_CLOSE("gemm backward weight", dw, dwref, nw);
    assert_int_equal(arena.used, 0);
    assert_true(arena.peak <= ws);

    test_free(fine);
    test_free(coarse);
    test_free(ref);
    test_free(bias);
    test_free(dw);
    test_free(dwref);
    rb_arena_release(ctx, &arena);
}

static void run_case(rb_context *ctx, const conv_case *c, int threads, bool fast)
{
    char name[160];
    label(c, threads, name, sizeof name);
    RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
    rb_test_rng rng = {1234 + c->cin * 31 + c->cout};
    rb_op *op = make_op(ctx, c, &rng);
    rb_shape out;
    RB_CHECK(ctx, rb_op_shape(ctx, op, rb_shape_2d(c->n, c->cin, c->h, c->w), &out));
    size_t ws = rb_op_workspace(op, rb_shape_2d(c->n, c->cin, c->h, c->w));
    if (fast && ws == 0) fail_msg("%s: the GEMM path declines this shape", name);
    check_op(ctx, c, op, ws, name);
    if (ws > 0) check_entries(ctx, c, op, name);
    rb_op_free(ctx, op);
}

static const size_t chans[][2] = {{1, 4}, {3, 5}, {8, 8}, {16, 4}, {12, 1}};

/* Geometries of one channel pair: {ksize, stride, grid, transposed, h, w}. */
typedef struct geo { int ksize, stride; rb_grid grid; bool transposed; size_t h, w; } geo;
/* (Big enough that 1 -> 4 channels pass RB_CONV_GEMM_MIN_WORK: the fast path takes them.) */
static const geo geos[] = {
    {3, 1, RB_GRID_VERTEX, false, 7, 10},  /* stride 1, rectangular */
    {1, 1, RB_GRID_VERTEX, false, 17, 16}, /* 1x1 */
    {3, 2, RB_GRID_VERTEX, false, 13, 11}, /* vertex 2k+1 -> k */
    {3, 2, RB_GRID_CELL, false, 12, 10},   /* cell, even */
    {3, 2, RB_GRID_CELL, false, 11, 13},   /* cell, odd */
    {1, 2, RB_GRID_CELL, false, 33, 32},   /* 1x1 stride 2 */
    {3, 2, RB_GRID_VERTEX, true, 6, 5},    /* transposed vertex: k -> 2k+1 */
    {3, 2, RB_GRID_CELL, true, 6, 5},      /* transposed cell: k -> 2k */
    {3, 1, RB_GRID_CELL, true, 5, 6},      /* transposed stride 1 */
};

static void test_small_shapes(void **state)
{
    rb_context *ctx = *state;
    for (size_t ci = 0; ci < sizeof chans / sizeof chans[0]; ci++)
        for (size_t gi = 0; gi < sizeof geos / sizeof geos[0]; gi++)
            for (int bias = 0; bias < 2; bias++)
                for (size_t n = 1; n <= 3; n += 2)
                    for (int threads = 1; threads <= 2; threads++) {
                        const geo *q = &geos[gi];
                        conv_case c = {n, chans[ci][0], chans[ci][1], q->h, q->w, q->ksize, q->stride,
                                       q->grid, q->transposed, bias != 0};
                        run_case(ctx, &c, threads, true);
                    }
}

/* Shapes cut into several bands of rows (uneven last band, col2im in two phases). */
static void test_banded_shapes(void **state)
{
    rb_context *ctx = *state;
    const conv_case cases[] = {
        {2, 32, 8, 64, 61, 3, 1, RB_GRID_VERTEX, false, true},  /* ROWS3, 4 bands */
        {2, 16, 16, 64, 64, 3, 1, RB_GRID_VERTEX, false, false},
        {2, 2, 16, 70, 64, 3, 1, RB_GRID_VERTEX, false, false}, /* PAD weight gradient (2 inputs), col2im */
        {1, 1, 4, 1500, 70, 3, 1, RB_GRID_VERTEX, false, true}, /* PAD, 2 bands */
        {1, 16, 1, 120, 70, 3, 1, RB_GRID_VERTEX, false, true}, /* PAD with many inputs, one output, 2 bands */
        {2, 3, 5, 40, 38, 3, 1, RB_GRID_VERTEX, false, false},  /* ROWS3 with few channels */
        {2, 32, 8, 63, 61, 3, 2, RB_GRID_VERTEX, false, false}, /* IM2COL stride 2, 3 uneven bands */
        {1, 32, 8, 64, 62, 3, 2, RB_GRID_CELL, false, true},
        {1, 32, 8, 63, 62, 1, 2, RB_GRID_CELL, false, false},
        {2, 8, 32, 31, 30, 3, 2, RB_GRID_VERTEX, true, true},   /* transposed: col2im forward */
        {1, 8, 32, 32, 31, 3, 2, RB_GRID_CELL, true, false},
        {2, 64, 32, 40, 36, 1, 1, RB_GRID_VERTEX, false, true}, /* 1x1: no copy */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int threads = 1; threads <= 2; threads++) run_case(ctx, &cases[k], threads, true);
}

/* A too-small or NULL arena makes the fast path decline; the op still gives the reference
 * result, and the context holds no error afterwards. */
static void test_small_arena_declines(void **state)
{
    rb_context *ctx = *state;
    const conv_case cases[] = {
        {2, 16, 16, 16, 16, 3, 1, RB_GRID_VERTEX, false, true},
        {2, 8, 16, 9, 9, 3, 2, RB_GRID_VERTEX, true, false},
    };
    for (size_t k = 0; k < 2; k++) {
        const conv_case *c = &cases[k];
        char name[160];
        label(c, 2, name, sizeof name);
        RB_CHECK(ctx, rb_context_set_threads(ctx, 2));
        rb_test_rng rng = {99};
        rb_op *op = make_op(ctx, c, &rng);
        rb_shape in = rb_shape_2d(c->n, c->cin, c->h, c->w);
        size_t ws = rb_op_workspace(op, in);
        assert_true(ws > 0);
        rb_context_clear_error(ctx);
        check_op(ctx, c, op, ws / 2, name);
        check_op(ctx, c, op, 64, name);
        check_op(ctx, c, op, SIZE_MAX, name); /* NULL arena */
        assert_int_equal(rb_context_last_status(ctx), RB_OK);

        /* The entries decline without touching the output. */
        rb_conv_geom g;
        RB_CHECK(ctx, rb_conv_geometry(ctx, op, in, &g, NULL));
        const rb_conv_state *cs = rb_conv_state_of(op);
        rb_arena small;
        rb_arena_measure(&small);
        RB_CHECK(ctx, rb_arena_reserve(ctx, &small, rb_conv_gemm_workspace(cs, &g) / 4));
        size_t nf = g.n * g.cf * g.fh * g.fw, nc = g.n * g.cc * g.ch * g.cw;
        double *fine = test_calloc(nf, sizeof(double)), *coarse = test_calloc(nc, sizeof(double));
        double *dw = test_calloc(op->nparams, sizeof(double));
        coarse[0] = 5.0, fine[0] = 6.0;
        assert_false(rb_conv_gemm_forward(ctx, cs, &g, op->params, NULL, fine, coarse, &small));
        assert_false(rb_conv_gemm_forward(ctx, cs, &g, op->params, NULL, fine, coarse, NULL));
        assert_false(rb_conv_gemm_backward_data(ctx, cs, &g, op->params, coarse, 1.0, 1.0, fine, &small));
        assert_false(rb_conv_gemm_backward_weight(ctx, cs, &g, fine, coarse, 1.0, dw, &small));
        assert_true(coarse[0] == 5.0 && fine[0] == 6.0 && dw[0] == 0.0);
        assert_int_equal(small.used, 0);
        assert_int_equal(rb_context_last_status(ctx), RB_OK);
        /* A measuring arena counts what the call needs, and declines. */
        rb_arena m;
        rb_arena_measure(&m);
        assert_false(rb_conv_gemm_forward(ctx, cs, &g, op->params, NULL, fine, coarse, &m));
        assert_true(rb_arena_peak(&m) > 0 && rb_arena_peak(&m) <= rb_conv_gemm_workspace(cs, &g));
        test_free(fine);
        test_free(coarse);
        test_free(dw);
        rb_arena_release(ctx, &small);
        rb_op_free(ctx, op);
    }
}

/* The fast path is taken where it should be, and declined where it must be. */
static void test_fast_path_taken(void **state)
{
    rb_context *ctx = *state;
    RB_CHECK(ctx, rb_context_set_threads(ctx, 2));
    rb_test_rng rng = {5};
    conv_case c = {2, 16, 16, 16, 16, 3, 1, RB_GRID_VERTEX, false, false};
    rb_op *op = make_op(ctx, &c, &rng);
    rb_conv_geom g;
    rb_shape in = rb_shape_2d(2, 16, 16, 16);
    RB_CHECK(ctx, rb_conv_geometry(ctx, op, in, &g, NULL));
    const rb_conv_state *cs = rb_conv_state_of(op);
    size_t ws = rb_conv_gemm_workspace(cs, &g);
    assert_true(ws > 0);
    assert_true(rb_op_workspace(op, in) >= ws);
    rb_arena a;
    rb_arena_measure(&a);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &a, ws));
    double *x = test_calloc(2 * 16 * 256, sizeof(double)), *y = test_calloc(2 * 16 * 256, sizeof(double));
    assert_true(rb_conv_gemm_forward(ctx, cs, &g, op->params, NULL, x, y, &a));
    rb_arena_release(ctx, &a);
    test_free(x);
    test_free(y);
    rb_op_free(ctx, op);

    /* 1D, 3D and star stencils are not GEMM shapes. */
    rb_conv_desc d1 = rb_conv_desc_default(1, 16, 16), d3 = rb_conv_desc_default(3, 4, 4);
    rb_conv_desc ds = rb_conv_desc_default(2, 16, 16);
    ds.pattern = RB_STENCIL_STAR;
    rb_op *o1, *o3, *os;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d1, NULL, &o1));
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d3, NULL, &o3));
    RB_CHECK(ctx, rb_op_conv_create(ctx, &ds, NULL, &os));
    assert_int_equal(rb_op_workspace(o1, rb_shape_1d(2, 16, 32)), 0);
    assert_int_equal(rb_op_workspace(o3, rb_shape_3d(2, 4, 8, 8, 8)), 0);
    assert_int_equal(rb_op_workspace(os, rb_shape_2d(2, 16, 8, 8)), 0);
    rb_op_free(ctx, o1);
    rb_op_free(ctx, o3);
    rb_op_free(ctx, os);

    /* A call of a few hundred multiply-adds stays with the reference loop (and is still right). */
    conv_case tiny = {1, 2, 2, 5, 5, 3, 1, RB_GRID_VERTEX, false, false};
    rb_test_rng r2 = {6};
    rb_op *ot = make_op(ctx, &tiny, &r2);
    assert_int_equal(rb_op_workspace(ot, rb_shape_2d(1, 2, 5, 5)), 0);
    rb_op_free(ctx, ot);
    run_case(ctx, &tiny, 1, false);
}

/* Same inputs, same thread count: bit-identical. Forward and backward-data also do not
 * depend on the thread count (each band is one single-threaded GEMM). */
static void test_reproducible(void **state)
{
    rb_context *ctx = *state;
    rb_test_rng rng = {77};
    conv_case c = {3, 16, 8, 40, 33, 3, 1, RB_GRID_VERTEX, false, false};
    rb_op *op = make_op(ctx, &c, &rng);
    rb_shape in = rb_shape_2d(3, 16, 40, 33), out;
    RB_CHECK(ctx, rb_op_shape(ctx, op, in, &out));
    rb_arena a;
    rb_arena_measure(&a);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &a, rb_op_workspace(op, in)));
    rb_tensor x, dy, y[3], dx[3];
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, out));
    fill(&rng, x.data, rb_tensor_count(&x));
    fill(&rng, dy.data, rb_tensor_count(&dy));
    double *dp[3];
    const int threads[3] = {2, 2, 1};
    for (int k = 0; k < 3; k++) {
        RB_CHECK(ctx, rb_context_set_threads(ctx, threads[k]));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y[k], out));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx[k], in));
        dp[k] = test_calloc(op->nparams, sizeof(double));
        RB_CHECK(ctx, rb_op_apply(ctx, op, &x, &y[k], &a));
        RB_CHECK(ctx, rb_op_vjp(ctx, op, &x, &dy, 1.0, &dx[k], &a));
        RB_CHECK(ctx, rb_op_param_grad(ctx, op, &x, &dy, 1.0, dp[k], &a));
    }
    size_t ny = rb_tensor_count(&y[0]), nx = rb_tensor_count(&x);
    assert_memory_equal(y[0].data, y[1].data, ny * sizeof(double));
    assert_memory_equal(dx[0].data, dx[1].data, nx * sizeof(double));
    assert_memory_equal(dp[0], dp[1], op->nparams * sizeof(double));
    assert_memory_equal(y[0].data, y[2].data, ny * sizeof(double));
    assert_memory_equal(dx[0].data, dx[2].data, nx * sizeof(double));
    for (int k = 0; k < 3; k++) {
        rb_tensor_release(ctx, &y[k]);
        rb_tensor_release(ctx, &dx[k]);
        test_free(dp[k]);
    }
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &dy);
    rb_arena_release(ctx, &a);
    rb_op_free(ctx, op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_small_shapes, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_banded_shapes, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_small_arena_declines, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_fast_path_taken, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_reproducible, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
