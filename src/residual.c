/* residual.c — THE primitive, y = x + h F(x), and its backward pass.
 *
 * The one place where x + h F(x) is formed. A type's fused kernel may take
 * the step instead (tested against rb_residual_step_generic on every shape it
 * accepts); nothing else in resbridge forms this update.
 */
#include "resbridge/residual.h"

#include <math.h>

static rb_status check_step(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, rb_tensor *y,
                            const char *fn)
{
    if (ctx == NULL) return RB_ENULL;
    if (F == NULL || F->type == NULL) return rb_fail(ctx, RB_ENULL, "%s: F is NULL", fn);
    if (!isfinite(h)) return rb_fail(ctx, RB_EINVAL, "%s: step size h = %g is not finite", fn, h);
    rb_status st = rb_tensor_check_same(ctx, x, "x", y, "y");
    if (st != RB_OK) return st;
    return rb_op_check_keeps_shape(ctx, F, x->shape, fn);
}

size_t rb_residual_workspace(const rb_op *F, rb_shape in)
{
    size_t fx = rb_arena_bytes(rb_shape_count(in) * sizeof(double));
    return fx + rb_op_workspace(F, in);
}

/* out = x + h * fx, elementwise (out may be x or fx). */
static void add_scaled(const double *x, double h, const double *fx, double *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = x[i] + h * fx[i];
}

rb_status rb_residual_step_generic(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, rb_tensor *y,
                                   rb_arena *work)
{
    rb_status st = check_step(ctx, F, h, x, y, "rb_residual_step");
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x);
    if (x->data != y->data) {
        /* F(x) straight into y, then y = x + h y: no scratch. */
        st = F->type->apply(ctx, F, x, y, work);
        if (st != RB_OK) return st;
        add_scaled(x->data, h, y->data, y->data, n);
        return RB_OK;
    }
    if (work == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_residual_step: in place with %s needs a work arena of %zu bytes",
                       F->type->name, rb_residual_workspace(F, x->shape));
    size_t mark = rb_arena_mark(work);
    rb_tensor fx;
    st = rb_arena_tensor(ctx, work, &fx, x->shape);
    if (st == RB_OK && fx.data == NULL)
        st = rb_fail(ctx, RB_EINVAL, "rb_residual_step: work arena is in measuring mode");
    if (st == RB_OK) st = F->type->apply(ctx, F, x, &fx, work);
    if (st == RB_OK) add_scaled(x->data, h, fx.data, y->data, n);
    rb_arena_reset(work, mark);
    return st;
}

rb_status rb_residual_step(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, rb_tensor *y,
                           rb_arena *work)
{
    if (F != NULL && F->type != NULL && F->type->residual_fused != NULL &&
        (x == NULL || y == NULL || x->data != y->data || F->type->fused_in_place)) {
        rb_status st = check_step(ctx, F, h, x, y, "rb_residual_step");
        if (st != RB_OK) return st;
        return F->type->residual_fused(ctx, F, h, x, y, work);
    }
    return rb_residual_step_generic(ctx, F, h, x, y, work);
}

rb_status rb_residual_backward(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, const rb_tensor *dy,
                               rb_tensor *dx, double *dtheta, rb_arena *work)
{
    rb_status st = check_step(ctx, F, h, x, (rb_tensor *)dy, "rb_residual_backward");
    if (st == RB_OK) st = rb_tensor_check_same(ctx, x, "x", dx, "dx");
    if (st != RB_OK) return st;
    if (dx->data == dy->data) return rb_fail(ctx, RB_EINVAL, "rb_residual_backward: dx and dy alias");
    if (F->nparams > 0 && dtheta != NULL) {
        st = rb_op_param_grad(ctx, F, x, dy, h, dtheta, work);
        if (st != RB_OK) return st;
    }
    /* dx += dy + h J^T dy: the identity path of the skip, then the branch. */
    st = rb_op_vjp(ctx, F, x, dy, h, dx, work);
    if (st != RB_OK) return st;
    return rb_tensor_axpy(ctx, 1.0, dy, dx);
}
