/* activation.c — identity, ReLU, tanh, GELU as elementwise rb_ops. */
#include "resbridge/activation.h"
#include "op_internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* glibc >= 2.35 ships AVX2/AVX-512 versions of tanh in libmvec (<= 4 ulp); declaring
 * tanh a SIMD function lets GCC vectorise the tanh loops below with them (3-4x faster
 * than scalar calls). glibc's own declaration does this only under -ffast-math. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
__attribute__((simd("notinbranch"))) double tanh(double);
#endif

#define RB_ACT_NAME_(e, name) name,
static const char *const act_names[] = {RB_ACTIVATION_LIST(RB_ACT_NAME_)};
#undef RB_ACT_NAME_
_Static_assert(sizeof act_names / sizeof *act_names == RB_ACT_COUNT, "one name per activation");

const char *rb_activation_name(rb_activation act)
{
    return (unsigned)act < RB_ACT_COUNT ? act_names[act] : "unknown";
}

rb_status rb_activation_parse(rb_context *ctx, const char *name, rb_activation *act)
{
    if (name == NULL || act == NULL) return rb_fail(ctx, RB_ENULL, "rb_activation_parse: %s is NULL", name ? "act" : "name");
    for (int i = 0; i < RB_ACT_COUNT; i++)
        if (strcmp(name, act_names[i]) == 0) {
            *act = (rb_activation)i;
            return RB_OK;
        }
    return rb_fail(ctx, RB_EINVAL, "unknown activation '%s' (identity, relu, tanh, gelu, sigmoid)", name);
}

static const double inv_sqrt2 = 0.70710678118654752440;
static const double inv_sqrt2pi = 0.39894228040143267794;

static double act_f(rb_activation a, double x)
{
    switch (a) {
    case RB_ACT_RELU: return x > 0.0 ? x : 0.0;
    case RB_ACT_TANH: return tanh(x);
    case RB_ACT_GELU: return 0.5 * x * (1.0 + erf(x * inv_sqrt2));
    case RB_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    default: return x;
    }
}

/* dF/dx; ReLU's derivative at 0 is taken as 0 (as PyTorch). */
static double act_df(rb_activation a, double x)
{
    switch (a) {
    case RB_ACT_RELU: return x > 0.0 ? 1.0 : 0.0;
    case RB_ACT_TANH: {
        double t = tanh(x);
        return 1.0 - t * t;
    }
    case RB_ACT_GELU: return 0.5 * (1.0 + erf(x * inv_sqrt2)) + x * inv_sqrt2pi * exp(-0.5 * x * x);
    case RB_ACT_SIGMOID: {
        double s = 1.0 / (1.0 + exp(-x));
        return s * (1.0 - s);
    }
    default: return 1.0;
    }
}

static rb_activation kind(const rb_op *op) { return (rb_activation)(size_t)op->state; }

/* ReLU and identity get their own vector loops; the others call libm per value. */
void rb_act_apply_range(rb_activation a, const double *restrict x, double *restrict y, size_t n)
{
    if (a == RB_ACT_RELU) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0 ? x[i] : 0.0;
    } else if (a == RB_ACT_IDENTITY) {
        memcpy(y, x, n * sizeof *y);
    } else if (a == RB_ACT_TANH) { /* a loop of its own, so that it vectorises (libmvec, above) */
        for (size_t i = 0; i < n; i++) y[i] = tanh(x[i]);
    } else {
        for (size_t i = 0; i < n; i++) y[i] = act_f(a, x[i]);
    }
}

/* The loops of dx (=|+=) alpha F'(x) dy, one per kind; OP is = or +=. */
#define ACT_VJP_LOOPS(OP)                                                                                      \
    do {                                                                                                       \
        if (a == RB_ACT_RELU) { /* F'(x) (alpha dy) as a product: GCC vectorises this form, not a select */    \
            for (size_t i = 0; i < n; i++) dx[i] OP(x[i] > 0.0 ? 1.0 : 0.0) * (alpha * dy[i]);                   \
        } else if (a == RB_ACT_IDENTITY) {                                                                     \
            _Pragma("omp simd") for (size_t i = 0; i < n; i++) dx[i] OP alpha * dy[i];                          \
        } else if (a == RB_ACT_TANH) {                                                                         \
            for (size_t i = 0; i < n; i++) {                                                                   \
                double t = tanh(x[i]);                                                                         \
                dx[i] OP alpha * (1.0 - t * t) * dy[i];                                                        \
            }                                                                                                  \
        } else {                                                                                               \
            for (size_t i = 0; i < n; i++) dx[i] OP alpha * act_df(a, x[i]) * dy[i];                           \
        }                                                                                                      \
    } while (0)

void rb_act_vjp_range(rb_activation a, const double *restrict x, const double *restrict dy, double alpha,
                      double *restrict dx, size_t n, bool assign)
{
    if (assign) ACT_VJP_LOOPS(=);
    else ACT_VJP_LOOPS(+=);
}
#undef ACT_VJP_LOOPS

/* y = F(x) (dy NULL), or dx (=|+=) alpha F'(x) dy, in equal chunks over the threads. */
static void act_run(rb_context *ctx, rb_activation a, const double *x, const double *dy, double alpha, double *out,
                    size_t n, bool assign)
{
    const int T = rb_parallel_threads(ctx, n);
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
        if (dy) rb_act_vjp_range(a, x + lo, dy + lo, alpha, out + lo, hi - lo, assign);
        else rb_act_apply_range(a, x + lo, out + lo, hi - lo);
    }
}

static rb_status act_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    act_run(ctx, kind(op), x->data, NULL, 1.0, y->data, rb_tensor_count(x), false);
    return RB_OK;
}

static rb_status act_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                         rb_tensor *dx, rb_arena *work)
{
    (void)work;
    act_run(ctx, kind(op), x->data, dy->data, alpha, dx->data, rb_tensor_count(x), false);
    return RB_OK;
}

static rb_status act_backward_overwrite(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                        const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx,
                                        double *dparams, rb_arena *work)
{
    (void)y, (void)tape, (void)dparams, (void)work;
    act_run(ctx, kind(op), x->data, dy->data, alpha, dx->data, rb_tensor_count(x), true);
    return RB_OK;
}

#define ACT_TYPE(ident, label, fl) \
    static const rb_op_type ident = { \
        .name = label, .flags = RB_OP_SAME_SHAPE | (fl), .apply = act_apply, .vjp = act_vjp, \
        .backward_overwrite = act_backward_overwrite}
ACT_TYPE(type_identity, "identity", RB_OP_LINEAR);
ACT_TYPE(type_relu, "relu", 0);
ACT_TYPE(type_tanh, "tanh", 0);
ACT_TYPE(type_gelu, "gelu", 0);
ACT_TYPE(type_sigmoid, "sigmoid", 0);
#undef ACT_TYPE

static const rb_op_type *const act_types[] = {&type_identity, &type_relu, &type_tanh, &type_gelu, &type_sigmoid};
_Static_assert(sizeof act_types / sizeof *act_types == RB_ACT_COUNT, "one type per activation");

rb_status rb_op_activation_create(rb_context *ctx, rb_activation act, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_activation_create: out is NULL");
    if ((unsigned)act >= RB_ACT_COUNT)
        return rb_fail(ctx, RB_EINVAL, "rb_op_activation_create: act = %d is not an rb_activation", (int)act);
    return rb_op_new(ctx, act_types[act], (void *)(size_t)act, 0, out);
}
