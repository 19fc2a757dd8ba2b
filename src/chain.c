/* chain.c — F = F_k o ... o F_1 as one rb_op (see chain.h).
 *
 * The taped forward keeps every intermediate and every part's own tape; the
 * taped backward runs the parts backwards over them, nothing recomputed. The
 * untaped calls (apply, vjp, param_grad) run the same two routines with the
 * tape in the work arena. */
#include "resbridge/chain.h"
#include "op_internal.h"

#include <stdio.h>
#include <string.h>

typedef struct chain_state {
    rb_parts parts; /* first member: see op_internal.h */
} chain_state;

/* Shapes after each part: shape[0] = in, shape[i+1] = part i's output. */
static rb_status chain_shapes(rb_context *ctx, const chain_state *cs, rb_shape in, rb_shape *shape)
{
    shape[0] = in;
    for (size_t i = 0; i < cs->parts.count; i++) {
        rb_status st = rb_op_shape(ctx, cs->parts.part[i], shape[i], &shape[i + 1]);
        if (st != RB_OK && ctx != NULL) { /* name the layer: "layer 3 of 9 (batch norm): ..." */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", rb_context_message(ctx));
            return rb_fail(ctx, st, "layer %zu of %zu (%s): %s", i + 1, cs->parts.count, cs->parts.part[i]->type->name, msg);
        }
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

static rb_status chain_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const chain_state *cs = op->state;
    rb_shape shape[RB_PARTS_MAX + 1];
    rb_status st = chain_shapes(ctx, cs, in, shape);
    if (st == RB_OK) *out = shape[cs->parts.count];
    return st;
}

/* Tape layout: intermediates v_1 .. v_{k-1}, then each part's tape; off[i] = part i's tape offset. */
static size_t chain_layout(const chain_state *cs, const rb_shape *shape, size_t *off)
{
    size_t bytes = 0, k = cs->parts.count;
    for (size_t i = 1; i < k; i++) bytes += rb_arena_bytes(rb_shape_count(shape[i]) * sizeof(double));
    for (size_t i = 0; i < k; i++) {
        if (off) off[i] = bytes;
        bytes += rb_arena_bytes(rb_op_tape_bytes(cs->parts.part[i], shape[i]));
    }
    return bytes;
}

static size_t chain_tape_bytes(const rb_op *op, rb_shape in)
{
    const chain_state *cs = op->state;
    rb_shape shape[RB_PARTS_MAX + 1];
    if (chain_shapes(NULL, cs, in, shape) != RB_OK) return 0;
    return chain_layout(cs, shape, NULL);
}

static size_t chain_workspace(const rb_op *op, rb_shape in)
{
    const chain_state *cs = op->state;
    rb_shape shape[RB_PARTS_MAX + 1];
    if (chain_shapes(NULL, cs, in, shape) != RB_OK) return 0;
    /* the tape and output (untaped calls), two gradient buffers, the largest part's own scratch */
    size_t g = 0, part = 0;
    for (size_t i = 1; i < cs->parts.count; i++) {
        size_t b = rb_arena_bytes(rb_shape_count(shape[i]) * sizeof(double));
        if (b > g) g = b;
    }
    for (size_t i = 0; i < cs->parts.count; i++) {
        size_t w = rb_op_workspace(cs->parts.part[i], shape[i]);
        if (w > part) part = w;
    }
    return rb_arena_bytes(chain_layout(cs, shape, NULL)) +
           rb_arena_bytes(rb_shape_count(shape[cs->parts.count]) * sizeof(double)) + 2 * g + part;
}

/* v[0] = x, v[k] = y, v[1..k-1] views into the tape; off[] the parts' tape offsets. */
static rb_status chain_views(rb_context *ctx, const chain_state *cs, const rb_tensor *x, const rb_tensor *y,
                             const void *tape, rb_tensor *v, size_t *off)
{
    rb_shape shape[RB_PARTS_MAX + 1];
    rb_status st = chain_shapes(ctx, cs, x->shape, shape);
    if (st != RB_OK) return st;
    size_t k = cs->parts.count, at = 0;
    chain_layout(cs, shape, off);
    v[0] = *x;
    v[k] = *y;
    for (size_t i = 1; i < k; i++) {
        v[i] = (rb_tensor){.shape = shape[i], .data = (double *)((char *)tape + at), .owns = false};
        at += rb_arena_bytes(rb_shape_count(shape[i]) * sizeof(double));
    }
    return RB_OK;
}

static rb_status chain_forward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                     rb_arena *work)
{
    const chain_state *cs = op->state;
    rb_tensor v[RB_PARTS_MAX + 1];
    size_t off[RB_PARTS_MAX];
    rb_status st = chain_views(ctx, cs, x, y, tape, v, off);
    for (size_t i = 0; st == RB_OK && i < cs->parts.count; i++)
        st = rb_op_forward_unchecked(ctx, cs->parts.part[i], &v[i], &v[i + 1], rb_tape_at(tape, off[i]), work);
    return st;
}

/* The backward pass; assign: dx is overwritten (backward_overwrite), else accumulated into.
 * Each intermediate gradient is overwritten by its part (never zeroed first where the part's
 * type can overwrite). */
static rb_status chain_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                rb_arena *work, bool assign)
{
    const chain_state *cs = op->state;
    rb_tensor v[RB_PARTS_MAX + 1];
    size_t off[RB_PARTS_MAX];
    rb_status st = chain_views(ctx, cs, x, y, tape, v, off);
    if (st != RB_OK) return st;
    size_t mark = rb_arena_mark(work), gmax = 0;
    for (size_t i = 1; i < cs->parts.count; i++)
        if (rb_tensor_count(&v[i]) > gmax) gmax = rb_tensor_count(&v[i]);
    double *buf[2] = {NULL, NULL};
    if (cs->parts.count > 1) {
        buf[0] = rb_arena_alloc(ctx, work, gmax * sizeof(double));
        buf[1] = rb_arena_alloc(ctx, work, gmax * sizeof(double));
        if (buf[0] == NULL || buf[1] == NULL) {
            rb_arena_reset(work, mark);
            return rb_fail(ctx, RB_ENOMEM, "chain: work arena too small for the backward pass (rb_op_workspace)");
        }
    }
    /* g_i = J_i^T g_{i+1}, with alpha applied once, at the last part */
    rb_tensor g_next = *dy;
    double a = alpha;
    for (size_t i = cs->parts.count; st == RB_OK && i-- > 0;) {
        const rb_op *p = cs->parts.part[i];
        double *dp = rb_parts_grad(op, p, dparams);
        const void *t = rb_tape_at((void *)tape, off[i]);
        if (i == 0) {
            st = assign ? rb_op_backward_overwrite_unchecked(ctx, p, &v[0], &v[1], t, &g_next, a, dx, dp, work)
                        : rb_op_backward_unchecked(ctx, p, &v[0], &v[1], t, &g_next, a, dx, dp, work);
            break;
        }
        rb_tensor g = {.shape = v[i].shape, .data = buf[i % 2], .owns = false};
        st = rb_op_backward_overwrite_unchecked(ctx, p, &v[i], &v[i + 1], t, &g_next, a, &g, dp, work);
        g_next = g;
        a = 1.0;
    }
    rb_arena_reset(work, mark);
    return st;
}

RB_BACKWARD_PAIR(chain, chain_backward)

static void chain_destroy(rb_context *ctx, rb_op *op)
{
    chain_state *cs = op->state;
    rb_parts_release(ctx, &cs->parts);
    rb_free(ctx, cs);
}

/* Linearity is a property of the type object, so a chain of linear parts gets
 * the linear twin of the same type. */
#define CHAIN_TYPE(ident, label, extra_flags)                                                                   \
    static const rb_op_type ident = {.name = label, .flags = RB_OP_HAS_PARAMS | RB_OP_COMPOSITE | (extra_flags),               \
                                     .shape = chain_shape, .workspace = chain_workspace, .apply = rb_op_apply_via_tape,\
                                     .vjp = rb_op_vjp_via_tape, .param_grad = rb_op_param_grad_via_tape,      \
                                     .tape_bytes = chain_tape_bytes, .forward_taped = chain_forward_taped,      \
                                     .backward_taped = chain_backward_taped,                                    \
                                     .backward_overwrite = chain_backward_overwrite, .destroy = chain_destroy}
CHAIN_TYPE(chain_type, "chain", 0);
CHAIN_TYPE(chain_type_linear, "chain (linear)", RB_OP_LINEAR);
#undef CHAIN_TYPE

rb_status rb_op_chain_create(rb_context *ctx, rb_op *const *parts, size_t count, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_chain_create: out is NULL");
    size_t np;
    int linear;
    rb_status st = rb_parts_check(ctx, "rb_op_chain_create", parts, count, &np, &linear);
    if (st != RB_OK) return st;
    chain_state *cs = rb_calloc(ctx, 1, sizeof *cs);
    if (cs == NULL) return RB_ENOMEM;
    rb_op *op;
    st = rb_op_new(ctx, linear ? &chain_type_linear : &chain_type, cs, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, cs);
        return st;
    }
    rb_parts_adopt(&cs->parts, op, parts, count);
    *out = op;
    return RB_OK;
}
