/* unet_poisson.c — a U-Net (unet.h) that solves: trained on pairs (f, a) -> u from the
 * multigrid solver for -div(a grad u) = f on the unit square (zero Dirichlet values), then
 * compared with that solver on held-out pairs.
 *
 *   data   rb_dataset_poisson (data.h): a = exp(low cosine modes), f = low sine modes, u from
 *          rb_mg_solve to 1e-10; net input 2 channels (f / RB_POISSON_SF, log a), target
 *          u / RB_POISSON_SU; training and held-out pairs are independent draws (the splits).
 *   net    lifting 2 -> C, K cycles of the network-mode V-cycle (C channels, tanh), projection
 *          C -> 1; MSE loss, Adam with a cosine schedule, batches of 16, 1 thread.
 *   then   the relative error |u_net - u| / |u| on the held-out pairs; for each pair, the
 *          V-cycles of the classical solver (RB-GS V(2,1) from u = 0) that reach the net's
 *          error, and the times of both (rb_poisson_baseline; the solver's set-up apart).
 *   (`resbridge train --model unet` runs the same through the trainer, with checkpoints.)
 *
 *     example_unet_poisson [--n 31] [--channels 8] [--cycles 2] [--epochs 20] [--train 512]
 *                          [--test 64] [--lr 0.003] [--threads 1] [--seed 1]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <resbridge/resbridge.h>

#define BATCH 16

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

#define TRY(call)                                                                          \
    do {                                                                                   \
        rb_status st_ = (call);                                                            \
        if (st_ != RB_OK) {                                                                \
            fprintf(stderr, "unet_poisson: %s: %s\n", #call, rb_context_message(ctx));     \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

int main(int argc, char **argv)
{
    const size_t n = (size_t)atol(arg(argc, argv, "--n", "31"));
    const size_t C = (size_t)atol(arg(argc, argv, "--channels", "8"));
    const int K = atoi(arg(argc, argv, "--cycles", "2")), epochs = atoi(arg(argc, argv, "--epochs", "20"));
    const size_t ntrain = (size_t)atol(arg(argc, argv, "--train", "512")) / BATCH * BATCH;
    const size_t ntest = (size_t)atol(arg(argc, argv, "--test", "64")) / BATCH * BATCH;
    const double lr = atof(arg(argc, argv, "--lr", "0.003"));
    const int threads = atoi(arg(argc, argv, "--threads", "1"));
    const unsigned long seed = (unsigned long)atol(arg(argc, argv, "--seed", "1"));
    if (ntrain < BATCH || ntest < BATCH || epochs < 1) {
        fprintf(stderr, "unet_poisson: needs --train, --test >= %d and --epochs >= 1\n", BATCH);
        return 2;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    TRY(rb_context_set_threads(ctx, threads));
    const size_t g = n * n;

    /* ---- data from the solver ---- */
    double t0 = now();
    rb_dataset train, test;
    TRY(rb_dataset_poisson(ctx, n, ntrain, seed, RB_SPLIT_TRAIN, &train));
    TRY(rb_dataset_poisson(ctx, n, ntest, seed, RB_SPLIT_TEST, &test));
    printf("data: %zu training + %zu held-out pairs on %zux%zu, solved to 1e-10 in %.1f s (s_f %.3g, s_u %.3g)\n", ntrain, ntest, n,
           n, now() - t0, RB_POISSON_SF, RB_POISSON_SU);

    /* ---- the net ---- */
    rb_unet_config c = rb_unet_config_default();
    c.n = n, c.levels = 0, c.in_channels = 2, c.channels = C, c.out_channels = 1, c.batch = BATCH, c.cycles = K, c.seed = seed;
    rb_unet *net = NULL;
    TRY(rb_unet_create(ctx, &c, &net));
    c = *rb_unet_config_of(net);
    rb_tensor x, y, dy;
    TRY(rb_tensor_alloc(ctx, &x, rb_unet_in_shape(net)));
    TRY(rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net)));
    TRY(rb_tensor_alloc(ctx, &dy, rb_unet_out_shape(net)));
    double *target = calloc(BATCH * g, sizeof(double));
    if (target == NULL) return 1;
    rb_optimizer_config oc = rb_optimizer_config_default(RB_OPT_ADAM);
    rb_optimizer opt;
    TRY(rb_optimizer_init(ctx, &opt, &oc, rb_unet_nparams(net)));
    const uint64_t steps = (uint64_t)epochs * (ntrain / BATCH);
    rb_lr_schedule sched = {RB_LR_COSINE, lr, steps, 1.0, lr / 100};
    printf("net: 2 -> %zu -> 1 channels, %zu levels, %d V(1,1) cycles, tanh, %zu parameters; Adam lr %g cosine, %d epochs, "
           "%d thread(s)\n", C, c.levels, K, rb_unet_nparams(net), lr, epochs, threads);
    rb_batcher batches;
    TRY(rb_batcher_init(ctx, &batches, &train, BATCH, seed));
    t0 = now();
    uint64_t step = 0;
    for (int e = 0; e < epochs; e++) {
        TRY(rb_batcher_epoch(ctx, &batches, (size_t)e));
        double sum = 0;
        size_t got;
        for (rb_tensor xb = x; rb_batcher_next(ctx, &batches, &xb, NULL, target, &got) == RB_OK && got == BATCH; step++) {
            double loss;
            TRY(rb_unet_forward(ctx, net, &x, &y, true));
            TRY(rb_loss_mse(ctx, &y, target, &loss, &dy));
            rb_unet_zero_grad(net);
            TRY(rb_unet_backward(ctx, net, &dy, NULL));
            TRY(rb_optimizer_step(ctx, &opt, rb_unet_params(net), rb_unet_grad(net), rb_lr_at(&sched, step)));
            sum += loss;
        }
        if (e == 0 || (e + 1) % 5 == 0 || e + 1 == epochs)
            printf("  epoch %3d  train MSE %.3e  (%.0f s)\n", e + 1, sum / (double)(ntrain / BATCH), now() - t0);
    }
    const double train_s = now() - t0;

    /* ---- held-out: the net ---- */
    double *err = calloc(ntest, sizeof(double));
    if (err == NULL) return 1;
    t0 = now();
    for (size_t b = 0; b < ntest; b += BATCH) {
        memcpy(x.data, test.x + b * 2 * g, BATCH * 2 * g * sizeof(double));
        TRY(rb_unet_forward(ctx, net, &x, &y, false));
        for (size_t k = 0; k < BATCH; k++) { /* |u_net - u| / |u|: the same in scaled units */
            const double *yn = y.data + k * g, *yt = test.y + (b + k) * g;
            double d = 0, m = 0;
            for (size_t i = 0; i < g; i++) d += (yn[i] - yt[i]) * (yn[i] - yt[i]), m += yt[i] * yt[i];
            err[b + k] = sqrt(d / m);
        }
    }
    const double net_s = (now() - t0) / (double)ntest;
    double mean = 0, worst = 0;
    for (size_t s = 0; s < ntest; s++) mean += err[s] / (double)ntest, worst = fmax(worst, err[s]);

    /* ---- held-out: the classical solver, cycle by cycle from u = 0 ---- */
    rb_poisson_baseline_report mg;
    TRY(rb_poisson_baseline(ctx, &test, seed, RB_SPLIT_TEST, err, 30, &mg));
    const double per_cycle = mg.cycle_seconds / (double)mg.cycles_total;
    printf("\nheld-out (%zu pairs), n = %zu:\n", ntest, n);
    printf("  U-Net     relative error mean %.3e, max %.3e;  %.3f ms per pair (forward, batches of %d), trained %.0f s\n", mean,
           worst, 1e3 * net_s, BATCH, train_s);
    printf("  RB-GS V(2,1) from u = 0: one cycle reaches %.3e (mean); the net's error per pair after %.2f cycles (mean, "
           "max %d), %.3f ms per cycle -> %.3f ms per pair, + set-up %.3f ms per coefficient field\n",
           mg.err_one_cycle, mg.cycles_mean, mg.cycles_max, 1e3 * per_cycle, 1e3 * per_cycle * mg.cycles_mean,
           1e3 * mg.setup_seconds / (double)ntest);
    printf("{\"n\":%zu,\"channels\":%zu,\"cycles\":%d,\"epochs\":%d,\"train\":%zu,\"test\":%zu,\"train_s\":%.1f,"
           "\"net_rel_err_mean\":%.4e,\"net_rel_err_max\":%.4e,\"net_ms_per_pair\":%.4f,\"mg_cycles_to_match_mean\":%.2f,"
           "\"mg_cycles_to_match_max\":%d,\"mg_err_one_cycle\":%.4e,\"mg_ms_per_cycle\":%.4f,\"mg_setup_ms\":%.4f}\n",
           n, C, K, epochs, ntrain, ntest, train_s, mean, worst, 1e3 * net_s, mg.cycles_mean, mg.cycles_max, mg.err_one_cycle,
           1e3 * per_cycle, 1e3 * mg.setup_seconds / (double)ntest);
    rb_batcher_release(ctx, &batches);
    rb_optimizer_release(ctx, &opt);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_unet_free(ctx, net);
    rb_dataset_release(ctx, &train), rb_dataset_release(ctx, &test);
    free(target), free(err);
    rb_context_free(ctx);
    return 0;
}
