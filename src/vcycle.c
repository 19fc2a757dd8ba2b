/* vcycle.c — the cycle, in the shape of the algorithm (see vcycle.h). */
#include "resbridge/vcycle.h"

#include <string.h>

#include "resbridge/residual.h"

static const char *const cycle_names[] = {"V", "W", "F"};
_Static_assert(sizeof cycle_names / sizeof *cycle_names == RB_CYCLE_COUNT, "one name per cycle");

const char *rb_cycle_name(rb_cycle c) { return (unsigned)c < RB_CYCLE_COUNT ? cycle_names[c] : "unknown"; }

rb_status rb_vlevel_residual(rb_context *ctx, const rb_vlevel *lv, rb_arena *work)
{
    rb_status st = rb_op_apply(ctx, lv->A, &lv->u, (rb_tensor *)&lv->r, work);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(&lv->r);
    double *r = lv->r.data;
    const double *f = lv->f.data;
    for (size_t i = 0; i < n; i++) r[i] = f[i] - r[i];
    return RB_OK;
}

static rb_status smooth(rb_context *ctx, rb_vlevel *lv, const rb_vstep *steps, size_t count, rb_arena *work)
{
    for (size_t s = 0; s < count; s++) {
        rb_status st = rb_residual_step(ctx, steps[s].F, steps[s].h, &lv->u, &lv->u, work);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

static rb_status cycle(rb_context *ctx, const rb_vcycle *vc, size_t l, rb_cycle kind, rb_arena *work)
{
    rb_vlevel *lv = &vc->level[l];
    if (l + 1 == vc->nlevels) return vc->coarse_solve(ctx, vc->coarse_data, &lv->f, &lv->u);
    rb_vlevel *coarse = &vc->level[l + 1];
    rb_status st = smooth(ctx, lv, lv->pre, lv->npre, work);
    if (st == RB_OK) st = rb_vlevel_residual(ctx, lv, work);
    if (st == RB_OK) st = rb_op_apply(ctx, lv->R, &lv->r, &coarse->f, work);
    if (st != RB_OK) return st;
    memset(coarse->u.data, 0, rb_tensor_count(&coarse->u) * sizeof(double));
    switch (kind) {
    case RB_CYCLE_V: st = cycle(ctx, vc, l + 1, RB_CYCLE_V, work); break;
    case RB_CYCLE_W:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_W, work);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_W, work);
        break;
    default:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_F, work);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_V, work);
    }
    /* coarse-grid correction: u += P u_coarse (r serves as scratch) */
    if (st == RB_OK) st = rb_op_apply(ctx, lv->P, &coarse->u, &lv->r, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &lv->r, &lv->u);
    if (st == RB_OK) st = smooth(ctx, lv, lv->post, lv->npost, work);
    return st;
}

rb_status rb_vcycle_check(rb_context *ctx, const rb_vcycle *vc)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle: hierarchy is NULL");
    if (vc->nlevels < 1) return rb_fail(ctx, RB_EINVAL, "rb_vcycle: no levels");
    if (vc->coarse_solve == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle: coarse_solve is NULL");
    if ((unsigned)vc->cycle >= RB_CYCLE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vcycle: cycle = %d", (int)vc->cycle);
    for (size_t l = 0; l < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        rb_status st = rb_tensor_check_same(ctx, &lv->u, "level u", &lv->f, "level f");
        if (st == RB_OK) st = rb_tensor_check_same(ctx, &lv->u, "level u", &lv->r, "level r");
        if (st != RB_OK) return rb_fail(ctx, st, "rb_vcycle level %zu: %s", l, rb_context_message(ctx));
        if (l + 1 == vc->nlevels) break;
        if (lv->A == NULL || lv->R == NULL || lv->P == NULL)
            return rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: A, R and P are required above the coarsest level", l);
        for (size_t s = 0; s < lv->npre + lv->npost; s++) {
            const rb_vstep *step = s < lv->npre ? &lv->pre[s] : &lv->post[s - lv->npre];
            if (step->F == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: smoothing step %zu has no F", l, s);
        }
        rb_shape cs;
        st = rb_op_shape(ctx, lv->R, lv->u.shape, &cs);
        if (st == RB_OK && !rb_shape_equal(cs, vc->level[l + 1].u.shape))
            st = rb_fail(ctx, RB_ESHAPE, "rb_vcycle level %zu: R does not map onto level %zu's grid", l, l + 1);
        if (st == RB_OK) st = rb_op_shape(ctx, lv->P, cs, &cs);
        if (st == RB_OK && !rb_shape_equal(cs, lv->u.shape))
            st = rb_fail(ctx, RB_ESHAPE, "rb_vcycle level %zu: P does not map back onto level %zu's grid", l, l);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

size_t rb_vcycle_workspace(const rb_vcycle *vc)
{
    size_t most = 0;
    for (size_t l = 0; vc != NULL && l + 1 < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        rb_shape s = lv->u.shape;
        size_t w = rb_op_workspace(lv->A, s);
        if (rb_op_workspace(lv->R, s) > w) w = rb_op_workspace(lv->R, s);
        if (rb_op_workspace(lv->P, vc->level[l + 1].u.shape) > w) w = rb_op_workspace(lv->P, vc->level[l + 1].u.shape);
        for (size_t k = 0; k < lv->npre + lv->npost; k++) {
            const rb_vstep *step = k < lv->npre ? &lv->pre[k] : &lv->post[k - lv->npre];
            size_t ws = rb_residual_workspace(step->F, s);
            if (ws > w) w = ws;
        }
        if (w > most) most = w;
    }
    return most;
}

rb_status rb_vcycle_run(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run: hierarchy is NULL");
    if (from >= vc->nlevels) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run: from = %zu, only %zu levels", from, vc->nlevels);
    return cycle(ctx, vc, from, vc->cycle, work);
}
