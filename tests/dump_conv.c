/* dump_conv.c — writes conv cases for the PyTorch cross-check (peer_torch_conv.py).
 *
 *     dump_conv <output directory>
 *
 * For every case: a conv op with random parameters, random x and dy; then
 * y = apply(x), dx = vjp(x, dy) (alpha 1, into zeros), dparams = param_grad
 * (alpha 1, into zeros). Each array goes to <dir>/<case>.<what>.npy with what
 * in {x, params, y, dy, dx, dparams}, and <dir>/manifest.txt gets one line per
 * case:
 *
 *     <case> dims=2 cin=3 cout=4 ksize=3 pattern=full stride=2 grid=cell transposed=0 bias=1
 *
 * Not a test by itself: tests/peer_torch_conv.sh runs it and the Python side.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testkit.h"

typedef enum kind { K_S1, K_CELL, K_VERTEX, K_T_S1, K_T_CELL, K_T_VERTEX, K_COUNT } kind;
static const char *const kind_names[K_COUNT] = {"s1", "cell", "vertex", "t_s1", "t_cell", "t_vertex"};

typedef struct conv_case {
    char name[96];
    rb_conv_desc desc;
    rb_shape in;
} conv_case;

#define MAX_CASES 256
static conv_case g_cases[MAX_CASES];
static int g_ncases;

/* Add a case: dims-D, channels, kernel, kind, bias, batch and input extents (d, h, w; inactive = 1). */
static void add(int dims, size_t cin, size_t cout, int ksize, rb_stencil pattern, kind k, bool bias, size_t n,
                size_t d, size_t h, size_t w)
{
    if (g_ncases >= MAX_CASES) {
        fprintf(stderr, "dump_conv: too many cases\n");
        exit(1);
    }
    conv_case *c = &g_cases[g_ncases++];
    c->desc = rb_conv_desc_default(dims, cin, cout);
    c->desc.ksize = ksize;
    c->desc.pattern = pattern;
    c->desc.stride = (k == K_S1 || k == K_T_S1) ? 1 : 2;
    c->desc.grid = (k == K_CELL || k == K_T_CELL) ? RB_GRID_CELL : RB_GRID_VERTEX;
    c->desc.transposed = k >= K_T_S1;
    c->desc.bias = bias;
    c->in = rb_shape_3d(n, cin, d, h, w);
    char ext[48];
    if (dims == 1) snprintf(ext, sizeof ext, "%zu", w);
    else if (dims == 2) snprintf(ext, sizeof ext, "%zux%zu", h, w);
    else snprintf(ext, sizeof ext, "%zux%zux%zu", d, h, w);
    snprintf(c->name, sizeof c->name, "c%02d_%dd_c%zu-%zu_k%d%s_%s_b%d_%s", g_ncases, dims, cin, cout, ksize,
             pattern == RB_STENCIL_STAR ? "star" : "", kind_names[k], bias ? 1 : 0, ext);
}

/* Default input extent per kind: what the convention needs (vertex stride 2: 2k+1). */
static size_t default_extent(kind k)
{
    switch (k) {
    case K_S1: case K_T_S1: return 7;
    case K_CELL: return 8;
    case K_VERTEX: return 9;
    default: return 4; /* transposed stride 2: the coarse grid */
    }
}

static void make_cases(void)
{
    const rb_stencil F = RB_STENCIL_FULL, S = RB_STENCIL_STAR;
    /* 2D, N=2, Cin=3, Cout=4: every kind, 3x3 and 1x1, with and without bias, square. */
    for (int ks = 3; ks >= 1; ks -= 2)
        for (int k = 0; k < K_COUNT; k++)
            for (int b = 0; b <= 1; b++) {
                size_t e = default_extent((kind)k);
                add(2, 3, 4, ks, F, (kind)k, b, 2, 1, e, e);
            }
    /* odd extents on the cell grid (n -> ceil(n/2)), and rectangles */
    for (int ks = 3; ks >= 1; ks -= 2) {
        bool b = ks == 3;
        add(2, 3, 4, ks, F, K_CELL, b, 2, 1, 7, 7);
        add(2, 3, 4, ks, F, K_S1, b, 2, 1, 5, 8);
        add(2, 3, 4, ks, F, K_CELL, b, 2, 1, 8, 6);
        add(2, 3, 4, ks, F, K_CELL, b, 2, 1, 7, 4);
        add(2, 3, 4, ks, F, K_VERTEX, b, 2, 1, 7, 11);
        add(2, 3, 4, ks, F, K_T_S1, b, 2, 1, 5, 8);
        add(2, 3, 4, ks, F, K_T_CELL, b, 2, 1, 3, 5);
        add(2, 3, 4, ks, F, K_T_VERTEX, b, 2, 1, 3, 5);
    }
    /* 2D 5-point star, multi-channel */
    add(2, 3, 4, 3, S, K_S1, true, 2, 1, 7, 7);
    add(2, 3, 4, 3, S, K_VERTEX, true, 2, 1, 9, 7);
    add(2, 3, 4, 3, S, K_T_VERTEX, true, 2, 1, 4, 3);
    add(2, 3, 4, 3, S, K_CELL, false, 2, 1, 8, 8);
    /* 2D single-channel stride-1 stencils (the grid-kernel fast path), larger grids */
    add(2, 1, 1, 3, F, K_S1, false, 1, 1, 33, 33);
    add(2, 1, 1, 3, S, K_S1, false, 1, 1, 33, 33);
    add(2, 1, 1, 3, F, K_S1, false, 2, 1, 17, 20);
    add(2, 1, 1, 3, S, K_S1, true, 2, 1, 20, 17);
    add(2, 1, 1, 3, F, K_VERTEX, false, 1, 1, 33, 33);
    add(2, 1, 1, 3, F, K_T_VERTEX, false, 1, 1, 16, 16);
    /* 2D wider channels (where a GEMM path would take over) */
    add(2, 16, 8, 3, F, K_S1, true, 2, 1, 12, 12);
    add(2, 16, 8, 3, F, K_CELL, true, 2, 1, 12, 12);
    add(2, 16, 8, 3, F, K_T_CELL, false, 2, 1, 6, 6);
    add(2, 8, 16, 1, F, K_S1, true, 2, 1, 12, 12);

    /* 1D (conv1d): single channel 3-point, every kind */
    for (int k = 0; k < K_COUNT; k++) {
        size_t e = default_extent((kind)k);
        add(1, 1, 1, 3, F, (kind)k, false, 2, 1, 1, e);
    }
    add(1, 1, 1, 3, S, K_S1, false, 2, 1, 1, 9);
    add(1, 1, 1, 3, F, K_S1, true, 2, 1, 1, 9);
    add(1, 1, 1, 3, F, K_T_VERTEX, true, 2, 1, 1, 4);
    add(1, 1, 1, 3, F, K_VERTEX, false, 1, 1, 1, 31);
    add(1, 1, 1, 1, F, K_S1, false, 2, 1, 1, 9);
    add(1, 1, 1, 1, F, K_VERTEX, false, 2, 1, 1, 9);
    add(1, 1, 1, 1, F, K_T_VERTEX, true, 2, 1, 1, 4);
    add(1, 3, 2, 3, F, K_S1, true, 2, 1, 1, 9);
    add(1, 3, 2, 3, F, K_VERTEX, true, 2, 1, 1, 11);
    add(1, 3, 2, 3, F, K_T_VERTEX, true, 2, 1, 1, 5);
    add(1, 3, 2, 3, F, K_CELL, false, 2, 1, 1, 9);

    /* 3D (conv3d): single channel, 7-point star and 27-point full, every kind */
    for (int p = 0; p < 2; p++) {
        rb_stencil pat = p ? S : F;
        add(3, 1, 1, 3, pat, K_S1, false, 2, 5, 6, 7);
        add(3, 1, 1, 3, pat, K_VERTEX, false, 2, 7, 5, 9);
        add(3, 1, 1, 3, pat, K_T_VERTEX, false, 2, 3, 2, 4);
        add(3, 1, 1, 3, pat, K_CELL, false, 2, 6, 5, 4);
        add(3, 1, 1, 3, pat, K_T_CELL, false, 2, 3, 3, 2);
        add(3, 1, 1, 3, pat, K_T_S1, false, 2, 4, 5, 3);
    }
    add(3, 1, 1, 3, F, K_S1, true, 1, 5, 5, 5);
    add(3, 1, 1, 3, S, K_T_VERTEX, true, 1, 3, 3, 3);
    add(3, 1, 1, 3, S, K_VERTEX, false, 1, 9, 9, 9);
    add(3, 1, 1, 1, F, K_VERTEX, false, 2, 5, 7, 3);
    add(3, 1, 1, 1, F, K_T_VERTEX, true, 2, 2, 3, 1);
    add(3, 2, 3, 3, F, K_S1, true, 2, 4, 5, 6);
    add(3, 2, 3, 3, F, K_VERTEX, true, 2, 5, 7, 5);
    add(3, 2, 3, 3, S, K_T_VERTEX, true, 2, 2, 3, 2);
    add(3, 2, 3, 3, F, K_T_CELL, false, 2, 2, 3, 2);
}

static int write_arr(rb_context *ctx, const char *dir, const char *name, const char *what, const rb_tensor *t)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
    rb_status st = rb_npy_write(ctx, path, t);
    if (st != RB_OK) {
        fprintf(stderr, "dump_conv: %s\n", rb_context_message(ctx));
        return 1;
    }
    return 0;
}

static int run_case(rb_context *ctx, const char *dir, const conv_case *c, uint64_t seed, FILE *manifest)
{
    const rb_conv_desc *d = &c->desc;
    rb_test_rng rng = {seed};
    size_t np = rb_conv_nparams(d);
    rb_op *op = NULL;
    rb_tensor params = {{0}, NULL, false}, x = params, y = params, dy = params, dx = params, dp = params;
    rb_arena arena = {0};
    rb_arena *work = NULL;
    int bad = 1;
    rb_shape out;
#define TRY(call)                                                                                       \
    do {                                                                                                \
        rb_status st_ = (call);                                                                         \
        if (st_ != RB_OK) {                                                                             \
            fprintf(stderr, "dump_conv: %s: %s -> %s: %s\n", c->name, #call, rb_status_name(st_),     \
                    rb_context_message(ctx));                                                           \
            goto done;                                                                                  \
        }                                                                                               \
    } while (0)
    TRY(rb_tensor_alloc(ctx, &params, rb_shape_vec(np)));
    rb_test_fill(&rng, &params, -1.0, 1.0);
    TRY(rb_op_conv_create(ctx, d, params.data, &op));
    TRY(rb_op_shape(ctx, op, c->in, &out));
    TRY(rb_tensor_alloc(ctx, &x, c->in));
    TRY(rb_tensor_alloc(ctx, &y, out));
    TRY(rb_tensor_alloc(ctx, &dy, out));
    TRY(rb_tensor_alloc(ctx, &dx, c->in));
    TRY(rb_tensor_alloc(ctx, &dp, rb_shape_vec(np)));
    rb_test_fill(&rng, &x, -1.0, 1.0);
    rb_test_fill(&rng, &dy, -1.0, 1.0);
    size_t ws = rb_op_workspace(op, c->in);
    if (ws > 0) {
        TRY(rb_arena_reserve(ctx, &arena, ws));
        work = &arena;
    }
    TRY(rb_op_apply(ctx, op, &x, &y, work));
    TRY(rb_op_vjp(ctx, op, &x, &dy, 1.0, &dx, work));
    TRY(rb_op_param_grad(ctx, op, &x, &dy, 1.0, dp.data, work));
#undef TRY
    if (write_arr(ctx, dir, c->name, "x", &x) || write_arr(ctx, dir, c->name, "params", &params) ||
        write_arr(ctx, dir, c->name, "y", &y) || write_arr(ctx, dir, c->name, "dy", &dy) ||
        write_arr(ctx, dir, c->name, "dx", &dx) || write_arr(ctx, dir, c->name, "dparams", &dp))
        goto done;
    fprintf(manifest, "%s dims=%d cin=%zu cout=%zu ksize=%d pattern=%s stride=%d grid=%s transposed=%d bias=%d\n",
            c->name, d->dims, d->cin, d->cout, d->ksize, d->pattern == RB_STENCIL_STAR ? "star" : "full", d->stride,
            d->grid == RB_GRID_CELL ? "cell" : "vertex", d->transposed ? 1 : 0, d->bias ? 1 : 0);
    bad = 0;
done:
    rb_op_free(ctx, op);
    if (work != NULL) rb_arena_release(ctx, &arena);
    rb_tensor_release(ctx, &params);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &dy);
    rb_tensor_release(ctx, &dx);
    rb_tensor_release(ctx, &dp);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: dump_conv <output directory>\n"
                        "Writes conv cases (x, params, y, dy, dx, dparams as .npy) and manifest.txt\n"
                        "for the PyTorch cross-check tests/peer_torch_conv.py.\n");
        return argc == 2 ? 0 : 2;
    }
    const char *dir = argv[1];
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) {
        fprintf(stderr, "dump_conv: cannot create a context\n");
        return 1;
    }
    make_cases();
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/manifest.txt", dir);
    FILE *manifest = fopen(mpath, "w");
    if (manifest == NULL) {
        perror(mpath);
        rb_context_free(ctx);
        return 1;
    }
    int failed = 0;
    for (int i = 0; i < g_ncases; i++) failed += run_case(ctx, dir, &g_cases[i], 1000 + (uint64_t)i, manifest);
    if (fclose(manifest) != 0) {
        perror(mpath);
        failed++;
    }
    rb_context_free(ctx);
    fprintf(stderr, "dump_conv: wrote %d cases to %s%s\n", g_ncases - failed, dir, failed ? " (with failures)" : "");
    return failed ? 1 : 0;
}
