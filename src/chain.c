/* chain.c — F = F_k o ... o F_1 as one rb_op (see chain.h). */
#include "resbridge/chain.h"

#include <string.h>

typedef struct chain_state {
    size_t count;
    rb_op *part[RB_CHAIN_MAX];
    double *own_params[RB_CHAIN_MAX]; /* each part's original params array, restored on free */
} chain_state;

/* Shapes after each part: shape[0] = in, shape[i+1] = part i's output. */
static rb_status chain_shapes(rb_context *ctx, const chain_state *cs, rb_shape in, rb_shape *shape)
{
    shape[0] = in;
    for (size_t i = 0; i < cs->count; i++) {
        rb_status st = rb_op_shape(ctx, cs->part[i], shape[i], &shape[i + 1]);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

static rb_status chain_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const chain_state *cs = op->state;
    rb_shape shape[RB_CHAIN_MAX + 1];
    rb_status st = chain_shapes(ctx, cs, in, shape);
    if (st == RB_OK) *out = shape[cs->count];
    return st;
}

static size_t chain_workspace(const rb_op *op, rb_shape in)
{
    const chain_state *cs = op->state;
    rb_shape shape[RB_CHAIN_MAX + 1];
    if (chain_shapes(NULL, cs, in, shape) != RB_OK) return 0;
    /* all intermediates (forward values and their gradients) plus the largest part's own scratch */
    size_t bytes = 0, part = 0;
    for (size_t i = 0; i + 1 < cs->count; i++) bytes += 2 * rb_arena_bytes(rb_shape_count(shape[i + 1]) * sizeof(double));
    for (size_t i = 0; i < cs->count; i++) {
        size_t w = rb_op_workspace(cs->part[i], shape[i]);
        if (w > part) part = w;
    }
    return bytes + part;
}

/* Forward pass keeping every intermediate: v[0] = x, v[count] = y. */
static rb_status chain_forward(rb_context *ctx, const chain_state *cs, const rb_tensor *x, rb_tensor *y,
                               rb_tensor *v, rb_arena *work)
{
    rb_shape shape[RB_CHAIN_MAX + 1];
    rb_status st = chain_shapes(ctx, cs, x->shape, shape);
    if (st != RB_OK) return st;
    v[0] = *x;
    v[cs->count] = *y;
    for (size_t i = 1; i < cs->count; i++) {
        st = rb_arena_tensor(ctx, work, &v[i], shape[i]);
        if (st != RB_OK) return st;
        if (v[i].data == NULL) return rb_fail(ctx, RB_EINVAL, "chain: work arena is in measuring mode");
    }
    for (size_t i = 0; i < cs->count; i++) {
        st = cs->part[i]->type->apply(ctx, cs->part[i], &v[i], &v[i + 1], work);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

static rb_status chain_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const chain_state *cs = op->state;
    rb_tensor v[RB_CHAIN_MAX + 1];
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_status st = chain_forward(ctx, cs, x, y, v, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* Backward through the chain: g[count] = dy; g[i] = J_i^T g[i+1]; calls
 * per_part(i) with (v[i], g[i+1]) before g[i] is formed, and finally
 * accumulates alpha * g[0] into dx (if dx is non-NULL). */
static rb_status chain_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                double alpha, rb_tensor *dx, double *dparams, rb_arena *work)
{
    const chain_state *cs = op->state;
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor v[RB_CHAIN_MAX + 1], y;
    rb_status st = rb_arena_tensor(ctx, work, &y, dy->shape);
    if (st == RB_OK && y.data == NULL) st = rb_fail(ctx, RB_EINVAL, "chain: work arena is in measuring mode");
    if (st == RB_OK) st = chain_forward(ctx, cs, x, &y, v, work);
    rb_tensor g_next = *dy, g;
    for (size_t i = cs->count; st == RB_OK && i-- > 0;) {
        rb_op *p = cs->part[i];
        if (dparams != NULL && p->nparams > 0)
            st = p->type->param_grad(ctx, p, &v[i], &g_next, alpha,
                                     dparams + (size_t)(p->params - op->params), work);
        if (st != RB_OK) break;
        if (i == 0) {
            if (dx != NULL) st = p->type->vjp(ctx, p, &v[0], &g_next, alpha, dx, work);
            break;
        }
        st = rb_arena_tensor(ctx, work, &g, v[i].shape);
        if (st != RB_OK) break;
        memset(g.data, 0, rb_tensor_count(&g) * sizeof(double));
        st = p->type->vjp(ctx, p, &v[i], &g_next, 1.0, &g, work);
        g_next = g;
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status chain_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    return chain_backward(ctx, op, x, dy, alpha, dx, NULL, work);
}

static rb_status chain_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                  double alpha, double *dparams, rb_arena *work)
{
    return chain_backward(ctx, op, x, dy, alpha, NULL, dparams, work);
}

static void chain_destroy(rb_context *ctx, rb_op *op)
{
    chain_state *cs = op->state;
    for (size_t i = 0; i < cs->count; i++) {
        cs->part[i]->params = cs->own_params[i]; /* give each part its own array back, then free it */
        rb_op_free(ctx, cs->part[i]);
    }
    rb_free(ctx, cs);
}

/* Linearity is a property of the type object, so a chain of linear parts gets
 * the linear twin of the same type. */
#define CHAIN_TYPE(ident, label, extra_flags)                                                             \
    static const rb_op_type ident = {.name = label, .flags = RB_OP_HAS_PARAMS | (extra_flags),            \
                                     .shape = chain_shape, .workspace = chain_workspace, .apply = chain_apply, \
                                     .vjp = chain_vjp, .param_grad = chain_param_grad, .destroy = chain_destroy}
CHAIN_TYPE(chain_type, "chain", 0);
CHAIN_TYPE(chain_type_linear, "chain (linear)", RB_OP_LINEAR);
#undef CHAIN_TYPE

rb_status rb_op_chain_create(rb_context *ctx, rb_op *const *parts, size_t count, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (parts == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_chain_create: %s is NULL", parts ? "out" : "parts");
    if (count < 1 || count > RB_CHAIN_MAX)
        return rb_fail(ctx, RB_EINVAL, "rb_op_chain_create: count = %zu, must be 1..%d", count, RB_CHAIN_MAX);
    size_t np = 0;
    bool linear = true;
    for (size_t i = 0; i < count; i++) {
        if (parts[i] == NULL || parts[i]->type == NULL)
            return rb_fail(ctx, RB_ENULL, "rb_op_chain_create: parts[%zu] is NULL", i);
        if (parts[i]->type->vjp == NULL)
            return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_chain_create: parts[%zu] (%s) has no vjp", i, parts[i]->type->name);
        for (size_t j = 0; j < i; j++)
            if (parts[j] == parts[i]) return rb_fail(ctx, RB_EINVAL, "rb_op_chain_create: parts[%zu] repeats parts[%zu]", i, j);
        np += parts[i]->nparams;
        linear = linear && (parts[i]->type->flags & RB_OP_LINEAR);
    }
    chain_state *cs = rb_calloc(ctx, 1, sizeof *cs);
    if (cs == NULL) return RB_ENOMEM;
    rb_op *op;
    rb_status st = rb_op_new(ctx, linear ? &chain_type_linear : &chain_type, cs, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, cs);
        return st;
    }
    cs->count = count;
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        rb_op *p = parts[i];
        cs->part[i] = p;
        cs->own_params[i] = p->params;
        if (p->nparams > 0) memcpy(op->params + off, p->params, p->nparams * sizeof(double));
        p->params = p->nparams > 0 ? op->params + off : p->params;
        off += p->nparams;
    }
    *out = op;
    return RB_OK;
}
