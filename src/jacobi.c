/* jacobi.c — the damped-Jacobi residual operator F(x) = D^{-1} (b - A x).
 *
 * rb_residual_step(ctx, F, omega, x, y) is then exactly one damped Jacobi
 * sweep y = x + omega D^{-1} (b - A x). The generic path evaluates A x with
 * the conv kernels; the fused kernel (jacobi_fused.c) does the whole sweep in
 * one pass, in place, for 2D 3x3 stencils.
 */
#include "jacobi_internal.h"

#include <math.h>
#include <string.h>

#include "resbridge/varstencil.h"

static rb_status jacobi_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const rb_jacobi_state *js = op->state;
    rb_status st = js->A->type->apply(ctx, js->A, x, y, work); /* y = A x */
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x);
    const double *b = js->b.data;
    if (js->dvar != NULL) {
        for (size_t i = 0; i < n; i++) y->data[i] = (b[i] - y->data[i]) / js->dvar[i % js->points];
        return RB_OK;
    }
    double inv = 1.0 / js->diag;
    for (size_t i = 0; i < n; i++) y->data[i] = (b[i] - y->data[i]) * inv;
    return RB_OK;
}

/* J_F = -D^{-1} A, so J_F^T dy = -A^T (D^{-1} dy). */
static rb_status jacobi_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                            rb_tensor *dx, rb_arena *work)
{
    const rb_jacobi_state *js = op->state;
    if (js->dvar == NULL) return js->A->type->vjp(ctx, js->A, x, dy, -alpha / js->diag, dx, work);
    size_t mark = rb_arena_mark(work);
    rb_tensor s;
    rb_status st = rb_arena_tensor(ctx, work, &s, dy->shape);
    if (st == RB_OK && s.data == NULL) st = rb_fail(ctx, RB_EINVAL, "jacobi: work arena is in measuring mode");
    if (st == RB_OK) {
        size_t n = rb_tensor_count(dy);
        for (size_t i = 0; i < n; i++) s.data[i] = dy->data[i] / js->dvar[i % js->points];
        st = js->A->type->vjp(ctx, js->A, x, &s, -alpha, dx, work);
    }
    rb_arena_reset(work, mark);
    return st;
}

static size_t jacobi_workspace(const rb_op *op, rb_shape in)
{
    const rb_jacobi_state *js = op->state;
    size_t fused = rb_jacobi_fused_workspace(op, in);
    size_t vjp = rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_op_workspace(js->A, in);
    return fused > vjp ? fused : vjp;
}

static rb_status jacobi_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const rb_jacobi_state *js = op->state;
    if (!rb_shape_equal(in, js->b.shape)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "jacobi: x has shape %s but the right-hand side b has %s",
                       rb_shape_format(in, a, sizeof a), rb_shape_format(js->b.shape, b, sizeof b));
    }
    *out = in;
    return RB_OK;
}

static void jacobi_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type jacobi_type = {
    .name = "jacobi",
    .flags = RB_OP_SAME_SHAPE,
    .shape = jacobi_shape,
    .workspace = jacobi_workspace,
    .apply = jacobi_apply,
    .vjp = jacobi_vjp,
    .residual_fused = rb_jacobi_fused_step,
    .fused_in_place = 1,
    .destroy = jacobi_destroy,
};

const rb_jacobi_state *rb_jacobi_state_of(const rb_op *op)
{
    return op != NULL && op->type == &jacobi_type ? op->state : NULL;
}

rb_status rb_op_jacobi_create(rb_context *ctx, const rb_op *A, const rb_tensor *b, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (A == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_jacobi_create: A is NULL");
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_jacobi_create: out is NULL");
    rb_status st = rb_tensor_check(ctx, b, "rb_op_jacobi_create: b");
    if (st != RB_OK) return st;
    int vdims, vtaps, vcentre;
    rb_shape vgrid;
    if (rb_op_varstencil_info(A, &vdims, &vtaps, &vcentre, &vgrid)) {
        if (b->shape.c != 1 || b->shape.d != vgrid.d || b->shape.h != vgrid.h || b->shape.w != vgrid.w)
            return rb_fail(ctx, RB_ESHAPE, "rb_op_jacobi_create: b does not live on A's grid");
        size_t points = rb_shape_count(vgrid);
        const double *dvar = A->params + (size_t)vcentre * points;
        for (size_t i = 0; i < points; i++)
            if (!(dvar[i] != 0.0) || !isfinite(dvar[i]))
                return rb_fail(ctx, RB_EINVAL, "rb_op_jacobi_create: A's centre weight at point %zu is %g", i, dvar[i]);
        rb_jacobi_state *js = rb_calloc(ctx, 1, sizeof *js);
        if (js == NULL) return RB_ENOMEM;
        js->A = A, js->b = *b, js->b.owns = false;
        js->centre = vcentre, js->dvar = dvar, js->points = points, js->diag = NAN;
        rb_status st2 = rb_op_new(ctx, &jacobi_type, js, 0, out);
        if (st2 != RB_OK) rb_free(ctx, js);
        return st2;
    }
    const rb_conv_state *cs = rb_conv_state_of(A);
    if (cs == NULL || cs->desc.cin != 1 || cs->desc.cout != 1 || cs->desc.stride != 1 || cs->desc.transposed ||
        cs->desc.bias || cs->desc.ksize != 3)
        return rb_fail(ctx, RB_EINVAL,
                       "rb_op_jacobi_create: A must be a varstencil or a single-channel stride-1 3-wide conv stencil without bias");
    if (b->shape.c != 1) return rb_fail(ctx, RB_ESHAPE, "rb_op_jacobi_create: b must have 1 channel, has %zu", b->shape.c);
    int centre = -1;
    for (int t = 0; t < cs->ntaps; t++)
        if (cs->tap[t][0] == 0 && cs->tap[t][1] == 0 && cs->tap[t][2] == 0) centre = t;
    double diag = A->params[centre];
    if (!(diag != 0.0) || !isfinite(diag))
        return rb_fail(ctx, RB_EINVAL, "rb_op_jacobi_create: A's centre weight %g cannot be the Jacobi diagonal", diag);
    rb_jacobi_state *js = rb_calloc(ctx, 1, sizeof *js);
    if (js == NULL) return RB_ENOMEM;
    js->A = A;
    js->b = *b;
    js->b.owns = false;
    js->diag = diag;
    js->centre = centre;
    st = rb_op_new(ctx, &jacobi_type, js, 0, out);
    if (st != RB_OK) rb_free(ctx, js);
    return st;
}
