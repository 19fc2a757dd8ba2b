/* ode.c — `resbridge ode`: a ResNet as a discretised ODE, checked against
 * CVODE (forward) and CVODES (continuous adjoint). */
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "cli.h"

#define REF_FLOOR 1e-10 /* errors below this measure CVODE (rtol 1e-12), not the method */

static const char *const rhs_names[] = {"linear", "neural", "conv", "antisym", "hamiltonian", NULL};
static const char *const compare_names[] = {"cvode", NULL};
static const char *const gradient_names[] = {"backprop", "checkpoint", "adjoint", NULL};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: resbridge ode --rhs linear|neural|antisym|conv|hamiltonian\n"
            "         --method euler|heun|rk4|beuler|imidpoint|leapfrog --layers L\n"
            "         [--T T] [--dim D] [--channels C] [--seed S] [--compare cvode] [--convergence]\n"
            "         [--gradient backprop|checkpoint|adjoint] [--adaptive --rtol X] [--json]\n\n"
            "Integrates dx/dt = F(t, x) from x(0) (random, seeded) to x(T) with L steps of h = T/L: with --method euler\n"
            "this is a ResNet of L residual layers x <- x + h F(x).\n"
            "  --rhs linear    F(x) = W x;  neural: F(x) = tanh(W x + b);  antisym: tanh((W - W^T - 0.1 I) x + b)\n"
            "                  (W random, entries uniform in [-1,1]/sqrt(D), seeded)\n"
            "          conv    F(x) = tanh(K * x + b) on C-channel D x D grids (state (1,C,1,D,D); K 3x3, zero padding,\n"
            "                  entries uniform in [-1,1]/sqrt(9C), seeded)\n"
            "        hamiltonian  the pair y' = tanh(K z + b), z' = -tanh(K^T y + b) (Haber & Ruthotto), x = (y, z),\n"
            "                  D even, K random D/2 x D/2; --method leapfrog (Stormer-Verlet) needs this right-hand side\n"
            "  --compare cvode       error of x(T) against CVODE (BDF, rtol 1e-12)\n"
            "  --convergence         errors against CVODE for L, 2L, 4L, 8L and the observed order (fitted over the\n"
            "                        errors above 1e-10, where CVODE's own error does not show)\n"
            "  --gradient backprop   dL/dx0 and dL/dtheta for L = <c, x(T)> by backpropagation through the steps,\n"
            "                        checked against central finite differences and CVODES's continuous adjoint;\n"
            "             checkpoint the same with every ceil(sqrt L)-th state stored (peak memory O(sqrt L));\n"
            "             adjoint    CVODES's continuous adjoint, compared with backpropagation\n"
            "  --adaptive            adaptive steps (explicit methods) from h0 = T/L to local tolerance --rtol (default\n"
            "                        1e-6, atol = rtol): reports accepted and rejected steps (--compare cvode: the error reached)\n"
            "Defaults: --T 1 --dim 4 --channels 2 --seed 1. Exit status: 0 success, 1 a check failed, 2 bad usage or error.\n");
}

typedef struct opts {
    int rhs, compare, convergence, gradient, json;
    const rb_ode_method *method;
    long layers, dim, seed, channels;
    double T;
    int adaptive;   /* --adaptive: rb_ode_integrate_adaptive to --rtol */
    double rtol;
} opts;

enum { RHS_CONV = 2, RHS_HAMILTONIAN = 4 };

static int parse(rb_context *ctx, int argc, char **argv, opts *o)
{
    rb_args a;
    rb_args_init(&a, argc, argv, "resbridge ode");
    const char *opt;
    bool have_method = false, have_layers = false, have_rhs = false;
    o->gradient = -1, o->T = 1.0, o->dim = 4, o->seed = 1, o->rtol = 1e-6, o->channels = 2;
    while ((opt = rb_args_next(&a)) != NULL) {
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(opt, "--rhs")) {
            have_rhs = rb_args_choice(&a, opt, rhs_names, &o->rhs);
        } else if (!strcmp(opt, "--method")) {
            const char *v = rb_args_value(&a, opt);
            if (v && rb_ode_method_parse(ctx, v, &o->method) != RB_OK) {
                fprintf(stderr, "resbridge ode: --method %s: %s\n", v, rb_context_message(ctx));
                return 2;
            }
            have_method = v != NULL;
        } else if (!strcmp(opt, "--layers")) {
            have_layers = rb_args_long(&a, opt, 1, 10000000, &o->layers);
        } else if (!strcmp(opt, "--T")) {
            rb_args_double(&a, opt, 1e-6, 1e3, &o->T);
        } else if (!strcmp(opt, "--dim")) {
            rb_args_long(&a, opt, 1, 256, &o->dim);
        } else if (!strcmp(opt, "--channels")) {
            rb_args_long(&a, opt, 1, 64, &o->channels);
        } else if (!strcmp(opt, "--seed")) {
            rb_args_long(&a, opt, 0, 1L << 40, &o->seed);
        } else if (!strcmp(opt, "--compare")) {
            int c;
            if (rb_args_choice(&a, opt, compare_names, &c)) o->compare = 1;
        } else if (!strcmp(opt, "--convergence")) {
            o->convergence = 1;
        } else if (!strcmp(opt, "--gradient")) {
            rb_args_choice(&a, opt, gradient_names, &o->gradient);
        } else if (!strcmp(opt, "--adaptive")) {
            o->adaptive = 1;
        } else if (!strcmp(opt, "--rtol")) {
            rb_args_double(&a, opt, 1e-14, 1e-1, &o->rtol);
        } else if (!strcmp(opt, "--json")) {
            o->json = 1;
        } else {
            rb_args_unknown(&a, opt);
        }
    }
    if (a.failed) return 2;
    if (!have_rhs || !have_method || !have_layers) {
        fprintf(stderr, "resbridge ode: --rhs, --method and --layers are required (try --help)\n");
        return 2;
    }
    if (o->rhs == RHS_HAMILTONIAN && o->dim % 2 != 0) {
        fprintf(stderr, "resbridge ode: --rhs hamiltonian needs an even --dim (the pair (y, z)); got %ld\n", o->dim);
        return 2;
    }
    if (o->adaptive && (o->convergence || o->gradient >= 0)) {
        fprintf(stderr, "resbridge ode: --adaptive runs one adaptive integration; --convergence and --gradient take "
                "fixed steps (drop one)\n");
        return 2;
    }
    return -1;
}

typedef struct problem {
    rb_op *F;
    double *W;        /* the matrix whose eigenvalues bound the Euler step (W, or W - W^T - gamma I) */
    rb_tensor x0, c;  /* initial state, loss weights */
    size_t n;
} problem;

/* The Hamiltonian pair on D = 2m: K = the first m*m random numbers, b the next m; p->W = [[0, K], [-K^T, 0]]
 * (its linear part at sigma' = 1). */
static rb_status make_hamiltonian(rb_context *ctx, size_t n, const double *params, problem *p)
{
    size_t m = n / 2;
    double *kb = malloc((m * m + m) * sizeof *kb);
    if (kb == NULL) return rb_fail(ctx, RB_ENOMEM, "out of memory");
    memcpy(kb, params, m * m * sizeof *kb);
    memcpy(kb + m * m, params + n * n, m * sizeof *kb);
    memset(p->W, 0, n * n * sizeof *p->W);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) p->W[i * n + m + j] = kb[i * m + j], p->W[(m + j) * n + i] = -kb[i * m + j];
    rb_status st = rb_op_ode_hamiltonian_create(ctx, m, RB_ACT_TANH, 1, 1.0, kb, &p->F);
    free(kb);
    return st;
}

/* --rhs conv: F(x) = tanh(K * x + b) on (1, C, 1, D, D); p->W = the matrix of x -> K * x (for the
 * stable step bound; NULL when the grid is too large for a dense eigenvalue solve). */
static rb_status make_conv_problem(rb_context *ctx, const opts *o, problem *p, gsl_rng *rng, rb_shape *shape)
{
    size_t C = (size_t)o->channels, D = (size_t)o->dim, np = rb_ode_conv_nparams(C), nw = 9 * C * C;
    *shape = rb_shape_2d(1, C, D, D);
    p->n = rb_shape_count(*shape);
    double *params = malloc(np * sizeof *params), scale = 1.0 / sqrt(9.0 * (double)C);
    if (params == NULL) return rb_fail(ctx, RB_ENOMEM, "out of memory");
    for (size_t i = 0; i < np; i++) params[i] = (2 * gsl_rng_uniform(rng) - 1) * (i < nw ? scale : 0.5);
    rb_status st = rb_op_ode_conv_create(ctx, C, RB_ACT_TANH, RB_ODE_CONV_PLAIN, params, &p->F);
    if (st == RB_OK && p->n <= 2048) {
        rb_conv_desc d = rb_conv_desc_default(2, C, C);
        rb_op *K = NULL;
        p->W = malloc(p->n * p->n * sizeof *p->W);
        st = p->W ? rb_op_conv_create(ctx, &d, params, &K) : rb_fail(ctx, RB_ENOMEM, "out of memory");
        if (st == RB_OK) st = rb_ref_assemble(ctx, K, *shape, p->W);
        rb_op_free(ctx, K);
    }
    free(params);
    return st;
}

static rb_status make_problem(rb_context *ctx, const opts *o, problem *p)
{
    size_t n = (size_t)o->dim;
    rb_shape shape = rb_shape_vec(n);
    p->n = n;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (rng == NULL) return rb_fail(ctx, RB_ENOMEM, "cannot allocate the random generator");
    gsl_rng_set(rng, (unsigned long)o->seed);
    double *params = o->rhs == RHS_CONV ? NULL : calloc(n * n + n, sizeof *params);
    p->W = o->rhs == RHS_CONV ? NULL : calloc(n * n, sizeof *p->W);
    rb_status st = o->rhs == RHS_CONV ? make_conv_problem(ctx, o, p, rng, &shape)
                 : params && p->W ? RB_OK : rb_fail(ctx, RB_ENOMEM, "out of memory");
    n = p->n;
    double scale = 1.0 / sqrt((double)n), gamma = 0.1;
    for (size_t i = 0; st == RB_OK && o->rhs != RHS_CONV && i < n * n + n; i++) params[i] = (2 * gsl_rng_uniform(rng) - 1) * (i < n * n ? scale : 0.5);
    if (st == RB_OK && o->rhs != RHS_CONV) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                p->W[i * n + j] = o->rhs == 3 ? params[i * n + j] - params[j * n + i] - (i == j) * gamma : params[i * n + j];
        if (o->rhs == RHS_HAMILTONIAN) st = make_hamiltonian(ctx, n, params, p);
        else if (o->rhs == 0) st = rb_op_ode_linear_create(ctx, n, params, &p->F);
        else if (o->rhs == 1) st = rb_op_ode_neural_create(ctx, n, RB_ACT_TANH, 1, o->T, params, &p->F);
        else st = rb_op_ode_antisym_create(ctx, n, RB_ACT_TANH, gamma, params, &p->F);
    }
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &p->x0, shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &p->c, shape);
    for (size_t i = 0; st == RB_OK && i < n; i++) p->x0.data[i] = 2 * gsl_rng_uniform(rng) - 1, p->c.data[i] = 2 * gsl_rng_uniform(rng) - 1;
    free(params);
    gsl_rng_free(rng);
    return st;
}

/* Largest h with max |1 + h lambda| <= 1 over W's eigenvalues (0 if some Re lambda > 0). */
static double stable_step_bound(rb_context *ctx, const problem *p)
{
    size_t n = p->n;
    if (p->W == NULL) return NAN; /* too large for a dense eigenvalue solve */
    double *wr = malloc(n * sizeof *wr), *wi = malloc(n * sizeof *wi), bound = INFINITY;
    if (wr && wi && rb_ref_eig_general(ctx, p->W, n, wr, wi) == RB_OK) {
        for (size_t i = 0; i < n; i++) {
            double m2 = wr[i] * wr[i] + wi[i] * wi[i];
            if (m2 == 0) continue;
            if (wr[i] >= 0) {
                bound = 0;
                break;
            }
            bound = fmin(bound, -2 * wr[i] / m2);
        }
    } else {
        bound = NAN;
    }
    free(wr), free(wi);
    return bound;
}

static int fail(rb_context *ctx, rb_status st)
{
    fprintf(stderr, "resbridge ode: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    return 2;
}

/* |a - b| / |b| */
static double rel(const rb_tensor *a, const rb_tensor *b)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < rb_tensor_count(a); i++) d += pow(a->data[i] - b->data[i], 2), s += pow(b->data[i], 2);
    return sqrt(d / (s > 0 ? s : 1));
}

/* <c, x(T)> after L steps */
static rb_status loss(rb_context *ctx, const opts *o, problem *p, const rb_tensor *x0, rb_tensor *xT, double *L)
{
    rb_status st = rb_ode_integrate(ctx, o->method, p->F, 0.0, o->T, (size_t)o->layers, x0, xT, NULL, NULL);
    if (st == RB_OK) *L = rb_tensor_dot(&p->c, xT);
    return st;
}

int rb_cli_ode(int argc, char **argv)
{
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    opts o = {0};
    int rc = parse(ctx, argc, argv, &o);
    if (rc >= 0) {
        rb_context_free(ctx);
        return rc;
    }
    problem p = {0};
    rb_status st = make_problem(ctx, &o, &p);
    if (st != RB_OK) return fail(ctx, st);
    size_t n = p.n;
    double h = o.T / (double)o.layers;
    rb_tensor xT = {0}, xc = {0}, tmp = {0}, g = {0}, ga = {0};
    st = rb_tensor_alloc(ctx, &xT, p.x0.shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &xc, p.x0.shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &tmp, p.x0.shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &g, p.x0.shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &ga, p.x0.shape);
    if (st != RB_OK) return fail(ctx, st);

    rb_ode_tape tape;
    rb_ode_tape_init(&tape, o.gradient == 1 ? 0 : 1);
    bool need_tape = o.gradient == 0 || o.gradient == 1 || o.gradient == 2;
    double t0 = rb_cli_now();
    rb_ode_adaptive_stats ast = {0, 0, 0, 0, 0};
    if (o.adaptive) /* atol = rtol: the error of x_i is held to rtol (1 + |x_i|) per unit time */
        st = rb_ode_integrate_adaptive(ctx, o.method, p.F, 0.0, o.T, &p.x0, &xT, o.rtol, o.rtol, h, 100000000L, &ast);
    else
        st = rb_ode_integrate(ctx, o.method, p.F, 0.0, o.T, (size_t)o.layers, &p.x0, &xT, NULL, need_tape ? &tape : NULL);
    double seconds = rb_cli_now() - t0;
    if (st != RB_OK) return fail(ctx, st);

    double err_cvode = NAN, order = NAN, errs[4] = {NAN, NAN, NAN, NAN};
    int order_points = 0;
    if (o.compare || o.convergence) {
        st = rb_ref_cvode(ctx, p.F, 0.0, o.T, &p.x0, &xc, RB_REF_CVODE_BDF, 1e-12, 1e-14, 0, NULL);
        if (st != RB_OK) return fail(ctx, st);
        err_cvode = rel(&xT, &xc);
    }
    if (o.convergence) {
        /* least-squares slope of log error vs log h over the errors above REF_FLOOR: CVODE at rtol
         * 1e-12 is itself accurate to ~1e-12, so smaller errors measure the reference, not the method */
        double sx = 0, sy = 0, sxx = 0, sxy = 0, m = 0;
        for (int k = 0; k < 4; k++) {
            size_t L = (size_t)o.layers << k;
            st = rb_ode_integrate(ctx, o.method, p.F, 0.0, o.T, L, &p.x0, &tmp, NULL, NULL);
            if (st != RB_OK) return fail(ctx, st);
            errs[k] = rel(&tmp, &xc);
            if (!(errs[k] > REF_FLOOR)) continue;
            double lx = log(o.T / (double)L), ly = log(errs[k]);
            sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly, m++;
        }
        if (m >= 2) order = (m * sxy - sx * sy) / (m * sxx - sx * sx);
        else fprintf(stderr, "resbridge ode: the errors reach CVODE's own accuracy (<= %g): no order; use fewer --layers\n", REF_FLOOR);
        order_points = (int)m;
    }

    double grad_fd = NAN, grad_adj = NAN;
    if (need_tape) {
        double *dth = calloc(p.F->nparams ? p.F->nparams : 1, sizeof *dth);
        st = dth ? rb_ode_backward(ctx, &tape, p.F, &p.c, &g, dth) : RB_ENOMEM;
        if (st != RB_OK) return fail(ctx, st);
        /* central finite differences of L over every component of x0 */
        double d = 0, s = 0;
        for (size_t i = 0; i < n && st == RB_OK; i++) {
            double keep = p.x0.data[i], lp = 0, lm = 0, eps = 1e-6;
            p.x0.data[i] = keep + eps;
            st = loss(ctx, &o, &p, &p.x0, &tmp, &lp);
            p.x0.data[i] = keep - eps;
            if (st == RB_OK) st = loss(ctx, &o, &p, &p.x0, &tmp, &lm);
            p.x0.data[i] = keep;
            double fd = (lp - lm) / (2 * eps);
            d = fmax(d, fabs(fd - g.data[i])), s = fmax(s, fabs(g.data[i]));
        }
        if (st != RB_OK) return fail(ctx, st);
        grad_fd = d / (s > 0 ? s : 1);
        /* CVODES's continuous adjoint of the same loss: differs by O(h^order) */
        st = rb_ref_cvodes_adjoint(ctx, p.F, 0.0, o.T, &p.x0, &p.c, &ga, NULL, 1e-11, 1e-13);
        if (st != RB_OK) return fail(ctx, st);
        grad_adj = rel(&g, &ga);
        free(dth);
    }
    double bound = stable_step_bound(ctx, &p);
    bool ok = (isnan(grad_fd) || grad_fd <= 1e-6);
    if (o.json) {
        printf("{\"command\":\"ode\",\"rhs\":\"%s\",\"method\":\"%s\",\"layers\":%ld,\"T\":%.17g,\"h\":%.17g,\"dim\":%zu,"
               "\"x_final_norm\":%.17g,", rhs_names[o.rhs], o.method->name, o.layers, o.T, h, n, rb_tensor_norm2(&xT));
        if (o.adaptive)
            printf("\"adaptive\":true,\"rtol\":%.3g,\"steps\":%ld,\"rejected\":%ld,\"h_min\":%.6g,\"h_max\":%.6g,", o.rtol,
                   ast.steps, ast.rejected, ast.h_min, ast.h_max);
        if (o.rhs == RHS_CONV) printf("\"channels\":%ld,\"grid\":[%ld,%ld],", o.channels, o.dim, o.dim);
        if (!isnan(err_cvode)) printf("\"error_vs_cvode\":%.6e,", err_cvode);
        if (o.convergence) {
        {
            printf("\"errors\":[%.6e,%.6e,%.6e,%.6e],\"order_points\":%d,\"observed_order\":", errs[0], errs[1], errs[2], errs[3],
                   order_points);
            printf(isnan(order) ? "null," : "%.4f,", order);
        }
        }
        if (!isnan(grad_fd)) printf("\"grad_rel_diff_fd\":%.6e,\"grad_rel_diff_adjoint\":%.6e,", grad_fd, grad_adj);
        if (isfinite(bound)) printf("\"stable_step_bound\":%.6g,", bound);
        else printf("\"stable_step_bound\":null,"); /* every h (inf) or not computed (NaN): not a JSON number */
        printf("\"seconds\":%.6f,\"peak_bytes\":%zu}\n", seconds, need_tape ? tape.peak_bytes : (size_t)0);
    } else {
        printf("dx/dt = F(t, x), F %s, dim %zu, T = %g: %s with L = %ld steps (h = %g)%s\n", rhs_names[o.rhs], n, o.T,
               o.method->name, o.layers, h, !strcmp(o.method->name, "euler") ? " = a ResNet of L residual layers" : "");
        if (o.adaptive)
            printf("  adaptive steps to rtol = atol = %g from h0 = %g: %ld accepted, %ld rejected, h in [%.3g, %.3g]\n",
                   o.rtol, h, ast.steps, ast.rejected, ast.h_min, ast.h_max);
        if (o.rhs == RHS_CONV) printf("  state: %ld channels on a %ld x %ld grid, K 3x3 with zero padding\n", o.channels, o.dim, o.dim);
        printf("  |x(T)| = %.12g  (%.3f ms)\n", rb_tensor_norm2(&xT), 1e3 * seconds);
        if (!isnan(err_cvode)) printf("  relative error against CVODE (BDF, rtol 1e-12): %.3e\n", err_cvode);
        if (o.convergence) {
            for (int k = 0; k < 4; k++) printf("    L = %8ld   error %.3e\n", o.layers << k, errs[k]);
            if (isnan(order)) printf("  observed order: not measurable (the errors are at CVODE's own accuracy)\n");
            else printf("  observed order %.3f over %d of the 4 runs (method order %d)\n", order, order_points, o.method->order);
        }
        if (!isnan(grad_fd)) {
            printf("  dL/dx0 by %s (peak tape %zu bytes): vs finite differences %.2e, vs CVODES adjoint %.2e\n",
                   o.gradient == 1 ? "checkpointed backprop" : "backprop", tape.peak_bytes, grad_fd, grad_adj);
        }
        if (isnan(bound)) printf("  Euler stable step bound: not computed (%zu entries; the dense eigenvalue solve allows 2048)\n", n);
        else if (isinf(bound)) printf("  Euler is stable for every h (W has no eigenvalue with negative real part)\n");
        else if (bound == 0) printf("  Euler is unstable for every h: W has an eigenvalue with real part >= 0\n");
        else printf("  Euler stable step bound from W's eigenvalues (LAPACK dgeev): h <= %.6g (this run: h = %g, %s)\n",
                    bound, h, h <= bound ? "stable" : "UNSTABLE");
    }
    rb_ode_tape_release(ctx, &tape);
    rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &xc), rb_tensor_release(ctx, &tmp);
    rb_tensor_release(ctx, &g), rb_tensor_release(ctx, &ga), rb_tensor_release(ctx, &p.x0), rb_tensor_release(ctx, &p.c);
    free(p.W);
    rb_op_free(ctx, p.F);
    rb_context_free(ctx);
    return ok ? 0 : 1;
}
