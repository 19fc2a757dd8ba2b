/* rhs.c — dense right-hand sides dx/dt = F(t, x) as rb_ops (see ode.h):
 * F(x) = W x; F(t, x) = sigma(W(t) x + b(t)) with the weights piecewise
 * constant in t or a Chebyshev series in t; F(x) = sigma((W - W^T - gamma I) x + b).
 *
 * One implementation: the weights at time t (one stored set, or a combination
 * of the sets formed in work memory), z = A x + b row by row over a batch, then
 * the activation op on z. The vjp and parameter gradient go back through the
 * activation's vjp (dz = sigma'(z) dy), then through A, and spread dA over the
 * sets with the same coefficients. The products (Z = X A^T, dX += dZ A,
 * dA += dZ^T X) are OpenBLAS GEMM calls (GEMV, GER for a single vector), split
 * over the context's threads by output blocks. */
#include "resbridge/ode.h"
#include "ode_private.h"

#include <math.h>
#include <string.h>

#include "blas_internal.h"

typedef enum time_basis {
    BASIS_PIECEWISE, /* set k = floor(t / width) */
    BASIS_CHEBYSHEV, /* sum_k T_k(u) set_k, u = 2 (t - ta) / width - 1 */
} time_basis;

typedef struct dense_rhs {
    size_t n;          /* state width */
    size_t sets;       /* weight sets */
    time_basis basis;
    double ta, width;  /* piecewise: time per set (ta unused); Chebyshev: the interval [ta, ta + width] */
    int bias;          /* each set holds b after W */
    int antisym;       /* A = W - W^T - gamma I */
    double gamma;
    rb_op *sigma;      /* activation, or NULL (identity, linear op) */
} dense_rhs;

static size_t set_size(const dense_rhs *s) { return s->n * s->n + (s->bias ? s->n : 0); }

/* The sets that make the weights at time op->t, sets first .. first + count - 1
 * with coefficients c[0 .. count): returns count. */
static size_t active_sets(const rb_op *op, size_t *first, double *c)
{
    const dense_rhs *s = op->state;
    if (s->basis == BASIS_PIECEWISE) {
        *first = rb_ode_set_index(op->t, s->sets, s->width);
        c[0] = 1.0;
        return 1;
    }
    double u = 2.0 * (op->t - s->ta) / s->width - 1.0; /* T_0 = 1, T_1 = u, T_{k+1} = 2 u T_k - T_{k-1} */
    c[0] = 1.0;
    if (s->sets > 1) c[1] = u;
    for (size_t k = 2; k < s->sets; k++) c[k] = 2.0 * u * c[k - 1] - c[k - 2];
    *first = 0;
    return s->sets;
}

/* The weights at time op->t (W, then b if bias): a stored set as it is, or the
 * combination formed in `work` (the caller resets the arena). */
static rb_status weights_at(rb_context *ctx, const rb_op *op, rb_arena *work, const double **W)
{
    const dense_rhs *s = op->state;
    double c[RB_ODE_SMOOTH_MAX];
    size_t first, count = active_sets(op, &first, c), m = set_size(s);
    if (count == 1 && c[0] == 1.0) {
        *W = op->params + first * m;
        return RB_OK;
    }
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: weights varying in t need a work arena", op->type->name);
    double *sum = rb_arena_alloc(ctx, work, m * sizeof(double));
    if (sum == NULL) return work->measuring ? rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name)
                                            : RB_ENOMEM;
    memset(sum, 0, m * sizeof(double));
    for (size_t k = 0; k < count; k++) {
        const double *Wk = op->params + (first + k) * m;
        for (size_t q = 0; q < m; q++) sum[q] += c[k] * Wk[q];
    }
    *W = sum;
    return RB_OK;
}

/* Threads for a product of rows x n x n multiply-adds: one below ~1M (a few tens of
 * microseconds, where a parallel region's start and barrier cost more than they save and a
 * descheduled thread stalls the step), else up to one per output block. */
static int parts_for(int threads, size_t rows, size_t n)
{
    if (rows * n * n < ((size_t)1 << 20)) return 1;
    return (size_t)threads < n ? threads : (int)n;
}

/* Y (rows x n) += alpha X op(M) for X (rows x n) and M (n x n), op(M) = M^T if trans
 * else M; each thread computes a block of Y's columns. */
static void times_matrix(int threads, size_t rows, size_t n, double alpha, const double *X, const double *M,
                         int trans, double *Y)
{
    int parts = parts_for(threads, rows, n), saved = rb_blas_single_begin();
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1)
    for (int p = 0; p < parts; p++) {
        size_t j0 = n * (size_t)p / (size_t)parts, m = n * (size_t)(p + 1) / (size_t)parts - j0;
        const double *Mb = trans ? M + j0 * n : M + j0; /* columns j0.. of op(M) */
        if (rows == 1)
            cblas_dgemv(CblasRowMajor, trans ? CblasNoTrans : CblasTrans, (int)(trans ? m : n), (int)(trans ? n : m),
                        alpha, Mb, (int)n, X, 1, 1.0, Y + j0, 1);
        else
            cblas_dgemm(CblasRowMajor, CblasNoTrans, trans ? CblasTrans : CblasNoTrans, (int)rows, (int)m, (int)n,
                        alpha, X, (int)n, Mb, (int)n, 1.0, Y + j0, (int)n);
    }
    rb_blas_single_end(saved);
}

/* Y (n x n) += alpha P^T Q for P, Q (rows x n); each thread computes a block of Y's rows. */
static void outer(int threads, size_t rows, size_t n, double alpha, const double *P, const double *Q, double *Y)
{
    int parts = parts_for(threads, rows, n), saved = rb_blas_single_begin();
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1)
    for (int p = 0; p < parts; p++) {
        size_t i0 = n * (size_t)p / (size_t)parts, m = n * (size_t)(p + 1) / (size_t)parts - i0;
        if (rows == 1)
            cblas_dger(CblasRowMajor, (int)m, (int)n, alpha, P + i0, 1, Q, 1, Y + i0 * n, (int)n);
        else
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)n, (int)rows, alpha, P + i0, (int)n, Q,
                        (int)n, 1.0, Y + i0 * n, (int)n);
    }
    rb_blas_single_end(saved);
}

/* Y += alpha X A^T (trans) or alpha X A for the weights W; X, Y rows x n.
 * Antisymmetric: A = W - W^T - gamma I. */
static void times_A(int threads, const dense_rhs *s, const double *W, size_t rows, double alpha, const double *X,
                    int trans, double *Y)
{
    size_t n = s->n;
    times_matrix(threads, rows, n, alpha, X, W, trans, Y);
    if (!s->antisym) return;
    times_matrix(threads, rows, n, -alpha, X, W, !trans, Y);
    for (size_t i = 0; i < rows * n; i++) Y[i] -= alpha * s->gamma * X[i];
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
    const dense_rhs *s = op->state;
    size_t weights = s->basis == BASIS_PIECEWISE ? 0 : rb_arena_bytes(set_size(s) * sizeof(double));
    return weights + 2 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_op_workspace(s->sigma, in);
}

/* z = A x + b for each row of x, for the weights W (then b) at time t. */
static void affine(int threads, const dense_rhs *s, const double *W, const rb_tensor *x, double *z)
{
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    for (size_t r = 0; r < rows; r++) {
        if (s->bias) memcpy(z + r * n, W + n * n, n * sizeof(double));
        else memset(z + r * n, 0, n * sizeof(double));
    }
    times_A(threads, s, W, rows, 1.0, x->data, 1, z);
}

static rb_status dense_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const dense_rhs *s = op->state;
    size_t mark = work ? rb_arena_mark(work) : 0;
    const double *W = NULL;
    rb_status st = weights_at(ctx, op, work, &W);
    if (st == RB_OK && s->sigma == NULL) affine(rb_context_threads(ctx), s, W, x, y->data);
    if (st == RB_OK && s->sigma != NULL) {
        rb_tensor z;
        if (work == NULL) st = rb_fail(ctx, RB_ENULL, "%s: apply needs a work arena", op->type->name);
        if (st == RB_OK) st = rb_arena_tensor(ctx, work, &z, x->shape);
        if (st == RB_OK && z.data == NULL) st = rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
        if (st == RB_OK) {
            affine(rb_context_threads(ctx), s, W, x, z.data);
            st = rb_op_apply(ctx, s->sigma, &z, y, work);
        }
    }
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* The weights at t (*W) and dz = alpha sigma'(z) dy (*dz; NULL for a linear op
 * without an arena: then dz = alpha dy, formed on the fly by the caller).
 * Scratch from `work`; the caller resets the arena. */
static rb_status backward_prep(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                               double alpha, const double **W, const double **dz, rb_arena *work)
{
    const dense_rhs *s = op->state;
    rb_status st = weights_at(ctx, op, work, W);
    *dz = NULL;
    if (st != RB_OK || (s->sigma == NULL && work == NULL)) return st;
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: backward needs a work arena", op->type->name);
    rb_tensor d;
    st = rb_arena_tensor(ctx, work, &d, x->shape);
    if (st == RB_OK && d.data == NULL) st = rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
    if (st != RB_OK) return st;
    size_t count = rb_tensor_count(x);
    *dz = d.data;
    if (s->sigma == NULL) {
        for (size_t i = 0; i < count; i++) d.data[i] = alpha * dy->data[i];
        return RB_OK;
    }
    rb_tensor z;
    st = rb_arena_tensor(ctx, work, &z, x->shape);
    if (st != RB_OK) return st;
    affine(rb_context_threads(ctx), s, *W, x, z.data);
    memset(d.data, 0, count * sizeof(double));
    return rb_op_vjp(ctx, s->sigma, &z, dy, alpha, &d, work);
}

static rb_status dense_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    const dense_rhs *s = op->state;
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    size_t mark = work ? rb_arena_mark(work) : 0;
    const double *W = NULL, *dz = NULL;
    rb_status st = backward_prep(ctx, op, x, dy, alpha, &W, &dz, work);
    if (st == RB_OK) /* dX += dZ A, dZ = dz or alpha dy */
        times_A(rb_context_threads(ctx), s, W, rows, dz ? 1.0 : alpha, dz ? dz : dy->data, 0, dx->data);
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status dense_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                  double alpha, double *dparams, rb_arena *work)
{
    const dense_rhs *s = op->state;
    size_t n = s->n, rows = rb_tensor_count(x) / n;
    size_t mark = work ? rb_arena_mark(work) : 0;
    const double *W = NULL, *dz = NULL;
    rb_status st = backward_prep(ctx, op, x, dy, alpha, &W, &dz, work);
    double c[RB_ODE_SMOOTH_MAX];
    size_t first, count = active_sets(op, &first, c);
    for (size_t k = 0; st == RB_OK && k < count; k++) {
        /* dA = dz x^T; set k's share is c_k dA */
        double *dW = dparams + (first + k) * set_size(s);
        double *db = s->bias ? dW + n * n : NULL;
        const double *d = dz ? dz : dy->data; /* dZ = a d */
        double a = c[k] * (dz ? 1.0 : alpha);
        int threads = rb_context_threads(ctx);
        outer(threads, rows, n, a, d, x->data, dW);
        if (s->antisym) outer(threads, rows, n, -a, x->data, d, dW); /* A = W - W^T: dW += dA - dA^T */
        if (db)
            for (size_t r = 0; r < rows; r++)
                for (size_t i = 0; i < n; i++) db[i] += a * d[r * n + i];
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
DENSE_TYPE(type_neural_smooth, "ode_neural_smooth", 0);
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
    dense_rhs proto = {n, 1, BASIS_PIECEWISE, 0.0, 1.0, 0, 0, 0.0, NULL};
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
    dense_rhs proto = {n, sets, BASIS_PIECEWISE, 0.0, sets > 1 ? set_width : 1.0, 1, 0, 0.0, NULL};
    return dense_create(ctx, &type_neural, &proto, sigma, params, out);
}

rb_status rb_op_ode_antisym_create(rb_context *ctx, size_t n, rb_activation sigma, double gamma, const double *params,
                                   rb_op **out)
{
    const char *fn = "rb_op_ode_antisym_create";
    rb_status st = check_common(ctx, fn, n, sigma, out);
    if (st != RB_OK) return st;
    if (!(isfinite(gamma) && gamma >= 0)) return rb_fail(ctx, RB_EINVAL, "%s: gamma = %g must be finite and >= 0", fn, gamma);
    dense_rhs proto = {n, 1, BASIS_PIECEWISE, 0.0, 1.0, 1, 1, gamma, NULL};
    return dense_create(ctx, &type_antisym, &proto, sigma, params, out);
}

rb_status rb_op_ode_neural_smooth_create(rb_context *ctx, size_t n, rb_activation sigma, size_t terms, double ta,
                                         double tb, const double *params, rb_op **out)
{
    const char *fn = "rb_op_ode_neural_smooth_create";
    rb_status st = check_common(ctx, fn, n, sigma, out);
    if (st != RB_OK) return st;
    if (terms == 0 || terms > RB_ODE_SMOOTH_MAX)
        return rb_fail(ctx, RB_EINVAL, "%s: terms = %zu must be in 1..%d", fn, terms, RB_ODE_SMOOTH_MAX);
    if (!(isfinite(ta) && isfinite(tb) && tb > ta && isfinite(tb - ta)))
        return rb_fail(ctx, RB_EINVAL, "%s: the interval [ta, tb] = [%g, %g] must be finite with tb > ta", fn, ta, tb);
    dense_rhs proto = {n, terms, BASIS_CHEBYSHEV, ta, tb - ta, 1, 0, 0.0, NULL};
    return dense_create(ctx, &type_neural_smooth, &proto, sigma, params, out);
}
