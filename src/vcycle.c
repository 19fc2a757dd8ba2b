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
 * last post-smoothing step also sums (f - A u)^2 -- for constant stencils and for
 * point-dependent ones (varstencils: Galerkin and rediscretised variable-coefficient
 * levels) alike. Otherwise the separate calls run. */
#include "resbridge/vcycle.h"

#include <math.h>
#include <string.h>

#include "grid_fast.h"
#include "op_internal.h"
#include "resbridge/residual.h"

static const char *const cycle_names[] = {"V", "W", "F", "down"};
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

/* ---- the tape (network mode) --------------------------------------------------------------------- */

typedef enum rec_kind { REC_BEGIN, REC_STEP, REC_RESTRICT, REC_CORRECT, REC_COARSE } rec_kind;

typedef struct rec {
    struct rec *prev;
    rec_kind kind;
    size_t level;
    const rb_vstep *step; /* REC_STEP */
    double *a;            /* STEP: u before it; RESTRICT: u after pre-smoothing; CORRECT: u_{l+1} */
    double *b;            /* RESTRICT: the f_{l+1} it made */
    const double *fprev;  /* RESTRICT: level l+1's f before it (W-, F-cycles revisit) */
    const double **fcur;  /* BEGIN: every level's current f (filled while recording) */
} rec;

static size_t rec_bytes(void) { return rb_arena_bytes(sizeof(rec)); }

/* A record with room for `na` and `nb` doubles (0: none). */
static rec *record(rb_context *ctx, rb_vtape *tape, rec_kind kind, size_t level, size_t na, size_t nb)
{
    rec *r = rb_arena_alloc(ctx, &tape->mem, sizeof(rec));
    double *a = na ? rb_arena_alloc(ctx, &tape->mem, na * sizeof(double)) : NULL;
    double *b = nb ? rb_arena_alloc(ctx, &tape->mem, nb * sizeof(double)) : NULL;
    if (r == NULL || (na && a == NULL) || (nb && b == NULL)) {
        rb_fail(ctx, RB_ENOMEM, "rb_vcycle_run_taped: the tape is full (%zu bytes)", tape->mem.cap);
        return NULL;
    }
    *r = (rec){.prev = tape->last, .kind = kind, .level = level, .a = a, .b = b};
    tape->last = r;
    return r;
}

static rec *begin_of(rb_vtape *tape)
{
    rec *r = tape->last;
    while (r != NULL && r->kind != REC_BEGIN) r = r->prev;
    return r;
}

static rb_status record_copy(rb_context *ctx, rb_vtape *tape, rec_kind kind, size_t level, const rb_tensor *t,
                             const rb_vstep *step)
{
    if (tape == NULL) return RB_OK;
    rec *r = record(ctx, tape, kind, level, rb_tensor_count(t), 0);
    if (r == NULL) return rb_context_last_status(ctx);
    memcpy(r->a, t->data, rb_tensor_count(t) * sizeof(double));
    r->step = step;
    return RB_OK;
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

/* restrict_residual on level l, taped: u before it, and the f_{l+1} it made. */
static rb_status restrict_taped(rb_context *ctx, rb_vlevel *lv, rb_vlevel *coarse, size_t l, rb_vtape *tape,
                                rb_arena *work)
{
    if (tape == NULL) return restrict_residual(ctx, lv, coarse, work);
    size_t nf = rb_tensor_count(&coarse->f);
    rec *r = record(ctx, tape, REC_RESTRICT, l, rb_tensor_count(&lv->u), nf);
    if (r == NULL) return rb_context_last_status(ctx);
    memcpy(r->a, lv->u.data, rb_tensor_count(&lv->u) * sizeof(double));
    rb_status st = restrict_residual(ctx, lv, coarse, work);
    if (st != RB_OK) return st;
    memcpy(r->b, coarse->f.data, nf * sizeof(double));
    rec *b = tape->begin; /* the cycle being recorded */
    r->fprev = b->fcur[l + 1];
    b->fcur[l + 1] = r->b;
    return RB_OK;
}

/* What a smoothing side does before its steps: nothing, u += P u_{l+1} (the coarse-grid
 * correction), or u = P u_{l+1} (full multigrid's interpolation; u's values are not read). */
typedef enum { P_NONE, P_ADD, P_SET } prolong_kind;

/* u += P u_coarse: in one pass where a fast prolongation takes P, else P u_coarse
 * into r (as scratch), then added. assign: u = P u_coarse. */
static rb_status correct(rb_context *ctx, rb_vlevel *lv, const rb_vlevel *coarse, bool assign, rb_arena *work)
{
    if (assign) return rb_op_apply(ctx, lv->P, &coarse->u, &lv->u, work);
    if (rb_transfer_prolong_add(ctx, lv->P, &coarse->u, &lv->u)) return RB_OK;
    rb_status st = rb_op_apply(ctx, lv->P, &coarse->u, &lv->r, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &lv->r, &lv->u);
    return st;
}

/* The coarse iterate's start: u_{l+1} = 0, or with a projection u_{l+1} = Pi u and
 * f_{l+1} += A_{l+1} u_{l+1} (then also in the restriction's record, taped). */
static rb_status start_coarse(rb_context *ctx, rb_vlevel *lv, rb_vlevel *coarse, rb_vtape *tape, rb_arena *work)
{
    if (lv->Pi == NULL) {
        rb_zero(ctx, coarse->u.data, rb_tensor_count(&coarse->u));
        return RB_OK;
    }
    rb_status st = rb_op_apply(ctx, lv->Pi, &lv->u, &coarse->u, work);
    if (st == RB_OK) st = rb_op_apply(ctx, coarse->A, &coarse->u, &coarse->r, work);
    if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &coarse->r, &coarse->f);
    if (st == RB_OK && tape != NULL) {
        rec *r = tape->last; /* the restriction just recorded */
        memcpy(r->b, coarse->f.data, rb_tensor_count(&coarse->f) * sizeof(double));
    }
    return st;
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
 * u += P u_{l+1} or u = P u_{l+1} before them (prolong), f_{l+1} = R (f - A u) after them (restrict_res),
 * ||f - A u|| after them (norm != NULL). The first and the last step take these into
 * their own pass over the grid where their operator's type can (rb_residual_step_pass),
 * else they run as separate calls. */
static rb_status smooth(rb_context *ctx, rb_vlevel *lv, rb_vlevel *coarse, const rb_vstep *steps, size_t count,
                        prolong_kind prolong, bool restrict_res, double *norm, size_t l, rb_vtape *tape, rb_arena *work)
{
    rb_status st = RB_OK;
    bool after = restrict_res || norm != NULL, s2_valid = false;
    double s2 = 0.0;
    if (tape != NULL) { /* taped: the separate calls, each recorded (a correction: its backward adds) */
        if (prolong == P_SET)
            return rb_fail(ctx, RB_EUNSUPPORTED, "rb_vcycle: an interpolation that sets u is not taped (level %zu)", l);
        if (prolong) st = record_copy(ctx, tape, REC_CORRECT, l, &coarse->u, NULL);
        if (st == RB_OK && prolong) st = correct(ctx, lv, coarse, false, work);
        for (size_t s = 0; s < count && st == RB_OK; s++) {
            st = record_copy(ctx, tape, REC_STEP, l, &lv->u, &steps[s]);
            if (st == RB_OK) st = rb_residual_step(ctx, steps[s].F, steps[s].h, &lv->u, &lv->u, work);
        }
        if (st == RB_OK && restrict_res) st = restrict_taped(ctx, lv, coarse, l, tape, work);
        return st;
    }
    for (size_t s = 0; s < count && st == RB_OK; s++) {
        rb_residual_pass pass = {0};
        if (prolong) pass.P = lv->P, pass.c = &coarse->u, pass.assign = prolong == P_SET;
        if (s + 1 == count && after) {
            pass.A = lv->A, pass.f = &lv->f, pass.norm2 = norm != NULL ? &s2 : NULL;
            if (restrict_res) pass.R = lv->R, pass.coarse = &coarse->f;
        }
        bool done = false;
        if (pass.P != NULL || pass.A != NULL) st = rb_residual_step_pass(ctx, steps[s].F, steps[s].h, &lv->u, &pass, &done, work);
        if (st != RB_OK || done) {
            prolong = P_NONE;
            if (pass.A != NULL) after = false, s2_valid = norm != NULL;
            continue;
        }
        if (prolong) st = correct(ctx, lv, coarse, prolong == P_SET, work), prolong = P_NONE;
        if (st == RB_OK) st = rb_residual_step(ctx, steps[s].F, steps[s].h, &lv->u, &lv->u, work);
    }
    if (st == RB_OK && prolong) st = correct(ctx, lv, coarse, prolong == P_SET, work); /* no steps */
    if (st == RB_OK && after && restrict_res) st = restrict_residual(ctx, lv, coarse, work);
    if (st == RB_OK && norm != NULL) st = level_norm(ctx, lv, s2_valid ? &s2 : NULL, norm, work);
    return st;
}

/* Whether level l's cycles chain (rb_vcycle_run_next): no pre-smoothing, no projection, not
 * taped, something coming back up. */
static bool chains(const rb_vlevel *lv, rb_cycle kind, const rb_vtape *tape)
{
    return lv->npre == 0 && lv->Pi == NULL && tape == NULL && kind != RB_CYCLE_DOWN;
}

/* The up-leg on level l below the coarsest: u += P u_{l+1} (assign: u = P u_{l+1}), then the
 * post-smoothing (and the norm; chained: f_{l+1} = R (f - A u) for the next cycle, then *ready = true). */
static rb_status up(rb_context *ctx, const rb_vcycle *vc, size_t l, bool assign, double *norm, rb_vtape *tape,
                    rb_arena *work, bool chain, bool *ready)
{
    rb_vlevel *lv = &vc->level[l];
    rb_status st = smooth(ctx, lv, &vc->level[l + 1], lv->post, lv->npost, assign ? P_SET : P_ADD, chain, norm, l, tape, work);
    if (st == RB_OK && chain) *ready = true;
    return st;
}

/* One cycle on level l; norm != NULL: also ||f - A u|| of level l afterwards;
 * tape != NULL: recording what rb_vcycle_backward needs. ready != NULL (rb_vcycle_run_next):
 * level l without pre-smoothing or projection takes f_{l+1} as it is if *ready, and its last
 * pass restricts the new residual for the next cycle (then *ready = true). interp: u = P u_{l+1}
 * first, ahead of the pre-smoothing (full multigrid's interpolation; u's values are not read). */
static rb_status cycle(rb_context *ctx, const rb_vcycle *vc, size_t l, rb_cycle kind, double *norm, rb_vtape *tape,
                       rb_arena *work, bool *ready, bool interp)
{
    rb_vlevel *lv = &vc->level[l];
    if (l + 1 == vc->nlevels) {
        rb_status st = RB_OK;
        if (vc->coarse_solve == NULL) { /* smoothed, not solved */
            st = smooth(ctx, lv, NULL, lv->pre, lv->npre, P_NONE, false, NULL, l, tape, work);
        } else {
            if (tape != NULL && record(ctx, tape, REC_COARSE, l, 0, 0) == NULL) return rb_context_last_status(ctx);
            st = vc->coarse_solve(ctx, vc->coarse_data, &lv->f, &lv->u);
        }
        return st == RB_OK && norm != NULL ? level_norm(ctx, lv, NULL, norm, work) : st;
    }
    rb_vlevel *coarse = &vc->level[l + 1];
    const bool chain = ready != NULL && chains(lv, kind, tape);
    if (ready != NULL && !chain) *ready = false;
    /* pre-smoothing, then f_{l+1} = R (f - A u) (already there: the last cycle's last pass) */
    rb_status st = chain && *ready ? RB_OK
                                   : smooth(ctx, lv, coarse, lv->pre, lv->npre, interp ? P_SET : P_NONE, true, NULL, l, tape, work);
    if (chain) *ready = false;
    if (st == RB_OK) st = start_coarse(ctx, lv, coarse, tape, work); /* u_{l+1} = 0 (or Pi u) */
    if (st != RB_OK) return st;
    switch (kind) {
    case RB_CYCLE_DOWN: /* the down-leg: nothing comes back up */
        st = cycle(ctx, vc, l + 1, RB_CYCLE_DOWN, NULL, tape, work, NULL, false);
        return st == RB_OK && norm != NULL ? level_norm(ctx, lv, NULL, norm, work) : st;
    case RB_CYCLE_V: st = cycle(ctx, vc, l + 1, RB_CYCLE_V, NULL, tape, work, NULL, false); break;
    case RB_CYCLE_W:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_W, NULL, tape, work, NULL, false);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_W, NULL, tape, work, NULL, false);
        break;
    default:
        st = cycle(ctx, vc, l + 1, RB_CYCLE_F, NULL, tape, work, NULL, false);
        if (st == RB_OK && l + 2 < vc->nlevels) st = cycle(ctx, vc, l + 1, RB_CYCLE_V, NULL, tape, work, NULL, false);
    }
    return st == RB_OK ? up(ctx, vc, l, false, norm, tape, work, chain, ready) : st;
}

/* Full multigrid on level l for its f (u_l is output): f_{l+1} = R f_l, the same on level l+1,
 * then u_l = P u_{l+1} and `cycles` cycles; the coarsest level is solved (or smoothed from 0). */
static rb_status fmg(rb_context *ctx, const rb_vcycle *vc, size_t l, int cycles, rb_arena *work)
{
    if (l + 1 == vc->nlevels) { /* solved, or smoothed from 0 */
        rb_zero(ctx, vc->level[l].u.data, rb_tensor_count(&vc->level[l].u));
        return cycle(ctx, vc, l, vc->cycle, NULL, NULL, work, NULL, false);
    }
    rb_vlevel *lv = &vc->level[l];
    rb_status st = rb_op_apply(ctx, lv->R, &lv->f, &vc->level[l + 1].f, work);
    if (st == RB_OK) st = fmg(ctx, vc, l + 1, cycles, work);
    for (int c = 0; c < cycles && st == RB_OK; c++) st = cycle(ctx, vc, l, vc->cycle, NULL, NULL, work, NULL, c == 0);
    return st;
}

rb_status rb_vcycle_check(rb_context *ctx, const rb_vcycle *vc)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle: hierarchy is NULL");
    if (vc->nlevels < 1) return rb_fail(ctx, RB_EINVAL, "rb_vcycle: no levels");
    if ((unsigned)vc->cycle >= RB_CYCLE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_vcycle: cycle = %d", (int)vc->cycle);
    for (size_t l = 0; l < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        rb_status st = rb_tensor_check_same(ctx, &lv->u, "level u", &lv->f, "level f");
        if (st == RB_OK) st = rb_tensor_check_same(ctx, &lv->u, "level u", &lv->r, "level r");
        if (st != RB_OK) return rb_fail(ctx, st, "rb_vcycle level %zu: %s", l, rb_context_message(ctx));
        if (l + 1 == vc->nlevels) {
            if (vc->coarse_solve == NULL && lv->npre == 0)
                return rb_fail(ctx, RB_EINVAL, "rb_vcycle: the coarsest level has neither a solve nor smoothing steps");
            for (size_t s = 0; s < lv->npre; s++)
                if (lv->pre[s].F == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: smoothing step %zu has no F", l, s);
            break;
        }
        const bool down = vc->cycle == RB_CYCLE_DOWN; /* nothing is prolonged */
        if (lv->A == NULL || lv->R == NULL || (lv->P == NULL && !down))
            return rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: A, R and P are required above the coarsest level", l);
        for (size_t s = 0; s < lv->npre + lv->npost; s++) {
            const rb_vstep *step = s < lv->npre ? &lv->pre[s] : &lv->post[s - lv->npre];
            if (step->F == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: smoothing step %zu has no F", l, s);
        }
        rb_shape cs;
        st = rb_op_shape(ctx, lv->R, lv->u.shape, &cs);
        if (st == RB_OK && !rb_shape_equal(cs, vc->level[l + 1].u.shape))
            st = rb_fail(ctx, RB_ESHAPE, "rb_vcycle level %zu: R does not map onto level %zu's grid", l, l + 1);
        rb_shape ps;
        if (st == RB_OK && lv->Pi != NULL) st = rb_op_shape(ctx, lv->Pi, lv->u.shape, &ps);
        if (st == RB_OK && lv->Pi != NULL && !rb_shape_equal(ps, cs))
            st = rb_fail(ctx, RB_ESHAPE, "rb_vcycle level %zu: Pi does not map onto level %zu's grid", l, l + 1);
        if (st == RB_OK && lv->Pi != NULL && vc->level[l + 1].A == NULL)
            st = rb_fail(ctx, RB_ENULL, "rb_vcycle level %zu: a projection needs level %zu's A", l, l + 1);
        if (down && lv->P == NULL) continue;
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
    for (size_t l = 0; vc != NULL && l < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        rb_shape s = lv->u.shape;
        if (l + 1 == vc->nlevels) { /* the coarsest: its smoothing steps, when not solved */
            for (size_t k = 0; vc->coarse_solve == NULL && k < lv->npre; k++)
                if (rb_residual_workspace(lv->pre[k].F, s) > most) most = rb_residual_workspace(lv->pre[k].F, s);
            break;
        }
        size_t w = rb_op_workspace(lv->A, s);
        if (rb_transfer_restrict_residual_workspace(lv->A, lv->R, s) > w) w = rb_transfer_restrict_residual_workspace(lv->A, lv->R, s);
        if (rb_op_workspace(lv->R, s) > w) w = rb_op_workspace(lv->R, s);
        if (lv->Pi != NULL && rb_op_workspace(lv->Pi, s) > w) w = rb_op_workspace(lv->Pi, s);
        if (lv->Pi != NULL && rb_op_workspace(vc->level[l + 1].A, vc->level[l + 1].u.shape) > w)
            w = rb_op_workspace(vc->level[l + 1].A, vc->level[l + 1].u.shape);
        if (lv->P != NULL && rb_op_workspace(lv->P, vc->level[l + 1].u.shape) > w) w = rb_op_workspace(lv->P, vc->level[l + 1].u.shape);
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
    return cycle(ctx, vc, from, vc->cycle, NULL, NULL, work, NULL, false);
}

rb_status rb_vcycle_run_norm(rb_context *ctx, const rb_vcycle *vc, size_t from, double *norm, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_norm: hierarchy is NULL");
    if (from >= vc->nlevels)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_norm: from = %zu, only %zu levels", from, vc->nlevels);
    if (norm == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_norm: norm is NULL");
    return cycle(ctx, vc, from, vc->cycle, norm, NULL, work, NULL, false);
}

rb_status rb_vcycle_run_next(rb_context *ctx, const rb_vcycle *vc, size_t from, double *norm, bool *restricted,
                             rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_next: hierarchy is NULL");
    if (from >= vc->nlevels)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_next: from = %zu, only %zu levels", from, vc->nlevels);
    if (norm == NULL || restricted == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_next: %s is NULL", norm == NULL ? "norm" : "restricted");
    if (from + 1 == vc->nlevels) *restricted = false;
    rb_status st = cycle(ctx, vc, from, vc->cycle, norm, NULL, work, from + 1 < vc->nlevels ? restricted : NULL, false);
    if (st != RB_OK) *restricted = false;
    return st;
}

rb_status rb_vcycle_fmg(rb_context *ctx, const rb_vcycle *vc, size_t from, int cycles, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_fmg: hierarchy is NULL");
    if (from >= vc->nlevels) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_fmg: from = %zu, only %zu levels", from, vc->nlevels);
    if (cycles < 1 || cycles > 64) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_fmg: cycles = %d, must be 1..64", cycles);
    if (vc->cycle == RB_CYCLE_DOWN)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_fmg: a %s cycle brings nothing back up", rb_cycle_name(vc->cycle));
    return fmg(ctx, vc, from, cycles, work);
}

rb_status rb_vcycle_run_up(rb_context *ctx, const rb_vcycle *vc, size_t from, bool assign, double *norm,
                           bool *restricted, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_up: hierarchy is NULL");
    if (vc->nlevels < 2 || from > vc->nlevels - 2)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_up: from = %zu, must be below the coarsest of %zu levels", from,
                       vc->nlevels);
    if (norm == NULL || restricted == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_up: %s is NULL", norm == NULL ? "norm" : "restricted");
    if (vc->cycle == RB_CYCLE_DOWN)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_up: a %s cycle brings nothing back up", rb_cycle_name(vc->cycle));
    *restricted = false;
    const bool chain = chains(&vc->level[from], vc->cycle, NULL);
    rb_status st = up(ctx, vc, from, assign, norm, NULL, work, chain, restricted);
    if (st != RB_OK) *restricted = false;
    return st;
}

/* ---- network mode: the taped cycle and its backward ----------------------------------------------- */

rb_status rb_vtape_init(rb_context *ctx, rb_vtape *tape, size_t bytes)
{
    if (ctx == NULL) return RB_ENULL;
    if (tape == NULL) return rb_fail(ctx, RB_ENULL, "rb_vtape_init: tape is NULL");
    *tape = (rb_vtape){0};
    return rb_arena_reserve(ctx, &tape->mem, bytes > 0 ? bytes : 1);
}

void rb_vtape_clear(rb_vtape *tape)
{
    if (tape == NULL) return;
    rb_arena_reset(&tape->mem, 0);
    tape->last = tape->begin = NULL;
}

void rb_vtape_release(rb_context *ctx, rb_vtape *tape)
{
    if (tape == NULL) return;
    rb_arena_release(ctx, &tape->mem);
    tape->last = tape->begin = NULL;
}

/* Tape bytes of one visit of level l with cycle kind `kind` (the shape of cycle()). */
static size_t visit_bytes(const rb_vcycle *vc, size_t l, rb_cycle kind)
{
    const rb_vlevel *lv = &vc->level[l];
    const size_t grid = rb_arena_bytes(rb_tensor_count(&lv->u) * sizeof(double));
    if (l + 1 == vc->nlevels) return vc->coarse_solve != NULL ? rec_bytes() : lv->npre * (rec_bytes() + grid);
    const rb_vlevel *c = &vc->level[l + 1];
    const size_t cgrid = rb_arena_bytes(rb_tensor_count(&c->u) * sizeof(double));
    size_t b = (lv->npre + lv->npost) * (rec_bytes() + grid) + rec_bytes() + grid + cgrid /* restrict */ +
               rec_bytes() + cgrid /* correct */;
    switch (kind) {
    case RB_CYCLE_DOWN: return b - lv->npost * (rec_bytes() + grid) - rec_bytes() - cgrid + visit_bytes(vc, l + 1, RB_CYCLE_DOWN);
    case RB_CYCLE_V: return b + visit_bytes(vc, l + 1, RB_CYCLE_V);
    case RB_CYCLE_W: return b + visit_bytes(vc, l + 1, RB_CYCLE_W) * (l + 2 < vc->nlevels ? 2 : 1);
    default: return b + visit_bytes(vc, l + 1, RB_CYCLE_F) + (l + 2 < vc->nlevels ? visit_bytes(vc, l + 1, RB_CYCLE_V) : 0);
    }
}

size_t rb_vcycle_tape_bytes(const rb_vcycle *vc, size_t from)
{
    if (vc == NULL || vc->level == NULL || from >= vc->nlevels) return 0;
    return rec_bytes() + rb_arena_bytes(vc->nlevels * sizeof(double *)) + visit_bytes(vc, from, vc->cycle);
}

static bool every_step_has_S(const rb_vcycle *vc, size_t from, size_t *bad_level)
{
    for (size_t l = from; l < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        for (size_t s = 0; s < lv->npre + lv->npost; s++) {
            const rb_vstep *step = s < lv->npre ? &lv->pre[s] : &lv->post[s - lv->npre];
            if (step->S == NULL) return *bad_level = l, false;
        }
    }
    return true;
}

rb_status rb_vcycle_run_taped(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_vtape *tape, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_taped: hierarchy is NULL");
    if (tape == NULL || tape->mem.base == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_run_taped: tape is NULL or not initialised");
    if (from >= vc->nlevels)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_taped: from = %zu, only %zu levels", from, vc->nlevels);
    size_t bad;
    if (!every_step_has_S(vc, from, &bad))
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_taped: a smoothing step on level %zu has no S (rb_vstep.S)", bad);
    if (vc->coarse_solve != NULL && vc->coarse_adjoint == NULL && vc->coarse_data == NULL)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_run_taped: coarse_solve without data");
    const size_t mark = rb_arena_mark(&tape->mem);
    void *const last = tape->last;
    rec *b = record(ctx, tape, REC_BEGIN, from, 0, 0);
    const double **fcur = b ? rb_arena_alloc(ctx, &tape->mem, vc->nlevels * sizeof(double *)) : NULL;
    if (fcur == NULL) {
        rb_arena_reset(&tape->mem, mark), tape->last = last;
        return rb_fail(ctx, RB_ENOMEM, "rb_vcycle_run_taped: the tape is full (%zu bytes)", tape->mem.cap);
    }
    for (size_t l = 0; l < vc->nlevels; l++) fcur[l] = NULL;
    fcur[from] = vc->level[from].f.data;
    b->fcur = fcur;
    tape->begin = b;
    rb_status st = cycle(ctx, vc, from, vc->cycle, NULL, tape, work, NULL, false);
    tape->begin = NULL; /* read only while recording */
    if (st != RB_OK) rb_arena_reset(&tape->mem, mark), tape->last = last; /* nothing half-recorded stays */
    return st;
}

/* The adjoints of one level: du, df (dL/du, dL/df), t1, t2 scratch. */
typedef struct adj {
    rb_tensor du, df, t1, t2;
    const double *f; /* the level's current f (forward values) */
} adj;

size_t rb_vcycle_backward_workspace(const rb_vcycle *vc, size_t from)
{
    if (vc == NULL || vc->level == NULL || from >= vc->nlevels) return 0;
    size_t bytes = rb_arena_bytes(vc->nlevels * sizeof(adj)), ops = 0;
    for (size_t l = from; l < vc->nlevels; l++) {
        const rb_vlevel *lv = &vc->level[l];
        const rb_shape s = lv->u.shape;
        bytes += 4 * rb_arena_bytes(rb_tensor_count(&lv->u) * sizeof(double));
        size_t w = rb_op_backward_workspace(lv->A, s);
        for (size_t k = 0; k < lv->npre + lv->npost; k++) {
            const rb_vstep *step = k < lv->npre ? &lv->pre[k] : &lv->post[k - lv->npre];
            if (step->S != NULL && rb_op_backward_workspace(step->S, s) > w) w = rb_op_backward_workspace(step->S, s);
        }
        if (lv->R != NULL && rb_op_backward_workspace(lv->R, s) > w) w = rb_op_backward_workspace(lv->R, s);
        if (lv->Pi != NULL && rb_op_backward_workspace(lv->Pi, s) > w) w = rb_op_backward_workspace(lv->Pi, s);
        if (l + 1 < vc->nlevels && lv->P != NULL && rb_op_backward_workspace(lv->P, vc->level[l + 1].u.shape) > w)
            w = rb_op_backward_workspace(lv->P, vc->level[l + 1].u.shape);
        if (w > ops) ops = w;
    }
    size_t fw = rb_vcycle_workspace(vc);
    return bytes + (ops > fw ? ops : fw);
}

static double *grad_slot(rb_vgrad_fn grad_of, void *user, const rb_op *op)
{
    return grad_of != NULL && op != NULL ? grad_of(user, op) : NULL;
}

/* t1 = f - A u (r of the forward pass, recomputed). */
static rb_status residual_again(rb_context *ctx, const rb_op *A, const double *u, adj *a, rb_arena *work)
{
    rb_tensor ut = a->t1, ft = a->t1;
    ut.data = (double *)u, ft.data = (double *)a->f;
    return rb_vcycle_residual(ctx, A, &ut, &ft, &a->t1, NULL, work);
}

/* The backward of a residual r = f - A u that fed dr (in t2): df += dr, du -= A^T dr, dA. */
static rb_status residual_backward(rb_context *ctx, const rb_op *A, const double *u, adj *a, rb_vgrad_fn grad_of,
                                   void *user, rb_arena *work)
{
    rb_status st = rb_tensor_axpy(ctx, 1.0, &a->t2, &a->df);
    rb_tensor ut = a->t2;
    ut.data = (double *)u;
    if (st == RB_OK) st = rb_op_backward(ctx, A, &ut, NULL, NULL, &a->t2, -1.0, &a->du, grad_slot(grad_of, user, A), work);
    return st;
}

/* One record backwards. */
static rb_status undo(rb_context *ctx, const rb_vcycle *vc, const rec *r, adj *ad, rb_vgrad_fn grad_of, void *user,
                      rb_arena *work)
{
    const size_t l = r->level;
    const rb_vlevel *lv = &vc->level[l];
    adj *a = &ad[l];
    rb_status st = RB_OK;
    switch (r->kind) {
    case REC_STEP: {
        /* u' = u + h S(f - A u): dr = h J_S^T du' (the primitive's backward dx = dy + h J_F^T dy
         * with J_F^T = -A^T J_S^T, written through S and A to reach f and the parameters) */
        const rb_vstep *step = r->step;
        st = residual_again(ctx, lv->A, r->a, a, work);
        if (st == RB_OK) rb_zero(ctx, a->t2.data, rb_tensor_count(&a->t2));
        if (st == RB_OK)
            st = rb_op_backward(ctx, step->S, &a->t1, NULL, NULL, &a->du, step->h, &a->t2, grad_slot(grad_of, user, step->S), work);
        if (st == RB_OK) st = residual_backward(ctx, lv->A, r->a, a, grad_of, user, work);
        return st;
    }
    case REC_RESTRICT: { /* f_{l+1} = R (f - A u), u_{l+1} = 0; or u_{l+1} = Pi u, f_{l+1} += A_{l+1} u_{l+1} */
        adj *c = &ad[l + 1];
        if (lv->Pi != NULL) {
            const rb_vlevel *cl = &vc->level[l + 1];
            rb_tensor ut = a->t1;
            ut.data = r->a;
            st = rb_op_apply(ctx, lv->Pi, &ut, &c->t1, work); /* u_{l+1} at the start, again */
            /* d u_{l+1} (start) += A_{l+1}^T df_{l+1}, then du += Pi^T d u_{l+1} */
            if (st == RB_OK)
                st = rb_op_backward(ctx, cl->A, &c->t1, NULL, NULL, &c->df, 1.0, &c->du, grad_slot(grad_of, user, cl->A), work);
            if (st == RB_OK)
                st = rb_op_backward(ctx, lv->Pi, &ut, NULL, NULL, &c->du, 1.0, &a->du, grad_slot(grad_of, user, lv->Pi), work);
            if (st != RB_OK) return st;
        }
        st = residual_again(ctx, lv->A, r->a, a, work);
        if (st == RB_OK) rb_zero(ctx, a->t2.data, rb_tensor_count(&a->t2));
        if (st == RB_OK) st = rb_op_backward(ctx, lv->R, &a->t1, NULL, NULL, &c->df, 1.0, &a->t2, grad_slot(grad_of, user, lv->R), work);
        if (st == RB_OK) st = residual_backward(ctx, lv->A, r->a, a, grad_of, user, work);
        rb_zero(ctx, c->df.data, rb_tensor_count(&c->df));
        rb_zero(ctx, c->du.data, rb_tensor_count(&c->du));
        c->f = r->fprev;
        return st;
    }
    case REC_CORRECT: { /* u += P u_{l+1} (u_{l+1}'s adjoint so far: its seed as an output, if any) */
        adj *c = &ad[l + 1];
        rb_tensor ct = c->du;
        ct.data = r->a;
        return rb_op_backward(ctx, lv->P, &ct, NULL, NULL, &a->du, 1.0, &c->du, grad_slot(grad_of, user, lv->P), work);
    }
    case REC_COARSE: { /* u = A^{-1} f: df += A^{-T} du, du = 0 */
        rb_coarse_solve_fn adjoint = vc->coarse_adjoint ? vc->coarse_adjoint : vc->coarse_solve;
        st = adjoint(ctx, vc->coarse_data, &a->du, &a->t1);
        if (st == RB_OK) st = rb_tensor_axpy(ctx, 1.0, &a->t1, &a->df);
        rb_zero(ctx, a->du.data, rb_tensor_count(&a->du));
        return st;
    }
    default: return RB_OK;
    }
}

rb_status rb_vcycle_backward(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_vtape *tape, rb_tensor *du,
                             rb_tensor *df, const rb_tensor *const *seeds, rb_vgrad_fn grad_of, void *user,
                             rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (vc == NULL || vc->level == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_backward: hierarchy is NULL");
    if (tape == NULL) return rb_fail(ctx, RB_ENULL, "rb_vcycle_backward: tape is NULL");
    if (work == NULL || work->measuring) return rb_fail(ctx, RB_ENULL, "rb_vcycle_backward: needs a work arena");
    if (from >= vc->nlevels) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_backward: from = %zu, only %zu levels", from, vc->nlevels);
    rec *b = begin_of(tape);
    if (b == NULL) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_backward: the tape holds no cycle");
    if (b->level != from)
        return rb_fail(ctx, RB_EINVAL, "rb_vcycle_backward: the newest taped cycle ran from level %zu, not %zu", b->level, from);
    const rb_vlevel *top = &vc->level[from];
    rb_status st = rb_tensor_check_same(ctx, &top->u, "level u", du, "du");
    if (st == RB_OK) st = rb_tensor_check_same(ctx, &top->u, "level u", df, "df");
    if (st != RB_OK) return st;
    if (du->data == df->data) return rb_fail(ctx, RB_EINVAL, "rb_vcycle_backward: du and df alias");
    for (size_t l = from + 1; seeds != NULL && l < vc->nlevels && st == RB_OK; l++)
        if (seeds[l] != NULL) st = rb_tensor_check_same(ctx, &vc->level[l].u, "level u", seeds[l], "seed");
    if (st != RB_OK) return st;
    const size_t mark = rb_arena_mark(work);
    adj *ad = rb_arena_alloc(ctx, work, vc->nlevels * sizeof(adj));
    if (ad == NULL) return rb_fail(ctx, RB_ENOMEM, "rb_vcycle_backward: work arena too small (%zu bytes needed)",
                                   rb_vcycle_backward_workspace(vc, from));
    for (size_t l = from; l < vc->nlevels && st == RB_OK; l++) {
        const rb_shape s = vc->level[l].u.shape;
        adj *a = &ad[l];
        a->f = b->fcur[l];
        if (l == from) a->du = *du, a->df = *df;
        else st = rb_arena_tensor(ctx, work, &a->du, s);
        if (st == RB_OK && l != from) st = rb_arena_tensor(ctx, work, &a->df, s);
        if (st == RB_OK) st = rb_arena_tensor(ctx, work, &a->t1, s);
        if (st == RB_OK) st = rb_arena_tensor(ctx, work, &a->t2, s);
        if (st == RB_OK && a->t2.data == NULL) st = rb_fail(ctx, RB_ENOMEM, "rb_vcycle_backward: work arena too small");
        if (st == RB_OK && l != from) {
            if (seeds != NULL && seeds[l] != NULL) memcpy(a->du.data, seeds[l]->data, rb_tensor_count(&a->du) * sizeof(double));
            else rb_zero(ctx, a->du.data, rb_tensor_count(&a->du));
            rb_zero(ctx, a->df.data, rb_tensor_count(&a->df));
        }
    }
    for (const rec *r = tape->last; st == RB_OK && r != b; r = r->prev) st = undo(ctx, vc, r, ad, grad_of, user, work);
    rb_arena_reset(work, mark);
    if (st != RB_OK) return st;
    /* the cycle is consumed */
    tape->last = b->prev;
    rb_arena_reset(&tape->mem, (size_t)((char *)b - tape->mem.base));
    return RB_OK;
}
