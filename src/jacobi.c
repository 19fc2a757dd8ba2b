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

static rb_status jacobi_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const rb_jacobi_state *js = op->state;
    rb_status st = js->A->type->apply(ctx, js->A, x, y, work); /* y = A x */
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x);
    const double *b = js->b.data;
    double inv = 1.0 / js->diag;
    for (size_t i = 0; i < n; i++) y->data[i] = (b[i] - y->data[i]) * inv;
    return RB_OK;
}

/* J_F = -D^{-1} A, so J_F^T dy = -A^T dy / D. */
static rb_status jacobi_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                            rb_tensor *dx, rb_arena *work)
{
    const rb_jacobi_state *js = op->state;
    return js->A->type->vjp(ctx, js->A, x, dy, -alpha / js->diag, dx, work);
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
    .workspace = rb_jacobi_fused_workspace,
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
    const rb_conv_state *cs = rb_conv_state_of(A);
    if (cs == NULL || cs->desc.cin != 1 || cs->desc.cout != 1 || cs->desc.stride != 1 || cs->desc.transposed ||
        cs->desc.bias || cs->desc.ksize != 3)
        return rb_fail(ctx, RB_EINVAL,
                       "rb_op_jacobi_create: A must be a single-channel stride-1 3-wide stencil without bias");
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
