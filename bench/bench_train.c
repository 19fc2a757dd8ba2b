/* bench_train.c — one training step of the nets issue's reference network (the
 * `resbridge train` default: 3x3 conv 1->16 + BN + ReLU, three basic blocks at 16, a
 * stride-2 block to 32 with a 1x1 projection, global average pooling, linear 10;
 * 29,050 parameters), float64, batch B (default 128) of 28x28 images.
 *
 * For each thread count: the taped forward pass (batch norm tracking its statistics,
 * as in training), the loss, the taped backward pass (parameter gradients), and a
 * whole rb_trainer_step (forward, loss, backward, SGD momentum + weight decay). Each
 * time is the best of --reps runs after one warm-up step. Inputs are deterministic
 * pseudo-random pixels in [0, 1) with labels 0..9 (the time does not depend on them).
 * One JSON object per thread count on stdout:
 *   {"impl":"resbridge","batch":128,"threads":T,"params":29050,"fwd_s":..,"bwd_s":..,
 *    "step_s":..,"epoch_s":..,"fwd_cpu_s":..,"bwd_cpu_s":..,"step_cpu_s":..}
 * (epoch_s: step_s * 469, the steps of one Fashion-MNIST epoch; *_cpu_s: the process's CPU
 * time, which on one thread hardly depends on what else the machine runs, and on two
 * threads includes OpenMP's waiting).
 *
 *     bench_train --threads 1 --threads 2 --reps 10 --batch 128
 *
 * The PyTorch side is bench/train_torch.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "resbridge/resbridge.h"

#define MAX_THREADS 8
#define MAX_REPS 1000

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* The least of n times. */
static double best(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_train [--threads T]... [--reps R] [--batch B]\n"
               "  one training step of the reference ResNet (float64), forward and backward timed apart.\n"
               "  Defaults: --threads 1 --threads 2 --reps 10 --batch 128.\n");
}

#define TRY(call)                                                                                   \
    do {                                                                                           \
        rb_status st_ = (call);                                                                    \
        if (st_ != RB_OK) {                                                                        \
            fprintf(stderr, "bench_train: %s: %s\n", #call, rb_context_message(ctx));              \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

static int bench(int threads, int reps, size_t batch)
{
    int rc = 1;
    rb_context *ctx = NULL;
    rb_model *m = NULL;
    rb_trainer tr = {0};
    rb_dataset ds = {0};
    double t_fwd[MAX_REPS] = {0}, t_bwd[MAX_REPS] = {0}, t_step[MAX_REPS] = {0};
    double c_fwd[MAX_REPS] = {0}, c_bwd[MAX_REPS] = {0}, c_step[MAX_REPS] = {0};
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    rb_model_desc d = rb_model_desc_default(RB_MODEL_RESNET);
    TRY(rb_context_set_threads(ctx, threads));
    TRY(rb_model_create(ctx, &d, &m));
    /* a data set of exactly one batch, for the trainer's buffers */
    ds = (rb_dataset){.count = batch, .sample = m->sample, .classes = d.outputs};
    const size_t per = rb_shape_count(m->sample);
    ds.x = malloc(batch * per * sizeof(double));
    ds.labels = malloc(batch * sizeof(int32_t));
    if (ds.x == NULL || ds.labels == NULL) goto done;
    unsigned long long seed = 12345;
    for (size_t i = 0; i < batch * per; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        ds.x[i] = (double)(seed >> 11) * 0x1.0p-53;
    }
    for (size_t i = 0; i < batch; i++) ds.labels[i] = (int32_t)(i % d.outputs);
    rb_trainer_config cfg = rb_trainer_config_default();
    cfg.batch = batch;
    cfg.schedule = RB_LR_CONSTANT; /* the cosine schedule over a one-batch data set would reach lr 0 */
    TRY(rb_trainer_init(ctx, &tr, m, &cfg, &ds));
    rb_tensor x = {.shape = m->sample, .data = ds.x, .owns = false};
    x.shape.n = batch;
    const size_t np = m->net->nparams;
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        double loss, t0 = now(), u0 = cpu();
        TRY(rb_model_set_mode(ctx, m, RB_BN_TRAIN_TRACK));
        TRY(rb_op_forward(ctx, m->net, &x, &tr.out, tr.tape, &tr.work));
        TRY(rb_model_set_mode(ctx, m, RB_BN_TRAIN));
        double t1 = now(), u1 = cpu();
        TRY(rb_loss_softmax_xent(ctx, &tr.out, ds.labels, &loss, &tr.dout, NULL));
        memset(tr.grad, 0, np * sizeof(double));
        double t2 = now(), u2 = cpu();
        TRY(rb_op_backward(ctx, m->net, &x, &tr.out, tr.tape, &tr.dout, 1.0, NULL, tr.grad, &tr.work));
        double t3 = now(), u3 = cpu();
        TRY(rb_trainer_step(ctx, &tr, &x, ds.labels, NULL, &loss, NULL));
        double t4 = now(), u4 = cpu();
        if (r >= 0) {
            t_fwd[r] = t1 - t0, t_bwd[r] = t3 - t2, t_step[r] = t4 - t3;
            c_fwd[r] = u1 - u0, c_bwd[r] = u3 - u2, c_step[r] = u4 - u3;
        }
    }
    double step = best(t_step, reps);
    printf("{\"impl\":\"resbridge\",\"batch\":%zu,\"threads\":%d,\"params\":%zu,\"fwd_s\":%.5f,\"bwd_s\":%.5f,"
           "\"step_s\":%.5f,\"epoch_s\":%.2f,\"fwd_cpu_s\":%.5f,\"bwd_cpu_s\":%.5f,\"step_cpu_s\":%.5f}\n",
           batch, threads, np, best(t_fwd, reps), best(t_bwd, reps), step, step * (double)((60000 + batch - 1) / batch),
           best(c_fwd, reps), best(c_bwd, reps), best(c_step, reps));
    fflush(stdout);
    rc = 0;
done:
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    free(ds.x);
    free(ds.labels);
    rb_context_free(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    int threads[MAX_THREADS], nthreads = 0, reps = 10;
    size_t batch = 128;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--threads") == 0 && v && nthreads < MAX_THREADS) {
            threads[nthreads++] = atoi(v), i++;
        } else if (strcmp(a, "--reps") == 0 && v) {
            reps = atoi(v), i++;
        } else if (strcmp(a, "--batch") == 0 && v) {
            batch = (size_t)strtoul(v, NULL, 10), i++;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (nthreads == 0) threads[nthreads++] = 1, threads[nthreads++] = 2;
    if (reps < 1 || reps > MAX_REPS || batch < 2) {
        usage(stderr);
        return 2;
    }
    for (int k = 0; k < nthreads; k++)
        if (threads[k] < 1 || bench(threads[k], reps, batch) != 0) return 1;
    return 0;
}
