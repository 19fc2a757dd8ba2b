/* vcycle.c — the cycle, in the shape of the algorithm (see vcycle.h).
 *
 * Two steps of a level have a one-pass form where the operators allow it
 * (grid_fast.h): the residual restricted (f_{l+1} = R (f - A u) without writing
 * the residual grid) and the correction added (u += P u_{l+1} without a
 * temporary). Both give the separate calls' results bit for bit; for other
 * operators (learned convolutions, point-dependent stencils) the separate calls run.
 *
 * The smoothers' passes can take more, where the smoothing step's operator type offers
 * it (rb_residual_step_pass, residual.h; the red-black colour sweep op does): the last
 * pre-smoothing step also writes f_{l+1} = R (f - A u), the first post-smoothing step
 * adds the correction P u_{l+1} just ahead of its sweeps, and for rb_vcycle_run_norm the
 * last post-smoothing step also sums (f - A u)^2. Otherwise the separate calls run. */
#include "resbridge/vcycle.h"

#include <math.h>
#include <string.h>

#include "grid_fast.h"
#include "resbridge/residual.h"

static const char *const cycle_names[] = {"V", "W", "F"};
_Static_assert(sizeof cycle_names / sizeof *cycle_names == RB_CYCLE_COUNT, "one name per cycle");

const char *rb_cycle_name(rb_cycle c) { return (unsigned)c < RB_CYCLE_COUNT ? cycle_names[c] : "unknown"; }

/* ||r||_2 given s2, the plain sum of squares of r[0 .. n): sqrt(s2) unless s2 over- or
 * underflowed (or is NaN), then by scaling with max |r_i| (NaN if r has one). */
static double safe_norm(double s2, const double *r, size_t n)
{
    if (s2 > 0x1p-900 && s2 < 0x1p900) return sqrt(s2);
    double scale = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(r[i])) return NAN;
        scale = fabs(r[i]) > scale ? fabs(r[i]) : scale;
    }
    if (scale == 0.0 || isinf(scale)) return scale;
    for (size_t i = 0; i < n; i++) s += (r[i] / scale) * (r[i] / scale);
    return scale * sqrt(s);
}

/* The norm of f - A u through a residual grid taken from work. */
static rb_status residual_through_grid(rb_context *ctx, const rb_op *A, const rb_tensor *u, const rb_tensor *f,
                                       double *norm, rb_arena *work)
{
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_residual: the norm alone needs a work arena");
    const size_t mark = rb_arena_mark(work);
    rb_tensor r;
    rb_status st = rb_arena_tensor(ctx, work, &r, u->shape);
    if (st == RB_OK && r.data == NULL) st = rb_fail(ctx, RB_EINVAL, "rb_vcycle_residual: work arena is in measuring mode");
    if (st == RB_OK) st = rb_vcycle_residual(ctx, A, u, f, &r, norm, work);
    rb_arena_reset(work, mark);
    return st;
}

rb_status rb_vcycle_residual(rb_context *ctx, const rb_op *A, const rb_tensor *u, const rb_tensor *f, rb_tensor *r,
                             double *norm, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (A == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_residual: A is NULL");
    if (r == NULL && norm == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_residual: r and norm are both NULL");
    rb_status st = rb_tensor_check_same(ctx, u, "u", f, "f");
    if (st == RB_OK && r != NULL) st = rb_tensor_check_same(ctx, u, "u", r, "r");
    if (st != RB_OK) return st;
    if (r != NULL && (r->data == u->data || r->data == f->data))
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_residual: r aliases u or f");
    const size_t n = rb_tensor_count(u), mark = work != NULL ? rb_arena_mark(work) : 0;
    rb_stencil_any k;
    if (rb_stencil_any_init(A, u->shape, &k)) { /* one pass: r = f - A u and its norm */
        int threads = rb_context_threads(ctx);
        if (threads > RB_STENCIL_RESIDUAL_MAX_THREADS) threads = RB_STENCIL_RESIDUAL_MAX_THREADS;
        double *rows = NULL, s2 = 0.0;
        if (r == NULL) { /* one row per thread */
            if (work == NULL || work->measuring)
                return rb_fail(ctx, RB_ENULL, "rb_vcycle_residual: the norm alone needs a work arena");
            rows = rb_arena_alloc(ctx, work, (size_t)threads * u->shape.w * sizeof(double));
            if (rows == NULL) return rb_context_last_status(ctx);
        }
        rb_stencil_residual(&k, u->shape, u->data, f->data, r ? r->data : NULL, norm ? &s2 : NULL, threads, rows);
        if (norm != NULL) *norm = r != NULL ? safe_norm(s2, r->data, n) : s2 > 0x1p-900 && s2 < 0x1p900 ? sqrt(s2) : NAN;
        if (work != NULL) rb_arena_reset(work, mark);
        if (norm != NULL && r == NULL && isnan(*norm)) /* over- or underflow (or NaN): once more with the grid */
            return residual_through_grid(ctx, A, u, f, norm, work);
        return RB_OK;
    }
    if (r == NULL) return residual_through_grid(ctx, A, u, f, norm, work);
    st = rb_op_apply(ctx, A, u, r, work);
    if (st != RB_OK) return st;
    double *rd = r->data;
    const double *fd = f->data;
    double p[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) rd[i] = fd[i] - rd[i];
    if (norm == NULL) return RB_OK;
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int q = 0; q < 4; q++) p[q] += rd[i + (size_t)q] * rd[i + (size_t)q];
    for (; i < n; i++) p[0] += rd[i] * rd[i];
    *norm = safe_norm((p[0] + p[1]) + (p[2] + p[3]), rd, n);
    return RB_OK;
}

rb_status rb_vlevel_residual(rb_context *ctx, const rb_vlevel *lv, rb_arena *work)
{
    return rb_vcycle_residual(ctx, lv->A, &lv->u, &lv->f, (rb_tensor *)&lv->r, NULL, work);
}

/* f_coarse = R (f - A u): in one pass where a fused kernel takes (A, R) (the
 * residual grid is then not written), else the residual into r, then R r. */
static rb_status restrict_residual(rb_context *ctx, rb_vlevel *lv, rb_vlevel *coarse, rb_arena *work)
{
    if (rb_transfer_restrict_residual(ctx, lv->A, lv->R, &lv->u, &lv->f, &coarse->f, work)) return RB_OK;
    rb_status st = rb_vlevel_residual(ctx, lv, work);
    if (st == RB_OK) st = rb_op_apply(ctx, lv->R, &lv->r, &coarse->f, work);
    return st;
}

/* u += P u_coarse: in one pass where a fast prolongation takes P, else P u_coarse
 * into r (as scratch), then added. */
static rb_status correct(rb_context *ctx, rb_vlevel *lv, const rb_vlevel *coarse, rb_arena *work)
{
    if (rb_transfer_prolong_add(ctx, lv->P, &coarse->u, &lv->u)) return RB_OK;
    rb_status st = rb_op_apply(ctx, lv->P, &coarse->u, &lv->r, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &lv->r, &lv->u);
    return st;
}

/* t = 0, on the context's threads for large grids. */
static void zero(rb_context *ctx, rb_tensor *t)
{
    const long long n = (long long)rb_tensor_count(t), chunk = 4096;
    const int threads = rb_context_threads(ctx);
    double *d = t->data;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n >= 65536)
    for (long long i = 0; i < n; i += chunk) memset(d + i, 0, (size_t)(i + chunk <= n ? chunk : n - i) * sizeof(double));
}

/* ||f - A u|| on a level: from a smoother's pass (sum of squares s2, when in range),
 * else in a pass of its own. */
static rb_status level_norm(rb_context *ctx, rb_vlevel *lv, const double *s2, double *norm, rb_arena *work)
{
    if (s2 != NULL && *s2 > 0x1p-900 && *s2 < 0x1p900) {
        *norm = sqrt(*s2);
        return RB_OK;
    }
    return rb_vcycle_residual(ctx, lv->A, &lv->u, &lv->f, NULL, norm, work);
}

/* The smoothing steps of one side of level l, with what the cycle does around them:
 * u += P u_{l+1} before them (prolong), f_{l+1} = R (f - A u) after them (restrict_res),
 * ||f - A u|| after them (norm != NULL). The first and the last step take these into
 * their own pass over the grid where their operator's type can (rb_residual_step_pass),
 * else they run as separate calls. */
static rb_status smooth(rb_context *ctx, rb_vlevel *lv, rb_vlevel *coarse, const rb_vstep *steps, size_t count,
                        bool prolong, bool restrict_res, double *norm, rb_arena *work)
{
    rb_status st = RB_OK;
    bool after = restrict_res || norm != NULL, s2_valid = false;
    double s2 = 0.0;
    for (size_t s = 0; s < count && st == RB_OK; s++) {
        rb_residual_pass pass = {0};
        if (prolong) pass.P = lv->P, pass.c = &coarse->u;
        if (s + 1 == count && after) {
            pass.A = lv->A, pass.f = &lv->f, pass.norm2 = norm != NULL ? &s2 : NULL;
            if (restrict_res) pass.R = lv->R, pass.coarse = &coarse->f;
        }
        bool done = false;
        if (pass.P != NULL || pass.A != NULL) st = rb_residual_step_pass(ctx, steps[s].F, steps[s].h, &lv->u, &pass, &done, work);
        if (st != RB_OK || done) {
            prolong = false;
            if (pass.A != NULL) after = false, s2_valid = norm != NULL;
            continue;
        }
        if (prolong) st = correct(ctx, lv, coarse, work), prolong = false;
        if (st == RB_OK) st = rb_residual_step(ctx, steps[s].F, steps[s].h, &lv->u, &lv->u, work);
    }
    if (st == RB_OK && prolong) st = correct(ctx, lv, coarse, work); /* no steps */
    if (st == RB_OK && after && restrict_res) st = restrict_residual(ctx, lv, coarse, work);
    if (st == RB_OK && norm != NULL) st = level_norm(ctx, lv, s2_valid ? &s2 : NULL, norm, work);
    return st;
}

/* One cycle on level l; norm != NULL: also ||f - A u|| of level l afterwards. */
static rb_status cycle(rb_context *ctx, const rb_vcycle *vc, size_t l, rb_cycle kind, double *norm, rb_arena *work)
{
    rb_vlevel *lv = &vc->level[l];
    if (l + 1 == vc->nlevels) {
        rb_status st = vc->coarse_solve(ctx, vc->coarse_data, &lv->f, &lv->u);
        return st == RB_OK && norm != NULL ? level_norm(ctx, lv, NULL, norm, work) : st;
    }
    rb_vlevel *coarse = &vc->level[l + 1];
    /* pre-smoothing, then f_{l+1} = R (f - A u) */
    rb_status st = smooth(ctx, lv, coarse, lv->pre, lv->npre, false, true, NULL, work);
    if (st != RB_OK) return st;
    zero(ctx, &coarse->u); /* u_{l+1} = 0 */
    switch (kind) {
    case RB_CYCLE_V: st = cycle(ctx, vc, l + 1, RB_CYCLE_V, NULL, work); break;
    case RB_CYCLE_W:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_W, NULL, work);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_W, NULL, work);
        break;
    default:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_F, NULL, work);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_V, NULL, work);
    }
    /* u += P u_{l+1}, then post-smoothing (and the norm) */
    if (st == RB_OK) st = smooth(ctx, lv, coarse, lv->post, lv->npost, true, false, norm, work);
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
        if (rb_transfer_restrict_residual_workspace(lv->A, lv->R, s) > w) w = rb_transfer_restrict_residual_workspace(lv->A, lv->R, s);
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
    return cycle(ctx, vc, from, vc->cycle, NULL, work);
}

rb_status rb_vcycle_run_norm(rb_context *ctx, const rb_vcycle *vc, size_t from, double *norm, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_norm: hierarchy is NULL");
    if (from >= vc->nlevels)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_norm: from = %zu, only %zu levels", from, vc->nlevels);
    if (norm == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_norm: norm is NULL");
    return cycle(ctx, vc, from, vc->cycle, norm, work);
}
