/* poisson.c — `resbridge poisson`: the multigrid solver from the command line. */
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "cli.h"

static const char *const coef_names[] = {"const", "jump", "smooth", NULL};
static const char *const rhs_names[] = {"sine", "ones", "random", NULL};
static const char *const smoother_choices[] = {"jacobi", "rbgs", "chebyshev", NULL};
static const char *const cycle_choices[] = {"V", "W", "F", NULL};
static const char *const coarse_choices[] = {"galerkin", "rediscretise", NULL};
static const char *const check_choices[] = {"lapack", NULL};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: resbridge poisson --dim {1,2,3} --n N [--coef const|jump|smooth] [--smoother jacobi|rbgs|chebyshev]\n"
            "         [--omega W] [--pre A --post B] [--fine-pre A --fine-post B] [--cycle V|W|F]\n"
            "         [--coarse galerkin|rediscretise] [--fmg | --fmg-start] [--pcg]\n"
            "         [--tol T] [--max-cycles K]\n"
            "         [--rhs sine|ones|random] [--seed S] [--threads T] [--check lapack] [--json]\n\n"
            "Solves -div(a grad u) = f on the unit interval/square/cube, zero Dirichlet values, n = m 2^k - 1\n"
            "interior points per direction (m in 1,3,5,7), with geometric multigrid built on the residual primitive.\n"
            "  --coef     const: a = 1; jump: a = 1e4 on x > 1/2 (and y > 1/2 in 2D/3D), 1 elsewhere;\n"
            "             smooth: a = 1 + 0.5 prod sin(2 pi x_i)\n"
            "  --rhs      sine: f = d pi^2 prod sin(pi x_i) (with --coef const the exact discrete solution is known);\n"
            "             ones: f = 1; random: uniform in [-1,1] (seeded GSL generator)\n"
            "  --coarse   coarse operators for --coef jump|smooth: galerkin (R A P, 3^d points; robust for jumps)\n"
            "             or rediscretise (a injected to each coarse grid, 2d+1-point star; for smooth a only:\n"
            "             with jumps it can diverge, reported as such)\n"
            "  --fine-pre, --fine-post  smoothing steps on the finest level only (default: --pre, --post); with\n"
            "             --fine-pre 0 each cycle's last pass also restricts the residual for the next cycle\n"
            "  --fmg      full multigrid (one cycle per level) as the initial guess, then cycles to --tol\n"
            "  --fmg-start  from u = 0, the first cycle's coarse-grid problem solved by full multigrid (one\n"
            "             cycle per level), then the finest level's interpolation and post-smoothing, then\n"
            "             cycles; needs --fine-pre 0; a cycle fewer for a smooth f (e.g. --rhs ones)\n"
            "  --pcg      conjugate gradients preconditioned by one symmetric cycle\n"
            "  --check lapack  compare with LAPACK banded Cholesky on the full system (small problems)\n"
            "Defaults: --coef const --smoother rbgs --pre 2 --post 1 --cycle V --coarse galerkin --tol 1e-8 --max-cycles 50\n"
            "          --rhs sine\n"
            "Exit status: 0 converged, 1 not converged (diverged or iteration limit), 2 bad usage or error.\n");
}

typedef struct opts {
    int dim, coef, rhs, check, json, fmg, pcg, threads;
    long n, seed, max_cycles;
    double tol;
    rb_mg_options mg;
} opts;

static int parse(int argc, char **argv, opts *o)
{
    rb_args a;
    rb_args_init(&a, argc, argv, "resbridge poisson");
    const char *opt;
    long v;
    int c;
    bool have_dim = false, have_n = false;
    o->mg = rb_mg_options_default(2);
    while ((opt = rb_args_next(&a)) != NULL) {
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(opt, "--dim")) {
            if (rb_args_long(&a, opt, 1, 3, &v)) o->dim = (int)v, have_dim = true;
        } else if (!strcmp(opt, "--n")) {
            if (rb_args_long(&a, opt, 1, 1L << 26, &o->n)) have_n = true;
        } else if (!strcmp(opt, "--coef")) {
            rb_args_choice(&a, opt, coef_names, &o->coef);
        } else if (!strcmp(opt, "--smoother")) {
            if (rb_args_choice(&a, opt, smoother_choices, &c)) o->mg.smoother = (rb_smoother)c;
        } else if (!strcmp(opt, "--omega")) {
            rb_args_double(&a, opt, 0, 1e3, &o->mg.omega);
        } else if (!strcmp(opt, "--pre")) {
            if (rb_args_long(&a, opt, 0, 16, &v)) o->mg.pre = (int)v;
        } else if (!strcmp(opt, "--post")) {
            if (rb_args_long(&a, opt, 0, 16, &v)) o->mg.post = (int)v;
        } else if (!strcmp(opt, "--fine-pre")) {
            if (rb_args_long(&a, opt, 0, 16, &v)) o->mg.fine_pre = (int)v;
        } else if (!strcmp(opt, "--fine-post")) {
            if (rb_args_long(&a, opt, 0, 16, &v)) o->mg.fine_post = (int)v;
        } else if (!strcmp(opt, "--cycle")) {
            if (rb_args_choice(&a, opt, cycle_choices, &c)) o->mg.cycle = (rb_cycle)c;
        } else if (!strcmp(opt, "--coarse")) {
            if (rb_args_choice(&a, opt, coarse_choices, &c)) o->mg.coarse = (rb_coarse)c;
        } else if (!strcmp(opt, "--fmg")) {
            o->fmg = 1;
        } else if (!strcmp(opt, "--fmg-start")) {
            o->mg.fmg_start = true;
        } else if (!strcmp(opt, "--pcg")) {
            o->pcg = 1;
        } else if (!strcmp(opt, "--tol")) {
            rb_args_double(&a, opt, 1e-15, 0.5, &o->tol);
        } else if (!strcmp(opt, "--max-cycles")) {
            rb_args_long(&a, opt, 1, RB_MG_MAX_HISTORY - 2, &o->max_cycles);
        } else if (!strcmp(opt, "--rhs")) {
            rb_args_choice(&a, opt, rhs_names, &o->rhs);
        } else if (!strcmp(opt, "--seed")) {
            rb_args_long(&a, opt, 0, 1L << 40, &o->seed);
        } else if (!strcmp(opt, "--threads")) {
            if (rb_args_long(&a, opt, 1, 1024, &v)) o->threads = (int)v;
        } else if (!strcmp(opt, "--check")) {
            if (rb_args_choice(&a, opt, check_choices, &c)) o->check = 1;
        } else if (!strcmp(opt, "--json")) {
            o->json = 1;
        } else {
            rb_args_unknown(&a, opt);
        }
    }
    if (a.failed) return 2;
    if (!have_dim || !have_n) {
        fprintf(stderr, "resbridge poisson: --dim and --n are required (try --help)\n");
        return 2;
    }
    if (o->fmg + o->pcg + o->mg.fmg_start > 1) {
        fprintf(stderr, "resbridge poisson: choose one of --fmg, --fmg-start and --pcg\n");
        return 2;
    }
    return -1;
}


/* f by --rhs; for sine also the exact discrete solution (constant a = 1) into exact. */
static void right_hand_side(const opts *o, rb_tensor *f, rb_tensor *exact)
{
    size_t n = (size_t)o->n;
    double h = 1.0 / (double)(n + 1), pi = acos(-1.0);
    double c_h = pi * pi * h * h / (4 * pow(sin(pi * h / 2), 2));
    gsl_rng *rng = NULL;
    if (o->rhs == 2) {
        rng = gsl_rng_alloc(gsl_rng_mt19937);
        if (rng) gsl_rng_set(rng, (unsigned long)o->seed);
    }
    for (size_t z = 0; z < f->shape.d; z++)
        for (size_t y = 0; y < f->shape.h; y++)
            for (size_t x = 0; x < n; x++) {
                size_t p = (z * f->shape.h + y) * n + x;
                double s = sin(pi * (double)(x + 1) * h) * (o->dim >= 2 ? sin(pi * (double)(y + 1) * h) : 1) *
                           (o->dim == 3 ? sin(pi * (double)(z + 1) * h) : 1);
                f->data[p] = o->rhs == 0 ? o->dim * pi * pi * s : o->rhs == 1 ? 1.0 : rng ? 2 * gsl_rng_uniform(rng) - 1 : 0;
                if (exact) exact->data[p] = c_h * s;
            }
    if (rng) gsl_rng_free(rng);
}

static int fail(rb_context *ctx, rb_status st)
{
    fprintf(stderr, "resbridge poisson: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    return 2;
}

int rb_cli_poisson(int argc, char **argv)
{
    opts o = {0};
    o.tol = 1e-8, o.max_cycles = 50;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    rb_status st = o.threads ? rb_context_set_threads(ctx, o.threads) : RB_OK;
    if (st != RB_OK) return fail(ctx, st);
    double *coef = rb_cli_coefficients(o.dim, (size_t)o.n, o.coef);
    rb_mg_problem pb = {o.dim, (size_t)o.n, coef, 1.0};
    rb_mg *mg = NULL;
    double t0 = rb_cli_now();
    st = rb_mg_create(ctx, &pb, &o.mg, &mg);
    double t_setup = rb_cli_now() - t0;
    free(coef);
    if (st != RB_OK) {
        rc = fail(ctx, st);
        rb_context_free(ctx);
        return rc;
    }
    rb_tensor f = {0}, u = {0}, exact = {0}, ul = {0};
    bool has_exact = o.rhs == 0 && o.coef == 0;
    st = rb_tensor_alloc(ctx, &f, rb_mg_shape(mg));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, rb_mg_shape(mg));
    if (st == RB_OK && has_exact) st = rb_tensor_alloc(ctx, &exact, rb_mg_shape(mg));
    if (st != RB_OK) return fail(ctx, st);
    right_hand_side(&o, &f, has_exact ? &exact : NULL);

    rb_mg_report rep, fmg_rep;
    t0 = rb_cli_now();
    if (o.pcg) {
        st = rb_mg_pcg(ctx, mg, &f, &u, o.tol, (int)o.max_cycles, &rep);
    } else {
        if (o.fmg) st = rb_mg_fmg(ctx, mg, &f, &u, 1, &fmg_rep);
        if (st == RB_OK) st = rb_mg_solve(ctx, mg, &f, &u, o.tol, (int)o.max_cycles, &rep);
    }
    double t_solve = rb_cli_now() - t0;
    rb_status solve_st = st;
    if (st != RB_OK && st != RB_EMAXITER && st != RB_EDIVERGED) return fail(ctx, st);
    if (st != RB_OK) fprintf(stderr, "resbridge poisson: %s: %s\n", rb_strerror(st), rb_context_message(ctx));

    double err = NAN, lapack = NAN;
    if (has_exact && solve_st == RB_OK) err = rb_tensor_max_rel_diff(&u, &exact);
    if (o.check) {
        size_t cnt = rb_tensor_count(&f), kd = 1;
        for (int i = 1; i < o.dim; i++) kd *= (size_t)o.n;
        if (cnt * (kd + 1) > 60000000u) {
            fprintf(stderr, "resbridge poisson: --check lapack: the band of %zu x %zu is too large for this check; use a smaller n\n", cnt, kd + 1);
        } else {
            st = rb_tensor_alloc(ctx, &ul, f.shape);
            if (st == RB_OK) st = rb_ref_solve_spd_banded(ctx, rb_mg_operator(mg), &f, &ul);
            if (st != RB_OK) return fail(ctx, st);
            if (solve_st == RB_OK) lapack = rb_tensor_max_rel_diff(&u, &ul);
        }
    }
    const char *method = o.pcg ? "pcg" : o.fmg ? "fmg" : o.mg.fmg_start ? "fmg-start" : "cycles";
    if (o.json) {
        printf("{\"command\":\"poisson\",\"dim\":%d,\"n\":%ld,\"unknowns\":%zu,\"levels\":%zu,\"coef\":\"%s\",\"rhs\":\"%s\","
               "\"coarse\":\"%s\",\"smoother\":\"%s\",\"pre\":%d,\"post\":%d,\"fine_pre\":%d,\"fine_post\":%d,"
               "\"cycle\":\"%s\",\"method\":\"%s\",\"threads\":%d,\"cycles\":%d,\"residual_history\":[",
               o.dim, o.n, rb_tensor_count(&f), rb_mg_levels(mg), coef_names[o.coef], rhs_names[o.rhs],
               o.coef == 0 ? "rediscretise" : rb_coarse_name(o.mg.coarse), rb_smoother_name(o.mg.smoother), o.mg.pre, o.mg.post,
               o.mg.fine_pre >= 0 ? o.mg.fine_pre : o.mg.pre, o.mg.fine_post >= 0 ? o.mg.fine_post : o.mg.post,
               rb_cycle_name(o.mg.cycle), method, rb_context_threads(ctx), rep.cycles);
        /* JSON has no NaN or infinity: null (a factor with no ratio to take, a diverged residual) */
        for (int k = 0; k <= rep.cycles && k < RB_MG_MAX_HISTORY; k++) {
            if (isfinite(rep.history[k])) printf("%s%.6e", k ? "," : "", rep.history[k]);
            else printf("%snull", k ? "," : "");
        }
        if (isfinite(rep.convergence_factor)) printf("],\"convergence_factor\":%.6f,", rep.convergence_factor);
        else printf("],\"convergence_factor\":null,");
        if (isfinite(rep.rel_residual)) printf("\"rel_residual\":%.6e,", rep.rel_residual);
        else printf("\"rel_residual\":null,");
        printf("\"converged\":%s,", solve_st == RB_OK ? "true" : "false");
        if (isnan(err)) printf("\"error_vs_exact\":null,");
        else printf("\"error_vs_exact\":%.6e,", err);
        if (o.check) {
            if (isnan(lapack)) printf("\"lapack_rel_diff\":null,");
            else printf("\"lapack_rel_diff\":%.6e,", lapack);
        }
        printf("\"seconds_setup\":%.6f,\"seconds_solve\":%.6f}\n", t_setup, t_solve);
    } else {
        printf("Poisson %dD, n = %ld (%zu unknowns), a: %s, f: %s\n", o.dim, o.n, rb_tensor_count(&f), coef_names[o.coef],
               rhs_names[o.rhs]);
        printf("multigrid: %zu levels, %s %s(%d,%d)%s, %d threads\n", rb_mg_levels(mg), rb_smoother_name(o.mg.smoother),
               rb_cycle_name(o.mg.cycle), o.mg.pre, o.mg.post, o.pcg ? " as CG preconditioner" : o.fmg ? " after FMG" : o.mg.fmg_start ? ", FMG start" : "",
               rb_context_threads(ctx));
        printf("  %6s  %14s  %8s\n", o.pcg ? "iter" : "cycle", "|f-Au|/|f|", "ratio");
        for (int k = 0; k <= rep.cycles && k < RB_MG_MAX_HISTORY; k++) {
            if (k) printf("  %6d  %14.6e  %8.4f\n", k, rep.history[k], rep.history[k] / rep.history[k - 1]);
            else printf("  %6d  %14.6e  %8s\n", k, rep.history[k], "");
        }
        printf("%s after %d %s: relative residual %.3e, convergence factor %.4f\n",
               solve_st == RB_OK ? "converged" : "NOT converged", rep.cycles, o.pcg ? "iterations" : "cycles",
               rep.rel_residual, rep.convergence_factor);
        if (!isnan(err)) printf("error vs the exact discrete solution c_h prod sin(pi x_i): %.3e (relative, max norm)\n", err);
        if (!isnan(lapack)) printf("difference from LAPACK dpbsv: %.3e (relative, max norm)\n", lapack);
        printf("set-up %.4f s, solve %.4f s\n", t_setup, t_solve);
    }
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &exact), rb_tensor_release(ctx, &ul);
    rb_mg_free(ctx, mg);
    rb_context_free(ctx);
    return solve_st == RB_OK ? 0 : 1;
}
