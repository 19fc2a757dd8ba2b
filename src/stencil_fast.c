/* stencil_fast.c — single-channel 2D 3-wide stride-1 stencils (3x3 and 5-point),
 * the memory-bound grid kernels.
 *
 * One row loop serves both y = A x (behind the conv op's apply) and the fused
 * damped-Jacobi sweep (jacobi_fused.c). Interior points run a branch-free loop
 * the compiler vectorises; the first and last column, and rows whose neighbour
 * row lies outside the grid, go through a per-point loop over the taps that
 * skips what is outside, exactly as the reference rb_conv_gather does. Sums run
 * in tap order with separate multiplies and adds (no FMA contraction in ISO C
 * mode), so results equal the reference loop's.
 *
 * Speed (bench/bench_stencil.c, bench/results_stencil.md): one core does not keep
 * enough cache misses in flight for a 3-row stencil on its own, so the two
 * streams that come from memory (the row below and b) are prefetched 8 and 16 KB
 * ahead into L2. The in-place Jacobi row keeps the old row in AVX2 registers,
 * shifted across lanes, instead of copying it first: that pass is the one the
 * smoothers run. Out of place, on grids larger than the last-level cache, the
 * output goes out with streaming stores (no read-for-ownership of lines about to
 * be overwritten), software-pipelined against 4K aliasing. Without AVX2 the plain
 * C loops run (same results).
 */
#include "grid_fast.h"
#include "xsplit_internal.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* How far ahead (in doubles) the two memory streams are prefetched: the row below
 * 8 KB, b 16 KB. Different distances, because x and b usually share their address
 * modulo 4 KB, and prefetches issued together to the same cache sets slow each other. */
#define PF_DN 1024
#define PF_B 2048
#define CHUNK 64 /* points per prefetch group: 8 cache lines per stream */

/* Prefetch into L2 the cache lines of p[j + ahead .. + CHUNK) that lie below p[reach]. */
static inline void prefetch_chunk(const double *p, size_t j, size_t reach, size_t ahead)
{
#if defined(__GNUC__)
    for (size_t k = j + ahead; k < j + ahead + CHUNK && k < reach; k += 8) __builtin_prefetch(p + k, 0, 2);
#else
    (void)p, (void)j, (void)reach, (void)ahead;
#endif
}

bool rb_stencil2d_init(const rb_conv_state *cs, const double *w, rb_stencil2d *s)
{
    if (cs == NULL || w == NULL) return false;
    const rb_conv_desc *d = &cs->desc;
    if (d->dims != 2 || d->cin != 1 || d->cout != 1 || d->stride != 1 || d->transposed || d->bias || d->ksize != 3)
        return false;
    int want = d->pattern == RB_STENCIL_FULL ? 9 : d->pattern == RB_STENCIL_STAR ? 5 : -1;
    if (cs->ntaps != want) return false;
    s->ntaps = cs->ntaps;
    for (int t = 0; t < s->ntaps; t++) {
        s->dy[t] = cs->tap[t][1];
        s->dx[t] = cs->tap[t][2];
        s->w[t] = w[t];
    }
    return true;
}

/* sum_t w[t] x[row dy_t][j + dx_t] over the taps inside the grid, in tap order. */
/* odd != 0: the rows are stored split (xsplit.h; odd as rb_xsplit_at). */
static double point_ax_at(const rb_stencil2d *s, size_t W, const double *const rows[3], size_t j, size_t odd)
{
    double acc = 0.0;
    for (int t = 0; t < s->ntaps; t++) {
        const double *r = rows[s->dy[t] + 1];
        long long c = (long long)j + s->dx[t];
        if (r == NULL || c < 0 || c >= (long long)W) continue;
        acc += s->w[t] * r[rb_xsplit_at((size_t)c, odd)];
    }
    return acc;
}

static double point_ax(const rb_stencil2d *s, size_t W, const double *const rows[3], size_t j)
{
    return point_ax_at(s, W, rows, j, 0);
}

static void point(const rb_stencil2d *s, size_t W, const double *const rows[3], const double *b, double inv,
                  double h, double *y, size_t j)
{
    double ax = point_ax(s, W, rows, j);
    y[j] = b == NULL ? ax : rows[1][j] + h * ((b[j] - ax) * inv);
}

/* Interior sums, taps in order: 3x3 row-major over (dy, dx); star (-1,0) (0,-1) (0,0) (0,1) (1,0). */
#define AX_FULL(j)                                                                                          \
    (w0 * u[(j) - 1] + w1 * u[(j)] + w2 * u[(j) + 1] + w3 * m[(j) - 1] + w4 * m[(j)] + w5 * m[(j) + 1] + \
     w6 * d[(j) - 1] + w7 * d[(j)] + w8 * d[(j) + 1])
#define AX_STAR(j) (w0 * u[(j)] + w1 * m[(j) - 1] + w2 * m[(j)] + w3 * m[(j) + 1] + w4 * d[(j)])

/* for j in [jb, je): y[j] = expr, in chunks of CHUNK points, each prefetching the streams ahead. */
#define CHUNKED_LOOP(expr)                                                 \
    for (size_t j0 = jb; j0 < je; j0 += CHUNK) {                           \
        const size_t j1 = j0 + CHUNK < je ? j0 + CHUNK : je;               \
        prefetch_chunk(d, j0, dn_ahead, PF_DN);                            \
        if (b != NULL) prefetch_chunk(b, j0, b_ahead, PF_B);               \
        _Pragma("omp simd") for (size_t j = j0; j < j1; j++) y[j] = expr; \
    }

/* Interior points jb .. je-1 (1 <= jb, je <= W-1) of a row with both neighbour rows inside the grid. */
static void row_interior(const rb_stencil2d *s, size_t jb, size_t je, const double *restrict u,
                         const double *restrict m, const double *restrict d, const double *restrict b, double inv,
                         double h, double *restrict y, size_t dn_ahead, size_t b_ahead)
{
    if (s->ntaps == 9) {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4], w5 = s->w[5];
        const double w6 = s->w[6], w7 = s->w[7], w8 = s->w[8];
        if (b == NULL) {
            CHUNKED_LOOP(AX_FULL(j))
        } else {
            CHUNKED_LOOP(m[j] + h * ((b[j] - AX_FULL(j)) * inv))
        }
    } else {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4];
        if (b == NULL) {
            CHUNKED_LOOP(AX_STAR(j))
        } else {
            CHUNKED_LOOP(m[j] + h * ((b[j] - AX_STAR(j)) * inv))
        }
    }
}

/* Interior points of the residual r = f - A x (same A x as row_interior), streams prefetched. */
static void row_interior_residual(const rb_stencil2d *s, size_t jb, size_t je, const double *restrict u,
                                  const double *restrict m, const double *restrict d, const double *restrict b,
                                  double *restrict y, size_t dn_ahead, size_t b_ahead)
{
    if (s->ntaps == 9) {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4], w5 = s->w[5];
        const double w6 = s->w[6], w7 = s->w[7], w8 = s->w[8];
        CHUNKED_LOOP(b[j] - AX_FULL(j))
    } else {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4];
        CHUNKED_LOOP(b[j] - AX_STAR(j))
    }
}

#if defined(__AVX2__)
/* With P = m[j-4..j-1], A = m[j..j+3], N = m[j+4..j+7] in registers:
 * m[j-1..j+2] = (P3, A0, A1, A2) and m[j+1..j+4] = (A1, A2, A3, N0). */
static inline __m256d lanes_left(__m256d P, __m256d A)
{
    return _mm256_shuffle_pd(_mm256_permute2f128_pd(P, A, 0x21), A, 5);
}
static inline __m256d lanes_right(__m256d A, __m256d N)
{
    return _mm256_shuffle_pd(A, _mm256_permute2f128_pd(A, N, 0x21), 5);
}

/* A x at points j..j+3, given the mid row's m[j-1..j+2], m[j..j+3], m[j+1..j+4]
 * (L, A, R): the operation order of AX_FULL / AX_STAR. */
static inline __m256d ax_avx2(bool full, const __m256d *w, const double *u, __m256d L, __m256d A, __m256d R,
                              const double *d, size_t j)
{
    __m256d ax;
    if (full) {
        ax = _mm256_mul_pd(w[0], _mm256_loadu_pd(u + j - 1));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[1], _mm256_loadu_pd(u + j)));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[2], _mm256_loadu_pd(u + j + 1)));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[3], L));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[4], A));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[5], R));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[6], _mm256_loadu_pd(d + j - 1)));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[7], _mm256_loadu_pd(d + j)));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[8], _mm256_loadu_pd(d + j + 1)));
    } else {
        ax = _mm256_mul_pd(w[0], _mm256_loadu_pd(u + j));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[1], L));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[2], A));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[3], R));
        ax = _mm256_add_pd(ax, _mm256_mul_pd(w[4], _mm256_loadu_pd(d + j)));
    }
    return ax;
}

/* m + h * ((b - ax) * inv) at points j..j+3 */
static inline __m256d jacobi_avx2(__m256d A, const double *b, size_t j, __m256d ax, __m256d vinv, __m256d vh)
{
    return _mm256_add_pd(A, _mm256_mul_pd(vh, _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(b + j), ax), vinv)));
}

/* y (A x or the Jacobi update) at points j..j+3, all loads from memory. */
static inline __m256d value_avx2(bool full, const __m256d *w, const double *u, const double *m, const double *d,
                                 const double *b, size_t j, __m256d vinv, __m256d vh)
{
    const __m256d A = _mm256_loadu_pd(m + j);
    const __m256d ax = ax_avx2(full, w, u, _mm256_loadu_pd(m + j - 1), A, _mm256_loadu_pd(m + j + 1), d, j);
    return b == NULL ? ax : jacobi_avx2(A, b, j, ax, vinv, vh);
}

/* Interior points jb .. je-1 with streaming stores: y + jb 32-byte aligned, je - jb
 * a positive multiple of 4. Software-pipelined: the loads for points j..j+3 are
 * issued before the store of j-4..j-1, so no load follows a store to the same
 * address modulo 4 KB (x's rows are 4 KB multiples minus 8 bytes apart when
 * W = 2^k - 1, and y is usually aligned like x): such "4K aliasing" would make
 * the loads wait for the stores. */
static void row_interior_stream(const rb_stencil2d *s, size_t jb, size_t je, const double *u, const double *m,
                                const double *d, const double *b, double inv, double h, double *y,
                                size_t dn_ahead, size_t b_ahead)
{
    const __m256d vinv = _mm256_set1_pd(inv), vh = _mm256_set1_pd(h);
    __m256d w[9];
    for (int t = 0; t < s->ntaps; t++) w[t] = _mm256_set1_pd(s->w[t]);
    const bool full = s->ntaps == 9;
    __m256d prev = value_avx2(full, w, u, m, d, b, jb, vinv, vh);
    size_t j = jb + 4;
    for (; j < je; j += 4) {
        if (((j - jb) & (CHUNK - 1)) == 0) {
            prefetch_chunk(d, j, dn_ahead, PF_DN);
            if (b != NULL) prefetch_chunk(b, j, b_ahead, PF_B);
        }
        const __m256d v = value_avx2(full, w, u, m, d, b, j, vinv, vh);
        _mm256_stream_pd(y + j - 4, prev);
        prev = v;
    }
    _mm256_stream_pd(y + j - 4, prev);
}

/* Points j = 1, 5, 9, ... while the next four old values are inside the row
 * (needs W >= 9, up and dn rows present): old values are loaded before the new
 * ones are stored over them, and copied to save. Returns the first point not
 * done; save[0 .. that) holds the old row. */
static size_t row_in_place_avx2(const rb_stencil2d *s, size_t W, const double *u, double *row, double *save,
                                const double *d, const double *b, double inv, double h, size_t dn_ahead,
                                size_t b_ahead)
{
    const __m256d vinv = _mm256_set1_pd(inv), vh = _mm256_set1_pd(h);
    __m256d w[9];
    for (int t = 0; t < s->ntaps; t++) w[t] = _mm256_set1_pd(s->w[t]);
    const bool full = s->ntaps == 9;
    save[0] = row[0];
    __m256d P = _mm256_set1_pd(row[0]), A = _mm256_loadu_pd(row + 1);
    size_t j = 1;
    for (; j + 8 <= W; j += 4) {
        if (((j - 1) & (CHUNK - 1)) == 0) {
            prefetch_chunk(d, j, dn_ahead, PF_DN);
            prefetch_chunk(b, j, b_ahead, PF_B);
        }
        const __m256d N = _mm256_loadu_pd(row + j + 4);
        const __m256d ax = ax_avx2(full, w, u, lanes_left(P, A), A, lanes_right(A, N), d, j);
        _mm256_storeu_pd(save + j, A);
        _mm256_storeu_pd(row + j, jacobi_avx2(A, b, j, ax, vinv, vh));
        P = A, A = N;
    }
    return j;
}
#endif

void rb_stencil2d_stream_fence(void)
{
#if defined(__AVX2__)
    _mm_sfence();
#endif
}

/* The cache a streaming kernel competes for: the last-level cache as the system
 * reports it, but at most 32 MiB (virtual machines report the whole host's L3). */
#define STREAM_CACHE_MAX ((size_t)32 << 20)

bool rb_stencil2d_stream_stores(size_t bytes)
{
#if defined(__AVX2__)
    if (bytes <= ((size_t)8 << 20)) return false; /* below any last-level cache worth asking about */
    size_t cache = STREAM_CACHE_MAX;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc > 0 && (size_t)llc < cache) cache = (size_t)llc;
#endif
    return bytes > cache;
#else
    (void)bytes;
    return false;
#endif
}

void rb_stencil2d_row(const rb_stencil2d *s, size_t W, const double *up, const double *mid, const double *dn,
                      const double *b, double inv, double h, double *y, size_t dn_ahead, size_t b_ahead,
                      bool stream)
{
    const double *const rows[3] = {up, mid, dn};
    if (up == NULL || dn == NULL || W < 3) {
        for (size_t j = 0; j < W; j++) point(s, W, rows, b, inv, h, y, j);
        return;
    }
    point(s, W, rows, b, inv, h, y, 0);
#if defined(__AVX2__)
    if (stream && W >= 32 && ((uintptr_t)y & 7) == 0) {
        /* scalar up to 32-byte alignment, streaming stores, scalar tail */
        const size_t ja = 1 + ((32 - ((uintptr_t)(y + 1) & 31)) & 31) / sizeof(double);
        const size_t jz = ja + ((W - 1 - ja) & ~(size_t)3);
        row_interior(s, 1, ja, up, mid, dn, b, inv, h, y, dn_ahead, b_ahead);
        row_interior_stream(s, ja, jz, up, mid, dn, b, inv, h, y, dn_ahead, b_ahead);
        row_interior(s, jz, W - 1, up, mid, dn, b, inv, h, y, dn_ahead, b_ahead);
    } else
#else
    (void)stream;
#endif
    {
        row_interior(s, 1, W - 1, up, mid, dn, b, inv, h, y, dn_ahead, b_ahead);
    }
    point(s, W, rows, b, inv, h, y, W - 1);
}

/* ---- the in-place Jacobi row ---------------------------------------------------------------- */

void rb_stencil2d_row_in_place(const rb_stencil2d *s, size_t W, const double *up, double *row, double *save,
                               const double *dn, const double *b, double inv, double h, size_t dn_ahead,
                               size_t b_ahead)
{
    size_t j = 0; /* points 1 .. j-1 done, save[0 .. j) filled */
#if defined(__AVX2__)
    if (up != NULL && dn != NULL && W >= 9)
        j = row_in_place_avx2(s, W, up, row, save, dn, b, inv, h, dn_ahead, b_ahead);
#endif
    if (j == 0) { /* no vector kernel: copy the old row, then the out-of-place row */
        memcpy(save, row, W * sizeof(double));
        rb_stencil2d_row(s, W, up, save, dn, b, inv, h, row, dn_ahead, b_ahead, false);
        return;
    }
    memcpy(save + j, row + j, (W - j) * sizeof(double));
    row_interior(s, j, W - 1, up, save, dn, b, inv, h, row, dn_ahead, b_ahead);
    const double *const rows[3] = {up, save, dn};
    point(s, W, rows, b, inv, h, row, 0);
    point(s, W, rows, b, inv, h, row, W - 1);
}

/* ---- y = A x behind the conv op ------------------------------------------------------------ */

static bool stencil3d_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                              const double *x, double *y);

bool rb_stencil_fast_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                             const double *x, double *y)
{
    rb_stencil2d s;
    if (stencil3d_forward(ctx, cs, g, w, x, y)) return true;
    if (!rb_stencil2d_init(cs, w, &s) || g->cf != 1 || g->cc != 1 || g->fd != 1 || g->cd != 1 || g->ch != g->fh ||
        g->cw != g->fw)
        return false;
    const size_t H = g->fh, W = g->fw, total = g->n * H * W;
    const long long rows = (long long)(g->n * H);
    const int threads = rb_context_threads(ctx);
    const bool stream = rb_stencil2d_stream_stores(2 * total * sizeof(double));
    /* y = A x, one row of one image per iteration; (N,1,1,H,W) */
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static) nowait
        for (long long r = 0; r < rows; r++) {
            const size_t i = (size_t)r % H, o = (size_t)r * W;
            const double *mid = x + o;
            const double *up = i > 0 ? mid - W : NULL, *dn = i + 1 < H ? mid + W : NULL;
            rb_stencil2d_row(&s, W, up, mid, dn, NULL, 0.0, 0.0, y + o, total - o - W, 0, stream);
        }
        if (stream) rb_stencil2d_stream_fence();
    }
    return true;
}

/* r = f - A x on one row (up / dn NULL: outside), the A x of rb_stencil2d_row. */
static void stencil2d_residual_row(const rb_stencil2d *s, size_t W, const double *up, const double *mid,
                                   const double *dn, const double *f, double *r, size_t dn_ahead, size_t f_ahead)
{
    const double *const rows[3] = {up, mid, dn};
    if (up == NULL || dn == NULL || W < 3) {
        for (size_t j = 0; j < W; j++) r[j] = f[j] - point_ax(s, W, rows, j);
        return;
    }
    r[0] = f[0] - point_ax(s, W, rows, 0);
    row_interior_residual(s, 1, W - 1, up, mid, dn, f, r, dn_ahead, f_ahead);
    r[W - 1] = f[W - 1] - point_ax(s, W, rows, W - 1);
}

/* ---- the 3D 7-point star, and residuals r = f - A u ------------------------------------------- */

bool rb_stencil3d_init(const rb_conv_state *cs, const double *w, rb_stencil3d *s)
{
    if (cs == NULL || w == NULL) return false;
    const rb_conv_desc *d = &cs->desc;
    if (d->dims != 3 || d->cin != 1 || d->cout != 1 || d->stride != 1 || d->transposed || d->bias || d->ksize != 3 ||
        d->pattern != RB_STENCIL_STAR || cs->ntaps != 7)
        return false;
    static const int star[7][3] = {{-1, 0, 0}, {0, -1, 0}, {0, 0, -1}, {0, 0, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}};
    for (int t = 0; t < 7; t++) {
        if (cs->tap[t][0] != star[t][0] || cs->tap[t][1] != star[t][1] || cs->tap[t][2] != star[t][2]) return false;
        s->w[t] = w[t];
    }
    return true;
}

/* y[j] += w * r[j + shift] for j in [jb, je) */
static void add_tap(double *restrict y, const double *restrict r, double w, size_t jb, size_t je, long shift)
{
#pragma omp simd
    for (size_t j = jb; j < je; j++) y[j] += w * r[(long)j + shift];
}

void rb_stencil3d_row(const rb_stencil3d *s, size_t W, const double *zm, const double *ym, const double *mid,
                      const double *yp, const double *zp, const double *f, double *y, size_t zp_reach, size_t f_reach)
{
    const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4], w5 = s->w[5], w6 = s->w[6];
    if (zm != NULL && ym != NULL && yp != NULL && zp != NULL && W >= 3) {
        /* an interior row: one pass, the taps in order; the ends skip x-1 / x+1. The plane
         * ahead (zp) and f come from memory: prefetched ahead like the 2D streams. */
        const double *restrict a = zm, *restrict b = ym, *restrict m = mid, *restrict c = yp, *restrict e = zp;
        double *restrict out = y;
        y[0] = 0.0 + w0 * a[0] + w1 * b[0] + w3 * m[0] + w4 * m[1] + w5 * c[0] + w6 * e[0];
        for (size_t j0 = 1; j0 < W - 1; j0 += CHUNK) {
            const size_t j1 = j0 + CHUNK < W - 1 ? j0 + CHUNK : W - 1;
            prefetch_chunk(e, j0, zp_reach, PF_DN);
            if (f == NULL) {
#pragma omp simd
                for (size_t j = j0; j < j1; j++)
                    out[j] = 0.0 + w0 * a[j] + w1 * b[j] + w2 * m[j - 1] + w3 * m[j] + w4 * m[j + 1] + w5 * c[j] + w6 * e[j];
            } else {
                const double *restrict ff = f;
                prefetch_chunk(ff, j0, f_reach, PF_B);
#pragma omp simd
                for (size_t j = j0; j < j1; j++)
                    out[j] = ff[j] - (0.0 + w0 * a[j] + w1 * b[j] + w2 * m[j - 1] + w3 * m[j] + w4 * m[j + 1] +
                                      w5 * c[j] + w6 * e[j]);
            }
        }
        if (f != NULL) y[0] = f[0] - y[0];
        double last = 0.0 + w0 * a[W - 1] + w1 * b[W - 1] + w2 * m[W - 2] + w3 * m[W - 1] + w5 * c[W - 1] + w6 * e[W - 1];
        y[W - 1] = f == NULL ? last : f[W - 1] - last;
        return;
    }
    /* a row on the border of the grid: one vectorised pass per tap inside it, in tap order */
    for (size_t j = 0; j < W; j++) y[j] = 0.0;
    if (zm) add_tap(y, zm, w0, 0, W, 0);
    if (ym) add_tap(y, ym, w1, 0, W, 0);
    if (W > 1) add_tap(y, mid, w2, 1, W, -1);
    add_tap(y, mid, w3, 0, W, 0);
    if (W > 1) add_tap(y, mid, w4, 0, W - 1, 1);
    if (yp) add_tap(y, yp, w5, 0, W, 0);
    if (zp) add_tap(y, zp, w6, 0, W, 0);
    if (f != NULL)
        for (size_t j = 0; j < W; j++) y[j] = f[j] - y[j];
}

/* Row y of plane z of sample n of a (N,1,D,H,W) grid: the 3D star row. */
static void star3d_row(const rb_stencil3d *s, size_t D, size_t H, size_t W, const double *x, const double *f, size_t n,
                       size_t z, size_t yy, double *out)
{
    const size_t plane = H * W, o = ((n * D + z) * H + yy) * W, total = (n + 1) * D * plane;
    const double *mid = x + o;
    rb_stencil3d_row(s, W, z > 0 ? mid - plane : NULL, yy > 0 ? mid - W : NULL, mid, yy + 1 < H ? mid + W : NULL,
                     z + 1 < D ? mid + plane : NULL, f != NULL ? f + o : NULL, out, z + 1 < D ? total - o - plane : 0,
                     total - o);
}

static bool stencil3d_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                              const double *x, double *y)
{
    rb_stencil3d s;
    if (!rb_stencil3d_init(cs, w, &s) || g->cf != 1 || g->cc != 1 || g->cd != g->fd || g->ch != g->fh || g->cw != g->fw)
        return false;
    const size_t D = g->fd, H = g->fh, W = g->fw;
    const long long rows = (long long)(g->n * D * H);
    const int threads = rb_context_threads(ctx);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows * (long long)W >= 32768)
    for (long long r = 0; r < rows; r++) {
        const size_t yy = (size_t)r % H, z = (size_t)r / H % D, n = (size_t)r / H / D;
        star3d_row(&s, D, H, W, x, NULL, n, z, yy, y + (size_t)r * W);
    }
    return true;
}

bool rb_stencil_any_init(const rb_op *A, rb_shape s, rb_stencil_any *k)
{
    const rb_conv_state *cs = rb_conv_state_of(A);
    if (cs == NULL || s.c != 1) return false;
    if (rb_stencil3d_init(cs, A->params, &k->s3)) {
        k->dims = 3;
        return true;
    }
    if (s.d == 1 && rb_stencil2d_init(cs, A->params, &k->s2)) {
        k->dims = 2;
        return true;
    }
    return false;
}

/* r = f - A u on row yy of plane z of sample n (z = 0 in 2D) */
static void residual_row(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, size_t n, size_t z,
                         size_t yy, double *r)
{
    const size_t H = s.h, W = s.w;
    if (k->dims == 3) {
        star3d_row(&k->s3, s.d, H, W, u, f, n, z, yy, r);
        return;
    }
    const size_t o = (n * H + yy) * W, total = s.n * H * W;
    const double *mid = u + o;
    stencil2d_residual_row(&k->s2, W, yy > 0 ? mid - W : NULL, mid, yy + 1 < H ? mid + W : NULL, f + o, r,
                           total - o - W, total - o);
}

bool rb_stencil_split_takes(const rb_stencil_any *k) { return k->dims == 2 && k->s2.ntaps == 5; }

void rb_stencil_residual_line_split(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, size_t n,
                                    size_t l, double *restrict r)
{
    const rb_stencil2d *st = &k->s2;
    const size_t H = s.h, W = s.w, Ke = (W + 1) / 2, Ko = W / 2, o = (n * H + l) * W;
    const double *mid = u + o, *up = l > 0 ? mid - W : NULL, *dn = l + 1 < H ? mid + W : NULL;
    const double *const rows[3] = {up, mid, dn};
    f += o;
    /* interior: even points x = 2k for k in [1, Ko) (neighbours O[k-1], O[k]), odd x = 2k+1 for
     * k in [0, Ke - 1) (neighbours E[k], E[k+1]), in AX_STAR's order */
    size_t eb = 1, ee = Ko, ob = 0, oe = Ke - 1 < Ko ? Ke - 1 : Ko;
    if (up == NULL || dn == NULL || W < 3) eb = ee = ob = oe = 0;
    const double w0 = st->w[0], w1 = st->w[1], w2 = st->w[2], w3 = st->w[3], w4 = st->w[4];
#pragma omp simd
    for (size_t j = eb; j < ee; j++)
        r[j] = f[j] - (w0 * up[j] + w1 * mid[Ke + j - 1] + w2 * mid[j] + w3 * mid[Ke + j] + w4 * dn[j]);
#pragma omp simd
    for (size_t j = ob; j < oe; j++)
        r[Ke + j] = f[Ke + j] - (w0 * up[Ke + j] + w1 * mid[j] + w2 * mid[Ke + j] + w3 * mid[j + 1] + w4 * dn[Ke + j]);
    /* the rest point by point: even [0, eb) and [max(eb, ee), Ke), odd likewise */
    for (int half = 0; half < 2; half++) {
        const size_t b = half ? ob : eb, e = half ? oe : ee, count = half ? Ko : Ke, at = half ? Ke : 0;
        for (size_t j = 0; j < count; j++) {
            if (j == b && e > b) j = e; /* past the interior */
            if (j < count) r[at + j] = f[at + j] - point_ax_at(st, W, rows, 2 * j + (size_t)half, Ke);
        }
    }
}

void rb_stencil_residual_line(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, size_t n,
                              size_t l, size_t y0, size_t y1, double *r_line)
{
    if (k->dims == 2) {
        residual_row(k, s, u, f, n, 0, l, r_line);
        return;
    }
    for (size_t yy = y0; yy < y1 && yy < s.h; yy++) residual_row(k, s, u, f, n, l, yy, r_line + yy * s.w);
}

#define MAX_NORM_THREADS RB_STENCIL_RESIDUAL_MAX_THREADS

/* sum of r[j]^2: 16 partial sums (4 vectors, so the adds do not wait on each other), then folded. */
double rb_sum_squares(const double *r, size_t W)
{
    double a[16] = {0};
    size_t j = 0;
    for (; j + 16 <= W; j += 16)
        for (int l = 0; l < 16; l++) a[l] += r[j + (size_t)l] * r[j + (size_t)l];
    double s = 0.0;
    for (; j < W; j++) s += r[j] * r[j];
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) a[l] += a[l + w];
    return a[0] + s;
}

void rb_stencil_residual(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, double *r,
                         double *norm2, int threads, double *rows_scratch)
{
    const size_t W = s.w, planes = k->dims == 3 ? s.d : 1;
    const long long rows = (long long)(s.n * planes * s.h);
    if (threads > MAX_NORM_THREADS) threads = MAX_NORM_THREADS;
    if (rows * (long long)W < 32768) threads = 1;
    double part[MAX_NORM_THREADS] = {0};
    int used = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int t = omp_get_thread_num();
        double acc = 0.0;
#pragma omp single
        used = omp_get_num_threads();
#pragma omp for schedule(static)
        for (long long q = 0; q < rows; q++) {
            const size_t yy = (size_t)q % s.h, z = (size_t)q / s.h % planes, n = (size_t)q / s.h / planes;
            double *rr = r != NULL ? r + (size_t)q * W : rows_scratch + (size_t)t * W;
            residual_row(k, s, u, f, n, z, yy, rr);
            if (norm2 != NULL) acc += rb_sum_squares(rr, W);
        }
        part[t] = acc;
    }
    if (norm2 != NULL) {
        double sum = 0.0;
        for (int t = 0; t < used; t++) sum += part[t];
        *norm2 = sum;
    }
}
