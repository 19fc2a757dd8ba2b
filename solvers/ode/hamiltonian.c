/* hamiltonian.c — the Hamiltonian pair of Haber & Ruthotto ("Stable
 * architectures for deep neural networks", Inverse Problems 34 (2017) 014004,
 * the Hamiltonian-inspired network):
 *     y' = sigma(K z + b),      z' = -sigma(K^T y + b),
 * the state (y, z) stacked in the last dimension (see ode.h), and its
 * restrictions to one half, the ops leapfrog takes its residual steps with.
 *
 * One kernel serves the pair and its parts: the pre-activations
 * a = K z + b (y half) and c = K^T y + b (z half) of the halves asked for go
 * into scratch, the activation op maps them, the z half is negated. The vjp
 * goes back through the activation's vjp (du = sigma'(pre) (dy_y, -dy_z)) and
 * then through K: dz += K^T du_y, dy += K du_z. */
#include "resbridge/ode.h"

#include <math.h>
#include <string.h>

#include "ode_private.h"

enum { PART_Y = 1, PART_Z = 2, PART_BOTH = 3 };

typedef struct ham_rhs {
    size_t m;                          /* half width: the state has 2m entries per row */
    size_t sets;                       /* weight sets (piecewise constant in t) */
    double set_width;                  /* time per set */
    rb_op *sigma;                      /* activation */
    rb_op *part[RB_ODE_PART_COUNT];    /* owned restrictions (P_Y F, P_Z F), parameters shared */
} ham_rhs;

typedef struct ham_part {
    const rb_op *parent;
    unsigned mask;                     /* PART_Y or PART_Z */
} ham_part;

static const rb_op_type type_ham, type_part;

/* The pair behind op (the full F or one of its parts) and the halves op computes. */
static const ham_rhs *pair_of(const rb_op *op, unsigned *mask)
{
    if (op->type == &type_ham) {
        *mask = PART_BOTH;
        return op->state;
    }
    const ham_part *p = op->state;
    *mask = p->mask;
    return p->parent->state;
}

/* K and b of the set active at op->t. */
static const double *weights(const rb_op *op, const ham_rhs *s)
{
    return op->params + rb_ode_set_index(op->t, s->sets, s->set_width) * (s->m * s->m + s->m);
}

static rb_status ham_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    unsigned mask;
    const ham_rhs *s = pair_of(op, &mask);
    if (in.w != 2 * s->m || in.c != 1 || in.d != 1 || in.h != 1) {
        char a[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: input %s; needs (N,1,1,1,%zu) (the pair (y, z), each of width %zu)",
                       op->type->name, rb_shape_format(in, a, sizeof a), 2 * s->m, s->m);
    }
    *out = in;
    return RB_OK;
}

static size_t ham_workspace(const rb_op *op, rb_shape in)
{
    unsigned mask;
    const ham_rhs *s = pair_of(op, &mask);
    return 3 * rb_arena_bytes(rb_shape_count(in) * sizeof(double)) + rb_op_workspace(s->sigma, in);
}

/* pre = (K z + b, K^T y + b) for the halves in mask, 0 elsewhere, row by row. */
static void pre_activation(const rb_op *op, const ham_rhs *s, unsigned mask, const rb_tensor *x, double *pre)
{
    size_t m = s->m, rows = rb_tensor_count(x) / (2 * m);
    const double *K = weights(op, s), *b = K + m * m;
    for (size_t r = 0; r < rows; r++) {
        const double *y = x->data + r * 2 * m, *z = y + m;
        double *a = pre + r * 2 * m, *c = a + m;
        for (size_t i = 0; i < m; i++) {
            double acc = b[i];
            if (mask & PART_Y)
                for (size_t j = 0; j < m; j++) acc += K[i * m + j] * z[j];
            a[i] = mask & PART_Y ? acc : 0.0;
        }
        for (size_t j = 0; j < m; j++) c[j] = mask & PART_Z ? b[j] : 0.0;
        if (mask & PART_Z)
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < m; j++) c[j] += K[i * m + j] * y[i];
    }
}

static rb_status scratch(rb_context *ctx, const rb_op *op, rb_arena *work, rb_shape shape, rb_tensor *t)
{
    if (work == NULL) return rb_fail(ctx, RB_ENULL, "%s: needs a work arena", op->type->name);
    rb_status st = rb_arena_tensor(ctx, work, t, shape);
    if (st == RB_OK && t->data == NULL) st = rb_fail(ctx, RB_EINVAL, "%s: work arena is in measuring mode", op->type->name);
    return st;
}

static rb_status ham_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    unsigned mask;
    const ham_rhs *s = pair_of(op, &mask);
    size_t m = s->m, rows = rb_tensor_count(x) / (2 * m), mark = work ? rb_arena_mark(work) : 0;
    rb_tensor pre;
    rb_status st = scratch(ctx, op, work, x->shape, &pre);
    if (st == RB_OK) {
        pre_activation(op, s, mask, x, pre.data);
        st = rb_op_apply(ctx, s->sigma, &pre, y, work);
    }
    if (st == RB_OK)
        for (size_t r = 0; r < rows; r++) {
            double *vy = y->data + r * 2 * m, *vz = vy + m;
            for (size_t i = 0; i < m; i++) {
                if (!(mask & PART_Y)) vy[i] = 0.0;
                vz[i] = mask & PART_Z ? -vz[i] : 0.0;
            }
        }
    if (work) rb_arena_reset(work, mark);
    return st;
}

/* du = alpha sigma'(pre) (dy_y, -dy_z), the halves outside mask 0, into arena scratch. */
static rb_status back_through_sigma(rb_context *ctx, const rb_op *op, const ham_rhs *s, unsigned mask,
                                    const rb_tensor *x, const rb_tensor *dy, double alpha, rb_tensor *du,
                                    rb_arena *work)
{
    size_t m = s->m, count = rb_tensor_count(x);
    rb_tensor pre, dys;
    rb_status st = scratch(ctx, op, work, x->shape, &pre);
    if (st == RB_OK) st = scratch(ctx, op, work, x->shape, &dys);
    if (st == RB_OK) st = scratch(ctx, op, work, x->shape, du);
    if (st != RB_OK) return st;
    pre_activation(op, s, mask, x, pre.data);
    for (size_t k = 0; k < count; k++) {
        int in_z = k % (2 * m) >= m;
        dys.data[k] = !(mask & (in_z ? PART_Z : PART_Y)) ? 0.0 : in_z ? -dy->data[k] : dy->data[k];
    }
    memset(du->data, 0, count * sizeof(double));
    return rb_op_vjp(ctx, s->sigma, &pre, &dys, alpha, du, work);
}

static rb_status ham_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                         rb_tensor *dx, rb_arena *work)
{
    unsigned mask;
    const ham_rhs *s = pair_of(op, &mask);
    size_t m = s->m, rows = rb_tensor_count(x) / (2 * m), mark = work ? rb_arena_mark(work) : 0;
    const double *K = weights(op, s);
    rb_tensor du;
    rb_status st = back_through_sigma(ctx, op, s, mask, x, dy, alpha, &du, work);
    if (st == RB_OK)
        for (size_t r = 0; r < rows; r++) {
            const double *duy = du.data + r * 2 * m, *duz = duy + m;
            double *dxy = dx->data + r * 2 * m, *dxz = dxy + m;
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < m; j++) {
                    dxz[j] += K[i * m + j] * duy[i]; /* a = K z + b */
                    dxy[i] += K[i * m + j] * duz[j]; /* c = K^T y + b */
                }
        }
    if (work) rb_arena_reset(work, mark);
    return st;
}

static rb_status ham_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                double alpha, double *dparams, rb_arena *work)
{
    unsigned mask;
    const ham_rhs *s = pair_of(op, &mask);
    size_t m = s->m, rows = rb_tensor_count(x) / (2 * m), mark = work ? rb_arena_mark(work) : 0;
    double *dK = dparams + (size_t)(weights(op, s) - op->params), *db = dK + m * m;
    rb_tensor du;
    rb_status st = back_through_sigma(ctx, op, s, mask, x, dy, alpha, &du, work);
    if (st == RB_OK)
        for (size_t r = 0; r < rows; r++) {
            const double *y = x->data + r * 2 * m, *z = y + m, *duy = du.data + r * 2 * m, *duz = duy + m;
            for (size_t i = 0; i < m; i++) {
                db[i] += duy[i] + duz[i];
                for (size_t j = 0; j < m; j++) dK[i * m + j] += duy[i] * z[j] + y[i] * duz[j];
            }
        }
    if (work) rb_arena_reset(work, mark);
    return st;
}

static void ham_destroy(rb_context *ctx, rb_op *op)
{
    ham_rhs *s = op->state;
    if (s == NULL) return;
    for (int k = 0; k < RB_ODE_PART_COUNT; k++) rb_op_free(ctx, s->part[k]);
    rb_op_free(ctx, s->sigma);
    rb_free(ctx, s);
}

/* A part borrows the pair's parameters: hand them back before rb_op_free releases op->params. */
static void part_destroy(rb_context *ctx, rb_op *op)
{
    op->params = NULL;
    op->nparams = 0;
    rb_free(ctx, op->state);
}

#define HAM_TYPE(ident, label, destroy_fn)                                                                     \
    static const rb_op_type ident = {.name = label,                                                            \
                                     .flags = RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,                             \
                                     .shape = ham_shape,                                                       \
                                     .workspace = ham_workspace,                                               \
                                     .apply = ham_apply,                                                       \
                                     .vjp = ham_vjp,                                                           \
                                     .param_grad = ham_param_grad,                                             \
                                     .destroy = destroy_fn}
HAM_TYPE(type_ham, "ode_hamiltonian", ham_destroy);
HAM_TYPE(type_part, "ode_hamiltonian_part", part_destroy);
#undef HAM_TYPE

static rb_status part_create(rb_context *ctx, const rb_op *parent, unsigned mask, rb_op **out)
{
    ham_part *p = rb_calloc(ctx, 1, sizeof *p);
    if (p == NULL) return RB_ENOMEM;
    p->parent = parent, p->mask = mask;
    rb_op *op;
    rb_status st = rb_op_new(ctx, &type_part, p, 0, &op);
    if (st != RB_OK) {
        rb_free(ctx, p);
        return st;
    }
    op->params = parent->params, op->nparams = parent->nparams;
    *out = op;
    return RB_OK;
}

rb_status rb_op_ode_hamiltonian_create(rb_context *ctx, size_t m, rb_activation sigma, size_t sets, double set_width,
                                       const double *params, rb_op **out)
{
    const char *fn = "rb_op_ode_hamiltonian_create";
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    if (m == 0 || m > (1u << 14)) return rb_fail(ctx, RB_EINVAL, "%s: m = %zu must be in 1..16384", fn, m);
    if ((unsigned)sigma >= RB_ACT_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: sigma = %d is not an rb_activation", fn, (int)sigma);
    if (sets == 0 || sets > 1000000) return rb_fail(ctx, RB_EINVAL, "%s: sets = %zu must be in 1..1e6", fn, sets);
    if (sets > 1 && !(isfinite(set_width) && set_width > 0))
        return rb_fail(ctx, RB_EINVAL, "%s: set_width = %g must be finite and > 0", fn, set_width);
    ham_rhs *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->m = m, s->sets = sets, s->set_width = sets > 1 ? set_width : 1.0;
    rb_op *op = NULL;
    rb_status st = rb_op_activation_create(ctx, sigma, &s->sigma);
    if (st == RB_OK) st = rb_op_new(ctx, &type_ham, s, sets * (m * m + m), &op);
    if (st != RB_OK) {
        rb_op_free(ctx, s->sigma);
        rb_free(ctx, s);
        return st;
    }
    /* from here s belongs to op: rb_op_free(op) releases the parts made so far */
    st = part_create(ctx, op, PART_Y, &s->part[RB_ODE_PART_Y]);
    if (st == RB_OK) st = part_create(ctx, op, PART_Z, &s->part[RB_ODE_PART_Z]);
    if (st != RB_OK) {
        rb_op_free(ctx, op);
        return st;
    }
    if (params != NULL) memcpy(op->params, params, op->nparams * sizeof(double));
    *out = op;
    return RB_OK;
}

int rb_op_ode_is_partitioned(const rb_op *F) { return F != NULL && F->type == &type_ham; }

rb_status rb_op_ode_part(rb_context *ctx, rb_op *F, rb_ode_part part, rb_op **Fp)
{
    const char *fn = "rb_op_ode_part";
    if (ctx == NULL) return RB_ENULL;
    if (F == NULL || F->type == NULL || Fp == NULL) return rb_fail(ctx, RB_ENULL, "%s: %s is NULL", fn, Fp ? "F" : "Fp");
    if ((unsigned)part >= RB_ODE_PART_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: part = %d is not an rb_ode_part", fn, (int)part);
    if (!rb_op_ode_is_partitioned(F))
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: F (%s) is not a partitioned right-hand side (y' = f(t, z), "
                       "z' = g(t, y)); rb_op_ode_hamiltonian_create makes one", fn, F->type->name);
    const ham_rhs *s = F->state;
    *Fp = s->part[part];
    return RB_OK;
}
