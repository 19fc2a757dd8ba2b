/* residual.c — THE primitive, y = x + h F(x), and its backward pass.
 *
 * The one place where x + h F(x) is formed. A type's fused kernel may take
 * the step instead (tested against rb_residual_step_generic on every shape it
 * accepts); nothing else in resbridge forms this update.
 */
#include "resbridge/residual.h"
#include "op_internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>

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
static void add_scaled(rb_context *ctx, const double *x, double h, const double *fx, double *out, size_t n)
{
    const int T = rb_parallel_threads(ctx, n);
#pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
    for (size_t i = 0; i < n; i++) out[i] = x[i] + h * fx[i];
}

/* Values of x + h F(x) a post-activation pass keeps on the stack at a time. */
#define ACT_CHUNK 256

/* The post-activation residual layer's two passes, chunk by chunk on the threads, the sum
 * formed as add_scaled forms it (the same value, bit for bit):
 *   dy == NULL:  out = act(x + h fx)   (out may not be x or fx);
 *   else:        out = alpha act'(x + h fx) dy, overwritten. */
static void act_pass(rb_context *ctx, rb_activation act, const double *x, double h, const double *fx, const double *dy,
                     double alpha, double *out, size_t n)
{
    const int T = rb_parallel_threads(ctx, n);
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
        double pre[ACT_CHUNK];
        for (size_t i = lo; i < hi; i += ACT_CHUNK) {
            const size_t m = hi - i < ACT_CHUNK ? hi - i : ACT_CHUNK;
            for (size_t j = 0; j < m; j++) pre[j] = x[i + j] + h * fx[i + j];
            if (dy == NULL) {
                rb_act_apply_range(act, pre, out + i, m);
            } else {
                rb_act_vjp_range(act, pre, dy + i, alpha, out + i, m, true);
            }
        }
    }
}

/* y = act(x + h F(x)) (act: identity for the step itself), with F(x) evaluated into fx
 * (which may be y when out of place and act is the identity), through F's taped forward
 * when ftape is given. Every non-fused step comes here. */
static rb_status step_core(rb_context *ctx, const rb_op *F, double h, rb_activation act, const rb_tensor *x,
                           rb_tensor *y, rb_tensor *fx, void *ftape, rb_arena *work)
{
    rb_status st = ftape ? rb_op_forward_unchecked(ctx, F, x, fx, ftape, work) : F->type->apply(ctx, F, x, fx, work);
    if (st != RB_OK) return st;
    const size_t n = rb_tensor_count(x);
    if (act == RB_ACT_IDENTITY) {
        add_scaled(ctx, x->data, h, fx->data, y->data, n);
    } else if (act == RB_ACT_RELU) { /* one vector loop */
        const int T = rb_parallel_threads(ctx, n);
        const double *xd = x->data, *f = fx->data;
        double *yd = y->data;
#pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
        for (size_t i = 0; i < n; i++) {
            const double v = xd[i] + h * f[i];
            yd[i] = v > 0.0 ? v : 0.0;
        }
    } else {
        act_pass(ctx, act, x->data, h, fx->data, NULL, 1.0, y->data, n);
    }
    return RB_OK;
}

/* dx += alpha (dy + h J_F^T dy) (assign: dx = ...), dtheta += alpha h (dF/dtheta)^T dy: the
 * branch (from F's tape when given, recomputed otherwise), then the identity path of the skip. */
static rb_status backward_core(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, const rb_tensor *fx,
                               const void *ftape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dtheta,
                               rb_arena *work, bool assign)
{
    rb_status st = assign && dx != NULL
                       ? rb_op_backward_overwrite_unchecked(ctx, F, x, fx, ftape, dy, alpha * h, dx, dtheta, work)
                       : rb_op_backward_unchecked(ctx, F, x, fx, ftape, dy, alpha * h, dx, dtheta, work);
    if (st != RB_OK || dx == NULL) return st;
    const size_t n = rb_tensor_count(x);
    const int T = rb_parallel_threads(ctx, n);
    double *d = dx->data;
    const double *g = dy->data;
#pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
    for (size_t i = 0; i < n; i++) d[i] += alpha * g[i];
    return RB_OK;
}

rb_status rb_residual_step_generic(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, rb_tensor *y,
                                   rb_arena *work)
{
    rb_status st = check_step(ctx, F, h, x, y, "rb_residual_step");
    if (st != RB_OK) return st;
    if (x->data != y->data) return step_core(ctx, F, h, RB_ACT_IDENTITY, x, y, y, NULL, work); /* F(x) straight into y */
    if (work == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_residual_step: in place with %s needs a work arena of %zu bytes",
                       F->type->name, rb_residual_workspace(F, x->shape));
    size_t mark = rb_arena_mark(work);
    rb_tensor fx;
    st = rb_arena_tensor(ctx, work, &fx, x->shape);
    if (st == RB_OK && fx.data == NULL)
        st = rb_fail(ctx, RB_EINVAL, "rb_residual_step: work arena is in measuring mode");
    if (st == RB_OK) st = step_core(ctx, F, h, RB_ACT_IDENTITY, x, y, &fx, NULL, work);
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

rb_status rb_residual_step_pass(rb_context *ctx, const rb_op *F, double h, rb_tensor *u, const rb_residual_pass *pass,
                                bool *done, rb_arena *work)
{
    if (ctx == NULL) return RB_ENULL;
    if (done == NULL) return rb_fail(ctx, RB_ENULL, "rb_residual_step_pass: done is NULL");
    *done = false;
    rb_status st = check_step(ctx, F, h, u, u, "rb_residual_step_pass");
    if (st != RB_OK) return st;
    if (pass == NULL) return rb_fail(ctx, RB_ENULL, "rb_residual_step_pass: pass is NULL");
    if ((pass->P == NULL) != (pass->c == NULL))
        return rb_fail(ctx, RB_EINVAL, "rb_residual_step_pass: pass->P and pass->c go together");
    if (pass->assign && pass->P == NULL) return rb_fail(ctx, RB_EINVAL, "rb_residual_step_pass: pass->assign without pass->P");
    if (pass->c != NULL) st = rb_tensor_check(ctx, pass->c, "rb_residual_step_pass: pass->c");
    if (st != RB_OK) return st;
    if (pass->A != NULL) {
        st = rb_tensor_check_same(ctx, u, "u", pass->f, "pass->f");
        if (st != RB_OK) return st;
        if ((pass->R == NULL) != (pass->coarse == NULL))
            return rb_fail(ctx, RB_EINVAL, "rb_residual_step_pass: pass->R and pass->coarse go together");
        if (pass->coarse != NULL) st = rb_tensor_check(ctx, pass->coarse, "rb_residual_step_pass: pass->coarse");
        if (st != RB_OK) return st;
    } else if (pass->norm2 != NULL || pass->R != NULL) {
        return rb_fail(ctx, RB_ENULL, "rb_residual_step_pass: a norm or restriction of the residual needs pass->A");
    }
    if (F->type->residual_fused_pass == NULL || !F->type->fused_in_place) return RB_OK;
    return F->type->residual_fused_pass(ctx, F, h, u, pass, done, work);
}

rb_status rb_residual_backward(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x, const rb_tensor *dy,
                               rb_tensor *dx, double *dtheta, rb_arena *work)
{
    rb_status st = check_step(ctx, F, h, x, (rb_tensor *)dy, "rb_residual_backward");
    if (st == RB_OK) st = rb_tensor_check_same(ctx, x, "x", dx, "dx");
    if (st != RB_OK) return st;
    if (dx->data == dy->data) return rb_fail(ctx, RB_EINVAL, "rb_residual_backward: dx and dy alias");
    return backward_core(ctx, F, h, x, NULL, NULL, dy, 1.0, dx, dtheta, work, false);
}

/* ---- the residual layer as an operator ---------------------------------------------------------- */

typedef struct residual_state {
    rb_parts parts;     /* the branch F; first member: see op_internal.h */
    double h;
    rb_activation act;  /* after the step (post-activation layer); identity for the plain layer */
} residual_state;

static const rb_op *branch(const rb_op *op) { return ((const residual_state *)op->state)->parts.part[0]; }

static rb_status res_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    rb_status st = rb_op_check_keeps_shape(ctx, branch(op), in, "residual layer");
    if (st == RB_OK) *out = in;
    return st;
}

static size_t res_workspace(const rb_op *op, rb_shape in)
{
    return rb_residual_workspace(branch(op), in) + rb_op_backward_workspace(branch(op), in);
}

static size_t res_tape_bytes(const rb_op *op, rb_shape in)
{
    return rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_arena_bytes(rb_op_tape_bytes(branch(op), in));
}

/* The tape holds F(x), then F's own tape. */
static rb_tensor tape_fx(const void *tape, rb_shape in)
{
    return (rb_tensor){.shape = in, .data = (double *)tape, .owns = false};
}

static void *tape_branch(const void *tape, rb_shape in)
{
    return (char *)tape + rb_arena_bytes(rb_shape_count(in) * sizeof(double));
}

static rb_status res_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    return rb_residual_step(ctx, branch(op), ((const residual_state *)op->state)->h, x, y, work);
}

static rb_status res_forward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                   rb_arena *work)
{
    const residual_state *s = op->state;
    rb_tensor fx = tape_fx(tape, x->shape);
    return step_core(ctx, branch(op), s->h, s->act, x, y, &fx, tape_branch(tape, x->shape), work);
}

static rb_status res_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                              const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                              rb_arena *work, bool assign)
{
    (void)y;
    rb_tensor fx = tape_fx(tape, x->shape);
    return backward_core(ctx, branch(op), ((const residual_state *)op->state)->h, x, &fx, tape_branch(tape, x->shape),
                         dy, alpha, dx, dparams, work, assign);
}
RB_BACKWARD_PAIR(res, res_backward)

/* The post-activation layer: g = alpha act'(x + h F(x)) dy into work memory (overwritten, so
 * never zeroed first; for ReLU from y = ReLU(x + h F(x)) > 0, the same mask), then the step's
 * backward pass with g. */
static rb_status res_act_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                  const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                  rb_arena *work, bool assign)
{
    const residual_state *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: needs a work arena (rb_op_workspace)", op->type->name);
    rb_tensor fx = tape_fx(tape, x->shape), g;
    size_t mark = rb_arena_mark(work);
    rb_status st = rb_arena_tensor(ctx, work, &g, x->shape);
    if (st == RB_OK && g.data == NULL) st = rb_fail(ctx, RB_ENOMEM, "%s: work arena too small (rb_op_workspace)", op->type->name);
    if (st == RB_OK && s->act == RB_ACT_RELU) { /* relu'(pre) = [y > 0]: two streams instead of three */
        const size_t n = rb_tensor_count(x);
        const int T = rb_parallel_threads(ctx, n);
        const double *yd = y->data, *d = dy->data;
        double *gd = g.data;
#pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
        for (size_t i = 0; i < n; i++) gd[i] = (yd[i] > 0.0 ? 1.0 : 0.0) * (alpha * d[i]);
    } else if (st == RB_OK) {
        act_pass(ctx, s->act, x->data, s->h, fx.data, dy->data, alpha, g.data, rb_tensor_count(x));
    }
    if (st == RB_OK) {
        st = backward_core(ctx, branch(op), s->h, x, &fx, tape_branch(tape, x->shape), &g, 1.0, dx, dparams, work,
                           assign);
    }
    rb_arena_reset(work, mark);
    return st;
}

RB_BACKWARD_PAIR(res_act, res_act_backward)

/* tape and output of a recomputing backward pass, g, and the branch's scratch */
static size_t res_act_workspace(const rb_op *op, rb_shape in)
{
    return rb_arena_bytes(res_tape_bytes(op, in)) + 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) +
           res_workspace(op, in);
}

static rb_status res_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                         rb_tensor *dx, rb_arena *work)
{
    return backward_core(ctx, branch(op), ((const residual_state *)op->state)->h, x, NULL, NULL, dy, alpha, dx, NULL, work,
                         false);
}

static rb_status res_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                double alpha, double *dparams, rb_arena *work)
{
    return backward_core(ctx, branch(op), ((const residual_state *)op->state)->h, x, NULL, NULL, dy, alpha, NULL, dparams,
                         work, false);
}

static void res_destroy(rb_context *ctx, rb_op *op)
{
    residual_state *s = op->state;
    rb_parts_release(ctx, &s->parts);
    rb_free(ctx, s);
}

#define RES_TYPE(ident, label, extra)                                                                           \
    static const rb_op_type ident = {.name = label, .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE | RB_OP_COMPOSITE | (extra),    \
                                     .shape = res_shape, .workspace = res_workspace, .apply = res_apply,        \
                                     .vjp = res_vjp, .param_grad = res_param_grad, .destroy = res_destroy,      \
                                     .tape_bytes = res_tape_bytes, .forward_taped = res_forward_taped,          \
                                     .backward_taped = res_backward_taped,                                      \
                                     .backward_overwrite = res_backward_overwrite}
RES_TYPE(residual_type, "residual layer", 0);
RES_TYPE(residual_type_linear, "residual layer (linear)", RB_OP_LINEAR);
#undef RES_TYPE

/* Post-activation: apply, vjp and param_grad through the taped passes (tape in work memory). */
static const rb_op_type residual_act_type = {
    .name = "residual layer + activation", .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE | RB_OP_COMPOSITE,
    .shape = res_shape, .workspace = res_act_workspace, .apply = rb_op_apply_via_tape, .vjp = rb_op_vjp_via_tape,
    .param_grad = rb_op_param_grad_via_tape, .destroy = res_destroy, .tape_bytes = res_tape_bytes,
    .forward_taped = res_forward_taped, .backward_taped = res_act_backward_taped,
    .backward_overwrite = res_act_backward_overwrite};

static rb_status residual_create(rb_context *ctx, const char *fn, rb_op *F, double h, rb_activation act, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (!isfinite(h)) return rb_fail(ctx, RB_EINVAL, "%s: step size h = %g is not finite", fn, h);
    if ((unsigned)act >= RB_ACT_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: act = %d is not an rb_activation", fn, (int)act);
    size_t np;
    int linear;
    rb_status st = rb_parts_check(ctx, fn, &F, 1, &np, &linear);
    if (st != RB_OK) return st;
    residual_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    rb_op *op;
    const rb_op_type *type = act != RB_ACT_IDENTITY ? &residual_act_type : linear ? &residual_type_linear : &residual_type;
    st = rb_op_new(ctx, type, s, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, s);
        return st;
    }
    s->h = h, s->act = act;
    rb_parts_adopt(&s->parts, op, &F, 1);
    *out = op;
    return RB_OK;
}

rb_status rb_op_residual_create(rb_context *ctx, rb_op *F, double h, rb_op **out)
{
    return residual_create(ctx, "rb_op_residual_create", F, h, RB_ACT_IDENTITY, out);
}

rb_status rb_op_residual_act_create(rb_context *ctx, rb_op *F, double h, rb_activation act, rb_op **out)
{
    return residual_create(ctx, "rb_op_residual_act_create", F, h, act, out);
}
