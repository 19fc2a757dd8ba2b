/* conv_internal.h — what the conv kernels share: geometry of one call. */
#ifndef RB_CONV_INTERNAL_H
#define RB_CONV_INTERNAL_H

#include "resbridge/conv.h"

#define RB_CONV_MAX_TAPS 27

typedef struct rb_conv_state {
    rb_conv_desc desc;
    int ntaps;
    int tap[RB_CONV_MAX_TAPS][3]; /* (dz, dy, dx) of each tap */
} rb_conv_state;

/* One call's geometry. "fine" is the plain conv's input grid, "coarse" its
 * output grid (for a transposed conv the other way round). Weights are
 * [cc][cf][ntaps]: coarse channels outermost. */
typedef struct rb_conv_geom {
    size_t n;            /* batch */
    size_t cf, cc;       /* channels on the fine and the coarse grid */
    size_t fd, fh, fw;   /* fine extents */
    size_t cd, ch, cw;   /* coarse extents */
    int s[3], off[3];    /* stride and centre offset per (d, h, w) */
} rb_conv_geom;

const rb_conv_state *rb_conv_state_of(const rb_op *op);

/* ---- point-dependent stencils' inner rows (varstencil.c's gather, redblack.c's class kernel) -- */

#define RB_TAP_LANES 8

/* Stencils with more than 7 taps read that many weight streams, more than the hardware
 * prefetchers follow: their weights are prefetched RB_WEIGHT_PF_ROWS rows ahead (measured on
 * 27-point Galerkin operators: 1.5x; the 7-point star is faster without), into L2 rather than
 * L1 (27 streams 4 rows ahead fill L1 before they are read: the 27-point apply went from
 * 21-27 to 14-20 ns per point at 31^3..127^3). How far, in doubles, for rows of row_len
 * points: 0 for not at all. */
#define RB_WEIGHT_PF_ROWS 4
static inline size_t rb_weight_prefetch_ahead(int ntaps, size_t row_len)
{
    return ntaps > 7 ? RB_WEIGHT_PF_ROWS * row_len : 0;
}

static inline void rb_prefetch_weights(const double *p)
{
#if defined(__GNUC__)
    __builtin_prefetch(p, 0, 2);
#else
    (void)p;
#endif
}

/* acc[i] = sum_t w[t][x + i] s[t][x + i] for RB_TAP_LANES consecutive points, in tap order from
 * 0, each product then its sum (no fused multiply-add): the checked point loops' operations,
 * so both agree bit for bit. The compiler keeps acc in vector registers across the taps. */
static inline void rb_tap_sums(int ntaps, const double *const *w, const double *const *s, size_t x, size_t ahead,
                               double acc[RB_TAP_LANES])
{
    for (int i = 0; i < RB_TAP_LANES; i++) acc[i] = 0.0;
    for (int t = 0; t < ntaps; t++) {
        const double *wt = w[t] + x, *st = s[t] + x;
        if (ahead) rb_prefetch_weights(wt + ahead);
        for (int i = 0; i < RB_TAP_LANES; i++) acc[i] += wt[i] * st[i];
    }
}

/* varstencil.c: the taps (dz, dy, dx) of a varstencil op, in conv.h's order (its
 * parameters are ntaps planes of weights in that order); NULL if op is not one. */
const int (*rb_varstencil_taps(const rb_op *op))[3];
/* Whether A is a varstencil op whose grid is s's (one channel, any batch). */
bool rb_varstencil_on(const rb_op *A, rb_shape s);
/* r = f - A u on line l of sample n of a varstencil's grid: row l (line_dims 2: a grid of one
 * plane) or plane l (line_dims 3; only its rows y0 <= y < y1, each at r_line + y W), into r_line
 * (W or H*W doubles); the same operations as applying A (its gather) and then f - A u, so equal
 * to them bit for bit. */
void rb_varstencil_residual_line(const rb_op *A, int line_dims, const double *u, const double *f, size_t n, size_t l,
                                 size_t y0, size_t y1, double *r_line);

/* out[n][co][o] = beta*out + alpha * sum_{ci,t} w[co][ci][t] fine[n][ci][s*o+off+tap] (+ bias[co]). */
void rb_conv_gather(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                    const double *bias, const double *fine, double alpha, double beta, double *coarse);
/* fine[n][ci][p] = beta*fine + alpha * sum_{co,t: p = s*o+off+tap} w[co][ci][t] coarse[n][co][o] (+ bias[ci]). */
void rb_conv_scatter(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                     const double *bias, const double *coarse, double alpha, double beta, double *fine);
/* dw[co][ci][t] += alpha * sum_{n,o} coarse[n][co][o] fine[n][ci][s*o+off+tap]. */
void rb_conv_weight_grad(int threads, const rb_conv_state *cs, const rb_conv_geom *g, const double *fine,
                         const double *coarse, double alpha, double *dw);

/* Fast paths behind the conv op. Each returns true when it handled the call
 * (same contract as the reference loop it replaces, to rounding), false to
 * fall through to the reference loops above. Tested against them.
 *
 * conv_gemm.c: multi-channel 2D convolutions through OpenBLAS GEMM. */
bool rb_conv_gemm_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                          const double *bias, const double *x, double *y, rb_arena *work);
/* dx = beta dx + alpha J^T dy, beta 0 (dx not read) or 1. */
bool rb_conv_gemm_backward_data(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                                const double *dy, double alpha, double beta, double *dx, rb_arena *work);
bool rb_conv_gemm_backward_weight(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *x,
                                  const double *dy, double alpha, double *dw, rb_arena *work);
size_t rb_conv_gemm_workspace(const rb_conv_state *cs, const rb_conv_geom *g);
/* stencil_fast.c: single-channel stride-1 2D 3x3 stencils (memory-bound grid kernels). */
bool rb_stencil_fast_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                             const double *x, double *y);

/* Geometry of a conv op for an input shape (what the fast-path tests need to
 * call the reference loops directly). */
rb_status rb_conv_geometry(rb_context *ctx, const rb_op *op, rb_shape in, rb_conv_geom *g, rb_shape *out);

#endif
