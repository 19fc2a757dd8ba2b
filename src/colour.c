/* colour.c — F restricted to one colour of a red-black grid, and Gauss-Seidel
 * sweeps over colours as one residual step (see colour.h). */
#include "resbridge/colour.h"

#include <math.h>
#include <string.h>

#include "conv_internal.h"
#include "redblack_internal.h"
#include "resbridge/residual.h"
#include "resbridge/varstencil.h"

typedef struct colour_state {
    const rb_op *base;
    int colour;  /* red-black: 0 or 1; parity: the class 0..7 */
    bool parity; /* a parity class (rb_op_parity_create) instead of a red-black colour */
    double *packed; /* rb_op_parity_pack's copy of the class's weights (on its varstencil's grid), or NULL */
} colour_state;

/* The class kernel's state for the colour ops' classes, with their packed weights where
 * rb_op_parity_pack made them (the kernel takes a varstencil base only on its own grid, the
 * grid the weights were packed for). */
static bool class_kernel(const colour_state *const *cs, int n, rb_shape s, double h, rb_class_step *c, rb_redblack *k)
{
    int cls[8];
    for (int i = 0; i < n; i++) cls[i] = cs[i]->colour;
    if (!rb_redblack_class_init(cs[0]->base, s, h, cs[0]->parity, cls, n, c, k)) return false;
    for (int i = 0; i < n; i++)
        if (cs[i]->packed != NULL && c->wstep == 1) c->packed[cs[i]->colour] = cs[i]->packed;
    return true;
}

/* Zero every entry of t whose grid point is not one of the op's. */
static void mask(rb_tensor *t, const colour_state *cs)
{
    rb_shape s = t->shape;
    size_t planes = s.n * s.c;
    for (size_t p = 0; p < planes; p++)
        for (size_t z = 0; z < s.d; z++)
            for (size_t y = 0; y < s.h; y++) {
                double *row = t->data + ((p * s.d + z) * s.h + y) * s.w;
                long long first = rb_redblack_class_first(cs->parity, cs->colour, z, y);
                if (first < 0) {
                    memset(row, 0, s.w * sizeof(double));
                    continue;
                }
                for (size_t x = (size_t)(1 - first); x < s.w; x += 2) row[x] = 0.0;
            }
}

static rb_status colour_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const colour_state *cs = op->state;
    return rb_op_shape(ctx, cs->base, in, out);
}

static size_t colour_workspace(const rb_op *op, rb_shape in)
{
    const colour_state *cs = op->state;
    return rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_op_workspace(cs->base, in);
}

static rb_status colour_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const colour_state *cs = op->state;
    rb_status st = cs->base->type->apply(ctx, cs->base, x, y, work);
    if (st == RB_OK) mask(y, cs);
    return st;
}

/* J_{F_c}^T dy = J_F^T (m_c dy) */
static rb_status colour_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                            rb_tensor *dx, rb_arena *work)
{
    const colour_state *cs = op->state;
    size_t mark = rb_arena_mark(work);
    rb_tensor mdy;
    rb_status st = rb_arena_tensor(ctx, work, &mdy, dy->shape);
    if (st == RB_OK && mdy.data == NULL) st = rb_fail(ctx, RB_EINVAL, "colour: work arena is in measuring mode");
    if (st == RB_OK) {
        memcpy(mdy.data, dy->data, rb_tensor_count(dy) * sizeof(double));
        mask(&mdy, cs);
        st = cs->base->type->vjp(ctx, cs->base, x, &mdy, alpha, dx, work);
    }
    rb_arena_reset(work, mark);
    return st;
}

static rb_status colour_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                   double alpha, double *dparams, rb_arena *work)
{
    const colour_state *cs = op->state;
    if (cs->base->nparams == 0) return RB_OK;
    size_t mark = rb_arena_mark(work);
    rb_tensor mdy;
    rb_status st = rb_arena_tensor(ctx, work, &mdy, dy->shape);
    if (st == RB_OK && mdy.data == NULL) st = rb_fail(ctx, RB_EINVAL, "colour: work arena is in measuring mode");
    if (st == RB_OK) {
        memcpy(mdy.data, dy->data, rb_tensor_count(dy) * sizeof(double));
        mask(&mdy, cs);
        st = cs->base->type->param_grad(ctx, cs->base, x, &mdy, alpha, dparams, work);
    }
    rb_arena_reset(work, mark);
    return st;
}

/* The fused step: the red-black kernel (redblack.c) for a constant 2D or 3D star, its class
 * kernel for the other bases it takes (only the class's points: rb_redblack_class_init),
 * the generic path otherwise. */
static rb_status colour_fused(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                              rb_arena *work)
{
    const colour_state *cs = op->state;
    rb_redblack k;
    rb_class_step c;
    if ((cs->parity || !rb_redblack_init(cs->base, x->shape, h, &k)) && !class_kernel(&cs, 1, x->shape, h, &c, &k))
        return rb_residual_step_generic(ctx, op, h, x, y, work);
    if (x->data != y->data) memcpy(y->data, x->data, rb_tensor_count(x) * sizeof(double));
    k.u = y->data;
    rb_redblack_run(&k, cs->colour, 1, rb_context_threads(ctx));
    return RB_OK;
}

static void colour_destroy(rb_context *ctx, rb_op *op)
{
    colour_state *cs = op->state;
    rb_free(ctx, cs->packed);
    rb_free(ctx, cs);
}

static const rb_op_type colour_type = {
    .name = "colour",
    .flags = RB_OP_SAME_SHAPE,
    .shape = colour_shape,
    .workspace = colour_workspace,
    .apply = colour_apply,
    .vjp = colour_vjp,
    .param_grad = colour_param_grad,
    .residual_fused = colour_fused,
    .fused_in_place = 1,
    .destroy = colour_destroy,
};

static rb_status class_create(rb_context *ctx, const char *fn, const rb_op *base, int colour, bool parity, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (base == NULL || base->type == NULL) return rb_fail(ctx, RB_ENULL, "%s: base is NULL", fn);
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (colour < 0 || colour > (parity ? 7 : 1))
        return rb_fail(ctx, RB_EINVAL, "%s: %s = %d, must be 0..%d", fn, parity ? "cls" : "colour", colour, parity ? 7 : 1);
    if (base->type->vjp == NULL) return rb_fail(ctx, RB_EUNSUPPORTED, "%s: base %s has no vjp", fn, base->type->name);
    colour_state *cs = rb_calloc(ctx, 1, sizeof *cs);
    if (cs == NULL) return RB_ENOMEM;
    cs->base = base;
    cs->colour = colour;
    cs->parity = parity;
    rb_status st = rb_op_new(ctx, &colour_type, cs, 0, out);
    if (st != RB_OK) rb_free(ctx, cs);
    return st;
}

rb_status rb_op_colour_create(rb_context *ctx, const rb_op *base, int colour, rb_op **out)
{
    return class_create(ctx, "rb_op_colour_create", base, colour, false, out);
}

rb_status rb_op_parity_create(rb_context *ctx, const rb_op *base, int cls, rb_op **out)
{
    return class_create(ctx, "rb_op_parity_create", base, cls, true, out);
}

rb_status rb_op_parity_pack(rb_context *ctx, rb_op *op)
{
    static const char fn[] = "rb_op_parity_pack";
    if (ctx == NULL) return RB_ENULL;
    if (op == NULL) return rb_fail(ctx, RB_ENULL, "%s: op is NULL", fn);
    colour_state *cs = op->type == &colour_type ? op->state : NULL;
    if (cs == NULL || !cs->parity)
        return rb_fail(ctx, RB_EINVAL, "%s: op is a %s op, not a parity class (rb_op_parity_create)", fn,
                       cs != NULL ? "red-black colour" : op->type->name);
    int dims, nt, centre;
    rb_shape grid;
    const rb_jacobi_state *js = rb_jacobi_state_of(cs->base);
    const rb_op *A = js != NULL ? js->A : NULL;
    if (A == NULL || !rb_op_varstencil_info(A, &dims, &nt, &centre, &grid))
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: the class's base (%s) is not a Jacobi operator over a varstencil: "
                       "there are no point weights to pack", fn, cs->base->type->name);
    /* the old copy goes first: should the new one fail, the kernel reads the weights in place */
    rb_free(ctx, cs->packed);
    cs->packed = NULL;
    const size_t count = rb_redblack_class_pack_count(grid, nt, cs->colour);
    if (count == 0) return RB_OK;
    double *p = rb_malloc(ctx, count * sizeof(double));
    if (p == NULL) return RB_ENOMEM;
    rb_redblack_class_pack(A->params, grid, nt, cs->colour, p);
    cs->packed = p;
    return RB_OK;
}

/* ---- Gauss-Seidel sweeps over colours: one residual step ------------------------------------- */

#define SWEEP_MAX_COLOURS 8

typedef struct sweep_state {
    const rb_op *colour[SWEEP_MAX_COLOURS]; /* referenced, not owned */
    int ncolours, sweeps;
    double omega;
    size_t tile; /* the 3D wavefront's rows per tile (rb_colour_sweep_set_tile; 0: by the planes' size) */
} sweep_state;

static rb_status sweep_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const sweep_state *ss = op->state;
    return rb_op_shape(ctx, ss->colour[0], in, out);
}

/* The colour steps' scratch (in place), and for the vjp three grids (state, two adjoints)
 * next to a colour vjp's scratch. */
static size_t sweep_workspace(const rb_op *op, rb_shape in)
{
    const sweep_state *ss = op->state;
    size_t most = 0;
    for (int c = 0; c < ss->ncolours; c++) {
        size_t a = rb_residual_workspace(ss->colour[c], in), b = rb_op_workspace(ss->colour[c], in);
        if (a > most) most = a;
        if (b > most) most = b;
    }
    return 3 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + most;
}

/* The first k colour steps of the sequence (sweeps x colours) on u in place. */
static rb_status sweep_steps(rb_context *ctx, const sweep_state *ss, int k, rb_tensor *u, rb_arena *work)
{
    rb_status st = RB_OK;
    for (int j = 0; j < k && st == RB_OK; j++) st = rb_residual_step(ctx, ss->colour[j % ss->ncolours], ss->omega, u, u, work);
    return st;
}

/* F(x) = (S(x) - x) / omega, S the sweeps as colour steps through rb_residual_step. */
static rb_status sweep_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const sweep_state *ss = op->state;
    const size_t n = rb_tensor_count(x);
    memcpy(y->data, x->data, n * sizeof(double));
    rb_status st = sweep_steps(ctx, ss, ss->sweeps * ss->ncolours, y, work);
    if (st != RB_OK) return st;
    for (size_t i = 0; i < n; i++) y->data[i] = (y->data[i] - x->data[i]) / ss->omega;
    return RB_OK;
}

/* J_F^T dy = (J_S^T dy - dy) / omega, J_S = J_{K-1} ... J_0 with J_j = I + omega J_{F_j}(u_j),
 * u_j the state before step j (recomputed from x for each j: K^2 / 2 steps, no stored states). */
static rb_status sweep_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    const sweep_state *ss = op->state;
    const size_t n = rb_tensor_count(x), mark = rb_arena_mark(work);
    rb_tensor state, a, a2;
    rb_status st = rb_arena_tensor(ctx, work, &state, x->shape);
    if (st == RB_OK) st = rb_arena_tensor(ctx, work, &a, x->shape);
    if (st == RB_OK) st = rb_arena_tensor(ctx, work, &a2, x->shape);
    if (st == RB_OK && (state.data == NULL || a.data == NULL || a2.data == NULL))
        st = rb_fail(ctx, RB_EINVAL, "colour sweep: work arena is in measuring mode");
    if (st == RB_OK) memcpy(a.data, dy->data, n * sizeof(double));
    for (int j = ss->sweeps * ss->ncolours - 1; j >= 0 && st == RB_OK; j--) {
        memcpy(state.data, x->data, n * sizeof(double));
        st = sweep_steps(ctx, ss, j, &state, work);
        if (st != RB_OK) break;
        memcpy(a2.data, a.data, n * sizeof(double));
        st = rb_op_vjp(ctx, ss->colour[j % ss->ncolours], &state, &a, ss->omega, &a2, work);
        rb_tensor t = a;
        a = a2, a2 = t;
    }
    if (st == RB_OK)
        for (size_t i = 0; i < n; i++) dx->data[i] += alpha * ((a.data[i] - dy->data[i]) / ss->omega);
    rb_arena_reset(work, mark);
    return st;
}

static const rb_op_type sweep_type;

/* Whether the fused kernel takes the step with h = omega: colour ops of one Jacobi base,
 * either red and black (either order) over a constant 2D / 3D star (the red-black kernel),
 * or any classes the class kernel takes (red-black colours of a point-dependent star, the
 * parity classes of any stencil). Fills k (c: the class kernel's state) and the first colour. */
static bool sweep_kernel(const sweep_state *ss, double h, rb_shape s, rb_redblack *k, rb_class_step *c, int *colour0)
{
    if (h != ss->omega) return false;
    const colour_state *cs[SWEEP_MAX_COLOURS];
    for (int i = 0; i < ss->ncolours; i++) {
        if (ss->colour[i]->type != &colour_type) return false;
        cs[i] = ss->colour[i]->state;
        if (i > 0 && (cs[i]->base != cs[0]->base || cs[i]->parity != cs[0]->parity)) return false;
    }
    *colour0 = cs[0]->colour;
    const bool star = !cs[0]->parity && ss->ncolours == 2 && cs[0]->colour != cs[1]->colour &&
                      rb_redblack_init(cs[0]->base, s, h, k);
    if (!star && !class_kernel(cs, ss->ncolours, s, h, c, k)) return false;
    k->tile = ss->tile;
    return true;
}

rb_status rb_colour_sweep_set_tile(rb_context *ctx, rb_op *op, size_t rows)
{
    if (ctx == NULL) return RB_ENULL;
    if (op == NULL || op->type != &sweep_type)
        return rb_fail(ctx, RB_EINVAL, "rb_colour_sweep_set_tile: op is not a colour sweep op");
    ((sweep_state *)op->state)->tile = rows;
    return RB_OK;
}

/* The fused kernel: all sweeps in one pass of the red-black kernel -- exactly the colour
 * steps the generic path composes. Otherwise the generic path. */
static rb_status sweep_fused(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                             rb_arena *work)
{
    const sweep_state *ss = op->state;
    rb_redblack k;
    rb_class_step c;
    int colour0;
    if (!sweep_kernel(ss, h, x->shape, &k, &c, &colour0)) return rb_residual_step_generic(ctx, op, h, x, y, work);
    if (x->data != y->data) memcpy(y->data, x->data, rb_tensor_count(x) * sizeof(double));
    k.u = y->data;
    rb_redblack_run(&k, colour0, ss->ncolours * ss->sweeps, rb_context_threads(ctx));
    return RB_OK;
}

/* The fused kernel with the stages around it (redblack_internal.h): first the correction
 * for a prolongation rb_transfer_prolong_plan takes; after, the residual stage for a
 * residual operator rb_stencil_any takes and, if asked, a restriction
 * rb_transfer_restrict_pair takes onto pass->coarse, with ring lines from work (as many
 * threads as it has room for). Anything else: declined, nothing done. */
rb_status rb_colour_sweep_pass(rb_context *ctx, const rb_op *op, double h, rb_tensor *u, const rb_residual_pass *pass,
                               const double *split_b, bool coarse_split, bool *done, rb_arena *work)
{
    const bool split = split_b != NULL;
    if (op->type != &sweep_type) return RB_OK;
    const sweep_state *ss = op->state;
    rb_redblack k;
    rb_class_step c;
    int colour0;
    if (!sweep_kernel(ss, h, u->shape, &k, &c, &colour0)) return RB_OK;
    if (split && (k.cls != NULL || k.dims != 2)) return RB_OK; /* the split rows: 2D star kernel only */
    k.split = split;
    if (split) k.b = split_b;
    rb_redblack_first first = {.csplit = split && coarse_split, .assign = pass->assign};
    if (pass->P != NULL) {
        if (!rb_transfer_prolong_plan(pass->P, pass->c->shape, u->shape, &first.g)) return RB_OK;
        first.w = pass->P->params, first.c = pass->c->data;
        k.first = &first;
    }
    rb_redblack_then t = {.norm = pass->norm2 != NULL, .line = k.dims == 3 ? k.h * k.w : k.w, .max_threads = 64,
                          .csplit = split && coarse_split};
    int threads = rb_context_threads(ctx);
    if (threads > 64) threads = 64;
    const size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    if (pass->A != NULL && (pass->norm2 != NULL || pass->R != NULL)) {
        t.f = pass->f->data;
        /* the residual lines of a constant stencil, or of a point-dependent one (varstencil) */
        if (!rb_stencil_any_init(pass->A, u->shape, &t.A)) {
            if (split || !rb_varstencil_on(pass->A, u->shape)) return RB_OK;
            t.vA = pass->A;
        }
        if (split && !rb_stencil_split_takes(&t.A)) return RB_OK;
        if (pass->R != NULL) {
            rb_stencil_any pair;
            rb_shape cs;
            const bool plan = t.vA != NULL ? rb_transfer_restrict_plan(pass->R, k.dims, u->shape, &t.g)
                                           : rb_transfer_restrict_pair(pass->A, pass->R, u->shape, &pair, &t.g);
            if (!plan || rb_op_shape(ctx, pass->R, u->shape, &cs) != RB_OK || !rb_shape_equal(cs, pass->coarse->shape))
                return RB_OK;
            t.rw = pass->R->params, t.coarse = pass->coarse->data;
        }
        if (work == NULL || work->measuring || work->used > work->cap) return RB_OK;
        const size_t per_thread = 3 * t.line * sizeof(double), room = work->cap - work->used;
        while (threads > 1 && rb_arena_bytes((size_t)threads * per_thread) > room) threads--;
        if (rb_arena_bytes(per_thread) > room) return RB_OK;
        t.ring = rb_arena_alloc(ctx, work, (size_t)threads * per_thread);
        if (t.ring == NULL) return rb_context_last_status(ctx);
        t.max_threads = threads;
        k.then = &t;
    }
    k.u = u->data;
    rb_redblack_run(&k, colour0, ss->ncolours * ss->sweeps, threads);
    if (work != NULL) rb_arena_reset(work, mark);
    if (pass->norm2 != NULL) *pass->norm2 = t.norm2;
    *done = true;
    return RB_OK;
}

static rb_status sweep_fused_pass(rb_context *ctx, const rb_op *op, double h, rb_tensor *u, const rb_residual_pass *pass,
                                  bool *done, rb_arena *work)
{
    return rb_colour_sweep_pass(ctx, op, h, u, pass, NULL, false, done, work);
}

static void sweep_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type sweep_type = {
    .name = "colour sweep",
    .flags = RB_OP_SAME_SHAPE,
    .shape = sweep_shape,
    .workspace = sweep_workspace,
    .apply = sweep_apply,
    .vjp = sweep_vjp,
    .residual_fused = sweep_fused,
    .fused_in_place = 1,
    .residual_fused_pass = sweep_fused_pass,
    .destroy = sweep_destroy,
};

rb_status rb_op_colour_sweep_create(rb_context *ctx, const rb_op *const *colours, int ncolours, double omega,
                                    int sweeps, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_colour_sweep_create: out is NULL");
    if (colours == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_colour_sweep_create: colours is NULL");
    if (ncolours < 1 || ncolours > SWEEP_MAX_COLOURS)
        return rb_fail(ctx, RB_EINVAL, "rb_op_colour_sweep_create: ncolours = %d, must be 1..%d", ncolours,
                       SWEEP_MAX_COLOURS);
    if (sweeps < 1 || sweeps > 64)
        return rb_fail(ctx, RB_EINVAL, "rb_op_colour_sweep_create: sweeps = %d, must be 1..64", sweeps);
    if (!isfinite(omega) || omega == 0.0)
        return rb_fail(ctx, RB_EINVAL, "rb_op_colour_sweep_create: omega = %g must be finite and nonzero", omega);
    for (int c = 0; c < ncolours; c++) {
        if (colours[c] == NULL || colours[c]->type == NULL)
            return rb_fail(ctx, RB_ENULL, "rb_op_colour_sweep_create: colours[%d] is NULL", c);
        if (colours[c]->type->vjp == NULL)
            return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_colour_sweep_create: colours[%d] (%s) has no vjp", c,
                           colours[c]->type->name);
    }
    sweep_state *ss = rb_calloc(ctx, 1, sizeof *ss);
    if (ss == NULL) return RB_ENOMEM;
    for (int c = 0; c < ncolours; c++) ss->colour[c] = colours[c];
    ss->ncolours = ncolours, ss->sweeps = sweeps, ss->omega = omega;
    rb_status st = rb_op_new(ctx, &sweep_type, ss, 0, out);
    if (st != RB_OK) rb_free(ctx, ss);
    return st;
}
