/* bench_ode.c — a neural ODE stack, F(x) = tanh(W x + b) with D x D weights, integrated by
 * rb_ode_integrate over t in [0, 1] with L fixed steps (Euler: a ResNet of L layers; RK4
 * optionally), float64. The PyTorch side is bench/ode_torch.py; bench/run_ode.sh runs both,
 * alternating, and prints the tables of bench/RESULTS.md section 4.
 *
 * Timed (each the best of --reps runs after one warm-up, and of more while the runs have
 * taken less than --min-time seconds):
 *   fwd_s        rb_ode_integrate without a tape (inference)
 *   fwdbwd_s     rb_ode_integrate with a full tape (every = 1) + rb_ode_backward
 *   fwdbwd_ckpt_s  the same with checkpoints every ceil(sqrt(L)) steps (every = 0)
 * rb_ode_backward returns dL/dx0 and dL/d(W, b) for dL/dx(T) = a fixed random dy.
 * One JSON object per (method, batch) on stdout:
 *   {"impl":"resbridge","method":"euler","D":256,"L":1000,"batch":N,"threads":T,"fwd_s":..,
 *    "fwdbwd_s":..,"fwdbwd_ckpt_s":..,"peak_full_bytes":..,"peak_ckpt_bytes":..}
 *
 * --mem-layers L2 adds, per method, for the batch --mem-batch (default 1), the memory
 * comparison at L2 layers: tape peak bytes (tape.peak_bytes, forward and backward) with
 * every = 1 against every = 0, the time of one run of each, and whether the two gradients
 * are bit-identical ("kind":"memory"; exit status 3 if they are not).
 *
 * --dump DIR writes, per batch, the inputs (W, b, x0, dy) and resbridge's outputs (xT, dx0, dW,
 * db) as .npy files, for bench/ode_torch.py to check against and to time with the same weights.
 *
 *     bench_ode --threads 2 --batch 1 --batch 64 --method euler --mem-layers 10000 --dump /tmp/ode
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchkit.h"

#define MAX_LIST 8

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_ode [--threads T] [--dim D] [--layers L] [--batch N]... [--method euler|rk4]...\n"
               "                 [--reps R] [--min-time S] [--mem-layers L2] [--mem-batch N] [--dump DIR]\n"
               "  F(x) = tanh(W x + b), D x D, L steps over [0, 1], float64. Defaults: D = 256, L = 1000,\n"
               "  batches 1 and 64, method euler, no memory run, no dump.\n");
}

#define TRY(call) BENCH_TRY("bench_ode", call)

typedef struct problem {
    size_t D, N, L;
    const rb_ode_method *method;
    rb_op *F;
    rb_tensor x0, xT, dy, dx0;
    double *dtheta;
} problem;

/* Forward (tape every = `every`, or no tape if every < 0) and, with a tape, the backward
 * into p->dx0 and p->dtheta (zeroed first). *peak: the tape's peak bytes. */
static rb_status run(rb_context *ctx, problem *p, size_t L, long every, size_t *peak)
{
    if (every < 0) return rb_ode_integrate(ctx, p->method, p->F, 0.0, 1.0, L, &p->x0, &p->xT, NULL, NULL);
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, (size_t)every);
    memset(p->dx0.data, 0, rb_tensor_count(&p->dx0) * sizeof(double));
    memset(p->dtheta, 0, p->F->nparams * sizeof(double));
    rb_status st = rb_ode_integrate(ctx, p->method, p->F, 0.0, 1.0, L, &p->x0, &p->xT, NULL, &tape);
    if (st == RB_OK) st = rb_ode_backward(ctx, &tape, p->F, &p->dy, &p->dx0, p->dtheta);
    if (peak) *peak = tape.peak_bytes;
    rb_ode_tape_release(ctx, &tape);
    return st;
}

/* Best time of run(every) over reps (after a warm-up) and min_time. */
static rb_status best_time(rb_context *ctx, problem *p, size_t L, long every, int reps, double min_time, double *best,
                           size_t *peak)
{
    *best = 1e30;
    double start = bench_now();
    for (int r = 0; r <= reps || bench_now() - start < min_time; r++) {
        double t0 = bench_now();
        rb_status st = run(ctx, p, L, every, peak);
        if (st != RB_OK) return st;
        double t = bench_now() - t0;
        if (r > 0 && t < *best) *best = t;
    }
    return RB_OK;
}

/* DIR/[method_]name[_N<batch>].npy */
static int write_npy(rb_context *ctx, const char *dir, const char *method, const char *name, size_t N,
                     const double *data, rb_shape shape)
{
    char path[4096], batch[32] = "";
    if (N) snprintf(batch, sizeof batch, "_N%zu", N);
    snprintf(path, sizeof path, "%s/%s%s%s%s.npy", dir, method ? method : "", method ? "_" : "", name, batch);
    rb_tensor t = {shape, (double *)data, false};
    TRY(rb_npy_write(ctx, path, &t));
    return 0;
}

/* The inputs and resbridge's full-tape results for ode_torch.py. */
static int dump(rb_context *ctx, problem *p, const char *dir)
{
    size_t D = p->D, N = p->N;
    const double *W = p->F->params;
    TRY(run(ctx, p, p->L, 1, NULL));
    const char *m = p->method->name;
    int rc = write_npy(ctx, dir, NULL, "W", 0, W, rb_shape_2d(1, 1, D, D));
    if (!rc) rc = write_npy(ctx, dir, NULL, "b", 0, W + D * D, rb_shape_vec(D));
    if (!rc) rc = write_npy(ctx, dir, NULL, "x0", N, p->x0.data, p->x0.shape);
    if (!rc) rc = write_npy(ctx, dir, NULL, "dy", N, p->dy.data, p->dy.shape);
    if (!rc) rc = write_npy(ctx, dir, m, "xT", N, p->xT.data, p->xT.shape);
    if (!rc) rc = write_npy(ctx, dir, m, "dx0", N, p->dx0.data, p->dx0.shape);
    if (!rc) rc = write_npy(ctx, dir, m, "dW", N, p->dtheta, rb_shape_2d(1, 1, D, D));
    if (!rc) rc = write_npy(ctx, dir, m, "db", N, p->dtheta + D * D, rb_shape_vec(D));
    return rc;
}

/* Full tape against checkpoints at `L` layers: memory, time and bit-identity of the gradients. */
static int memory(rb_context *ctx, problem *p, size_t L, int threads)
{
    size_t n = rb_tensor_count(&p->dx0), np = p->F->nparams, peak[2];
    double t[2], *keep = malloc((n + np) * sizeof(double));
    if (keep == NULL) return 1;
    for (int k = 0; k < 2; k++) {
        long every = k == 0 ? 1 : 0;
        double t0 = bench_now(); /* one run: L2 layers take long */
        TRY(run(ctx, p, L, every, &peak[k]));
        t[k] = bench_now() - t0;
        if (k == 0) {
            memcpy(keep, p->dx0.data, n * sizeof(double));
            memcpy(keep + n, p->dtheta, np * sizeof(double));
        }
    }
    int same = memcmp(keep, p->dx0.data, n * sizeof(double)) == 0 && memcmp(keep + n, p->dtheta, np * sizeof(double)) == 0;
    printf("{\"impl\":\"resbridge\",\"kind\":\"memory\",\"method\":\"%s\",\"D\":%zu,\"L\":%zu,\"batch\":%zu,"
           "\"threads\":%d,\"stride_ckpt\":%zu,\"peak_full_bytes\":%zu,\"peak_ckpt_bytes\":%zu,\"fwdbwd_s\":%.6g,"
           "\"fwdbwd_ckpt_s\":%.6g,\"bit_identical\":%s}\n",
           p->method->name, p->D, L, p->N, threads, (size_t)ceil(sqrt((double)L)), peak[0], peak[1], t[0], t[1],
           same ? "true" : "false");
    fflush(stdout);
    free(keep);
    return same ? 0 : 3;
}

static int bench(rb_context *ctx, const rb_ode_method *method, size_t D, size_t N, size_t L, int threads, int reps,
                 double min_time, size_t mem_layers, size_t mem_batch, const char *dir)
{
    problem p = {.D = D, .N = N, .L = L, .method = method};
    double *params = malloc((D * D + D) * sizeof(double));
    if (params == NULL) return 1;
    /* weights of scale 1/sqrt(D): the stack neither saturates tanh nor blows up */
    bench_fill(params, D * D, 1, 1.0 / sqrt((double)D));
    bench_fill(params + D * D, D, 2, 0.1);
    TRY(rb_op_ode_neural_create(ctx, D, RB_ACT_TANH, 1, 1.0, params, &p.F));
    free(params);
    rb_shape s = rb_shape_1d(N, 1, D);
    TRY(rb_tensor_alloc(ctx, &p.x0, s));
    TRY(rb_tensor_alloc(ctx, &p.xT, s));
    TRY(rb_tensor_alloc(ctx, &p.dy, s));
    TRY(rb_tensor_alloc(ctx, &p.dx0, s));
    p.dtheta = malloc(p.F->nparams * sizeof(double));
    if (p.dtheta == NULL) return 1;
    bench_fill(p.x0.data, N * D, 3, 1.0);
    bench_fill(p.dy.data, N * D, 4, 1.0);

    int rc = dir ? dump(ctx, &p, dir) : 0;
    double t[3] = {0, 0, 0};
    size_t peak[3] = {0, 0, 0};
    for (int k = 0; k < 3 && rc == 0; k++) TRY(best_time(ctx, &p, L, k == 0 ? -1 : k == 1 ? 1 : 0, reps, min_time, &t[k], &peak[k]));
    if (rc == 0) {
        printf("{\"impl\":\"resbridge\",\"kind\":\"time\",\"method\":\"%s\",\"D\":%zu,\"L\":%zu,\"batch\":%zu,"
               "\"threads\":%d,\"fwd_s\":%.6g,\"fwdbwd_s\":%.6g,\"fwdbwd_ckpt_s\":%.6g,\"peak_full_bytes\":%zu,"
               "\"peak_ckpt_bytes\":%zu}\n",
               method->name, D, L, N, threads, t[0], t[1], t[2], peak[1], peak[2]);
        fflush(stdout);
    }
    if (rc == 0 && mem_layers > 0 && N == mem_batch) rc = memory(ctx, &p, mem_layers, threads);
    rb_tensor_release(ctx, &p.x0);
    rb_tensor_release(ctx, &p.xT);
    rb_tensor_release(ctx, &p.dy);
    rb_tensor_release(ctx, &p.dx0);
    free(p.dtheta);
    rb_op_free(ctx, p.F);
    return rc;
}

int main(int argc, char **argv)
{
    size_t batches[MAX_LIST], D = 256, L = 1000, mem_layers = 0, mem_batch = 1;
    const char *methods[MAX_LIST], *dir = NULL;
    int nb = 0, nm = 0, threads = 1, reps = 3;
    double min_time = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--threads") == 0 && more) {
            threads = atoi(argv[++i]);
        } else if (strcmp(a, "--dim") == 0 && more) {
            D = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--layers") == 0 && more) {
            L = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--mem-layers") == 0 && more) {
            mem_layers = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--mem-batch") == 0 && more) {
            mem_batch = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--batch") == 0 && more && nb < MAX_LIST) {
            batches[nb++] = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--method") == 0 && more && nm < MAX_LIST) {
            methods[nm++] = argv[++i];
        } else if (strcmp(a, "--reps") == 0 && more) {
            reps = atoi(argv[++i]);
        } else if (strcmp(a, "--min-time") == 0 && more) {
            min_time = atof(argv[++i]);
        } else if (strcmp(a, "--dump") == 0 && more) {
            dir = argv[++i];
        } else {
            fprintf(stderr, "bench_ode: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (nb == 0) batches[nb++] = 1, batches[nb++] = 64;
    if (nm == 0) methods[nm++] = "euler";
    int bad = threads < 1 || reps < 1 || !(min_time >= 0.0) || D == 0 || L == 0;
    for (int i = 0; i < nb; i++) bad |= batches[i] == 0;
    if (bad) {
        fprintf(stderr, "bench_ode: --threads, --reps, --dim, --layers and --batch must be >= 1, --min-time >= 0\n");
        return 2;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    int rc = rb_context_set_threads(ctx, threads) == RB_OK ? 0 : 2;
    for (int m = 0; m < nm && rc == 0; m++) {
        const rb_ode_method *method;
        if (rb_ode_method_parse(ctx, methods[m], &method) != RB_OK) {
            rc = 2;
            break;
        }
        for (int b = 0; b < nb && rc == 0; b++)
            rc = bench(ctx, method, D, batches[b], L, threads, reps, min_time, mem_layers, mem_batch, dir);
    }
    if (rc == 2) fprintf(stderr, "bench_ode: %s\n", rb_context_message(ctx));
    rb_context_free(ctx);
    return rc;
}
