/* rhs.c — dense right-hand sides dx/dt = F(t, x) as rb_ops (see ode.h):
 * F(x) = W x; F(t, x) = sigma(W_k x + b_k), weights piecewise constant in t;
 * F(x) = sigma((W - W^T - gamma I) x + b).
 *
 * One implementation: z = A x + b row by row over a batch, then the activation
 * op on z. The vjp and parameter gradient go back through the activation's vjp
 * (dz = sigma'(z) dy) and then through A. */
#include "resbridge/ode.h"
#include "ode_private.h"

#include <math.h>
#include <string.h>

typedef struct dense_rhs {
    size_t n;          /* state width */
    size_t sets;       /* weight sets (piecewise constant in t) */
    double set_width;  /* time per set */
    int bias;          /* each set holds b after W */
    int antisym;       /* A = W - W^T - gamma I */
    double gamma;
    rb_op *sigma;      /* activation, or NULL (identity, linear op) */
} dense_rhs;

static size_t set_size(const dense_rhs *s) { return s->n * s->n + (s->bias ? s->n : 0); }

/* The weight set active at time t. */
static size_t set_index(const rb_op *op)
{
    const dense_rhs *s = op->state;
    return rb_ode_set_index(op->t, s->sets, s->set_width);
}

/* A_ij of the active set. */
static double entry(const dense_rhs *s, const double *W, size_t i, size_t j)
{
    if (!s->antisym) return W[i * s->n + j];
    return W[i * s->n + j] - W[j * s->n + i] - (i == j ? s->gamma : 0.0);
}

static rb_status dense_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const dense_rhs *s = op->state;
    if (in.w != s->n || in.c != 1 || in.d != 1 || in.h != 1) {
        char a[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: input %s; needs (N,1,1,1,%zu) (a batch of vectors of width %zu)",
                       op->type->name, rb_shape_format(in, a, sizeof a), s->n, s->n);
    }
    *out = in;
    return RB_OK;
}

static size_t dense_workspace(const rb_op *op, rb_shape in)
{
    return 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_op_workspace(((const dense_rhs *)op->state)->sigma, in);
}

/* z = A x + b, row by row. */
static void affine(const rb_op *op, const rb_tensor *x, double *z)
{
    const dense_rhs *s = op->state;
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    const double *W = op->params + set_index(op) * set_size(s);
    const double *b = s->bias ? W + n * n : NULL;
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x->data + r * n;
        for (size_t i = 0; i < n; i++) {
            double acc = b ? b[i] : 0.0;
            for (size_t j = 0; j < n; j++) acc += entry(s, W, i, j) * xr[j];
            z[r * n + i] = acc;
        }
    }
}

static rb_status dense_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const dense_rhs *s = op->state;
    if (s->sigma == NULL) {
        affine(op, x, y->data);
        return RB_OK;
    }
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: apply needs a work arena", op->type->name);
    size_t mark = rb_arena_mark(work);
    rb_tensor z;
    rb_status st = rb_arena_tensor(ctx, work, &z, x->shape);
    if (st == RB_OK && z.data == NULL) st = rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
    if (st == RB_OK) {
        affine(op, x, z.data);
        st = rb_op_apply(ctx, s->sigma, &z, y, work);
    }
    rb_arena_reset(work, mark);
    return st;
}

/* dz = alpha sigma'(z) dy into arena scratch (*dz; the caller resets the arena). */
static rb_status back_through_sigma(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                    double alpha, rb_tensor *dz, rb_arena *work)
{
    const dense_rhs *s = op->state;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: backward needs a work arena", op->type->name);
    rb_status st = rb_arena_tensor(ctx, work, dz, x->shape);
    if (st == RB_OK && dz->data == NULL) st = rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
    if (st != RB_OK) return st;
    size_t count = rb_tensor_count(x);
    if (s->sigma == NULL) {
        for (size_t i = 0; i < count; i++) dz->data[i] = alpha * dy->data[i];
        return RB_OK;
    }
    rb_tensor z;
    st = rb_arena_tensor(ctx, work, &z, x->shape);
    if (st != RB_OK) return st;
    affine(op, x, z.data);
    memset(dz->data, 0, count * sizeof(double));
    return rb_op_vjp(ctx, s->sigma, &z, dy, alpha, dz, work);
}

static rb_status dense_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    const dense_rhs *s = op->state;
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    const double *W = op->params + set_index(op) * set_size(s);

    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor dz = {{0, 0, 0, 0, 0}, NULL, false};
    rb_status st = s->sigma == NULL && work == NULL ? RB_OK : back_through_sigma(ctx, op, x, dy, alpha, &dz, work);
    if (st == RB_OK) {
        /* linear without an arena: dz = alpha dy on the fly */
        for (size_t r = 0; r < rows; r++)
            for (size_t i = 0; i < n; i++) {
                double d = work ? dz.data[r * n + i] : alpha * dy->data[r * n + i];
                for (size_t j = 0; j < n; j++) dx->data[r * n + j] += entry(s, W, i, j) * d;
            }
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status dense_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                  double alpha, double *dparams, rb_arena *work)
{
    const dense_rhs *s = op->state;
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    double *dW = dparams + set_index(op) * set_size(s);
    double *db = s->bias ? dW + n * n : NULL;

    size_t mark = work ? rb_arena_mark(work) : 0;
    rb_tensor dz = {{0, 0, 0, 0, 0}, NULL, false};
    rb_status st = s->sigma == NULL && work == NULL ? RB_OK : back_through_sigma(ctx, op, x, dy, alpha, &dz, work);
    if (st == RB_OK) {
        for (size_t r = 0; r < rows; r++) {
            const double *xr = x->data + r * n;
            for (size_t i = 0; i < n; i++) {
                double d = work ? dz.data[r * n + i] : alpha * dy->data[r * n + i];
                if (db) db[i] += d;
                /* dA_ij = d_i x_j; A = W - W^T: dW_ij += dA_ij, dW_ji -= dA_ij */
                for (size_t j = 0; j < n; j++) {
                    dW[i * n + j] += d * xr[j];
                    if (s->antisym) dW[j * n + i] -= d * xr[j];
                }
            }
        }
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

static void dense_destroy(rb_context *ctx, rb_op *op)
{
    dense_rhs *s = op->state;
    if (s == NULL) return;
    rb_op_free(ctx, s->sigma);
    rb_free(ctx, s);
}

#define DENSE_TYPE(ident, label, fl)                                                                           \
    static const rb_op_type ident = {.name = label,                                                            \
                                     .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE | (fl),                      \
                                     .shape = dense_shape,                                                     \
                                     .workspace = dense_workspace,                                             \
                                     .apply = dense_apply,                                                     \
                                     .vjp = dense_vjp,                                                         \
                                     .param_grad = dense_param_grad,                                           \
                                     .destroy = dense_destroy}
DENSE_TYPE(type_linear, "ode_linear", RB_OP_LINEAR);
DENSE_TYPE(type_neural, "ode_neural", 0);
DENSE_TYPE(type_antisym, "ode_antisym", 0);
#undef DENSE_TYPE

static rb_status dense_create(rb_context *ctx, const rb_op_type *type, const dense_rhs *proto, rb_activation sigma,
                              const double *params, rb_op **out)
{
    dense_rhs *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    *s = *proto;
    rb_status st = RB_OK;
    if (type != &type_linear) st = rb_op_activation_create(ctx, sigma, &s->sigma);
    if (st != RB_OK) {
        rb_free(ctx, s);
        return st;
    }
    rb_op *op;
    st = rb_op_new(ctx, type, s, s->sets * set_size(s), &op);
    if (st != RB_OK) {
        rb_op_free(ctx, s->sigma);
        rb_free(ctx, s);
        return st;
    }
    if (params != NULL) memcpy(op->params, params, op->nparams * sizeof(double));
    *out = op;
    return RB_OK;
}

static rb_status check_common(rb_context *ctx, const char *fn, size_t n, rb_activation sigma, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (n == 0 || n > (1u << 15)) return rb_fail(ctx, RB_EINVAL, "%s: n = %zu must be in 1..32768", fn, n);
    if ((unsigned)sigma >= RB_ACT_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: sigma = %d is not an rb_activation", fn, (int)sigma);
    return RB_OK;
}

rb_status rb_op_ode_linear_create(rb_context *ctx, size_t n, const double *W, rb_op **out)
{
    rb_status st = check_common(ctx, "rb_op_ode_linear_create", n, RB_ACT_IDENTITY, out);
    if (st != RB_OK) return st;
    dense_rhs proto = {n, 1, 1.0, 0, 0, 0.0, NULL};
    return dense_create(ctx, &type_linear, &proto, RB_ACT_IDENTITY, W, out);
}

rb_status rb_op_ode_neural_create(rb_context *ctx, size_t n, rb_activation sigma, size_t sets, double set_width,
                                  const double *params, rb_op **out)
{
    const char *fn = "rb_op_ode_neural_create";
    rb_status st = check_common(ctx, fn, n, sigma, out);
    if (st != RB_OK) return st;
    if (sets == 0 || sets > 1000000) return rb_fail(ctx, RB_EINVAL, "%s: sets = %zu must be in 1..1e6", fn, sets);
    if (sets > 1 && !(isfinite(set_width) && set_width > 0))
        return rb_fail(ctx, RB_EINVAL, "%s: set_width = %g must be finite and > 0", fn, set_width);
    dense_rhs proto = {n, sets, sets > 1 ? set_width : 1.0, 1, 0, 0.0, NULL};
    return dense_create(ctx, &type_neural, &proto, sigma, params, out);
}

rb_status rb_op_ode_antisym_create(rb_context *ctx, size_t n, rb_activation sigma, double gamma, const double *params,
                                   rb_op **out)
{
    const char *fn = "rb_op_ode_antisym_create";
    rb_status st = check_common(ctx, fn, n, sigma, out);
    if (st != RB_OK) return st;
    if (!(isfinite(gamma) && gamma >= 0)) return rb_fail(ctx, RB_EINVAL, "%s: gamma = %g must be finite and >= 0", fn, gamma);
    dense_rhs proto = {n, 1, 1.0, 1, 1, gamma, NULL};
    return dense_create(ctx, &type_antisym, &proto, sigma, params, out);
}
