/* redblack.c — red-black colour steps over a constant star stencil, one pass for
 * any number of them (see redblack_internal.h).
 *
 * The row kernel updates the points of one colour in one row: x = first, first+2,
 * ... With AVX2 it takes 8 consecutive doubles (4 points of the colour) per
 * iteration and splits them into the colour's values and the other colour's
 * (unpacklo / unpackhi), so each lane is one point of the colour and its left and
 * right neighbours come from registers; the result is interleaved back with the
 * unchanged other colour and stored as 8 doubles. (The other colour's values are
 * rewritten unchanged: no stage writes them while this one runs.) Missing
 * neighbour rows (grid borders) get coefficient 0 and point at the row itself,
 * so border rows run the same loop; only x = 0 and x = W-1 are scalar. The two
 * streams that come from memory in a pass (the leading neighbour row and b) are
 * prefetched ahead, as in stencil_fast.c.
 *
 * Speed (bench/bench_poisson.c): ~0.7 ns per point and sweep in cache on one
 * core; the 8-double loads and stores keep to 32-byte pieces that never
 * partially overlap a store of the previous iteration (which would stall
 * store-to-load forwarding).
 */
#include "redblack_internal.h"

#include "conv_internal.h"
#include "xsplit_internal.h"

#include "resbridge/varstencil.h"

#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__unix__)
#include <sched.h>
#define RB_REDBLACK_SCHED_YIELD 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RB_REDBLACK_AVX2 1
#endif

/* a*b + c, fused where the build has FMA (so that scalar points and vector lanes agree). */
#if defined(__FMA__)
#define MADD(a, b, c) fma((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

#ifndef PF_LEAD
#define PF_LEAD 1024 /* doubles ahead on the leading neighbour row (8 KB) */
#endif
#ifndef PF_B
#define PF_B 2048    /* and on b (16 KB; x and b often share their address mod 4 KB) */
#endif
#define PARALLEL_MIN 32768 /* grid points per sample below which one thread runs (star kernel) */
#define SPLIT_AHEAD 2      /* rows the split kernel prefetches ahead */
#ifndef TILE_BYTES
#define TILE_BYTES (4u << 20) /* a 3D wavefront holding more than this goes in tiles of rows */
#endif

/* The fields both kernels fill alike: the grid's extents, b, the class kernel (or NULL), and
 * nothing yet for u and the stages around the steps. */
static void grid_of_kernel(rb_redblack *k, rb_shape s, const double *b, const rb_class_step *cls)
{
    k->n = s.n, k->d = s.d, k->h = s.h, k->w = s.w;
    k->b = b;
    k->u = NULL;
    k->first = NULL;
    k->then = NULL;
    k->cls = cls;
    k->step0 = 0;
    k->split = false;
    k->tile = 0;
}

bool rb_redblack_init(const rb_op *J, rb_shape s, double h, rb_redblack *k)
{
    const rb_jacobi_state *js = rb_jacobi_state_of(J);
    if (js == NULL || js->dvar != NULL || !isfinite(h)) return false;
    const rb_conv_state *cs = rb_conv_state_of(js->A);
    if (cs == NULL || cs->desc.pattern != RB_STENCIL_STAR || cs->desc.stride != 1 || cs->desc.transposed ||
        cs->desc.cin != 1 || cs->desc.cout != 1 || cs->desc.bias)
        return false;
    const int dims = cs->desc.dims;
    if ((dims != 2 && dims != 3) || cs->ntaps != 2 * dims + 1 || s.c != 1 || (dims == 2 && s.d != 1)) return false;
    /* taps row-major over (dz, dy, dx): the centre is the middle one */
    static const int star[7][3] = {{-1, 0, 0}, {0, -1, 0}, {0, 0, -1}, {0, 0, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}};
    const int centre = dims, skip = 3 - dims; /* the 2D star is the middle 5 of the 3D one */
    for (int t = 0; t < cs->ntaps; t++)
        for (int a = 0; a < 3; a++)
            if (cs->tap[t][a] != star[t + skip][a]) return false;
    const double *w = js->A->params, inv = 1.0 / js->diag;
    if (!(w[centre] == js->diag)) return false;
    k->dims = dims;
    for (int t = 0, j = 0; t < cs->ntaps; t++)
        if (t != centre) k->cn[j++] = -h * (w[t] * inv);
    k->cb = h * inv;
    k->cc = 1.0 - h * (w[centre] * inv);
    grid_of_kernel(k, s, js->b.data, NULL);
    return true;
}

/* ---- one row of one colour ------------------------------------------------------------------ */

/* The coefficients and neighbour rows of one row: o[0 .. nr/2) come before x-1 and
 * x+1 in tap order, o[nr/2 .. nr) after; c[] in tap order (nr/2 rows, x-, x+, nr/2 rows). */
typedef struct row_args {
    double c[6];
    const double *o[4];
    double *m;             /* the row */
    const double *b;
    size_t lead_reach;     /* doubles readable from o[nr-1] on (prefetch bound) */
    size_t b_reach;        /* doubles readable from b on */
} row_args;

/* One point x of the row; left / right neighbour where inside the row. odd: as rb_xsplit_at(). */
static inline void point_at(int nr, const row_args *a, size_t x, size_t W, double cb, double cc, size_t odd)
{
    const size_t p = rb_xsplit_at(x, odd);
    double v = cb * a->b[p];
    for (int i = 0; i < nr / 2; i++) v = MADD(a->c[i], a->o[i][p], v);
    if (x > 0) v = MADD(a->c[nr / 2], a->m[rb_xsplit_at(x - 1, odd)], v);
    if (x + 1 < W) v = MADD(a->c[nr / 2 + 1], a->m[rb_xsplit_at(x + 1, odd)], v);
    for (int i = nr / 2; i < nr; i++) v = MADD(a->c[i + 2], a->o[i][p], v);
    a->m[p] = MADD(cc, a->m[p], v);
}

static inline void point(int nr, const row_args *a, size_t x, size_t W, double cb, double cc)
{
    point_at(nr, a, x, W, cb, cc, 0);
}

static inline void prefetch_ahead(const double *p, size_t x, size_t reach, size_t ahead)
{
#if defined(__GNUC__)
    for (size_t q = x + ahead; q < x + ahead + 64 && q < reach; q += 8) __builtin_prefetch(p + q, 0, 2);
#else
    (void)p, (void)x, (void)reach, (void)ahead;
#endif
}

/* Points x = first, first + 2, ... < W of the row (first in {0, 1}). nr = 2 (2D) or 4 (3D). */
static inline void row_kernel(int nr, const row_args *a, size_t first, size_t W, double cb, double cc)
{
    size_t x = 2 - first; /* the first point with a left neighbour */
    if (first == 0 && W > 0) point(nr, a, 0, W, cb, cc);
#if defined(RB_REDBLACK_AVX2)
    if (x + 8 <= W) {
        double *m = a->m;
        const double *b = a->b;
        __m256d c[6];
        for (int i = 0; i < nr + 2; i++) c[i] = _mm256_set1_pd(a->c[i]);
        const __m256d vcb = _mm256_set1_pd(cb), vcc = _mm256_set1_pd(cc);
        /* P holds m[x-4 .. x-1]; only m[x-1] is read from it */
        __m256d P = _mm256_setr_pd(0.0, 0.0, 0.0, m[x - 1]);
        for (; x + 8 <= W; x += 8) {
            if (((x - 2 + first) & 63) == 0) {
                prefetch_ahead(a->o[nr - 1], x, a->lead_reach, PF_LEAD);
                prefetch_ahead(b, x, a->b_reach, PF_B);
            }
            /* lanes are the points x, x+4, x+2, x+6 */
            const __m256d A = _mm256_loadu_pd(m + x), B = _mm256_loadu_pd(m + x + 4);
            const __m256d C = _mm256_unpacklo_pd(A, B), R = _mm256_unpackhi_pd(A, B);
            const __m256d L = _mm256_unpackhi_pd(_mm256_permute2f128_pd(P, A, 0x21), _mm256_permute2f128_pd(A, B, 0x21));
            __m256d v = _mm256_mul_pd(vcb, _mm256_unpacklo_pd(_mm256_loadu_pd(b + x), _mm256_loadu_pd(b + x + 4)));
            for (int i = 0; i < nr / 2; i++)
                v = _mm256_fmadd_pd(c[i], _mm256_unpacklo_pd(_mm256_loadu_pd(a->o[i] + x), _mm256_loadu_pd(a->o[i] + x + 4)), v);
            v = _mm256_fmadd_pd(c[nr / 2], L, v);
            v = _mm256_fmadd_pd(c[nr / 2 + 1], R, v);
            for (int i = nr / 2; i < nr; i++)
                v = _mm256_fmadd_pd(c[i + 2], _mm256_unpacklo_pd(_mm256_loadu_pd(a->o[i] + x), _mm256_loadu_pd(a->o[i] + x + 4)), v);
            v = _mm256_fmadd_pd(vcc, C, v);
            _mm256_storeu_pd(m + x, _mm256_unpacklo_pd(v, R));
            _mm256_storeu_pd(m + x + 4, _mm256_unpackhi_pd(v, R));
            P = B;
        }
    }
#endif
    for (; x < W; x += 2) point(nr, a, x, W, cb, cc);
}

/* The row kernel for rows stored split (xsplit.h: the row's even points m[0 .. Ke), then its odd
 * points m[Ke .. W)), 2D: the colour's points of the row are one half (t: 0 even, Ke odd; KT of
 * them), their left / right neighbours the other half (s; KS) at k + first - 1 and k + first,
 * their neighbour rows' values and b at the same place as the point. The same operations as
 * row_kernel in the same order: the same numbers, bit for bit, and no shuffles. */
static void split_row_kernel(const row_args *a, size_t first, size_t W, double cb, double cc, const char *pu,
                             const char *pb)
{
    const size_t Ke = (W + 1) / 2, t = first ? Ke : 0, s = first ? 0 : Ke, KT = first ? W / 2 : Ke, KS = W - KT;
    double *T = a->m + t;
    const double *S = a->m + s, *up = a->o[0] + t, *dn = a->o[1] + t, *b = a->b + t;
    /* k has both neighbours for k + first in [1, KS) */
    const size_t kb = 1 - first, ke = KS - first < KT ? KS - first : KT;
    size_t k = 0;
    for (; k < kb && k < KT; k++) point_at(2, a, 2 * k + first, W, cb, cc, Ke);
#if defined(RB_REDBLACK_AVX2)
    const __m256d c0 = _mm256_set1_pd(a->c[0]), cl = _mm256_set1_pd(a->c[1]), cr = _mm256_set1_pd(a->c[2]),
                  c1 = _mm256_set1_pd(a->c[3]), vcb = _mm256_set1_pd(cb), vcc = _mm256_set1_pd(cc);
    const size_t row_bytes = W * sizeof(double);
    size_t pos = 0;
    for (; k + 4 <= ke; k += 4) {
        if (pu != NULL && pos < row_bytes) { /* 2 of the W / 8 lines of each row per 4 points */
            __builtin_prefetch(pu + pos, 0, 2), __builtin_prefetch(pu + pos + 64, 0, 2);
            __builtin_prefetch(pb + pos, 0, 2), __builtin_prefetch(pb + pos + 64, 0, 2);
            pos += 128;
        }
        __m256d v = _mm256_mul_pd(vcb, _mm256_loadu_pd(b + k));
        v = _mm256_fmadd_pd(c0, _mm256_loadu_pd(up + k), v);
        v = _mm256_fmadd_pd(cl, _mm256_loadu_pd(S + k + first - 1), v);
        v = _mm256_fmadd_pd(cr, _mm256_loadu_pd(S + k + first), v);
        v = _mm256_fmadd_pd(c1, _mm256_loadu_pd(dn + k), v);
        _mm256_storeu_pd(T + k, _mm256_fmadd_pd(vcc, _mm256_loadu_pd(T + k), v));
    }
#else
    (void)pu, (void)pb;
#endif
    for (; k < ke; k++) {
        double v = cb * b[k];
        v = MADD(a->c[0], up[k], v);
        v = MADD(a->c[1], S[k + first - 1], v);
        v = MADD(a->c[2], S[k + first], v);
        v = MADD(a->c[3], dn[k], v);
        T[k] = MADD(cc, T[k], v);
    }
    for (; k < KT; k++) point_at(2, a, 2 * k + first, W, cb, cc, Ke);
}

/* ---- the class kernel ------------------------------------------------------------------------ */

#define CLASS_LANES RB_TAP_LANES
_Static_assert(CLASS_LANES == 8, "the class kernel's blocks (and the packed layout) are two vectors of 4 doubles");

long long rb_redblack_class_first(bool parity, int cls, size_t z, size_t y)
{
    if (!parity) return (long long)((z + y + (size_t)cls) % 2);
    if ((int)(y % 2) != ((cls >> 1) & 1) || (int)(z % 2) != ((cls >> 2) & 1)) return -1;
    return cls & 1;
}

/* u + h F at grid point g from u and r = b - A u: u + h (r * (1/D)) or u + h (r / D_g). */
static inline double class_update(const rb_class_step *c, double u, double r, size_t g)
{
    return u + c->h * (c->dvar != NULL ? r / c->dvar[g] : r * c->inv);
}

/* Point p (grid point g = (z, y, x)), every tap checked against the grid (D, H, W); tap t's
 * weight is w[t * ts]. */
static void class_point_checked(const rb_class_step *c, double *u, const double *b, size_t p, size_t g, size_t z,
                                size_t y, size_t x, size_t D, size_t H, size_t W, const double *w, size_t ts)
{
    double ax = 0.0;
    for (int t = 0; t < c->nt; t++) {
        const int dz = c->tap[t][0], dy = c->tap[t][1], dx = c->tap[t][2];
        if ((dz < 0 && z == 0) || (dz > 0 && z + 1 == D) || (dy < 0 && y == 0) || (dy > 0 && y + 1 == H) ||
            (dx < 0 && x == 0) || (dx > 0 && x + 1 == W))
            continue;
        ax += w[(size_t)t * ts] * u[(long long)p + c->off[t]];
    }
    u[p] = class_update(c, u[p], b[p] - ax, g);
}

/* Point p (grid point g) whose taps all lie inside the grid. */
static inline void class_point_inside(const rb_class_step *c, double *u, const double *b, size_t p, size_t g,
                                      const double *w, size_t ts)
{
    double ax = 0.0;
    for (int t = 0; t < c->nt; t++) ax += w[(size_t)t * ts] * u[(long long)p + c->off[t]];
    u[p] = class_update(c, u[p], b[p] - ax, g);
}

/* The packed layout (rb_redblack_class_pack). A row's slot holds its class points' weights:
 * x = 0 if the class has it (x0 = 2, else x0 = 1), the blocks class_inner runs from x0, then
 * the points after them (xt on). */
static inline size_t pack_slot(size_t z, size_t y, size_t H) { return (z / 2) * ((H + 1) / 2) + y / 2; }
static inline size_t pack_blocks(size_t W, size_t x0)
{
    return x0 + CLASS_LANES < W ? (W - x0 - CLASS_LANES - 1) / CLASS_LANES + 1 : 0;
}
static inline size_t pack_row(size_t W, size_t x0, int nt) { return (W - (x0 & 1) + 1) / 2 * (size_t)nt; }

/* Point x's weights in the row's slot pw: tap 0's, and *ts the stride between taps. */
static inline const double *packed_point(const double *pw, size_t W, size_t x0, int nt, size_t x, size_t *ts)
{
    static const size_t lane[4] = {0, 2, 1, 3}; /* block lanes: x, x+4, x+2, x+6 */
    const size_t head = x0 == 2 ? (size_t)nt : 0, nb = pack_blocks(W, x0), xt = x0 + CLASS_LANES * nb;
    if (x < x0) return *ts = 1, pw;
    if (x < xt) {
        const size_t k = (x - x0) / CLASS_LANES, i = (x - x0) % CLASS_LANES / 2;
        return *ts = 4, pw + head + k * (size_t)nt * 4 + lane[i];
    }
    return *ts = 1, pw + head + nb * (size_t)nt * 4 + (x - xt) / 2 * (size_t)nt;
}

/* Point x's weights: packed (pw != NULL) or in place. */
static inline const double *point_weights(const rb_class_step *c, const double *pw, size_t W, size_t x0, size_t g,
                                          size_t x, size_t *ts)
{
    if (pw != NULL) return packed_point(pw, W, x0, c->nt, x, ts);
    *ts = c->tstride;
    return c->w + g * c->wstep;
}

size_t rb_redblack_class_pack_count(rb_shape grid, int nt, int cls)
{
    return ((grid.d + 1) / 2) * ((grid.h + 1) / 2) * pack_row(grid.w, (cls & 1) ? 1 : 2, nt);
}

void rb_redblack_class_pack(const double *w, rb_shape grid, int nt, int cls, double *out)
{
    const size_t D = grid.d, H = grid.h, W = grid.w, points = D * H * W, x0 = (cls & 1) ? 1 : 2;
    const size_t row = pack_row(W, x0, nt);
    for (size_t z = (size_t)(cls >> 2) & 1; z < D; z += 2)
        for (size_t y = (size_t)(cls >> 1) & 1; y < H; y += 2)
            for (size_t x = (size_t)(cls & 1); x < W; x += 2) {
                size_t ts;
                double *o = (double *)packed_point(out + pack_slot(z, y, H) * row, W, x0, nt, x, &ts);
                for (int t = 0; t < nt; t++) o[(size_t)t * ts] = w[(size_t)t * points + (z * H + y) * W + x];
            }
}

/* The class's points x = xx, xx + 2, ... of a row whose taps all lie inside, as far as whole
 * blocks of CLASS_LANES consecutive points reach x <= W - 2: each block's sums for all of its
 * points (contiguous loads, which the compiler vectorises), stored for the class's points
 * only -- the others' sums read class points, which the step writes, and are dropped. Per
 * point the operations of class_point_inside. base / local: the row's first point in u /
 * in the grid. Returns the next xx. */
static size_t class_inner(const rb_class_step *c, double *u, const double *b, size_t base, size_t local, size_t xx,
                          size_t W, const double *pw)
{
    const int nt = c->nt;
    const double *wp[RB_CONV_MAX_TAPS], *up[RB_CONV_MAX_TAPS];
    for (int t = 0; t < nt; t++) {
        wp[t] = c->w + (size_t)t * c->tstride + local * c->wstep;
        up[t] = u + (long long)base + c->off[t];
    }
    double *row = u + base;
    const double *brow = b + base;
    /* more weight streams than the hardware prefetchers follow: prefetched rows ahead */
    const size_t ahead = c->wstep ? rb_weight_prefetch_ahead(nt, W) : 0;
#if defined(RB_REDBLACK_AVX2)
    /* the same with AVX2 intrinsics: mul then add per tap (as the scalar sums, unfused), the
     * update for all lanes, blended into the old values at the class's lanes 0 and 2 (the
     * others are written back unchanged) */
    const __m256d vh = _mm256_set1_pd(c->h), vinv = _mm256_set1_pd(c->inv);
    /* with packed weights (point-dependent, rb_redblack_class_pack): only the class's 4 points
     * of each block, its values split off by unpacklo (lanes x, x+4, x+2, x+6, as the packed
     * weights), the same operations per point, interleaved back with the other points */
    if (pw != NULL && c->dvar != NULL)
        for (; xx + CLASS_LANES < W; xx += CLASS_LANES, pw += (size_t)nt * 4) {
            __m256d a = _mm256_setzero_pd();
            for (int t = 0; t < nt; t++) {
                const double *ut = up[t] + xx;
                const __m256d v = _mm256_unpacklo_pd(_mm256_loadu_pd(ut), _mm256_loadu_pd(ut + 4));
                a = _mm256_add_pd(a, _mm256_mul_pd(_mm256_loadu_pd(pw + 4 * t), v));
            }
            const double *d = c->dvar + local + xx;
            const __m256d A = _mm256_loadu_pd(row + xx), B = _mm256_loadu_pd(row + xx + 4);
            const __m256d uc = _mm256_unpacklo_pd(A, B), uo = _mm256_unpackhi_pd(A, B);
            __m256d r = _mm256_sub_pd(_mm256_unpacklo_pd(_mm256_loadu_pd(brow + xx), _mm256_loadu_pd(brow + xx + 4)), a);
            r = _mm256_div_pd(r, _mm256_unpacklo_pd(_mm256_loadu_pd(d), _mm256_loadu_pd(d + 4)));
            const __m256d v = _mm256_add_pd(uc, _mm256_mul_pd(vh, r));
            _mm256_storeu_pd(row + xx, _mm256_unpacklo_pd(v, uo));
            _mm256_storeu_pd(row + xx + 4, _mm256_unpackhi_pd(v, uo));
        }
    for (; xx + CLASS_LANES < W; xx += CLASS_LANES) {
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        if (c->wstep)
            for (int t = 0; t < nt; t++) {
                const double *wt = wp[t] + xx, *ut = up[t] + xx;
                if (ahead) rb_prefetch_weights(wt + ahead);
                a0 = _mm256_add_pd(a0, _mm256_mul_pd(_mm256_loadu_pd(wt), _mm256_loadu_pd(ut)));
                a1 = _mm256_add_pd(a1, _mm256_mul_pd(_mm256_loadu_pd(wt + 4), _mm256_loadu_pd(ut + 4)));
            }
        else
            for (int t = 0; t < nt; t++) {
                const __m256d wt = _mm256_broadcast_sd(wp[t]);
                const double *ut = up[t] + xx;
                a0 = _mm256_add_pd(a0, _mm256_mul_pd(wt, _mm256_loadu_pd(ut)));
                a1 = _mm256_add_pd(a1, _mm256_mul_pd(wt, _mm256_loadu_pd(ut + 4)));
            }
        const __m256d u0 = _mm256_loadu_pd(row + xx), u1 = _mm256_loadu_pd(row + xx + 4);
        __m256d r0 = _mm256_sub_pd(_mm256_loadu_pd(brow + xx), a0), r1 = _mm256_sub_pd(_mm256_loadu_pd(brow + xx + 4), a1);
        if (c->dvar != NULL) {
            const double *d = c->dvar + local + xx;
            r0 = _mm256_div_pd(r0, _mm256_loadu_pd(d)), r1 = _mm256_div_pd(r1, _mm256_loadu_pd(d + 4));
        } else {
            r0 = _mm256_mul_pd(r0, vinv), r1 = _mm256_mul_pd(r1, vinv);
        }
        _mm256_storeu_pd(row + xx, _mm256_blend_pd(u0, _mm256_add_pd(u0, _mm256_mul_pd(vh, r0)), 0x5));
        _mm256_storeu_pd(row + xx + 4, _mm256_blend_pd(u1, _mm256_add_pd(u1, _mm256_mul_pd(vh, r1)), 0x5));
    }
#else
    (void)pw;
#endif
    for (; xx + CLASS_LANES < W; xx += CLASS_LANES) {
        double ax[CLASS_LANES] = {0};
        if (c->wstep)
            rb_tap_sums(nt, wp, up, xx, ahead, ax);
        else
            for (int t = 0; t < nt; t++) {
                const double wt = *wp[t], *ut = up[t] + xx;
                for (size_t i = 0; i < CLASS_LANES; i++) ax[i] += wt * ut[i];
            }
        for (size_t i = 0; i < CLASS_LANES; i += 2)
            row[xx + i] = class_update(c, row[xx + i], brow[xx + i] - ax[i], local + xx + i);
    }
    return xx;
}

/* Class cls's points in row y of plane z of sample s. */
static void class_row(const rb_redblack *k, int cls, size_t s, size_t z, size_t y)
{
    const rb_class_step *c = k->cls;
    const size_t D = k->d, H = k->h, W = k->w;
    const long long first = rb_redblack_class_first(c->parity, cls, z, y);
    if (first < 0) return;
    const size_t local = (z * H + y) * W, base = s * D * H * W + local, x0 = first == 0 ? 2 : 1;
    double *u = k->u;
    const double *b = k->b;
    const double *pw = c->packed[cls] != NULL ? c->packed[cls] + pack_slot(z, y, H) * pack_row(W, x0, c->nt) : NULL;
    size_t x = (size_t)first, ts;
    const double *w;
    if ((!c->reach_z || (z > 0 && z + 1 < D)) && (!c->reach_y || (y > 0 && y + 1 < H)) && W >= 3) {
        if (x == 0) {
            w = point_weights(c, pw, W, x0, local, 0, &ts);
            class_point_checked(c, u, b, base, local, z, y, 0, D, H, W, w, ts);
            x = 2;
        }
        x = class_inner(c, u, b, base, local, x, W, pw != NULL ? packed_point(pw, W, x0, c->nt, x, &ts) : NULL);
        for (; x + 1 < W; x += 2) {
            w = point_weights(c, pw, W, x0, local + x, x, &ts);
            class_point_inside(c, u, b, base + x, local + x, w, ts);
        }
    }
    for (; x < W; x += 2) {
        w = point_weights(c, pw, W, x0, local + x, x, &ts);
        class_point_checked(c, u, b, base + x, local + x, z, y, x, D, H, W, w, ts);
    }
}

bool rb_redblack_class_init(const rb_op *J, rb_shape s, double h, bool parity, const int *cls, int ncls, rb_class_step *c,
                            rb_redblack *k)
{
    const rb_jacobi_state *js = rb_jacobi_state_of(J);
    if (js == NULL || !isfinite(h) || s.c != 1 || ncls < 1 || ncls > 8) return false;
    const rb_conv_state *st = rb_conv_state_of(js->A);
    rb_class_step t = {.tap = st != NULL ? st->tap : rb_varstencil_taps(js->A), .h = h, .parity = parity, .ncls = ncls};
    int dims, centre;
    rb_shape grid;
    if (st != NULL) {
        if (st->desc.pattern != RB_STENCIL_STAR && !parity) return false;
        if (st->desc.cin != 1 || st->desc.cout != 1 || st->desc.stride != 1 || st->desc.transposed || st->desc.bias) return false;
        dims = st->desc.dims;
        t.nt = st->ntaps, t.tstride = 1, t.wstep = 0, t.inv = 1.0 / js->diag;
    } else if (t.tap != NULL && js->dvar != NULL && rb_op_varstencil_info(js->A, &dims, &t.nt, &centre, &grid)) {
        if (!parity && t.nt != 2 * dims + 1) return false; /* a red-black colour needs a star */
        t.tstride = rb_shape_count(grid), t.wstep = 1, t.dvar = js->dvar;
        if (s.d != grid.d || s.h != grid.h || s.w != grid.w) return false;
    } else {
        return false;
    }
    for (int i = 0; i < ncls; i++) {
        if (cls[i] < 0 || cls[i] > (parity ? 7 : 1)) return false;
        t.cls[i] = cls[i];
    }
    for (int i = 0; i < t.nt; i++) {
        t.off[i] = ((long long)t.tap[i][0] * (long long)s.h + t.tap[i][1]) * (long long)s.w + t.tap[i][2];
        if (t.tap[i][0] != 0) t.reach_z = true;
        if (t.tap[i][1] != 0) t.reach_y = true;
    }
    t.w = js->A->params;
    *c = t;
    k->dims = s.d > 1 || dims == 3 ? 3 : 2; /* lines: planes in 3D, rows otherwise */
    grid_of_kernel(k, s, js->b.data, c);
    return true;
}

/* ---- lines: a row (2D) or a plane (3D) of one sample ----------------------------------------- */

/* Step st (colour (colour0 + st) mod 2, or the class kernel's class) on line l of sample s: in
 * 3D on the plane's rows y0 <= y < y1 (2D: the row l; y0, y1 not read). */
static void line(const rb_redblack *k, size_t s, int colour0, int st, size_t l, size_t y0, size_t y1)
{
    if (k->cls != NULL) {
        const int cls = k->cls->cls[(k->step0 + st) % k->cls->ncls];
        if (k->dims == 3)
            for (size_t y = y0; y < y1; y++) class_row(k, cls, s, l, y);
        else
            class_row(k, cls, s, 0, l);
        return;
    }
    const int colour = (colour0 + st) & 1;
    const size_t D = k->d, H = k->h, W = k->w, plane = H * W, total = k->n * D * plane;
    row_args a;
    if (k->dims == 2) {
        const size_t off = (s * H + l) * W;
        a.m = k->u + off, a.b = k->b + off;
        a.o[0] = l > 0 ? a.m - W : a.m;
        a.o[1] = l + 1 < H ? a.m + W : a.m;
        a.c[0] = l > 0 ? k->cn[0] : 0.0, a.c[1] = k->cn[1], a.c[2] = k->cn[2];
        a.c[3] = l + 1 < H ? k->cn[3] : 0.0;
        a.lead_reach = l + 1 < H ? total - off - W : W;
        a.b_reach = total - off;
        if (k->split) { /* the first step prefetches rows l + 2 of u and b whole (its neighbour row
                         * l + 1 is half read; the hardware prefetchers miss the half-row runs) */
            const bool ahead = st == 0 && l + SPLIT_AHEAD < H;
            split_row_kernel(&a, (l + (size_t)colour) & 1, W, k->cb, k->cc,
                             ahead ? (const char *)(a.m + SPLIT_AHEAD * W) : NULL,
                             ahead ? (const char *)(a.b + SPLIT_AHEAD * W) : NULL);
        } else {
            row_kernel(2, &a, (l + (size_t)colour) & 1, W, k->cb, k->cc);
        }
        return;
    }
    for (size_t y = y0; y < y1; y++) {
        const size_t off = ((s * D + l) * H + y) * W;
        a.m = k->u + off, a.b = k->b + off;
        a.o[0] = l > 0 ? a.m - plane : a.m;
        a.o[1] = y > 0 ? a.m - W : a.m;
        a.o[2] = y + 1 < H ? a.m + W : a.m;
        a.o[3] = l + 1 < D ? a.m + plane : a.m;
        a.c[0] = l > 0 ? k->cn[0] : 0.0, a.c[1] = y > 0 ? k->cn[1] : 0.0;
        a.c[2] = k->cn[2], a.c[3] = k->cn[3];
        a.c[4] = y + 1 < H ? k->cn[4] : 0.0, a.c[5] = l + 1 < D ? k->cn[5] : 0.0;
        a.lead_reach = l + 1 < D ? total - off - plane : W;
        a.b_reach = total - off;
        row_kernel(4, &a, (l + y + (size_t)colour) & 1, W, k->cb, k->cc);
    }
}

/* ---- the residual stage ------------------------------------------------------------------------ */

/* One thread's residual lines: a ring of three lines, the first line of the current
 * contiguous run, and the sum of squares so far. */
typedef struct then_run {
    double *ring;
    long long start, next; /* next: the line after the last one computed (-1: none) */
    double acc;
} then_run;

static rb_shape grid_of(const rb_redblack *k)
{
    rb_shape s = {k->n, 1, k->d, k->h, k->w};
    return s;
}

/* Rows of a line: a plane's H in 3D, 1 otherwise (the row is the line). */
static size_t line_rows(const rb_redblack *k) { return k->dims == 3 ? k->h : 1; }

/* Residual line l of sample s into its ring slot (l mod 3): in 3D its rows y0 .. y1 - 1 only. */
static double *residual_line(const rb_redblack *k, const then_run *r, size_t s, long long l, size_t y0, size_t y1)
{
    const rb_redblack_then *t = k->then;
    double *slot = r->ring + (size_t)(l % 3) * t->line;
    if (t->vA != NULL) rb_varstencil_residual_line(t->vA, k->dims, k->u, t->f, s, (size_t)l, y0, y1, slot);
    else if (k->split) rb_stencil_residual_line_split(&t->A, grid_of(k), k->u, t->f, s, (size_t)l, slot);
    else rb_stencil_residual_line(&t->A, grid_of(k), k->u, t->f, s, (size_t)l, y0, y1, slot);
    return slot;
}

/* Coarse line C from the ring, which holds the fine lines 2C .. 2C+2: in 3D its rows Y0 .. Y1 - 1. */
static void restrict_from_ring(const rb_redblack *k, const then_run *r, size_t s, long long C, size_t Y0, size_t Y1)
{
    const rb_redblack_then *t = k->then;
    const double *lines[3];
    for (int i = 0; i < 3; i++) lines[i] = r->ring + (size_t)((2 * C + i) % 3) * t->line;
    rb_transfer_restrict_line(&t->g, k->dims, t->rw, s, (size_t)C, Y0, Y1, lines, t->coarse, k->split,
                              k->split && t->csplit);
}

/* The residual stage on rows a .. b - 1 of line l (3D; 2D: 0, 1): their residual and its
 * squares, and where this run holds the three fine lines of the coarse line that ends at l,
 * the coarse rows whose last fine row 2Y + 2 is one of them (their first two may lie below a:
 * with a restriction, rows a - 2 and a - 1, final since the tile below is done, are computed
 * again). */
static void then_line(const rb_redblack *k, then_run *r, size_t s, long long l, size_t a, size_t b)
{
    const rb_redblack_then *t = k->then;
    if (r->next != l) r->start = l;
    r->next = l + 1;
    const double *slot = residual_line(k, r, s, l, t->rw == NULL ? a : a >= 2 ? a - 2 : 0, b);
    const size_t row = t->line / line_rows(k);
    if (t->norm) r->acc += rb_sum_squares(slot + a * row, (b - a) * row);
    if (t->rw != NULL && l % 2 == 0 && l >= r->start + 2)
        restrict_from_ring(k, r, s, l / 2 - 1, a >= 2 ? (a - 1) / 2 : 0, (b - 1) / 2);
}

/* The coarse line whose fine lines straddle the start b of another run (b >= 1): its three
 * residual lines again (the grid around b is final), then the restriction. */
static void restrict_straddling(const rb_redblack *k, then_run *r, size_t s, long long b)
{
    const long long C = (b + 1) / 2 - 1;
    for (long long l = 2 * C; l <= 2 * C + 2; l++) residual_line(k, r, s, l, 0, line_rows(k));
    restrict_from_ring(k, r, s, C, 0, k->then->g.ch);
}

/* ---- the wavefront ---------------------------------------------------------------------------- */

/* Stage st on rows y0 .. y1 - 1 of line l (3D; 2D: 0, 1): the first stage (the correction
 * added), a colour step, or the residual stage, in that order. */
static void stage(const rb_redblack *k, then_run *r, size_t s, int colour0, int st, int steps, long long l, size_t y0,
                  size_t y1)
{
    if (k->first != NULL && st-- == 0) {
        const rb_redblack_first *p = k->first;
        const size_t len = k->dims == 2 ? k->w : k->h * k->w;
        rb_transfer_prolong_line(&p->g, k->dims, p->w, p->c, s, (size_t)l, y0, y1,
                                 k->u + (s * (k->dims == 2 ? k->h : k->d) + (size_t)l) * len, !p->assign, k->split,
                                 k->split && p->csplit);
    } else if (st < steps) {
        line(k, s, colour0, st, (size_t)l, y0, y1);
    } else {
        then_line(k, r, s, l, y0, y1);
    }
}

/* Stages 0..S-1 on lines [lo + s*shrink_lo, hi - s*shrink_hi) each, stage s one line
 * behind stage s-1: times t = lo .. hi + S - 2, stage s on line t - s. In 3D tile by tile
 * of `tile` rows (tile_rows: S .. H + S - 1, one tile), each all the times: tile j's stage s on
 * rows [j tile - s, (j + 1) tile - s) (the first from row 0, the last to row H), so that stage
 * s finds the rows it reads (y - 1 .. y + 1) as stage s - 1 left them, as along the lines.
 * With `done`: once the last tile's first `reach` times are done (or all, if fewer), s + 1 is
 * stored to it (release). */
static void trapezoid(const rb_redblack *k, then_run *r, size_t s, int colour0, int S, int steps, long long lo,
                      long long hi, int shrink_lo, int shrink_hi, atomic_llong *done, long long reach, long long tile)
{
    const long long times = hi + S - 1 - lo, mark = reach < times ? reach : times, H = (long long)line_rows(k);
    const long long span = H + S - 1;
    for (long long y0 = 0; y0 < span; y0 += tile) {
        const bool last = y0 + tile >= span;
        r->next = -1; /* each tile its own run of residual lines */
        for (long long t = lo; t < hi + S - 1; t++) {
            for (int st = 0; st < S; st++) {
                const long long l = t - st, a = y0 > st ? y0 - st : 0;
                const long long b = last || y0 + tile - st > H ? H : y0 + tile - st;
                if (l >= lo + (long long)st * shrink_lo && l < hi - (long long)st * shrink_hi && a < b)
                    stage(k, r, s, colour0, st, steps, l, (size_t)a, (size_t)b);
            }
            if (done != NULL && last && t - lo + 1 == mark) atomic_store_explicit(done, (long long)s + 1, memory_order_release);
        }
    }
}

/* Wait until *done >= need (acquire): spinning, and after a while yielding the processor (more
 * threads than processors). */
static void wait_for(atomic_llong *done, long long need)
{
    for (unsigned spins = 0; atomic_load_explicit(done, memory_order_acquire) < need; spins++) {
#if defined(RB_REDBLACK_SCHED_YIELD)
        if (spins >= 4096) sched_yield();
#else
        (void)spins;
#endif
    }
}

long long rb_redblack_bound(long long L, int S, int T, int t)
{
    /* the L / T lines of an even split, every inner boundary moved (S - 1) / 2 lines down */
    return t <= 0 ? 0 : t >= T ? L : L * t / T - (S - 1) / 2;
}

long long rb_redblack_reach(int S) { return 2LL * S + 3; }

/* What the trapezoids left around the block boundary r: stage s on lines [r - s, r + s). */
static void triangle(const rb_redblack *k, then_run *run, size_t s, int colour0, int S, int steps, long long r)
{
    for (long long t = r - S; t < r + 2LL * S; t++)
        for (int st = 0; st < S; st++) {
            long long l = t - st;
            if (l >= r - st && l < r + st) stage(k, run, s, colour0, st, steps, l, 0, line_rows(k));
        }
}

/* Grid points per sample below which one thread runs: with point-dependent weights (a
 * varstencil's, streamed per point) a step costs 3-5x the star kernel's (127^3: 4.6 against 1.3
 * ns per point), so the threads pay off on 4x smaller grids (31^3 of a Galerkin hierarchy). */
static size_t parallel_min(const rb_redblack *k) { return k->cls != NULL && k->cls->wstep ? PARALLEL_MIN / 4 : PARALLEL_MIN; }

/* Rows per tile of a run with S stages (trapezoid), S .. span = H + S - 1 (one tile): k->tile if
 * set; else in 3D, where the planes a thread's wavefront holds (about 2 S of u and b) would fill
 * more than TILE_BYTES of the caches, as many even tiles as keep it within that; else one tile.
 * Not parity classes by default: their 27-point weights, streamed once per class step, outweigh
 * the planes of u and b (255^3 Galerkin FMG: 5-8 % slower in tiles; the 7-point star's 15-17 %
 * faster with point-dependent weights, and at 511^3 1.6x with constant ones). */
static long long tile_rows(const rb_redblack *k, int S)
{
    const size_t span = line_rows(k) + (size_t)S - 1, fit = TILE_BYTES / (2 * (size_t)S * k->w * sizeof(double));
    size_t tile = span;
    if (k->tile > 0) {
        tile = k->tile;
    } else if (k->dims == 3 && fit < k->h && (k->cls == NULL || !k->cls->parity)) {
        const size_t tiles = (span + fit - 1) / (fit > 0 ? fit : 1);
        tile = (span + tiles - 1) / tiles;
    }
    return (long long)(tile < (size_t)S ? (size_t)S : tile > span ? span : tile);
}

void rb_redblack_run(const rb_redblack *k, int colour0, int steps, int threads)
{
    if (steps < 1) return;
    rb_redblack_then *then = k->then;
    const int before = k->first != NULL, stages = before + steps + (then != NULL);
    const long long L = (long long)(k->dims == 2 ? k->h : k->d);
    /* blocks of at least 2 stages + 2 lines, so that the triangles do not meet */
    const long long most = L / (2LL * stages + 2);
    if (threads > most && threads > 1 && steps > 1 && k->d * k->h * k->w >= parallel_min(k)) {
        /* more stages than the threads' blocks hold: the steps in several passes of as many
         * as they hold (the first stage with the first pass, the residual stage with the
         * last) -- the same steps in the same order, so the same numbers */
        const long long per = L / (2LL * threads) - 1 - before - (then != NULL);
        if (per >= 1) {
            rb_redblack part = *k;
            for (int done = 0; done < steps;) {
                const int m = (int)(per < steps - done ? per : steps - done);
                part.first = done == 0 ? k->first : NULL;
                part.then = done + m == steps ? k->then : NULL;
                part.step0 = k->step0 + done;
                rb_redblack_run(&part, (colour0 + done) & 1, m, threads);
                done += m;
            }
            return;
        }
    }
    if (threads > most) threads = (int)most;
    if (k->d * k->h * k->w < parallel_min(k)) threads = 1;
    if (then != NULL && threads > then->max_threads) threads = then->max_threads;
    if (then != NULL) then->norm2 = 0.0;
    const long long tile = tile_rows(k, stages);
    if (threads <= 1) {
        then_run r = {then ? then->ring : NULL, 0, -1, 0.0};
        for (size_t s = 0; s < k->n; s++) trapezoid(k, &r, s, colour0, stages, steps, 0, L, 0, 0, NULL, 0, tile);
        if (then != NULL) then->norm2 = r.acc;
        return;
    }
    double part[64] = {0};
    if (threads > 64) threads = 64;
    /* progress[t].v: the samples whose first rb_redblack_reach times thread t's trapezoid has done */
    struct {
        _Alignas(64) atomic_llong v; /* a cache line each */
    } progress[64];
    for (int t = 0; t < threads; t++) atomic_init(&progress[t].v, 0);
    const long long reach = rb_redblack_reach(stages);
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
        const long long r0 = rb_redblack_bound(L, stages, T, t), r1 = rb_redblack_bound(L, stages, T, t + 1);
        then_run r = {then ? then->ring + (size_t)t * 3 * then->line : NULL, 0, -1, 0.0};
#pragma omp single nowait
        used = (int)T;
        for (size_t s = 0; s < k->n; s++) {
            trapezoid(k, &r, s, colour0, stages, steps, r0, r1, t > 0, t + 1 < T, t > 0 ? &progress[t].v : NULL,
                      reach, tile);
            if (t + 1 < T) {
                wait_for(&progress[t + 1].v, (long long)s + 1);
                /* the triangle continues this thread's run of residual lines (stage S - 1: up to
                 * r1 + S - 1), or in tiles starts one of its own (whole lines); the next thread's
                 * starts there, and the grid around it is final now */
                const bool tiled = tile < (long long)line_rows(k) + stages - 1; /* (tile_rows) */
                if (tiled) r.next = -1;
                triangle(k, &r, s, colour0, stages, steps, r1);
                if (then != NULL && then->rw != NULL) {
                    restrict_straddling(k, &r, s, r1 + before + steps);
                    if (tiled) restrict_straddling(k, &r, s, r1 - before - steps);
                }
            }
        }
        part[t] = r.acc;
    }
    if (then != NULL)
        for (int t = 0; t < used; t++) then->norm2 += part[t];
}
