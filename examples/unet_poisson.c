/* unet_poisson.c — a U-Net (unet.h) that solves: trained on pairs (f, a) -> u from the
 * multigrid solver for -div(a grad u) = f on the unit square (zero Dirichlet values), then
 * compared with that solver on held-out pairs.
 *
 *   data   a = exp(sum_{k,l<=1} c_kl cos(k pi x) cos(l pi y)), c_kl ~ U(-1/2, 1/2) (smooth,
 *          variable, 0.14 <= a <= 7.4); f = sum_{k,l=1..3} d_kl sin(k pi x) sin(l pi y),
 *          d_kl ~ U(-1, 1); u = rb_mg_solve (RB-GS V(2,1), the Galerkin hierarchy of a) to a
 *          relative residual of 1e-10. Net input: 2 channels (f / s_f, log a), output u / s_u
 *          (s_f, s_u: RMS over the training set).
 *   net    lifting 2 -> C, K cycles of the network-mode V-cycle (C channels, tanh), projection
 *          C -> 1; MSE loss, Adam with a cosine schedule, batches of 16, 1 thread.
 *   then   the relative error |u_net - u| / |u| on the held-out pairs; for each pair, the
 *          V-cycles of the classical solver (RB-GS V(2,1) from u = 0) that reach the net's
 *          error, and the times of both (the solver's set-up per coefficient field apart).
 *
 *     example_unet_poisson [--n 31] [--channels 8] [--cycles 2] [--epochs 20] [--train 512]
 *                          [--test 64] [--lr 0.003] [--threads 1] [--seed 1]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gsl/gsl_rng.h>
#include <resbridge/resbridge.h>

#define BATCH 16

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct sample {
    double *f, *loga, *u; /* n^2 each (interior points) */
    double *coef;         /* (n+2)^2 point values of a, with the boundary */
} sample;

/* One random pair: a and f from low modes, u from the solver. */
static rb_status make_sample(rb_context *ctx, size_t n, gsl_rng *rng, sample *s)
{
    const double pi = acos(-1.0), h = 1.0 / (double)(n + 1);
    double c[2][2], d[3][3];
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < 2; l++) c[k][l] = gsl_rng_uniform(rng) - 0.5;
    for (int k = 0; k < 3; k++)
        for (int l = 0; l < 3; l++) d[k][l] = 2 * gsl_rng_uniform(rng) - 1;
    const size_t m = n + 2;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) {
            double y = (double)i * h, x = (double)j * h, e = 0, g = 0;
            for (int k = 0; k < 2; k++)
                for (int l = 0; l < 2; l++) e += c[k][l] * cos(k * pi * x) * cos(l * pi * y);
            s->coef[i * m + j] = exp(e);
            if (i == 0 || j == 0 || i == m - 1 || j == m - 1) continue;
            for (int k = 0; k < 3; k++)
                for (int l = 0; l < 3; l++) g += d[k][l] * sin((k + 1) * pi * x) * sin((l + 1) * pi * y);
            s->f[(i - 1) * n + (j - 1)] = g, s->loga[(i - 1) * n + (j - 1)] = e;
        }
    rb_mg_problem pb = {2, n, s->coef, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    rb_mg *mg = NULL;
    rb_tensor f, u;
    rb_status st = rb_mg_create(ctx, &pb, &o, &mg);
    if (st == RB_OK) st = rb_tensor_view(ctx, &f, s->f, rb_shape_2d(1, 1, n, n));
    if (st == RB_OK) st = rb_tensor_view(ctx, &u, s->u, rb_shape_2d(1, 1, n, n));
    if (st == RB_OK) memset(s->u, 0, n * n * sizeof(double)), st = rb_mg_solve(ctx, mg, &f, &u, 1e-10, 50, NULL);
    rb_mg_free(ctx, mg);
    return st;
}

static double rel_err(const double *a, const double *b, size_t len)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < len; i++) d += (a[i] - b[i]) * (a[i] - b[i]), m += b[i] * b[i];
    return sqrt(d / m);
}

/* x (BATCH, 2, n, n) and the target (BATCH, 1, n, n) of samples idx[0..BATCH) */
static void load_batch(const sample *set, const size_t *idx, size_t n, double sf, double su, rb_tensor *x, double *t)
{
    const size_t g = n * n;
    for (size_t b = 0; b < BATCH; b++) {
        const sample *s = &set[idx[b]];
        for (size_t i = 0; i < g; i++) {
            x->data[(2 * b) * g + i] = s->f[i] / sf;
            x->data[(2 * b + 1) * g + i] = s->loga[i];
            if (t != NULL) t[b * g + i] = s->u[i] / su;
        }
    }
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
    const size_t g = n * n, total = ntrain + ntest;

    /* ---- data from the solver ---- */
    double t0 = now();
    sample *set = calloc(total, sizeof *set);
    double *mem = calloc(total * (3 * g + (n + 2) * (n + 2)), sizeof(double));
    if (set == NULL || mem == NULL) return 1;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, seed);
    for (size_t s = 0; s < total; s++) {
        double *p = mem + s * (3 * g + (n + 2) * (n + 2));
        set[s] = (sample){p, p + g, p + 2 * g, p + 3 * g};
        TRY(make_sample(ctx, n, rng, &set[s]));
    }
    double sf = 0, su = 0;
    for (size_t s = 0; s < ntrain; s++)
        for (size_t i = 0; i < g; i++) sf += set[s].f[i] * set[s].f[i], su += set[s].u[i] * set[s].u[i];
    sf = sqrt(sf / (double)(ntrain * g)), su = sqrt(su / (double)(ntrain * g));
    printf("data: %zu training + %zu held-out pairs on %zux%zu, solved to 1e-10 in %.1f s (s_f %.3g, s_u %.3g)\n", ntrain, ntest, n,
           n, now() - t0, sf, su);

    /* ---- the net ---- */
    rb_unet_config c = rb_unet_config_default();
    c.n = n, c.in_channels = 2, c.channels = C, c.out_channels = 1, c.batch = BATCH, c.cycles = K, c.seed = seed;
    c.levels = 1;
    for (size_t m = n; m % 2 == 1 && (m - 1) / 2 >= 3; m = (m - 1) / 2) c.levels++;
    rb_unet *net = NULL;
    TRY(rb_unet_create(ctx, &c, &net));
    rb_tensor x, y, dy;
    TRY(rb_tensor_alloc(ctx, &x, rb_unet_in_shape(net)));
    TRY(rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net)));
    TRY(rb_tensor_alloc(ctx, &dy, rb_unet_out_shape(net)));
    double *target = calloc(BATCH * g, sizeof(double));
    size_t *order = calloc(ntrain, sizeof(size_t)), idx[BATCH];
    if (target == NULL || order == NULL) return 1;
    for (size_t i = 0; i < ntrain; i++) order[i] = i;
    rb_optimizer_config oc = rb_optimizer_config_default(RB_OPT_ADAM);
    rb_optimizer opt;
    TRY(rb_optimizer_init(ctx, &opt, &oc, rb_unet_nparams(net)));
    const uint64_t steps = (uint64_t)epochs * (ntrain / BATCH);
    rb_lr_schedule sched = {RB_LR_COSINE, lr, steps, 1.0, lr / 100};
    printf("net: 2 -> %zu -> 1 channels, %zu levels, %d V(1,1) cycles, tanh, %zu parameters; Adam lr %g cosine, %d epochs, "
           "%d thread(s)\n", C, c.levels, K, rb_unet_nparams(net), lr, epochs, threads);
    t0 = now();
    uint64_t step = 0;
    for (int e = 0; e < epochs; e++) {
        for (size_t i = ntrain - 1; i > 0; i--) { /* shuffle */
            size_t j = gsl_rng_uniform_int(rng, i + 1), t = order[i];
            order[i] = order[j], order[j] = t;
        }
        double sum = 0;
        for (size_t b = 0; b + BATCH <= ntrain; b += BATCH, step++) {
            load_batch(set, order + b, n, sf, su, &x, target);
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
    double *unet = calloc(ntest * g, sizeof(double)), *err = calloc(ntest, sizeof(double));
    if (unet == NULL || err == NULL) return 1;
    t0 = now();
    for (size_t b = 0; b < ntest; b += BATCH) {
        for (size_t k = 0; k < BATCH; k++) idx[k] = ntrain + b + k;
        load_batch(set, idx, n, sf, su, &x, NULL);
        TRY(rb_unet_forward(ctx, net, &x, &y, false));
        for (size_t i = 0; i < BATCH * g; i++) unet[b * g + i] = su * y.data[i];
    }
    const double net_s = (now() - t0) / (double)ntest;
    double mean = 0, worst = 0;
    for (size_t s = 0; s < ntest; s++) {
        err[s] = rel_err(unet + s * g, set[ntrain + s].u, g);
        mean += err[s] / (double)ntest, worst = fmax(worst, err[s]);
    }

    /* ---- held-out: the classical solver, cycle by cycle from u = 0 ---- */
    double setup_s = 0, cycle_s = 0, cycles_mean = 0;
    int cycles_max = 0, ncycles = 0;
    double err1 = 0; /* error after one cycle (mean) */
    for (size_t s = 0; s < ntest; s++) {
        const sample *p = &set[ntrain + s];
        rb_mg_problem pb = {2, n, p->coef, 1.0};
        rb_mg_options o = rb_mg_options_default(2);
        rb_mg *mg = NULL;
        double ts = now();
        TRY(rb_mg_create(ctx, &pb, &o, &mg));
        setup_s += now() - ts;
        const rb_vcycle *vc = rb_mg_vcycle(mg);
        rb_arena work = {0};
        TRY(rb_arena_reserve(ctx, &work, rb_vcycle_workspace(vc) + 4096));
        memcpy(vc->level[0].f.data, p->f, g * sizeof(double));
        memset(vc->level[0].u.data, 0, g * sizeof(double));
        int k = 0;
        double e = INFINITY;
        while (k < 30 && e > err[s]) {
            ts = now();
            TRY(rb_vcycle_run(ctx, vc, 0, &work));
            cycle_s += now() - ts, ncycles++;
            e = rel_err(vc->level[0].u.data, p->u, g), k++;
            if (k == 1) err1 += e / (double)ntest;
        }
        cycles_mean += k / (double)ntest, cycles_max = k > cycles_max ? k : cycles_max;
        rb_arena_release(ctx, &work);
        rb_mg_free(ctx, mg);
    }
    const double per_cycle = cycle_s / ncycles;
    printf("\nheld-out (%zu pairs), n = %zu:\n", ntest, n);
    printf("  U-Net     relative error mean %.3e, max %.3e;  %.3f ms per pair (forward, batches of %d), trained %.0f s\n", mean,
           worst, 1e3 * net_s, BATCH, train_s);
    printf("  RB-GS V(2,1) from u = 0: one cycle reaches %.3e (mean); the net's error per pair after %.2f cycles (mean, "
           "max %d), %.3f ms per cycle -> %.3f ms per pair, + set-up %.3f ms per coefficient field\n",
           err1, cycles_mean, cycles_max, 1e3 * per_cycle, 1e3 * per_cycle * cycles_mean, 1e3 * setup_s / (double)ntest);
    printf("{\"n\":%zu,\"channels\":%zu,\"cycles\":%d,\"epochs\":%d,\"train\":%zu,\"test\":%zu,\"train_s\":%.1f,"
           "\"net_rel_err_mean\":%.4e,\"net_rel_err_max\":%.4e,\"net_ms_per_pair\":%.4f,\"mg_cycles_to_match_mean\":%.2f,"
           "\"mg_cycles_to_match_max\":%d,\"mg_err_one_cycle\":%.4e,\"mg_ms_per_cycle\":%.4f,\"mg_setup_ms\":%.4f}\n",
           n, C, K, epochs, ntrain, ntest, train_s, mean, worst, 1e3 * net_s, cycles_mean, cycles_max, err1, 1e3 * per_cycle,
           1e3 * setup_s / (double)ntest);
    rb_optimizer_release(ctx, &opt);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_unet_free(ctx, net);
    gsl_rng_free(rng);
    free(set), free(mem), free(target), free(order), free(unet), free(err);
    rb_context_free(ctx);
    return 0;
}
