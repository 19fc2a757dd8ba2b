/* op.c — checked dispatch through the operator type object. */
#include "resbridge/op.h"
#include "op_internal.h"

#include <math.h>
#include <omp.h>
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

/* ---- taped passes ------------------------------------------------------------------------------ */

size_t rb_op_tape_bytes(const rb_op *op, rb_shape in)
{
    if (op == NULL || op->type == NULL || op->type->tape_bytes == NULL) return 0;
    return op->type->tape_bytes(op, in);
}

size_t rb_op_backward_workspace(const rb_op *op, rb_shape in)
{
    rb_shape out;
    if (op == NULL || rb_op_shape(NULL, op, in, &out) != RB_OK) return 0;
    size_t tape = rb_op_tape_bytes(op, in);
    size_t recompute = tape > 0 ? rb_arena_bytes(tape) + rb_arena_bytes(rb_shape_count(out) * sizeof(double)) : 0;
    return recompute + rb_op_workspace(op, in);
}

rb_status rb_op_forward_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                  rb_arena *work)
{
    if (op->type->forward_taped != NULL && rb_op_tape_bytes(op, x->shape) > 0) {
        if (tape == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_forward: %s needs a tape", op->type->name);
        return op->type->forward_taped(ctx, op, x, y, tape, work);
    }
    return op->type->apply(ctx, op, x, y, work);
}

rb_status rb_op_backward_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                   const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                   rb_arena *work)
{
    if (op->nparams == 0) dparams = NULL;
    if (dx == NULL && dparams == NULL) return RB_OK;
    size_t bytes = rb_op_tape_bytes(op, x->shape);
    if (op->type->backward_taped != NULL && bytes > 0) {
        if (tape != NULL && y != NULL) return op->type->backward_taped(ctx, op, x, y, tape, dy, alpha, dx, dparams, work);
        /* no tape kept: run the forward pass again into the work arena */
        if (work == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_backward: %s without a tape needs a work arena", op->type->name);
        size_t mark = rb_arena_mark(work);
        void *t = rb_arena_alloc(ctx, work, bytes);
        rb_tensor yy;
        rb_status st = t == NULL ? rb_fail(ctx, RB_ENOMEM, "rb_op_backward: work arena too small for %s's tape (%zu bytes)",
                                           op->type->name, bytes)
                                 : rb_arena_tensor(ctx, work, &yy, dy->shape);
        if (st == RB_OK && yy.data == NULL) st = rb_fail(ctx, RB_EINVAL, "rb_op_backward: work arena is in measuring mode");
        if (st == RB_OK) st = op->type->forward_taped(ctx, op, x, &yy, t, work);
        if (st == RB_OK) st = op->type->backward_taped(ctx, op, x, &yy, t, dy, alpha, dx, dparams, work);
        rb_arena_reset(work, mark);
        return st;
    }
    rb_status st = RB_OK;
    if (dparams != NULL) {
        if (op->type->param_grad == NULL)
            return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_backward: %s has no param_grad", op->type->name);
        st = op->type->param_grad(ctx, op, x, dy, alpha, dparams, work);
    }
    if (st == RB_OK && dx != NULL) {
        if (op->type->vjp == NULL) return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_backward: %s has no vjp", op->type->name);
        st = op->type->vjp(ctx, op, x, dy, alpha, dx, work);
    }
    return st;
}

rb_status rb_op_forward(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape, rb_arena *work)
{
    rb_status st = check_op(ctx, op, "rb_op_forward");
    if (st == RB_OK) st = check_io(ctx, op, "rb_op_forward", x, "x", y, "y");
    if (st != RB_OK) return st;
    if (x->data == y->data) return rb_fail(ctx, RB_EINVAL, "rb_op_forward: x and y alias (%s)", op->type->name);
    return rb_op_forward_unchecked(ctx, op, x, y, tape, work);
}

rb_status rb_op_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y, const void *tape,
                         const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams, rb_arena *work)
{
    rb_status st = check_op(ctx, op, "rb_op_backward");
    if (st == RB_OK) st = check_io(ctx, op, "rb_op_backward", x, "x", dy, "dy");
    if (st == RB_OK && y != NULL) st = rb_tensor_check_same(ctx, dy, "dy", y, "y");
    if (st == RB_OK && dx != NULL) st = rb_tensor_check_same(ctx, x, "x", dx, "dx");
    if (st != RB_OK) return st;
    if (tape != NULL && y == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_backward: a tape needs the forward output y");
    if (!isfinite(alpha)) return rb_fail(ctx, RB_EINVAL, "rb_op_backward: alpha = %g is not finite", alpha);
    if (dx != NULL && dx->data == dy->data) return rb_fail(ctx, RB_EINVAL, "rb_op_backward: dx and dy alias");
    return rb_op_backward_unchecked(ctx, op, x, y, tape, dy, alpha, dx, dparams, work);
}

rb_status rb_op_backward_overwrite_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                             const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx,
                                             double *dparams, rb_arena *work)
{
    if (dx == NULL) return rb_op_backward_unchecked(ctx, op, x, y, tape, dy, alpha, dx, dparams, work);
    const size_t bytes = rb_op_tape_bytes(op, x->shape);
    if (op->type->backward_overwrite != NULL && (bytes == 0 || (tape != NULL && y != NULL)))
        return op->type->backward_overwrite(ctx, op, x, y, bytes > 0 ? tape : NULL, dy, alpha, dx,
                                            op->nparams > 0 ? dparams : NULL, work);
    rb_zero(ctx, dx->data, rb_tensor_count(dx));
    return rb_op_backward_unchecked(ctx, op, x, y, tape, dy, alpha, dx, dparams, work);
}

/* ---- composites' parts -------------------------------------------------------------------------- */

rb_status rb_parts_check(rb_context *ctx, const char *fn, rb_op *const *parts, size_t count, size_t *nparams,
                         int *linear)
{
    if (parts == NULL) return rb_fail(ctx, RB_ENULL, "%s: parts is NULL", fn);
    if (count < 1 || count > RB_PARTS_MAX) return rb_fail(ctx, RB_EINVAL, "%s: count = %zu, must be 1..%d", fn, count, RB_PARTS_MAX);
    size_t np = 0;
    int lin = 1;
    for (size_t i = 0; i < count; i++) {
        if (parts[i] == NULL || parts[i]->type == NULL) return rb_fail(ctx, RB_ENULL, "%s: parts[%zu] is NULL", fn, i);
        if (parts[i]->type->vjp == NULL && parts[i]->type->backward_taped == NULL)
            return rb_fail(ctx, RB_EUNSUPPORTED, "%s: parts[%zu] (%s) has no vjp", fn, i, parts[i]->type->name);
        for (size_t j = 0; j < i; j++)
            if (parts[j] == parts[i]) return rb_fail(ctx, RB_EINVAL, "%s: parts[%zu] repeats parts[%zu]", fn, i, j);
        np += parts[i]->nparams;
        lin = lin && (parts[i]->type->flags & RB_OP_LINEAR);
    }
    *nparams = np;
    if (linear) *linear = lin;
    return RB_OK;
}

void rb_op_rebase(rb_op *op, double *to)
{
    if (op->type->flags & RB_OP_COMPOSITE) {
        rb_parts *p = op->state;
        for (size_t i = 0; i < p->count; i++)
            if (p->part[i]->nparams > 0) rb_op_rebase(p->part[i], to + (p->part[i]->params - op->params));
    }
    op->params = to;
}

void rb_parts_adopt(rb_parts *p, rb_op *op, rb_op *const *parts, size_t count)
{
    size_t off = 0;
    p->count = count;
    for (size_t i = 0; i < count; i++) {
        rb_op *q = parts[i];
        p->part[i] = q;
        p->own_params[i] = q->params;
        if (q->nparams > 0) {
            memcpy(op->params + off, q->params, q->nparams * sizeof(double));
            rb_op_rebase(q, op->params + off);
        }
        off += q->nparams;
    }
}

void rb_parts_release(rb_context *ctx, rb_parts *p)
{
    for (size_t i = 0; i < p->count; i++) {
        rb_op *q = p->part[i];
        if (q->nparams > 0) {
            memcpy(p->own_params[i], q->params, q->nparams * sizeof(double));
            rb_op_rebase(q, p->own_params[i]);
        }
        rb_op_free(ctx, q);
    }
    p->count = 0;
}

void rb_zero(rb_context *ctx, double *p, size_t n)
{
    const int T = rb_parallel_threads(ctx, n);
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        memset(p + n * t / nt, 0, (n * (t + 1) / nt - n * t / nt) * sizeof *p);
    }
}

/* ---- helpers for taped composites --------------------------------------------------------------- */

rb_status rb_op_apply_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    size_t bytes = rb_op_tape_bytes(op, x->shape), mark = work ? rb_arena_mark(work) : 0;
    void *tape = NULL;
    if (bytes > 0) {
        if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: needs a work arena (rb_op_workspace)", op->type->name);
        tape = rb_arena_alloc(ctx, work, bytes);
        if (tape == NULL) return rb_fail(ctx, RB_ENOMEM, "%s: work arena too small (rb_op_workspace)", op->type->name);
    }
    rb_status st = op->type->forward_taped(ctx, op, x, y, tape, work);
    if (work) rb_arena_reset(work, mark);
    return st;
}

rb_status rb_op_vjp_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                             rb_tensor *dx, rb_arena *work)
{
    return rb_op_backward_unchecked(ctx, op, x, NULL, NULL, dy, alpha, dx, NULL, work);
}

rb_status rb_op_param_grad_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                    double alpha, double *dparams, rb_arena *work)
{
    return rb_op_backward_unchecked(ctx, op, x, NULL, NULL, dy, alpha, NULL, dparams, work);
}

void rb_op_visit(rb_op *op, void (*fn)(rb_op *op, void *user), void *user)
{
    if (op == NULL) return;
    fn(op, user);
    if (op->type->flags & RB_OP_COMPOSITE) {
        rb_parts *p = op->state;
        for (size_t i = 0; i < p->count; i++) rb_op_visit(p->part[i], fn, user);
    }
}
