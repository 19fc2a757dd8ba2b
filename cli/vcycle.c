/* vcycle.c — `resbridge vcycle`: one V-cycle, two readings. The same cycle runs as the
 * damped-Jacobi multigrid solver (--mode mg, rb_mg) or as the network (--mode net, rb_vnet)
 * with the Poisson weights or weights from a file; both print the relative residual after
 * each cycle from u = 0 for the same seeded random right-hand side, so with
 * --mode net --weights poisson the two print the same numbers. */
#include <float.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"

static const char *const mode_names[] = {"mg", "net", NULL};
enum { MODE_MG, MODE_NET };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: resbridge vcycle --mode mg|net --dim {1,2,3} --n N [--weights poisson|FILE] [--any-size]\n"
            "         [--save FILE] [--cycles K] [--levels L] [--pre A --post B] [--omega W] [--seed S] [--json]\n\n"
            "Runs K cycles from u = 0 for -Laplace u = f (zero Dirichlet values, n = m 2^k - 1 points per\n"
            "direction, f uniform in [-1,1] from a seeded GSL generator) and prints the relative residual\n"
            "|f - A u| / |f| after each cycle. The cycle is the one V-cycle of the library, read two ways:\n"
            "  --mode mg   the multigrid solver: damped Jacobi V(pre,post), full weighting, bilinear\n"
            "              interpolation, coarsest level solved by LAPACK\n"
            "  --mode net  the network (MgNet/U-Net level operators A, B, R, P): with --weights poisson the\n"
            "              weights of the solver above (A = -Laplacian, B = D^-1, step omega), so it prints the\n"
            "              same numbers; with --weights FILE the weights saved by rb_vnet_save (e.g. by\n"
            "              learn-smoother). The file must be for this n and number of levels, unless\n"
            "              --any-size: then its smoother weights (relative to D^-1), R and P are reused on\n"
            "              this grid, with the Poisson stencils as A (see rb_vnet_load in vnet.h)\n"
            "  --save      (--mode net) write the net's weights to FILE (rb_vnet_save) after the run\n"
            "  --levels    levels of the hierarchy (default: coarsen while n > 7; with a FILE, the file's)\n"
            "  --omega     Jacobi damping (default 2d/(2d+1): 0.8 in 2D); --pre/--post default 1 (or the FILE's)\n"
            "Defaults: --weights poisson --cycles 10 --seed 1\n"
            "A weights file's cycle is measured first (its asymptotic factor on this grid) and refused if it\n"
            "diverges.\n"
            "Exit status: 0 ran, 1 the cycle diverged (or a loaded one would), 2 bad usage or error (e.g. a weights file that\n"
            "is missing, corrupt or for another grid).\n");
}

typedef struct opts {
    int mode, dim, json, any_size;
    long n, levels, cycles, seed, pre, post;
    double omega;
    const char *weights; /* NULL: poisson */
    const char *save;
} opts;

static int parse(int argc, char **argv, opts *o)
{
    rb_args a;
    rb_args_init(&a, argc, argv, "resbridge vcycle");
    const char *opt;
    long v;
    bool have_mode = false, have_dim = false, have_n = false;
    while ((opt = rb_args_next(&a)) != NULL) {
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(opt, "--mode")) {
            if (rb_args_choice(&a, opt, mode_names, &o->mode)) have_mode = true;
        } else if (!strcmp(opt, "--dim")) {
            if (rb_args_long(&a, opt, 1, 3, &v)) o->dim = (int)v, have_dim = true;
        } else if (!strcmp(opt, "--n")) {
            if (rb_args_long(&a, opt, 1, 1L << 26, &o->n)) have_n = true;
        } else if (!strcmp(opt, "--weights")) {
            const char *w = rb_args_value(&a, opt);
            if (w) o->weights = strcmp(w, "poisson") ? w : NULL;
        } else if (!strcmp(opt, "--save")) {
            o->save = rb_args_value(&a, opt);
        } else if (!strcmp(opt, "--any-size")) {
            o->any_size = 1;
        } else if (!strcmp(opt, "--cycles")) {
            rb_args_long(&a, opt, 1, RB_MG_MAX_HISTORY - 1, &o->cycles);
        } else if (!strcmp(opt, "--levels")) {
            rb_args_long(&a, opt, 1, 16, &o->levels);
        } else if (!strcmp(opt, "--pre")) {
            rb_args_long(&a, opt, 0, 8, &o->pre);
        } else if (!strcmp(opt, "--post")) {
            rb_args_long(&a, opt, 0, 8, &o->post);
        } else if (!strcmp(opt, "--omega")) {
            rb_args_double(&a, opt, 1e-6, 1, &o->omega);
        } else if (!strcmp(opt, "--seed")) {
            rb_args_long(&a, opt, 0, 1L << 40, &o->seed);
        } else if (!strcmp(opt, "--json")) {
            o->json = 1;
        } else {
            rb_args_unknown(&a, opt);
        }
    }
    if (a.failed) return 2;
    if (!have_mode || !have_dim || !have_n) {
        fprintf(stderr, "resbridge vcycle: --mode, --dim and --n are required (try --help)\n");
        return 2;
    }
    if (o->mode == MODE_MG && (o->weights || o->any_size || o->save)) {
        fprintf(stderr, "resbridge vcycle: --weights FILE, --any-size and --save are for --mode net (the multigrid solver has "
                        "its stencils)\n");
        return 2;
    }
    if (o->any_size && !o->weights) {
        fprintf(stderr, "resbridge vcycle: --any-size needs --weights FILE\n");
        return 2;
    }
    return -1;
}

static int fail(rb_context *ctx, rb_status st)
{
    fprintf(stderr, "resbridge vcycle: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    return 2;
}

/* The multigrid solver's hierarchy: coarsen while n > coarse_max; --levels L sets coarse_max to
 * the size of level L - 1. Jacobi V(pre, post) with omega. */
static rb_status make_mg(rb_context *ctx, const opts *o, rb_mg **mg)
{
    rb_mg_problem pb = {o->dim, (size_t)o->n, NULL, 1.0};
    rb_mg_options mo = rb_mg_options_default(o->dim);
    mo.smoother = RB_SMOOTHER_JACOBI, mo.omega = o->omega, mo.pre = (int)o->pre, mo.post = (int)o->post;
    if (o->levels > 0 && (((unsigned long)o->n + 1) >> (o->levels - 1)) < 2)
        return rb_fail(ctx, RB_EINVAL, "n = %ld is too small for %ld levels (the coarsest grid would have no point)", o->n, o->levels);
    if (o->levels > 0) mo.coarse_max = (size_t)(((unsigned long)o->n + 1) >> (o->levels - 1)) - 1;
    rb_status st = rb_mg_create(ctx, &pb, &mo, mg);
    if (st == RB_OK && o->levels > 0 && rb_mg_levels(*mg) != (size_t)o->levels) {
        st = rb_fail(ctx, RB_EINVAL, "n = %ld does not coarsen to %ld levels (the hierarchy has %zu)", o->n, o->levels,
                     rb_mg_levels(*mg));
        rb_mg_free(ctx, *mg);
        *mg = NULL;
    }
    return st;
}

/* The network: the Poisson weights, or a weights file (its configuration, this n). */
static rb_status make_net(rb_context *ctx, const opts *o, size_t default_levels, rb_vnet **net)
{
    rb_vnet_config c = rb_vnet_config_default();
    if (o->weights) {
        rb_status st = rb_vnet_peek(ctx, o->weights, &c);
        if (st != RB_OK) return st;
        if (!o->any_size && o->levels <= 0) default_levels = c.levels;
        if (o->pre >= 0) c.pre = (int)o->pre;
        if (o->post >= 0) c.post = (int)o->post;
    } else {
        c.pre = o->pre >= 0 ? (int)o->pre : 1, c.post = o->post >= 0 ? (int)o->post : 1;
    }
    c.dim = o->dim, c.n = (size_t)o->n, c.batch = 1, c.seed = 1;
    c.levels = o->levels > 0 ? (size_t)o->levels : default_levels;
    rb_status st = rb_vnet_create(ctx, &c, net);
    if (st != RB_OK) return st;
    /* Poisson stencils first: the file then brings B, R, P and the steps (with any_size, over
     * these A), or everything */
    st = rb_vnet_set_poisson(ctx, *net, o->omega);
    if (st == RB_OK && o->weights) st = rb_vnet_load(ctx, *net, o->weights, o->any_size != 0);
    if (st != RB_OK) {
        rb_vnet_free(ctx, *net);
        *net = NULL;
    }
    return st;
}

int rb_cli_vcycle(int argc, char **argv)
{
    opts o = {0};
    o.cycles = 10, o.seed = 1, o.levels = -1, o.pre = -1, o.post = -1, o.omega = NAN;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    if (isnan(o.omega)) o.omega = 2.0 * o.dim / (2.0 * o.dim + 1);
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    /* the solver's hierarchy sets the default levels of the net too */
    opts mgo = o;
    if (mgo.pre < 0) mgo.pre = 1;
    if (mgo.post < 0) mgo.post = 1;
    rb_mg *mg = NULL;
    rb_vnet *net = NULL;
    rb_status st = make_mg(ctx, &mgo, &mg);
    if (st == RB_OK && o.mode == MODE_NET) st = make_net(ctx, &o, rb_mg_levels(mg), &net);
    if (st == RB_OK && o.mode == MODE_NET && o.weights != NULL) { /* a loaded cycle must converge before it is used */
        double factor = 0;
        rb_status conv = rb_vnet_measure_factor(ctx, net, (unsigned long)o.seed + 7, 40, &factor);
        if (conv == RB_EDIVERGED) {
            fprintf(stderr, "resbridge vcycle: refused: the cycle of '%s' diverges on this grid (%s)\n", o.weights,
                    rb_context_message(ctx));
            rb_mg_free(ctx, mg), rb_vnet_free(ctx, net);
            rb_context_free(ctx);
            return 1;
        }
        if (conv != RB_OK) st = conv;
    }
    rb_tensor f = {0}, u = {0};
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &f, rb_mg_shape(mg));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, rb_mg_shape(mg));
    gsl_rng *rng = st == RB_OK ? gsl_rng_alloc(gsl_rng_mt19937) : NULL;
    if (st == RB_OK && rng == NULL) st = rb_fail(ctx, RB_ENOMEM, "no random number generator");
    if (st != RB_OK) {
        rc = fail(ctx, st);
        rb_mg_free(ctx, mg), rb_vnet_free(ctx, net);
        rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
        rb_context_free(ctx);
        return rc;
    }
    gsl_rng_set(rng, (unsigned long)o.seed);
    for (size_t i = 0; i < rb_tensor_count(&f); i++) f.data[i] = 2 * gsl_rng_uniform(rng) - 1;
    gsl_rng_free(rng);

    /* K cycles from u = 0: the cycling drivers with a tolerance no cycle reaches */
    rb_mg_report rep;
    const double t0 = rb_cli_now();
    st = o.mode == MODE_MG ? rb_mg_solve(ctx, mg, &f, &u, DBL_MIN, (int)o.cycles, &rep)
                           : rb_vnet_solve(ctx, net, &f, &u, DBL_MIN, (int)o.cycles, &rep);
    const double seconds = rb_cli_now() - t0;
    const rb_status run_st = st;
    if (st == RB_EDIVERGED) fprintf(stderr, "resbridge vcycle: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    else if (st != RB_OK && st != RB_EMAXITER) rc = fail(ctx, st);
    if (rc < 0 && o.save != NULL && (st = rb_vnet_save(ctx, net, o.save)) != RB_OK) rc = fail(ctx, st);
    const size_t levels = o.mode == MODE_MG ? rb_mg_levels(mg) : rb_vnet_config_of(net)->levels;
    const int pre = o.mode == MODE_MG ? (int)mgo.pre : rb_vnet_config_of(net)->pre;
    const int post = o.mode == MODE_MG ? (int)mgo.post : rb_vnet_config_of(net)->post;
    const char *weights = o.mode == MODE_MG ? NULL : o.weights ? o.weights : "poisson";
    if (rc < 0 && o.json) {
        printf("{\"command\":\"vcycle\",\"mode\":\"%s\",\"dim\":%d,\"n\":%ld,\"levels\":%zu,\"pre\":%d,\"post\":%d,",
               mode_names[o.mode], o.dim, o.n, levels, pre, post);
        if (weights) printf("\"weights\":\"%s\",\"any_size\":%s,", weights, o.any_size ? "true" : "false");
        else printf("\"weights\":null,");
        printf("\"omega\":%.17g,\"seed\":%ld,\"cycles\":%d,\"residual_history\":[", o.omega, o.seed, rep.cycles);
        for (int k = 0; k <= rep.cycles; k++) printf("%s%.17g", k ? "," : "", rep.history[k]);
        printf("],\"convergence_factor\":%.17g,\"diverged\":%s,\"seconds\":%.6f}\n", rep.convergence_factor,
               run_st == RB_EDIVERGED ? "true" : "false", seconds);
    } else if (rc < 0) {
        printf("V-cycle, %s mode: %dD Poisson, n = %ld, %zu levels, V(%d,%d), f uniform in [-1,1] (seed %ld), u0 = 0\n",
               o.mode == MODE_MG ? "multigrid" : "network", o.dim, o.n, levels, pre, post, o.seed);
        if (o.mode == MODE_MG) printf("smoother: damped Jacobi, omega = %.6g\n", o.omega);
        else if (!o.weights) printf("weights: Poisson (A = -Laplacian, B = D^-1, step omega = %.6g)\n", o.omega);
        else printf("weights: %s%s\n", o.weights, o.any_size ? " (reused on this grid: --any-size)" : "");
        printf("  %6s  %22s  %8s\n", "cycle", "|f-Au|/|f|", "ratio");
        for (int k = 0; k <= rep.cycles; k++) {
            if (k) printf("  %6d  %22.15e  %8.4f\n", k, rep.history[k], rep.history[k] / rep.history[k - 1]);
            else printf("  %6d  %22.15e  %8s\n", k, rep.history[k], "");
        }
        printf("%s after %d cycles: convergence factor %.4f (geometric mean over the second half), %.4f s\n",
               run_st == RB_EDIVERGED ? "DIVERGED" : "done", rep.cycles, rep.convergence_factor, seconds);
    }
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_mg_free(ctx, mg), rb_vnet_free(ctx, net);
    rb_context_free(ctx);
    if (rc >= 0) return rc;
    return run_st == RB_EDIVERGED ? 1 : 0;
}
