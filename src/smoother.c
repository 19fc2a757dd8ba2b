/* smoother.c — the smoothing operator in residual-correction form, F(u) = S(f - A u).
 *
 * Every smoother of the V-cycle has this form (vcycle.h): Jacobi with S = D^{-1}, a
 * colour of red-black Gauss-Seidel with S = m_c D^{-1}, an MgNet smoother with
 * S = sigma(B * sigma(.)). rb_residual_step(F, h, u, u) is then the smoothing step
 * u <- u + h S(f - A u). A, S and f are referenced, not owned. */
#include "resbridge/vcycle.h"

#include "op_internal.h"

typedef struct smoother_state {
    const rb_op *A, *S;
    rb_tensor f; /* a view: its data may change between calls */
} smoother_state;

static rb_status sm_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const smoother_state *s = op->state;
    if (!rb_shape_equal(in, s->f.shape)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "smoother: u has shape %s but f has %s", rb_shape_format(in, a, sizeof a),
                       rb_shape_format(s->f.shape, b, sizeof b));
    }
    *out = in;
    return RB_OK;
}

static size_t sm_workspace(const rb_op *op, rb_shape in)
{
    const smoother_state *s = op->state;
    size_t w = rb_op_workspace(s->A, in), ws = rb_op_workspace(s->S, in);
    if (ws > w) w = ws;
    return 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + w;
}

/* r = f - A x into arena scratch. */
static rb_status residual(rb_context *ctx, const smoother_state *s, const rb_tensor *x, rb_tensor *r, rb_arena *work)
{
    rb_status st = rb_arena_tensor(ctx, work, r, x->shape);
    if (st == RB_OK && r->data == NULL) st = rb_fail(ctx, RB_EINVAL, "smoother: work arena is in measuring mode");
    if (st == RB_OK) st = rb_vcycle_residual(ctx, s->A, x, &s->f, r, NULL, work);
    return st;
}

static rb_status sm_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const smoother_state *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "smoother: needs a work arena of %zu bytes", sm_workspace(op, x->shape));
    const size_t mark = rb_arena_mark(work);
    rb_tensor r;
    rb_status st = residual(ctx, s, x, &r, work);
    if (st == RB_OK) st = s->S->type->apply(ctx, s->S, &r, y, work);
    rb_arena_reset(work, mark);
    return st;
}

/* J_F^T dy = -A^T J_S(r)^T dy. */
static rb_status sm_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                        rb_tensor *dx, rb_arena *work)
{
    const smoother_state *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "smoother: needs a work arena of %zu bytes", sm_workspace(op, x->shape));
    const size_t mark = rb_arena_mark(work);
    rb_tensor r, dr;
    rb_status st = residual(ctx, s, x, &r, work);
    if (st == RB_OK) st = rb_arena_tensor(ctx, work, &dr, x->shape);
    if (st == RB_OK) {
        rb_zero(ctx, dr.data, rb_tensor_count(&dr));
        st = rb_op_backward_unchecked(ctx, s->S, &r, NULL, NULL, dy, alpha, &dr, NULL, work);
    }
    if (st == RB_OK) st = rb_op_backward_unchecked(ctx, s->A, x, NULL, NULL, &dr, -1.0, dx, NULL, work);
    rb_arena_reset(work, mark);
    return st;
}

static void sm_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type smoother_type = {
    .name = "smoother",
    .flags = RB_OP_SAME_SHAPE,
    .shape = sm_shape,
    .workspace = sm_workspace,
    .apply = sm_apply,
    .vjp = sm_vjp,
    .destroy = sm_destroy,
};

rb_status rb_op_smoother_create(rb_context *ctx, const rb_op *A, const rb_op *S, const rb_tensor *f, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (A == NULL || S == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_smoother_create: A or S is NULL");
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_smoother_create: out is NULL");
    rb_status st = rb_tensor_check(ctx, f, "rb_op_smoother_create: f");
    if (st == RB_OK) st = rb_op_check_keeps_shape(ctx, A, f->shape, "rb_op_smoother_create (A)");
    if (st == RB_OK) st = rb_op_check_keeps_shape(ctx, S, f->shape, "rb_op_smoother_create (S)");
    if (st != RB_OK) return st;
    smoother_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->A = A, s->S = S, s->f = *f, s->f.owns = false;
    st = rb_op_new(ctx, &smoother_type, s, 0, out);
    if (st != RB_OK) rb_free(ctx, s);
    return st;
}
