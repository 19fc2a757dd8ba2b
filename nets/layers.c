/* layers.c — dense, flatten, global average pooling, batch and layer
 * normalisation as rb_ops (see layers.h). */
#include "resbridge/layers.h"
#include "op_internal.h"

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
 * norm: nO = 1, nG = N, nI = the sample size, affine per i.
 *
 * Every pass takes one group at a time (nO contiguous runs of nI values), so that a group
 * stays in cache from one pass over it to the next: the forward pass reads a group for its
 * mean, again for its variance and again to normalise it; the backward pass reads it for
 * two sums, then again for dx. Groups go to OpenMP threads; a group's sums are always taken
 * in the same order, so results do not depend on the thread count. The taped forward keeps
 * each group's mean and 1/std: the backward pass computes dx and the parameter gradient
 * together from them, nothing recomputed. */

typedef struct norm_layout {
    size_t nO, nG, nI;
    bool affine_per_group;
    bool relu; /* batch norm + ReLU: y = max(0, gamma xhat + beta) */
} norm_layout;

/* Threads for a pass over all groups: one below 32k values; one when the groups would add
 * into the same parameter gradients (affine per i). */
static int norm_threads(rb_context *ctx, norm_layout L, bool shared_grad)
{
    int t = rb_context_threads(ctx);
    if (L.nO * L.nG * L.nI < 32768 || shared_grad) return 1;
    return (size_t)t > L.nG ? (int)L.nG : t;
}

static const double *run_of(const double *p, norm_layout L, size_t o, size_t g) { return p + (o * L.nG + g) * L.nI; }

/* Sums over a run of n values, each taken as four interleaved partial sums over the run's
 * quarters (independent vector chains: one chain would wait on the adder's latency), added
 * up in a fixed order:
 *   *s += sum (r - c)^q for q = 1 (c = 0 then) or 2;
 *   *a += sum e, *b += sum e (r - c) (run_dsums: e = w d, or d masked by the fused ReLU, or d). */
static void run_moment(const double *r, double c, int q, size_t n, double *s)
{
    const size_t m = n / 4;
    const double *r1 = r + m, *r2 = r + 2 * m, *r3 = r + 3 * m;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    if (q == 1) {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (size_t i = 0; i < m; i++) s0 += r[i], s1 += r1[i], s2 += r2[i], s3 += r3[i];
    } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (size_t i = 0; i < m; i++)
            s0 += (r[i] - c) * (r[i] - c), s1 += (r1[i] - c) * (r1[i] - c), s2 += (r2[i] - c) * (r2[i] - c),
                s3 += (r3[i] - c) * (r3[i] - c);
    }
    double t = (s0 + s1) + (s2 + s3);
    for (size_t i = 4 * m; i < n; i++) t += q == 1 ? r[i] : (r[i] - c) * (r[i] - c);
    *s += t;
}

/* With the ReLU fused (batch norm + ReLU), dy counts only where the ReLU passed its input,
 * sc (r - c) + sh > 0: the forward pass's expression (the same value, bit for bit: no
 * contraction in ISO C), so the mask is recomputed rather than stored. */
static inline double relu_pass(double d, double r, double c, double sc, double sh)
{
    return (r - c) * sc + sh > 0.0 ? d : 0.0;
}

/* e = w d (w given), d where the fused ReLU passed (relu), or d: one vector loop per kind
 * (DSUMS, with the term T(i)), the same sums in the same order. */
static void run_dsums(const double *d, const double *r, const double *w, bool relu, double c, double sc, double sh,
                      size_t n, double *a, double *b)
{
    const size_t m = n / 4;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0, sa, sb;
#define T_W(i) (w[i] * d[i])
#define T_RELU(i) relu_pass(d[i], r[i], c, sc, sh)
#define T_D(i) (d[i])
#define DSUMS(T)                                                                                             \
    do {                                                                                                     \
        _Pragma("omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)") for (size_t i = 0; i < m; i++) {   \
            const double e0 = T(i), e1 = T(m + i), e2 = T(2 * m + i), e3 = T(3 * m + i);                     \
            a0 += e0, b0 += e0 * (r[i] - c);                                                                 \
            a1 += e1, b1 += e1 * (r[m + i] - c);                                                             \
            a2 += e2, b2 += e2 * (r[2 * m + i] - c);                                                         \
            a3 += e3, b3 += e3 * (r[3 * m + i] - c);                                                         \
        }                                                                                                    \
        sa = (a0 + a1) + (a2 + a3), sb = (b0 + b1) + (b2 + b3);                                              \
        for (size_t i = 4 * m; i < n; i++) {                                                                 \
            const double e = T(i);                                                                           \
            sa += e, sb += e * (r[i] - c);                                                                   \
        }                                                                                                    \
    } while (0)
    if (w != NULL) DSUMS(T_W);
    else if (relu) DSUMS(T_RELU);
    else DSUMS(T_D);
#undef DSUMS
#undef T_W
#undef T_RELU
#undef T_D
    *a += sa, *b += sb;
}

/* Mean and biased variance (two passes) of group g. */
static void group_stats(const double *x, norm_layout L, size_t g, double *mean, double *var)
{
    const double M = (double)(L.nO * L.nI);
    double s = 0, q = 0;
    for (size_t o = 0; o < L.nO; o++) run_moment(run_of(x, L, o, g), 0.0, 1, L.nI, &s);
    const double mu = s / M;
    for (size_t o = 0; o < L.nO; o++) run_moment(run_of(x, L, o, g), mu, 2, L.nI, &q);
    *mean = mu, *var = q / M;
}

/* Group g of y = gamma xhat + beta, xhat = (x - mean) rstd. */
static void group_forward(const double *x, double *y, norm_layout L, size_t g, double mean, double rstd,
                          const double *gamma, const double *beta)
{
    for (size_t o = 0; o < L.nO; o++) {
        const double *r = run_of(x, L, o, g);
        double *out = y + (o * L.nG + g) * L.nI;
        if (L.affine_per_group && L.relu) {
            const double sc = gamma[g] * rstd, b = beta[g];
#pragma omp simd
            for (size_t i = 0; i < L.nI; i++) {
                const double v = (r[i] - mean) * sc + b;
                out[i] = v > 0.0 ? v : 0.0;
            }
        } else if (L.affine_per_group) {
            const double sc = gamma[g] * rstd, b = beta[g];
#pragma omp simd
            for (size_t i = 0; i < L.nI; i++) out[i] = (r[i] - mean) * sc + b;
        } else {
#pragma omp simd
            for (size_t i = 0; i < L.nI; i++) out[i] = (r[i] - mean) * rstd * gamma[i] + beta[i];
        }
    }
}

/* Group g of the backward pass. With batch statistics (dxhat = gamma dy):
 *   dx += alpha rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat));
 * with fixed (running) statistics the map is affine: dx += alpha rstd dxhat. Parameters
 * (when dgamma): dgamma += alpha sum dy xhat, dbeta += alpha sum dy. With the ReLU fused
 * (L.relu), dy counts only where the ReLU passed (relu_pass), everywhere above. assign: dx is
 * overwritten (dx = ...) instead. */
static void group_backward(const double *x, const double *dy, norm_layout L, size_t g, double mean, double rstd,
                           bool batch_stats, const double *gamma, const double *beta, double alpha, double *dx,
                           double *dgamma, double *dbeta, bool assign)
{
    const double M = (double)(L.nO * L.nI);
    const double sc = L.relu ? gamma[g] * rstd : 0.0, sh = L.relu ? beta[g] : 0.0; /* the forward's affine map */
    double a = 0, b = 0; /* sums of dxhat and dxhat (x - mean) over the group */
    for (size_t o = 0; o < L.nO; o++) {
        const double *r = run_of(x, L, o, g), *d = run_of(dy, L, o, g);
        run_dsums(d, r, L.affine_per_group ? NULL : gamma, L.relu, mean, sc, sh, L.nI, &a, &b);
        if (!L.affine_per_group) {
            if (dgamma) {
#pragma omp simd
                for (size_t i = 0; i < L.nI; i++) {
                    dgamma[i] += alpha * d[i] * (r[i] - mean) * rstd;
                    dbeta[i] += alpha * d[i];
                }
            }
        }
    }
    if (L.affine_per_group) {
        if (dgamma) dgamma[g] += alpha * rstd * b, dbeta[g] += alpha * a;
        a *= gamma[g], b *= gamma[g];
    }
    if (dx == NULL) return;
    const double c0 = a / M, c1 = rstd * rstd * b / M, k = alpha * rstd, kg = L.affine_per_group ? k * gamma[g] : 0.0;
/* out[i] (=|+=) EXPR over the run, a vector loop either way */
#define NORM_DX(EXPR)                                                                                        \
    do {                                                                                                     \
        if (assign) {                                                                                        \
            _Pragma("omp simd") for (size_t i = 0; i < L.nI; i++) out[i] = (EXPR);                           \
        } else {                                                                                             \
            _Pragma("omp simd") for (size_t i = 0; i < L.nI; i++) out[i] += (EXPR);                          \
        }                                                                                                    \
    } while (0)
    for (size_t o = 0; o < L.nO; o++) {
        const double *r = run_of(x, L, o, g), *d = run_of(dy, L, o, g);
        double *out = dx + (o * L.nG + g) * L.nI;
        if (L.relu && !batch_stats) NORM_DX(kg * relu_pass(d[i], r[i], mean, sc, sh));
        else if (L.relu) NORM_DX(kg * relu_pass(d[i], r[i], mean, sc, sh) - k * (c0 + (r[i] - mean) * c1));
        else if (L.affine_per_group && !batch_stats) NORM_DX(kg * d[i]);
        else if (L.affine_per_group) NORM_DX(kg * d[i] - k * (c0 + (r[i] - mean) * c1));
        else NORM_DX(k * (d[i] * gamma[i] - c0 - (r[i] - mean) * c1));
    }
#undef NORM_DX
}

typedef struct norm_state {
    bool batch;          /* batch norm (per channel) or layer norm (per sample) */
    bool relu;           /* batch norm only: followed by a ReLU, fused */
    size_t size;         /* channels (batch norm) or values per sample (layer norm) */
    double eps, momentum;
    rb_bn_mode mode;     /* batch norm only */
    double *running;     /* batch norm: mean [C] then var [C] */
} norm_state;

static norm_layout layout_of(const norm_state *s, rb_shape in)
{
    size_t S = in.d * in.h * in.w;
    if (s->batch) return (norm_layout){in.n, in.c, S, true, s->relu};
    return (norm_layout){1, in.n, in.c * S, false, false};
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

/* The tape: mean [nG], rstd = 1/sqrt(var + eps) [nG], var [nG] (batch statistics), then 1 if
 * they are batch statistics, 0 if the running ones (evaluation mode). */
typedef struct norm_tape {
    double *mean, *rstd, *var, *batch_stats;
} norm_tape;

static size_t norm_tape_bytes(const rb_op *op, rb_shape in)
{
    return (3 * layout_of(op->state, in).nG + 1) * sizeof(double);
}

static norm_tape tape_of(const void *tape, norm_layout L)
{
    double *t = (double *)tape;
    return (norm_tape){t, t + L.nG, t + 2 * L.nG, t + 3 * L.nG};
}

static size_t norm_workspace(const rb_op *op, rb_shape in) { return rb_arena_bytes(norm_tape_bytes(op, in)); }

/* The statistics of x into the tape (batch statistics, or in evaluation mode the running
 * ones) and, when y is given, y = F(x), group by group. track: a tracking mode moves the
 * running statistics. */
static rb_status norm_run(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape, bool track)
{
    const norm_state *s = op->state;
    const norm_layout L = layout_of(s, x->shape);
    const bool batch_stats = !(s->batch && s->mode == RB_BN_EVAL);
    if (batch_stats && s->batch && L.nO * L.nI < 2) {
        char buf[64];
        return rb_fail(ctx, RB_ESHAPE, "batch norm in training mode: input %s has 1 value per channel; batch statistics need 2",
                       rb_shape_format(x->shape, buf, sizeof buf));
    }
    const norm_tape t = tape_of(tape, L);
    const double *gamma = op->params, *beta = op->params + s->size;
    *t.batch_stats = batch_stats ? 1.0 : 0.0;
    const int T = norm_threads(ctx, L, false);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
    for (size_t g = 0; g < L.nG; g++) {
        if (batch_stats) {
            group_stats(x->data, L, g, &t.mean[g], &t.var[g]);
            t.rstd[g] = 1 / sqrt(t.var[g] + s->eps);
        } else {
            t.mean[g] = s->running[g], t.var[g] = s->running[s->size + g];
            t.rstd[g] = 1 / sqrt(t.var[g] + s->eps);
        }
        if (y) group_forward(x->data, y->data, L, g, t.mean[g], t.rstd[g], gamma, beta);
    }
    if (track && s->batch && s->mode == RB_BN_TRAIN_TRACK) {
        const double M = (double)(L.nO * L.nI), mo = s->momentum;
        for (size_t g = 0; g < L.nG; g++) {
            s->running[g] = (1 - mo) * s->running[g] + mo * t.mean[g];
            s->running[s->size + g] = (1 - mo) * s->running[s->size + g] + mo * t.var[g] * M / (M - 1);
        }
    }
    return RB_OK;
}

static rb_status norm_forward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                    rb_arena *work)
{
    (void)work;
    return norm_run(ctx, op, x, y, tape, true);
}

static rb_status norm_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                               const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                               rb_arena *work, bool assign)
{
    (void)y, (void)work;
    const norm_state *s = op->state;
    const norm_layout L = layout_of(s, x->shape);
    const norm_tape t = tape_of(tape, L);
    const bool batch_stats = *t.batch_stats != 0.0;
    double *dgamma = dparams, *dbeta = dparams ? dparams + s->size : NULL, *dxd = dx ? dx->data : NULL;
    const int T = norm_threads(ctx, L, dparams != NULL && !L.affine_per_group);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
    for (size_t g = 0; g < L.nG; g++)
        group_backward(x->data, dy->data, L, g, t.mean[g], t.rstd[g], batch_stats, op->params, op->params + s->size,
                       alpha, dxd, dgamma, dbeta, assign);
    return RB_OK;
}

RB_BACKWARD_PAIR(norm, norm_backward)

/* apply: the taped forward with its tape in the work arena (so the two agree bit for bit). */
static rb_status norm_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    size_t mark = rb_arena_mark(work);
    void *tape = rb_arena_alloc(ctx, work, norm_tape_bytes(op, x->shape));
    rb_status st = tape ? norm_run(ctx, op, x, y, tape, true)
                        : rb_fail(ctx, RB_ENOMEM, "%s: work arena too small (rb_op_workspace)", op->type->name);
    rb_arena_reset(work, mark);
    return st;
}

/* vjp and param_grad: the statistics again (never moving the running ones), then the backward pass. */
static rb_status norm_back(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                           rb_tensor *dx, double *dparams, rb_arena *work)
{
    size_t mark = rb_arena_mark(work);
    void *tape = rb_arena_alloc(ctx, work, norm_tape_bytes(op, x->shape));
    rb_status st = tape ? norm_run(ctx, op, x, NULL, tape, false)
                        : rb_fail(ctx, RB_ENOMEM, "%s: work arena too small (rb_op_workspace)", op->type->name);
    if (st == RB_OK) st = norm_backward_taped(ctx, op, x, NULL, tape, dy, alpha, dx, dparams, work);
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

#define NORM_TYPE(ident, label)                                                                                 \
    static const rb_op_type ident = {.name = label, .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,              \
                                     .shape = norm_shape, .workspace = norm_workspace, .apply = norm_apply,    \
                                     .vjp = norm_vjp, .param_grad = norm_param_grad, .destroy = norm_destroy,  \
                                     .tape_bytes = norm_tape_bytes, .forward_taped = norm_forward_taped,       \
                                     .backward_taped = norm_backward_taped,                                    \
                                     .backward_overwrite = norm_backward_overwrite}
NORM_TYPE(batchnorm_type, "batch norm");
NORM_TYPE(batchnorm_relu_type, "batch norm + relu");
NORM_TYPE(layernorm_type, "layer norm");
#undef NORM_TYPE

static rb_status norm_create(rb_context *ctx, const char *fn, const rb_op_type *type, size_t size, double eps,
                             double momentum, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (size == 0 || size > ((size_t)1 << 30)) return rb_fail(ctx, RB_EINVAL, "%s: size = %zu, must be 1..2^30", fn, size);
    if (!(eps > 0) || !isfinite(eps)) return rb_fail(ctx, RB_EINVAL, "%s: eps = %g, must be finite and > 0", fn, eps);
    if (!(momentum >= 0 && momentum <= 1)) return rb_fail(ctx, RB_EINVAL, "%s: momentum = %g, must be in [0, 1]", fn, momentum);
    bool batch = type != &layernorm_type;
    norm_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    *s = (norm_state){.batch = batch, .relu = type == &batchnorm_relu_type, .size = size, .eps = eps,
                      .momentum = momentum, .mode = RB_BN_TRAIN};
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

rb_status rb_op_batchnorm_relu_create(rb_context *ctx, size_t channels, double eps, double momentum, rb_op **out)
{
    return norm_create(ctx, "rb_op_batchnorm_relu_create", &batchnorm_relu_type, channels, eps, momentum, out);
}

rb_status rb_op_layernorm_create(rb_context *ctx, size_t size, double eps, rb_op **out)
{
    return norm_create(ctx, "rb_op_layernorm_create", &layernorm_type, size, eps, 0.0, out);
}

int rb_op_is_batchnorm(const rb_op *op)
{
    return op != NULL && (op->type == &batchnorm_type || op->type == &batchnorm_relu_type);
}

rb_bn_mode rb_op_batchnorm_mode(const rb_op *bn)
{
    return rb_op_is_batchnorm(bn) ? ((const norm_state *)bn->state)->mode : RB_BN_MODE_COUNT;
}

static const char *const norm_kind_names[] = {"none", "batch", "batch-all"};
_Static_assert(sizeof norm_kind_names / sizeof *norm_kind_names == RB_NORM_KIND_COUNT, "one name per normalisation");

const char *rb_norm_kind_name(rb_norm_kind kind) { return (unsigned)kind < RB_NORM_KIND_COUNT ? norm_kind_names[kind] : "unknown"; }

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
