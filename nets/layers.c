/* layers.c — dense, flatten, global average pooling, batch and layer
 * normalisation as rb_ops (see layers.h). */
#include "resbridge/layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static size_t per_sample(rb_shape s) { return rb_shape_count(s) / s.n; }

/* ---- dense ------------------------------------------------------------------------------------ */

typedef struct dense_state {
    size_t in, out;
    bool bias;
} dense_state;

static rb_status dense_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const dense_state *s = op->state;
    if (per_sample(in) != s->in) {
        char buf[64];
        return rb_fail(ctx, RB_ESHAPE, "dense %zu -> %zu: input %s has %zu values per sample, expected %zu", s->in,
                       s->out, rb_shape_format(in, buf, sizeof buf), per_sample(in), s->in);
    }
    *out = rb_shape_2d(in.n, 1, 1, s->out);
    return RB_OK;
}

static rb_status dense_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)ctx, (void)work;
    const dense_state *s = op->state;
    const size_t N = x->shape.n;
    const double *W = op->params, *b = op->params + s->out * s->in;
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < s->out; o++) y->data[n * s->out + o] = s->bias ? b[o] : 0.0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)s->out, (int)s->in, 1.0, x->data, (int)s->in, W,
                (int)s->in, 1.0, y->data, (int)s->out);
    return RB_OK;
}

static rb_status dense_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, rb_arena *work)
{
    (void)ctx, (void)work;
    const dense_state *s = op->state;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)x->shape.n, (int)s->in, (int)s->out, alpha, dy->data,
                (int)s->out, op->params, (int)s->in, 1.0, dx->data, (int)s->in);
    return RB_OK;
}

static rb_status dense_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                  double alpha, double *dparams, rb_arena *work)
{
    (void)ctx, (void)work;
    const dense_state *s = op->state;
    const size_t N = x->shape.n;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)s->out, (int)s->in, (int)N, alpha, dy->data, (int)s->out,
                x->data, (int)s->in, 1.0, dparams, (int)s->in);
    if (s->bias)
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < s->out; o++) dparams[s->out * s->in + o] += alpha * dy->data[n * s->out + o];
    return RB_OK;
}

static void free_state(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type dense_type = {.name = "dense", .flags = RB_OP_HAS_PARAMS, .shape = dense_shape,
                                      .apply = dense_apply, .vjp = dense_vjp, .param_grad = dense_param_grad,
                                      .destroy = free_state};
static const rb_op_type dense_type_linear = {.name = "dense (no bias)", .flags = RB_OP_HAS_PARAMS | RB_OP_LINEAR,
                                             .shape = dense_shape, .apply = dense_apply, .vjp = dense_vjp,
                                             .param_grad = dense_param_grad, .destroy = free_state};

rb_status rb_op_dense_create(rb_context *ctx, size_t in, size_t out, bool bias, const double *params, rb_op **out_op)
{
    if (ctx == NULL) return RB_ENULL;
    if (out_op == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_dense_create: out_op is NULL");
    if (in == 0 || out == 0 || in > (1u << 24) || out > (1u << 24) || in * out > ((size_t)1 << 31))
        return rb_fail(ctx, RB_EINVAL, "rb_op_dense_create: in = %zu, out = %zu: need 1..2^24 each, in*out <= 2^31", in, out);
    dense_state *s = rb_malloc(ctx, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    *s = (dense_state){in, out, bias};
    rb_op *op;
    rb_status st = rb_op_new(ctx, bias ? &dense_type : &dense_type_linear, s, in * out + (bias ? out : 0), &op);
    if (st != RB_OK) {
        rb_free(ctx, s);
        return st;
    }
    if (params) memcpy(op->params, params, op->nparams * sizeof(double));
    *out_op = op;
    return RB_OK;
}

/* ---- flatten and global average pooling --------------------------------------------------------- */

static rb_status flatten_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    (void)ctx, (void)op;
    *out = rb_shape_2d(in.n, 1, 1, per_sample(in));
    return RB_OK;
}

static rb_status flatten_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)ctx, (void)op, (void)work;
    memcpy(y->data, x->data, rb_tensor_count(x) * sizeof(double));
    return RB_OK;
}

static rb_status flatten_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                             rb_tensor *dx, rb_arena *work)
{
    (void)ctx, (void)op, (void)work;
    size_t n = rb_tensor_count(x);
    for (size_t i = 0; i < n; i++) dx->data[i] += alpha * dy->data[i];
    return RB_OK;
}

static const rb_op_type flatten_type = {.name = "flatten", .flags = RB_OP_LINEAR, .shape = flatten_shape,
                                        .apply = flatten_apply, .vjp = flatten_vjp};

rb_status rb_op_flatten_create(rb_context *ctx, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_flatten_create: out is NULL");
    return rb_op_new(ctx, &flatten_type, NULL, 0, out);
}

static rb_status gap_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    (void)ctx, (void)op;
    *out = rb_shape_2d(in.n, 1, 1, in.c);
    return RB_OK;
}

static rb_status gap_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)ctx, (void)op, (void)work;
    const size_t NC = x->shape.n * x->shape.c, S = x->shape.d * x->shape.h * x->shape.w;
    for (size_t k = 0; k < NC; k++) {
        double acc = 0;
        for (size_t i = 0; i < S; i++) acc += x->data[k * S + i];
        y->data[k] = acc / (double)S;
    }
    return RB_OK;
}

static rb_status gap_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                         rb_tensor *dx, rb_arena *work)
{
    (void)ctx, (void)op, (void)work;
    const size_t NC = x->shape.n * x->shape.c, S = x->shape.d * x->shape.h * x->shape.w;
    for (size_t k = 0; k < NC; k++) {
        double g = alpha * dy->data[k] / (double)S;
        for (size_t i = 0; i < S; i++) dx->data[k * S + i] += g;
    }
    return RB_OK;
}

static const rb_op_type gap_type = {.name = "global average pool", .flags = RB_OP_LINEAR, .shape = gap_shape,
                                    .apply = gap_apply, .vjp = gap_vjp};

rb_status rb_op_global_avg_pool_create(rb_context *ctx, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_global_avg_pool_create: out is NULL");
    return rb_op_new(ctx, &gap_type, NULL, 0, out);
}

/* ---- normalisation: one core for batch and layer norm -------------------------------------------
 *
 * Value (o, g, i) sits at data[(o nG + g) nI + i]; statistics are taken per group g
 * over all (o, i). Batch norm: nO = N, nG = C, nI = D H W, affine per g. Layer
 * norm: nO = 1, nG = N, nI = the sample size, affine per i. */

typedef struct norm_layout {
    size_t nO, nG, nI;
    bool affine_per_group;
} norm_layout;

#define AFF(L, g, i) ((L).affine_per_group ? (g) : (i))

/* mean[g] and rstd[g] = 1 / sqrt(var[g] + eps) (biased variance, two passes). */
static void norm_stats(const double *x, norm_layout L, double eps, double *mean, double *var, double *rstd)
{
    const double M = (double)(L.nO * L.nI);
    for (size_t g = 0; g < L.nG; g++) {
        double s = 0, q = 0;
        for (size_t o = 0; o < L.nO; o++)
            for (size_t i = 0; i < L.nI; i++) s += x[(o * L.nG + g) * L.nI + i];
        double mu = s / M;
        for (size_t o = 0; o < L.nO; o++)
            for (size_t i = 0; i < L.nI; i++) {
                double d = x[(o * L.nG + g) * L.nI + i] - mu;
                q += d * d;
            }
        mean[g] = mu;
        var[g] = q / M;
        rstd[g] = 1 / sqrt(q / M + eps);
    }
}

/* y = gamma xhat + beta with xhat = (x - mean) rstd. */
static void norm_forward(const double *x, double *y, norm_layout L, const double *mean, const double *rstd,
                         const double *gamma, const double *beta)
{
    for (size_t o = 0; o < L.nO; o++)
        for (size_t g = 0; g < L.nG; g++)
            for (size_t i = 0; i < L.nI; i++) {
                size_t at = (o * L.nG + g) * L.nI + i, k = AFF(L, g, i);
                y[at] = gamma[k] * (x[at] - mean[g]) * rstd[g] + beta[k];
            }
}

/* Backward of the batch-statistics normalisation:
 *   dx += alpha rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  dxhat = gamma dy;
 *   dgamma += alpha sum dy xhat, dbeta += alpha sum dy (when dparams). */
static void norm_backward(const double *x, const double *dy, norm_layout L, const double *mean, const double *rstd,
                          const double *gamma, double alpha, double *dx, double *dparams, size_t naff)
{
    const double M = (double)(L.nO * L.nI);
    for (size_t g = 0; g < L.nG; g++) {
        double a = 0, b = 0; /* sums of dxhat and dxhat * xhat over the group */
        for (size_t o = 0; o < L.nO; o++)
            for (size_t i = 0; i < L.nI; i++) {
                size_t at = (o * L.nG + g) * L.nI + i;
                double xh = (x[at] - mean[g]) * rstd[g], dxh = dy[at] * gamma[AFF(L, g, i)];
                a += dxh, b += dxh * xh;
                if (dparams) {
                    dparams[AFF(L, g, i)] += alpha * dy[at] * xh;
                    dparams[naff + AFF(L, g, i)] += alpha * dy[at];
                }
            }
        if (dx == NULL) continue;
        for (size_t o = 0; o < L.nO; o++)
            for (size_t i = 0; i < L.nI; i++) {
                size_t at = (o * L.nG + g) * L.nI + i;
                double xh = (x[at] - mean[g]) * rstd[g], dxh = dy[at] * gamma[AFF(L, g, i)];
                dx[at] += alpha * rstd[g] * (dxh - a / M - xh * b / M);
            }
    }
}

typedef struct norm_state {
    bool batch;          /* batch norm (per channel) or layer norm (per sample) */
    size_t size;         /* channels (batch norm) or values per sample (layer norm) */
    double eps, momentum;
    rb_bn_mode mode;     /* batch norm only */
    double *running;     /* batch norm: mean [C] then var [C] */
} norm_state;

static norm_layout layout_of(const norm_state *s, rb_shape in)
{
    size_t S = in.d * in.h * in.w;
    if (s->batch) return (norm_layout){in.n, in.c, S, true};
    return (norm_layout){1, in.n, in.c * S, false};
}

static rb_status norm_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const norm_state *s = op->state;
    char buf[64];
    if (s->batch && in.c != s->size)
        return rb_fail(ctx, RB_ESHAPE, "batch norm (%zu channels): input %s has %zu channels", s->size,
                       rb_shape_format(in, buf, sizeof buf), in.c);
    if (!s->batch && per_sample(in) != s->size)
        return rb_fail(ctx, RB_ESHAPE, "layer norm (%zu values): input %s has %zu values per sample", s->size,
                       rb_shape_format(in, buf, sizeof buf), per_sample(in));
    *out = in;
    return RB_OK;
}

static size_t norm_workspace(const rb_op *op, rb_shape in)
{
    norm_layout L = layout_of(op->state, in);
    return 3 * rb_arena_bytes(L.nG * sizeof(double));
}

/* Batch statistics (or, in evaluation mode, the running ones) into arena memory. */
static rb_status norm_prepare(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_arena *work, norm_layout *L,
                              double **mean, double **rstd)
{
    const norm_state *s = op->state;
    *L = layout_of(s, x->shape);
    if (s->batch && s->mode != RB_BN_EVAL && L->nO * L->nI < 2) {
        char buf[64];
        return rb_fail(ctx, RB_ESHAPE, "batch norm in training mode: input %s has 1 value per channel; batch statistics need 2",
                       rb_shape_format(x->shape, buf, sizeof buf));
    }
    double *m = rb_arena_alloc(ctx, work, L->nG * sizeof(double));
    double *v = rb_arena_alloc(ctx, work, L->nG * sizeof(double));
    double *r = rb_arena_alloc(ctx, work, L->nG * sizeof(double));
    if (m == NULL || v == NULL || r == NULL)
        return rb_fail(ctx, RB_ENOMEM, "%s: work arena too small (rb_op_workspace)", op->type->name);
    if (s->batch && s->mode == RB_BN_EVAL) {
        for (size_t g = 0; g < L->nG; g++) m[g] = s->running[g], r[g] = 1 / sqrt(s->running[s->size + g] + s->eps);
    } else {
        norm_stats(x->data, *L, s->eps, m, v, r);
        if (s->batch && s->mode == RB_BN_TRAIN_TRACK) {
            double M = (double)(L->nO * L->nI), mo = s->momentum;
            for (size_t g = 0; g < L->nG; g++) {
                s->running[g] = (1 - mo) * s->running[g] + mo * m[g];
                s->running[s->size + g] = (1 - mo) * s->running[s->size + g] + mo * v[g] * M / (M - 1);
            }
        }
    }
    *mean = m, *rstd = r;
    return RB_OK;
}

static rb_status norm_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const norm_state *s = op->state;
    size_t mark = rb_arena_mark(work);
    norm_layout L;
    double *mean, *rstd;
    rb_status st = norm_prepare(ctx, op, x, work, &L, &mean, &rstd);
    if (st == RB_OK) norm_forward(x->data, y->data, L, mean, rstd, op->params, op->params + s->size);
    rb_arena_reset(work, mark);
    return st;
}

/* Shared by vjp (dparams NULL) and param_grad (dx NULL). */
static rb_status norm_back(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, double *dparams, rb_arena *work)
{
    const norm_state *s = op->state;
    rb_bn_mode keep = s->mode;
    if (keep == RB_BN_TRAIN_TRACK) ((norm_state *)s)->mode = RB_BN_TRAIN; /* backward never moves the statistics */
    size_t mark = rb_arena_mark(work);
    norm_layout L;
    double *mean, *rstd;
    rb_status st = norm_prepare(ctx, op, x, work, &L, &mean, &rstd);
    ((norm_state *)s)->mode = keep;
    if (st == RB_OK && s->batch && s->mode == RB_BN_EVAL) {
        /* inference: y = gamma (x - m) r + beta is affine in x */
        for (size_t o = 0; o < L.nO; o++)
            for (size_t g = 0; g < L.nG; g++)
                for (size_t i = 0; i < L.nI; i++) {
                    size_t at = (o * L.nG + g) * L.nI + i;
                    if (dx) dx->data[at] += alpha * dy->data[at] * op->params[g] * rstd[g];
                    if (dparams) {
                        dparams[g] += alpha * dy->data[at] * (x->data[at] - mean[g]) * rstd[g];
                        dparams[s->size + g] += alpha * dy->data[at];
                    }
                }
    } else if (st == RB_OK) {
        norm_backward(x->data, dy->data, L, mean, rstd, op->params, alpha, dx ? dx->data : NULL, dparams, s->size);
    }
    rb_arena_reset(work, mark);
    return st;
}

static rb_status norm_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                          rb_tensor *dx, rb_arena *work)
{
    return norm_back(ctx, op, x, dy, alpha, dx, NULL, work);
}

static rb_status norm_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                 double alpha, double *dparams, rb_arena *work)
{
    return norm_back(ctx, op, x, dy, alpha, NULL, dparams, work);
}

static void norm_destroy(rb_context *ctx, rb_op *op)
{
    norm_state *s = op->state;
    rb_free(ctx, s->running);
    rb_free(ctx, s);
}

static const rb_op_type batchnorm_type = {.name = "batch norm", .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,
                                          .shape = norm_shape, .workspace = norm_workspace, .apply = norm_apply,
                                          .vjp = norm_vjp, .param_grad = norm_param_grad, .destroy = norm_destroy};
static const rb_op_type layernorm_type = {.name = "layer norm", .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,
                                          .shape = norm_shape, .workspace = norm_workspace, .apply = norm_apply,
                                          .vjp = norm_vjp, .param_grad = norm_param_grad, .destroy = norm_destroy};

static rb_status norm_create(rb_context *ctx, const char *fn, const rb_op_type *type, size_t size, double eps,
                             double momentum, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (size == 0 || size > ((size_t)1 << 30)) return rb_fail(ctx, RB_EINVAL, "%s: size = %zu, must be 1..2^30", fn, size);
    if (!(eps > 0) || !isfinite(eps)) return rb_fail(ctx, RB_EINVAL, "%s: eps = %g, must be finite and > 0", fn, eps);
    if (!(momentum >= 0 && momentum <= 1)) return rb_fail(ctx, RB_EINVAL, "%s: momentum = %g, must be in [0, 1]", fn, momentum);
    bool batch = type == &batchnorm_type;
    norm_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    *s = (norm_state){.batch = batch, .size = size, .eps = eps, .momentum = momentum, .mode = RB_BN_TRAIN};
    if (batch && (s->running = rb_calloc(ctx, 2 * size, sizeof(double))) == NULL) {
        rb_free(ctx, s);
        return RB_ENOMEM;
    }
    for (size_t g = 0; batch && g < size; g++) s->running[size + g] = 1.0;
    rb_op *op;
    rb_status st = rb_op_new(ctx, type, s, 2 * size, &op);
    if (st != RB_OK) {
        rb_free(ctx, s->running);
        rb_free(ctx, s);
        return st;
    }
    for (size_t k = 0; k < size; k++) op->params[k] = 1.0; /* gamma = 1, beta = 0 */
    *out = op;
    return RB_OK;
}

rb_status rb_op_batchnorm_create(rb_context *ctx, size_t channels, double eps, double momentum, rb_op **out)
{
    return norm_create(ctx, "rb_op_batchnorm_create", &batchnorm_type, channels, eps, momentum, out);
}

rb_status rb_op_layernorm_create(rb_context *ctx, size_t size, double eps, rb_op **out)
{
    return norm_create(ctx, "rb_op_layernorm_create", &layernorm_type, size, eps, 0.0, out);
}

int rb_op_is_batchnorm(const rb_op *op) { return op != NULL && op->type == &batchnorm_type; }

rb_status rb_op_batchnorm_set_mode(rb_context *ctx, rb_op *bn, rb_bn_mode mode)
{
    if (ctx == NULL) return RB_ENULL;
    if (!rb_op_is_batchnorm(bn)) return rb_fail(ctx, RB_EINVAL, "rb_op_batchnorm_set_mode: op is not a batch-norm op");
    if ((unsigned)mode >= RB_BN_MODE_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_op_batchnorm_set_mode: mode = %d", (int)mode);
    ((norm_state *)bn->state)->mode = mode;
    return RB_OK;
}

double *rb_op_batchnorm_running_mean(rb_op *bn)
{
    return rb_op_is_batchnorm(bn) ? ((norm_state *)bn->state)->running : NULL;
}

double *rb_op_batchnorm_running_var(rb_op *bn)
{
    return rb_op_is_batchnorm(bn) ? ((norm_state *)bn->state)->running + ((norm_state *)bn->state)->size : NULL;
}
