/* blocks.c — two-branch sums, channel concatenation and the highway gate as
 * taped composite rb_ops (see blocks.h). */
#include "resbridge/blocks.h"
#include "op_internal.h"

#include <math.h>
#include <string.h>

/* Every composite here keeps two or one parts; their outputs and tapes go on the tape. */
typedef struct branch_state {
    rb_parts parts; /* first member: see op_internal.h */
    double a, b;    /* sum: coefficients */
} branch_state;

static rb_op *part(const rb_op *op, size_t i) { return ((const branch_state *)op->state)->parts.part[i]; }
static size_t nparts(const rb_op *op) { return ((const branch_state *)op->state)->parts.count; }
static size_t dbytes(rb_shape s) { return rb_arena_bytes(rb_shape_count(s) * sizeof(double)); }

/* Tape: each part's output, then each part's tape. outs[i] are views; tapes[i] pointers. */
typedef struct branch_tape {
    rb_tensor out[2];
    void *tape[2];
    size_t bytes;
} branch_tape;

static rb_status layout(rb_context *ctx, const rb_op *op, rb_shape in, void *tape, branch_tape *bt)
{
    size_t at = 0, k = nparts(op);
    for (size_t i = 0; i < k; i++) {
        rb_shape s;
        rb_status st = rb_op_shape(ctx, part(op, i), in, &s);
        if (st != RB_OK) return st;
        bt->out[i] = (rb_tensor){.shape = s, .data = tape ? (double *)((char *)tape + at) : NULL, .owns = false};
        at += dbytes(s);
    }
    for (size_t i = 0; i < k; i++) {
        bt->tape[i] = rb_tape_at(tape, at);
        at += rb_arena_bytes(rb_op_tape_bytes(part(op, i), in));
    }
    bt->bytes = at;
    return RB_OK;
}

static size_t branch_tape_bytes(const rb_op *op, rb_shape in)
{
    branch_tape bt;
    return layout(NULL, op, in, NULL, &bt) == RB_OK ? bt.bytes : 0;
}

/* tape + output (untaped calls), two gradient buffers of the input size, the parts' scratch */
static size_t branch_workspace(const rb_op *op, rb_shape in)
{
    branch_tape bt;
    if (layout(NULL, op, in, NULL, &bt) != RB_OK) return 0;
    size_t part_ws = 0, out = 0;
    for (size_t i = 0; i < nparts(op); i++) {
        size_t w = rb_op_workspace(part(op, i), in);
        if (w > part_ws) part_ws = w;
        out += dbytes(bt.out[i].shape);
    }
    return rb_arena_bytes(bt.bytes) + out + 2 * dbytes(in) + part_ws;
}

static rb_status forward_parts(rb_context *ctx, const rb_op *op, const rb_tensor *x, void *tape, rb_arena *work,
                               branch_tape *bt)
{
    rb_status st = layout(ctx, op, x->shape, tape, bt);
    for (size_t i = 0; st == RB_OK && i < nparts(op); i++)
        st = rb_op_forward_unchecked(ctx, part(op, i), x, &bt->out[i], bt->tape[i], work);
    return st;
}

static void destroy(rb_context *ctx, rb_op *op)
{
    branch_state *s = op->state;
    rb_parts_release(ctx, &s->parts);
    rb_free(ctx, s);
}

static rb_status create(rb_context *ctx, const char *fn, const rb_op_type *type, rb_op **parts, size_t count, double a,
                        double b, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    size_t np;
    rb_status st = rb_parts_check(ctx, fn, parts, count, &np, NULL);
    if (st != RB_OK) return st;
    branch_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    rb_op *op;
    st = rb_op_new(ctx, type, s, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, s);
        return st;
    }
    s->a = a, s->b = b;
    rb_parts_adopt(&s->parts, op, parts, count);
    *out = op;
    return RB_OK;
}

#define BRANCH_TYPE(ident, label, prefix, extra, overwrite)                                                     \
    static const rb_op_type ident = {.name = label, .flags = RB_OP_HAS_PARAMS | RB_OP_COMPOSITE | (extra),      \
                                     .shape = prefix##_shape, .workspace = branch_workspace,                    \
                                     .apply = rb_op_apply_via_tape, .vjp = rb_op_vjp_via_tape,                  \
                                     .param_grad = rb_op_param_grad_via_tape, .destroy = destroy,               \
                                     .tape_bytes = branch_tape_bytes, .forward_taped = prefix##_forward,        \
                                     .backward_taped = prefix##_backward_taped, .backward_overwrite = (overwrite)}

/* ---- sum: y = a A(x) + b B(x) ------------------------------------------------------------------ */

static rb_status sum_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    rb_shape sa, sb;
    rb_status st = rb_op_shape(ctx, part(op, 0), in, &sa);
    if (st == RB_OK) st = rb_op_shape(ctx, part(op, 1), in, &sb);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(sa, sb)) {
        char a[64], b[64], c[64];
        return rb_fail(ctx, RB_ESHAPE, "sum of branches: for input %s, %s gives %s but %s gives %s",
                       rb_shape_format(in, c, sizeof c), part(op, 0)->type->name, rb_shape_format(sa, a, sizeof a),
                       part(op, 1)->type->name, rb_shape_format(sb, b, sizeof b));
    }
    *out = sa;
    return RB_OK;
}

static rb_status sum_forward(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                             rb_arena *work)
{
    const branch_state *s = op->state;
    branch_tape bt;
    rb_status st = forward_parts(ctx, op, x, tape, work, &bt);
    if (st != RB_OK) return st;
    const size_t n = rb_tensor_count(y);
    const double a = s->a, b = s->b, *A = bt.out[0].data, *B = bt.out[1].data;
    double *out = y->data;
    const int T = rb_parallel_threads(ctx, n);
#pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
    for (size_t i = 0; i < n; i++) out[i] = a * A[i] + b * B[i];
    return RB_OK;
}

/* assign: the first branch overwrites dx, the second adds to it */
static rb_status sum_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                              const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                              rb_arena *work, bool assign)
{
    (void)y;
    const branch_state *s = op->state;
    branch_tape bt;
    rb_status st = layout(ctx, op, x->shape, (void *)tape, &bt);
    const double coef[2] = {s->a, s->b};
    for (size_t i = 0; st == RB_OK && i < 2; i++) {
        double *dp = rb_parts_grad(op, part(op, i), dparams);
        st = i == 0 && assign
                 ? rb_op_backward_overwrite_unchecked(ctx, part(op, i), x, &bt.out[i], bt.tape[i], dy, alpha * coef[i],
                                                      dx, dp, work)
                 : rb_op_backward_unchecked(ctx, part(op, i), x, &bt.out[i], bt.tape[i], dy, alpha * coef[i], dx, dp,
                                            work);
    }
    return st;
}

RB_BACKWARD_PAIR(sum, sum_backward)

BRANCH_TYPE(sum_type, "sum of branches", sum, 0, sum_backward_overwrite);

rb_status rb_op_sum_create(rb_context *ctx, rb_op *A, rb_op *B, double a, double b, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (!isfinite(a) || !isfinite(b)) return rb_fail(ctx, RB_EINVAL, "rb_op_sum_create: coefficients %g, %g must be finite", a, b);
    rb_op *parts[2] = {A, B};
    return create(ctx, "rb_op_sum_create", &sum_type, parts, 2, a, b, out);
}

/* ---- concat: y = [x, F(x)] along the channels ---------------------------------------------------- */

static rb_status concat_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    rb_shape f;
    rb_status st = rb_op_shape(ctx, part(op, 0), in, &f);
    if (st != RB_OK) return st;
    if (f.n != in.n || f.d != in.d || f.h != in.h || f.w != in.w) {
        char a[64], b[64];
        return rb_fail(ctx, RB_ESHAPE, "concat: the branch (%s) maps %s to %s; it must keep the batch and grid",
                       part(op, 0)->type->name, rb_shape_format(in, a, sizeof a), rb_shape_format(f, b, sizeof b));
    }
    *out = in;
    out->c = in.c + f.c;
    return RB_OK;
}

static rb_status concat_forward(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                rb_arena *work)
{
    branch_tape bt;
    rb_status st = forward_parts(ctx, op, x, tape, work, &bt);
    if (st != RB_OK) return st;
    const size_t N = x->shape.n, px = rb_tensor_count(x) / N, pf = rb_tensor_count(&bt.out[0]) / N;
    for (size_t n = 0; n < N; n++) {
        memcpy(y->data + n * (px + pf), x->data + n * px, px * sizeof(double));
        memcpy(y->data + n * (px + pf) + px, bt.out[0].data + n * pf, pf * sizeof(double));
    }
    return RB_OK;
}

static rb_status concat_backward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                       const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                       rb_arena *work)
{
    (void)y;
    branch_tape bt;
    rb_status st = layout(ctx, op, x->shape, (void *)tape, &bt);
    if (st != RB_OK) return st;
    const size_t N = x->shape.n, px = rb_tensor_count(x) / N, pf = rb_tensor_count(&bt.out[0]) / N;
    size_t mark = rb_arena_mark(work);
    rb_tensor df;
    st = rb_arena_tensor(ctx, work, &df, bt.out[0].shape);
    if (st == RB_OK && df.data == NULL) st = rb_fail(ctx, RB_ENOMEM, "concat: work arena too small (rb_op_workspace)");
    if (st == RB_OK) {
        for (size_t n = 0; n < N; n++) {
            const double *g = dy->data + n * (px + pf);
            if (dx)
                for (size_t i = 0; i < px; i++) dx->data[n * px + i] += alpha * g[i];
            memcpy(df.data + n * pf, g + px, pf * sizeof(double));
        }
        st = rb_op_backward_unchecked(ctx, part(op, 0), x, &bt.out[0], bt.tape[0], &df, alpha, dx,
                                      rb_parts_grad(op, part(op, 0), dparams), work);
    }
    rb_arena_reset(work, mark);
    return st;
}

BRANCH_TYPE(concat_type, "concat", concat, 0, NULL);

rb_status rb_op_concat_create(rb_context *ctx, rb_op *F, rb_op **out)
{
    return create(ctx, "rb_op_concat_create", &concat_type, &F, 1, 1, 1, out);
}

/* ---- the highway gate: G(x) = T(x) (F(x) - x) ---------------------------------------------------- */

static rb_status gate_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    for (size_t i = 0; i < 2; i++) {
        rb_status st = rb_op_check_keeps_shape(ctx, part(op, i), in, i ? "highway gate (T)" : "highway gate (F)");
        if (st != RB_OK) return st;
    }
    *out = in;
    return RB_OK;
}

static rb_status gate_forward(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                              rb_arena *work)
{
    branch_tape bt;
    rb_status st = forward_parts(ctx, op, x, tape, work, &bt);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x);
    for (size_t i = 0; i < n; i++) y->data[i] = bt.out[1].data[i] * (bt.out[0].data[i] - x->data[i]);
    return RB_OK;
}

/* dF = dy T, dT = dy (F - x), dx += -alpha dy T, then through F and T. */
static rb_status gate_backward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                     const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                     rb_arena *work)
{
    (void)y;
    branch_tape bt;
    rb_status st = layout(ctx, op, x->shape, (void *)tape, &bt);
    if (st != RB_OK) return st;
    size_t mark = rb_arena_mark(work), n = rb_tensor_count(x);
    rb_tensor g[2];
    for (size_t i = 0; st == RB_OK && i < 2; i++) {
        st = rb_arena_tensor(ctx, work, &g[i], x->shape);
        if (st == RB_OK && g[i].data == NULL) st = rb_fail(ctx, RB_ENOMEM, "highway gate: work arena too small");
    }
    if (st == RB_OK) {
        const double *F = bt.out[0].data, *T = bt.out[1].data;
        for (size_t i = 0; i < n; i++) {
            g[0].data[i] = dy->data[i] * T[i];
            g[1].data[i] = dy->data[i] * (F[i] - x->data[i]);
            if (dx) dx->data[i] -= alpha * g[0].data[i];
        }
    }
    for (size_t i = 0; st == RB_OK && i < 2; i++)
        st = rb_op_backward_unchecked(ctx, part(op, i), x, &bt.out[i], bt.tape[i], &g[i], alpha, dx,
                                      rb_parts_grad(op, part(op, i), dparams), work);
    rb_arena_reset(work, mark);
    return st;
}

BRANCH_TYPE(gate_type, "highway gate", gate, RB_OP_SAME_SHAPE, NULL);

rb_status rb_op_highway_gate_create(rb_context *ctx, rb_op *F, rb_op *T, rb_op **out)
{
    rb_op *parts[2] = {F, T};
    return create(ctx, "rb_op_highway_gate_create", &gate_type, parts, 2, 1, 1, out);
}
