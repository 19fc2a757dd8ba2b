/* learn_smoother.c — `resbridge learn-smoother`: multigrid smoothers trained by
 * backpropagation through the network-mode V-cycle, measured against damped Jacobi
 * on the same problem in the same run, then reused on larger grids without retraining. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: resbridge learn-smoother [--n N] [--levels L] [--cycles K] [--steps S] [--batch B] [--lr X]\n"
            "         [--omega W] [--coef const|jump|smooth] [--eval-n N1,N2,...] [--save FILE] [--seed S] [--threads T]\n"
            "         [--json]\n\n"
            "Trains the 3x3 smoother of every level of the 2D Poisson V(1,1)-cycle (u <- u + B (f - A u),\n"
            "B point-symmetric, in units of D^{-1}) by Adam through K cycles from u = 0 on B random right-hand\n"
            "sides per step, starting from damped Jacobi (omega). Reports the asymptotic convergence factor of\n"
            "the learned cycle and of the damped-Jacobi cycle, measured the same way in the same run, on n and\n"
            "on the --eval-n grids (same coarsest grid, more levels) with the weights reused as they are.\n"
            "  --save  write the learned weights (rb_vnet_save; const only): `resbridge vcycle --mode net --weights FILE\n"
            "          --any-size` runs them on any grid\n"
            "  --coef  const: -Laplace; jump: -div(a grad u) with a = 1e4 on the quadrant x, y > 1/2 and 1 elsewhere;\n"
            "          smooth: a = 1 + 0.5 sin(2 pi x) sin(2 pi y). Variable coefficients run the cycle on the\n"
            "          multigrid solver's operators (Galerkin coarse levels) with point-dependent smoother stencils\n"
            "          D^{-1/2} theta D^{-1/2}; theta (dimensionless, point-symmetric) is what is learned and reused.\n"
            "Defaults: --n 127 --levels 5 --cycles 6 --steps 400 --batch 4 --lr 0.01 --omega 0.8\n"
            "          --eval-n 255,511,1023 --seed 1\n"
            "Exit status: 0 done, 1 the learned cycle does not converge, 2 bad usage or error.\n");
}

#define MAX_EVAL 8

static const char *const coef_names[] = {"const", "jump", "smooth", NULL};

typedef struct opts {
    long n, levels, cycles, steps, batch, seed, threads;
    double lr, omega;
    int json, neval, coef;
    const char *save;
    long eval_n[MAX_EVAL];
} opts;

static bool parse_list(rb_args *a, const char *opt, opts *o)
{
    const char *v = rb_args_value(a, opt);
    if (v == NULL) return false;
    o->neval = 0;
    if (!strcmp(v, "none")) return true;
    while (*v) {
        char *end;
        long x = strtol(v, &end, 10);
        if (end == v || x < 3 || x > (1L << 14) || o->neval == MAX_EVAL || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "%s: %s wants up to %d grid sizes like 255,511 (or none), got '%s'\n", a->cmd, opt, MAX_EVAL, v);
            a->failed = true;
            return false;
        }
        o->eval_n[o->neval++] = x;
        v = *end ? end + 1 : end;
    }
    return true;
}

static int parse(int argc, char **argv, opts *o)
{
    rb_args a;
    rb_args_init(&a, argc, argv, "resbridge learn-smoother");
    const char *opt;
    while ((opt = rb_args_next(&a)) != NULL) {
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(opt, "--n")) {
            rb_args_long(&a, opt, 3, 1L << 14, &o->n);
        } else if (!strcmp(opt, "--levels")) {
            rb_args_long(&a, opt, 2, 16, &o->levels);
        } else if (!strcmp(opt, "--cycles")) {
            rb_args_long(&a, opt, 1, 32, &o->cycles);
        } else if (!strcmp(opt, "--steps")) {
            rb_args_long(&a, opt, 1, 1L << 20, &o->steps);
        } else if (!strcmp(opt, "--batch")) {
            rb_args_long(&a, opt, 1, 1024, &o->batch);
        } else if (!strcmp(opt, "--lr")) {
            rb_args_double(&a, opt, 1e-12, 10, &o->lr);
        } else if (!strcmp(opt, "--omega")) {
            rb_args_double(&a, opt, 1e-6, 2, &o->omega);
        } else if (!strcmp(opt, "--eval-n")) {
            parse_list(&a, opt, o);
        } else if (!strcmp(opt, "--save")) {
            o->save = rb_args_value(&a, opt);
        } else if (!strcmp(opt, "--coef")) {
            rb_args_choice(&a, opt, coef_names, &o->coef);
        } else if (!strcmp(opt, "--seed")) {
            rb_args_long(&a, opt, 0, 1L << 40, &o->seed);
        } else if (!strcmp(opt, "--threads")) {
            rb_args_long(&a, opt, 1, 1024, &o->threads);
        } else if (!strcmp(opt, "--json")) {
            o->json = 1;
        } else {
            rb_args_unknown(&a, opt);
        }
    }
    if (!a.failed && o->save != NULL && o->coef != 0) {
        fprintf(stderr, "resbridge learn-smoother: --save holds nets on their own stencils: use it with --coef const\n");
        return 2;
    }
    return a.failed ? 2 : -1;
}

static int fail(rb_context *ctx, rb_status st)
{
    fprintf(stderr, "resbridge learn-smoother: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    return 2;
}

/* A 2D C = 1 net on n (levels ending on the coarsest grid), batch b, damped Jacobi: Poisson's
 * weights for const, else the multigrid solver's operators for the coefficient field (kept in *mg). */
static rb_status problem_net(rb_context *ctx, size_t n, size_t levels, size_t batch, const opts *o, rb_vnet **net, rb_mg **mg)
{
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = levels, c.batch = batch;
    *net = NULL, *mg = NULL;
    rb_status st = rb_vnet_create(ctx, &c, net);
    if (st != RB_OK || o->coef == 0) return st == RB_OK ? rb_vnet_set_poisson(ctx, *net, o->omega) : st;
    double *a = rb_cli_coefficients(2, n, o->coef);
    if (a == NULL) return rb_fail(ctx, RB_ENOMEM, "out of memory for the coefficients");
    rb_mg_problem pb = {2, n, a, 1.0};
    rb_mg_options mo = rb_mg_options_default(2);
    mo.coarse_max = rb_vnet_shape(*net, levels - 1).w;
    st = rb_mg_create(ctx, &pb, &mo, mg);
    free(a);
    if (st == RB_OK) st = rb_vnet_use_mg_operators(ctx, *net, *mg, o->omega);
    return st;
}

/* Levels for grid n that end on the same coarsest size as (n0, levels0). */
static size_t levels_for(size_t n, size_t n0, size_t levels0)
{
    size_t coarse = n0;
    for (size_t l = 1; l < levels0; l++) coarse = (coarse - 1) / 2;
    size_t levels = 1;
    while (n > coarse && n % 2 == 1) n = (n - 1) / 2, levels++;
    return n == coarse ? levels : 0;
}

typedef struct eval_row {
    size_t n, levels;
    double learned, jacobi;
} eval_row;

/* Both factors on grid n: the learned weights copied from `trained`, damped Jacobi as set. */
static rb_status evaluate(rb_context *ctx, const rb_vnet *trained, size_t n, size_t levels, const opts *o, eval_row *row)
{
    rb_vnet *jac = NULL, *lrn = NULL;
    rb_mg *mj = NULL, *ml = NULL;
    rb_status st = problem_net(ctx, n, levels, 1, o, &jac, &mj);
    if (st == RB_OK) st = problem_net(ctx, n, levels, 1, o, &lrn, &ml);
    if (st == RB_OK) st = rb_vnet_copy_smoothers(ctx, trained, lrn);
    *row = (eval_row){n, levels, NAN, NAN};
    if (st == RB_OK) st = rb_vnet_measure_factor(ctx, jac, (unsigned long)o->seed + 1000, 100, &row->jacobi);
    if (st == RB_OK) st = rb_vnet_measure_factor(ctx, lrn, (unsigned long)o->seed + 1000, 100, &row->learned);
    rb_vnet_free(ctx, jac), rb_vnet_free(ctx, lrn);
    rb_mg_free(ctx, mj), rb_mg_free(ctx, ml);
    return st;
}

int rb_cli_learn_smoother(int argc, char **argv)
{
    opts o = {.n = 127, .levels = 5, .cycles = 6, .steps = 400, .batch = 4, .seed = 1, .lr = 0.01, .omega = 0.8,
              .neval = 3, .eval_n = {255, 511, 1023}};
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    rb_status st = o.threads ? rb_context_set_threads(ctx, (int)o.threads) : RB_OK;
    rb_vnet *net = NULL;
    rb_mg *mg = NULL;
    if (st == RB_OK) st = problem_net(ctx, (size_t)o.n, (size_t)o.levels, (size_t)o.batch, &o, &net, &mg);
    rb_learn_config lc = rb_learn_config_default();
    lc.cycles = (int)o.cycles, lc.steps = (int)o.steps, lc.lr = o.lr, lc.seed = (unsigned long)o.seed;
    rb_learn_report rep = {0};
    if (st == RB_OK) st = rb_learn_smoother(ctx, net, &lc, &rep);
    if (st == RB_OK && o.save != NULL) st = rb_vnet_save(ctx, net, o.save);
    if (st != RB_OK) {
        rc = fail(ctx, st);
        rb_vnet_free(ctx, net);
        rb_mg_free(ctx, mg);
        rb_context_free(ctx);
        return rc;
    }
    eval_row rows[1 + MAX_EVAL];
    int nrows = 0;
    rb_status conv = RB_OK;
    for (int i = -1; i < o.neval && st == RB_OK; i++) {
        size_t n = i < 0 ? (size_t)o.n : (size_t)o.eval_n[i];
        size_t levels = levels_for(n, (size_t)o.n, (size_t)o.levels);
        if (levels == 0) {
            fprintf(stderr, "resbridge learn-smoother: --eval-n %zu does not coarsen to the training grid's coarsest level\n", n);
            st = RB_EINVAL;
            break;
        }
        st = evaluate(ctx, net, n, levels, &o, &rows[nrows]);
        if (st == RB_EDIVERGED) conv = st, st = RB_OK;
        nrows++;
    }
    if (st != RB_OK) {
        rc = st == RB_EINVAL ? 2 : fail(ctx, st);
        rb_vnet_free(ctx, net);
        rb_mg_free(ctx, mg);
        rb_context_free(ctx);
        return rc;
    }
    const eval_row *r0 = &rows[0];
    if (o.json) {
        printf("{\"coef\":\"%s\",\"n\":%ld,\"levels\":%ld,\"cycles\":%ld,\"steps\":%d,\"batch\":%ld,\"loss_first\":%.6g,"
               "\"loss_last\":%.6g,\"seconds_train\":%.3f,\"convergence_factor_learned\":%.6g,\"convergence_factor_jacobi\":%.6g,"
               "\"reduction\":%.4f,\"larger\":[",
               coef_names[o.coef], o.n, o.levels, o.cycles, rep.steps, o.batch, rep.loss_first, rep.loss_last,
               rep.seconds, r0->learned, r0->jacobi, 1 - r0->learned / r0->jacobi);
        for (int i = 1; i < nrows; i++)
            printf("%s{\"n\":%zu,\"levels\":%zu,\"convergence_factor_learned\":%.6g,\"convergence_factor_jacobi\":%.6g}",
                   i > 1 ? "," : "", rows[i].n, rows[i].levels, rows[i].learned, rows[i].jacobi);
        printf("]}\n");
    } else {
        printf("coefficient %s; learned smoother: %d Adam steps through %ld cycles (batch %ld) in %.1f s; loss %.4f -> %.4f\n", coef_names[o.coef], rep.steps,
               o.cycles, o.batch, rep.seconds, rep.loss_first, rep.loss_last);
        printf("%8s %7s %14s %14s %10s\n", "n", "levels", "factor learned", "factor Jacobi", "reduction");
        for (int i = 0; i < nrows; i++)
            printf("%8zu %7zu %14.4f %14.4f %9.1f%%%s\n", rows[i].n, rows[i].levels, rows[i].learned, rows[i].jacobi,
                   100 * (1 - rows[i].learned / rows[i].jacobi), i == 0 ? "  (trained here)" : "");
    }
    if (conv != RB_OK) fprintf(stderr, "resbridge learn-smoother: %s\n", rb_context_message(ctx));
    rb_vnet_free(ctx, net);
    rb_mg_free(ctx, mg);
    rb_context_free(ctx);
    return conv != RB_OK ? 1 : 0;
}
