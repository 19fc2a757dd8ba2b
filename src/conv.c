/* conv.c — stencils and convolutions as rb_ops, written once.
 *
 * Three loops carry all of it, for every dimension, stride, convention and
 * channel count: gather (plain forward, transposed input-gradient), scatter
 * (plain input-gradient, transposed forward; written as a gather over fine
 * points, so it parallelises without races) and the weight gradient.
 */
#include "conv_internal.h"
#include "grid_fast.h" /* rb_transfer_fast_apply: stride-2 single-channel transfers */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- descriptor ------------------------------------------------------------------------- */

rb_conv_desc rb_conv_desc_default(int dims, size_t cin, size_t cout)
{
    rb_conv_desc d = {dims, cin, cout, 3, RB_STENCIL_FULL, 1, RB_GRID_VERTEX, false, false};
    return d;
}

rb_status rb_conv_desc_check(rb_context *ctx, const rb_conv_desc *d)
{
    if (d == NULL) return rb_fail(ctx, RB_ENULL, "conv descriptor is NULL");
    if (d->dims < 1 || d->dims > 3) return rb_fail(ctx, RB_EINVAL, "conv desc.dims = %d, must be 1, 2 or 3", d->dims);
    if (d->cin < 1 || d->cout < 1)
        return rb_fail(ctx, RB_EINVAL, "conv desc.cin = %zu, desc.cout = %zu: channels must be >= 1", d->cin, d->cout);
    if (d->cin > 65536 || d->cout > 65536)
        return rb_fail(ctx, RB_EINVAL, "conv desc.cin = %zu, desc.cout = %zu: more than 65536 channels", d->cin,
                       d->cout);
    if (d->ksize != 1 && d->ksize != 3) return rb_fail(ctx, RB_EINVAL, "conv desc.ksize = %d, must be 1 or 3", d->ksize);
    if ((unsigned)d->pattern >= RB_STENCIL_COUNT)
        return rb_fail(ctx, RB_EINVAL, "conv desc.pattern = %d is not an rb_stencil", (int)d->pattern);
    if (d->pattern == RB_STENCIL_STAR && d->ksize != 3)
        return rb_fail(ctx, RB_EINVAL, "conv desc.pattern = STAR needs desc.ksize = 3, got %d", d->ksize);
    if (d->stride != 1 && d->stride != 2) return rb_fail(ctx, RB_EINVAL, "conv desc.stride = %d, must be 1 or 2", d->stride);
    if ((unsigned)d->grid >= RB_GRID_COUNT)
        return rb_fail(ctx, RB_EINVAL, "conv desc.grid = %d is not an rb_grid", (int)d->grid);
    return RB_OK;
}

/* Fills tap offsets; returns the count. */
static int make_taps(const rb_conv_desc *d, int tap[RB_CONV_MAX_TAPS][3])
{
    int r = d->ksize / 2, n = 0;
    int rz = d->dims >= 3 ? r : 0, ry = d->dims >= 2 ? r : 0;
    for (int dz = -rz; dz <= rz; dz++)
        for (int dy = -ry; dy <= ry; dy++)
            for (int dx = -r; dx <= r; dx++) {
                if (d->pattern == RB_STENCIL_STAR && abs(dz) + abs(dy) + abs(dx) > 1) continue;
                tap[n][0] = dz, tap[n][1] = dy, tap[n][2] = dx;
                n++;
            }
    return n;
}

size_t rb_conv_ntaps(const rb_conv_desc *d)
{
    int tap[RB_CONV_MAX_TAPS][3];
    if (d == NULL || rb_conv_desc_check(NULL, d) != RB_OK) return 0;
    return (size_t)make_taps(d, tap);
}

size_t rb_conv_nparams(const rb_conv_desc *d)
{
    size_t taps = rb_conv_ntaps(d);
    if (taps == 0) return 0;
    return d->cin * d->cout * taps + (d->bias ? d->cout : 0);
}

/* Extent of the fine grid -> coarse grid for a plain conv. */
static rb_status coarse_extent(rb_context *ctx, const rb_conv_desc *d, size_t n, size_t *out)
{
    if (n < 1) return rb_fail(ctx, RB_ESHAPE, "grid extent 0");
    if (d->stride == 1) {
        *out = n;
    } else if (d->grid == RB_GRID_VERTEX) {
        if (n < 3 || n % 2 == 0)
            return rb_fail(ctx, RB_ESHAPE,
                           "vertex-centred stride-2 conv needs n = 2k+1 points (k >= 1) per direction, got n = %zu", n);
        *out = (n - 1) / 2;
    } else {
        *out = (n + 1) / 2;
    }
    return RB_OK;
}

/* Coarse extent -> fine extent (what a transposed conv produces). */
static size_t fine_extent(const rb_conv_desc *d, size_t k)
{
    if (d->stride == 1) return k;
    return d->grid == RB_GRID_VERTEX ? 2 * k + 1 : 2 * k;
}

rb_status rb_conv_out_extent(rb_context *ctx, const rb_conv_desc *d, size_t n, size_t *out)
{
    rb_status st = rb_conv_desc_check(ctx, d);
    if (st != RB_OK) return st;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_conv_out_extent: out is NULL");
    if (n < 1) return rb_fail(ctx, RB_ESHAPE, "rb_conv_out_extent: extent 0");
    if (d->transposed) {
        *out = fine_extent(d, n);
        return RB_OK;
    }
    return coarse_extent(ctx, d, n, out);
}

/* ---- geometry of one call ------------------------------------------------------------------ */

static rb_status conv_geom(rb_context *ctx, const rb_conv_state *cs, rb_shape in, rb_conv_geom *g, rb_shape *out)
{
    const rb_conv_desc *d = &cs->desc;
    char buf[96];
    if (in.c != d->cin)
        return rb_fail(ctx, RB_ESHAPE, "conv expects %zu input channels, input %s has %zu", d->cin,
                       rb_shape_format(in, buf, sizeof buf), in.c);
    size_t ext[3] = {in.d, in.h, in.w}, res[3];
    for (int k = 0; k < 3; k++) {
        bool active = k >= 3 - d->dims;
        if (!active) {
            if (ext[k] != 1)
                return rb_fail(ctx, RB_ESHAPE, "%dD conv: input %s must have extent 1 in dimension %c", d->dims,
                               rb_shape_format(in, buf, sizeof buf), "DHW"[k]);
            res[k] = 1;
            g->s[k] = 1, g->off[k] = 0;
            continue;
        }
        g->s[k] = d->stride;
        g->off[k] = (d->stride == 2 && d->grid == RB_GRID_VERTEX) ? 1 : 0;
        if (d->transposed) {
            res[k] = fine_extent(d, ext[k]);
        } else {
            rb_status st = coarse_extent(ctx, d, ext[k], &res[k]);
            if (st != RB_OK) {
                char msg[256];
                snprintf(msg, sizeof msg, "%s", rb_context_message(ctx));
                return rb_fail(ctx, RB_ESHAPE, "input %s, dimension %c: %s", rb_shape_format(in, buf, sizeof buf),
                               "DHW"[k], msg);
            }
        }
    }
    const size_t *fine = d->transposed ? res : ext, *coarse = d->transposed ? ext : res;
    g->n = in.n;
    g->cf = d->transposed ? d->cout : d->cin;
    g->cc = d->transposed ? d->cin : d->cout;
    g->fd = fine[0], g->fh = fine[1], g->fw = fine[2];
    g->cd = coarse[0], g->ch = coarse[1], g->cw = coarse[2];
    if (out != NULL) *out = (rb_shape){in.n, d->cout, res[0], res[1], res[2]};
    return RB_OK;
}

/* ---- the three loops --------------------------------------------------------------------- */

void rb_conv_gather(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                    const double *bias, const double *fine, double alpha, double beta, double *coarse)
{
    const size_t fsz = g->fd * g->fh * g->fw, csz = g->cd * g->ch * g->cw;
    const int nt = cs->ntaps;
    const long long jobs = (long long)(g->n * g->cc);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long long job = 0; job < jobs; job++) {
        size_t n = (size_t)job / g->cc, co = (size_t)job % g->cc;
        double *out = coarse + (n * g->cc + co) * csz;
        for (size_t z = 0; z < g->cd; z++)
            for (size_t y = 0; y < g->ch; y++)
                for (size_t x = 0; x < g->cw; x++) {
                    long long pz0 = (long long)(g->s[0] * z) + g->off[0];
                    long long py0 = (long long)(g->s[1] * y) + g->off[1];
                    long long px0 = (long long)(g->s[2] * x) + g->off[2];
                    double acc = 0.0;
                    for (size_t ci = 0; ci < g->cf; ci++) {
                        const double *in = fine + (n * g->cf + ci) * fsz;
                        const double *wk = w + (co * g->cf + ci) * (size_t)nt;
                        for (int t = 0; t < nt; t++) {
                            long long pz = pz0 + cs->tap[t][0], py = py0 + cs->tap[t][1], px = px0 + cs->tap[t][2];
                            if (pz < 0 || py < 0 || px < 0 || pz >= (long long)g->fd || py >= (long long)g->fh ||
                                px >= (long long)g->fw)
                                continue;
                            acc += wk[t] * in[((size_t)pz * g->fh + (size_t)py) * g->fw + (size_t)px];
                        }
                    }
                    size_t o = (z * g->ch + y) * g->cw + x;
                    double v = alpha * acc + (bias != NULL ? bias[co] : 0.0);
                    out[o] = beta == 0.0 ? v : beta * out[o] + v;
                }
    }
}

/* Coarse index o with s*o + off + t = p, if any. */
static inline bool coarse_index(long long p, int s, int off, int t, size_t extent, size_t *o)
{
    long long q = p - off - t;
    if (q < 0) return false;
    if (s == 2) {
        if (q & 1) return false;
        q >>= 1;
    }
    if (q >= (long long)extent) return false;
    *o = (size_t)q;
    return true;
}

void rb_conv_scatter(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                     const double *bias, const double *coarse, double alpha, double beta, double *fine)
{
    const size_t fsz = g->fd * g->fh * g->fw, csz = g->cd * g->ch * g->cw;
    const int nt = cs->ntaps;
    const long long jobs = (long long)(g->n * g->cf);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long long job = 0; job < jobs; job++) {
        size_t n = (size_t)job / g->cf, ci = (size_t)job % g->cf;
        double *out = fine + (n * g->cf + ci) * fsz;
        for (size_t z = 0; z < g->fd; z++)
            for (size_t y = 0; y < g->fh; y++)
                for (size_t x = 0; x < g->fw; x++) {
                    double acc = 0.0;
                    for (int t = 0; t < nt; t++) {
                        size_t oz, oy, ox;
                        if (!coarse_index((long long)z, g->s[0], g->off[0], cs->tap[t][0], g->cd, &oz) ||
                            !coarse_index((long long)y, g->s[1], g->off[1], cs->tap[t][1], g->ch, &oy) ||
                            !coarse_index((long long)x, g->s[2], g->off[2], cs->tap[t][2], g->cw, &ox))
                            continue;
                        size_t o = (oz * g->ch + oy) * g->cw + ox;
                        for (size_t co = 0; co < g->cc; co++)
                            acc += w[(co * g->cf + ci) * (size_t)nt + (size_t)t] * coarse[(n * g->cc + co) * csz + o];
                    }
                    size_t p = (z * g->fh + y) * g->fw + x;
                    double v = alpha * acc + (bias != NULL ? bias[ci] : 0.0);
                    out[p] = beta == 0.0 ? v : beta * out[p] + v;
                }
    }
}

void rb_conv_weight_grad(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *fine,
                         const double *coarse, double alpha, double *dw)
{
    const size_t fsz = g->fd * g->fh * g->fw, csz = g->cd * g->ch * g->cw;
    const int nt = cs->ntaps;
    const long long jobs = (long long)(g->cc * g->cf);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long long job = 0; job < jobs; job++) {
        size_t co = (size_t)job / g->cf, ci = (size_t)job % g->cf;
        for (int t = 0; t < nt; t++) {
            double acc = 0.0;
            for (size_t n = 0; n < g->n; n++) {
                const double *in = fine + (n * g->cf + ci) * fsz;
                const double *dy = coarse + (n * g->cc + co) * csz;
                for (size_t z = 0; z < g->cd; z++)
                    for (size_t y = 0; y < g->ch; y++)
                        for (size_t x = 0; x < g->cw; x++) {
                            long long pz = (long long)(g->s[0] * z) + g->off[0] + cs->tap[t][0];
                            long long py = (long long)(g->s[1] * y) + g->off[1] + cs->tap[t][1];
                            long long px = (long long)(g->s[2] * x) + g->off[2] + cs->tap[t][2];
                            if (pz < 0 || py < 0 || px < 0 || pz >= (long long)g->fd || py >= (long long)g->fh ||
                                px >= (long long)g->fw)
                                continue;
                            acc += dy[(z * g->ch + y) * g->cw + x] *
                                   in[((size_t)pz * g->fh + (size_t)py) * g->fw + (size_t)px];
                        }
            }
            dw[(co * g->cf + ci) * (size_t)nt + (size_t)t] += alpha * acc;
        }
    }
}

/* Sum of dy over everything but channel c, into db[c] (scaled). */
static void bias_grad(const rb_tensor *dy, double alpha, double *db)
{
    size_t sp = dy->shape.d * dy->shape.h * dy->shape.w;
    for (size_t c = 0; c < dy->shape.c; c++) {
        double acc = 0.0;
        for (size_t n = 0; n < dy->shape.n; n++) {
            const double *p = dy->data + (n * dy->shape.c + c) * sp;
            for (size_t i = 0; i < sp; i++) acc += p[i];
        }
        db[c] += alpha * acc;
    }
}

/* ---- the op ------------------------------------------------------------------------------ */

const rb_conv_state *rb_conv_state_of(const rb_op *op);

static rb_status conv_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    rb_conv_geom g;
    return conv_geom(ctx, op->state, in, &g, out);
}

static const double *conv_bias(const rb_op *op)
{
    const rb_conv_state *cs = op->state;
    return cs->desc.bias ? op->params + cs->desc.cin * cs->desc.cout * (size_t)cs->ntaps : NULL;
}

rb_status rb_conv_geometry(rb_context *ctx, const rb_op *op, rb_shape in, rb_conv_geom *g, rb_shape *out)
{
    const rb_conv_state *cs = rb_conv_state_of(op);
    if (cs == NULL) return rb_fail(ctx, RB_EINVAL, "rb_conv_geometry: op is not a conv");
    return conv_geom(ctx, cs, in, g, out);
}

/* Doubles on the coarse grid of one call. */
static size_t coarse_count(const rb_conv_geom *g) { return g->n * g->cc * g->cd * g->ch * g->cw; }

static size_t conv_workspace(const rb_op *op, rb_shape in)
{
    const rb_conv_state *cs = op->state;
    rb_conv_geom g;
    if (conv_geom(NULL, cs, in, &g, NULL) != RB_OK) return 0;
    size_t ws = rb_conv_gemm_workspace(cs, &g);
    /* a transposed conv's vjp runs the GEMM forward into a coarse-grid temporary */
    if (ws > 0 && cs->desc.transposed) ws += rb_arena_bytes(coarse_count(&g) * sizeof(double));
    return ws;
}

/* y[n][c] += bias[c] over each channel's points. */
static void add_bias(rb_tensor *y, const double *bias)
{
    size_t sp = y->shape.d * y->shape.h * y->shape.w;
    for (size_t n = 0; n < y->shape.n; n++)
        for (size_t c = 0; c < y->shape.c; c++) {
            double *p = y->data + (n * y->shape.c + c) * sp;
            for (size_t i = 0; i < sp; i++) p[i] += bias[c];
        }
}

/* Transposed conv vjp, dx += alpha * gather(dy), through the GEMM forward into a temporary
 * taken from work. False (nothing changed) when the fast path declines. */
static bool transposed_vjp_gemm(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                                const double *dy, double alpha, double *dx, rb_arena *work)
{
    size_t count = coarse_count(g), bytes = rb_arena_bytes(count * sizeof(double)), ws = rb_conv_gemm_workspace(cs, g);
    if (work == NULL || ws == 0) return false;
    size_t mark = rb_arena_mark(work);
    if (work->measuring) { /* a dry run: count the temporary and the forward's scratch */
        (void)rb_arena_alloc(ctx, work, bytes + ws);
        rb_arena_reset(work, mark);
        return false;
    }
    if (work->cap < work->used || work->cap - work->used < bytes) return false;
    double *tmp = rb_arena_alloc(ctx, work, count * sizeof(double));
    bool done = rb_conv_gemm_forward(ctx, cs, g, w, NULL, dy, tmp, work);
    if (done)
        for (size_t i = 0; i < count; i++) dx[i] += alpha * tmp[i];
    rb_arena_reset(work, mark);
    return done;
}

static rb_status conv_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    const rb_conv_state *cs = op->state;
    rb_conv_geom g;
    rb_status st = conv_geom(ctx, cs, x->shape, &g, NULL);
    if (st != RB_OK) return st;
    int threads = rb_context_threads(ctx);
    if (rb_transfer_fast_apply(ctx, cs, &g, op->params, x->data, y->data)) return RB_OK;
    if (!cs->desc.transposed) {
        if (rb_stencil_fast_forward(ctx, cs, &g, op->params, x->data, y->data)) return RB_OK;
        if (rb_conv_gemm_forward(ctx, cs, &g, op->params, conv_bias(op), x->data, y->data, work)) return RB_OK;
    }
    if (cs->desc.transposed && rb_conv_gemm_workspace(cs, &g) > 0) {
        /* transposed forward = plain backward-data into a zeroed output, then the bias */
        memset(y->data, 0, rb_tensor_count(y) * sizeof(double));
        if (rb_conv_gemm_backward_data(ctx, cs, &g, op->params, x->data, 1.0, 1.0, y->data, work)) {
            if (conv_bias(op) != NULL) add_bias(y, conv_bias(op));
            return RB_OK;
        }
    }
    if (cs->desc.transposed)
        rb_conv_scatter(threads, cs, &g, op->params, conv_bias(op), x->data, 1.0, 0.0, y->data);
    else
        rb_conv_gather(threads, cs, &g, op->params, conv_bias(op), x->data, 1.0, 0.0, y->data);
    return RB_OK;
}

/* dx = beta dx + alpha J^T dy, beta 0 or 1 (0: dx is not read). */
static rb_status conv_vjp_beta(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                               double beta, rb_tensor *dx, rb_arena *work)
{
    const rb_conv_state *cs = op->state;
    rb_conv_geom g;
    rb_status st = conv_geom(ctx, cs, x->shape, &g, NULL);
    if (st != RB_OK) return st;
    int threads = rb_context_threads(ctx);
    if (!cs->desc.transposed &&
        rb_conv_gemm_backward_data(ctx, cs, &g, op->params, dy->data, alpha, beta, dx->data, work))
        return RB_OK;
    if (cs->desc.transposed && beta == 0.0) memset(dx->data, 0, rb_tensor_count(dx) * sizeof(double));
    if (cs->desc.transposed && transposed_vjp_gemm(ctx, cs, &g, op->params, dy->data, alpha, dx->data, work))
        return RB_OK;
    if (cs->desc.transposed)
        rb_conv_gather(threads, cs, &g, op->params, NULL, dy->data, alpha, 1.0, dx->data);
    else
        rb_conv_scatter(threads, cs, &g, op->params, NULL, dy->data, alpha, beta, dx->data);
    return RB_OK;
}

static rb_status conv_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                          rb_tensor *dx, rb_arena *work)
{
    return conv_vjp_beta(ctx, op, x, dy, alpha, 1.0, dx, work);
}

static rb_status conv_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                 double alpha, double *dparams, rb_arena *work)
{
    const rb_conv_state *cs = op->state;
    rb_conv_geom g;
    rb_status st = conv_geom(ctx, cs, x->shape, &g, NULL);
    if (st != RB_OK) return st;
    int threads = rb_context_threads(ctx);
    const double *fine = cs->desc.transposed ? dy->data : x->data;
    const double *coarse = cs->desc.transposed ? x->data : dy->data;
    if (!(rb_conv_gemm_backward_weight(ctx, cs, &g, fine, coarse, alpha, dparams, work)))
        rb_conv_weight_grad(threads, cs, &g, fine, coarse, alpha, dparams);
    if (cs->desc.bias) bias_grad(dy, alpha, dparams + cs->desc.cin * cs->desc.cout * (size_t)cs->ntaps);
    return RB_OK;
}

/* The backward pass with dx overwritten: the parameter gradient, then dx = alpha J^T dy. */
static rb_status conv_backward_overwrite(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                         const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx,
                                         double *dparams, rb_arena *work)
{
    (void)y, (void)tape;
    rb_status st = dparams != NULL ? conv_param_grad(ctx, op, x, dy, alpha, dparams, work) : RB_OK;
    return st == RB_OK ? conv_vjp_beta(ctx, op, x, dy, alpha, 0.0, dx, work) : st;
}

static void conv_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type conv_type = {
    .name = "conv",
    .flags = RB_OP_HAS_PARAMS,
    .shape = conv_shape,
    .workspace = conv_workspace,
    .apply = conv_apply,
    .vjp = conv_vjp,
    .param_grad = conv_param_grad,
    .backward_overwrite = conv_backward_overwrite,
    .destroy = conv_destroy,
};

static const rb_op_type conv_type_linear = {
    .name = "conv (no bias)",
    .flags = RB_OP_HAS_PARAMS | RB_OP_LINEAR,
    .shape = conv_shape,
    .workspace = conv_workspace,
    .apply = conv_apply,
    .vjp = conv_vjp,
    .param_grad = conv_param_grad,
    .backward_overwrite = conv_backward_overwrite,
    .destroy = conv_destroy,
};

const rb_conv_state *rb_conv_state_of(const rb_op *op)
{
    if (op == NULL || (op->type != &conv_type && op->type != &conv_type_linear)) return NULL;
    return op->state;
}

const rb_conv_desc *rb_op_conv_desc(const rb_op *op)
{
    const rb_conv_state *cs = rb_conv_state_of(op);
    return cs ? &cs->desc : NULL;
}

rb_status rb_op_conv_create(rb_context *ctx, const rb_conv_desc *desc, const double *params, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_conv_create: out is NULL");
    rb_status st = rb_conv_desc_check(ctx, desc);
    if (st != RB_OK) return st;
    rb_conv_state *cs = rb_calloc(ctx, 1, sizeof *cs);
    if (cs == NULL) return RB_ENOMEM;
    cs->desc = *desc;
    cs->ntaps = make_taps(desc, cs->tap);
    size_t np = rb_conv_nparams(desc);
    if (params != NULL)
        for (size_t i = 0; i < np; i++)
            if (!isfinite(params[i])) {
                rb_free(ctx, cs);
                return rb_fail(ctx, RB_EINVAL, "rb_op_conv_create: params[%zu] = %g is not finite", i, params[i]);
            }
    rb_op *op;
    st = rb_op_new(ctx, desc->bias ? &conv_type : &conv_type_linear, cs, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, cs);
        return st;
    }
    if (params != NULL) memcpy(op->params, params, np * sizeof(double));
    *out = op;
    return RB_OK;
}

rb_status rb_op_stencil_create(rb_context *ctx, int dims, rb_stencil pattern, const double *weights, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (weights == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_stencil_create: weights is NULL");
    rb_conv_desc d = rb_conv_desc_default(dims, 1, 1);
    d.pattern = pattern;
    return rb_op_conv_create(ctx, &d, weights, out);
}

rb_status rb_op_laplacian_create(rb_context *ctx, int dims, double h, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (!(h > 0.0) || !isfinite(h)) return rb_fail(ctx, RB_EINVAL, "rb_op_laplacian_create: mesh width h = %g must be positive and finite", h);
    if (dims < 1 || dims > 3) return rb_fail(ctx, RB_EINVAL, "rb_op_laplacian_create: dims = %d, must be 1, 2 or 3", dims);
    double w[7];
    double inv = 1.0 / (h * h);
    int taps = 2 * dims + 1, centre = dims;
    for (int t = 0; t < taps; t++) w[t] = t == centre ? 2.0 * dims * inv : -inv;
    return rb_op_stencil_create(ctx, dims, RB_STENCIL_STAR, w, out);
}
