/* op.c — checked dispatch through the operator type object. */
#include "resbridge/op.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

rb_status rb_op_new(rb_context *ctx, const rb_op_type *type, void *state, size_t nparams, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (type == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_new: %s is NULL", type ? "out" : "type");
    rb_op *op = rb_calloc(ctx, 1, sizeof *op);
    if (op == NULL) return RB_ENOMEM;
    if (nparams > 0) {
        op->params = rb_calloc(ctx, nparams, sizeof(double));
        if (op->params == NULL) {
            rb_free(ctx, op);
            return RB_ENOMEM;
        }
    }
    op->type = type;
    op->state = state;
    op->nparams = nparams;
    *out = op;
    return RB_OK;
}

void rb_op_free(rb_context *ctx, rb_op *op)
{
    if (op == NULL) return;
    if (op->type != NULL && op->type->destroy != NULL) op->type->destroy(ctx, op);
    rb_free(ctx, op->params);
    rb_free(ctx, op);
}

static rb_status check_op(rb_context *ctx, const rb_op *op, const char *fn)
{
    if (ctx == NULL) return RB_ENULL;
    if (op == NULL) return rb_fail(ctx, RB_ENULL, "%s: op is NULL", fn);
    if (op->type == NULL) return rb_fail(ctx, RB_EINVAL, "%s: op has no type", fn);
    return RB_OK;
}

/* ctx may be NULL here (workspace queries): failures then only return a status. */
rb_status rb_op_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    if (op == NULL || op->type == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_shape: op is NULL");
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_shape: out is NULL");
    if (rb_shape_count(in) == 0) return rb_fail(ctx, RB_EINVAL, "rb_op_shape: input shape has a zero dimension");
    if (op->type->shape == NULL) {
        *out = in;
        return RB_OK;
    }
    return op->type->shape(ctx, op, in, out);
}

size_t rb_op_workspace(const rb_op *op, rb_shape in)
{
    if (op == NULL || op->type == NULL || op->type->workspace == NULL) return 0;
    return op->type->workspace(op, in);
}

/* x valid; y valid with the shape F produces from x. */
static rb_status check_io(rb_context *ctx, const rb_op *op, const char *fn, const rb_tensor *x, const char *xname,
                          const rb_tensor *y, const char *yname)
{
    char msg[64];
    rb_status st = rb_tensor_check(ctx, x, xname);
    if (st == RB_OK) st = rb_tensor_check(ctx, y, yname);
    if (st != RB_OK) return st;
    rb_shape want;
    st = rb_op_shape(ctx, op, x->shape, &want);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(want, y->shape)) {
        char a[96], b[96], c[96];
        snprintf(msg, sizeof msg, "%s", fn);
        return rb_fail(ctx, RB_ESHAPE, "%s: %s for input %s must have shape %s, has %s", msg, yname,
                       rb_shape_format(x->shape, a, sizeof a), rb_shape_format(want, b, sizeof b),
                       rb_shape_format(y->shape, c, sizeof c));
    }
    return RB_OK;
}

rb_status rb_op_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    rb_status st = check_op(ctx, op, "rb_op_apply");
    if (st == RB_OK) st = check_io(ctx, op, "rb_op_apply", x, "x", y, "y");
    if (st != RB_OK) return st;
    if (x->data == y->data) return rb_fail(ctx, RB_EINVAL, "rb_op_apply: x and y alias (%s)", op->type->name);
    return op->type->apply(ctx, op, x, y, work);
}

rb_status rb_op_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                    rb_tensor *dx, rb_arena *work)
{
    rb_status st = check_op(ctx, op, "rb_op_vjp");
    if (st == RB_OK) st = check_io(ctx, op, "rb_op_vjp", x, "x", dy, "dy");
    if (st == RB_OK) st = rb_tensor_check_same(ctx, x, "x", dx, "dx");
    if (st != RB_OK) return st;
    if (!isfinite(alpha)) return rb_fail(ctx, RB_EINVAL, "rb_op_vjp: alpha = %g is not finite", alpha);
    if (dx->data == dy->data) return rb_fail(ctx, RB_EINVAL, "rb_op_vjp: dx and dy alias");
    if (op->type->vjp == NULL) return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_vjp: %s has no vjp", op->type->name);
    return op->type->vjp(ctx, op, x, dy, alpha, dx, work);
}

rb_status rb_op_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           double *dparams, rb_arena *work)
{
    rb_status st = check_op(ctx, op, "rb_op_param_grad");
    if (st == RB_OK) st = check_io(ctx, op, "rb_op_param_grad", x, "x", dy, "dy");
    if (st != RB_OK) return st;
    if (!isfinite(alpha)) return rb_fail(ctx, RB_EINVAL, "rb_op_param_grad: alpha = %g is not finite", alpha);
    if (op->nparams == 0) return RB_OK;
    if (dparams == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_param_grad: dparams is NULL");
    if (op->type->param_grad == NULL)
        return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_param_grad: %s has no param_grad", op->type->name);
    return op->type->param_grad(ctx, op, x, dy, alpha, dparams, work);
}

rb_status rb_op_check_keeps_shape(rb_context *ctx, const rb_op *F, rb_shape in, const char *fn)
{
    rb_shape out;
    rb_status st = rb_op_shape(ctx, F, in, &out);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(out, in)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: F (%s) maps %s to %s; F must keep the shape", fn, F->type->name,
                       rb_shape_format(in, a, sizeof a), rb_shape_format(out, b, sizeof b));
    }
    return RB_OK;
}
