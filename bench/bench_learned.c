/* bench_learned.c — the learned-smoother cycle as a solver: time to ||f - A u|| <= 1e-8 ||f||
 * for -Delta u = 1 on the unit square (zero Dirichlet values, zero initial guess, the problem
 * of bench_poisson and bench_hypre), against the fixed damped-Jacobi cycle of the same network
 * mode, the same Jacobi cycle in MG mode (fused kernels) and the MG solver's default RB-GS V(2,1).
 *
 * The smoothers are learned on --train-n (levels ending on the same coarsest grid) and reused
 * on --n without retraining. One JSON line per solver (best of --reps solves):
 *
 *     bench_learned --n 1023 --train-n 127 --steps 300 --threads 1
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchkit.h"

static const char *prog = "bench_learned";

static size_t levels_to(size_t n, size_t coarse)
{
    size_t l = 1;
    while (n > coarse && n % 2 == 1) n = (n - 1) / 2, l++;
    return n == coarse ? l : 0;
}

static rb_status poisson_net(rb_context *ctx, size_t n, size_t levels, size_t batch, rb_vnet **out)
{
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = levels, c.batch = batch;
    rb_status st = rb_vnet_create(ctx, &c, out);
    if (st == RB_OK) st = rb_vnet_set_poisson(ctx, *out, 0.8);
    return st;
}

typedef rb_status (*solve_fn)(rb_context *ctx, void *solver, const rb_tensor *f, rb_tensor *u, rb_mg_report *rep);
static rb_status net_solve(rb_context *ctx, void *s, const rb_tensor *f, rb_tensor *u, rb_mg_report *rep)
{
    return rb_vnet_solve(ctx, s, f, u, 1e-8, 200, rep);
}
static rb_status net_pcg(rb_context *ctx, void *s, const rb_tensor *f, rb_tensor *u, rb_mg_report *rep)
{
    return rb_vnet_pcg(ctx, s, f, u, 1e-8, 200, rep);
}
static rb_status mg_solve(rb_context *ctx, void *s, const rb_tensor *f, rb_tensor *u, rb_mg_report *rep)
{
    return rb_mg_solve(ctx, s, f, u, 1e-8, 200, rep);
}

static int run(rb_context *ctx, const char *name, solve_fn fn, void *solver, const rb_tensor *f, rb_tensor *u, int reps,
               size_t n, int threads, const char *extra)
{
    double best = INFINITY;
    rb_mg_report rep = {0};
    for (int r = 0; r < reps; r++) {
        memset(u->data, 0, rb_tensor_count(u) * sizeof(double));
        double t0 = bench_now();
        BENCH_TRY(prog, fn(ctx, solver, f, u, &rep));
        double t = bench_now() - t0;
        best = t < best ? t : best;
    }
    printf("{\"bench\":\"learned\",\"solver\":\"%s\",\"n\":%zu,\"threads\":%d,\"cycles\":%d,\"rel_residual\":%.3e,"
           "\"convergence_factor\":%.4f,\"seconds_solve\":%.6f%s}\n",
           name, n, threads, rep.cycles, rep.rel_residual, rep.convergence_factor, best, extra);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 1023, train_n = 127, train_levels = 5, coarse = 7;
    int steps = 300, reps = 3, threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v != NULL && !strcmp(a, "--n")) n = strtoul(v, NULL, 10), i++;
        else if (v != NULL && !strcmp(a, "--train-n")) train_n = strtoul(v, NULL, 10), i++;
        else if (v != NULL && !strcmp(a, "--steps")) steps = atoi(v), i++;
        else if (v != NULL && !strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (v != NULL && !strcmp(a, "--threads")) threads = atoi(v), i++;
        else {
            fprintf(stderr, "usage: %s [--n N] [--train-n N] [--steps S] [--reps R] [--threads T]\n", prog);
            return 2;
        }
    }
    train_levels = levels_to(train_n, coarse);
    const size_t levels = levels_to(n, coarse);
    if (train_levels < 2 || levels < 2 || steps < 1 || reps < 1 || threads < 1) {
        fprintf(stderr, "%s: n and train-n must coarsen to %zu (n = 2^k 8 - 1)\n", prog, coarse);
        return 2;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    BENCH_TRY(prog, rb_context_set_threads(ctx, threads));
    /* learn (on the training grid, batch 4), then reuse on n */
    rb_vnet *train = NULL, *learned = NULL, *jacobi = NULL;
    BENCH_TRY(prog, poisson_net(ctx, train_n, train_levels, 4, &train));
    rb_learn_config lc = rb_learn_config_default();
    lc.steps = steps;
    rb_learn_report lr;
    BENCH_TRY(prog, rb_learn_smoother(ctx, train, &lc, &lr));
    BENCH_TRY(prog, poisson_net(ctx, n, levels, 1, &learned));
    BENCH_TRY(prog, poisson_net(ctx, n, levels, 1, &jacobi));
    BENCH_TRY(prog, rb_vnet_copy_smoothers(ctx, train, learned));
    rb_mg_problem pb = {2, n, NULL, 1.0};
    rb_mg_options jo = rb_mg_options_default(2), go = rb_mg_options_default(2);
    jo.smoother = RB_SMOOTHER_JACOBI, jo.omega = 0.8, jo.pre = 1, jo.post = 1, jo.coarse_max = coarse;
    go.coarse_max = coarse;
    rb_mg *mg_jacobi = NULL, *mg_rbgs = NULL;
    BENCH_TRY(prog, rb_mg_create(ctx, &pb, &jo, &mg_jacobi));
    BENCH_TRY(prog, rb_mg_create(ctx, &pb, &go, &mg_rbgs));
    rb_tensor f, u;
    BENCH_TRY(prog, rb_tensor_alloc(ctx, &f, rb_vnet_shape(learned, 0)));
    BENCH_TRY(prog, rb_tensor_alloc(ctx, &u, rb_vnet_shape(learned, 0)));
    for (size_t i = 0; i < rb_tensor_count(&f); i++) f.data[i] = 1.0;
    char train_info[256];
    snprintf(train_info, sizeof train_info, ",\"train_n\":%zu,\"train_steps\":%d,\"train_seconds\":%.1f,\"train_loss\":%.4f", train_n,
             lr.steps, lr.seconds, lr.loss_last);
    int rc = run(ctx, "net learned V(1,1)", net_solve, learned, &f, &u, reps, n, threads, train_info);
    if (rc == 0) rc = run(ctx, "net learned V(1,1) + CG", net_pcg, learned, &f, &u, reps, n, threads, train_info);
    if (rc == 0) rc = run(ctx, "net Jacobi V(1,1)", net_solve, jacobi, &f, &u, reps, n, threads, "");
    if (rc == 0) rc = run(ctx, "mg Jacobi V(1,1)", mg_solve, mg_jacobi, &f, &u, reps, n, threads, "");
    if (rc == 0) rc = run(ctx, "mg rbgs V(2,1)", mg_solve, mg_rbgs, &f, &u, reps, n, threads, "");
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg_jacobi), rb_mg_free(ctx, mg_rbgs);
    rb_vnet_free(ctx, train), rb_vnet_free(ctx, learned), rb_vnet_free(ctx, jacobi);
    rb_context_free(ctx);
    return rc;
}
