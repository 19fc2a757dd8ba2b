/* unet.c — the U-Net reading of the one V-cycle (unet.h): lifting conv, K network-mode
 * cycles of rb_vnet from u = 0, projection conv; one flat parameter vector. */
#include "resbridge/unet.h"

#include <gsl/gsl_rng.h>
#include <math.h>
#include <string.h>

#include "resbridge/conv.h"

#define UNET_MAX_SLICES (2 + 4 * 16)

/* One learned operator's place in the flat vector. */
typedef struct unet_slice {
    rb_op *op;
    size_t offset;
} unet_slice;

struct rb_unet {
    rb_unet_config cfg;
    rb_vnet *vnet;
    rb_op *lift, *proj;           /* Cin -> C and C -> Cout, with bias */
    rb_op *self;                  /* the network as an rb_op; its params are the flat vector */
    double *params, *grad;        /* params = self->params */
    size_t nparams;
    unet_slice slice[UNET_MAX_SLICES]; /* lift, the cycle's A, B, R, P by level, proj */
    size_t nslices;
    rb_tensor x, f, u, du, df, dx; /* the forward's input, data, iterate; the backward's adjoints */
    rb_arena work;
    bool taped;
};

rb_unet_config rb_unet_config_default(void)
{
    return (rb_unet_config){.dim = 2, .n = 31, .levels = 4, .in_channels = 2, .channels = 8, .out_channels = 1, .batch = 1,
                            .pre = 1, .post = 1, .cycles = 2, .act = RB_ACT_TANH, .cycle = RB_CYCLE_V, .seed = 1};
}

static rb_shape grid(const rb_unet_config *c, size_t channels)
{
    return rb_shape_3d(c->batch, channels, c->dim >= 3 ? c->n : 1, c->dim >= 2 ? c->n : 1, c->n);
}

/* A 3^d stride-1 conv cin -> cout with bias, PyTorch's initialisation (uniform +-1/sqrt(fan-in)). */
static rb_status end_conv(rb_context *ctx, int dim, size_t cin, size_t cout, gsl_rng *rng, rb_op **out)
{
    rb_conv_desc d = rb_conv_desc_default(dim, cin, cout);
    d.bias = true;
    rb_status st = rb_op_conv_create(ctx, &d, NULL, out);
    if (st != RB_OK) return st;
    const double bound = 1.0 / sqrt((double)(cin * rb_conv_ntaps(&d)));
    for (size_t i = 0; i < (*out)->nparams; i++) (*out)->params[i] = bound * (2 * gsl_rng_uniform(rng) - 1);
    return RB_OK;
}

static void add_slice(rb_unet *net, rb_op *op)
{
    if (op == NULL) return;
    net->slice[net->nslices++] = (unet_slice){op, net->nparams};
    net->nparams += op->nparams;
}

/* flat vector -> the operators */
static void scatter(rb_unet *net)
{
    for (size_t i = 0; i < net->nslices; i++) {
        rb_op *op = net->slice[i].op;
        memcpy(op->params, net->params + net->slice[i].offset, op->nparams * sizeof(double));
    }
}

/* --- the network as an rb_op -------------------------------------------------------------------- */

static rb_status op_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const rb_unet *net = op->state;
    if (!rb_shape_equal(in, rb_unet_in_shape(net))) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "unet: input shape %s, the net takes %s", rb_shape_format(in, a, sizeof a),
                       rb_shape_format(rb_unet_in_shape(net), b, sizeof b));
    }
    *out = rb_unet_out_shape(net);
    return RB_OK;
}

static rb_status op_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    return rb_unet_forward(ctx, op->state, x, y, false);
}

/* taped forward, then the backward with dx += alpha J^T dy and dparams += alpha dL/dtheta */
static rb_status op_backward(rb_context *ctx, rb_unet *net, const rb_tensor *x, const rb_tensor *dy, double alpha, rb_tensor *dx,
                             double *dparams)
{
    rb_tensor y = {0};
    rb_status st = rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net));
    if (st != RB_OK) return st;
    rb_tensor g = {0};
    if (dx != NULL) st = rb_tensor_alloc(ctx, &g, dx->shape);
    double *saved = st == RB_OK ? rb_calloc(ctx, net->nparams, sizeof(double)) : NULL;
    if (st == RB_OK && saved == NULL) st = RB_ENOMEM;
    if (st == RB_OK) {
        memcpy(saved, net->grad, net->nparams * sizeof(double));
        rb_unet_zero_grad(net);
        st = rb_unet_forward(ctx, net, x, &y, true);
        if (st == RB_OK) st = rb_unet_backward(ctx, net, dy, dx != NULL ? &g : NULL);
        if (st == RB_OK && dx != NULL) st = rb_tensor_axpy(ctx, alpha, &g, dx);
        if (st == RB_OK && dparams != NULL)
            for (size_t i = 0; i < net->nparams; i++) dparams[i] += alpha * net->grad[i];
        memcpy(net->grad, saved, net->nparams * sizeof(double));
    }
    rb_free(ctx, saved);
    rb_tensor_release(ctx, &g), rb_tensor_release(ctx, &y);
    return st;
}

static rb_status op_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha, rb_tensor *dx,
                        rb_arena *work)
{
    (void)work;
    return op_backward(ctx, op->state, x, dy, alpha, dx, NULL);
}

static rb_status op_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                               double *dparams, rb_arena *work)
{
    (void)work;
    return op_backward(ctx, op->state, x, dy, alpha, NULL, dparams);
}

static const rb_op_type unet_type = {
    .name = "unet",
    .flags = RB_OP_HAS_PARAMS,
    .shape = op_shape,
    .apply = op_apply,
    .vjp = op_vjp,
    .param_grad = op_param_grad,
};

/* --- set-up ------------------------------------------------------------------------------------- */

static rb_status check_config(rb_context *ctx, const rb_unet_config *c)
{
    if (c->in_channels < 1 || c->channels < 1 || c->out_channels < 1)
        return rb_fail(ctx, RB_EINVAL, "rb_unet_create: channels %zu -> %zu -> %zu, each must be >= 1", c->in_channels,
                       c->channels, c->out_channels);
    if (c->cycles < 1 || c->cycles > 1000) return rb_fail(ctx, RB_EINVAL, "rb_unet_create: cycles = %d, must be 1..1000", c->cycles);
    if (c->pre < 1) return rb_fail(ctx, RB_EINVAL, "rb_unet_create: pre = %d, must be >= 1 (the coarsest level is smoothed)", c->pre);
    if (c->levels > 16) return rb_fail(ctx, RB_EINVAL, "rb_unet_create: levels = %zu, must be 1..16", c->levels);
    return RB_OK;
}

static rb_status build(rb_context *ctx, rb_unet *net, gsl_rng *rng)
{
    const rb_unet_config *c = &net->cfg;
    rb_vnet_config vc = {.dim = c->dim, .n = c->n, .levels = c->levels, .channels = c->channels, .batch = c->batch,
                         .pre = c->pre, .post = c->post, .act = c->act, .cycle = c->cycle, .coarse_solve = false,
                         .seed = c->seed};
    rb_status st = rb_vnet_create(ctx, &vc, &net->vnet);
    if (st == RB_OK) st = end_conv(ctx, c->dim, c->in_channels, c->channels, rng, &net->lift);
    if (st == RB_OK) st = end_conv(ctx, c->dim, c->channels, c->out_channels, rng, &net->proj);
    if (st != RB_OK) return st;
    add_slice(net, net->lift);
    for (size_t l = 0; l < c->levels; l++)
        for (int p = 0; p < RB_VNET_PART_COUNT; p++) add_slice(net, rb_vnet_op(net->vnet, l, (rb_vnet_part)p));
    add_slice(net, net->proj);
    st = rb_op_new(ctx, &unet_type, net, net->nparams, &net->self);
    if (st != RB_OK) return st;
    net->params = net->self->params;
    net->grad = rb_calloc(ctx, net->nparams, sizeof(double));
    if (net->grad == NULL) return RB_ENOMEM;
    for (size_t i = 0; i < net->nslices; i++) {
        const rb_op *op = net->slice[i].op;
        memcpy(net->params + net->slice[i].offset, op->params, op->nparams * sizeof(double));
    }
    const rb_shape in = grid(c, c->in_channels), mid = grid(c, c->channels);
    st = rb_tensor_alloc(ctx, &net->x, in);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->f, mid);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->u, mid);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->du, mid);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->df, mid);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &net->dx, in);
    if (st != RB_OK) return st;
    size_t w = rb_op_backward_workspace(net->lift, in), wp = rb_op_backward_workspace(net->proj, mid);
    return rb_arena_reserve(ctx, &net->work, (w > wp ? w : wp) + 4096);
}

rb_status rb_unet_create(rb_context *ctx, const rb_unet_config *cfg, rb_unet **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (cfg == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_unet_create: cfg or out is NULL");
    rb_status st = check_config(ctx, cfg);
    if (st != RB_OK) return st;
    rb_unet *net = rb_calloc(ctx, 1, sizeof *net);
    if (net == NULL) return RB_ENOMEM;
    net->cfg = *cfg;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (rng == NULL) {
        rb_free(ctx, net);
        return rb_fail(ctx, RB_ENOMEM, "rb_unet_create: no random number generator");
    }
    gsl_rng_set(rng, cfg->seed ^ 0x5eedUL); /* a stream of its own, apart from the cycle's */
    st = build(ctx, net, rng);
    gsl_rng_free(rng);
    if (st != RB_OK) {
        rb_unet_free(ctx, net);
        return st;
    }
    *out = net;
    return RB_OK;
}

void rb_unet_free(rb_context *ctx, rb_unet *net)
{
    if (net == NULL) return;
    rb_vnet_free(ctx, net->vnet);
    rb_op_free(ctx, net->lift), rb_op_free(ctx, net->proj), rb_op_free(ctx, net->self);
    rb_free(ctx, net->grad);
    rb_tensor_release(ctx, &net->x), rb_tensor_release(ctx, &net->f), rb_tensor_release(ctx, &net->u);
    rb_tensor_release(ctx, &net->du), rb_tensor_release(ctx, &net->df), rb_tensor_release(ctx, &net->dx);
    rb_arena_release(ctx, &net->work);
    rb_free(ctx, net);
}

const rb_unet_config *rb_unet_config_of(const rb_unet *net) { return net ? &net->cfg : NULL; }
rb_shape rb_unet_in_shape(const rb_unet *net) { return net ? grid(&net->cfg, net->cfg.in_channels) : (rb_shape){0, 0, 0, 0, 0}; }
rb_shape rb_unet_out_shape(const rb_unet *net) { return net ? grid(&net->cfg, net->cfg.out_channels) : (rb_shape){0, 0, 0, 0, 0}; }
size_t rb_unet_nparams(const rb_unet *net) { return net ? net->nparams : 0; }
double *rb_unet_params(rb_unet *net) { return net ? net->params : NULL; }
double *rb_unet_grad(rb_unet *net) { return net ? net->grad : NULL; }
void rb_unet_zero_grad(rb_unet *net)
{
    if (net != NULL) memset(net->grad, 0, net->nparams * sizeof(double));
}
rb_vnet *rb_unet_vnet(const rb_unet *net) { return net ? net->vnet : NULL; }
rb_op *rb_unet_op(const rb_unet *net) { return net ? net->self : NULL; }

/* --- forward and backward ----------------------------------------------------------------------- */

static rb_status check_shape(rb_context *ctx, const rb_tensor *t, rb_shape want, const char *name, const char *fn)
{
    rb_status st = rb_tensor_check(ctx, t, name);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(t->shape, want)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: %s has shape %s, the net wants %s", fn, name, rb_shape_format(t->shape, a, sizeof a),
                       rb_shape_format(want, b, sizeof b));
    }
    return RB_OK;
}

rb_status rb_unet_forward(rb_context *ctx, rb_unet *net, const rb_tensor *x, rb_tensor *y, bool taped)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_unet_forward: net is NULL");
    rb_status st = check_shape(ctx, x, rb_unet_in_shape(net), "x", "rb_unet_forward");
    if (st == RB_OK) st = check_shape(ctx, y, rb_unet_out_shape(net), "y", "rb_unet_forward");
    if (st != RB_OK) return st;
    net->taped = false;
    scatter(net);
    memcpy(net->x.data, x->data, rb_tensor_count(x) * sizeof(double));
    rb_arena_reset(&net->work, 0);
    st = rb_op_apply(ctx, net->lift, &net->x, &net->f, &net->work);
    if (st == RB_OK) st = rb_vnet_forward(ctx, net->vnet, &net->f, NULL, &net->u, net->cfg.cycles, taped);
    if (st == RB_OK) st = rb_op_apply(ctx, net->proj, &net->u, y, &net->work);
    if (st == RB_OK) net->taped = taped;
    return st;
}

rb_status rb_unet_backward(rb_context *ctx, rb_unet *net, const rb_tensor *dy, rb_tensor *dx)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "rb_unet_backward: net is NULL");
    rb_status st = check_shape(ctx, dy, rb_unet_out_shape(net), "dy", "rb_unet_backward");
    if (st == RB_OK && dx != NULL) st = check_shape(ctx, dx, rb_unet_in_shape(net), "dx", "rb_unet_backward");
    if (st != RB_OK) return st;
    if (!net->taped) return rb_fail(ctx, RB_EINVAL, "rb_unet_backward: no taped rb_unet_forward to go back through");
    net->taped = false;
    const unet_slice *lift = &net->slice[0], *proj = &net->slice[net->nslices - 1];
    /* projection: du = proj^T dy, its weights */
    memset(net->du.data, 0, rb_tensor_count(&net->du) * sizeof(double));
    rb_arena_reset(&net->work, 0);
    st = rb_op_backward(ctx, net->proj, &net->u, NULL, NULL, dy, 1.0, &net->du, net->grad + proj->offset, &net->work);
    /* the cycles: df, and the level operators' weights */
    if (st == RB_OK) {
        rb_vnet_zero_grad(net->vnet);
        st = rb_vnet_backward(ctx, net->vnet, &net->du, NULL, &net->df);
    }
    for (size_t i = 1; st == RB_OK && i + 1 < net->nslices; i++) {
        const double *g = rb_vnet_grad(net->vnet, net->slice[i].op);
        double *to = net->grad + net->slice[i].offset;
        for (size_t k = 0; k < net->slice[i].op->nparams; k++) to[k] += g[k];
    }
    /* lifting: dx = lift^T df, its weights */
    if (st == RB_OK && dx != NULL) memset(net->dx.data, 0, rb_tensor_count(dx) * sizeof(double));
    rb_arena_reset(&net->work, 0);
    if (st == RB_OK)
        st = rb_op_backward(ctx, net->lift, &net->x, NULL, NULL, &net->df, 1.0, dx != NULL ? &net->dx : NULL,
                            net->grad + lift->offset, &net->work);
    if (st == RB_OK && dx != NULL) memcpy(dx->data, net->dx.data, rb_tensor_count(dx) * sizeof(double));
    return st;
}
