/* conv_rhs.c — convolutional right-hand sides on 2D multi-channel grids (see
 * ode.h): F(x) = sigma(K * x + b) and Haber & Ruthotto's -K^T sigma(K * x + b).
 *
 * Built from the foundation's ops: K is a conv op (3x3, C -> C, zero padding,
 * bias), K^T the transposed conv op with the same descriptor, whose weight
 * array is the same [C][C][9] array, and sigma an activation op. No
 * convolution loop lives here. Not an rb_op_chain: the stable form uses K
 * twice, and a chain gives every part its own parameters; here both conv ops
 * point into the one parameter vector, so dF/dK sums both uses. */
#include "resbridge/conv.h"
#include "resbridge/ode.h"

#include <stdio.h>
#include <string.h>

typedef struct conv_rhs {
    rb_ode_conv_form form;
    rb_op *K;          /* conv, weights then bias: op->params */
    rb_op *KT;         /* transposed conv on K's weights (stable form), or NULL */
    rb_op *sigma;
    double *own_K, *own_KT; /* the conv ops' own parameter arrays, given back on free */
} conv_rhs;

size_t rb_ode_conv_nparams(size_t channels) { return 9 * channels * channels + channels; }

static rb_status conv_rhs_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const conv_rhs *s = op->state;
    rb_status st = rb_op_shape(ctx, s->K, in, out); /* (N, C, 1, H, W) -> the same */
    if (st != RB_OK && ctx != NULL) {
        char a[96], why[256];
        snprintf(why, sizeof why, "%s", rb_context_message(ctx)); /* the conv's own reason */
        return rb_fail(ctx, st, "%s: input %s; needs (N,%zu,1,H,W) (%s)", op->type->name,
                       rb_shape_format(in, a, sizeof a), rb_op_conv_desc(s->K)->cin, why);
    }
    if (st != RB_OK) return st;
    return RB_OK;
}

static size_t conv_rhs_workspace(const rb_op *op, rb_shape in)
{
    const conv_rhs *s = op->state;
    size_t parts = rb_op_workspace(s->K, in), kt = rb_op_workspace(s->KT, in), act = rb_op_workspace(s->sigma, in);
    if (kt > parts) parts = kt;
    if (act > parts) parts = act;
    return 4 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + parts;
}

/* n tensors of shape `shape` from the arena. */
static rb_status temps(rb_context *ctx, const rb_op *op, rb_arena *work, rb_shape shape, rb_tensor *t, int n)
{
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: needs a work arena (rb_op_workspace)", op->type->name);
    for (int i = 0; i < n; i++) {
        rb_status st = rb_arena_tensor(ctx, work, &t[i], shape);
        if (st != RB_OK) return st;
        if (t[i].data == NULL) return rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
    }
    return RB_OK;
}

/* z = K x + b and a = sigma(z). */
static rb_status forward(rb_context *ctx, const conv_rhs *s, const rb_tensor *x, rb_tensor *z, rb_tensor *a,
                         rb_arena *work)
{
    rb_status st = rb_op_apply(ctx, s->K, x, z, work);
    if (st == RB_OK) st = rb_op_apply(ctx, s->sigma, z, a, work);
    return st;
}

static rb_status conv_rhs_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const conv_rhs *s = op->state;
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor t[2];
    rb_status st = temps(ctx, op, work, x->shape, t, 2);
    if (st == RB_OK && s->form == RB_ODE_CONV_PLAIN) {
        st = rb_op_apply(ctx, s->K, x, &t[0], work);
        if (st == RB_OK) st = rb_op_apply(ctx, s->sigma, &t[0], y, work);
    } else if (st == RB_OK) {
        st = forward(ctx, s, x, &t[0], &t[1], work);
        if (st == RB_OK) st = rb_op_apply(ctx, s->KT, &t[1], y, work);
        for (size_t i = 0; st == RB_OK && i < rb_tensor_count(y); i++) y->data[i] = -y->data[i];
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* Back to z: t[0] = z, t[1] = a = sigma(z), t[3] = dz = d<dy, F(x)>/dz (t[2]: scratch). */
static rb_status backward_to_z(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                               rb_tensor *t, rb_arena *work)
{
    const conv_rhs *s = op->state;
    rb_status st = temps(ctx, op, work, x->shape, t, 4);
    if (st == RB_OK) st = forward(ctx, s, x, &t[0], &t[1], work);
    if (st != RB_OK) return st;
    const rb_tensor *da = dy;
    if (s->form == RB_ODE_CONV_STABLE) { /* da = -K dy */
        rb_tensor_fill(ctx, &t[2], 0.0);
        st = rb_op_vjp(ctx, s->KT, &t[1], dy, -1.0, &t[2], work);
        da = &t[2];
    }
    rb_tensor_fill(ctx, &t[3], 0.0);
    if (st == RB_OK) st = rb_op_vjp(ctx, s->sigma, &t[0], da, 1.0, &t[3], work);
    return st;
}

/* dx += alpha J^T dy (dx non-NULL) or dparams += alpha (dF/dtheta)^T dy (dparams non-NULL). */
static rb_status conv_rhs_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                   double alpha, rb_tensor *dx, double *dparams, rb_arena *work)
{
    const conv_rhs *s = op->state;
    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor t[4];
    rb_status st = backward_to_z(ctx, op, x, dy, t, work);
    if (st == RB_OK && dx) st = rb_op_vjp(ctx, s->K, x, &t[3], alpha, dx, work); /* dx += alpha K^T dz */
    if (st == RB_OK && dparams) st = rb_op_param_grad(ctx, s->K, x, &t[3], alpha, dparams, work); /* K x + b */
    if (st == RB_OK && dparams && s->KT) st = rb_op_param_grad(ctx, s->KT, &t[1], dy, -alpha, dparams, work); /* -K^T a */
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status conv_rhs_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                              double alpha, rb_tensor *dx, rb_arena *work)
{
    return conv_rhs_backward(ctx, op, x, dy, alpha, dx, NULL, work);
}

static rb_status conv_rhs_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                     double alpha, double *dparams, rb_arena *work)
{
    return conv_rhs_backward(ctx, op, x, dy, alpha, NULL, dparams, work);
}

static void conv_rhs_destroy(rb_context *ctx, rb_op *op)
{
    conv_rhs *s = op->state;
    if (s == NULL) return;
    if (s->K) s->K->params = s->own_K, rb_op_free(ctx, s->K);
    if (s->KT) s->KT->params = s->own_KT, rb_op_free(ctx, s->KT);
    rb_op_free(ctx, s->sigma);
    rb_free(ctx, s);
}

#define CONV_RHS_TYPE(ident, label)                                                                        \
    static const rb_op_type ident = {.name = label,                                                        \
                                     .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,                         \
                                     .shape = conv_rhs_shape,                                              \
                                     .workspace = conv_rhs_workspace,                                      \
                                     .apply = conv_rhs_apply,                                              \
                                     .vjp = conv_rhs_vjp,                                                  \
                                     .param_grad = conv_rhs_param_grad,                                    \
                                     .destroy = conv_rhs_destroy}
CONV_RHS_TYPE(type_conv_plain, "ode_conv");
CONV_RHS_TYPE(type_conv_stable, "ode_conv_stable");
#undef CONV_RHS_TYPE

rb_status rb_op_ode_conv_create(rb_context *ctx, size_t channels, rb_activation sigma, rb_ode_conv_form form,
                                const double *params, rb_op **out)
{
    const char *fn = "rb_op_ode_conv_create";
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (channels == 0 || channels > 1024) return rb_fail(ctx, RB_EINVAL, "%s: channels = %zu must be in 1..1024", fn, channels);
    if ((unsigned)sigma >= RB_ACT_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: sigma = %d is not an rb_activation", fn, (int)sigma);
    if ((unsigned)form >= RB_ODE_CONV_FORM_COUNT)
        return rb_fail(ctx, RB_EINVAL, "%s: form = %d is not an rb_ode_conv_form", fn, (int)form);
    conv_rhs *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->form = form;
    rb_conv_desc d = rb_conv_desc_default(2, channels, channels);
    d.bias = true;
    rb_conv_desc dt = d;
    dt.bias = false, dt.transposed = true;
    rb_op *op = NULL;
    rb_status st = rb_op_conv_create(ctx, &d, params, &s->K);
    if (st == RB_OK && form == RB_ODE_CONV_STABLE) st = rb_op_conv_create(ctx, &dt, NULL, &s->KT);
    if (st == RB_OK) st = rb_op_activation_create(ctx, sigma, &s->sigma);
    if (st == RB_OK)
        st = rb_op_new(ctx, form == RB_ODE_CONV_STABLE ? &type_conv_stable : &type_conv_plain, s,
                       rb_ode_conv_nparams(channels), &op);
    if (st != RB_OK) {
        rb_op_free(ctx, s->K), rb_op_free(ctx, s->KT), rb_op_free(ctx, s->sigma);
        rb_free(ctx, s);
        return st;
    }
    /* one parameter vector: K's weights and bias; K^T reads the same weights */
    memcpy(op->params, s->K->params, op->nparams * sizeof(double));
    s->own_K = s->K->params, s->K->params = op->params;
    if (s->KT) s->own_KT = s->KT->params, s->KT->params = op->params;
    *out = op;
    return RB_OK;
}
