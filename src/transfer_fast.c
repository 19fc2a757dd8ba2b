/* transfer_fast.c — the multigrid transfers: single-channel stride-2 vertex-centred
 * 3-wide convolutions in 2D and 3D (see grid_fast.h).
 *
 * Vertex-centred grids: a fine extent 2k+1 over a coarse extent k, coarse point o
 * sitting on fine point 2o+1. Restriction (the plain conv) gathers
 *     coarse[o] = sum_t w[t] fine[2o + 1 + t]
 * and never leaves the fine grid. Prolongation (the transposed conv) scatters:
 * along each axis an odd fine point 2o+1 takes tap 0 of coarse point o, an even
 * one 2o takes tap -1 of o and tap +1 of o-1 (where those exist). Both are
 * written row by row: a coarse row from the 3 (2D) or 9 (3D) fine rows under it,
 * a fine row from the 1, 2 or 4 coarse rows over it, summing in the reference
 * loops' tap order from 0.0, so the results are theirs bit for bit.
 *
 * With AVX2 a restriction row takes 8 consecutive fine values per row and splits
 * them into even and odd points (4 coarse points per iteration); a prolongation
 * row computes 4 even and 4 odd fine points and interleaves them.
 *
 * The residual restricted in one pass (rb_transfer_restrict_residual) keeps the
 * residual of three fine lines (rows in 2D, planes in 3D) in a ring of arena
 * buffers per thread: the full-size residual grid is never written or read.
 */
#include "grid_fast.h"
#include "xsplit_internal.h"

#include "resbridge/xsplit.h"

#include <omp.h>
#include <stdint.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define PARALLEL_MIN 32768 /* grid points below which one thread runs */
#define FUSED_MAX_THREADS 4 /* threads rb_transfer_restrict_residual reserves line buffers for */

/* ---- which convs ------------------------------------------------------------------------------ */

static bool transfer_conv(const rb_conv_state *cs)
{
    if (cs == NULL) return false;
    const rb_conv_desc *d = &cs->desc;
    if ((d->dims != 2 && d->dims != 3) || d->cin != 1 || d->cout != 1 || d->ksize != 3 ||
        d->pattern != RB_STENCIL_FULL || d->stride != 2 || d->grid != RB_GRID_VERTEX || d->bias)
        return false;
    /* taps row-major over (dz, dy, dx) */
    const int k = d->dims == 3 ? 27 : 9;
    if (cs->ntaps != k) return false;
    for (int t = 0; t < k; t++) {
        int dz = d->dims == 3 ? t / 9 - 1 : 0, dy = t / 3 % 3 - 1, dx = t % 3 - 1;
        if (cs->tap[t][0] != dz || cs->tap[t][1] != dy || cs->tap[t][2] != dx) return false;
    }
    return true;
}

/* The geometry fits: one channel, fine = 2 coarse + 1 on the active axes. */
static bool transfer_geom(const rb_conv_state *cs, const rb_conv_geom *g)
{
    if (g->cf != 1 || g->cc != 1 || g->cw < 1 || g->ch < 1 || g->fw != 2 * g->cw + 1 || g->fh != 2 * g->ch + 1)
        return false;
    if (cs->desc.dims == 2) return g->fd == 1 && g->cd == 1;
    return g->cd >= 1 && g->fd == 2 * g->cd + 1;
}

/* ---- restriction ------------------------------------------------------------------------------ */

/* Where point x of a row of W is stored, plain or split (xsplit.h). */
static inline size_t at(size_t x, size_t W, bool split) { return rb_xsplit_at(x, split ? (W + 1) / 2 : 0); }

/* out[X] = sum over rows k, then dx: w[3k + dx + 1] fr[k][2X + 1 + dx], X < cw. split: the fine
 * rows are stored even points first, then odd ones (xsplit.h): fine point 2X at fr[k][X], 2X + 1
 * at fr[k][cw + 1 + X] -- the same sums, read without deinterleaving; csplit: the coarse row
 * (out) stored so too. */
static void restrict_row(int K, const double *const *fr, const double *w, size_t cw, double *out, bool split, bool csplit)
{
    size_t X = 0;
    const size_t fw = 2 * cw + 1;
#if defined(__AVX2__)
    const size_t odd = cw + 1, codd = (cw + 1) / 2;
    __m256d wv[27];
    for (int t = 0; t < 3 * K; t++) wv[t] = _mm256_set1_pd(w[t]);
    for (; X + 4 + !split <= cw; X += 4) { /* split: reads E[X .. X+4], O[X .. X+3]; plain: fine 2X .. 2X+9 */
        __m256d acc = _mm256_setzero_pd(); /* lanes: coarse points X, X+1, X+2, X+3 (split) or X, X+2, X+1, X+3 */
        for (int k = 0; k < K; k++) {
            __m256d a, b, c;
            if (split) {
                const double *e = fr[k] + X, *o = fr[k] + odd + X;
                a = _mm256_loadu_pd(e), b = _mm256_loadu_pd(o), c = _mm256_loadu_pd(e + 1);
            } else {
                const double *f = fr[k] + 2 * X;
                const __m256d A = _mm256_loadu_pd(f), B = _mm256_loadu_pd(f + 4);
                a = _mm256_unpacklo_pd(A, B), b = _mm256_unpackhi_pd(A, B);
                c = _mm256_unpacklo_pd(_mm256_loadu_pd(f + 2), _mm256_loadu_pd(f + 6));
            }
            acc = _mm256_add_pd(acc, _mm256_mul_pd(wv[3 * k], a));
            acc = _mm256_add_pd(acc, _mm256_mul_pd(wv[3 * k + 1], b));
            acc = _mm256_add_pd(acc, _mm256_mul_pd(wv[3 * k + 2], c));
        }
        if (split) acc = _mm256_permute4x64_pd(acc, 0xD8); /* X, X+2, X+1, X+3 */
        if (csplit) { /* X is a multiple of 4: X, X+2 even, X+1, X+3 odd */
            _mm_storeu_pd(out + X / 2, _mm256_castpd256_pd128(acc));
            _mm_storeu_pd(out + codd + X / 2, _mm256_extractf128_pd(acc, 1));
        } else {
            _mm256_storeu_pd(out + X, _mm256_permute4x64_pd(acc, 0xD8));
        }
    }
#endif
    for (; X < cw; X++) {
        double acc = 0.0;
        for (int k = 0; k < K; k++)
            for (size_t dx = 0; dx < 3; dx++) acc += w[3 * k + (int)dx] * fr[k][at(2 * X + dx, fw, split)];
        out[at(X, cw, csplit)] = acc;
    }
}

/* Coarse row (n, Z, Y): the 3 (2D) or 9 (3D) fine rows under it, in tap order. */
static void restrict_coarse_row(const rb_conv_geom *g, int dims, const double *w, const double *fine, size_t n,
                                size_t Z, size_t Y, double *out)
{
    const double *fr[9];
    int K = 0;
    for (int dz = dims == 3 ? 0 : 1; dz < (dims == 3 ? 3 : 2); dz++) {
        const size_t pz = dims == 3 ? 2 * Z + (size_t)dz : 0;
        for (int dy = 0; dy < 3; dy++) fr[K++] = fine + ((n * g->fd + pz) * g->fh + 2 * Y + (size_t)dy) * g->fw;
    }
    restrict_row(K, fr, w, g->cw, out, false, false);
}

/* ---- prolongation ----------------------------------------------------------------------------- */

/* Fine points 2X and 2X+1 (0 < X < cw) from K coarse rows: into *e and *o. csplit: the coarse rows
 * stored split (xsplit.h). */
static inline void prolong_pair(int K, const double *const *cr, const double *const *wk, size_t cw, size_t X, bool csplit,
                                double *e, double *o)
{
    const size_t c0 = at(X, cw, csplit), c1 = at(X - 1, cw, csplit);
    double a = 0.0, b = 0.0;
    for (int k = 0; k < K; k++) {
        a += wk[k][0] * cr[k][c0];
        a += wk[k][2] * cr[k][c1];
    }
    for (int k = 0; k < K; k++) b += wk[k][1] * cr[k][c0];
    *e = a, *o = b;
}

/* Fine row from K coarse rows cr[k] with weight rows wk[k] (w[-1], w[0], w[+1] along x):
 * even px = 2X: sum_k (wk[k][0] cr[k][X] if X < cw) + (wk[k][2] cr[k][X-1] if X >= 1);
 * odd px = 2X+1: sum_k wk[k][1] cr[k][X]. add: out += that, else out = that. split: the fine
 * row is stored even points first, then odd ones (xsplit.h): 2X at out[X], 2X+1 at out[cw+1+X];
 * csplit: the coarse rows stored so too (with split only). */
static void prolong_row(int K, const double *const *cr, const double *const *wk, size_t cw, double *out, bool add,
                        bool split, bool csplit)
{
    const size_t fw = 2 * cw + 1;
    double *const ev = out, *const od = split ? out + cw + 1 : out + 1; /* fine 2X at ev[s X], 2X+1 at od[s X] */
    const size_t s = split ? 1 : 2;
    /* X = 0: fine points 0 and 1 */
    double e = 0.0, o = 0.0;
    for (int k = 0; k < K; k++) e += wk[k][0] * cr[k][0];
    for (int k = 0; k < K; k++) o += wk[k][1] * cr[k][0];
    ev[0] = add ? ev[0] + e : e;
    od[0] = add ? od[0] + o : o;
    size_t X = 1;
#if defined(__AVX2__)
    __m256d w0[4], w1[4], w2[4];
    for (int k = 0; k < K; k++)
        w0[k] = _mm256_set1_pd(wk[k][0]), w1[k] = _mm256_set1_pd(wk[k][1]), w2[k] = _mm256_set1_pd(wk[k][2]);
    if (csplit && split && cw >= 2) {
        /* coarse pairs m .. m+3 (c[2m] = CE[m], c[2m+1] = CO[m]) give fine X = 2m .. 2m+7: the even
         * X and the odd X apart, then interleaved into E[2m ..] and O[2m ..] */
        prolong_pair(K, cr, wk, cw, 1, csplit, &e, &o); /* X = 1 first */
        ev[1] = add ? ev[1] + e : e;
        od[1] = add ? od[1] + o : o;
        const size_t codd = (cw + 1) / 2;
        size_t m = 1;
        for (; 2 * m + 8 <= cw; m += 4) {
            __m256d eE = _mm256_setzero_pd(), eO = _mm256_setzero_pd(), oE = _mm256_setzero_pd(), oO = _mm256_setzero_pd();
            for (int k = 0; k < K; k++) {
                const __m256d ce = _mm256_loadu_pd(cr[k] + m), co = _mm256_loadu_pd(cr[k] + codd + m);
                eE = _mm256_add_pd(eE, _mm256_mul_pd(w0[k], ce));
                eE = _mm256_add_pd(eE, _mm256_mul_pd(w2[k], _mm256_loadu_pd(cr[k] + codd + m - 1)));
                eO = _mm256_add_pd(eO, _mm256_mul_pd(w0[k], co));
                eO = _mm256_add_pd(eO, _mm256_mul_pd(w2[k], ce));
            }
            for (int k = 0; k < K; k++) {
                oE = _mm256_add_pd(oE, _mm256_mul_pd(w1[k], _mm256_loadu_pd(cr[k] + m)));
                oO = _mm256_add_pd(oO, _mm256_mul_pd(w1[k], _mm256_loadu_pd(cr[k] + codd + m)));
            }
            const __m256d el = _mm256_unpacklo_pd(eE, eO), eh = _mm256_unpackhi_pd(eE, eO);
            const __m256d ol = _mm256_unpacklo_pd(oE, oO), oh = _mm256_unpackhi_pd(oE, oO);
            __m256d v[4] = {_mm256_permute2f128_pd(el, eh, 0x20), _mm256_permute2f128_pd(el, eh, 0x31),
                            _mm256_permute2f128_pd(ol, oh, 0x20), _mm256_permute2f128_pd(ol, oh, 0x31)};
            double *p[4] = {ev + 2 * m, ev + 2 * m + 4, od + 2 * m, od + 2 * m + 4};
            for (int j = 0; j < 4; j++) {
                if (add) v[j] = _mm256_add_pd(_mm256_loadu_pd(p[j]), v[j]);
                _mm256_storeu_pd(p[j], v[j]);
            }
        }
        X = 2 * m;
    }
    for (; !csplit && X + 4 <= cw; X += 4) {
        __m256d E = _mm256_setzero_pd(), O = _mm256_setzero_pd();
        for (int k = 0; k < K; k++) {
            const __m256d c = _mm256_loadu_pd(cr[k] + X);
            E = _mm256_add_pd(E, _mm256_mul_pd(w0[k], c));
            E = _mm256_add_pd(E, _mm256_mul_pd(w2[k], _mm256_loadu_pd(cr[k] + X - 1)));
        }
        for (int k = 0; k < K; k++) O = _mm256_add_pd(O, _mm256_mul_pd(w1[k], _mm256_loadu_pd(cr[k] + X)));
        __m256d v0 = E, v1 = O;
        double *p0 = ev + X, *p1 = od + X;
        if (!split) { /* interleaved: 2X .. 2X+7 */
            const __m256d lo = _mm256_unpacklo_pd(E, O), hi = _mm256_unpackhi_pd(E, O);
            v0 = _mm256_permute2f128_pd(lo, hi, 0x20), v1 = _mm256_permute2f128_pd(lo, hi, 0x31);
            p0 = out + 2 * X, p1 = p0 + 4;
        }
        if (add) v0 = _mm256_add_pd(_mm256_loadu_pd(p0), v0), v1 = _mm256_add_pd(_mm256_loadu_pd(p1), v1);
        _mm256_storeu_pd(p0, v0);
        _mm256_storeu_pd(p1, v1);
    }
#endif
    for (; X < cw; X++) {
        prolong_pair(K, cr, wk, cw, X, csplit, &e, &o);
        ev[s * X] = add ? ev[s * X] + e : e;
        od[s * X] = add ? od[s * X] + o : o;
    }
    /* the last fine point 2cw: only tap +1 of coarse point cw-1 */
    e = 0.0;
    for (int k = 0; k < K; k++) e += wk[k][2] * cr[k][at(cw - 1, cw, csplit)];
    double *last = split ? ev + cw : out + fw - 1;
    *last = add ? *last + e : e;
}

/* Along one axis: the coarse indices over fine index p, in tap order (tap -1, 0, +1),
 * with the tap index (0, 1, 2). Returns how many (1 or 2, 0 never for vertex grids). */
static int over(size_t p, size_t extent, size_t o[2], int t[2])
{
    int k = 0;
    for (int tap = -1; tap <= 1; tap++) {
        long long q = (long long)p - 1 - tap;
        if (q < 0 || (q & 1) || (size_t)(q / 2) >= extent) continue;
        o[k] = (size_t)(q / 2), t[k] = tap + 1, k++;
    }
    return k;
}

/* Fine row (n, pz, py) of the prolongation. */
static void prolong_fine_row(const rb_conv_geom *g, int dims, const double *w, const double *coarse, size_t n,
                             size_t pz, size_t py, double *out, bool add, bool split, bool csplit)
{
    size_t oz[2] = {0, 0}, oy[2];
    int tz[2] = {1, 1}, ty[2];
    const int kz = dims == 3 ? over(pz, g->cd, oz, tz) : 1, ky = over(py, g->ch, oy, ty);
    const double *cr[4], *wk[4];
    int K = 0;
    for (int a = 0; a < kz; a++)
        for (int b = 0; b < ky; b++) {
            cr[K] = coarse + ((n * g->cd + oz[a]) * g->ch + oy[b]) * g->cw;
            wk[K] = w + (dims == 3 ? 9 * tz[a] : 0) + 3 * ty[b];
            K++;
        }
    prolong_row(K, cr, wk, g->cw, out, add, split, csplit);
}

static void prolong(int threads, const rb_conv_geom *g, int dims, const double *w, const double *coarse, double *fine,
                    bool add)
{
    const long long rows = (long long)(g->n * g->fd * g->fh);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows * (long long)g->fw >= PARALLEL_MIN)
    for (long long r = 0; r < rows; r++) {
        const size_t py = (size_t)r % g->fh, pz = (size_t)r / g->fh % g->fd, n = (size_t)r / g->fh / g->fd;
        prolong_fine_row(g, dims, w, coarse, n, pz, py, fine + (size_t)r * g->fw, add, false, false);
    }
}

/* ---- behind the conv op ----------------------------------------------------------------------- */

bool rb_transfer_fast_apply(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                            const double *x, double *y)
{
    if (!transfer_conv(cs) || !transfer_geom(cs, g)) return false;
    const int threads = rb_context_threads(ctx), dims = cs->desc.dims;
    if (cs->desc.transposed) {
        prolong(threads, g, dims, w, x, y, false);
        return true;
    }
    const long long rows = (long long)(g->n * g->cd * g->ch);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows * (long long)g->fw >= PARALLEL_MIN / 2)
    for (long long r = 0; r < rows; r++) {
        const size_t Y = (size_t)r % g->ch, Z = (size_t)r / g->ch % g->cd, n = (size_t)r / g->ch / g->cd;
        restrict_coarse_row(g, dims, w, x, n, Z, Y, y + (size_t)r * g->cw);
    }
    return true;
}

bool rb_transfer_prolong_plan(const rb_op *P, rb_shape coarse, rb_shape fine, rb_conv_geom *g)
{
    const rb_conv_state *cs = rb_conv_state_of(P);
    if (!transfer_conv(cs) || !cs->desc.transposed) return false;
    rb_shape out;
    return rb_conv_geometry(NULL, P, coarse, g, &out) == RB_OK && rb_shape_equal(out, fine) && transfer_geom(cs, g);
}

bool rb_transfer_prolong_add(rb_context *ctx, const rb_op *P, const rb_tensor *coarse, rb_tensor *fine)
{
    rb_conv_geom g;
    if (!rb_transfer_prolong_plan(P, coarse->shape, fine->shape, &g)) return false;
    prolong(rb_context_threads(ctx), &g, rb_conv_state_of(P)->desc.dims, P->params, coarse->data, fine->data, true);
    return true;
}

void rb_transfer_prolong_line(const rb_conv_geom *g, int dims, const double *w, const double *coarse, size_t n,
                              size_t l, size_t y0, size_t y1, double *fine_line, bool add, bool split, bool csplit)
{
    if (dims == 2) {
        prolong_fine_row(g, 2, w, coarse, n, 0, l, fine_line, add, split, csplit);
        return;
    }
    for (size_t py = y0; py < y1 && py < g->fh; py++)
        prolong_fine_row(g, 3, w, coarse, n, l, py, fine_line + py * g->fw, add, split, csplit);
}

/* ---- the residual, restricted in one pass ----------------------------------------------------- */

void rb_transfer_restrict_line(const rb_conv_geom *g, int dims, const double *w, size_t n, size_t C, size_t Y0,
                               size_t Y1, const double *const lines[3], double *coarse, bool split, bool csplit)
{
    if (dims == 2) {
        restrict_row(3, lines, w, g->cw, coarse + (n * g->ch + C) * g->cw, split, csplit);
        return;
    }
    for (size_t Y = Y0; Y < Y1 && Y < g->ch; Y++) {
        const double *fr[9];
        for (int dz = 0; dz < 3; dz++)
            for (int dy = 0; dy < 3; dy++) fr[3 * dz + dy] = lines[dz] + (2 * Y + (size_t)dy) * g->fw;
        restrict_row(9, fr, w, g->cw, coarse + ((n * g->cd + C) * g->ch + Y) * g->cw, split, csplit);
    }
}

/* Doubles in one fine line: a row (2D) or a plane (3D). */
static size_t line_size(rb_shape fine, int dims) { return dims == 3 ? fine.h * fine.w : fine.w; }

bool rb_transfer_restrict_plan(const rb_op *R, int dims, rb_shape fine, rb_conv_geom *g)
{
    const rb_conv_state *cs = rb_conv_state_of(R);
    rb_shape out;
    return transfer_conv(cs) && !cs->desc.transposed && cs->desc.dims == dims &&
           rb_conv_geometry(NULL, R, fine, g, &out) == RB_OK && transfer_geom(cs, g);
}

bool rb_transfer_restrict_split(rb_context *ctx, const rb_op *R, const rb_tensor *fine, rb_tensor *coarse, bool csplit)
{
    rb_conv_geom g;
    rb_shape out;
    if (fine->shape.d != 1 || !rb_transfer_restrict_plan(R, 2, fine->shape, &g) ||
        rb_op_shape(NULL, R, fine->shape, &out) != RB_OK || !rb_shape_equal(out, coarse->shape))
        return false;
    const long long rows = (long long)(g.n * g.ch);
    const int threads = rb_context_threads(ctx);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows * (long long)g.fw >= PARALLEL_MIN / 2)
    for (long long r = 0; r < rows; r++) {
        const size_t C = (size_t)r % g.ch, n = (size_t)r / g.ch;
        const double *lines[3];
        for (int i = 0; i < 3; i++) lines[i] = fine->data + (n * g.fh + 2 * C + (size_t)i) * g.fw;
        rb_transfer_restrict_line(&g, 2, R->params, n, C, 0, 1, lines, coarse->data, true, csplit);
    }
    return true;
}

bool rb_transfer_restrict_pair(const rb_op *A, const rb_op *R, rb_shape fine, rb_stencil_any *k, rb_conv_geom *g)
{
    return rb_stencil_any_init(A, fine, k) && rb_transfer_restrict_plan(R, k->dims, fine, g);
}

/* The pair, or the split views (xsplit.h) of one on a split fine grid: A split on both sides, R
 * split in (and *csplit: out), the stencil one the split residual lines take. *split: which;
 * *plain_R: the restriction whose weights apply. */
static bool restrict_pair_any(const rb_op *A, const rb_op *R, rb_shape fine, rb_stencil_any *k, rb_conv_geom *g,
                              bool *split, bool *csplit, const rb_op **plain_R)
{
    const rb_op *a;
    bool ai, ao, ri;
    *plain_R = R, *csplit = false;
    *split = rb_op_xsplit_info(A, &a, &ai, &ao) && rb_op_xsplit_info(R, plain_R, &ri, csplit);
    if (!*split) return rb_transfer_restrict_pair(A, R, fine, k, g);
    return ai && ao && ri && rb_transfer_restrict_pair(a, *plain_R, fine, k, g) && rb_stencil_split_takes(k);
}

/* Residual line l of sample n, plain or split. */
static void residual_line(const rb_stencil_any *k, bool split, rb_shape s, const double *u, const double *f, size_t n,
                          size_t l, double *r)
{
    if (split) rb_stencil_residual_line_split(k, s, u, f, n, l, r);
    else rb_stencil_residual_line(k, s, u, f, n, l, 0, s.h, r);
}

size_t rb_transfer_restrict_residual_workspace(const rb_op *A, const rb_op *R, rb_shape fine)
{
    rb_stencil_any k;
    rb_conv_geom g;
    bool split, csplit;
    const rb_op *plain_R;
    if (A == NULL || R == NULL) return 0;
    int dims = 0;
    if (restrict_pair_any(A, R, fine, &k, &g, &split, &csplit, &plain_R)) dims = k.dims;
    else if (rb_varstencil_on(A, fine)) /* the red-black wavefront's residual lines of a varstencil */
        dims = fine.d > 1 ? 3 : 2;
    if (dims == 0) return 0;
    return rb_arena_bytes(FUSED_MAX_THREADS * 3 * line_size(fine, dims) * sizeof(double));
}

bool rb_transfer_restrict_residual(rb_context *ctx, const rb_op *A, const rb_op *R, const rb_tensor *u,
                                   const rb_tensor *f, rb_tensor *coarse, rb_arena *work)
{
    rb_stencil_any k;
    rb_conv_geom g;
    bool split, csplit;
    const rb_op *plain_R;
    if (!restrict_pair_any(A, R, u->shape, &k, &g, &split, &csplit, &plain_R) || work == NULL || work->measuring ||
        work->used > work->cap)
        return false;
    const int dims = k.dims;
    const size_t line = line_size(u->shape, dims), lines_c = dims == 3 ? g.cd : g.ch;
    const size_t per_thread = 3 * line * sizeof(double), room = work->cap - work->used;
    int threads = rb_context_threads(ctx);
    if (threads > FUSED_MAX_THREADS) threads = FUSED_MAX_THREADS;
    if ((size_t)threads > lines_c) threads = (int)lines_c;
    if (rb_shape_count(u->shape) < PARALLEL_MIN) threads = 1;
    while (threads > 1 && rb_arena_bytes((size_t)threads * per_thread) > room) threads--;
    if (rb_arena_bytes(per_thread) > room) return false;
    const size_t mark = rb_arena_mark(work);
    double *buf = rb_arena_alloc(ctx, work, (size_t)threads * per_thread);
    if (buf == NULL) return false;
    const double *w = plain_R->params;
    for (size_t n = 0; n < g.n; n++) {
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            const size_t T = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
            const size_t c0 = lines_c * t / T, c1 = lines_c * (t + 1) / T;
            double *ring = buf + t * 3 * line; /* fine line l lives in slot l % 3 */
            if (c0 < c1) residual_line(&k, split, u->shape, u->data, f->data, n, 2 * c0, ring + (2 * c0 % 3) * line);
            for (size_t C = c0; C < c1; C++) {
                for (size_t l = 2 * C + 1; l <= 2 * C + 2; l++)
                    residual_line(&k, split, u->shape, u->data, f->data, n, l, ring + (l % 3) * line);
                const double *lines[3] = {ring + (2 * C % 3) * line, ring + ((2 * C + 1) % 3) * line,
                                          ring + ((2 * C + 2) % 3) * line};
                rb_transfer_restrict_line(&g, dims, w, n, C, 0, g.ch, lines, coarse->data, split, csplit);
            }
        }
    }
    rb_arena_reset(work, mark);
    return true;
}
