/* smoother.c — the smoothing operator in residual-correction form, F(u) = S(f - A u).
 *
 * Every smoother of the V-cycle has this form (vcycle.h): Jacobi with S = D^{-1}, a
 * colour of red-black Gauss-Seidel with S = m_c D^{-1}, an MgNet smoother with
 * S = sigma(B * sigma(.)). rb_residual_step(F, h, u, u) is then the smoothing step
 * u <- u + h S(f - A u). A, S and f are referenced, not owned. */
#include "resbridge/vcycle.h"

#include <omp.h>
#include <string.h>

#include "conv_internal.h"
#include "grid_fast.h"
#include "op_internal.h"
#include "resbridge/residual.h"

typedef struct smoother_state {
    const rb_op *A, *S;
    rb_tensor f; /* a view: its data may change between calls */
} smoother_state;

static rb_status sm_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const smoother_state *s = op->state;
    if (!rb_shape_equal(in, s->f.shape)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "smoother: u has shape %s but f has %s", rb_shape_format(in, a, sizeof a),
                       rb_shape_format(s->f.shape, b, sizeof b));
    }
    *out = in;
    return RB_OK;
}

#define SM_MAX_THREADS 64 /* the fused step's row blocks (below) */

static size_t sm_fused_workspace(rb_shape in) { return rb_arena_bytes((7 * SM_MAX_THREADS + 1) * in.w * sizeof(double)); }

static size_t sm_workspace(const rb_op *op, rb_shape in)
{
    const smoother_state *s = op->state;
    size_t w = rb_op_workspace(s->A, in), ws = rb_op_workspace(s->S, in);
    if (ws > w) w = ws;
    const size_t generic = 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + w, fused = sm_fused_workspace(in);
    return generic > fused ? generic : fused;
}

/* r = f - A x into arena scratch. */
static rb_status residual(rb_context *ctx, const smoother_state *s, const rb_tensor *x, rb_tensor *r, rb_arena *work)
{
    rb_status st = rb_arena_tensor(ctx, work, r, x->shape);
    if (st == RB_OK && r->data == NULL) st = rb_fail(ctx, RB_EINVAL, "smoother: work arena is in measuring mode");
    if (st == RB_OK) st = rb_vcycle_residual(ctx, s->A, x, &s->f, r, NULL, work);
    return st;
}

static rb_status sm_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const smoother_state *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "smoother: needs a work arena of %zu bytes", sm_workspace(op, x->shape));
    const size_t mark = rb_arena_mark(work);
    rb_tensor r;
    rb_status st = residual(ctx, s, x, &r, work);
    if (st == RB_OK) st = s->S->type->apply(ctx, s->S, &r, y, work);
    rb_arena_reset(work, mark);
    return st;
}

/* J_F^T dy = -A^T J_S(r)^T dy. */
static rb_status sm_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                        rb_tensor *dx, rb_arena *work)
{
    const smoother_state *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "smoother: needs a work arena of %zu bytes", sm_workspace(op, x->shape));
    const size_t mark = rb_arena_mark(work);
    rb_tensor r, dr;
    rb_status st = residual(ctx, s, x, &r, work);
    if (st == RB_OK) st = rb_arena_tensor(ctx, work, &dr, x->shape);
    if (st == RB_OK) {
        rb_zero(ctx, dr.data, rb_tensor_count(&dr));
        st = rb_op_backward_unchecked(ctx, s->S, &r, NULL, NULL, dy, alpha, &dr, NULL, work);
    }
    if (st == RB_OK) st = rb_op_backward_unchecked(ctx, s->A, x, NULL, NULL, &dr, -1.0, dx, NULL, work);
    rb_arena_reset(work, mark);
    return st;
}

/* ---- the fused step: u <- u + h S(f - A u) in one pass, in place (2D, one channel) ------------------
 *
 * For A a stencil the residual kernels take (grid_fast.h) and S a single-channel stride-1 3x3
 * conv: residual rows go through a ring of three row buffers, r_{i+1} computed from the old
 * u before row i is overwritten, then u_i += h (S r)_i. Rows are split into one block per
 * thread; the residual rows next to each block's ends are computed from the old u before
 * any thread writes. Same numbers as the generic path to rounding (the taps of S are summed
 * in tap order from 0.0, as the conv reference does). Other operators take the generic path. */
typedef struct sm_fast {
    rb_stencil_any A;
    double w[9]; /* S's weights by (dy + 1) * 3 + (dx + 1), 0 for taps it lacks */
} sm_fast;

static bool sm_fast_init(const smoother_state *s, rb_shape in, sm_fast *k)
{
    const rb_conv_state *cs = rb_conv_state_of(s->S);
    if (in.c != 1 || in.d != 1 || cs == NULL || !rb_stencil_any_init(s->A, in, &k->A) || k->A.dims != 2) return false;
    if (cs->desc.dims != 2 || cs->desc.cin != 1 || cs->desc.cout != 1 || cs->desc.stride != 1 || cs->desc.transposed ||
        cs->desc.bias || cs->desc.ksize != 3)
        return false;
    memset(k->w, 0, sizeof k->w);
    for (int t = 0; t < cs->ntaps; t++) k->w[(cs->tap[t][1] + 1) * 3 + cs->tap[t][2] + 1] = s->S->params[t];
    return true;
}

/* u_row += h (S r) for the residual rows above, at and below (`zero`, a row of zeros, outside
 * the grid); taps S lacks have weight 0. The taps in tap order from 0.0, as the reference. */
static void sm_update_row(const sm_fast *k, size_t W, const double *const r[3], double h, double *restrict u_row)
{
    const double *a = r[0], *b = r[1], *c = r[2], *w = k->w;
    if (W == 1) {
        u_row[0] += h * (((0.0 + w[1] * a[0]) + w[4] * b[0]) + w[7] * c[0]);
        return;
    }
    u_row[0] += h * (((((0.0 + w[1] * a[0]) + w[2] * a[1]) + w[4] * b[0]) + w[5] * b[1]) + w[7] * c[0] + w[8] * c[1]);
    for (size_t x = 1; x + 1 < W; x++) {
        double acc = 0.0;
        acc += w[0] * a[x - 1], acc += w[1] * a[x], acc += w[2] * a[x + 1];
        acc += w[3] * b[x - 1], acc += w[4] * b[x], acc += w[5] * b[x + 1];
        acc += w[6] * c[x - 1], acc += w[7] * c[x], acc += w[8] * c[x + 1];
        u_row[x] += h * acc;
    }
    const size_t e = W - 1;
    u_row[e] += h * (((((0.0 + w[0] * a[e - 1]) + w[1] * a[e]) + w[3] * b[e - 1]) + w[4] * b[e]) + w[6] * c[e - 1] + w[7] * c[e]);
}

static rb_status sm_fused(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const smoother_state *s = op->state;
    sm_fast k;
    if (x->data != y->data || work == NULL || work->measuring || !sm_fast_init(s, x->shape, &k))
        return rb_residual_step_generic(ctx, op, h, x, y, work);
    const rb_shape sh = x->shape;
    const size_t N = sh.n, H = sh.h, W = sh.w;
    int threads = rb_context_threads(ctx);
    if (threads > SM_MAX_THREADS) threads = SM_MAX_THREADS;
    if ((size_t)threads > H) threads = (int)H;
    if (N * H * W < 16384) threads = 1;
    const size_t mark = rb_arena_mark(work);
    double *buf = rb_arena_alloc(ctx, work, (7 * (size_t)threads + 1) * W * sizeof(double));
    if (buf == NULL) {
        rb_arena_reset(work, mark);
        return rb_residual_step_generic(ctx, op, h, x, y, work);
    }
    const double *zero = buf + 7 * (size_t)threads * W;
    memset(buf + 7 * (size_t)threads * W, 0, W * sizeof(double));
    double *u = y->data;
    const double *f = s->f.data;
    for (size_t n = 0; n < N; n++) {
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            const size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
            const size_t i0 = H * t / T, i1 = H * (t + 1) / T;
            double *pre[4], *ring[3]; /* the ring: rows i - 1, i, i + 1 may all be computed ones */
            for (int j = 0; j < 4; j++) pre[j] = buf + (7 * t + (size_t)j) * W;
            for (int j = 0; j < 3; j++) ring[j] = buf + (7 * t + 4 + (size_t)j) * W;
            /* from the old u: r_{i0-1}, r_{i0}, r_{i1-1}, r_{i1} */
            const size_t rows[4] = {i0 - 1, i0, i1 - 1, i1};
            for (int j = 0; j < 4; j++)
                if (i1 > i0 && rows[j] < H) rb_stencil_residual_line(&k.A, sh, x->data, f, n, rows[j], 0, sh.h, pre[j]);
#pragma omp barrier
            if (i1 > i0) {
                const double *r[3] = {i0 > 0 ? pre[0] : zero, pre[1], zero};
                int next = 0;
                for (size_t i = i0; i < i1; i++) {
                    const double *r_next = zero;
                    if (i + 1 >= H) r_next = zero;
                    else if (i + 1 == i1) r_next = pre[3];
                    else if (i + 1 == i1 - 1) r_next = pre[2];
                    else {
                        rb_stencil_residual_line(&k.A, sh, u, f, n, i + 1, 0, sh.h, ring[next]); /* rows i .. i + 2: still old */
                        r_next = ring[next];
                        next = (next + 1) % 3;
                    }
                    r[2] = r_next;
                    sm_update_row(&k, W, r, h, u + (n * H + i) * W);
                    r[0] = r[1], r[1] = r[2];
                }
            }
        }
    }
    rb_arena_reset(work, mark);
    return RB_OK;
}

static void sm_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type smoother_type = {
    .name = "smoother",
    .flags = RB_OP_SAME_SHAPE,
    .shape = sm_shape,
    .workspace = sm_workspace,
    .apply = sm_apply,
    .vjp = sm_vjp,
    .residual_fused = sm_fused,
    .fused_in_place = 1,
    .destroy = sm_destroy,
};

rb_status rb_op_smoother_create(rb_context *ctx, const rb_op *A, const rb_op *S, const rb_tensor *f, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (A == NULL || S == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_smoother_create: A or S is NULL");
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_smoother_create: out is NULL");
    rb_status st = rb_tensor_check(ctx, f, "rb_op_smoother_create: f");
    if (st == RB_OK) st = rb_op_check_keeps_shape(ctx, A, f->shape, "rb_op_smoother_create (A)");
    if (st == RB_OK) st = rb_op_check_keeps_shape(ctx, S, f->shape, "rb_op_smoother_create (S)");
    if (st != RB_OK) return st;
    smoother_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->A = A, s->S = S, s->f = *f, s->f.owns = false;
    st = rb_op_new(ctx, &smoother_type, s, 0, out);
    if (st != RB_OK) rb_free(ctx, s);
    return st;
}
