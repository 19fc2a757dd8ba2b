/* xsplit.c — grids stored each row's even points first, then its odd ones, and the
 * operators seen through that layout (see xsplit.h).
 *
 * The op's reference path permutes into work scratch, applies the plain operator and
 * permutes back. Its fused paths are the colour sweep op's (colour.c) with the red-black
 * kernel reading split rows (redblack.c): the colour's points, their left and right
 * neighbours and the neighbour rows' values are contiguous runs of a split row. */
#include "resbridge/xsplit.h"

#include "grid_fast.h"
#include "op_internal.h"
#include "redblack_internal.h"
#include "xsplit_internal.h"
#include "resbridge/residual.h"

#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

typedef struct xs_state {
    const rb_op *inner;
    bool in_split, out_split;
    const rb_tensor *rhs; /* the inner op's right-hand side, split (rb_op_xsplit_rhs), or NULL */
    rb_tensor *rhs_plain; /* the plain one the inner op reads, filled from rhs by the reference path */
} xs_state;

static const rb_op_type xs_type, xs_type_linear;
static bool is_xs(const rb_op *op) { return op->type == &xs_type || op->type == &xs_type_linear; }

void rb_xsplit_row(const double *in, double *out, size_t W, bool to_split)
{
    const size_t odd = (W + 1) / 2;
    size_t x = 0;
#if defined(__AVX2__)
    /* 8 values at a time: unpack even / odd lanes (x, x+4, x+2, x+6 order), then put them in order */
    if (to_split) {
        for (; x + 8 <= W; x += 8) {
            const __m256d A = _mm256_loadu_pd(in + x), B = _mm256_loadu_pd(in + x + 4);
            _mm256_storeu_pd(out + x / 2, _mm256_permute4x64_pd(_mm256_unpacklo_pd(A, B), 0xD8));
            _mm256_storeu_pd(out + odd + x / 2, _mm256_permute4x64_pd(_mm256_unpackhi_pd(A, B), 0xD8));
        }
    } else {
        for (; x + 8 <= W; x += 8) {
            const __m256d E = _mm256_permute4x64_pd(_mm256_loadu_pd(in + x / 2), 0xD8);
            const __m256d O = _mm256_permute4x64_pd(_mm256_loadu_pd(in + odd + x / 2), 0xD8);
            _mm256_storeu_pd(out + x, _mm256_unpacklo_pd(E, O));
            _mm256_storeu_pd(out + x + 4, _mm256_unpackhi_pd(E, O));
        }
    }
#endif
    for (; x < W; x++) {
        const size_t p = rb_xsplit_at(x, odd);
        if (to_split) out[p] = in[x];
        else out[x] = in[p];
    }
}

/* rows of W values: in -> out split (to_split) or back. */
static void split_rows(int threads, const double *in, double *out, size_t rows, size_t W, bool to_split)
{
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (size_t r = 0; r < rows; r++) rb_xsplit_row(in + r * W, out + r * W, W, to_split);
}

static void layout(rb_context *ctx, const rb_tensor *x, rb_tensor *y, bool to_split)
{
    const size_t W = x->shape.w, rows = rb_tensor_count(x) / W;
    split_rows(rb_parallel_threads(ctx, rows * W), x->data, y->data, rows, W, to_split);
}

rb_status rb_xsplit(rb_context *ctx, const rb_tensor *x, rb_tensor *y, bool to_split)
{
    if (ctx == NULL) return RB_ENULL;
    if (x == NULL || y == NULL || x->data == NULL || y->data == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_xsplit: %s is NULL", x == NULL || x->data == NULL ? "x" : "y");
    if (!rb_shape_equal(x->shape, y->shape)) {
        char a[64], b[64];
        return rb_fail(ctx, RB_ESHAPE, "rb_xsplit: x is %s but y is %s", rb_shape_format(x->shape, a, sizeof a),
                       rb_shape_format(y->shape, b, sizeof b));
    }
    const size_t n = rb_tensor_count(x);
    if (n == 0) return rb_fail(ctx, RB_EINVAL, "rb_xsplit: x has no entries");
    if (x->data < y->data + n && y->data < x->data + n) return rb_fail(ctx, RB_EINVAL, "rb_xsplit: x and y overlap");
    layout(ctx, x, y, to_split);
    return RB_OK;
}

/* ---- the op ----------------------------------------------------------------------------------- */

static rb_status xs_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const xs_state *s = op->state;
    return rb_op_shape(ctx, s->inner, in, out);
}

static size_t xs_workspace(const rb_op *op, rb_shape in)
{
    const xs_state *s = op->state;
    rb_shape out;
    if (rb_op_shape(NULL, s->inner, in, &out) != RB_OK) return 0;
    /* the input and the output in the plain layout (the vjp: x, dy and dx) */
    return 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_arena_bytes(rb_shape_count(out) * sizeof(double)) +
           rb_op_workspace(s->inner, in);
}

/* t = x in the plain layout: a scratch copy if split, else x itself. */
static rb_status plain(rb_context *ctx, rb_arena *work, const rb_tensor *x, bool split, rb_tensor *t)
{
    if (!split) {
        *t = *x;
        return RB_OK;
    }
    rb_status st = rb_arena_tensor(ctx, work, t, x->shape);
    if (st == RB_OK && t->data == NULL) st = rb_fail(ctx, RB_EINVAL, "xsplit: work arena is in measuring mode");
    if (st == RB_OK) layout(ctx, x, t, false);
    return st;
}

static rb_status xs_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const xs_state *s = op->state;
    /* a 2D restriction from a split grid: its rows read as they are stored */
    if (s->in_split && rb_transfer_restrict_split(ctx, s->inner, x, y, s->out_split)) return RB_OK;
    const size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    rb_tensor xp, yp = *y;
    rb_status st = plain(ctx, work, x, s->in_split, &xp);
    if (st == RB_OK && s->out_split) { /* the plain output in scratch (its old values are not needed) */
        st = rb_arena_tensor(ctx, work, &yp, y->shape);
        if (st == RB_OK && yp.data == NULL) st = rb_fail(ctx, RB_EINVAL, "xsplit: work arena is in measuring mode");
    }
    if (st == RB_OK) st = rb_op_apply(ctx, s->inner, &xp, &yp, work);
    if (st == RB_OK && s->out_split) layout(ctx, &yp, y, true);
    if (work != NULL) rb_arena_reset(work, mark);
    return st;
}

/* dx += alpha S_in J^T S_out^T dy */
static rb_status xs_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                        rb_tensor *dx, rb_arena *work)
{
    const xs_state *s = op->state;
    const size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    rb_tensor xp, dyp, dxp = *dx;
    rb_status st = plain(ctx, work, x, s->in_split, &xp);
    if (st == RB_OK) st = plain(ctx, work, dy, s->out_split, &dyp);
    if (st == RB_OK && s->in_split) {
        st = plain(ctx, work, dx, true, &dxp);
        if (st == RB_OK) memset(dxp.data, 0, rb_tensor_count(dx) * sizeof(double));
    }
    if (st == RB_OK) st = rb_op_vjp(ctx, s->inner, &xp, &dyp, alpha, &dxp, work);
    if (st == RB_OK && s->in_split) { /* dx += S dxp */
        const size_t W = dx->shape.w, odd = (W + 1) / 2, n = rb_tensor_count(dx);
        for (size_t i = 0; i < n; i++) dx->data[i - i % W + rb_xsplit_at(i % W, odd)] += dxp.data[i];
    }
    if (work != NULL) rb_arena_reset(work, mark);
    return st;
}

/* The sweeps on the split grid: the colour sweep kernel on split rows, else the reference path. */
static rb_status xs_fused(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                          rb_arena *work)
{
    const xs_state *s = op->state;
    if (s->in_split && s->out_split) {
        const rb_residual_pass none = {0};
        bool done = false;
        if (x->data != y->data) memcpy(y->data, x->data, rb_tensor_count(x) * sizeof(double));
        rb_status st = RB_OK;
        if (s->rhs != NULL && rb_shape_equal(s->rhs->shape, x->shape))
            st = rb_colour_sweep_pass(ctx, s->inner, h, y, &none, s->rhs->data, false, &done, work);
        if (st != RB_OK || done) return st;
        x = y;
    }
    if (s->rhs != NULL) layout(ctx, s->rhs, s->rhs_plain, false); /* the reference path reads it plain */
    return rb_residual_step_generic(ctx, op, h, x, y, work);
}

/* The plain operator behind a split view whose fine side (in: its input) is split; *coarse: whether
 * its other side is split too (-1 on entry: either, else it must agree). NULL op: none asked. */
static bool unwrap(const rb_op *op, bool fine_is_input, const rb_op **inner, int *coarse)
{
    if (op == NULL) return true;
    if (!is_xs(op)) return false;
    const xs_state *s = op->state;
    const bool fine = fine_is_input ? s->in_split : s->out_split, other = fine_is_input ? s->out_split : s->in_split;
    if (!fine || (*coarse >= 0 && *coarse != (int)other)) return false;
    *inner = s->inner, *coarse = other;
    return true;
}

/* The fused pass of the plain sweep op, on split rows: the correction from a split view of a
 * prolongation, the residual of a split view of the stencil, its restriction by a split view of
 * a restriction; the coarse grid of the last two plain or split, alike. */
static rb_status xs_fused_pass(rb_context *ctx, const rb_op *op, double h, rb_tensor *u, const rb_residual_pass *pass,
                               bool *done, rb_arena *work)
{
    const xs_state *s = op->state;
    rb_residual_pass p = *pass;
    int coarse = -1, same = 1;
    if (!s->in_split || !s->out_split || s->rhs == NULL || !rb_shape_equal(s->rhs->shape, u->shape) ||
        !unwrap(pass->P, false, &p.P, &coarse) || !unwrap(pass->A, true, &p.A, &same) || same != 1 ||
        !unwrap(pass->R, true, &p.R, &coarse))
        return RB_OK;
    return rb_colour_sweep_pass(ctx, s->inner, h, u, &p, s->rhs->data, coarse == 1, done, work);
}

static void xs_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

#define XS_TYPE(name_, flags_)                                                                              \
    {                                                                                                       \
        .name = name_, .flags = flags_, .shape = xs_shape, .workspace = xs_workspace, .apply = xs_apply,   \
        .vjp = xs_vjp, .residual_fused = xs_fused, .fused_in_place = 1, .residual_fused_pass = xs_fused_pass, \
        .destroy = xs_destroy,                                                                              \
    }
static const rb_op_type xs_type = XS_TYPE("xsplit", 0), xs_type_linear = XS_TYPE("xsplit (linear)", RB_OP_LINEAR);

rb_status rb_op_xsplit_create(rb_context *ctx, const rb_op *inner, bool in_split, bool out_split, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_xsplit_create: out is NULL");
    if (inner == NULL || inner->type == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_xsplit_create: inner is NULL");
    if (!in_split && !out_split)
        return rb_fail(ctx, RB_EINVAL, "rb_op_xsplit_create: neither side is split (use %s itself)", inner->type->name);
    if (inner->type->vjp == NULL)
        return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_xsplit_create: inner (%s) has no vjp", inner->type->name);
    xs_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->inner = inner, s->in_split = in_split, s->out_split = out_split;
    rb_status st = rb_op_new(ctx, (inner->type->flags & RB_OP_LINEAR) ? &xs_type_linear : &xs_type, s, 0, out);
    if (st != RB_OK) rb_free(ctx, s);
    return st;
}

bool rb_op_xsplit_info(const rb_op *op, const rb_op **inner, bool *in_split, bool *out_split)
{
    if (op == NULL || op->type == NULL || !is_xs(op)) return false;
    const xs_state *s = op->state;
    if (inner != NULL) *inner = s->inner;
    if (in_split != NULL) *in_split = s->in_split;
    if (out_split != NULL) *out_split = s->out_split;
    return true;
}

rb_status rb_op_xsplit_rhs(rb_context *ctx, rb_op *op, const rb_tensor *f_split, rb_tensor *f_plain)
{
    if (ctx == NULL) return RB_ENULL;
    if (op == NULL || op->type == NULL || !is_xs(op))
        return rb_fail(ctx, RB_EINVAL, "rb_op_xsplit_rhs: op (%s) is not an xsplit op", op && op->type ? op->type->name : "NULL");
    xs_state *s = op->state;
    if ((f_split == NULL) != (f_plain == NULL))
        return rb_fail(ctx, RB_ENULL, "rb_op_xsplit_rhs: f_split and f_plain go together (%s is NULL)",
                       f_split == NULL ? "f_split" : "f_plain");
    if (f_split != NULL && (f_split->data == NULL || f_plain->data == NULL))
        return rb_fail(ctx, RB_ENULL, "rb_op_xsplit_rhs: %s has no data", f_split->data == NULL ? "f_split" : "f_plain");
    if (f_split != NULL && !rb_shape_equal(f_split->shape, f_plain->shape)) {
        char a[64], b[64];
        return rb_fail(ctx, RB_ESHAPE, "rb_op_xsplit_rhs: f_split is %s but f_plain is %s",
                       rb_shape_format(f_split->shape, a, sizeof a), rb_shape_format(f_plain->shape, b, sizeof b));
    }
    if (f_split != NULL && f_split->data < f_plain->data + rb_tensor_count(f_plain) &&
        f_plain->data < f_split->data + rb_tensor_count(f_split))
        return rb_fail(ctx, RB_EINVAL, "rb_op_xsplit_rhs: f_split and f_plain overlap");
    if (f_split != NULL && (!s->in_split || !s->out_split))
        return rb_fail(ctx, RB_EINVAL, "rb_op_xsplit_rhs: only a view split on both sides reads a right-hand side");
    s->rhs = f_split, s->rhs_plain = f_plain;
    return RB_OK;
}

