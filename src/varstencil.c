/* varstencil.c — point-dependent single-channel stencils (see varstencil.h). */
#include "resbridge/varstencil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv_internal.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

typedef struct vs_state {
    int dims, ntaps, centre;
    int tap[RB_CONV_MAX_TAPS][3];
    rb_shape grid;
    size_t points;
} vs_state;

static rb_status vs_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out)
{
    const vs_state *vs = op->state;
    if (in.c != 1 || in.d != vs->grid.d || in.h != vs->grid.h || in.w != vs->grid.w) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "varstencil on grid %s cannot take input %s (one channel, same grid)",
                       rb_shape_format(vs->grid, a, sizeof a), rb_shape_format(in, b, sizeof b));
    }
    *out = in;
    return RB_OK;
}

/* Neighbour p + tap inside the grid? Its linear index in *q. */
static inline bool neighbour(const vs_state *vs, size_t z, size_t y, size_t x, int t, size_t *q)
{
    long long nz = (long long)z + vs->tap[t][0], ny = (long long)y + vs->tap[t][1], nx = (long long)x + vs->tap[t][2];
    if (nz < 0 || ny < 0 || nx < 0 || nz >= (long long)vs->grid.d || ny >= (long long)vs->grid.h ||
        nx >= (long long)vs->grid.w)
        return false;
    *q = ((size_t)nz * vs->grid.h + (size_t)ny) * vs->grid.w + (size_t)nx;
    return true;
}

/* Point p = (z, y, x) of one row, every tap checked against the grid:
 *   apply: out[p] = sum_t W[t][p] in[p + tap_t]                 (beta = 0, alpha = 1)
 *   vjp:   out[q] += alpha sum_t W[t][q - tap_t] in[q - tap_t]  (adjoint: weights of the source point)
 * The taps are symmetric in order (tap[ntaps-1-t] = -tap[t]), so the adjoint
 * reaches q - tap_t through tap ntaps-1-t. */
static inline void gather_point(const vs_state *vs, const double *W, const double *src, double alpha, bool adjoint,
                                double *drow, size_t z, size_t yy, size_t xx)
{
    size_t p = (z * vs->grid.h + yy) * vs->grid.w + xx, q;
    double acc = 0.0;
    for (int t = 0; t < vs->ntaps; t++) {
        if (!neighbour(vs, z, yy, xx, adjoint ? vs->ntaps - 1 - t : t, &q)) continue;
        acc += W[(size_t)t * vs->points + (adjoint ? q : p)] * src[q];
    }
    drow[xx] = adjoint ? drow[xx] + alpha * acc : acc;
}

/* `count` points of a row whose taps all lie inside the grid: the same sums in the same
 * order as gather_point, eight points at a time (the compiler keeps the eight sums in vector
 * registers across the taps: rb_tap_sums), so both agree bit for bit. w[t], s[t]: the weights and the
 * input that tap t reads for the first point; dst: the first point's output; ahead: how far
 * (in doubles) to prefetch each weight stream, 0 for not at all. */
static void gather_interior(int ntaps, const double *const *w, const double *const *s, size_t count, double alpha,
                            bool adjoint, double *dst, size_t ahead)
{
    size_t x = 0;
    for (; x + RB_TAP_LANES <= count; x += RB_TAP_LANES) {
        double acc[RB_TAP_LANES];
        rb_tap_sums(ntaps, w, s, x, ahead, acc);
        if (adjoint)
            for (int i = 0; i < RB_TAP_LANES; i++) dst[x + (size_t)i] = dst[x + (size_t)i] + alpha * acc[i];
        else
            for (int i = 0; i < RB_TAP_LANES; i++) dst[x + (size_t)i] = acc[i];
    }
    for (; x < count; x++) {
        double acc = 0.0;
        for (int t = 0; t < ntaps; t++) acc += w[t][x] * s[t][x];
        dst[x] = adjoint ? dst[x] + alpha * acc : acc;
    }
}

/* One gather for both products (gather_point), parallel over rows of (sample, z, y). Rows
 * whose neighbour rows and planes all lie inside the grid run their interior points
 * through gather_interior; the rest point by point. */
/* Row (z, yy) of one sample (src: its input; drow: the row's output). */
static void gather_row(const vs_state *vs, const double *W, const double *src, double alpha, bool adjoint, double *drow,
                       size_t z, size_t yy)
{
    const size_t D = vs->grid.d, H = vs->grid.h, Wd = vs->grid.w;
    const bool inside = (vs->dims < 3 || (z > 0 && z + 1 < D)) && (vs->dims < 2 || (yy > 0 && yy + 1 < H));
    if (!inside || Wd < 3) {
        for (size_t xx = 0; xx < Wd; xx++) gather_point(vs, W, src, alpha, adjoint, drow, z, yy, xx);
        return;
    }
    const size_t p1 = (z * H + yy) * Wd + 1; /* the row's point x = 1 */
    const double *w[RB_CONV_MAX_TAPS] = {NULL}, *s[RB_CONV_MAX_TAPS] = {NULL};
    for (int t = 0; t < vs->ntaps; t++) {
        const int r = adjoint ? vs->ntaps - 1 - t : t;
        const long long off = ((long long)vs->tap[r][0] * (long long)H + vs->tap[r][1]) * (long long)Wd + vs->tap[r][2];
        const size_t q1 = (size_t)((long long)p1 + off);
        s[t] = src + q1;
        w[t] = W + (size_t)t * vs->points + (adjoint ? q1 : p1);
    }
    gather_point(vs, W, src, alpha, adjoint, drow, z, yy, 0);
    gather_interior(vs->ntaps, w, s, Wd - 2, alpha, adjoint, drow + 1, rb_weight_prefetch_ahead(vs->ntaps, Wd));
    gather_point(vs, W, src, alpha, adjoint, drow, z, yy, Wd - 1);
}

static void vs_gather(rb_context *ctx, const vs_state *vs, const double *W, size_t batch, const double *in, double alpha,
                      bool adjoint, double *out)
{
    const size_t D = vs->grid.d, H = vs->grid.h;
    const long long total = (long long)(batch * D * H);
    const int threads = rb_context_threads(ctx);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && total >= 64)
    for (long long row = 0; row < total; row++) {
        size_t n = (size_t)row / (D * H), zy = (size_t)row % (D * H);
        gather_row(vs, W, in + n * vs->points, alpha, adjoint, out + n * vs->points + zy * vs->grid.w, zy / H, zy % H);
    }
}

void rb_varstencil_residual_line(const rb_op *A, int line_dims, const double *u, const double *f, size_t n, size_t l,
                                 size_t y0, size_t y1, double *r_line)
{
    const vs_state *vs = A->state;
    const size_t H = vs->grid.h, Wd = vs->grid.w, z = line_dims == 3 ? l : 0;
    const size_t first = line_dims == 3 ? y0 : 0, end = line_dims == 3 ? (y1 < H ? y1 : H) : 1;
    const double *src = u + n * vs->points;
    for (size_t i = first; i < end; i++) {
        const size_t yy = line_dims == 3 ? i : l, off = n * vs->points + (z * H + yy) * Wd;
        double *r = r_line + i * Wd;
        gather_row(vs, A->params, src, 1.0, false, r, z, yy);
        for (size_t x = 0; x < Wd; x++) r[x] = f[off + x] - r[x];
    }
}

static rb_status vs_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work)
{
    (void)work;
    vs_gather(ctx, op->state, op->params, x->shape.n, x->data, 1.0, false, y->data);
    return RB_OK;
}

static rb_status vs_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                        rb_tensor *dx, rb_arena *work)
{
    (void)work;
    vs_gather(ctx, op->state, op->params, x->shape.n, dy->data, alpha, true, dx->data);
    return RB_OK;
}

static rb_status vs_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                               double *dW, rb_arena *work)
{
    (void)ctx, (void)work;
    const vs_state *vs = op->state;
    for (size_t n = 0; n < x->shape.n; n++) {
        const double *xs = x->data + n * vs->points, *g = dy->data + n * vs->points;
        for (size_t z = 0; z < vs->grid.d; z++)
            for (size_t yy = 0; yy < vs->grid.h; yy++)
                for (size_t xx = 0; xx < vs->grid.w; xx++) {
                    size_t p = (z * vs->grid.h + yy) * vs->grid.w + xx, q;
                    for (int t = 0; t < vs->ntaps; t++)
                        if (neighbour(vs, z, yy, xx, t, &q)) dW[(size_t)t * vs->points + p] += alpha * g[p] * xs[q];
                }
    }
    return RB_OK;
}

static void vs_destroy(rb_context *ctx, rb_op *op) { rb_free(ctx, op->state); }

static const rb_op_type vs_type = {
    .name = "varstencil",
    .flags = RB_OP_LINEAR | RB_OP_HAS_PARAMS | RB_OP_SAME_SHAPE,
    .shape = vs_shape,
    .apply = vs_apply,
    .vjp = vs_vjp,
    .param_grad = vs_param_grad,
    .destroy = vs_destroy,
};

bool rb_varstencil_on(const rb_op *A, rb_shape s)
{
    const vs_state *vs = A != NULL && A->type == &vs_type ? A->state : NULL;
    return vs != NULL && s.c == 1 && s.d == vs->grid.d && s.h == vs->grid.h && s.w == vs->grid.w;
}


bool rb_op_varstencil_info(const rb_op *op, int *dims, int *ntaps, int *centre, rb_shape *grid)
{
    if (op == NULL || op->type != &vs_type) return false;
    const vs_state *vs = op->state;
    if (dims) *dims = vs->dims;
    if (ntaps) *ntaps = vs->ntaps;
    if (centre) *centre = vs->centre;
    if (grid) *grid = vs->grid;
    return true;
}

const int (*rb_varstencil_taps(const rb_op *op))[3]
{
    if (op == NULL || op->type != &vs_type) return NULL;
    const vs_state *vs = op->state;
    return vs->tap;
}

rb_status rb_op_varstencil_create(rb_context *ctx, int dims, rb_stencil pattern, rb_shape grid, const double *weights,
                                  rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_varstencil_create: out is NULL");
    rb_conv_desc d = rb_conv_desc_default(dims, 1, 1);
    d.pattern = pattern;
    rb_status st = rb_conv_desc_check(ctx, &d);
    if (st != RB_OK) return st;
    grid.n = grid.c = 1;
    size_t points = rb_shape_count(grid);
    if (points == 0) return rb_fail(ctx, RB_EINVAL, "rb_op_varstencil_create: grid has a zero dimension");
    if ((dims < 3 && grid.d != 1) || (dims < 2 && grid.h != 1))
        return rb_fail(ctx, RB_ESHAPE, "rb_op_varstencil_create: a %dD stencil needs extent 1 in the unused dimensions", dims);
    vs_state *vs = rb_calloc(ctx, 1, sizeof *vs);
    if (vs == NULL) return RB_ENOMEM;
    /* the same tap order as the conv op */
    int r = 1, n = 0;
    int rz = dims >= 3 ? r : 0, ry = dims >= 2 ? r : 0;
    for (int dz = -rz; dz <= rz; dz++)
        for (int dy = -ry; dy <= ry; dy++)
            for (int dx = -r; dx <= r; dx++) {
                if (pattern == RB_STENCIL_STAR && abs(dz) + abs(dy) + abs(dx) > 1) continue;
                if (dz == 0 && dy == 0 && dx == 0) vs->centre = n;
                vs->tap[n][0] = dz, vs->tap[n][1] = dy, vs->tap[n][2] = dx;
                n++;
            }
    vs->dims = dims, vs->ntaps = n, vs->grid = grid, vs->points = points;
    size_t np = (size_t)n * points;
    if (weights != NULL)
        for (size_t i = 0; i < np; i++)
            if (!isfinite(weights[i])) {
                rb_free(ctx, vs);
                return rb_fail(ctx, RB_EINVAL, "rb_op_varstencil_create: weights[%zu] = %g is not finite", i, weights[i]);
            }
    rb_op *op;
    st = rb_op_new(ctx, &vs_type, vs, np, &op);
    if (st != RB_OK) {
        rb_free(ctx, vs);
        return st;
    }
    if (weights != NULL) memcpy(op->params, weights, np * sizeof(double));
    *out = op;
    return RB_OK;
}

/* F = ops[count-1] ... ops[0] (referenced): y = F(x), through the intermediate grids mid[]
 * (mid[k] holds ops[k]'s output for k < count - 1). */
static rb_status apply_sequence(rb_context *ctx, const rb_op *const *ops, int count, rb_tensor *mid, const rb_tensor *x,
                                rb_tensor *y, rb_arena *work)
{
    rb_status st = RB_OK;
    const rb_tensor *in = x;
    for (int k = 0; k < count && st == RB_OK; k++) {
        rb_tensor *o = k + 1 < count ? &mid[k] : y;
        st = rb_op_apply(ctx, ops[k], in, o, work);
        in = o;
    }
    return st;
}

#define PROBE_MAX_OPS 3

/* The probe of the product of `count` linear ops applied in order (see rb_op_varstencil_probe). */
static rb_status probe_sequence(rb_context *ctx, const char *fn, const rb_op *const *ops, int count, int dims,
                                rb_shape grid, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);
    grid.n = grid.c = 1;
    rb_shape shapes[PROBE_MAX_OPS + 1] = {grid};
    size_t need = 64;
    for (int k = 0; k < count; k++) {
        if (ops[k] == NULL) return rb_fail(ctx, RB_ENULL, "%s: operator %d is NULL", fn, k);
        if (!(ops[k]->type->flags & RB_OP_LINEAR))
            return rb_fail(ctx, RB_EINVAL, "%s: %s is not linear", fn, ops[k]->type->name);
        rb_status st = rb_op_shape(ctx, ops[k], shapes[k], &shapes[k + 1]);
        if (st != RB_OK) return rb_fail(ctx, st, "%s: operator %d (%s): %s", fn, k, ops[k]->type->name, rb_context_message(ctx));
        size_t w = rb_op_workspace(ops[k], shapes[k]);
        if (w > need) need = w + 64;
    }
    if (!rb_shape_equal(shapes[count], grid)) {
        char a[96], b[96];
        return rb_fail(ctx, RB_ESHAPE, "%s: the product maps %s to %s, not to the same grid", fn, rb_shape_format(grid, a, sizeof a),
                       rb_shape_format(shapes[count], b, sizeof b));
    }
    rb_op *S;
    rb_status st = rb_op_varstencil_create(ctx, dims, RB_STENCIL_FULL, grid, NULL, &S);
    if (st != RB_OK) return st;
    const vs_state *vs = S->state;
    rb_tensor e = {0}, col = {0}, mid[PROBE_MAX_OPS];
    memset(mid, 0, sizeof mid);
    rb_arena work = {0};
    st = rb_tensor_alloc(ctx, &e, grid);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &col, grid);
    for (int k = 0; k + 1 < count && st == RB_OK; k++) st = rb_tensor_alloc(ctx, &mid[k], shapes[k + 1]);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, need);
    /* colour c = (x mod 3, y mod 3, z mod 3): the images of a colour's unit vectors do not overlap */
    int cz = dims >= 3 ? 3 : 1, cy = dims >= 2 ? 3 : 1;
    for (int a = 0; a < cz && st == RB_OK; a++)
        for (int b = 0; b < cy && st == RB_OK; b++)
            for (int c = 0; c < 3 && st == RB_OK; c++) {
                memset(e.data, 0, vs->points * sizeof(double));
                for (size_t z = (size_t)a; z < grid.d; z += (size_t)cz)
                    for (size_t y = (size_t)b; y < grid.h; y += (size_t)cy)
                        for (size_t x = (size_t)c; x < grid.w; x += 3) e.data[(z * grid.h + y) * grid.w + x] = 1.0;
                st = apply_sequence(ctx, ops, count, mid, &e, &col, &work);
                /* row p, tap t: the column q = p + tap_t if q has this colour; so for each q of
                 * the colour and each tap t, the row p = q - tap_t (reached from q by the
                 * mirrored tap ntaps-1-t) if it lies inside */
                for (size_t z = (size_t)a; z < grid.d && st == RB_OK; z += (size_t)cz)
                    for (size_t y = (size_t)b; y < grid.h; y += (size_t)cy)
                        for (size_t x = (size_t)c; x < grid.w; x += 3)
                            for (int t = 0; t < vs->ntaps; t++) {
                                size_t p;
                                if (neighbour(vs, z, y, x, vs->ntaps - 1 - t, &p)) S->params[(size_t)t * vs->points + p] = col.data[p];
                            }
            }
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &col);
    for (int k = 0; k + 1 < count; k++) rb_tensor_release(ctx, &mid[k]);
    rb_arena_release(ctx, &work);
    if (st != RB_OK) {
        rb_op_free(ctx, S);
        return st;
    }
    *out = S;
    return RB_OK;
}

rb_status rb_op_varstencil_probe(rb_context *ctx, const rb_op *F, int dims, rb_shape grid, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (F == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_varstencil_probe: F is NULL");
    return probe_sequence(ctx, "rb_op_varstencil_probe", &F, 1, dims, grid, out);
}

/* ---- R A P directly ----------------------------------------------------------------------------- */

/* One term of (R A P)[I][T]: R's tap r and P's tap p (coef = R_r P_p), A's tap s at the fine
 * point i = sI + off + r; A's neighbour j = i + sigma_s = sJ + off_P + p of the coarse point
 * J = I + T. fi, fj: i's and j's offsets from sI + off (the fine point under I) per (z, y, x). */
typedef struct rap_term {
    double coef;
    int s, ts;
    int fi[3], fj[3], T[3];
} rap_term;

#define RAP_MAX_TERMS (RB_CONV_MAX_TAPS * RB_CONV_MAX_TAPS * 8)

/* Whether point (z, y, x) of the grid with extents e[3] is inside, coordinates as long long. */
static inline bool inside3(const long long c[3], const size_t e[3])
{
    return c[0] >= 0 && c[1] >= 0 && c[2] >= 0 && c[0] < (long long)e[0] && c[1] < (long long)e[1] && c[2] < (long long)e[2];
}

/* (R A P)[I][T] = sum over R's taps r, A's taps s, P's taps p with s_I + off_R + r + sigma_s =
 * s (I + T) + off_P + p of R_r A_s(i) P_p, for the fine points i and j = i + sigma_s inside the
 * fine grid and J = I + T inside the coarse grid: what the probes of P, A, R applied in turn
 * find, summed per coarse point and tap in the order of the terms (to rounding the same). For
 * single-channel convs R (plain) and P (transposed) of one stride and a varstencil A; false
 * (S untouched) for anything else, or couplings beyond one coarse point (then: probes). */
static bool galerkin_direct(rb_context *ctx, const rb_op *R, const rb_op *A, const rb_op *P, rb_shape coarse, rb_op *S)
{
    if (R == NULL || A == NULL || P == NULL) return false;
    const rb_conv_state *cr = rb_conv_state_of(R), *cp = rb_conv_state_of(P);
    const vs_state *va = A->type == &vs_type ? A->state : NULL, *vs = S->state;
    if (cr == NULL || cp == NULL || va == NULL || cr->desc.transposed || !cp->desc.transposed || cr->desc.cin != 1 ||
        cr->desc.cout != 1 || cp->desc.cin != 1 || cp->desc.cout != 1 || cr->desc.bias || cp->desc.bias)
        return false;
    rb_conv_geom gr, gp;
    rb_shape o1, o2;
    if (rb_conv_geometry(NULL, R, va->grid, &gr, &o1) != RB_OK || rb_conv_geometry(NULL, P, coarse, &gp, &o2) != RB_OK ||
        o1.d != coarse.d || o1.h != coarse.h || o1.w != coarse.w || !rb_shape_equal(o2, va->grid))
        return false;
    for (int k = 0; k < 3; k++)
        if (gr.s[k] != gp.s[k] || gr.s[k] < 1) return false;
    rap_term *tm = rb_malloc(ctx, RAP_MAX_TERMS * sizeof *tm);
    if (tm == NULL) return false;
    int nterms = 0;
    bool ok = true;
    /* the terms grouped by coarse tap (tap ts's are first[ts] .. first[ts + 1]): each tap's sum in registers */
    int first[RB_CONV_MAX_TAPS + 1] = {0};
    for (int ts = 0; ts < vs->ntaps && ok; first[++ts] = nterms)
        for (int r = 0; r < cr->ntaps && ok; r++)
            for (int sa = 0; sa < va->ntaps && ok; sa++)
                for (int p = 0; p < cp->ntaps; p++) {
                    rap_term t = {.coef = R->params[r] * P->params[p], .s = sa, .ts = ts};
                    bool match = true;
                    for (int k = 0; k < 3; k++) {
                        const long long num = (long long)gr.off[k] + cr->tap[r][k] + va->tap[sa][k] - gp.off[k] - cp->tap[p][k];
                        if (num % gr.s[k] != 0) { match = false; break; }
                        t.T[k] = (int)(num / gr.s[k]);
                        t.fi[k] = cr->tap[r][k], t.fj[k] = cr->tap[r][k] + va->tap[sa][k];
                    }
                    if (!match) continue;
                    if (abs(t.T[0]) > 1 || abs(t.T[1]) > 1 || abs(t.T[2]) > 1) { /* beyond the 3^d stencil */
                        ok = false;
                        break;
                    }
                    if (t.T[0] != vs->tap[ts][0] || t.T[1] != vs->tap[ts][1] || t.T[2] != vs->tap[ts][2]) continue;
                    if (R->params[r] == 0.0 || P->params[p] == 0.0) continue;
                    if (nterms == RAP_MAX_TERMS) { ok = false; break; }
                    tm[nterms++] = t;
                }
    if (ok) {
        const size_t ce[3] = {coarse.d, coarse.h, coarse.w}, fe[3] = {va->grid.d, va->grid.h, va->grid.w};
        const size_t pf = va->points, pc = vs->points;
        const double *aw = A->params;
        double *out = S->params;
        /* the coarse points whose terms all lie inside both grids: I_k in [lo_k, hi_k] */
        long long lo[3], hi[3];
        for (int k = 0; k < 3; k++) {
            lo[k] = 0, hi[k] = (long long)ce[k] - 1;
            for (int i = 0; i < nterms; i++) {
                const int f[2] = {tm[i].fi[k], tm[i].fj[k]};
                for (int e = 0; e < 2; e++) {
                    while (lo[k] <= hi[k] && gr.s[k] * lo[k] + gr.off[k] + f[e] < 0) lo[k]++;
                    while (lo[k] <= hi[k] && gr.s[k] * hi[k] + gr.off[k] + f[e] > (long long)fe[k] - 1) hi[k]--;
                }
                while (lo[k] <= hi[k] && lo[k] + tm[i].T[k] < 0) lo[k]++;
                while (lo[k] <= hi[k] && hi[k] + tm[i].T[k] > (long long)ce[k] - 1) hi[k]--;
            }
        }
        /* inside: A's weight of term i at woff[i] from the fine point under I */
        long long *woff = rb_malloc(ctx, (size_t)(nterms > 0 ? nterms : 1) * sizeof *woff);
        if (woff == NULL) {
            rb_free(ctx, tm);
            return false;
        }
        for (int i = 0; i < nterms; i++)
            woff[i] = (long long)tm[i].s * (long long)pf +
                      ((long long)tm[i].fi[0] * (long long)fe[1] + tm[i].fi[1]) * (long long)fe[2] + tm[i].fi[2];
        const long long rows = (long long)(ce[0] * ce[1]), sx = gr.s[2];
        const int threads = rb_context_threads(ctx);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows >= 16)
        for (long long row = 0; row < rows; row++) {
            const long long I0 = row / (long long)ce[1], I1 = row % (long long)ce[1];
            const bool row_in = I0 >= lo[0] && I0 <= hi[0] && I1 >= lo[1] && I1 <= hi[1];
            for (long long x = 0; x < (long long)ce[2];) {
                const long long I[3] = {I0, I1, x};
                long long base[3];
                for (int k = 0; k < 3; k++) base[k] = gr.s[k] * I[k] + gr.off[k];
                const size_t q = ((size_t)I0 * ce[1] + (size_t)I1) * ce[2] + (size_t)x;
#if defined(__AVX2__)
                if (row_in && sx == 2 && x >= lo[2] && x + 7 <= hi[2]) {
                    /* eight points, their fine points 2 apart: two loads of 4 and unpacklo give
                     * four of them (lanes 0, 2, 1, 3), the sums as below, then the lanes put back */
                    const long long b0 = (base[0] * (long long)fe[1] + base[1]) * (long long)fe[2] + base[2];
                    for (int ts = 0; ts < vs->ntaps; ts++) {
                        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
                        for (int i = first[ts]; i < first[ts + 1]; i++) {
                            const __m256d c = _mm256_set1_pd(tm[i].coef);
                            const double *a = aw + b0 + woff[i];
                            a0 = _mm256_add_pd(a0, _mm256_mul_pd(c, _mm256_unpacklo_pd(_mm256_loadu_pd(a), _mm256_loadu_pd(a + 4))));
                            a1 = _mm256_add_pd(a1, _mm256_mul_pd(c, _mm256_unpacklo_pd(_mm256_loadu_pd(a + 8), _mm256_loadu_pd(a + 12))));
                        }
                        double *o = out + (size_t)ts * pc + q;
                        _mm256_storeu_pd(o, _mm256_permute4x64_pd(a0, 0xD8));
                        _mm256_storeu_pd(o + 4, _mm256_permute4x64_pd(a1, 0xD8));
                    }
                    x += 8;
                    continue;
                }
#endif
                if (row_in && x >= lo[2] && x + 3 <= hi[2]) {
                    /* four points whose terms are all inside: four sums at a time, no checks */
                    const long long b0 = (base[0] * (long long)fe[1] + base[1]) * (long long)fe[2] + base[2];
                    for (int ts = 0; ts < vs->ntaps; ts++) {
                        double acc[4] = {0.0, 0.0, 0.0, 0.0};
                        for (int i = first[ts]; i < first[ts + 1]; i++) {
                            const double c = tm[i].coef, *a = aw + b0 + woff[i];
                            for (int k = 0; k < 4; k++) acc[k] += c * a[k * sx];
                        }
                        for (int k = 0; k < 4; k++) out[(size_t)ts * pc + q + (size_t)k] = acc[k];
                    }
                    x += 4;
                    continue;
                }
                for (int ts = 0; ts < vs->ntaps; ts++) {
                    double acc = 0.0;
                    for (int i = first[ts]; i < first[ts + 1]; i++) {
                        const rap_term *t = &tm[i];
                        const long long ci[3] = {base[0] + t->fi[0], base[1] + t->fi[1], base[2] + t->fi[2]};
                        const long long cj[3] = {base[0] + t->fj[0], base[1] + t->fj[1], base[2] + t->fj[2]};
                        const long long cJ[3] = {I[0] + t->T[0], I[1] + t->T[1], I[2] + t->T[2]};
                        if (!inside3(ci, fe) || !inside3(cj, fe) || !inside3(cJ, ce)) continue;
                        const size_t fi = ((size_t)ci[0] * fe[1] + (size_t)ci[1]) * fe[2] + (size_t)ci[2];
                        acc += t->coef * aw[(size_t)t->s * pf + fi];
                    }
                    out[(size_t)ts * pc + q] = acc;
                }
                x++;
            }
        }
        rb_free(ctx, woff);
    }
    rb_free(ctx, tm);
    return ok;
}

rb_status rb_op_varstencil_galerkin(rb_context *ctx, const rb_op *R, const rb_op *A, const rb_op *P, int dims,
                                    rb_shape coarse, rb_op **out)
{
    if (ctx == NULL) return RB_ENULL;
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "rb_op_varstencil_galerkin: out is NULL");
    /* the product from the three operators' weights where it can (the transfers multigrid
     * makes, any varstencil A): 6x faster than the 3^d probes, each of which applies P, A and
     * R to a whole grid */
    coarse.n = coarse.c = 1;
    rb_op *S;
    if (rb_op_varstencil_create(ctx, dims, RB_STENCIL_FULL, coarse, NULL, &S) == RB_OK) {
        if (galerkin_direct(ctx, R, A, P, coarse, S)) {
            *out = S;
            return RB_OK;
        }
        rb_op_free(ctx, S);
    }
    const rb_op *ops[3] = {P, A, R};
    return probe_sequence(ctx, "rb_op_varstencil_galerkin", ops, 3, dims, coarse, out);
}
