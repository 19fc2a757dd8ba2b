/* model.c — ResNets, their plain twins and residual MLPs from layers and
 * blocks (see model.h). */
#include "resbridge/model.h"
#include "resbridge/mgnet.h"
#include "resbridge/unet.h"

#include <math.h>
#include <string.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

#include "resbridge/activation.h"
#include "resbridge/blocks.h"
#include "resbridge/chain.h"
#include "resbridge/conv.h"
#include "resbridge/npy.h"
#include "resbridge/residual.h"
#include "op_internal.h"

static const char *const model_names[RB_MODEL_KIND_COUNT] = {"resnet", "plain", "mlp", "mgnet", "unet"};
static const char *const block_names[RB_BLOCK_KIND_COUNT] = {"v1", "v2", "highway", "dense", "plain"};

const char *rb_model_kind_name(rb_model_kind k) { return (unsigned)k < RB_MODEL_KIND_COUNT ? model_names[k] : "unknown"; }
const char *rb_block_kind_name(rb_block_kind k) { return (unsigned)k < RB_BLOCK_KIND_COUNT ? block_names[k] : "unknown"; }

static rb_status parse(rb_context *ctx, const char *what, const char *const *names, int count, const char *list,
                       const char *name, int *out)
{
    if (ctx == NULL) return RB_ENULL;
    if (name == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "%s: name or result is NULL", what);
    for (int i = 0; i < count; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = i;
            return RB_OK;
        }
    return rb_fail(ctx, RB_EINVAL, "unknown %s '%s' (%s)", what, name, list);
}

rb_status rb_model_kind_parse(rb_context *ctx, const char *name, rb_model_kind *kind)
{
    int k = 0;
    rb_status st = parse(ctx, "model", model_names, RB_MODEL_KIND_COUNT, "resnet, plain, mlp, mgnet, unet", name, &k);
    if (st == RB_OK) *kind = (rb_model_kind)k;
    return st;
}

rb_status rb_block_kind_parse(rb_context *ctx, const char *name, rb_block_kind *kind)
{
    int k = 0;
    rb_status st = parse(ctx, "block", block_names, RB_BLOCK_KIND_COUNT, "v1, v2, highway, dense, plain", name, &k);
    if (st == RB_OK) *kind = (rb_block_kind)k;
    return st;
}

rb_model_desc rb_model_desc_default(rb_model_kind kind)
{
    if (kind == RB_MODEL_MLP)
        return (rb_model_desc){.kind = kind, .block = RB_BLOCK_V2, .depth = 4, .width = 32, .in_channels = 1, .in_h = 1,
                               .in_w = 8, .outputs = 1, .h = 1.0, .seed = 1};
    if (kind == RB_MODEL_UNET)
        return (rb_model_desc){.kind = kind, .block = RB_BLOCK_V1, .depth = 0, .width = 8, .in_channels = 2, .in_h = 31,
                               .in_w = 31, .outputs = 31 * 31, .h = 1.0, .seed = 1};
    return (rb_model_desc){.kind = kind, .block = RB_BLOCK_V1, .depth = 0, .width = 16, .in_channels = 1, .in_h = 28,
                           .in_w = 28, .outputs = 10, .h = 1.0, .seed = 1};
}

/* ---- the builder: every helper returns NULL once something failed, freeing what it was given ---- */

typedef struct builder {
    rb_context *ctx;
    rb_status st;
    gsl_rng *rng;
    const rb_model_desc *d;
} builder;

static void free_all(builder *b, rb_op **ops, size_t n)
{
    for (size_t i = 0; i < n; i++) rb_op_free(b->ctx, ops[i]);
}

static int ok_parts(builder *b, rb_op **ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ops[i] == NULL) b->st = b->st == RB_OK ? RB_ENOMEM : b->st;
    if (b->st != RB_OK) free_all(b, ops, n);
    return b->st == RB_OK;
}

static rb_op *chain(builder *b, rb_op **ops, size_t n)
{
    rb_op *op = NULL;
    if (ok_parts(b, ops, n) && (b->st = rb_op_chain_create(b->ctx, ops, n, &op)) != RB_OK) free_all(b, ops, n);
    return op;
}

static rb_op *residual(builder *b, rb_op *F, double h)
{
    rb_op *op = NULL;
    if (ok_parts(b, &F, 1) && (b->st = rb_op_residual_create(b->ctx, F, h, &op)) != RB_OK) rb_op_free(b->ctx, F);
    return op;
}

/* act(x + h F(x)): the residual layer with its post-activation fused (ResNet v1) */
static rb_op *residual_act(builder *b, rb_op *F, double h, rb_activation a)
{
    rb_op *op = NULL;
    if (ok_parts(b, &F, 1) && (b->st = rb_op_residual_act_create(b->ctx, F, h, a, &op)) != RB_OK) rb_op_free(b->ctx, F);
    return op;
}

static rb_op *sum(builder *b, rb_op *P, rb_op *F, double h)
{
    rb_op *op = NULL, *ops[2] = {P, F};
    if (ok_parts(b, ops, 2) && (b->st = rb_op_sum_create(b->ctx, P, F, 1.0, h, &op)) != RB_OK) free_all(b, ops, 2);
    return op;
}

static rb_op *act(builder *b, rb_activation a)
{
    rb_op *op = NULL;
    if (b->st == RB_OK) b->st = rb_op_activation_create(b->ctx, a, &op);
    return op;
}

static rb_op *bn(builder *b, size_t c)
{
    rb_op *op = NULL;
    if (b->st == RB_OK) b->st = rb_op_batchnorm_create(b->ctx, c, 1e-5, 0.1, &op);
    return op;
}

/* BN followed by ReLU, fused into one op (the same numbers as bn() then act(RB_ACT_RELU)). */
static rb_op *bn_relu(builder *b, size_t c)
{
    rb_op *op = NULL;
    if (b->st == RB_OK) b->st = rb_op_batchnorm_relu_create(b->ctx, c, 1e-5, 0.1, &op);
    return op;
}

/* k x k conv (k = 1 or 3), padding k/2, CNN stride convention; He-normal (fan-out) weights, optional bias. */
static rb_op *conv(builder *b, size_t cin, size_t cout, int k, int stride, double bias)
{
    if (b->st != RB_OK) return NULL;
    rb_conv_desc d = rb_conv_desc_default(2, cin, cout);
    d.ksize = k, d.stride = stride, d.grid = RB_GRID_CELL, d.bias = bias != 0;
    rb_op *op = NULL;
    b->st = rb_op_conv_create(b->ctx, &d, NULL, &op);
    if (b->st != RB_OK) return NULL;
    size_t nw = cout * cin * (size_t)(k * k);
    double sd = sqrt(2.0 / (double)(cout * (size_t)(k * k)));
    for (size_t i = 0; i < nw; i++) op->params[i] = gsl_ran_gaussian(b->rng, sd);
    for (size_t i = nw; i < op->nparams; i++) op->params[i] = bias;
    return op;
}

static rb_op *dense(builder *b, size_t in, size_t out)
{
    rb_op *op = NULL;
    if (b->st == RB_OK) b->st = rb_op_dense_create(b->ctx, in, out, true, NULL, &op);
    if (op == NULL) return NULL;
    double bound = 1 / sqrt((double)in);
    for (size_t i = 0; i < op->nparams; i++) op->params[i] = bound * (2 * gsl_rng_uniform(b->rng) - 1);
    return op;
}

/* conv3-BN-ReLU-conv3-BN: the basic block's branch (v1, plain, highway). */
static rb_op *basic_branch(builder *b, size_t cin, size_t cout, int stride)
{
    rb_op *p[4] = {conv(b, cin, cout, 3, stride, 0), bn_relu(b, cout), conv(b, cout, cout, 3, 1, 0), bn(b, cout)};
    return chain(b, p, 4);
}

/* One block from cin to cout channels, stride 1 or 2; *cout_actual for the dense block. */
static rb_op *block(builder *b, rb_block_kind kind, int plain, size_t cin, size_t cout, int stride)
{
    const double h = b->d->h;
    const int identity = cin == cout && stride == 1;
    if (plain) {
        rb_op *p[2] = {basic_branch(b, cin, cout, stride), act(b, RB_ACT_RELU)};
        return chain(b, p, 2);
    }
    if (kind == RB_BLOCK_V2) {
        rb_op *p[4] = {bn_relu(b, cin), conv(b, cin, cout, 3, stride, 0), bn_relu(b, cout), conv(b, cout, cout, 3, 1, 0)};
        rb_op *F = chain(b, p, 4);
        return identity ? residual(b, F, h) : sum(b, conv(b, cin, cout, 1, stride, 0), F, h);
    }
    if (kind == RB_BLOCK_HIGHWAY && identity) {
        rb_op *t[2] = {conv(b, cout, cout, 3, 1, -1.0), act(b, RB_ACT_SIGMOID)}; /* gate starts mostly carrying x */
        rb_op *T = chain(b, t, 2), *F = basic_branch(b, cin, cout, 1), *G = NULL;
        rb_op *gp[2] = {F, T};
        if (ok_parts(b, gp, 2) && (b->st = rb_op_highway_gate_create(b->ctx, F, T, &G)) != RB_OK) free_all(b, gp, 2);
        return residual_act(b, G, 1.0, RB_ACT_RELU);
    }
    /* v1 (and the transitions of highway nets) */
    rb_op *F = basic_branch(b, cin, cout, stride);
    if (identity) return residual_act(b, F, h, RB_ACT_RELU);
    rb_op *s[2] = {conv(b, cin, cout, 1, stride, 0), bn(b, cout)};
    rb_op *p[2] = {sum(b, chain(b, s, 2), F, h), act(b, RB_ACT_RELU)};
    return chain(b, p, 2);
}

/* DenseNet layer: [x, conv3(ReLU(BN(x)))] adds `growth` channels. */
static rb_op *dense_layer(builder *b, size_t cin, size_t growth)
{
    rb_op *p[2] = {bn_relu(b, cin), conv(b, cin, growth, 3, 1, 0)};
    rb_op *F = chain(b, p, 2), *op = NULL;
    if (ok_parts(b, &F, 1) && (b->st = rb_op_concat_create(b->ctx, F, &op)) != RB_OK) rb_op_free(b->ctx, F);
    return op;
}

static rb_status fail_parts(builder *b, size_t need)
{
    return b->st = rb_fail(b->ctx, RB_EINVAL, "rb_model_create: the network needs %zu layers in its top chain, at most %d "
                                              "(lower the depth)", need, RB_PARTS_MAX);
}

static rb_op *conv_net(builder *b)
{
    const rb_model_desc *d = b->d;
    const int plain = d->kind == RB_MODEL_PLAIN || d->block == RB_BLOCK_PLAIN;
    size_t stages = d->depth == 0 ? 2 : 3, per[3], width[3];
    if (d->depth == 0) per[0] = 3, per[1] = 1, width[0] = d->width, width[1] = 2 * d->width;
    else
        for (size_t s = 0; s < 3; s++) per[s] = (d->depth - 2) / 6, width[s] = d->width << s;
    size_t total = 2 + 3; /* stem, pooling, head (+ v2's final BN-ReLU) */
    for (size_t s = 0; s < stages; s++) total += per[s] + (d->block == RB_BLOCK_DENSE ? 1 : 0);
    if (total > RB_PARTS_MAX) {
        fail_parts(b, total);
        return NULL;
    }
    rb_op *ops[RB_PARTS_MAX] = {0};
    size_t n = 0, c = d->width;
    ops[n++] = conv(b, d->in_channels, c, 3, 1, 0);
    ops[n++] = bn_relu(b, c);
    for (size_t s = 0; s < stages; s++)
        for (size_t k = 0; k < per[s]; k++) {
            int stride = s > 0 && k == 0 ? 2 : 1;
            if (d->block == RB_BLOCK_DENSE && !plain) {
                if (k == 0) { /* transition: BN-ReLU-conv1x1 to the stage width (stride 2 after the first stage) */
                    rb_op *t[2] = {bn_relu(b, c), conv(b, c, width[s], 1, stride, 0)};
                    ops[n++] = chain(b, t, 2);
                    c = width[s];
                }
                ops[n++] = dense_layer(b, c, width[s] / 2);
                c += width[s] / 2;
            } else {
                ops[n++] = block(b, d->block, plain, c, width[s], stride);
                c = width[s];
            }
        }
    if (d->block == RB_BLOCK_V2 && !plain) ops[n++] = bn_relu(b, c);
    rb_op *pool = NULL;
    if (b->st == RB_OK) b->st = rb_op_global_avg_pool_create(b->ctx, &pool);
    ops[n++] = pool;
    ops[n++] = dense(b, c, d->outputs);
    return chain(b, ops, n);
}

static rb_op *mlp(builder *b)
{
    const rb_model_desc *d = b->d;
    if (d->depth + 3 > RB_PARTS_MAX) {
        fail_parts(b, d->depth + 3);
        return NULL;
    }
    rb_op *ops[RB_PARTS_MAX] = {0};
    size_t n = 0, w = d->width;
    ops[n++] = dense(b, d->in_channels * d->in_h * d->in_w, w);
    ops[n++] = act(b, RB_ACT_RELU);
    for (size_t k = 0; k < d->depth; k++) {
        rb_op *p[3] = {dense(b, w, w), act(b, RB_ACT_RELU), dense(b, w, w)};
        rb_op *F = chain(b, p, 3);
        ops[n++] = d->block == RB_BLOCK_PLAIN ? F : residual(b, F, d->h);
    }
    ops[n++] = dense(b, w, d->outputs);
    return chain(b, ops, n);
}

static void collect_bn(rb_op *op, void *user)
{
    rb_model *m = user;
    if (rb_op_is_batchnorm(op) && m->nbn < RB_MODEL_MAX_BN) m->bn[m->nbn++] = op;
    else if (rb_op_is_batchnorm(op)) m->nbn = RB_MODEL_MAX_BN + 1; /* too many: refused below */
}

static rb_status check_desc(rb_context *ctx, const rb_model_desc *d)
{
    static const char fn[] = "rb_model_create";
    if ((unsigned)d->kind >= RB_MODEL_KIND_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: unknown model kind %d", fn, (int)d->kind);
    if ((unsigned)d->block >= RB_BLOCK_KIND_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: unknown block kind %d", fn, (int)d->block);
    if (d->width == 0 || d->width > 4096) return rb_fail(ctx, RB_EINVAL, "%s: width = %zu, must be 1..4096", fn, d->width);
    if (d->outputs == 0) return rb_fail(ctx, RB_EINVAL, "%s: outputs = 0", fn);
    if (d->in_channels == 0 || d->in_h == 0 || d->in_w == 0)
        return rb_fail(ctx, RB_EINVAL, "%s: input shape (%zu,%zu,%zu) has a zero extent", fn, d->in_channels, d->in_h, d->in_w);
    if (!isfinite(d->h)) return rb_fail(ctx, RB_EINVAL, "%s: residual step h = %g is not finite", fn, d->h);
    if ((unsigned)d->norm >= RB_NORM_KIND_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: unknown normalisation %d", fn, (int)d->norm);
    if (d->kind != RB_MODEL_MGNET && d->norm != RB_NORM_NONE)
        return rb_fail(ctx, RB_EINVAL, "%s: norm = %s is MgNet's option (the smoothers' normalisation); a %s takes none", fn,
                       rb_norm_kind_name(d->norm), rb_model_kind_name(d->kind));
    if (d->kind == RB_MODEL_MGNET && d->depth > 8)
        return rb_fail(ctx, RB_EINVAL, "%s: depth = %zu; MgNet's depth is its smoothing steps per level, 1..8 (0: 2)", fn, d->depth);
    if (d->kind == RB_MODEL_UNET && (d->depth > 1000 || d->in_h != d->in_w || d->outputs != d->in_h * d->in_w))
        return rb_fail(ctx, RB_EINVAL, "%s: the U-Net maps n x n grids to n x n grids (in %zu x %zu, outputs %zu) with depth = its "
                       "cycles, 1..1000 (0: 2; got %zu)", fn, d->in_h, d->in_w, d->outputs, d->depth);
    if (d->kind != RB_MODEL_MLP && d->kind != RB_MODEL_MGNET && d->kind != RB_MODEL_UNET && d->depth != 0 && (d->depth < 8 || (d->depth - 2) % 6 != 0))
        return rb_fail(ctx, RB_EINVAL, "%s: depth = %zu; conv nets have depth 6n+2 (8, 14, 20, ..., 56) or 0 for the reference", fn,
                       d->depth);
    if (d->kind != RB_MODEL_MLP && d->block == RB_BLOCK_DENSE && d->width < 2)
        return rb_fail(ctx, RB_EINVAL, "%s: dense blocks need width >= 2 (growth = width / 2)", fn);
    return RB_OK;
}

rb_status rb_model_create(rb_context *ctx, const rb_model_desc *desc, rb_model **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (desc == NULL || out == NULL) return rb_fail(ctx, RB_ENULL, "rb_model_create: %s is NULL", desc ? "out" : "desc");
    rb_status st = check_desc(ctx, desc);
    if (st != RB_OK) return st;
    rb_model *m = rb_calloc(ctx, 1, sizeof *m);
    if (m == NULL) return RB_ENOMEM;
    m->desc = *desc;
    builder b = {ctx, RB_OK, gsl_rng_alloc(gsl_rng_mt19937), &m->desc};
    if (b.rng == NULL) {
        rb_free(ctx, m);
        return rb_fail(ctx, RB_ENOMEM, "rb_model_create: cannot allocate a GSL generator");
    }
    gsl_rng_set(b.rng, desc->seed);
    if (desc->kind == RB_MODEL_MGNET) {
        b.st = rb_op_mgnet_create_norm(ctx, desc->in_channels, desc->in_h, desc->in_w, desc->width, desc->depth ? (int)desc->depth : 2,
                                       desc->outputs, desc->norm, desc->seed, &m->net);
    } else if (desc->kind == RB_MODEL_UNET) {
        rb_unet_config c = rb_unet_config_default();
        c.n = desc->in_h, c.levels = 0, c.in_channels = desc->in_channels, c.channels = desc->width, c.out_channels = 1;
        c.batch = RB_MODEL_UNET_BATCH, c.cycles = desc->depth ? (int)desc->depth : 2, c.seed = desc->seed;
        b.st = rb_op_unet_create(ctx, &c, &m->net);
    } else {
        m->net = desc->kind == RB_MODEL_MLP ? mlp(&b) : conv_net(&b);
    }
    gsl_rng_free(b.rng);
    if (b.st != RB_OK || m->net == NULL) {
        rb_free(ctx, m);
        return b.st != RB_OK ? b.st : RB_ENOMEM;
    }
    m->sample = desc->kind == RB_MODEL_MLP ? rb_shape_vec(desc->in_channels * desc->in_h * desc->in_w)
                                           : rb_shape_2d(1, desc->in_channels, desc->in_h, desc->in_w);
    /* every layer's shape must fit: the chain's shape query names the first one that does not */
    rb_shape o;
    st = rb_op_shape(ctx, m->net, m->sample, &o);
    if (st == RB_OK && o.n * o.c * o.d * o.h * o.w != desc->outputs)
        st = rb_fail(ctx, RB_ESHAPE, "rb_model_create: the network ends with %zu values per sample, not %zu", rb_shape_count(o), desc->outputs);
    rb_op_visit(m->net, collect_bn, m);
    const rb_vnet *cycle = rb_op_mgnet_vnet(m->net); /* MgNet's batch norms live in its cycle */
    for (size_t i = 0; i < rb_vnet_nbn(cycle); i++) collect_bn(rb_vnet_bn(cycle, i), m);
    if (st == RB_OK && m->nbn > RB_MODEL_MAX_BN)
        st = rb_fail(ctx, RB_EINVAL, "rb_model_create: more than %d batch-norm layers", RB_MODEL_MAX_BN);
    if (st != RB_OK) {
        rb_model_free(ctx, m);
        return st;
    }
    *out = m;
    return RB_OK;
}

void rb_model_free(rb_context *ctx, rb_model *m)
{
    if (m == NULL) return;
    rb_op_free(ctx, m->net);
    rb_free(ctx, m);
}

rb_status rb_model_set_mode(rb_context *ctx, rb_model *m, rb_bn_mode mode)
{
    if (ctx == NULL) return RB_ENULL;
    if (m == NULL) return rb_fail(ctx, RB_ENULL, "rb_model_set_mode: model is NULL");
    for (size_t i = 0; i < m->nbn; i++) {
        rb_status st = rb_op_batchnorm_set_mode(ctx, m->bn[i], mode);
        if (st != RB_OK) return st;
    }
    return RB_OK;
}

/* ---- NPY export and import ------------------------------------------------------------------------ */

static size_t stat_count(const rb_model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nbn; i++) n += m->bn[i]->nparams;
    return n;
}

static rb_status npy_path(rb_context *ctx, const char *fn, const char *prefix, const char *name, char *buf, size_t len)
{
    if ((size_t)snprintf(buf, len, "%s%s", prefix, name) >= len) return rb_fail(ctx, RB_EINVAL, "%s: prefix too long", fn);
    return RB_OK;
}

rb_status rb_model_export_npy(rb_context *ctx, const rb_model *m, const char *prefix)
{
    static const char fn[] = "rb_model_export_npy";
    if (ctx == NULL) return RB_ENULL;
    if (m == NULL || prefix == NULL) return rb_fail(ctx, RB_ENULL, "%s: model or prefix is NULL", fn);
    char path[4096];
    rb_tensor t;
    rb_status st = npy_path(ctx, fn, prefix, "params.npy", path, sizeof path);
    if (st == RB_OK) st = rb_tensor_view(ctx, &t, m->net->params, rb_shape_vec(m->net->nparams));
    if (st == RB_OK) st = rb_npy_write(ctx, path, &t);
    size_t ns = stat_count(m);
    if (st != RB_OK || ns == 0) return st;
    double *stats = rb_malloc(ctx, ns * sizeof(double)), *p = stats;
    if (stats == NULL) return RB_ENOMEM;
    for (size_t i = 0; i < m->nbn; i++, p += m->bn[i - 1]->nparams)
        memcpy(p, rb_op_batchnorm_running_mean(m->bn[i]), m->bn[i]->nparams * sizeof(double));
    st = npy_path(ctx, fn, prefix, "bn_stats.npy", path, sizeof path);
    if (st == RB_OK) st = rb_tensor_view(ctx, &t, stats, rb_shape_vec(ns));
    if (st == RB_OK) st = rb_npy_write(ctx, path, &t);
    rb_free(ctx, stats);
    return st;
}

/* Read prefix+name and check it holds `count` finite values. */
static rb_status read_vector(rb_context *ctx, const char *fn, const char *prefix, const char *name, size_t count,
                             rb_tensor *t)
{
    char path[4096];
    rb_status st = npy_path(ctx, fn, prefix, name, path, sizeof path);
    if (st == RB_OK) st = rb_npy_read(ctx, path, t);
    if (st != RB_OK) return st;
    if (rb_tensor_count(t) != count) {
        st = rb_fail(ctx, RB_ESHAPE, "%s: '%s' holds %zu values, the model needs %zu", fn, path, rb_tensor_count(t), count);
    } else {
        for (size_t i = 0; i < count; i++)
            if (!isfinite(t->data[i])) {
                st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': value %zu is not finite", fn, path, i);
                break;
            }
    }
    if (st != RB_OK) rb_tensor_release(ctx, t);
    return st;
}

rb_status rb_model_import_npy(rb_context *ctx, rb_model *m, const char *prefix)
{
    static const char fn[] = "rb_model_import_npy";
    if (ctx == NULL) return RB_ENULL;
    if (m == NULL || prefix == NULL) return rb_fail(ctx, RB_ENULL, "%s: model or prefix is NULL", fn);
    rb_tensor p = {0}, s = {0};
    size_t ns = stat_count(m);
    rb_status st = read_vector(ctx, fn, prefix, "params.npy", m->net->nparams, &p);
    if (st == RB_OK && ns > 0) st = read_vector(ctx, fn, prefix, "bn_stats.npy", ns, &s);
    if (st == RB_OK) { /* both read and checked: now change the model */
        memcpy(m->net->params, p.data, m->net->nparams * sizeof(double));
        const double *q = s.data;
        for (size_t i = 0; i < m->nbn; i++, q += m->bn[i - 1]->nparams)
            memcpy(rb_op_batchnorm_running_mean(m->bn[i]), q, m->bn[i]->nparams * sizeof(double));
    }
    rb_tensor_release(ctx, &p);
    rb_tensor_release(ctx, &s);
    return st;
}
