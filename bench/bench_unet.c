/* bench_unet.c — a training step's work of the U-Net (unet.h): forward (taped), MSE loss,
 * backward (every parameter and the input gradient), float64. The PyTorch side is
 * bench/unet_torch.py (the same network, tests/peer_torch_unet.py's); bench/run_unet.sh runs
 * both alternating and prints the ratio.
 *
 * Each time is the best of --reps steps (after one warm-up) and of more while the steps have
 * taken less than --min-time seconds. Prints one JSON object:
 *   {"impl":"resbridge","threads":T,"config":"n,levels,cin,C,cout,N,cycles","fwd_s":..,"bwd_s":..,"total_s":..}
 *
 *     bench_unet --threads 1 --n 63 --levels 5 --channels 16 --batch 8 --cycles 2 --reps 5 --min-time 2
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchkit.h"

#define TRY(call) BENCH_TRY("bench_unet", call)

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        printf("usage: bench_unet [--threads T] [--n 63] [--levels 5] [--in 2] [--channels 16] [--out 1] [--batch 8]\n"
               "                  [--cycles 2] [--reps 5] [--min-time 1]\n");
        return 0;
    }
    rb_unet_config c = rb_unet_config_default();
    c.n = (size_t)atol(arg(argc, argv, "--n", "63"));
    c.levels = (size_t)atol(arg(argc, argv, "--levels", "5"));
    c.in_channels = (size_t)atol(arg(argc, argv, "--in", "2"));
    c.channels = (size_t)atol(arg(argc, argv, "--channels", "16"));
    c.out_channels = (size_t)atol(arg(argc, argv, "--out", "1"));
    c.batch = (size_t)atol(arg(argc, argv, "--batch", "8"));
    c.cycles = atoi(arg(argc, argv, "--cycles", "2"));
    const int threads = atoi(arg(argc, argv, "--threads", "1")), reps = atoi(arg(argc, argv, "--reps", "5"));
    const double min_time = atof(arg(argc, argv, "--min-time", "1"));
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    TRY(rb_context_set_threads(ctx, threads));
    rb_unet *net = NULL;
    TRY(rb_unet_create(ctx, &c, &net));
    rb_tensor x, dx, y, dy;
    TRY(rb_tensor_alloc(ctx, &x, rb_unet_in_shape(net)));
    TRY(rb_tensor_alloc(ctx, &dx, rb_unet_in_shape(net)));
    TRY(rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net)));
    TRY(rb_tensor_alloc(ctx, &dy, rb_unet_out_shape(net)));
    double *target = malloc(rb_tensor_count(&y) * sizeof(double)), loss;
    if (target == NULL) return 1;
    bench_fill(x.data, rb_tensor_count(&x), 2, 1.0);
    bench_fill(target, rb_tensor_count(&y), 3, 1.0);
    double best[2] = {1e30, 1e30}, start = bench_now();
    for (int r = 0; r <= reps || bench_now() - start < min_time; r++) { /* r = 0: warm-up */
        double t0 = bench_now();
        TRY(rb_unet_forward(ctx, net, &x, &y, true));
        TRY(rb_loss_mse(ctx, &y, target, &loss, &dy));
        double t1 = bench_now();
        rb_unet_zero_grad(net);
        TRY(rb_unet_backward(ctx, net, &dy, &dx));
        double t2 = bench_now();
        if (r > 0 && t1 - t0 < best[0]) best[0] = t1 - t0;
        if (r > 0 && t2 - t1 < best[1]) best[1] = t2 - t1;
    }
    printf("{\"impl\":\"resbridge\",\"threads\":%d,\"config\":\"%zu,%zu,%zu,%zu,%zu,%zu,%d\",\"params\":%zu,\"fwd_s\":%.6g,"
           "\"bwd_s\":%.6g,\"total_s\":%.6g}\n",
           threads, c.n, c.levels, c.in_channels, c.channels, c.out_channels, c.batch, c.cycles, rb_unet_nparams(net), best[0],
           best[1], best[0] + best[1]);
    free(target);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &dx), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_unet_free(ctx, net);
    rb_context_free(ctx);
    return 0;
}
