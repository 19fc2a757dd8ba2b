/* unet.c — the U-Net reading of the one V-cycle (unet.h): lifting conv, K network-mode
 * cycles of rb_vnet from u = 0, projection conv; one flat parameter vector. */
#include "resbridge/unet.h"

#include <gsl/gsl_rng.h>
#include <math.h>
#include <string.h>

#include "op_internal.h"
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

size_t rb_unet_levels_for(size_t n)
{
    size_t levels = 1;
    for (size_t m = n; m % 2 == 1 && (m - 1) / 2 >= 3 && levels < 16; m = (m - 1) / 2) levels++;
    return levels;
}

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
    if (c->levels > 16) return rb_fail(ctx, RB_EINVAL, "rb_unet_create: levels = %zu, must be 1..16 (0: as deep as n allows)", c->levels);
    return RB_OK;
}

static rb_status build(rb_context *ctx, rb_unet *net, gsl_rng *rng)
{
    const rb_unet_config *c = &net->cfg;
    rb_vnet_config vc = {.dim = c->dim, .n = c->n, .levels = c->levels, .channels = c->channels, .batch = c->batch,
                         .pre = c->pre, .post = c->post, .act = c->act, .cycle = c->cycle, .coarse_solve = false,
                         .seed = c->seed, .norm = c->norm};
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
    if (cfg->levels == 0) net->cfg.levels = rb_unet_levels_for(cfg->n);
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

/* --- the owning operator: any batch, in chunks of cfg.batch samples ---------------------------------
 *
 * net[0] runs every untaped chunk; a taped forward of N samples runs chunk k on net[k] (created on
 * first need), so each chunk keeps its own tape and the backward walks them all. Every net reads
 * the operator's flat vector (its params pointer is set to op->params before each forward). */

typedef struct unet_owner {
    rb_unet_config cfg;          /* batch = the chunk */
    rb_unet **net;
    size_t nnets;
    rb_tensor x, y, dy, dx;      /* one chunk */
    unsigned long long forwards; /* forwards so far (taped or not): a tape names the one it belongs to */
} unet_owner;

typedef struct unet_tape {
    unsigned long long forward;  /* the taped forward whose nets' tapes are current (0: none) */
    size_t rows;
} unet_tape;

static rb_status own_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const unet_owner *o = op->state;
    rb_shape want = grid(&o->cfg, o->cfg.in_channels);
    want.n = in.n;
    if (in.n < 1 || !rb_shape_equal(in, want)) {
        char a[96], b[96];
        want.n = 1;
        return rb_fail(ctx, RB_ESHAPE, "unet: input shape %s, the net takes N samples of %s", rb_shape_format(in, a, sizeof a),
                       rb_shape_format(want, b, sizeof b));
    }
    *out = grid(&o->cfg, o->cfg.out_channels);
    out->n = in.n;
    return RB_OK;
}

/* Rows [r0, r0 + rows) of src (per values each) into the chunk buffer, zeros after them. */
static void chunk_in(rb_tensor *chunk, const double *src, size_t r0, size_t rows, size_t per)
{
    memcpy(chunk->data, src + r0 * per, rows * per * sizeof(double));
    memset(chunk->data + rows * per, 0, (chunk->shape.n - rows) * per * sizeof(double));
}

/* At least k nets, each of cfg (its own parameters replaced by the operator's). */
static rb_status own_nets(rb_context *ctx, unet_owner *o, size_t k)
{
    if (k <= o->nnets) return RB_OK;
    rb_unet **more = rb_calloc(ctx, k, sizeof *more);
    if (more == NULL) return RB_ENOMEM;
    if (o->nnets > 0) memcpy(more, o->net, o->nnets * sizeof *more);
    rb_free(ctx, o->net);
    o->net = more;
    for (; o->nnets < k; o->nnets++) {
        rb_status st = rb_unet_create(ctx, &o->cfg, &o->net[o->nnets]);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

/* y rows of x through net k, chunk by chunk from row r0 */
static rb_status own_chunk(rb_context *ctx, const rb_op *op, rb_unet *net, const rb_tensor *x, rb_tensor *y, size_t r0, bool taped)
{
    unet_owner *o = op->state;
    const size_t B = o->cfg.batch, rows = x->shape.n - r0 < B ? x->shape.n - r0 : B;
    const size_t in = rb_shape_count(o->x.shape) / B, out = rb_shape_count(o->y.shape) / B;
    net->params = op->params;
    chunk_in(&o->x, x->data, r0, rows, in);
    rb_status st = rb_unet_forward(ctx, net, &o->x, &o->y, taped);
    if (st == RB_OK) memcpy(y->data + r0 * out, o->y.data, rows * out * sizeof(double));
    return st;
}

static rb_status own_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    unet_owner *o = op->state;
    o->forwards++;
    rb_status st = RB_OK;
    for (size_t r0 = 0; r0 < x->shape.n && st == RB_OK; r0 += o->cfg.batch) st = own_chunk(ctx, op, o->net[0], x, y, r0, false);
    return st;
}

static size_t own_tape_bytes(const rb_op *op, rb_shape in)
{
    (void)op, (void)in;
    return rb_arena_bytes(sizeof(unet_tape));
}

static rb_status own_forward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape, rb_arena *work)
{
    (void)work;
    unet_owner *o = op->state;
    unet_tape *t = tape;
    const size_t B = o->cfg.batch, chunks = (x->shape.n + B - 1) / B;
    t->forward = 0, t->rows = x->shape.n;
    o->forwards++;
    rb_status st = own_nets(ctx, o, chunks);
    for (size_t k = 0; k < chunks && st == RB_OK; k++) st = own_chunk(ctx, op, o->net[k], x, y, k * B, true);
    if (st == RB_OK) t->forward = o->forwards;
    return st;
}

static rb_status own_backward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y, const void *tape,
                                    const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams, rb_arena *work)
{
    unet_owner *o = op->state;
    const unet_tape *t = tape;
    rb_status st = RB_OK;
    if (t->forward == 0 || t->forward != o->forwards || t->rows != x->shape.n) { /* not the latest forward: again */
        unet_tape again;
        st = own_forward_taped(ctx, op, x, (rb_tensor *)y, &again, work);
        if (st != RB_OK) return st;
    }
    const size_t B = o->cfg.batch, N = x->shape.n, np = op->nparams;
    const size_t in = rb_shape_count(o->dx.shape) / B, out = rb_shape_count(o->dy.shape) / B;
    for (size_t k = 0, r0 = 0; r0 < N && st == RB_OK; k++, r0 += B) {
        const size_t rows = N - r0 < B ? N - r0 : B;
        rb_unet *net = o->net[k];
        chunk_in(&o->dy, dy->data, r0, rows, out);
        for (size_t i = 0; i < rows * out; i++) o->dy.data[i] *= alpha;
        rb_unet_zero_grad(net);
        st = rb_unet_backward(ctx, net, &o->dy, dx != NULL ? &o->dx : NULL);
        for (size_t i = 0; st == RB_OK && dparams != NULL && i < np; i++) dparams[i] += net->grad[i];
        for (size_t i = 0; st == RB_OK && dx != NULL && i < rows * in; i++) dx->data[r0 * in + i] += o->dx.data[i];
    }
    return st;
}

static size_t own_workspace(const rb_op *op, rb_shape in)
{
    (void)op, (void)in;
    return rb_arena_bytes(sizeof(unet_tape)); /* the recomputed tape of vjp / param_grad */
}

static void own_destroy(rb_context *ctx, rb_op *op)
{
    unet_owner *o = op->state;
    if (o == NULL) return;
    for (size_t k = 0; k < o->nnets; k++) rb_unet_free(ctx, o->net[k]);
    rb_free(ctx, o->net);
    rb_tensor_release(ctx, &o->x), rb_tensor_release(ctx, &o->y), rb_tensor_release(ctx, &o->dy), rb_tensor_release(ctx, &o->dx);
    rb_free(ctx, o);
}

static const rb_op_type unet_owner_type = {
    .name = "unet",
    .flags = RB_OP_HAS_PARAMS,
    .shape = own_shape,
    .workspace = own_workspace,
    .apply = own_apply,
    .vjp = rb_op_vjp_via_tape,
    .param_grad = rb_op_param_grad_via_tape,
    .destroy = own_destroy,
    .tape_bytes = own_tape_bytes,
    .forward_taped = own_forward_taped,
    .backward_taped = own_backward_taped,
};

rb_status rb_op_unet_create(rb_context *ctx, const rb_unet_config *cfg, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (cfg == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_unet_create: cfg or out is NULL");
    if (cfg->batch < 1) return rb_fail(ctx, RB_EINVAL, "rb_op_unet_create: batch (the chunk) = 0, must be >= 1");
    if (cfg->norm != RB_NORM_NONE) /* each chunk's net would keep running statistics of its own */
        return rb_fail(ctx, RB_EUNSUPPORTED, "rb_op_unet_create: norm = %s: the chunked op does not share batch-norm statistics "
                       "between its chunks; use rb_unet_create", rb_norm_kind_name(cfg->norm));
    unet_owner *o = rb_calloc(ctx, 1, sizeof *o);
    if (o == NULL) return RB_ENOMEM;
    o->cfg = *cfg;
    rb_status st = own_nets(ctx, o, 1);
    rb_op *op = NULL;
    if (st == RB_OK) {
        o->cfg = o->net[0]->cfg; /* levels resolved */
        const rb_shape in = grid(&o->cfg, o->cfg.in_channels), outs = grid(&o->cfg, o->cfg.out_channels);
        st = rb_tensor_alloc(ctx, &o->x, in);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &o->dx, in);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &o->y, outs);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &o->dy, outs);
    }
    if (st == RB_OK) st = rb_op_new(ctx, &unet_owner_type, o, o->net[0]->nparams, &op);
    if (st != RB_OK) {
        rb_op tmp = {.state = o};
        own_destroy(ctx, &tmp);
        return st;
    }
    memcpy(op->params, o->net[0]->params, op->nparams * sizeof(double)); /* the initialisation of cfg.seed */
    *out = op;
    return RB_OK;
}
