/* vnet.c — the V-cycle in network mode (vnet.h): learned level operators on the one
 * cycle of src/vcycle.c, taped forward and backward. */
#include "resbridge/vnet.h"

#include <gsl/gsl_rng.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resbridge/chain.h"
#include "resbridge/conv.h"
#include "resbridge/reference.h"
#include "resbridge/residual.h"
#include "resbridge/varstencil.h"

#include "io_internal.h"

#define VNET_MAX_LEVELS 16
#define VNET_MAX_STEPS 8

typedef struct vnet_level {
    rb_op *A, *B, *S, *F, *R, *P, *Pi; /* S = sigma o B o sigma (a chain owning B) or B itself */
    rb_op *bn_r, *bn_b;                /* normalised: S's batch norms (owned by S) */
    rb_op *Rn, *Pin;                   /* normalised with projections: sigma o BN o R, sigma o BN o Pi (chains owning R, Pi) */
    rb_op *bn_rt, *bn_pi;              /* their batch norms */
    rb_vstep pre[VNET_MAX_STEPS], post[VNET_MAX_STEPS];
} vnet_level;

struct rb_vnet {
    rb_vnet_config cfg;
    vnet_level lv[VNET_MAX_LEVELS];
    rb_vlevel level[VNET_MAX_LEVELS];
    rb_vcycle vc;
    /* learned operators (A, S, R, P of every level) and their gradient accumulators */
    rb_op *learned[4 * VNET_MAX_LEVELS];
    double *grad[4 * VNET_MAX_LEVELS];
    size_t nlearned;
    /* coarse solve: LU of the coarsest A (row-major assembly, solved transposed) */
    double *lu;
    lapack_int *ipiv;
    size_t ncoarse;
    rb_arena work;
    rb_vtape tape;
    int taped_cycles;
    rb_tensor du, df; /* the backward's seed and right-hand-side adjoint on level 0 */
    rb_tensor cg[5];  /* CG's vectors, with the first rb_vnet_pcg */
    bool mg_ops;      /* the level operators are a solver's (rb_vnet_use_mg_operators) */
    rb_op *bn[4 * VNET_MAX_LEVELS]; /* the batch norms, level by level (BN_r, BN_B, then BN_R, BN_Pi with projections) */
    bool held[4 * VNET_MAX_LEVELS]; /* switched from tracking to RB_BN_TRAIN by rb_vnet_hold_tracking */
    size_t nbn;
};

rb_vnet_config rb_vnet_config_default(void)
{
    return (rb_vnet_config){.dim = 2, .n = 31, .levels = 3, .channels = 1, .batch = 1, .pre = 1, .post = 1,
                            .act = RB_ACT_IDENTITY, .cycle = RB_CYCLE_V, .coarse_solve = true, .seed = 1};
}

static rb_shape grid(const rb_vnet_config *c, size_t n)
{
    return rb_shape_3d(c->batch, c->channels, c->dim >= 3 ? n : 1, c->dim >= 2 ? n : 1, n);
}

static rb_status check_config(rb_context *ctx, const rb_vnet_config *c)
{
    if (c->dim < 1 || c->dim > 3) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: dim = %d, must be 1, 2 or 3", c->dim);
    if (c->levels < 1 || c->levels > VNET_MAX_LEVELS)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: levels = %zu, must be 1..%d", c->levels, VNET_MAX_LEVELS);
    if (c->channels < 1 || c->batch < 1) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: channels and batch must be >= 1");
    if (c->pre < 0 || c->pre > VNET_MAX_STEPS || c->post < 0 || c->post > VNET_MAX_STEPS)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: pre = %d, post = %d, each must be 0..%d", c->pre, c->post, VNET_MAX_STEPS);
    if ((unsigned)c->act >= RB_ACT_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: unknown activation %d", (int)c->act);
    if ((unsigned)c->cycle >= RB_CYCLE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: unknown cycle %d", (int)c->cycle);
    if ((unsigned)c->norm >= RB_NORM_KIND_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: unknown normalisation %d", (int)c->norm);
    size_t n = c->n;
    for (size_t l = 1; l < c->levels; l++) {
        if (n < 3 || n % 2 == 0)
            return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: n = %zu does not coarsen %zu times (level %zu has %zu points; "
                           "vertex grids need odd n >= 3 to coarsen)", c->n, c->levels - 1, l - 1, n);
        n = (n - 1) / 2;
    }
    if (n < 1) return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: n = %zu is too small", c->n);
    if (c->coarse_solve && c->channels != 1)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: the coarse solve needs C = 1 (C = %zu): smooth the coarsest level instead",
                       c->channels);
    if (c->projection && c->coarse_solve)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: a projection makes a network, not a solver: smooth the coarsest level");
    if (!c->coarse_solve && c->pre == 0)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_create: the coarsest level is neither solved nor smoothed (pre = 0)");
    return RB_OK;
}

static rb_status conv(rb_context *ctx, const rb_vnet_config *c, int stride, bool transposed, gsl_rng *rng, rb_op **out)
{
    rb_conv_desc d = rb_conv_desc_default(c->dim, c->channels, c->channels);
    d.stride = stride, d.transposed = transposed;
    rb_status st = rb_op_conv_create(ctx, &d, NULL, out);
    if (st != RB_OK) return st;
    const double bound = 1.0 / sqrt((double)(c->channels * rb_conv_ntaps(&d)));
    for (size_t i = 0; i < (*out)->nparams; i++) (*out)->params[i] = bound * (2 * gsl_rng_uniform(rng) - 1);
    return RB_OK;
}

/* sigma(BN(.)) appended to parts[*n ..] (the batch norm, if normalised, into *bn; batch norm and
 * ReLU fused where sigma is the ReLU; no sigma for the identity). */
static rb_status append_sigma(rb_context *ctx, const rb_vnet_config *c, rb_op **parts, size_t *n, rb_op **bn)
{
    const bool norm = c->norm != RB_NORM_NONE, fused = norm && c->act == RB_ACT_RELU;
    rb_status st = RB_OK;
    if (norm) {
        st = fused ? rb_op_batchnorm_relu_create(ctx, c->channels, 1e-5, 0.1, &parts[*n])
                   : rb_op_batchnorm_create(ctx, c->channels, 1e-5, 0.1, &parts[*n]);
        *bn = parts[(*n)++];
    }
    if (st == RB_OK && !fused && c->act != RB_ACT_IDENTITY) st = rb_op_activation_create(ctx, c->act, &parts[(*n)++]);
    return st;
}

/* The chain of parts[0 .. n) into *out; on failure every part but `keep` is freed and the
 * batch norms named in bn[0 .. nbn) are cleared. */
static rb_status chain_of(rb_context *ctx, rb_op **parts, size_t n, const rb_op *keep, rb_op **out, rb_op ***bn, size_t nbn,
                          rb_status st)
{
    if (st == RB_OK) st = rb_op_chain_create(ctx, parts, n, out);
    if (st != RB_OK) {
        for (size_t i = 0; i < n; i++)
            if (parts[i] != keep) rb_op_free(ctx, parts[i]);
        for (size_t i = 0; i < nbn; i++) *bn[i] = NULL;
    }
    return st;
}

/* S = sigma o B o sigma (a chain taking B), or B; normalised, sigma o BN_B o B o sigma o BN_r
 * (v->bn_r, v->bn_b). */
static rb_status smoother_branch(rb_context *ctx, const rb_vnet_config *c, rb_op *B, vnet_level *v)
{
    if (c->norm == RB_NORM_NONE && c->act == RB_ACT_IDENTITY) return v->S = B, RB_OK;
    rb_op *parts[5] = {NULL}, **bn[2] = {&v->bn_r, &v->bn_b};
    size_t n = 0;
    rb_status st = append_sigma(ctx, c, parts, &n, bn[0]);
    parts[n++] = B;
    if (st == RB_OK) st = append_sigma(ctx, c, parts, &n, bn[1]);
    return chain_of(ctx, parts, n, B, &v->S, bn, 2, st);
}

/* MgNet's normalised transfers (nets with projections): sigma o BN o T, a chain taking T. */
static rb_status normalised_transfer(rb_context *ctx, const rb_vnet_config *c, rb_op *T, rb_op **out, rb_op **bn)
{
    rb_op *parts[3] = {T, NULL, NULL};
    size_t n = 1;
    rb_status st = append_sigma(ctx, c, parts, &n, bn);
    return chain_of(ctx, parts, n, T, out, &bn, 1, st);
}

static rb_status coarse_solve(rb_context *ctx, void *data, const rb_tensor *f, rb_tensor *u, char trans)
{
    const rb_vnet *net = data;
    const size_t m = net->ncoarse, nrhs = rb_tensor_count(f) / m;
    memcpy(u->data, f->data, rb_tensor_count(f) * sizeof(double));
    lapack_int info = LAPACKE_dgetrs_work(LAPACK_COL_MAJOR, trans, (lapack_int)m, (lapack_int)nrhs, net->lu, (lapack_int)m,
                                          net->ipiv, u->data, (lapack_int)m);
    if (info != 0) return rb_fail(ctx, RB_ELAPACK, "dgetrs: argument %d had an illegal value", (int)-info);
    return RB_OK;
}
/* The assembly is row-major, so LAPACK (column-major) holds A^T: A^{-1} is its 'T' solve. */
static rb_status solve_A(rb_context *ctx, void *data, const rb_tensor *f, rb_tensor *u) { return coarse_solve(ctx, data, f, u, 'T'); }
static rb_status solve_At(rb_context *ctx, void *data, const rb_tensor *f, rb_tensor *u) { return coarse_solve(ctx, data, f, u, 'N'); }

rb_status rb_vnet_refresh(rb_context *ctx, rb_vnet *net)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_refresh: net is NULL");
    if (!net->cfg.coarse_solve) return RB_OK;
    const size_t lc = net->cfg.levels - 1, m = net->ncoarse;
    rb_shape one = rb_vnet_shape(net, lc);
    one.n = 1;
    rb_status st = rb_ref_assemble(ctx, net->level[lc].A, one, net->lu);
    if (st != RB_OK) return st;
    lapack_int info = LAPACKE_dgetrf(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)m, net->lu, (lapack_int)m, net->ipiv);
    if (info > 0) return rb_fail(ctx, RB_ELAPACK, "dgetrf: the coarsest A is singular (U(%d,%d) = 0)", (int)info, (int)info);
    if (info < 0) return rb_fail(ctx, RB_ELAPACK, "dgetrf: argument %d had an illegal value", (int)-info);
    return RB_OK;
}

static rb_status build(rb_context *ctx, rb_vnet *net, gsl_rng *rng)
{
    const rb_vnet_config *c = &net->cfg;
    rb_status st = RB_OK;
    size_t n = c->n;
    for (size_t l = 0; l < c->levels && st == RB_OK; l++, n = (n - 1) / 2) {
        vnet_level *v = &net->lv[l];
        rb_vlevel *lv = &net->level[l];
        const rb_shape s = grid(c, n);
        const bool coarsest = l + 1 == c->levels;
        st = rb_tensor_alloc(ctx, &lv->u, s);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &lv->f, s);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &lv->r, s);
        if (st == RB_OK) st = conv(ctx, c, 1, false, rng, &v->A);
        /* a solved coarsest level's A is factorised, not learned (the solve's adjoint reaches f only) */
        if (st == RB_OK && !(coarsest && c->coarse_solve)) net->learned[net->nlearned++] = v->A;
        if (st != RB_OK || (coarsest && c->coarse_solve)) {
            lv->A = v->A;
            continue;
        }
        rb_op *B = NULL;
        st = conv(ctx, c, 1, false, rng, &B);
        if (st == RB_OK) st = smoother_branch(ctx, c, B, v);
        if (st != RB_OK) {
            rb_op_free(ctx, B);
            break;
        }
        v->B = B;
        net->learned[net->nlearned++] = v->S;
        if (v->bn_r != NULL) net->bn[net->nbn++] = v->bn_r, net->bn[net->nbn++] = v->bn_b;
        st = rb_op_smoother_create(ctx, v->A, v->S, &lv->f, &v->F);
        const bool norm_transfers = c->norm == RB_NORM_BATCH_ALL && c->projection;
        if (st == RB_OK && !coarsest) st = conv(ctx, c, 2, false, rng, &v->R);
        if (st == RB_OK && !coarsest && norm_transfers) st = normalised_transfer(ctx, c, v->R, &v->Rn, &v->bn_rt);
        if (st == RB_OK && !coarsest) net->learned[net->nlearned++] = v->Rn ? v->Rn : v->R;
        const bool prolong = !coarsest && c->cycle != RB_CYCLE_DOWN; /* the down-leg prolongs nothing */
        if (st == RB_OK && prolong) st = conv(ctx, c, 2, true, rng, &v->P);
        if (st == RB_OK && prolong) net->learned[net->nlearned++] = v->P;
        if (st == RB_OK && !coarsest && c->projection) st = conv(ctx, c, 2, false, rng, &v->Pi);
        if (st == RB_OK && v->Pi != NULL && norm_transfers) st = normalised_transfer(ctx, c, v->Pi, &v->Pin, &v->bn_pi);
        if (st == RB_OK && v->Pi != NULL) net->learned[net->nlearned++] = v->Pin ? v->Pin : v->Pi;
        if (st != RB_OK) break;
        if (v->bn_rt != NULL) net->bn[net->nbn++] = v->bn_rt;
        if (v->bn_pi != NULL) net->bn[net->nbn++] = v->bn_pi;
        for (int k = 0; k < c->pre; k++) v->pre[k] = (rb_vstep){v->F, 1.0, v->S};
        for (int k = 0; k < c->post && !coarsest; k++) v->post[k] = (rb_vstep){v->F, 1.0, v->S};
        lv->A = v->A, lv->R = v->Rn ? v->Rn : v->R, lv->P = v->P, lv->Pi = v->Pin ? v->Pin : v->Pi;
        lv->pre = v->pre, lv->npre = (size_t)c->pre;
        lv->post = v->post, lv->npost = coarsest ? 0 : (size_t)c->post;
    }
    if (st != RB_OK) return st;
    for (size_t i = 0; i < net->nlearned; i++) {
        net->grad[i] = rb_calloc(ctx, net->learned[i]->nparams ? net->learned[i]->nparams : 1, sizeof(double));
        if (net->grad[i] == NULL) return RB_ENOMEM;
    }
    net->vc = (rb_vcycle){net->level, c->levels, NULL, NULL, c->cycle, NULL};
    if (c->coarse_solve) {
        net->ncoarse = rb_shape_count(rb_vnet_shape(net, c->levels - 1)) / c->batch;
        net->lu = rb_calloc(ctx, net->ncoarse * net->ncoarse, sizeof(double));
        net->ipiv = rb_calloc(ctx, net->ncoarse, sizeof(lapack_int));
        if (net->lu == NULL || net->ipiv == NULL) return RB_ENOMEM;
        net->vc.coarse_solve = solve_A, net->vc.coarse_adjoint = solve_At, net->vc.coarse_data = net;
        st = rb_vnet_refresh(ctx, net);
    }
    if (st == RB_OK) st = rb_vcycle_check(ctx, &net->vc);
    size_t w = rb_vcycle_backward_workspace(&net->vc, 0), fw = rb_vcycle_workspace(&net->vc);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &net->work, (w > fw ? w : fw) + 4096);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->du, grid(c, c->n));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->df, grid(c, c->n));
    return st;
}

rb_status rb_vnet_create(rb_context *ctx, const rb_vnet_config *cfg, rb_vnet **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (cfg == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_create: cfg or out is NULL");
    rb_status st = check_config(ctx, cfg);
    if (st != RB_OK) return st;
    rb_vnet *net = rb_calloc(ctx, 1, sizeof *net);
    if (net == NULL) return RB_ENOMEM;
    net->cfg = *cfg;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (rng == NULL) {
        rb_free(ctx, net);
        return rb_fail(ctx, RB_ENOMEM, "rb_vnet_create: no random number generator");
    }
    gsl_rng_set(rng, cfg->seed);
    st = build(ctx, net, rng);
    gsl_rng_free(rng);
    if (st != RB_OK) {
        rb_vnet_free(ctx, net);
        return st;
    }
    *out = net;
    return RB_OK;
}

void rb_vnet_free(rb_context *ctx, rb_vnet *net)
{
    if (net == NULL) return;
    for (size_t l = 0; l < VNET_MAX_LEVELS; l++) {
        vnet_level *v = &net->lv[l];
        rb_op_free(ctx, v->F);
        if (v->S != v->B) rb_op_free(ctx, v->S); /* the chain frees B */
        else rb_op_free(ctx, v->B);
        rb_op_free(ctx, v->A), rb_op_free(ctx, v->P);
        rb_op_free(ctx, v->Rn ? v->Rn : v->R), rb_op_free(ctx, v->Pin ? v->Pin : v->Pi); /* a chain frees its transfer */
        rb_tensor_release(ctx, &net->level[l].u), rb_tensor_release(ctx, &net->level[l].f), rb_tensor_release(ctx, &net->level[l].r);
    }
    for (size_t i = 0; i < net->nlearned; i++) rb_free(ctx, net->grad[i]);
    rb_free(ctx, net->lu), rb_free(ctx, net->ipiv);
    rb_arena_release(ctx, &net->work);
    rb_vtape_release(ctx, &net->tape);
    rb_tensor_release(ctx, &net->du), rb_tensor_release(ctx, &net->df);
    for (int i = 0; i < 5; i++) rb_tensor_release(ctx, &net->cg[i]);
    rb_free(ctx, net);
}

const rb_vnet_config *rb_vnet_config_of(const rb_vnet *net) { return net ? &net->cfg : NULL; }

rb_op *rb_vnet_op(const rb_vnet *net, size_t level, rb_vnet_part part)
{
    if (net == NULL || level >= net->cfg.levels) return NULL;
    const vnet_level *v = &net->lv[level];
    switch (part) {
    case RB_VNET_A: return (rb_op *)net->level[level].A; /* the net's own, or the solver's (rb_vnet_use_mg_operators) */
    case RB_VNET_B: return v->B;
    case RB_VNET_R: return v->R;
    case RB_VNET_P: return v->P;
    case RB_VNET_PI: return v->Pi;
    case RB_VNET_BN_R: return v->bn_r;
    case RB_VNET_BN_B: return v->bn_b;
    case RB_VNET_BN_RT: return v->bn_rt;
    case RB_VNET_BN_PI: return v->bn_pi;
    default: return NULL;
    }
}

rb_shape rb_vnet_shape(const rb_vnet *net, size_t level)
{
    if (net == NULL || level >= net->cfg.levels) return (rb_shape){0, 0, 0, 0, 0};
    return net->level[level].u.shape;
}

const rb_vcycle *rb_vnet_vcycle(const rb_vnet *net) { return net ? &net->vc : NULL; }

rb_status rb_vnet_set_step(rb_context *ctx, rb_vnet *net, double h)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_set_step: net is NULL");
    if (!isfinite(h)) return rb_fail(ctx, RB_EINVAL, "rb_vnet_set_step: h = %g is not finite", h);
    for (size_t l = 0; l < net->cfg.levels; l++) {
        for (int k = 0; k < VNET_MAX_STEPS; k++) net->lv[l].pre[k].h = h, net->lv[l].post[k].h = h;
    }
    return RB_OK;
}

rb_status rb_vnet_set_poisson(rb_context *ctx, rb_vnet *net, double omega)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_set_poisson: net is NULL");
    if (net->cfg.channels != 1) return rb_fail(ctx, RB_EINVAL, "rb_vnet_set_poisson: needs C = 1, the net has %zu", net->cfg.channels);
    if (net->mg_ops) return rb_fail(ctx, RB_EINVAL, "rb_vnet_set_poisson: the net runs on a solver's operators (rb_vnet_use_mg_operators)");
    const int d = net->cfg.dim;
    rb_status st = RB_OK;
    rb_op *R = NULL, *P = NULL;
    st = rb_mg_transfers_create(ctx, d, &R, &P);
    for (size_t l = 0; l < net->cfg.levels && st == RB_OK; l++) {
        vnet_level *v = &net->lv[l];
        const size_t n = rb_vnet_shape(net, l).w;
        rb_op *L = NULL;
        st = rb_op_laplacian_create(ctx, d, 1.0 / (double)(n + 1), &L);
        if (st != RB_OK) break;
        /* the star's taps into the full 3^d kernel: tap (dz, dy, dx) of the star sits where the
         * full kernel has it (both row-major over the offsets) */
        const size_t full = v->A->nparams;
        memset(v->A->params, 0, full * sizeof(double));
        size_t t = 0;
        double centre = 0;
        for (size_t k = 0; k < full; k++) {
            size_t kk = k;
            int dist = 0;
            for (int a = 0; a < d; a++, kk /= 3) dist += abs((int)(kk % 3) - 1);
            if (dist <= 1) {
                v->A->params[k] = L->params[t++];
                if (dist == 0) centre = v->A->params[k];
            }
        }
        rb_op_free(ctx, L);
        if (v->B != NULL) {
            memset(v->B->params, 0, v->B->nparams * sizeof(double));
            v->B->params[full / 2] = 1.0 / centre;
        }
        if (v->R != NULL) memcpy(v->R->params, R->params, R->nparams * sizeof(double));
        if (v->P != NULL) memcpy(v->P->params, P->params, P->nparams * sizeof(double));
    }
    rb_op_free(ctx, R), rb_op_free(ctx, P);
    if (st == RB_OK) st = rb_vnet_set_step(ctx, net, omega);
    if (st == RB_OK) st = rb_vnet_refresh(ctx, net);
    return st;
}

static rb_status check_grid(rb_context *ctx, const rb_vnet *net, const rb_tensor *t, const char *name, const char *fn)
{
    rb_status st = rb_tensor_check(ctx, t, name);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(t->shape, net->level[0].u.shape)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: %s has shape %s, the net's grid is %s", fn, name, rb_shape_format(t->shape, a, sizeof a),
                       rb_shape_format(net->level[0].u.shape, b, sizeof b));
    }
    return RB_OK;
}

rb_status rb_vnet_forward(rb_context *ctx, rb_vnet *net, const rb_tensor *f, const rb_tensor *u0, rb_tensor *u, int cycles,
                          bool taped)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_forward: net is NULL");
    rb_status st = check_grid(ctx, net, f, "f", "rb_vnet_forward");
    if (st == RB_OK && u0 != NULL) st = check_grid(ctx, net, u0, "u0", "rb_vnet_forward");
    if (st == RB_OK) st = check_grid(ctx, net, u, "u", "rb_vnet_forward");
    if (st != RB_OK) return st;
    if (cycles < 1 || cycles > 1000) return rb_fail(ctx, RB_EINVAL, "rb_vnet_forward: cycles = %d, must be 1..1000", cycles);
    rb_vlevel *top = &net->level[0];
    const size_t n = rb_tensor_count(f);
    net->taped_cycles = 0;
    if (taped) {
        size_t need = (size_t)cycles * rb_vcycle_tape_bytes(&net->vc, 0);
        if (net->tape.mem.cap < need) {
            rb_vtape_release(ctx, &net->tape);
            st = rb_vtape_init(ctx, &net->tape, need);
            if (st != RB_OK) return st;
        }
        rb_vtape_clear(&net->tape);
    }
    memcpy(top->f.data, f->data, n * sizeof(double));
    if (u0 != NULL) memcpy(top->u.data, u0->data, n * sizeof(double));
    else memset(top->u.data, 0, n * sizeof(double));
    for (int k = 0; k < cycles && st == RB_OK; k++)
        st = taped ? rb_vcycle_run_taped(ctx, &net->vc, 0, &net->tape, &net->work) : rb_vcycle_run(ctx, &net->vc, 0, &net->work);
    if (st != RB_OK) return st;
    if (taped) net->taped_cycles = cycles;
    memcpy(u->data, top->u.data, n * sizeof(double));
    return RB_OK;
}

static double *grad_of(void *user, const rb_op *op) { return rb_vnet_grad(user, op); }

rb_status rb_vnet_backward_levels(rb_context *ctx, rb_vnet *net, const rb_tensor *const *seeds, rb_tensor *du0, rb_tensor *df)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || seeds == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_backward: net or seeds is NULL");
    rb_status st = RB_OK;
    for (size_t l = 0; l < net->cfg.levels && st == RB_OK; l++)
        if (seeds[l] != NULL) st = rb_tensor_check_same(ctx, &net->level[l].u, "the level's grid", seeds[l], "du");
    if (st == RB_OK && du0 != NULL) st = check_grid(ctx, net, du0, "du0", "rb_vnet_backward");
    if (st == RB_OK && df != NULL) st = check_grid(ctx, net, df, "df", "rb_vnet_backward");
    if (st != RB_OK) return st;
    if (net->taped_cycles < 1) return rb_fail(ctx, RB_EINVAL, "rb_vnet_backward: no taped rb_vnet_forward to go back through");
    const size_t n = rb_tensor_count(&net->du);
    if (seeds[0] != NULL) memcpy(net->du.data, seeds[0]->data, n * sizeof(double));
    else memset(net->du.data, 0, n * sizeof(double));
    memset(net->df.data, 0, n * sizeof(double));
    /* the seeds of the other levels apply to the last cycle's outputs only; the smoothers'
     * recomputation uses the batch statistics again, and moves no running statistics */
    rb_vnet_hold_tracking(ctx, net, true);
    for (bool last = true; net->taped_cycles > 0 && st == RB_OK; net->taped_cycles--, last = false)
        st = rb_vcycle_backward(ctx, &net->vc, 0, &net->tape, &net->du, &net->df, last ? seeds : NULL, grad_of, net, &net->work);
    rb_vnet_hold_tracking(ctx, net, false);
    net->taped_cycles = 0;
    if (st != RB_OK) return st;
    if (du0 != NULL) memcpy(du0->data, net->du.data, n * sizeof(double));
    if (df != NULL) memcpy(df->data, net->df.data, n * sizeof(double));
    return RB_OK;
}

rb_status rb_vnet_backward(rb_context *ctx, rb_vnet *net, const rb_tensor *du, rb_tensor *du0, rb_tensor *df)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_backward: net is NULL");
    rb_status st = check_grid(ctx, net, du, "du", "rb_vnet_backward");
    if (st != RB_OK) return st;
    const rb_tensor *seeds[VNET_MAX_LEVELS] = {du};
    return rb_vnet_backward_levels(ctx, net, seeds, du0, df);
}

size_t rb_vnet_nbn(const rb_vnet *net) { return net ? net->nbn : 0; }

rb_op *rb_vnet_bn(const rb_vnet *net, size_t i) { return net && i < net->nbn ? net->bn[i] : NULL; }

rb_status rb_vnet_set_mode(rb_context *ctx, rb_vnet *net, rb_bn_mode mode)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_set_mode: net is NULL");
    if ((unsigned)mode >= RB_BN_MODE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vnet_set_mode: mode = %d", (int)mode);
    for (size_t i = 0; i < net->nbn; i++) {
        rb_op_batchnorm_set_mode(ctx, net->bn[i], mode);
        net->held[i] = false;
    }
    return RB_OK;
}

rb_status rb_vnet_hold_tracking(rb_context *ctx, rb_vnet *net, bool hold)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_hold_tracking: net is NULL");
    for (size_t i = 0; i < net->nbn; i++) {
        if (hold && rb_op_batchnorm_mode(net->bn[i]) == RB_BN_TRAIN_TRACK) {
            net->held[i] = true;
            rb_op_batchnorm_set_mode(ctx, net->bn[i], RB_BN_TRAIN);
        } else if (!hold && net->held[i]) {
            net->held[i] = false;
            rb_op_batchnorm_set_mode(ctx, net->bn[i], RB_BN_TRAIN_TRACK);
        }
    }
    return RB_OK;
}

rb_status rb_vnet_set_rows(rb_context *ctx, rb_vnet *net, size_t rows)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_set_rows: net is NULL");
    if (rows < 1 || rows > net->cfg.batch)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_set_rows: rows = %zu, the net holds 1..%zu samples", rows, net->cfg.batch);
    net->taped_cycles = 0;
    const size_t was = net->level[0].u.shape.n;
    if (was == rows) return RB_OK;
    for (int pass = 0; pass < 2; pass++) { /* pass 1: back to `was` after a failure */
        const size_t n = pass == 0 ? rows : was;
        for (size_t l = 0; l < net->cfg.levels; l++) {
            rb_vlevel *lv = &net->level[l];
            lv->u.shape.n = lv->f.shape.n = lv->r.shape.n = n;
        }
        net->du.shape.n = net->df.shape.n = n;
        if (pass == 1) return rb_context_last_status(ctx);
        /* the smoothing operators hold f's shape: new ones, all made before any is replaced */
        rb_op *F[VNET_MAX_LEVELS] = {NULL};
        rb_status st = RB_OK;
        for (size_t l = 0; l < net->cfg.levels && st == RB_OK; l++)
            if (net->lv[l].F != NULL) st = rb_op_smoother_create(ctx, net->level[l].A, net->lv[l].S, &net->level[l].f, &F[l]);
        if (st != RB_OK) {
            for (size_t l = 0; l < net->cfg.levels; l++) rb_op_free(ctx, F[l]);
            continue;
        }
        for (size_t l = 0; l < net->cfg.levels; l++) {
            vnet_level *v = &net->lv[l];
            if (F[l] == NULL) continue;
            rb_op_free(ctx, v->F);
            v->F = F[l];
            for (int k = 0; k < VNET_MAX_STEPS; k++) v->pre[k].F = v->post[k].F = F[l];
        }
        break;
    }
    return RB_OK;
}

const rb_tensor *rb_vnet_level_u(const rb_vnet *net, size_t level)
{
    return net != NULL && level < net->cfg.levels ? &net->level[level].u : NULL;
}

double *rb_vnet_grad(const rb_vnet *net, const rb_op *op)
{
    if (net == NULL || op == NULL || op->nparams == 0) return NULL;
    for (size_t i = 0; i < net->nlearned; i++) {
        const rb_op *o = net->learned[i];
        if (op->params >= o->params && op->params < o->params + o->nparams) return net->grad[i] + (op->params - o->params);
    }
    return NULL;
}

size_t rb_vnet_nlearned(const rb_vnet *net) { return net ? net->nlearned : 0; }

rb_op *rb_vnet_learned(const rb_vnet *net, size_t i) { return net && i < net->nlearned ? net->learned[i] : NULL; }

void rb_vnet_zero_grad(rb_vnet *net)
{
    for (size_t i = 0; net != NULL && i < net->nlearned; i++) memset(net->grad[i], 0, net->learned[i]->nparams * sizeof(double));
}

rb_status rb_vnet_solve(rb_context *ctx, rb_vnet *net, const rb_tensor *f, rb_tensor *u, double tol, int max_cycles,
                        rb_mg_report *report)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_solve: net is NULL");
    rb_status st = check_grid(ctx, net, f, "f", "rb_vnet_solve");
    if (st == RB_OK) st = check_grid(ctx, net, u, "u", "rb_vnet_solve");
    if (st != RB_OK) return st;
    if (!(tol > 0) || !(tol < 1)) return rb_fail(ctx, RB_EINVAL, "rb_vnet_solve: tol = %g must lie in (0, 1)", tol);
    if (max_cycles < 1 || max_cycles >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_solve: max_cycles = %d, must be 1..%d", max_cycles, RB_MG_MAX_HISTORY - 1);
    rb_mg_report local, *rep = report ? report : &local;
    rb_mg_report_begin(rep);
    rb_vlevel *top = &net->level[0];
    const size_t n = rb_tensor_count(f);
    memcpy(top->f.data, f->data, n * sizeof(double));
    memcpy(top->u.data, u->data, n * sizeof(double));
    rb_tensor zero = top->r;
    memset(zero.data, 0, n * sizeof(double));
    double fn, rn;
    st = rb_vcycle_residual(ctx, top->A, &zero, &top->f, NULL, &fn, &net->work);
    if (st == RB_OK) st = rb_vcycle_residual(ctx, top->A, &top->u, &top->f, NULL, &rn, &net->work);
    if (st != RB_OK) return st;
    if (!isfinite(fn)) return rb_fail(ctx, RB_EINVAL, "rb_vnet_solve: f is not finite");
    if (fn == 0.0) {
        memset(u->data, 0, n * sizeof(double));
        rep->rel_residual = 0, rep->converged = true;
        return RB_OK;
    }
    rep->history[0] = rep->rel_residual = rn / fn;
    while (st == RB_OK && rep->rel_residual > tol && rep->cycles < max_cycles) {
        st = rb_vcycle_run_norm(ctx, &net->vc, 0, &rn, &net->work);
        if (st == RB_OK) st = rb_mg_report_record(ctx, rep, rn / fn, "network-mode cycle");
    }
    rb_mg_report_end(rep);
    if (st != RB_OK) return st;
    if (rep->rel_residual > tol)
        return rb_fail(ctx, RB_EMAXITER, "rb_vnet_solve: relative residual %.3g > tol %.3g after %d cycles", rep->rel_residual, tol,
                       rep->cycles);
    rep->converged = true;
    memcpy(u->data, top->u.data, n * sizeof(double));
    return RB_OK;
}

/* z = one cycle from zero for right-hand side r */
static rb_status precondition(rb_context *ctx, void *data, const rb_tensor *r, rb_tensor *z)
{
    rb_vnet *net = data;
    rb_vlevel *top = &net->level[0];
    const size_t n = rb_tensor_count(r);
    memcpy(top->f.data, r->data, n * sizeof(double));
    memset(top->u.data, 0, n * sizeof(double));
    rb_status st = rb_vcycle_run(ctx, &net->vc, 0, &net->work);
    if (st == RB_OK) memcpy(z->data, top->u.data, n * sizeof(double));
    return st;
}

rb_status rb_vnet_pcg(rb_context *ctx, rb_vnet *net, const rb_tensor *f, rb_tensor *u, double tol, int max_iter,
                      rb_mg_report *report)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_pcg: net is NULL");
    rb_status st = check_grid(ctx, net, f, "f", "rb_vnet_pcg");
    if (st == RB_OK) st = check_grid(ctx, net, u, "u", "rb_vnet_pcg");
    if (st == RB_OK && net->cfg.batch != 1) st = rb_fail(ctx, RB_EINVAL, "rb_vnet_pcg: needs batch 1, the net has %zu", net->cfg.batch);
    for (int i = 0; i < 5 && st == RB_OK; i++)
        if (net->cg[i].data == NULL) st = rb_tensor_alloc(ctx, &net->cg[i], f->shape);
    if (st != RB_OK) return st;
    rb_mg_report local;
    return rb_pcg(ctx, net->level[0].A, precondition, net, f, u, tol, max_iter, net->cg, &net->work, report ? report : &local,
                  "cycle-preconditioned CG");
}

/* The learned-operator slot of op (its gradient accumulator index), or nlearned. */
static size_t learned_slot(const rb_vnet *net, const rb_op *op)
{
    size_t i = 0;
    while (i < net->nlearned && net->learned[i] != op) i++;
    return i;
}

rb_status rb_vnet_use_mg_operators(rb_context *ctx, rb_vnet *net, const rb_mg *mg, double omega)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || mg == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_use_mg_operators: net or mg is NULL");
    const rb_vnet_config *c = &net->cfg;
    if (c->channels != 1 || c->act != RB_ACT_IDENTITY || !c->coarse_solve || c->norm != RB_NORM_NONE)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_use_mg_operators: needs C = 1, sigma = identity, no normalisation and a coarse solve");
    if (rb_mg_levels(mg) != c->levels || rb_mg_level_n(mg, 0) != c->n || rb_mg_shape(mg).h != rb_vnet_shape(net, 0).h)
        return rb_fail(ctx, RB_ESHAPE, "rb_vnet_use_mg_operators: the solver has n = %zu with %zu levels, the net n = %zu with %zu",
                       rb_mg_level_n(mg, 0), rb_mg_levels(mg), c->n, c->levels);
    if (!isfinite(omega)) return rb_fail(ctx, RB_EINVAL, "rb_vnet_use_mg_operators: omega = %g is not finite", omega);
    rb_status st = rb_vnet_set_poisson(ctx, net, omega); /* R, P, h; A and B replaced below */
    const rb_vcycle *mv = rb_mg_vcycle(mg);
    for (size_t l = 0; l < c->levels && st == RB_OK; l++) {
        vnet_level *v = &net->lv[l];
        const rb_op *A = mv->level[l].A;
        net->level[l].A = A;
        size_t a = learned_slot(net, v->A); /* the net's own A is no longer used: not learned */
        if (a < net->nlearned) {
            rb_free(ctx, net->grad[a]);
            for (size_t i = a; i + 1 < net->nlearned; i++) net->learned[i] = net->learned[i + 1], net->grad[i] = net->grad[i + 1];
            net->nlearned--;
        }
        if (v->B == NULL) continue; /* the solved coarsest level */
        /* B: a full point-dependent 3^d stencil, damped Jacobi to start (centre 1 / a_pp) */
        rb_shape g = rb_vnet_shape(net, l);
        g.n = 1;
        const size_t points = rb_shape_count(g);
        rb_op *B = NULL, *F = NULL;
        st = rb_op_varstencil_create(ctx, c->dim, RB_STENCIL_FULL, g, NULL, &B);
        double *diag = st == RB_OK ? rb_calloc(ctx, points, sizeof(double)) : NULL;
        if (st == RB_OK && diag == NULL) st = RB_ENOMEM;
        if (st == RB_OK) st = rb_vnet_diagonal(ctx, net, l, diag);
        if (st == RB_OK) {
            const size_t centre = B->nparams / points / 2;
            for (size_t p = 0; p < points; p++) B->params[centre * points + p] = 1.0 / diag[p];
            st = rb_op_smoother_create(ctx, A, B, &net->level[l].f, &F);
        }
        double *grad = st == RB_OK ? rb_calloc(ctx, B->nparams, sizeof(double)) : NULL;
        if (st == RB_OK && grad == NULL) st = RB_ENOMEM;
        rb_free(ctx, diag);
        if (st != RB_OK) {
            rb_op_free(ctx, B), rb_op_free(ctx, F);
            break;
        }
        size_t b = learned_slot(net, v->S);
        rb_free(ctx, net->grad[b]);
        net->learned[b] = B, net->grad[b] = grad;
        rb_op_free(ctx, v->F), rb_op_free(ctx, v->B);
        v->B = v->S = B, v->F = F;
        for (int k = 0; k < VNET_MAX_STEPS; k++) v->pre[k].F = v->post[k].F = F, v->pre[k].S = v->post[k].S = B;
    }
    net->mg_ops = true;
    if (st == RB_OK) st = rb_vnet_refresh(ctx, net);
    return st;
}

rb_status rb_vnet_diagonal(rb_context *ctx, const rb_vnet *net, size_t level, double *diag)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || diag == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_diagonal: net or diag is NULL");
    if (level >= net->cfg.levels) return rb_fail(ctx, RB_EINVAL, "rb_vnet_diagonal: level %zu of %zu", level, net->cfg.levels);
    if (net->cfg.channels != 1) return rb_fail(ctx, RB_EINVAL, "rb_vnet_diagonal: needs C = 1");
    const rb_op *A = net->level[level].A;
    rb_shape g = rb_vnet_shape(net, level);
    g.n = 1;
    const size_t points = rb_shape_count(g);
    int dims, taps, centre;
    rb_shape grid;
    if (rb_op_varstencil_info(A, &dims, &taps, &centre, &grid)) {
        memcpy(diag, A->params + (size_t)centre * points, points * sizeof(double));
        return RB_OK;
    }
    const rb_conv_desc *d = rb_op_conv_desc(A);
    if (d == NULL || d->stride != 1 || d->transposed || d->cin != 1 || d->cout != 1)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_diagonal: level %zu's A is neither a single-channel stencil nor a varstencil", level);
    for (size_t p = 0; p < points; p++) diag[p] = A->params[rb_conv_ntaps(d) / 2];
    return RB_OK;
}

/* ---- weights files (vnet.h) -------------------------------------------------------------------- */

#define VNET_MAGIC "RBVNET\r\n"
#define VNET_VERSION 1u
enum vnet_field { W_DIM, W_N, W_LEVELS, W_CHANNELS, W_ACT, W_PRE, W_POST, W_CYCLE, W_COARSE_SOLVE, W_H, VNET_FIELDS };
enum vnet_level_field { WL_A, WL_B, WL_R, WL_P, WL_NPRE, WL_NPOST, WL_CENTRE, VNET_LEVEL_FIELDS };
#define VNET_HEAD (16 + 8 * VNET_FIELDS)

/* A verified weights file: its configuration, per-level counts and where each part starts. */
typedef struct vnet_file {
    unsigned char *data;
    size_t size;
    rb_vnet_config cfg;
    uint64_t count[VNET_MAX_LEVELS][VNET_LEVEL_FIELDS - 1];
    double centre[VNET_MAX_LEVELS];
    const unsigned char *part[VNET_MAX_LEVELS][VNET_LEVEL_FIELDS - 1]; /* A, B, R, P, pre h, post h */
} vnet_file;

static const rb_op *level_part(const rb_vnet *net, size_t l, int p)
{
    const vnet_level *v = &net->lv[l];
    const rb_op *ops[4] = {v->A, v->B, v->R, v->P};
    return ops[p];
}

static size_t level_count(const rb_vnet *net, size_t l, int f)
{
    if (f <= WL_P) return level_part(net, l, f) ? level_part(net, l, f)->nparams : 0;
    return f == WL_NPRE ? net->level[l].npre : net->level[l].npost;
}

/* D_l: the mean of A_l's diagonal centre taps (the centre of the stencil for C = 1). */
static double centre_of(const rb_vnet *net, size_t l)
{
    const rb_op *A = net->lv[l].A;
    const size_t C = net->cfg.channels, ntaps = A->nparams / (C * C);
    double s = 0;
    for (size_t c = 0; c < C; c++) s += A->params[(c * C + c) * ntaps + ntaps / 2];
    return s / (double)C;
}

static int emit_buffer(int fd, void *user)
{
    const vnet_file *b = user;
    return rb_io_write_all(fd, b->data, b->size);
}

/* Version 1 holds the net's own single-grid operators: not MgNet projections, not a solver's
 * operators with point-dependent smoothers. */
static rb_status check_storable(rb_context *ctx, const rb_vnet *net, const char *fn)
{
    if (net->cfg.projection)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: weights files (version %u) do not hold feature projections (MgNet)", fn, VNET_VERSION);
    if (net->cfg.norm != RB_NORM_NONE)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: weights files (version %u) do not hold batch norms (the net has norm = %s): "
                       "save it through a model checkpoint", fn, VNET_VERSION, rb_norm_kind_name(net->cfg.norm));
    if (net->mg_ops)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: the net runs on a solver's operators (point-dependent smoothers): "
                       "weights files (version %u) hold nets on their own stencils", fn, VNET_VERSION);
    return RB_OK;
}

/* The file's bytes for net (CRC included) in a new buffer. */
static rb_status encode(rb_context *ctx, const rb_vnet *net, vnet_file *out)
{
    const rb_vnet_config *c = &net->cfg;
    size_t ndoubles = 0;
    for (size_t l = 0; l < c->levels; l++)
        for (int f = 0; f < WL_CENTRE; f++) ndoubles += level_count(net, l, f);
    out->size = VNET_HEAD + 8 * VNET_LEVEL_FIELDS * c->levels + 8 * ndoubles + 4;
    out->data = rb_malloc(ctx, out->size);
    if (out->data == NULL) return rb_fail(ctx, RB_ENOMEM, "rb_vnet_save: no memory for %zu bytes", out->size);
    const rb_vlevel *top = &net->level[0];
    const double h = top->npre ? top->pre[0].h : top->npost ? top->post[0].h : 1.0;
    const uint64_t head[VNET_FIELDS] = {[W_DIM] = (uint64_t)c->dim, [W_N] = c->n, [W_LEVELS] = c->levels,
                                        [W_CHANNELS] = c->channels, [W_ACT] = (uint64_t)c->act, [W_PRE] = (uint64_t)c->pre,
                                        [W_POST] = (uint64_t)c->post, [W_CYCLE] = (uint64_t)c->cycle,
                                        [W_COARSE_SOLVE] = c->coarse_solve, [W_H] = rb_io_dbits(h)};
    unsigned char *p = out->data;
    memcpy(p, VNET_MAGIC, 8), p += 8;
    rb_io_put_u32(p, VNET_VERSION), rb_io_put_u32(p + 4, VNET_FIELDS), p += 8;
    for (int i = 0; i < VNET_FIELDS; i++, p += 8) rb_io_put_u64(p, head[i]);
    for (size_t l = 0; l < c->levels; l++) {
        for (int f = 0; f < WL_CENTRE; f++, p += 8) rb_io_put_u64(p, level_count(net, l, f));
        rb_io_put_u64(p, rb_io_dbits(centre_of(net, l))), p += 8;
    }
    for (size_t l = 0; l < c->levels; l++) {
        for (int f = WL_A; f <= WL_P; f++)
            for (size_t i = 0; i < level_count(net, l, f); i++, p += 8) rb_io_put_u64(p, rb_io_dbits(level_part(net, l, f)->params[i]));
        for (size_t k = 0; k < net->level[l].npre; k++, p += 8) rb_io_put_u64(p, rb_io_dbits(net->level[l].pre[k].h));
        for (size_t k = 0; k < net->level[l].npost; k++, p += 8) rb_io_put_u64(p, rb_io_dbits(net->level[l].post[k].h));
    }
    rb_io_put_u32(p, rb_io_crc32(out->data, out->size - 4));
    return RB_OK;
}

rb_status rb_vnet_save(rb_context *ctx, const rb_vnet *net, const char *path)
{
    static const char fn[] = "rb_vnet_save";
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || path == NULL) return rb_fail(ctx, RB_ENULL, "%s: net or path is NULL", fn);
    if (path[0] == '\0') return rb_fail(ctx, RB_EINVAL, "%s: path is empty", fn);
    if (check_storable(ctx, net, fn) != RB_OK) return rb_context_last_status(ctx);
    vnet_file b;
    rb_status st = encode(ctx, net, &b);
    if (st != RB_OK) return st;
    st = rb_io_write_atomic(ctx, fn, path, emit_buffer, &b);
    rb_free(ctx, b.data);
    return st;
}

/* Verify magic, version, header, level records, size and checksum of data[0..size) (taken
 * over: freed on failure) and map its parts. */
static rb_status decode(rb_context *ctx, const char *fn, const char *path, unsigned char *data, size_t size, vnet_file *out)
{
    rb_status st = RB_OK;
    uint64_t h[VNET_FIELDS] = {0};
    if (size < VNET_HEAD + 4)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %zu bytes, too short for a weights file (truncated?)", fn, path, size);
    else if (memcmp(data, VNET_MAGIC, 8) != 0)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is not a resbridge network weights file (bad magic)", fn, path);
    else if (rb_io_get_u32(data + 8) != VNET_VERSION)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' has format version %u; this resbridge reads version %u", fn, path,
                     rb_io_get_u32(data + 8), VNET_VERSION);
    else if (rb_io_get_u32(data + 12) != VNET_FIELDS)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': header has %u words, expected %d", fn, path, rb_io_get_u32(data + 12), VNET_FIELDS);
    if (st == RB_OK) {
        for (int i = 0; i < VNET_FIELDS; i++) h[i] = rb_io_get_u64(data + 16 + 8 * i);
        if (h[W_LEVELS] < 1 || h[W_LEVELS] > VNET_MAX_LEVELS || h[W_DIM] < 1 || h[W_DIM] > 3 || h[W_ACT] >= RB_ACT_COUNT ||
            h[W_CYCLE] >= RB_CYCLE_COUNT || h[W_PRE] > VNET_MAX_STEPS || h[W_POST] > VNET_MAX_STEPS || h[W_COARSE_SOLVE] > 1 ||
            h[W_CHANNELS] < 1 || h[W_CHANNELS] > 4096 || h[W_N] < 1 || h[W_N] > ((uint64_t)1 << 32))
            st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': the header holds impossible values (dim %llu, n %llu, %llu levels, "
                                          "C %llu): corrupt",
                         fn, path, (unsigned long long)h[W_DIM], (unsigned long long)h[W_N], (unsigned long long)h[W_LEVELS],
                         (unsigned long long)h[W_CHANNELS]);
    }
    const size_t L = st == RB_OK ? (size_t)h[W_LEVELS] : 0;
    uint64_t ndoubles = 0;
    if (st == RB_OK && size < VNET_HEAD + 8 * VNET_LEVEL_FIELDS * L + 4)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %zu bytes, too short for the %zu level records its header announces "
                                      "(truncated or corrupt)", fn, path, size, L);
    for (size_t l = 0; l < L && st == RB_OK; l++) {
        const unsigned char *r = data + VNET_HEAD + 8 * VNET_LEVEL_FIELDS * l;
        for (int f = 0; f < WL_CENTRE; f++) {
            out->count[l][f] = rb_io_get_u64(r + 8 * f);
            if (out->count[l][f] > ((uint64_t)1 << 32)) out->count[l][f] = (uint64_t)1 << 33; /* impossible: fails the size check */
            ndoubles += out->count[l][f];
        }
        out->centre[l] = rb_io_bitsd(rb_io_get_u64(r + 8 * WL_CENTRE));
    }
    if (st == RB_OK && (uint64_t)size != VNET_HEAD + 8 * VNET_LEVEL_FIELDS * L + 8 * ndoubles + 4)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %zu bytes but its header describes %llu weights in %zu levels "
                                      "(truncated or corrupt)", fn, path, size, (unsigned long long)ndoubles, L);
    if (st == RB_OK && rb_io_get_u32(data + size - 4) != rb_io_crc32(data, size - 4))
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': checksum mismatch (the file is corrupt)", fn, path);
    if (st != RB_OK) {
        rb_free(ctx, data);
        return st;
    }
    out->data = data, out->size = size;
    out->cfg = (rb_vnet_config){.dim = (int)h[W_DIM], .n = (size_t)h[W_N], .levels = L, .channels = (size_t)h[W_CHANNELS],
                                .batch = 1, .pre = (int)h[W_PRE], .post = (int)h[W_POST], .act = (rb_activation)h[W_ACT],
                                .cycle = (rb_cycle)h[W_CYCLE], .coarse_solve = h[W_COARSE_SOLVE] != 0, .seed = 0};
    const unsigned char *p = data + VNET_HEAD + 8 * VNET_LEVEL_FIELDS * L;
    for (size_t l = 0; l < L; l++)
        for (int f = 0; f < WL_CENTRE; f++) out->part[l][f] = p, p += 8 * out->count[l][f];
    return RB_OK;
}

static rb_status read_file(rb_context *ctx, const char *fn, const char *path, vnet_file *out)
{
    unsigned char *data;
    size_t size;
    rb_status st = rb_io_read_file(ctx, fn, path, &data, &size);
    return st == RB_OK ? decode(ctx, fn, path, data, size, out) : st;
}

rb_status rb_vnet_peek(rb_context *ctx, const char *path, rb_vnet_config *cfg)
{
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL || cfg == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_peek: path or cfg is NULL");
    vnet_file w;
    rb_status st = read_file(ctx, "rb_vnet_peek", path, &w);
    if (st != RB_OK) return st;
    *cfg = w.cfg;
    rb_free(ctx, w.data);
    return RB_OK;
}

/* "2D, n = 127, 5 levels, C = 1, identity, V(1,1), coarse solve" */
static const char *describe(const rb_vnet_config *c, char *buf, size_t len)
{
    snprintf(buf, len, "%dD, n = %zu with %zu levels, C = %zu, %s, %s(%d,%d), coarsest level %s", c->dim, c->n, c->levels,
             c->channels, rb_activation_name(c->act), rb_cycle_name(c->cycle), c->pre, c->post,
             c->coarse_solve ? "solved" : "smoothed");
    return buf;
}

/* The file's level for net level l (vnet.h): l itself, or with any_size the file's smoothed
 * level of the same grid size (its finest for finer grids, its coarsest smoothed level for
 * coarser ones; rb_vnet_copy_smoothers' rule), and the coarsest for the coarsest. */
static size_t source_level(const rb_vnet *net, const vnet_file *w, size_t l, bool any_size)
{
    if (!any_size) return l;
    if (l + 1 == net->cfg.levels) return w->cfg.levels - 1;
    const size_t n = rb_vnet_shape(net, l).w;
    size_t s = 0, ns = w->cfg.n;
    while (s + 2 < w->cfg.levels && ns > n) s++, ns = (ns - 1) / 2;
    return s;
}

/* Does the file fit the net? (no change to the net) */
static rb_status check_fit(rb_context *ctx, const char *fn, const char *path, const rb_vnet *net, const vnet_file *w, bool any_size)
{
    const rb_vnet_config *a = &w->cfg, *b = &net->cfg;
    char da[160], db[160];
    bool same = a->dim == b->dim && a->channels == b->channels && a->act == b->act && a->pre == b->pre && a->post == b->post &&
                a->cycle == b->cycle && a->coarse_solve == b->coarse_solve;
    if (!same || (!any_size && (a->n != b->n || a->levels != b->levels)))
        return rb_fail(ctx, RB_EINVAL, "%s: '%s': the weights are for %s; the net has %s%s", fn, path, describe(a, da, sizeof da),
                       describe(b, db, sizeof db), same ? " (load with any_size to reuse them on another grid)" : "");
    if (any_size && b->levels > 1 && a->levels < 2)
        return rb_fail(ctx, RB_EINVAL, "%s: '%s': the weights are for n = %zu with 1 level, the net has n = %zu with %zu levels: "
                                       "a single level has no smoother, restriction and prolongation to reuse on the finer levels",
                       fn, path, a->n, b->n, b->levels);
    for (size_t l = 0; l < b->levels; l++) {
        const size_t s = source_level(net, w, l, any_size);
        for (int f = any_size ? WL_B : WL_A; f < WL_CENTRE; f++)
            if (w->count[s][f] != level_count(net, l, f))
                return rb_fail(ctx, RB_EFORMAT, "%s: '%s': level %zu of the file has %llu %s values, level %zu of the net %zu "
                                                "(the weights are for %s, the net has %s)",
                               fn, path, s, (unsigned long long)w->count[s][f],
                               f <= WL_P ? (const char *[]){"A", "B", "R", "P"}[f] : f == WL_NPRE ? "pre-step" : "post-step", l,
                               level_count(net, l, f), describe(a, da, sizeof da), describe(b, db, sizeof db));
        if (any_size && level_count(net, l, WL_B) > 0) {
            const double ds = w->centre[s], dl = centre_of(net, l);
            if (!isfinite(ds) || !isfinite(dl) || ds == 0 || dl == 0)
                return rb_fail(ctx, RB_EINVAL, "%s: '%s': cannot rescale the smoother of level %zu: the centre of A is %g in the "
                                               "file (level %zu) and %g in the net", fn, path, l, ds, s, dl);
        }
    }
    return RB_OK;
}

static void get_doubles(const unsigned char *p, double *v, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++, p += 8) v[i] = scale == 1.0 ? rb_io_bitsd(rb_io_get_u64(p)) : rb_io_bitsd(rb_io_get_u64(p)) * scale;
}

/* Copy the (checked) file into the net. */
static void apply(rb_vnet *net, const vnet_file *w, bool any_size)
{
    for (size_t l = 0; l < net->cfg.levels; l++) {
        const size_t s = source_level(net, w, l, any_size);
        const double scale = any_size ? w->centre[s] / centre_of(net, l) : 1.0;
        for (int f = any_size ? WL_B : WL_A; f <= WL_P; f++) {
            rb_op *op = (rb_op *)level_part(net, l, f);
            if (op != NULL) get_doubles(w->part[s][f], op->params, op->nparams, f == WL_B ? scale : 1.0);
        }
        for (size_t k = 0; k < net->level[l].npre; k++) get_doubles(w->part[s][WL_NPRE] + 8 * k, &net->lv[l].pre[k].h, 1, 1.0);
        for (size_t k = 0; k < net->level[l].npost; k++) get_doubles(w->part[s][WL_NPOST] + 8 * k, &net->lv[l].post[k].h, 1, 1.0);
    }
}

rb_status rb_vnet_load(rb_context *ctx, rb_vnet *net, const char *path, bool any_size)
{
    static const char fn[] = "rb_vnet_load";
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || path == NULL) return rb_fail(ctx, RB_ENULL, "%s: net or path is NULL", fn);
    if (check_storable(ctx, net, fn) != RB_OK) return rb_context_last_status(ctx);
    vnet_file w, old;
    rb_status st = read_file(ctx, fn, path, &w);
    if (st != RB_OK) return st;
    st = check_fit(ctx, fn, path, net, &w, any_size);
    /* the net as it is, to put back if the new coarsest A cannot be factorised */
    if (st == RB_OK && (st = encode(ctx, net, &old)) == RB_OK) st = decode(ctx, fn, "(the net before loading)", old.data, old.size, &old);
    if (st != RB_OK) {
        rb_free(ctx, w.data);
        return st;
    }
    apply(net, &w, any_size);
    rb_free(ctx, w.data);
    st = rb_vnet_refresh(ctx, net);
    if (st != RB_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", rb_context_message(ctx));
        apply(net, &old, false);
        rb_status back = rb_vnet_refresh(ctx, net);
        (void)back; /* the net's own coarsest A factorised before; it does again */
        st = rb_fail(ctx, st, "%s: '%s': the loaded weights were refused, the net is unchanged: %s", fn, path, msg);
    }
    rb_free(ctx, old.data);
    return st;
}
