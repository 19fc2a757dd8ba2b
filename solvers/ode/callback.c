/* callback.c — a right-hand side from user callbacks f(t, x, params) as an
 * rb_op (see ode.h): J^T w from the user's vjp, from n jvp columns, or -- only
 * when the user allowed it -- from central finite differences of f. */
#include "resbridge/ode.h"

#include <float.h>
#include <math.h>
#include <string.h>

typedef struct callback_rhs {
    size_t n;
    rb_ode_callbacks cb;
    rb_ode_grad state_grad, param_grad;
} callback_rhs;

#define RB_ODE_GRAD_NAME_(e, name) name,
static const char *const grad_names[] = {RB_ODE_GRAD_LIST(RB_ODE_GRAD_NAME_)};
#undef RB_ODE_GRAD_NAME_
_Static_assert(sizeof grad_names / sizeof *grad_names == RB_ODE_GRAD_COUNT, "one name per rb_ode_grad");

const char *rb_ode_grad_name(rb_ode_grad g) { return (unsigned)g < RB_ODE_GRAD_COUNT ? grad_names[g] : "unknown"; }

/* A callback's non-zero return as a status. */
static rb_status called(rb_context *ctx, const rb_op *op, const char *which, int r)
{
    if (r == 0) return RB_OK;
    return rb_fail(ctx, RB_ECALLBACK, "%s: the %s callback returned %d at t = %.17g", op->type->name, which, r, op->t);
}

static rb_status callback_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const callback_rhs *s = op->state;
    if (rb_shape_count(in) != s->n) {
        char a[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: input %s has %zu entries; the callbacks take %zu", op->type->name,
                       rb_shape_format(in, a, sizeof a), rb_shape_count(in), s->n);
    }
    *out = in;
    return RB_OK;
}

/* Scratch: two f values, a perturbed copy of x or of the parameters, the product. */
static size_t callback_workspace(const rb_op *op, rb_shape in)
{
    (void)in;
    const callback_rhs *s = op->state;
    size_t m = s->n > op->nparams ? s->n : op->nparams;
    return 4 * rb_arena_bytes(m * sizeof(double));
}

/* count doubles from the arena, or a status. */
static rb_status scratch(rb_context *ctx, const rb_op *op, rb_arena *work, size_t count, double **p)
{
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: needs a work arena (rb_op_workspace)", op->type->name);
    *p = rb_arena_alloc(ctx, work, (count ? count : 1) * sizeof(double));
    if (*p != NULL) return RB_OK;
    return work->measuring ? rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name) : RB_ENOMEM;
}

static rb_status callback_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const callback_rhs *s = op->state;
    size_t mark = work ? rb_arena_mark(work) : 0;
    double *fx = NULL;
    rb_status st = scratch(ctx, op, work, s->n, &fx);
    if (st == RB_OK) st = called(ctx, op, "f", s->cb.f(op->t, x->data, op->params, s->cb.user, fx));
    if (st == RB_OK) memcpy(y->data, fx, s->n * sizeof(double));
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* out_j = sum_i w_i d f_i / d v_j by central differences over the m entries of v,
 * where v is x (vary_x) or the parameters; v is a scratch copy, restored entry by entry. */
static rb_status fd_vjp(rb_context *ctx, const rb_op *op, const double *x, const double *w, int vary_x, double *out,
                        rb_arena *work)
{
    const callback_rhs *s = op->state;
    size_t n = s->n, m = vary_x ? n : op->nparams;
    double *v = NULL, *fp = NULL, *fm = NULL;
    rb_status st = scratch(ctx, op, work, m, &v);
    if (st == RB_OK) st = scratch(ctx, op, work, n, &fp);
    if (st == RB_OK) st = scratch(ctx, op, work, n, &fm);
    if (st != RB_OK) return st;
    memcpy(v, vary_x ? x : op->params, m * sizeof(double));
    const double *xs = vary_x ? v : x, *ps = vary_x ? op->params : v;
    for (size_t j = 0; j < m && st == RB_OK; j++) {
        double keep = v[j], step = cbrt(DBL_EPSILON) * fmax(1.0, fabs(keep));
        volatile double up = keep + step, down = keep - step; /* the steps actually taken */
        v[j] = up;
        st = called(ctx, op, "f", s->cb.f(op->t, xs, ps, s->cb.user, fp));
        v[j] = down;
        if (st == RB_OK) st = called(ctx, op, "f", s->cb.f(op->t, xs, ps, s->cb.user, fm));
        v[j] = keep;
        double acc = 0;
        for (size_t i = 0; i < n; i++) acc += w[i] * (fp[i] - fm[i]);
        out[j] = acc / (up - down);
    }
    return st;
}

/* out = J^T w from n jvp columns: out_j = <w, J e_j>. */
static rb_status jvp_columns(rb_context *ctx, const rb_op *op, const double *x, const double *w, double *out,
                             rb_arena *work)
{
    const callback_rhs *s = op->state;
    double *e = NULL, *col = NULL;
    rb_status st = scratch(ctx, op, work, s->n, &e);
    if (st == RB_OK) st = scratch(ctx, op, work, s->n, &col);
    if (st != RB_OK) return st;
    memset(e, 0, s->n * sizeof(double));
    for (size_t j = 0; j < s->n && st == RB_OK; j++) {
        e[j] = 1.0;
        st = called(ctx, op, "jvp", s->cb.jvp(op->t, x, op->params, e, s->cb.user, col));
        e[j] = 0.0;
        double acc = 0;
        for (size_t i = 0; i < s->n; i++) acc += w[i] * col[i];
        out[j] = acc;
    }
    return st;
}

static rb_status unavailable(rb_context *ctx, const rb_op *op, const char *what, const char *product)
{
    return rb_fail(ctx, RB_EUNSUPPORTED,
                   "%s: %s is unavailable: no %s callback was given and finite differences were not allowed "
                   "(flag RB_ODE_CALLBACK_FD)", op->type->name, what, product);
}

/* acc[0..m) += alpha J^T dy, J the Jacobian of f with respect to the state (of_state) or the
 * parameters, from the source chosen at creation. */
static rb_status accumulate_product(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                    double alpha, int of_state, double *acc, rb_arena *work)
{
    const callback_rhs *s = op->state;
    rb_ode_grad source = of_state ? s->state_grad : s->param_grad;
    if (source == RB_ODE_GRAD_NONE)
        return of_state ? unavailable(ctx, op, "J_F^T (the vjp)", "vjp or jvp")
                        : unavailable(ctx, op, "dF/dtheta^T (the parameter gradient)", "param_vjp");
    size_t m = of_state ? s->n : op->nparams, mark = work ? rb_arena_mark(work) : 0;
    double *out = NULL;
    rb_status st = scratch(ctx, op, work, m, &out);
    if (st == RB_OK && source == RB_ODE_GRAD_VJP) {
        rb_ode_product_fn product = of_state ? s->cb.vjp : s->cb.param_vjp;
        st = called(ctx, op, of_state ? "vjp" : "param_vjp", product(op->t, x->data, op->params, dy->data, s->cb.user, out));
    } else if (st == RB_OK && source == RB_ODE_GRAD_JVP) {
        st = jvp_columns(ctx, op, x->data, dy->data, out, work);
    } else if (st == RB_OK) {
        st = fd_vjp(ctx, op, x->data, dy->data, of_state, out, work);
    }
    if (st == RB_OK)
        for (size_t i = 0; i < m; i++) acc[i] += alpha * out[i];
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status callback_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                              double alpha, rb_tensor *dx, rb_arena *work)
{
    return accumulate_product(ctx, op, x, dy, alpha, 1, dx->data, work);
}

static rb_status callback_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                     double alpha, double *dparams, rb_arena *work)
{
    return accumulate_product(ctx, op, x, dy, alpha, 0, dparams, work);
}

static void callback_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

#define CALLBACK_TYPE(ident, label, fl)                                                                    \
    static const rb_op_type ident = {.name = label,                                                        \
                                     .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE | (fl),                  \
                                     .shape = callback_shape,                                              \
                                     .workspace = callback_workspace,                                      \
                                     .apply = callback_apply,                                              \
                                     .vjp = callback_vjp,                                                  \
                                     .param_grad = callback_param_grad,                                    \
                                     .destroy = callback_destroy}
CALLBACK_TYPE(type_callback, "ode_callback", 0);
CALLBACK_TYPE(type_callback_linear, "ode_callback (linear)", RB_OP_LINEAR);
#undef CALLBACK_TYPE

rb_status rb_op_ode_callback_create(rb_context *ctx, size_t n, const rb_ode_callbacks *cb, size_t nparams,
                                    const double *params, unsigned flags, rb_op **out)
{
    const char *fn = "rb_op_ode_callback_create";
    if (ctx == NULL) return RB_ENULL;
    if (cb == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "%s: %s is NULL", fn, cb ? "out" : "cb");
    if (cb->f == NULL) return rb_fail(ctx, RB_ENULL, "%s: cb->f is NULL (f is required)", fn);
    if (n == 0 || n > ((size_t)1 << 30)) return rb_fail(ctx, RB_EINVAL, "%s: n = %zu must be in 1..2^30", fn, n);
    if (nparams > ((size_t)1 << 30)) return rb_fail(ctx, RB_EINVAL, "%s: nparams = %zu must be <= 2^30", fn, nparams);
    if (flags & ~(unsigned)(RB_ODE_CALLBACK_FD | RB_ODE_CALLBACK_LINEAR))
        return rb_fail(ctx, RB_EINVAL, "%s: flags = %#x has bits other than RB_ODE_CALLBACK_FD | RB_ODE_CALLBACK_LINEAR",
                       fn, flags);
    if (params != NULL)
        for (size_t k = 0; k < nparams; k++)
            if (!isfinite(params[k])) return rb_fail(ctx, RB_EINVAL, "%s: params[%zu] = %g is not finite", fn, k, params[k]);
    callback_rhs *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    int fd = (flags & RB_ODE_CALLBACK_FD) != 0;
    s->n = n;
    s->cb = *cb;
    s->state_grad = cb->vjp ? RB_ODE_GRAD_VJP : cb->jvp ? RB_ODE_GRAD_JVP : fd ? RB_ODE_GRAD_FD : RB_ODE_GRAD_NONE;
    s->param_grad = nparams == 0 ? RB_ODE_GRAD_NONE : cb->param_vjp ? RB_ODE_GRAD_VJP : fd ? RB_ODE_GRAD_FD : RB_ODE_GRAD_NONE;
    rb_op *op;
    rb_status st = rb_op_new(ctx, (flags & RB_ODE_CALLBACK_LINEAR) ? &type_callback_linear : &type_callback, s, nparams, &op);
    if (st != RB_OK) {
        rb_free(ctx, s);
        return st;
    }
    if (params != NULL && nparams > 0) memcpy(op->params, params, nparams * sizeof(double));
    *out = op;
    return RB_OK;
}

rb_status rb_op_ode_callback_gradients(rb_context *ctx, const rb_op *op, rb_ode_grad *state, rb_ode_grad *params)
{
    if (ctx == NULL) return RB_ENULL;
    if (op == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_ode_callback_gradients: op is NULL");
    if (op->type != &type_callback && op->type != &type_callback_linear)
        return rb_fail(ctx, RB_EINVAL, "rb_op_ode_callback_gradients: op (%s) is not a callback right-hand side",
                       op->type ? op->type->name : "no type");
    const callback_rhs *s = op->state;
    if (state) *state = s->state_grad;
    if (params) *params = s->param_grad;
    return RB_OK;
}
