/* mgnet.c — MgNet as one rb_op (mgnet.h): a data-feature conv, the down-leg of the network-mode
 * cycle (vnet.h) with feature projections, global average pooling and a linear head. */
#include "resbridge/mgnet.h"

#include <gsl/gsl_rng.h>
#include <math.h>
#include <string.h>

#include "op_internal.h"
#include "resbridge/conv.h"
#include "resbridge/layers.h"

#define MGNET_MAX_OPS (2 + 4 * 16)

typedef struct mgnet_state {
    rb_vnet *net;               /* the cycle: C channels, batch RB_MGNET_BATCH, DOWN, projections */
    rb_op *lift, *gap, *head;   /* K (3x3 conv Cin -> C), pooling, W (dense C -> classes) */
    size_t cin, in_h, in_w, n, channels, classes, levels;
    rb_norm_kind norm;          /* normalised smoothers: the cycle runs on the batch's samples only */
    rb_op *owner[MGNET_MAX_OPS]; /* the ops whose parameters live in the MgNet's vector, in order */
    double *own_params[MGNET_MAX_OPS];
    size_t nowners;
    rb_tensor xpad, f, u, g, logits, dlogits, dg, duc, df, dxpad; /* one batch each */
    rb_arena work;
    unsigned long long forwards; /* taped forwards so far: a tape names the one it belongs to */
} mgnet_state;

typedef struct mgnet_tape {
    unsigned long long forward; /* the taped forward whose vnet tape and buffers are current */
    size_t rows;
} mgnet_tape;

static mgnet_state *st_of(const rb_op *op) { return op->state; }

static rb_status mg_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const mgnet_state *s = st_of(op);
    if (in.c != s->cin || in.d != 1 || in.h != s->in_h || in.w != s->in_w) {
        char a[96];
        return rb_fail(ctx, RB_ESHAPE, "mgnet: input %s, expected (N,%zu,1,%zu,%zu)", rb_shape_format(in, a, sizeof a), s->cin,
                       s->in_h, s->in_w);
    }
    *out = rb_shape_vec(s->classes);
    out->n = in.n;
    return RB_OK;
}

/* rows [r0, r0 + rows) of x into the padded batch (zeros around and in the unused rows) */
static void pad(mgnet_state *s, const rb_tensor *x, size_t r0, size_t rows)
{
    memset(s->xpad.data, 0, rb_tensor_count(&s->xpad) * sizeof(double));
    for (size_t b = 0; b < rows; b++)
        for (size_t c = 0; c < s->cin; c++)
            for (size_t y = 0; y < s->in_h; y++)
                memcpy(s->xpad.data + ((b * s->cin + c) * s->n + y + 1) * s->n + 1,
                       x->data + (((r0 + b) * s->cin + c) * s->in_h + y) * s->in_w, s->in_w * sizeof(double));
}

/* t's first n samples (a view) */
static rb_tensor first(const rb_tensor *t, size_t n)
{
    rb_tensor v = *t;
    v.shape.n = n, v.owns = false;
    return v;
}

/* The samples one batch runs on: all RB_MGNET_BATCH (the unused ones zero), or with batch
 * norms exactly the `rows` given, so that batch statistics see no padding. */
static size_t run_rows(const mgnet_state *s, size_t rows) { return s->norm != RB_NORM_NONE ? rows : RB_MGNET_BATCH; }

/* logits of rows [r0, r0 + rows) of x into y; taped: the cycle keeps its tape */
static rb_status forward_batch(rb_context *ctx, mgnet_state *s, const rb_tensor *x, size_t r0, size_t rows, rb_tensor *y,
                               bool taped)
{
    pad(s, x, r0, rows);
    const size_t n = run_rows(s, rows);
    rb_tensor xpad = first(&s->xpad, n), f = first(&s->f, n), u = first(&s->u, n), g = first(&s->g, n);
    rb_tensor logits = first(&s->logits, n);
    rb_status st = rb_op_apply(ctx, s->lift, &xpad, &f, &s->work);
    if (st == RB_OK && s->norm != RB_NORM_NONE) st = rb_vnet_set_rows(ctx, s->net, n);
    if (st == RB_OK) st = rb_vnet_forward(ctx, s->net, &f, NULL, &u, 1, taped);
    if (st == RB_OK) st = rb_op_apply(ctx, s->gap, rb_vnet_level_u(s->net, s->levels - 1), &g, &s->work);
    if (st == RB_OK) st = rb_op_apply(ctx, s->head, &g, &logits, &s->work);
    if (st == RB_OK) memcpy(y->data + r0 * s->classes, logits.data, rows * s->classes * sizeof(double));
    return st;
}

static rb_status mg_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    mgnet_state *s = st_of(op);
    rb_status st = RB_OK;
    for (size_t r0 = 0; r0 < x->shape.n && st == RB_OK; r0 += RB_MGNET_BATCH) {
        const size_t rows = x->shape.n - r0 < RB_MGNET_BATCH ? x->shape.n - r0 : RB_MGNET_BATCH;
        st = forward_batch(ctx, s, x, r0, rows, y, false);
    }
    return st;
}

static size_t mg_tape_bytes(const rb_op *op, rb_shape in)
{
    (void)op, (void)in;
    return rb_arena_bytes(sizeof(mgnet_tape));
}

static rb_status mg_forward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                  rb_arena *work)
{
    (void)work;
    mgnet_state *s = st_of(op);
    if (x->shape.n > RB_MGNET_BATCH)
        return rb_fail(ctx, RB_EINVAL, "mgnet: a taped forward takes at most %d samples, got %zu", RB_MGNET_BATCH, x->shape.n);
    rb_status st = forward_batch(ctx, s, x, 0, x->shape.n, y, true);
    mgnet_tape *t = tape;
    t->forward = st == RB_OK ? ++s->forwards : 0;
    t->rows = x->shape.n;
    return st;
}

/* dparams slice of one of the MgNet's ops (NULL when dparams is) */
static double *slice(const rb_op *op, const rb_op *part, double *dparams)
{
    return dparams != NULL ? dparams + (part->params - op->params) : NULL;
}

static rb_status mg_backward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y, const void *tape,
                                   const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams, rb_arena *work)
{
    mgnet_state *s = st_of(op);
    const mgnet_tape *t = tape;
    rb_status st = RB_OK;
    if (t->forward == 0 || t->forward != s->forwards || t->rows != x->shape.n) { /* not the latest forward: again */
        mgnet_tape again;                                                        /* (moving no running statistics) */
        st = rb_vnet_hold_tracking(ctx, s->net, true);
        if (st == RB_OK) st = mg_forward_taped(ctx, op, x, (rb_tensor *)y, &again, work);
        rb_vnet_hold_tracking(ctx, s->net, false);
        if (st != RB_OK) return st;
    }
    const size_t rows = x->shape.n, n = run_rows(s, rows);
    rb_tensor dlogits = first(&s->dlogits, n), dg = first(&s->dg, n), pooled = first(&s->g, n), duc = first(&s->duc, n);
    rb_tensor df = first(&s->df, n), xpad = first(&s->xpad, n), dxpad = first(&s->dxpad, n);
    /* logits = W g + b: dg, dW, db (alpha in the seed, so that it carries through the cycle) */
    memset(dlogits.data, 0, rb_tensor_count(&dlogits) * sizeof(double));
    for (size_t i = 0; i < rows * s->classes; i++) dlogits.data[i] = alpha * dy->data[i];
    memset(dg.data, 0, rb_tensor_count(&dg) * sizeof(double));
    st = rb_op_backward(ctx, s->head, &pooled, NULL, NULL, &dlogits, 1.0, &dg, slice(op, s->head, dparams), &s->work);
    /* g = mean(u_coarsest) */
    const rb_tensor *uc = rb_vnet_level_u(s->net, s->levels - 1);
    if (st == RB_OK) {
        memset(duc.data, 0, rb_tensor_count(&duc) * sizeof(double));
        st = rb_op_vjp(ctx, s->gap, uc, &dg, 1.0, &duc, &s->work);
    }
    /* the cycle: df, and the level operators' gradients */
    const rb_tensor *seeds[16] = {NULL};
    seeds[s->levels - 1] = &duc;
    if (st == RB_OK) {
        rb_vnet_zero_grad(s->net);
        st = rb_vnet_backward_levels(ctx, s->net, seeds, NULL, &df);
    }
    for (size_t i = 1; st == RB_OK && dparams != NULL && i + 1 < s->nowners; i++) { /* the cycle's ops: owner[1 .. n-2] */
        const rb_op *o = s->owner[i];
        const double *g = rb_vnet_grad(s->net, o);
        double *d = slice(op, o, dparams);
        for (size_t k = 0; g != NULL && k < o->nparams; k++) d[k] += g[k];
    }
    /* f = K * xpad */
    if (st == RB_OK && dparams != NULL) st = rb_op_param_grad(ctx, s->lift, &xpad, &df, 1.0, slice(op, s->lift, dparams), &s->work);
    if (st == RB_OK && dx != NULL) {
        memset(dxpad.data, 0, rb_tensor_count(&dxpad) * sizeof(double));
        st = rb_op_vjp(ctx, s->lift, &xpad, &df, 1.0, &dxpad, &s->work);
        for (size_t b = 0; st == RB_OK && b < rows; b++)
            for (size_t c = 0; c < s->cin; c++)
                for (size_t yy = 0; yy < s->in_h; yy++)
                    for (size_t xx = 0; xx < s->in_w; xx++)
                        dx->data[((b * s->cin + c) * s->in_h + yy) * s->in_w + xx] +=
                            s->dxpad.data[((b * s->cin + c) * s->n + yy + 1) * s->n + xx + 1];
    }
    return st;
}

static size_t mg_workspace(const rb_op *op, rb_shape in)
{
    (void)op, (void)in;
    return rb_arena_bytes(sizeof(mgnet_tape)); /* the recomputed tape of vjp / param_grad */
}

static void mg_destroy(rb_context *ctx, rb_op *op)
{
    mgnet_state *s = st_of(op);
    if (s == NULL) return;
    for (size_t i = 0; i < s->nowners; i++) { /* each op its own array back, with the current values */
        rb_op *o = s->owner[i];
        if (s->own_params[i] == NULL) continue; /* not moved yet */
        memcpy(s->own_params[i], o->params, o->nparams * sizeof(double));
        rb_op_rebase(o, s->own_params[i]);
    }
    rb_vnet_free(ctx, s->net);
    rb_op_free(ctx, s->lift), rb_op_free(ctx, s->gap), rb_op_free(ctx, s->head);
    rb_tensor *t[] = {&s->xpad, &s->f, &s->u, &s->g, &s->logits, &s->dlogits, &s->dg, &s->duc, &s->df, &s->dxpad};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) rb_tensor_release(ctx, t[i]);
    rb_arena_release(ctx, &s->work);
    rb_free(ctx, s);
}

static const rb_op_type mgnet_type = {
    .name = "mgnet",
    .flags = RB_OP_HAS_PARAMS,
    .shape = mg_shape,
    .workspace = mg_workspace,
    .apply = mg_apply,
    .vjp = rb_op_vjp_via_tape,
    .param_grad = rb_op_param_grad_via_tape,
    .destroy = mg_destroy,
    .tape_bytes = mg_tape_bytes,
    .forward_taped = mg_forward_taped,
    .backward_taped = mg_backward_taped,
};

static rb_status build(rb_context *ctx, mgnet_state *s, int smoothing, unsigned long seed)
{
    rb_vnet_config c = rb_vnet_config_default();
    c.n = s->n, c.levels = s->levels, c.channels = s->channels, c.batch = RB_MGNET_BATCH, c.pre = smoothing, c.post = 0;
    c.act = RB_ACT_RELU, c.cycle = RB_CYCLE_DOWN, c.coarse_solve = false, c.projection = true, c.seed = seed, c.norm = s->norm;
    rb_status st = rb_vnet_create(ctx, &c, &s->net);
    rb_conv_desc d = rb_conv_desc_default(2, s->cin, s->channels);
    if (st == RB_OK) st = rb_op_conv_create(ctx, &d, NULL, &s->lift);
    if (st == RB_OK) st = rb_op_global_avg_pool_create(ctx, &s->gap);
    if (st == RB_OK) st = rb_op_dense_create(ctx, s->channels, s->classes, true, NULL, &s->head);
    if (st != RB_OK) return st;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (rng == NULL) return rb_fail(ctx, RB_ENOMEM, "mgnet: no random number generator");
    gsl_rng_set(rng, seed + 1);
    const double kb = 1.0 / sqrt((double)(s->cin * 9)), hb = 1.0 / sqrt((double)s->channels); /* PyTorch's uniform bounds */
    for (size_t i = 0; i < s->lift->nparams; i++) s->lift->params[i] = kb * (2 * gsl_rng_uniform(rng) - 1);
    for (size_t i = 0; i < s->head->nparams; i++) s->head->params[i] = hb * (2 * gsl_rng_uniform(rng) - 1);
    gsl_rng_free(rng);
    /* the parameter order: K, the cycle's ops level by level (A, B, R, Pi), W and b */
    s->owner[s->nowners++] = s->lift;
    for (size_t i = 0; i < rb_vnet_nlearned(s->net) && s->nowners + 1 < MGNET_MAX_OPS; i++)
        s->owner[s->nowners++] = rb_vnet_learned(s->net, i);
    s->owner[s->nowners++] = s->head;
    const rb_shape in = rb_shape_2d(RB_MGNET_BATCH, s->cin, s->n, s->n), grid = rb_vnet_shape(s->net, 0);
    const rb_shape coarse = rb_vnet_shape(s->net, s->levels - 1);
    const rb_shape pooled = rb_shape_2d(RB_MGNET_BATCH, 1, 1, s->channels), out = rb_shape_2d(RB_MGNET_BATCH, 1, 1, s->classes);
    const rb_shape shapes[] = {in, grid, grid, pooled, out, out, pooled, coarse, grid, in};
    rb_tensor *t[] = {&s->xpad, &s->f, &s->u, &s->g, &s->logits, &s->dlogits, &s->dg, &s->duc, &s->df, &s->dxpad};
    for (size_t i = 0; i < sizeof t / sizeof *t && st == RB_OK; i++) st = rb_tensor_alloc(ctx, t[i], shapes[i]);
    size_t w = rb_op_workspace(s->lift, in), wh = rb_op_workspace(s->head, pooled);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &s->work, (w > wh ? w : wh) + 4096);
    return st;
}

rb_status rb_op_mgnet_create(rb_context *ctx, size_t in_channels, size_t in_h, size_t in_w, size_t channels, int smoothing,
                             size_t classes, unsigned long seed, rb_op **out)
{
    return rb_op_mgnet_create_norm(ctx, in_channels, in_h, in_w, channels, smoothing, classes, RB_NORM_NONE, seed, out);
}

rb_vnet *rb_op_mgnet_vnet(const rb_op *op)
{
    return op != NULL && op->type == &mgnet_type ? st_of(op)->net : NULL;
}

rb_status rb_op_mgnet_create_norm(rb_context *ctx, size_t in_channels, size_t in_h, size_t in_w, size_t channels, int smoothing,
                                  size_t classes, rb_norm_kind norm, unsigned long seed, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_mgnet_create: out is NULL");
    if ((unsigned)norm >= RB_NORM_KIND_COUNT) return rb_fail(ctx, RB_EINVAL, "rb_op_mgnet_create: unknown normalisation %d", (int)norm);
    if (in_channels < 1 || in_h < 1 || in_w < 1 || in_h > 1023 || in_w > 1023)
        return rb_fail(ctx, RB_EINVAL, "rb_op_mgnet_create: images %zu x %zu x %zu, need 1..1023 per side", in_channels, in_h, in_w);
    if (channels < 1 || channels > 1024 || classes < 1)
        return rb_fail(ctx, RB_EINVAL, "rb_op_mgnet_create: channels = %zu (1..1024), classes = %zu (>= 1)", channels, classes);
    if (smoothing < 1 || smoothing > 8) return rb_fail(ctx, RB_EINVAL, "rb_op_mgnet_create: smoothing = %d, must be 1..8", smoothing);
    mgnet_state *s = rb_calloc(ctx, 1, sizeof *s);
    if (s == NULL) return RB_ENOMEM;
    s->cin = in_channels, s->in_h = in_h, s->in_w = in_w, s->channels = channels, s->classes = classes, s->norm = norm;
    /* the vertex grid: n = 2^L - 1 with room for the image and a zero border, down to 3 points */
    const size_t side = (in_h > in_w ? in_h : in_w) + 2;
    s->n = 3, s->levels = 1;
    while (s->n < side) s->n = 2 * s->n + 1, s->levels++;
    rb_status st = build(ctx, s, smoothing, seed);
    size_t total = 0;
    for (size_t i = 0; st == RB_OK && i < s->nowners; i++) total += s->owner[i]->nparams;
    rb_op *op = NULL;
    if (st == RB_OK) st = rb_op_new(ctx, &mgnet_type, s, total, &op);
    if (st != RB_OK) {
        rb_op tmp = {.state = s};
        mg_destroy(ctx, &tmp);
        return st;
    }
    size_t off = 0;
    for (size_t i = 0; i < s->nowners; i++) { /* into the one vector */
        rb_op *o = s->owner[i];
        memcpy(op->params + off, o->params, o->nparams * sizeof(double));
        s->own_params[i] = o->params;
        rb_op_rebase(o, op->params + off);
        off += o->nparams;
    }
    *out = op;
    return RB_OK;
}
