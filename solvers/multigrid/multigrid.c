/* multigrid.c — hierarchy set-up, smoothers, transfers, coarse solve, and the
 * solve drivers (cycles, FMG, MG-preconditioned CG). The cycle itself is the
 * generic skeleton in src/vcycle.c. */
#include "resbridge/multigrid.h"

#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "resbridge/colour.h"
#include "resbridge/conv.h"
#include "resbridge/reference.h"
#include "resbridge/residual.h"
#include "resbridge/varstencil.h"
#include "resbridge/xsplit.h"
#include "xsplit_internal.h"

#define MAX_LEVELS 32
#define MAX_COLOURS 8                       /* 2^dim parity classes of a full 3^dim-point stencil */
#define MAX_STEPS (16 * MAX_COLOURS)       /* pre or post <= 16 sweeps of <= MAX_COLOURS colours */

struct rb_mg {
    rb_mg_problem pb;
    rb_mg_options opt;
    double *coef;                 /* copy of the point coefficients, or NULL */
    size_t nlevels;
    size_t n[MAX_LEVELS];
    rb_vlevel level[MAX_LEVELS];
    rb_op *A[MAX_LEVELS], *J[MAX_LEVELS];
    rb_op *colour[MAX_LEVELS][MAX_COLOURS]; /* Gauss-Seidel colours, in sweep order */
    int ncolours[MAX_LEVELS];
    double omega_jacobi[MAX_LEVELS];        /* the Jacobi weight of each level (see jacobi_weight) */
    rb_op *R[MAX_LEVELS], *P[MAX_LEVELS];
    rb_op *sweep[MAX_LEVELS][3];            /* red-black: pre, post, symmetric-post sweeps as one step each */
    rb_vstep steps[MAX_LEVELS][3][MAX_STEPS]; /* [level][pre, post, symmetric post][step] */
    size_t nsym[MAX_LEVELS], nsteps_post[MAX_LEVELS];
    rb_vcycle vc;
    /* rb_mg_solve's cycles with the grids stored split (xsplit.h; 2D RB-GS over a constant star,
     * unless opt.plain_fine): every level but the coarsest (which the banded Cholesky solves
     * plain) with its operators and sweeps seen split. Their u and r hold split values while such
     * a solve runs; fs[l] is level l's f split, which the sweeps' reference path writes into the
     * plain f their Jacobi operator reads. */
    bool split;
    rb_op *xs_A[MAX_LEVELS], *xs_R[MAX_LEVELS], *xs_P[MAX_LEVELS], *xs_sweep[MAX_LEVELS][2];
    rb_vstep xs_steps[MAX_LEVELS][2];
    rb_vlevel xs_level[MAX_LEVELS];
    rb_tensor fs[MAX_LEVELS];
    rb_vcycle vc_split;
    double *band;                 /* coarsest operator, Cholesky-factorised (LAPACK band storage) */
    size_t kd, ncoarse;
    rb_tensor x, r, z, p, q;      /* finest-level vectors for CG (allocated by its first call) */
    rb_arena work;
};

static const char *const smoother_names[] = {"jacobi", "rbgs", "chebyshev"};
_Static_assert(sizeof smoother_names / sizeof *smoother_names == RB_SMOOTHER_COUNT, "one name per smoother");
static const char *const coarse_names[] = {"galerkin", "rediscretise"};
_Static_assert(sizeof coarse_names / sizeof *coarse_names == RB_COARSE_COUNT, "one name per coarse operator");

/* The index of `name` among names[0..count) (name(i) for i < count), or a message listing them. */
static rb_status parse_name(rb_context *ctx, const char *fn, const char *what, const char *name, int count,
                            const char *(*name_of)(int), int *out)
{
    if (name == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "%s: NULL argument", fn);
    char list[128] = "";
    for (int i = 0; i < count; i++) {
        if (strcmp(name, name_of(i)) == 0) {
            *out = i;
            return RB_OK;
        }
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", name_of(i));
    }
    return rb_fail(ctx, RB_EINVAL, "unknown %s '%s' (%s)", what, name, list);
}

const char *rb_smoother_name(rb_smoother s) { return (unsigned)s < RB_SMOOTHER_COUNT ? smoother_names[s] : "unknown"; }
const char *rb_coarse_name(rb_coarse c) { return (unsigned)c < RB_COARSE_COUNT ? coarse_names[c] : "unknown"; }
static const char *smoother_name_of(int i) { return smoother_names[i]; }
static const char *coarse_name_of(int i) { return coarse_names[i]; }
static const char *cycle_name_of(int i) { return rb_cycle_name((rb_cycle)i); }

rb_status rb_smoother_parse(rb_context *ctx, const char *name, rb_smoother *s)
{
    int i = 0;
    rb_status st = parse_name(ctx, "rb_smoother_parse", "smoother", name, RB_SMOOTHER_COUNT, smoother_name_of, s ? &i : NULL);
    if (st == RB_OK) *s = (rb_smoother)i;
    return st;
}

rb_status rb_coarse_parse(rb_context *ctx, const char *name, rb_coarse *c)
{
    int i = 0;
    rb_status st = parse_name(ctx, "rb_coarse_parse", "coarse operator", name, RB_COARSE_COUNT, coarse_name_of, c ? &i : NULL);
    if (st == RB_OK) *c = (rb_coarse)i;
    return st;
}

rb_status rb_cycle_parse(rb_context *ctx, const char *name, rb_cycle *c)
{
    int i = 0;
    rb_status st = parse_name(ctx, "rb_cycle_parse", "cycle", name, RB_CYCLE_COUNT, cycle_name_of, c ? &i : NULL);
    if (st == RB_OK) *c = (rb_cycle)i;
    return st;
}

rb_mg_options rb_mg_options_default(int dim)
{
    (void)dim;
    rb_mg_options o = {RB_SMOOTHER_RBGS, 0.0, 2, 1, RB_CYCLE_V, 7, 0.3, RB_COARSE_GALERKIN, -1, -1, false, false};
    return o;
}

size_t rb_mg_levels(const rb_mg *mg) { return mg ? mg->nlevels : 0; }
size_t rb_mg_level_n(const rb_mg *mg, size_t l) { return mg && l < mg->nlevels ? mg->n[l] : 0; }
const rb_op *rb_mg_operator(const rb_mg *mg) { return mg ? mg->A[0] : NULL; }
const rb_vcycle *rb_mg_vcycle(const rb_mg *mg) { return mg ? &mg->vc : NULL; }

static rb_shape grid_shape(int dim, size_t n)
{
    rb_shape s = {1, 1, dim == 3 ? n : 1, dim >= 2 ? n : 1, n};
    return s;
}

rb_shape rb_mg_shape(const rb_mg *mg) { return grid_shape(mg->pb.dim, mg->n[0]); }

/* ---- grid sizes ---------------------------------------------------------------------------- */

static bool valid_size(size_t n)
{
    if (n < 1) return false;
    size_t v = n + 1;
    int k = 0;
    while (v % 2 == 0) v /= 2, k++;
    return k >= 1 && (v == 1 || v == 3 || v == 5 || v == 7);
}

void rb_mg_nearest_sizes(size_t n, size_t *below, size_t *above)
{
    size_t b = n, a = n;
    while (b > 0 && !valid_size(b)) b--;
    while (!valid_size(a)) a++;
    if (below) *below = b;
    if (above) *above = a;
}

/* ---- operators ----------------------------------------------------------------------------- */

/* Point coefficient at full-grid point (z, y, x) (boundary at 0 and n+1) of a dim-D grid of
 * n interior points per direction. */
static double coef_point(const double *coef, int dim, size_t n, long long z, long long y, long long x)
{
    size_t m = n + 2;
    size_t zz = dim == 3 ? (size_t)z : 0, yy = dim >= 2 ? (size_t)y : 0;
    size_t my = dim >= 2 ? m : 1;
    return coef[(zz * my + yy) * m + (size_t)x];
}

static double coef_at(const rb_mg *mg, long long z, long long y, long long x)
{
    return coef_point(mg->coef, mg->pb.dim, mg->pb.n, z, y, x);
}

/* Face coefficient between full-grid points p and q: harmonic mean. */
static double face(double ap, double aq) { return 2.0 * ap * aq / (ap + aq); }

/* The operator -div(a grad u) with point coefficients `coef` (full grid of n + 2 points per
 * direction), 2 dim + 1 point star: the fine operator, and with rediscretised coarse levels
 * theirs. */
static rb_status variable_operator(rb_context *ctx, int d, size_t n, const double *coef, rb_op **out)
{
    double h = 1.0 / (double)(n + 1), ih2 = 1.0 / (h * h);
    rb_shape g = grid_shape(d, n);
    rb_op *A;
    rb_status st = rb_op_varstencil_create(ctx, d, RB_STENCIL_STAR, g, NULL, &A);
    if (st != RB_OK) return st;
    int centre = d;
    size_t pts = rb_shape_count(g);
    /* star taps in order: for d = 3: -z, -y, -x, 0, +x, +y, +z (row-major order of conv.h) */
    for (size_t z = 0; z < g.d; z++)
        for (size_t y = 0; y < g.h; y++)
            for (size_t x = 0; x < g.w; x++) {
                size_t p = (z * g.h + y) * g.w + x;
                /* full-grid coordinates (boundary at 0 and n+1) */
                long long fz = d == 3 ? (long long)z + 1 : 0, fy = d >= 2 ? (long long)y + 1 : 0, fx = (long long)x + 1;
                double ap = coef_point(coef, d, n, fz, fy, fx), diag = 0;
                int t = 0;
                for (int axis = d - 1; axis >= 0; axis--) { /* the minus side: z, y, x for d = 3 */
                    long long qz = fz - (axis == 2), qy = fy - (axis == 1), qx = fx - (axis == 0);
                    double af = face(ap, coef_point(coef, d, n, qz, qy, qx));
                    A->params[(size_t)t * pts + p] = -af * ih2;
                    diag += af * ih2;
                    t++;
                }
                t++; /* centre */
                for (int axis = 0; axis < d; axis++) { /* the plus side: x, y, z */
                    long long qz = fz + (axis == 2), qy = fy + (axis == 1), qx = fx + (axis == 0);
                    double af = face(ap, coef_point(coef, d, n, qz, qy, qx));
                    A->params[(size_t)t * pts + p] = -af * ih2;
                    diag += af * ih2;
                    t++;
                }
                A->params[(size_t)centre * pts + p] = diag;
            }
    *out = A;
    return RB_OK;
}

/* The point coefficients of the coarse grid (nc = (n-1)/2 interior points per direction) by
 * injection: coarse full-grid point I is fine full-grid point 2I. */
static double *inject_coefficients(rb_context *ctx, int d, size_t n, const double *coef)
{
    const size_t nc = (n - 1) / 2, mc = nc + 2, mz = d == 3 ? mc : 1, my = d >= 2 ? mc : 1;
    double *c = rb_malloc(ctx, mz * my * mc * sizeof(double));
    if (c == NULL) return NULL;
    for (size_t z = 0; z < mz; z++)
        for (size_t y = 0; y < my; y++)
            for (size_t x = 0; x < mc; x++)
                c[(z * my + y) * mc + x] = coef_point(coef, d, n, (long long)(2 * z), (long long)(2 * y), (long long)(2 * x));
    return c;
}

static rb_status constant_operator(rb_context *ctx, int d, size_t n, double a, rb_op **out)
{
    rb_status st = rb_op_laplacian_create(ctx, d, 1.0 / (double)(n + 1), out);
    if (st != RB_OK) return st;
    for (size_t i = 0; i < (*out)->nparams; i++) (*out)->params[i] *= a;
    return RB_OK;
}

rb_status rb_mg_transfers_create(rb_context *ctx, int d, rb_op **R, rb_op **P)
{
    if (ctx == NULL) return RB_ENULL;
    if (R == NULL || P == NULL) return rb_fail(ctx, RB_ENULL, "rb_mg_transfers_create: R or P is NULL");
    if (d < 1 || d > 3) return rb_fail(ctx, RB_EINVAL, "rb_mg_transfers_create: dim = %d, must be 1, 2 or 3", d);
    double w[27];
    int t = 0;
    const double c[3] = {0.25, 0.5, 0.25};
    for (int a = 0; a < (d >= 3 ? 3 : 1); a++)
        for (int b = 0; b < (d >= 2 ? 3 : 1); b++)
            for (int e = 0; e < 3; e++) w[t++] = (d >= 3 ? c[a] : 1) * (d >= 2 ? c[b] : 1) * c[e];
    rb_conv_desc desc = rb_conv_desc_default(d, 1, 1);
    desc.stride = 2;
    rb_status st = rb_op_conv_create(ctx, &desc, w, R);
    if (st != RB_OK) return st;
    for (int i = 0; i < t; i++) w[i] *= (double)(1 << d);
    desc.transposed = true;
    st = rb_op_conv_create(ctx, &desc, w, P);
    if (st != RB_OK) rb_op_free(ctx, *R), *R = NULL;
    return st;
}

/* The Galerkin stencil R A P of level l + 1 (summed from the weights of R, A and P). */
static rb_status galerkin(rb_context *ctx, rb_mg *mg, size_t l, rb_op **out)
{
    return rb_op_varstencil_galerkin(ctx, mg->R[l], mg->A[l], mg->P[l], mg->pb.dim, grid_shape(mg->pb.dim, mg->n[l + 1]), out);
}

/* Largest eigenvalue of D^{-1} A on level l by power iteration (the Jacobi
 * operator with f = 0 is -D^{-1} A). */
static rb_status lambda_max(rb_context *ctx, rb_mg *mg, size_t l, double *lmax)
{
    rb_vlevel *lv = &mg->level[l];
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    size_t n = rb_tensor_count(&lv->u);
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        lv->u.data[i] = (double)(s >> 11) * 0x1.0p-53 - 0.5;
    }
    memset(lv->f.data, 0, n * sizeof(double));
    double lam = 0;
    for (int it = 0; it < 40; it++) {
        double nu = rb_tensor_norm2(&lv->u);
        if (!(nu > 0)) break;
        for (size_t i = 0; i < n; i++) lv->u.data[i] /= nu;
        rb_status st = rb_op_apply(ctx, mg->J[l], &lv->u, &lv->r, &mg->work);
        if (st != RB_OK) return st;
        lam = -rb_tensor_dot(&lv->u, &lv->r); /* Rayleigh-like estimate: u^T D^{-1} A u */
        memcpy(lv->u.data, lv->r.data, n * sizeof(double));
    }
    memset(lv->u.data, 0, n * sizeof(double));
    *lmax = fabs(lam);
    return RB_OK;
}

/* Gershgorin bound of the spectrum of D^{-1} A: max over points of sum_t |w_t| / w_centre. */
static double gershgorin(const rb_op *A)
{
    int vd, nt, ce;
    rb_shape g;
    double most = 0;
    if (rb_op_varstencil_info(A, &vd, &nt, &ce, &g)) {
        size_t pts = rb_shape_count(g);
        for (size_t p = 0; p < pts; p++) {
            double s = 0;
            for (int t = 0; t < nt; t++) s += fabs(A->params[(size_t)t * pts + p]);
            s /= fabs(A->params[(size_t)ce * pts + p]);
            if (s > most) most = s;
        }
        return most;
    }
    nt = (int)rb_conv_ntaps(rb_op_conv_desc(A)); /* a constant stencil: the centre is the middle tap */
    for (int t = 0; t < nt; t++) most += fabs(A->params[t]);
    return most / fabs(A->params[(nt - 1) / 2]);
}

/* The Jacobi weight of a level. The stable range omega in (0, 1] rests on D^{-1} A
 * having its spectrum in (0, 2], which holds for the fine star stencils (diagonally
 * dominant M-matrices) and the rediscretised levels. A Galerkin level of rough
 * coefficients can have positive off-diagonal weights and eigenvalues of D^{-1} A
 * up to ~4 (seen with point values spread over 6 orders of magnitude), where damped
 * Jacobi with omega = 0.8 amplifies and the cycle diverges. There the weight is scaled
 * by 2 / g, g >= lambda_max the Gershgorin bound, so omega_l lambda_max <= 2 omega. */
static double jacobi_weight(const rb_op *A, double omega)
{
    double g = gershgorin(A);
    return g > 2.0 + 1e-12 ? omega * 2.0 / g : omega;
}

/* The colours of a Gauss-Seidel sweep on level l. A star stencil couples a point only
 * to the other colour of the red-black grid: red, black (colour.h, with its fused
 * half-sweep). A full 3^d-point stencil (a Galerkin level of point coefficients)
 * couples red points to red points diagonally, so a red-black "sweep" there is a
 * simultaneous update within each colour -- not Gauss-Seidel, and unstable for
 * omega near 2 (it diverged at omega = 1.9 even for a = 1). There the colours are the
 * 2^d parity classes (x mod 2, y mod 2, z mod 2), which no stencil couples: each a
 * residual step of J restricted to the class (rb_op_parity_create). Red classes (even
 * parity sum) first, then black. */
static rb_status gauss_seidel_colours(rb_context *ctx, rb_mg *mg, size_t l)
{
    int vd, nt, ce, d = mg->pb.dim;
    rb_shape g;
    if (!rb_op_varstencil_info(mg->A[l], &vd, &nt, &ce, &g) || nt == 2 * d + 1) {
        mg->ncolours[l] = 2;
        rb_status st = rb_op_colour_create(ctx, mg->J[l], 0, &mg->colour[l][0]);
        if (st == RB_OK) st = rb_op_colour_create(ctx, mg->J[l], 1, &mg->colour[l][1]);
        return st;
    }
    int nc = 0;
    for (int parity = 0; parity < 2; parity++)
        for (int k = 0; k < (1 << d); k++) {
            if (((k & 1) + ((k >> 1) & 1) + ((k >> 2) & 1)) % 2 != parity) continue;
            rb_status st = rb_op_parity_create(ctx, mg->J[l], k, &mg->colour[l][nc]);
            /* the level's operator is fixed from here on: its class weights packed for the kernel */
            if (st == RB_OK) st = rb_op_parity_pack(ctx, mg->colour[l][nc]);
            if (st != RB_OK) return st;
            nc++;
        }
    mg->ncolours[l] = nc;
    return RB_OK;
}

/* Smoothing steps of one level: pre and post sweeps (Chebyshev post: its roots in
 * reverse), and for CG the symmetric post-smoother, the adjoint of pre. */
static rb_status make_steps(rb_context *ctx, rb_mg *mg, size_t l)
{
    rb_mg_options level_opt = mg->opt, *o = &level_opt; /* the finest level: its own step counts */
    if (l == 0 && o->fine_pre >= 0) o->pre = o->fine_pre;
    if (l == 0 && o->fine_post >= 0) o->post = o->fine_post;
    rb_vlevel *lv = &mg->level[l];
    rb_vstep *pre = mg->steps[l][0], *post = mg->steps[l][1], *sym = mg->steps[l][2];
    size_t npre = 0, npost = 0;
    if (o->smoother == RB_SMOOTHER_JACOBI) {
        double w = mg->omega_jacobi[l];
        for (int i = 0; i < o->pre; i++) pre[npre++] = (rb_vstep){mg->J[l], w, NULL};
        for (int i = 0; i < o->post; i++) post[npost++] = (rb_vstep){mg->J[l], w, NULL};
    } else if (o->smoother == RB_SMOOTHER_RBGS) {
        /* Gauss-Seidel over the colours (red-black, or the parity classes): each side's sweeps
         * are one residual step of a colour sweep op (colour.h), which runs them in one pass
         * over the grid; the symmetric post-smoother is the pre-smoother's adjoint, its sweeps
         * with the colours reversed */
        const int nc = mg->ncolours[l];
        const rb_op *fwd[MAX_COLOURS], *rev[MAX_COLOURS];
        for (int c = 0; c < nc; c++) fwd[c] = mg->colour[l][c], rev[c] = mg->colour[l][nc - 1 - c];
        rb_status st = RB_OK;
        if (o->pre > 0) st = rb_op_colour_sweep_create(ctx, fwd, nc, o->omega, o->pre, &mg->sweep[l][0]);
        if (st == RB_OK && o->post > 0) st = rb_op_colour_sweep_create(ctx, fwd, nc, o->omega, o->post, &mg->sweep[l][1]);
        if (st == RB_OK && o->pre > 0) st = rb_op_colour_sweep_create(ctx, rev, nc, o->omega, o->pre, &mg->sweep[l][2]);
        if (st != RB_OK) return st;
        if (o->pre > 0) pre[npre++] = (rb_vstep){mg->sweep[l][0], o->omega, NULL};
        if (o->post > 0) post[npost++] = (rb_vstep){mg->sweep[l][1], o->omega, NULL};
    } else {
        double lmax;
        rb_status st = lambda_max(ctx, mg, l, &lmax);
        if (st != RB_OK) return st;
        double b = 1.1 * lmax, a = o->cheb_ratio * b;
        const double pi = acos(-1.0);
        for (int k = 0; k < o->pre; k++) {
            double theta = 0.5 * (b + a) + 0.5 * (b - a) * cos(pi * (2 * k + 1) / (2.0 * o->pre));
            pre[npre++] = (rb_vstep){mg->J[l], 1.0 / theta, NULL};
        }
        for (int k = o->post - 1; k >= 0; k--) {
            double theta = 0.5 * (b + a) + 0.5 * (b - a) * cos(pi * (2 * k + 1) / (2.0 * o->post));
            post[npost++] = (rb_vstep){mg->J[l], 1.0 / theta, NULL};
        }
    }
    /* the symmetric cycle (for CG) post-smooths with the adjoint of the
     * pre-smoother: the pre steps in reverse order (RB-GS: black, then red) */
    size_t nsym = 0;
    if (mg->sweep[l][2] != NULL) sym[nsym++] = (rb_vstep){mg->sweep[l][2], o->omega, NULL};
    else
        for (size_t i = npre; i-- > 0;) sym[nsym++] = pre[i];
    mg->nsym[l] = nsym;
    mg->nsteps_post[l] = npost;
    lv->pre = pre, lv->npre = npre, lv->post = post, lv->npost = npost;
    return RB_OK;
}

static rb_status coarse_solve(rb_context *ctx, void *data, const rb_tensor *f, rb_tensor *u)
{
    rb_mg *mg = data;
    memcpy(u->data, f->data, mg->ncoarse * sizeof(double));
    /* the _work variant: no NaN scan, so a non-finite right-hand side (an overflowing or
     * diverging cycle) passes through as the linear map it is, and the driver reports it
     * as RB_EDIVERGED with its history -- LAPACKE_dpbtrs refused it as "argument 8" */
    lapack_int info = LAPACKE_dpbtrs_work(LAPACK_COL_MAJOR, 'U', (lapack_int)mg->ncoarse, (lapack_int)mg->kd, 1, mg->band,
                                          (lapack_int)(mg->kd + 1), u->data, (lapack_int)mg->ncoarse);
    if (info != 0) return rb_fail(ctx, RB_ELAPACK, "dpbtrs: argument %d had an illegal value", (int)-info);
    return RB_OK;
}

/* ---- set-up -------------------------------------------------------------------------------- */

static rb_status check_problem(rb_context *ctx, const rb_mg_problem *pb, const rb_mg_options *o)
{
    if (pb == NULL || o == NULL) return rb_fail(ctx, RB_ENULL, "rb_mg_create: %s is NULL", pb ? "options" : "problem");
    if (pb->dim < 1 || pb->dim > 3) return rb_fail(ctx, RB_EINVAL, "rb_mg_create: dim = %d, must be 1, 2 or 3", pb->dim);
    if (!valid_size(pb->n)) {
        size_t lo, hi;
        rb_mg_nearest_sizes(pb->n, &lo, &hi);
        if (lo > 0)
            return rb_fail(ctx, RB_EINVAL, "rb_mg_create: n = %zu is not of the form m 2^k - 1 (m in 1,3,5,7); nearest "
                           "valid sizes: %zu and %zu", pb->n, lo, hi);
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: n = %zu is not of the form m 2^k - 1; nearest valid size: %zu", pb->n, hi);
    }
    size_t m = pb->n + 2, total = m * (pb->dim >= 2 ? m : 1) * (pb->dim == 3 ? m : 1);
    if (pb->n > (pb->dim == 3 ? 2047u : pb->dim == 2 ? 32767u : 1u << 26))
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: n = %zu is too large for dim %d", pb->n, pb->dim);
    if (pb->coef == NULL) {
        if (!(pb->coef_value > 0) || !isfinite(pb->coef_value))
            return rb_fail(ctx, RB_EINVAL, "rb_mg_create: coefficient a = %g must be positive and finite", pb->coef_value);
    } else {
        for (size_t i = 0; i < total; i++)
            if (!(pb->coef[i] > 0) || !isfinite(pb->coef[i]))
                return rb_fail(ctx, RB_EINVAL, "rb_mg_create: coefficient a[%zu] = %g must be positive and finite", i,
                               pb->coef[i]);
    }
    if ((unsigned)o->smoother >= RB_SMOOTHER_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_mg_create: smoother = %d", (int)o->smoother);
    if ((unsigned)o->cycle >= RB_CYCLE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_mg_create: cycle = %d", (int)o->cycle);
    if (o->cycle == RB_CYCLE_DOWN)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: the down-leg (MgNet's) corrects nothing: a solver needs V, W or F");
    if (o->pre < 0 || o->post < 0 || o->pre + o->post < 1 || o->pre > 16 || o->post > 16)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: pre = %d, post = %d smoothing steps (0..16 each, at least one)",
                       o->pre, o->post);
    const int fpre = o->fine_pre >= 0 ? o->fine_pre : o->pre, fpost = o->fine_post >= 0 ? o->fine_post : o->post;
    if (o->fine_pre < -1 || o->fine_post < -1 || o->fine_pre > 16 || o->fine_post > 16 || fpre + fpost < 1)
        return rb_fail(ctx, RB_EINVAL,
                       "rb_mg_create: fine_pre = %d, fine_post = %d smoothing steps on the finest level (-1: pre / post; "
                       "0..16 each, at least one)", o->fine_pre, o->fine_post);
    if (o->fmg_start && fpre != 0)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: fmg_start needs fine_pre = 0 (it is %d): the first cycle's finest "
                       "pass begins with the interpolation and has no pre-smoothing", fpre);
    if (!isfinite(o->omega) || o->omega < 0)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: omega = %g must be finite and >= 0 (0: default)", o->omega);
    if (o->smoother == RB_SMOOTHER_JACOBI && o->omega > 1.0)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: Jacobi omega = %g is outside the stable range (0, 1] "
                       "(eigenvalues of D^-1 A lie in (0, 2))", o->omega);
    if (o->smoother == RB_SMOOTHER_RBGS && o->omega >= 2.0)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: Gauss-Seidel omega = %g is outside the stable range (0, 2)", o->omega);
    if ((unsigned)o->coarse >= RB_COARSE_COUNT)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: coarse = %d is not a coarse-operator kind (0..%d)", (int)o->coarse,
                       RB_COARSE_COUNT - 1);
    if (o->smoother == RB_SMOOTHER_CHEBYSHEV && (!(o->cheb_ratio > 0) || !(o->cheb_ratio < 1)))
        return rb_fail(ctx, RB_EINVAL, "rb_mg_create: cheb_ratio = %g must lie in (0, 1)", o->cheb_ratio);
    return RB_OK;
}

void rb_mg_free(rb_context *ctx, rb_mg *mg)
{
    if (mg == NULL) return;
    for (size_t l = 0; l < MAX_LEVELS; l++) {
        for (int c = 0; c < MAX_COLOURS; c++) rb_op_free(ctx, mg->colour[l][c]);
        rb_op_free(ctx, mg->J[l]);
        for (int k = 0; k < 3; k++) rb_op_free(ctx, mg->sweep[l][k]);
        rb_op_free(ctx, mg->A[l]), rb_op_free(ctx, mg->R[l]), rb_op_free(ctx, mg->P[l]);
        rb_tensor_release(ctx, &mg->level[l].u), rb_tensor_release(ctx, &mg->level[l].f);
        rb_tensor_release(ctx, &mg->level[l].r);
    }
    for (size_t l = 0; l < MAX_LEVELS; l++) {
        rb_op_free(ctx, mg->xs_A[l]), rb_op_free(ctx, mg->xs_R[l]), rb_op_free(ctx, mg->xs_P[l]);
        rb_op_free(ctx, mg->xs_sweep[l][0]), rb_op_free(ctx, mg->xs_sweep[l][1]);
        rb_tensor_release(ctx, &mg->fs[l]);
    }
    rb_tensor_release(ctx, &mg->x), rb_tensor_release(ctx, &mg->r), rb_tensor_release(ctx, &mg->z);
    rb_tensor_release(ctx, &mg->p), rb_tensor_release(ctx, &mg->q);
    rb_free(ctx, mg->band);
    rb_free(ctx, mg->coef);
    rb_arena_release(ctx, &mg->work);
    rb_free(ctx, mg);
}

/* A grid the hierarchy owns, not zeroed. Every level grid is written before it is
 * read (the drivers copy f and u in, the cycle restricts f and zeroes u below the top,
 * r is scratch), so set-up touches none of their pages, and a solve only those it
 * uses (the fused kernels never touch r). */
static rb_status grid_alloc(rb_context *ctx, rb_tensor *t, rb_shape s)
{
    double *d = rb_malloc(ctx, rb_shape_count(s) * sizeof(double));
    if (d == NULL) return RB_ENOMEM;
    *t = (rb_tensor){s, d, true};
    return RB_OK;
}

/* The split levels (see struct rb_mg), where their sweeps' kernel takes them: 2D, RB-GS over a
 * constant 5-point star (the colour sweep ops' red-black kernel). */
static rb_status split_setup(rb_context *ctx, rb_mg *mg)
{
    if (mg->opt.plain_fine || mg->pb.dim != 2 || mg->pb.coef != NULL || mg->opt.smoother != RB_SMOOTHER_RBGS ||
        mg->nlevels < 2)
        return RB_OK;
    memcpy(mg->xs_level, mg->level, mg->nlevels * sizeof *mg->level);
    for (size_t l = 0; l < mg->nlevels; l++) /* views of the hierarchy's grids: rb_mg_free releases those */
        mg->xs_level[l].u.owns = mg->xs_level[l].f.owns = mg->xs_level[l].r.owns = false;
    rb_status st = RB_OK;
    const size_t last = mg->nlevels - 1; /* the coarsest: plain */
    for (size_t l = 0; l < last && st == RB_OK; l++) {
        rb_vlevel *lv = &mg->xs_level[l];
        const bool coarse_split = l + 1 < last;
        if (mg->ncolours[l] != 2) return RB_OK;
        st = grid_alloc(ctx, &mg->fs[l], mg->level[l].f.shape);
        if (st == RB_OK) st = rb_op_xsplit_create(ctx, mg->A[l], true, true, &mg->xs_A[l]);
        if (st == RB_OK) st = rb_op_xsplit_create(ctx, mg->R[l], true, coarse_split, &mg->xs_R[l]);
        if (st == RB_OK) st = rb_op_xsplit_create(ctx, mg->P[l], coarse_split, true, &mg->xs_P[l]);
        for (int k = 0; k < 2 && st == RB_OK; k++) { /* pre, post: one colour sweep op each (or none) */
            if (mg->sweep[l][k] == NULL) continue;
            st = rb_op_xsplit_create(ctx, mg->sweep[l][k], true, true, &mg->xs_sweep[l][k]);
            if (st == RB_OK) st = rb_op_xsplit_rhs(ctx, mg->xs_sweep[l][k], &mg->fs[l], &mg->level[l].f);
            mg->xs_steps[l][k] = (rb_vstep){mg->xs_sweep[l][k], mg->opt.omega, NULL};
        }
        if (st != RB_OK) return st;
        lv->f = mg->fs[l];
        lv->f.owns = false;
        lv->A = mg->xs_A[l], lv->R = mg->xs_R[l], lv->P = mg->xs_P[l];
        lv->pre = &mg->xs_steps[l][0], lv->npre = mg->xs_sweep[l][0] != NULL;
        lv->post = &mg->xs_steps[l][1], lv->npost = mg->xs_sweep[l][1] != NULL;
    }
    mg->vc_split = mg->vc;
    mg->vc_split.level = mg->xs_level;
    st = rb_vcycle_check(ctx, &mg->vc_split);
    size_t need = rb_vcycle_workspace(&mg->vc_split);
    if (st == RB_OK && need + 4096 > mg->work.cap) st = rb_arena_reserve(ctx, &mg->work, need + mg->work.cap);
    mg->split = st == RB_OK;
    return st;
}

static rb_status setup(rb_context *ctx, rb_mg *mg)
{
    const rb_mg_problem *pb = &mg->pb;
    int d = pb->dim;
    rb_status st = RB_OK;
    /* grid sizes: halve while odd and above coarse_max */
    mg->n[0] = pb->n;
    mg->nlevels = 1;
    while (mg->nlevels < MAX_LEVELS && mg->n[mg->nlevels - 1] > mg->opt.coarse_max && mg->n[mg->nlevels - 1] % 2 == 1 &&
           mg->n[mg->nlevels - 1] >= 3) {
        mg->n[mg->nlevels] = (mg->n[mg->nlevels - 1] - 1) / 2;
        mg->nlevels++;
    }
    /* level tensors, transfers, operators (fine to coarse) */
    double *level_coef = mg->coef; /* rediscretised levels: the current level's coefficients */
    for (size_t l = 0; l < mg->nlevels && st == RB_OK; l++) {
        rb_shape s = grid_shape(d, mg->n[l]);
        rb_vlevel *lv = &mg->level[l];
        st = grid_alloc(ctx, &lv->u, s);
        if (st == RB_OK) st = grid_alloc(ctx, &lv->f, s);
        if (st == RB_OK) st = grid_alloc(ctx, &lv->r, s);
        if (st == RB_OK && l + 1 < mg->nlevels) st = rb_mg_transfers_create(ctx, d, &mg->R[l], &mg->P[l]);
        if (st != RB_OK) break;
        if (l == 0) {
            st = pb->coef ? variable_operator(ctx, d, mg->n[0], mg->coef, &mg->A[0])
                          : constant_operator(ctx, d, mg->n[0], pb->coef_value, &mg->A[0]);
        } else if (pb->coef && mg->opt.coarse == RB_COARSE_REDISCRETISE) {
            /* the coefficients injected level by level, each level's operator discretised anew */
            double *c = inject_coefficients(ctx, d, mg->n[l - 1], level_coef);
            if (level_coef != mg->coef) rb_free(ctx, level_coef);
            level_coef = c;
            st = c == NULL ? rb_context_last_status(ctx) : variable_operator(ctx, d, mg->n[l], c, &mg->A[l]);
        } else {
            st = pb->coef ? galerkin(ctx, mg, l - 1, &mg->A[l]) : constant_operator(ctx, d, mg->n[l], pb->coef_value, &mg->A[l]);
        }
        if (st == RB_OK) st = rb_op_jacobi_create(ctx, mg->A[l], &lv->f, &mg->J[l]);
        if (st == RB_OK) st = gauss_seidel_colours(ctx, mg, l);
        if (st == RB_OK) mg->omega_jacobi[l] = jacobi_weight(mg->A[l], mg->opt.omega);
        lv->A = mg->A[l], lv->R = mg->R[l], lv->P = mg->P[l];
    }
    if (level_coef != mg->coef) rb_free(ctx, level_coef);
    if (st != RB_OK) return st;
    /* work memory: the cycle's scratch and the drivers' vectors */
    rb_shape s0 = grid_shape(d, mg->n[0]);
    size_t ws = rb_op_workspace(mg->A[0], s0) + rb_residual_workspace(mg->J[0], s0) +
                rb_residual_workspace(mg->colour[0][0], s0);
    st = rb_arena_reserve(ctx, &mg->work, ws + 4096);
    for (size_t l = 0; l + 1 < mg->nlevels && st == RB_OK; l++) st = make_steps(ctx, mg, l);
    if (st != RB_OK) return st;
    mg->vc = (rb_vcycle){mg->level, mg->nlevels, coarse_solve, mg, mg->opt.cycle, NULL};
    size_t need = rb_vcycle_workspace(&mg->vc);
    if (need + 4096 > mg->work.cap) st = rb_arena_reserve(ctx, &mg->work, need + ws + 4096);
    if (st == RB_OK) st = rb_vcycle_check(ctx, &mg->vc);
    if (st == RB_OK) st = split_setup(ctx, mg);
    /* coarsest level: banded Cholesky, once */
    size_t lc = mg->nlevels - 1;
    if (st == RB_OK) st = rb_ref_band(ctx, mg->A[lc], grid_shape(d, mg->n[lc]), &mg->kd, &mg->band);
    if (st == RB_OK) {
        mg->ncoarse = rb_shape_count(grid_shape(d, mg->n[lc]));
        lapack_int info = LAPACKE_dpbtrf(LAPACK_COL_MAJOR, 'U', (lapack_int)mg->ncoarse, (lapack_int)mg->kd, mg->band,
                                         (lapack_int)(mg->kd + 1));
        if (info > 0)
            st = rb_fail(ctx, RB_ELAPACK, "dpbtrf: the coarsest operator is not positive definite (minor %d)", (int)info);
        else if (info < 0)
            st = rb_fail(ctx, RB_ELAPACK, "dpbtrf: argument %d had an illegal value", (int)-info);
    }
    return st; /* the CG vectors come with the first rb_mg_pcg (cg_vectors) */
}

rb_status rb_mg_create(rb_context *ctx, const rb_mg_problem *pb, const rb_mg_options *opt, rb_mg **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_mg_create: out is NULL");
    rb_status st = check_problem(ctx, pb, opt);
    if (st != RB_OK) return st;
    rb_mg *mg = rb_calloc(ctx, 1, sizeof *mg);
    if (mg == NULL) return RB_ENOMEM;
    mg->pb = *pb;
    mg->opt = *opt;
    if (mg->opt.omega == 0.0)
        mg->opt.omega = opt->smoother == RB_SMOOTHER_JACOBI ? 2.0 * pb->dim / (2.0 * pb->dim + 1.0) : 1.0;
    if (pb->coef != NULL) {
        size_t m = pb->n + 2, total = m * (pb->dim >= 2 ? m : 1) * (pb->dim == 3 ? m : 1);
        mg->coef = rb_malloc(ctx, total * sizeof(double));
        if (mg->coef == NULL) st = RB_ENOMEM;
        else memcpy(mg->coef, pb->coef, total * sizeof(double));
        mg->pb.coef = mg->coef;
    }
    if (st == RB_OK) st = setup(ctx, mg);
    if (st != RB_OK) {
        rb_mg_free(ctx, mg);
        return st;
    }
    *out = mg;
    return RB_OK;
}

/* ---- boundary values ----------------------------------------------------------------------- */

rb_status rb_mg_fold_boundary(rb_context *ctx, const rb_mg *mg, const rb_tensor *g, rb_tensor *f)
{
    if (ctx == NULL) return RB_ENULL;
    if (mg == NULL) return rb_fail(ctx, RB_ENULL, "rb_mg_fold_boundary: mg is NULL");
    int d = mg->pb.dim;
    size_t n = mg->pb.n, m = n + 2;
    rb_shape full = grid_shape(d, m);
    rb_status st = rb_tensor_check(ctx, g, "rb_mg_fold_boundary: g");
    if (st == RB_OK) st = rb_tensor_check(ctx, f, "rb_mg_fold_boundary: f");
    if (st != RB_OK) return st;
    if (!rb_shape_equal(g->shape, full) || !rb_shape_equal(f->shape, grid_shape(d, n))) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "rb_mg_fold_boundary: g must be the full grid %s (with boundary), f the interior %s",
                       rb_shape_format(full, a, sizeof a), rb_shape_format(grid_shape(d, n), b, sizeof b));
    }
    size_t cnt = rb_tensor_count(g);
    for (size_t i = 0; i < cnt; i++)
        if (!isfinite(g->data[i])) return rb_fail(ctx, RB_EINVAL, "rb_mg_fold_boundary: g[%zu] = %g is not finite", i, g->data[i]);
    double h = 1.0 / (double)(n + 1), ih2 = 1.0 / (h * h);
    size_t my = d >= 2 ? m : 1;
    for (size_t z = 0; z < f->shape.d; z++)
        for (size_t y = 0; y < f->shape.h; y++)
            for (size_t x = 0; x < n; x++) {
                long long fz = d == 3 ? (long long)z + 1 : 0, fy = d >= 2 ? (long long)y + 1 : 0, fx = (long long)x + 1;
                double ap = mg->coef ? coef_at(mg, fz, fy, fx) : mg->pb.coef_value, add = 0;
                for (int axis = 0; axis < d; axis++)
                    for (int sgn = -1; sgn <= 1; sgn += 2) {
                        long long qz = fz + (axis == 2) * sgn, qy = fy + (axis == 1) * sgn, qx = fx + (axis == 0) * sgn;
                        long long last = (long long)n + 1;
                        bool boundary = qx == 0 || qx == last || (d >= 2 && (qy == 0 || qy == last)) ||
                                        (d == 3 && (qz == 0 || qz == last));
                        if (!boundary) continue;
                        double af = mg->coef ? face(ap, coef_at(mg, qz, qy, qx)) : ap;
                        add += af * ih2 * g->data[((size_t)qz * my + (size_t)qy) * m + (size_t)qx];
                    }
                f->data[(z * f->shape.h + y) * n + x] += add;
            }
    return RB_OK;
}

/* ---- drivers ------------------------------------------------------------------------------- */

/* Whether x[0 .. n) are all finite, in one pass the compiler vectorises. */
static bool all_finite(const double *x, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad |= !(fabs(x[i]) <= DBL_MAX);
    return !bad;
}

/* f and u on the grid. */
static rb_status check_grid(rb_context *ctx, const rb_mg *mg, const rb_tensor *f, const rb_tensor *u, const char *fn)
{
    if (ctx == NULL) return RB_ENULL;
    if (mg == NULL) return rb_fail(ctx, RB_ENULL, "%s: mg is NULL", fn);
    rb_status st = rb_tensor_check_same(ctx, f, "f", u, "u");
    if (st != RB_OK) return st;
    rb_shape s = rb_mg_shape(mg);
    if (!rb_shape_equal(f->shape, s)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: f has shape %s, the grid is %s", fn, rb_shape_format(f->shape, a, sizeof a),
                       rb_shape_format(s, b, sizeof b));
    }
    return RB_OK;
}

/* f (and u when it is an input: u_in) on the grid and finite. */
static rb_status check_fu(rb_context *ctx, const rb_mg *mg, const rb_tensor *f, const rb_tensor *u, bool u_in, const char *fn)
{
    rb_status st = check_grid(ctx, mg, f, u, fn);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(f);
    if (all_finite(f->data, n) && (!u_in || all_finite(u->data, n))) return RB_OK;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(f->data[i]) || (u_in && !isfinite(u->data[i])))
            return rb_fail(ctx, RB_EINVAL, "%s: %s[%zu] = %g is not finite", fn, isfinite(f->data[i]) ? "u" : "f", i,
                           isfinite(f->data[i]) ? u->data[i] : f->data[i]);
    return RB_OK;
}

/* dst = src[0 .. n) on the context's threads, stored split (xsplit.h) along rows of W values if
 * W > 0, plain if W == 0; dst == NULL: src only read; src == NULL: dst = 0. If sumsq: the plain
 * sum of squares of src (NaN or infinite if src has a NaN or infinity; summed per thread, threads
 * in order); if nonzero: whether src has an entry != 0. */
static void copy_scan(rb_context *ctx, double *dst, const double *src, size_t n, size_t W, double *sumsq, bool *nonzero)
{
    int threads = n >= 65536 ? rb_context_threads(ctx) : 1;
    if (threads > 64) threads = 64;
    double part[64] = {0};
    int nz[64] = {0}, used = 1;
    const size_t unit = W > 0 ? W : 1, units = n / unit;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const size_t T = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t lo = units * t / T * unit, hi = units * (t + 1) / T * unit;
#pragma omp single
        used = (int)T;
        if (src == NULL) {
            memset(dst + lo, 0, (hi - lo) * sizeof(double));
        } else if (W == 0 && sumsq == NULL && nonzero == NULL) {
            memcpy(dst + lo, src + lo, (hi - lo) * sizeof(double));
        } else {
            double s = 0.0;
            int z = 0;
            if (dst == NULL) {
#pragma omp simd reduction(+ : s) reduction(| : z)
                for (size_t i = lo; i < hi; i++) {
                    s += src[i] * src[i];
                    z |= src[i] != 0.0;
                }
            } else if (W == 0) {
#pragma omp simd reduction(+ : s) reduction(| : z)
                for (size_t i = lo; i < hi; i++) {
                    const double v = src[i];
                    dst[i] = v;
                    s += v * v;
                    z |= v != 0.0;
                }
            }
            for (size_t row = lo; dst != NULL && W > 0 && row < hi; row += W) { /* split rows; the row's sums from cache */
                const double *x = src + row;
                rb_xsplit_row(x, dst + row, W, true);
#pragma omp simd reduction(+ : s) reduction(| : z)
                for (size_t i = 0; i < W; i++) {
                    s += x[i] * x[i];
                    z |= x[i] != 0.0;
                }
            }
            part[t] = s, nz[t] = z;
        }
    }
    double s = 0.0;
    int z = 0;
    for (int t = 0; t < used; t++) s += part[t], z |= nz[t];
    if (sumsq != NULL) *sumsq = s;
    if (nonzero != NULL) *nonzero = z != 0;
}

void rb_mg_report_begin(rb_mg_report *rep)
{
    memset(rep, 0, sizeof *rep);
    rep->history[0] = 1.0;
    rep->rel_residual = 1.0;
}

void rb_mg_report_end(rb_mg_report *rep)
{
    int k = rep->cycles;
    if (k < 1) return;
    int first = k / 2 + 1 > k ? k : k / 2 + 1;
    if (k == 1) first = 1;
    double logsum = 0;
    int cnt = 0;
    for (int i = first; i <= k && i < RB_MG_MAX_HISTORY; i++)
        if (rep->history[i - 1] > 0 && rep->history[i] > 0) logsum += log(rep->history[i] / rep->history[i - 1]), cnt++;
    rep->convergence_factor = cnt ? exp(logsum / cnt) : NAN;
}

/* Euclidean norm, scaled so that the squares neither overflow nor underflow: with
 * sum x_i^2 directly, |f| ~ 1e300 gave |f| = inf, every relative residual 0, and an
 * untouched initial guess reported as converged. NaN in x gives NaN. */
static double norm2(const double *x, size_t n)
{
    /* the plain sum of squares (4 partial sums, vectorised) unless it over- or underflows */
    double p[4] = {0, 0, 0, 0};
    size_t j = 0;
    for (; j + 4 <= n; j += 4)
        for (int k = 0; k < 4; k++) p[k] += x[j + (size_t)k] * x[j + (size_t)k];
    for (; j < n; j++) p[0] += x[j] * x[j];
    double plain = (p[0] + p[1]) + (p[2] + p[3]);
    if (plain > 0x1p-900 && plain < 0x1p900) return sqrt(plain);
    double scale = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i])) return NAN;
        scale = fmax(scale, fabs(x[i]));
    }
    if (scale == 0 || isinf(scale)) return scale;
    for (size_t i = 0; i < n; i++) s += (x[i] / scale) * (x[i] / scale);
    return scale * sqrt(s);
}

/* |f - A x| on the finest level into *norm. */
static rb_status residual_norm(rb_context *ctx, rb_mg *mg, const rb_tensor *x, const rb_tensor *f, double *norm)
{
    /* one pass over x and f, the residual not stored (overflow-safe like norm2) */
    return rb_vcycle_residual(ctx, mg->A[0], x, f, NULL, norm, &mg->work);
}

/* Record one more relative residual; returns RB_EDIVERGED when it blew up. */
rb_status rb_mg_report_record(rb_context *ctx, rb_mg_report *rep, double rel, const char *what)
{
    rep->cycles++;
    if (rep->cycles < RB_MG_MAX_HISTORY) rep->history[rep->cycles] = rel;
    rep->rel_residual = rel;
    if (!isfinite(rel) || rel > 1e6)
        return rb_fail(ctx, RB_EDIVERGED, "%s diverged: relative residual %g after %d iterations", what, rel, rep->cycles);
    return RB_OK;
}

rb_status rb_mg_solve(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, double tol, int max_cycles,
                      rb_mg_report *report)
{
    rb_status st = check_grid(ctx, mg, f, u, "rb_mg_solve");
    if (st != RB_OK) return st;
    if (!(tol > 0) || !(tol < 1)) return rb_fail(ctx, RB_EINVAL, "rb_mg_solve: tol = %g must lie in (0, 1)", tol);
    if (max_cycles < 1 || max_cycles >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_solve: max_cycles = %d, must be 1..%d", max_cycles, RB_MG_MAX_HISTORY - 1);
    /* the finest grid stored split where it can be (see struct rb_mg) */
    const rb_vcycle *vc = mg->split ? &mg->vc_split : &mg->vc;
    rb_vlevel *top = &vc->level[0];
    const size_t n = rb_tensor_count(f), W = mg->split ? f->shape.w : 0;
    /* f and u in, in one pass each: the sums of squares say whether they are finite (a
     * NaN or infinity makes them so; then the check that names the entry), and u's
     * nonzeros whether the initial residual is f itself. With the FMG start u is read first
     * and stored only if it is not 0 (from u = 0 the first pass sets u = P u_1). */
    double f2, u2;
    bool u_nonzero;
    copy_scan(ctx, top->f.data, f->data, n, W, &f2, NULL);
    copy_scan(ctx, mg->opt.fmg_start ? NULL : top->u.data, u->data, n, W, &u2, &u_nonzero);
    const bool zero_start = !u_nonzero && vc->nlevels > 1 && top->Pi == NULL;
    const bool fmg_start = zero_start && mg->opt.fmg_start;
    if (mg->opt.fmg_start && u_nonzero) copy_scan(ctx, top->u.data, u->data, n, W, NULL, NULL);
    else if (mg->opt.fmg_start && !fmg_start) copy_scan(ctx, top->u.data, NULL, n, W, NULL, NULL);
    if (!isfinite(f2) || !isfinite(u2)) {
        st = check_fu(ctx, mg, f, u, true, "rb_mg_solve");
        if (st != RB_OK) return st;
    }
    rb_mg_report local, *rep = report ? report : &local;
    rb_mg_report_begin(rep);
    double fn = f2 > 0x1p-900 && f2 < 0x1p900 ? sqrt(f2) : norm2(f->data, n), r0 = fn;
    if (fn == 0.0) { /* the solution is zero */
        memset(u->data, 0, n * sizeof(double));
        rep->rel_residual = 0, rep->converged = true;
        return RB_OK;
    }
    if (u_nonzero) st = residual_norm(ctx, mg, u, f, &r0); /* (the caller's u and f: plain) else f - A 0 = f */
    if (st != RB_OK) return st;
    rep->history[0] = rep->rel_residual = r0 / fn;
    bool restricted = false; /* whether level 1's f holds R (f - A u) (rb_vcycle_run_next) */
    if (fmg_start || (zero_start && top->npre == 0)) {
        /* from u = 0 the first cycle's restriction is R f: no residual pass (the same numbers) */
        st = rb_op_apply(ctx, top->R, &top->f, &vc->level[1].f, &mg->work);
        if (st != RB_OK) return st;
        restricted = true;
    }
    if (fmg_start) { /* the first cycle: level 1 solves R f by full multigrid, then the finest level's up-leg */
        double rn;
        st = rb_vcycle_fmg(ctx, vc, 1, 1, &mg->work);
        if (st == RB_OK) st = rb_vcycle_run_up(ctx, vc, 0, true, &rn, &restricted, &mg->work);
        if (st == RB_OK) st = rb_mg_report_record(ctx, rep, rn / fn, "multigrid");
    }
    while (st == RB_OK && rep->rel_residual > tol && rep->cycles < max_cycles) {
        double rn;
        st = rb_vcycle_run_next(ctx, vc, 0, &rn, &restricted, &mg->work); /* the norm from the last smoothing pass */
        if (st == RB_OK) st = rb_mg_report_record(ctx, rep, rn / fn, "multigrid");
    }
    rb_mg_report_end(rep);
    if (st != RB_OK) return st;
    if (rep->rel_residual > tol)
        return rb_fail(ctx, RB_EMAXITER, "rb_mg_solve: relative residual %.3g > tol %.3g after %d cycles", rep->rel_residual,
                       tol, rep->cycles);
    rep->converged = true;
    if (mg->split) return rb_xsplit(ctx, &top->u, u, false);
    copy_scan(ctx, u->data, top->u.data, n, 0, NULL, NULL);
    return RB_OK;
}

rb_status rb_mg_cycles_to_error(rb_context *ctx, rb_mg *mg, const rb_tensor *f, const rb_tensor *u_ref, double target,
                                int max_cycles, int *cycles, double *errors)
{
    static const char fn[] = "rb_mg_cycles_to_error";
    rb_status st = check_grid(ctx, mg, f, u_ref, fn);
    if (st != RB_OK) return st;
    if (cycles == NULL) return rb_fail(ctx, RB_ENULL, "%s: cycles is NULL", fn);
    if (!(target >= 0) || !isfinite(target)) return rb_fail(ctx, RB_EINVAL, "%s: target = %g, must be finite and >= 0", fn, target);
    if (max_cycles < 1 || max_cycles >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "%s: max_cycles = %d, must be 1..%d", fn, max_cycles, RB_MG_MAX_HISTORY - 1);
    const size_t n = rb_tensor_count(f);
    const double ref = norm2(u_ref->data, n);
    if (!(ref > 0) || !isfinite(ref)) return rb_fail(ctx, RB_EINVAL, "%s: |u_ref| = %g, must be positive and finite", fn, ref);
    rb_vlevel *top = &mg->level[0];
    memcpy(top->f.data, f->data, n * sizeof(double));
    memset(top->u.data, 0, n * sizeof(double));
    int k = 0;
    double e = INFINITY;
    while (st == RB_OK && k < max_cycles && !(e <= target)) {
        st = rb_vcycle_run(ctx, &mg->vc, 0, &mg->work);
        double d = 0;
        for (size_t i = 0; st == RB_OK && i < n; i++) d += (top->u.data[i] - u_ref->data[i]) * (top->u.data[i] - u_ref->data[i]);
        e = sqrt(d) / ref;
        if (st == RB_OK && !isfinite(e)) st = rb_fail(ctx, RB_EDIVERGED, "%s: the error is not finite after cycle %d", fn, k + 1);
        if (st == RB_OK && errors != NULL) errors[k] = e;
        if (st == RB_OK) k++;
    }
    if (st == RB_OK) *cycles = k;
    return st;
}

rb_status rb_mg_fmg(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, int cycles_per_level,
                    rb_mg_report *report)
{
    rb_status st = check_fu(ctx, mg, f, u, false, "rb_mg_fmg");
    if (st != RB_OK) return st;
    if (cycles_per_level < 1 || cycles_per_level > 64)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_fmg: cycles_per_level = %d, must be 1..64", cycles_per_level);
    rb_mg_report local, *rep = report ? report : &local;
    rb_mg_report_begin(rep);
    size_t n = rb_tensor_count(f);
    memcpy(mg->level[0].f.data, f->data, n * sizeof(double));
    st = rb_vcycle_fmg(ctx, &mg->vc, 0, cycles_per_level, &mg->work);
    double fn = norm2(f->data, n), rn = 0;
    if (st == RB_OK) st = residual_norm(ctx, mg, &mg->level[0].u, f, &rn);
    if (st != RB_OK) return st;
    rep->cycles = cycles_per_level;
    rep->rel_residual = fn > 0 ? rn / fn : 0;
    rep->history[1] = rep->rel_residual;
    rep->converged = true;
    memcpy(u->data, mg->level[0].u.data, n * sizeof(double));
    return RB_OK;
}

rb_status rb_mg_precondition(rb_context *ctx, rb_mg *mg, const rb_tensor *r, rb_tensor *z)
{
    if (ctx == NULL) return RB_ENULL;
    if (mg == NULL) return rb_fail(ctx, RB_ENULL, "rb_mg_precondition: mg is NULL");
    rb_status st = rb_tensor_check_same(ctx, r, "r", z, "z");
    if (st != RB_OK) return st;
    if (!rb_shape_equal(r->shape, rb_mg_shape(mg))) return rb_fail(ctx, RB_ESHAPE, "rb_mg_precondition: r is not on the grid");
    rb_vlevel *top = &mg->level[0];
    size_t n = rb_tensor_count(r);
    memcpy(top->f.data, r->data, n * sizeof(double));
    memset(top->u.data, 0, n * sizeof(double));
    st = rb_vcycle_run(ctx, &mg->vc, 0, &mg->work);
    if (st == RB_OK) memcpy(z->data, top->u.data, n * sizeof(double));
    return st;
}


static rb_status mg_precondition(rb_context *ctx, void *data, const rb_tensor *r, rb_tensor *z)
{
    return rb_mg_precondition(ctx, data, r, z);
}

rb_status rb_mg_pcg(rb_context *ctx, rb_mg *mg, const rb_tensor *f, rb_tensor *u, double tol, int max_iter,
                    rb_mg_report *report)
{
    rb_status st = check_fu(ctx, mg, f, u, true, "rb_mg_pcg");
    if (st != RB_OK) return st;
    if (!(tol > 0) || !(tol < 1)) return rb_fail(ctx, RB_EINVAL, "rb_mg_pcg: tol = %g must lie in (0, 1)", tol);
    if (max_iter < 1 || max_iter >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_pcg: max_iter = %d, must be 1..%d", max_iter, RB_MG_MAX_HISTORY - 1);
    rb_mg_report local, *rep = report ? report : &local;
    /* (the symmetric cycle post-smooths with the adjoint of each level's pre-smoothing: fine_post and
     * post do not enter it) */
    if (mg->opt.pre < 1 || mg->opt.fine_pre == 0)
        return rb_fail(ctx, RB_EINVAL, "rb_mg_pcg: the symmetric cycle needs pre-smoothing (pre = %d, fine_pre = %d)",
                       mg->opt.pre, mg->opt.fine_pre);
    rb_tensor *vec[5] = {&mg->x, &mg->r, &mg->z, &mg->p, &mg->q}; /* each written before it is read */
    for (int i = 0; i < 5 && st == RB_OK; i++)
        if (vec[i]->data == NULL) st = grid_alloc(ctx, vec[i], rb_mg_shape(mg));
    if (st != RB_OK) return st;
    /* a symmetric preconditioner: post-smoothing is the adjoint of pre-smoothing */
    for (size_t l = 0; l + 1 < mg->nlevels; l++) mg->level[l].post = mg->steps[l][2], mg->level[l].npost = mg->nsym[l];
    rb_tensor vectors[5] = {mg->x, mg->r, mg->z, mg->p, mg->q};
    st = rb_pcg(ctx, mg->A[0], mg_precondition, mg, f, u, tol, max_iter, vectors, &mg->work, rep, "MG-preconditioned CG");
    for (size_t l = 0; l + 1 < mg->nlevels; l++) mg->level[l].post = mg->steps[l][1], mg->level[l].npost = mg->nsteps_post[l];
    return st;
}

/* CG on the problem scaled by s = |f| (x = u / s, r = (f - A u) / s), so that the
 * inner products stay in range for any finite f; u = s x at the end. */
rb_status rb_pcg(rb_context *ctx, const rb_op *A, rb_precond_fn M, void *data, const rb_tensor *f, rb_tensor *u, double tol,
                 int max_iter, rb_tensor *vectors, rb_arena *work, rb_mg_report *rep, const char *what)
{
    if (ctx == NULL) return RB_ENULL;
    if (A == NULL || M == NULL || vectors == NULL || rep == NULL || what == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_pcg: A, M, vectors, report and what are required");
    rb_status st = rb_tensor_check_same(ctx, f, "f", u, "u");
    for (int i = 0; i < 5 && st == RB_OK; i++) st = rb_tensor_check_same(ctx, f, "f", &vectors[i], "a CG vector");
    if (st != RB_OK) return st;
    if (!(tol > 0) || !(tol < 1)) return rb_fail(ctx, RB_EINVAL, "%s: tol = %g must lie in (0, 1)", what, tol);
    if (max_iter < 1 || max_iter >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "%s: max_iter = %d, must be 1..%d", what, max_iter, RB_MG_MAX_HISTORY - 1);
    rb_mg_report_begin(rep);
    size_t n = rb_tensor_count(f);
    double s = norm2(f->data, n);
    if (s == 0.0) {
        memset(u->data, 0, n * sizeof(double));
        rep->rel_residual = 0, rep->converged = true;
        return RB_OK;
    }
    rb_tensor *x = &vectors[0], *r = &vectors[1], *z = &vectors[2], *p = &vectors[3], *q = &vectors[4];
    st = rb_op_apply(ctx, A, u, q, work); /* r = (f - A u) / s */
    if (st != RB_OK) return st;
    for (size_t i = 0; i < n; i++) r->data[i] = (f->data[i] - q->data[i]) / s, x->data[i] = u->data[i] / s;
    rep->history[0] = rep->rel_residual = norm2(r->data, n);
    st = M(ctx, data, r, z);
    if (st != RB_OK) return st;
    memcpy(p->data, z->data, n * sizeof(double));
    double rz = rb_tensor_dot(r, z);
    while (st == RB_OK && rep->rel_residual > tol && rep->cycles < max_iter) {
        st = rb_op_apply(ctx, A, p, q, work);
        if (st != RB_OK) break;
        double pq = rb_tensor_dot(p, q);
        if (!isfinite(pq)) {
            st = rb_fail(ctx, RB_EDIVERGED, "%s diverged: p^T A p = %g is not finite after %d iterations", what, pq,
                         rep->cycles);
            break;
        }
        if (!(pq > 0)) {
            st = rb_fail(ctx, RB_EDIVERGED, "%s: p^T A p = %g <= 0 (operator or preconditioner not SPD)", what, pq);
            break;
        }
        double alpha = rz / pq;
        for (size_t i = 0; i < n; i++) x->data[i] += alpha * p->data[i], r->data[i] -= alpha * q->data[i];
        st = rb_mg_report_record(ctx, rep, norm2(r->data, n), what);
        if (st != RB_OK || rep->rel_residual <= tol) break;
        st = M(ctx, data, r, z);
        if (st != RB_OK) break;
        double rz_new = rb_tensor_dot(r, z), beta = rz_new / rz;
        rz = rz_new;
        for (size_t i = 0; i < n; i++) p->data[i] = z->data[i] + beta * p->data[i];
    }
    rb_mg_report_end(rep);
    if (st != RB_OK) return st;
    if (rep->rel_residual > tol)
        return rb_fail(ctx, RB_EMAXITER, "%s: relative residual %.3g > tol %.3g after %d iterations", what,
                       rep->rel_residual, tol, rep->cycles);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(s * x->data[i]))
            return rb_fail(ctx, RB_EDIVERGED, "%s: the solution overflows: u[%zu] = %g * %g is not finite", what, i, s,
                           x->data[i]);
    rep->converged = true;
    for (size_t i = 0; i < n; i++) u->data[i] = s * x->data[i];
    return RB_OK;
}
