/* stencil_fast.c — single-channel 2D 3-wide stride-1 stencils (3x3 and 5-point),
 * the memory-bound grid kernels.
 *
 * One row loop serves both y = A x (behind the conv op's apply) and the fused
 * damped-Jacobi sweep (jacobi_fused.c). Interior points run a branch-free loop
 * the compiler vectorises; the first and last column, and rows whose neighbour
 * row lies outside the grid, go through a per-point loop over the taps that
 * skips what is outside, exactly as the reference rb_conv_gather does. Sums run
 * in tap order, so results equal the reference loop's.
 */
#include "jacobi_internal.h"

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
static double point_ax(const rb_stencil2d *s, size_t W, const double *const rows[3], size_t j)
{
    double acc = 0.0;
    for (int t = 0; t < s->ntaps; t++) {
        const double *r = rows[s->dy[t] + 1];
        long long c = (long long)j + s->dx[t];
        if (r == NULL || c < 0 || c >= (long long)W) continue;
        acc += s->w[t] * r[c];
    }
    return acc;
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

/* Points 1 .. W-2 of a row with both neighbour rows inside the grid (W >= 3). */
static void row_interior(const rb_stencil2d *s, size_t W, const double *restrict u, const double *restrict m,
                         const double *restrict d, const double *restrict b, double inv, double h,
                         double *restrict y)
{
    const size_t end = W - 1;
    if (s->ntaps == 9) {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4], w5 = s->w[5];
        const double w6 = s->w[6], w7 = s->w[7], w8 = s->w[8];
        if (b == NULL) {
#pragma omp simd
            for (size_t j = 1; j < end; j++) y[j] = AX_FULL(j);
        } else {
#pragma omp simd
            for (size_t j = 1; j < end; j++) y[j] = m[j] + h * ((b[j] - AX_FULL(j)) * inv);
        }
    } else {
        const double w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3], w4 = s->w[4];
        if (b == NULL) {
#pragma omp simd
            for (size_t j = 1; j < end; j++) y[j] = AX_STAR(j);
        } else {
#pragma omp simd
            for (size_t j = 1; j < end; j++) y[j] = m[j] + h * ((b[j] - AX_STAR(j)) * inv);
        }
    }
}

void rb_stencil2d_row(const rb_stencil2d *s, size_t W, const double *up, const double *mid, const double *dn,
                      const double *b, double inv, double h, double *y)
{
    const double *const rows[3] = {up, mid, dn};
    if (up == NULL || dn == NULL || W < 3) {
        for (size_t j = 0; j < W; j++) point(s, W, rows, b, inv, h, y, j);
        return;
    }
    point(s, W, rows, b, inv, h, y, 0);
    row_interior(s, W, up, mid, dn, b, inv, h, y);
    point(s, W, rows, b, inv, h, y, W - 1);
}

bool rb_stencil_fast_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                             const double *x, double *y)
{
    rb_stencil2d s;
    if (!rb_stencil2d_init(cs, w, &s) || g->cf != 1 || g->cc != 1 || g->fd != 1 || g->cd != 1 || g->ch != g->fh ||
        g->cw != g->fw)
        return false;
    const size_t H = g->fh, W = g->fw;
    const long long rows = (long long)(g->n * H);
    const int threads = rb_context_threads(ctx);
    /* y = A x, one row of one image per iteration; (N,1,1,H,W) */
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long long r = 0; r < rows; r++) {
        size_t i = (size_t)r % H;
        const double *mid = x + (size_t)r * W;
        const double *up = i > 0 ? mid - W : NULL, *dn = i + 1 < H ? mid + W : NULL;
        rb_stencil2d_row(&s, W, up, mid, dn, NULL, 0.0, 0.0, y + (size_t)r * W);
    }
    return true;
}
