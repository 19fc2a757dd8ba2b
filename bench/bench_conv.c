/* bench_conv.c — multi-channel 2D 3x3 stride-1 convolutions (padding 1) through the
 * conv op: forward, backward-data (rb_op_vjp) and backward-weight (rb_op_param_grad),
 * float64, no bias. The PyTorch side is bench/conv_torch.py; bench/run_conv.sh runs
 * both, alternating, and writes the table in bench/results_conv.md.
 *
 * Each product counts 2*N*Cout*Cin*9*H*W flops. Each time is the best of --reps runs
 * (after one warm-up call), and of more while the runs have taken less than --min-time
 * seconds (default 1), so that small shapes get many chances on a noisy machine. Prints one JSON object per shape on stdout:
 *   {"impl":"resbridge","shape":[N,Cin,H,W,Cout],"threads":T,"fwd_s":..,"bwd_data_s":..,
 *    "bwd_weight_s":..,"total_s":..,"gflops":..}   (gflops: 3 products / total_s)
 *
 *     bench_conv --threads 2 --shape 16,64,64,64,64 --shape 128,1,28,28,16 --reps 5 --min-time 1
 *
 * Without --shape: the four shapes of the benchmark issue. --reference times the
 * reference loops instead (the op with a NULL arena, so the GEMM path declines).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchkit.h"

#define MAX_SHAPES 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_conv [--threads T] [--shape N,Cin,H,W,Cout]... [--reps R] [--min-time S] [--reference]\n"
            "  3x3 stride-1 conv (padding 1), float64: forward, backward-data, backward-weight.\n"
            "  Default shapes: 16,64,64,64,64 64,16,32,32,16 128,32,28,28,32 128,1,28,28,16.\n");
}

#define TRY(call) BENCH_TRY("bench_conv", call)

static int bench_shape(rb_context *ctx, const size_t sh[5], int threads, int reps, double min_time, int reference)
{
    const size_t N = sh[0], Cin = sh[1], H = sh[2], W = sh[3], Cout = sh[4];
    rb_conv_desc d = rb_conv_desc_default(2, Cin, Cout);
    size_t np = rb_conv_nparams(&d);
    double *params = malloc(np * sizeof *params), *dparams = calloc(np, sizeof *dparams);
    if (params == NULL || dparams == NULL) return 1;
    bench_fill(params, np, 1, 1.0);
    rb_op *op;
    TRY(rb_op_conv_create(ctx, &d, params, &op));
    rb_shape in = rb_shape_2d(N, Cin, H, W), out;
    TRY(rb_op_shape(ctx, op, in, &out));
    rb_tensor x, y, dy, dx;
    TRY(rb_tensor_alloc(ctx, &x, in));
    TRY(rb_tensor_alloc(ctx, &dx, in));
    TRY(rb_tensor_alloc(ctx, &y, out));
    TRY(rb_tensor_alloc(ctx, &dy, out));
    bench_fill(x.data, rb_tensor_count(&x), 2, 1.0);
    bench_fill(dy.data, rb_tensor_count(&dy), 3, 1.0);
    rb_arena arena, *work = NULL;
    rb_arena_measure(&arena);
    size_t ws = rb_op_workspace(op, in);
    if (!reference && ws > 0) {
        TRY(rb_arena_reserve(ctx, &arena, ws));
        work = &arena;
    }
    double best[3] = {1e30, 1e30, 1e30}, start = bench_now();
    for (int r = 0; r <= reps || bench_now() - start < min_time; r++) { /* r = 0: warm-up */
        double t[4];
        t[0] = bench_now();
        TRY(rb_op_apply(ctx, op, &x, &y, work));
        t[1] = bench_now();
        TRY(rb_op_vjp(ctx, op, &x, &dy, 1.0, &dx, work));
        t[2] = bench_now();
        TRY(rb_op_param_grad(ctx, op, &x, &dy, 1.0, dparams, work));
        t[3] = bench_now();
        for (int k = 0; k < 3 && r > 0; k++)
            if (t[k + 1] - t[k] < best[k]) best[k] = t[k + 1] - t[k];
    }
    double flops = 2.0 * (double)N * (double)Cout * (double)Cin * 9.0 * (double)H * (double)W;
    double total = best[0] + best[1] + best[2];
    printf("{\"impl\":\"%s\",\"shape\":[%zu,%zu,%zu,%zu,%zu],\"threads\":%d,\"fwd_s\":%.6g,\"bwd_data_s\":%.6g,"
           "\"bwd_weight_s\":%.6g,\"total_s\":%.6g,\"gflops\":%.2f,\"gflops_fwd\":%.2f,\"gflops_bwd_data\":%.2f,"
           "\"gflops_bwd_weight\":%.2f,\"workspace_bytes\":%zu}\n",
           reference ? "resbridge-reference" : "resbridge", N, Cin, H, W, Cout, threads, best[0], best[1], best[2],
           total, 3.0 * flops / total * 1e-9, flops / best[0] * 1e-9, flops / best[1] * 1e-9,
           flops / best[2] * 1e-9, work != NULL ? ws : (size_t)0);
    fflush(stdout);
    rb_arena_release(ctx, &arena);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &dx);
    rb_tensor_release(ctx, &dy);
    rb_op_free(ctx, op);
    free(params);
    free(dparams);
    return 0;
}

int main(int argc, char **argv)
{
    static const size_t defaults[4][5] = {
        {16, 64, 64, 64, 64}, {64, 16, 32, 32, 16}, {128, 32, 28, 28, 32}, {128, 1, 28, 28, 16}};
    size_t shapes[MAX_SHAPES][5];
    int nshapes = 0, threads = 1, reps = 5, reference = 0;
    double min_time = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (strcmp(a, "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(a, "--min-time") == 0 && i + 1 < argc) {
            min_time = atof(argv[++i]);
        } else if (strcmp(a, "--reference") == 0) {
            reference = 1;
        } else if (strcmp(a, "--shape") == 0 && i + 1 < argc && nshapes < MAX_SHAPES) {
            size_t *s = shapes[nshapes];
            if (sscanf(argv[++i], "%zu,%zu,%zu,%zu,%zu", &s[0], &s[1], &s[2], &s[3], &s[4]) != 5 || !s[0] || !s[1] ||
                !s[2] || !s[3] || !s[4]) {
                fprintf(stderr, "bench_conv: --shape wants N,Cin,H,W,Cout (all >= 1), got '%s'\n", argv[i]);
                return 2;
            }
            nshapes++;
        } else {
            fprintf(stderr, "bench_conv: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (threads < 1 || reps < 1 || !(min_time >= 0.0)) {
        fprintf(stderr, "bench_conv: --threads and --reps must be >= 1, --min-time >= 0\n");
        return 2;
    }
    if (nshapes == 0) {
        memcpy(shapes, defaults, sizeof defaults);
        nshapes = 4;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    if (rb_context_set_threads(ctx, threads) != RB_OK) {
        fprintf(stderr, "bench_conv: %s\n", rb_context_message(ctx));
        return 2;
    }
    int rc = 0;
    for (int s = 0; s < nshapes && rc == 0; s++) rc = bench_shape(ctx, shapes[s], threads, reps, min_time, reference);
    rb_context_free(ctx);
    return rc;
}
