/* jacobi_internal.h — state of the Jacobi residual operator, shared with its
 * fused kernel, and the one row loop of the memory-bound 2D stencil kernels
 * (stencil_fast.c defines it; stencil_fast.c and jacobi_fused.c call it). */
#ifndef RB_JACOBI_INTERNAL_H
#define RB_JACOBI_INTERNAL_H

#include "conv_internal.h"

typedef struct rb_jacobi_state {
    const rb_op *A;   /* the stencil (not owned) */
    rb_tensor b;      /* view of the right-hand side */
    double diag;      /* A's centre weight, read at creation (constant-coefficient stencils) */
    int centre;       /* index of the centre tap */
    const double *dvar; /* point-dependent diagonal (a varstencil A's centre weights), or NULL */
    size_t points;      /* grid points per sample (with dvar) */
} rb_jacobi_state;

/* Fused y = x + h D^{-1} (b - A x), one pass, in place allowed. Falls back to
 * the generic path for shapes it does not handle. */
rb_status rb_jacobi_fused_step(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                               rb_arena *work);
/* Scratch for the fused kernel (3 rows per thread, up to RB_JACOBI_FUSED_MAX_THREADS
 * threads) plus what A's apply needs (the generic path evaluates F through it). */
size_t rb_jacobi_fused_workspace(const rb_op *op, rb_shape in);
#define RB_JACOBI_FUSED_MAX_THREADS 16

/* ---- the 2D single-channel 3-wide stencil row (stencil_fast.c) ---------------------------- */

/* Weights of a single-channel stride-1 2D stencil, 3x3 (9 taps) or 5-point star,
 * in the tap order of rb_conv_state.tap. */
typedef struct rb_stencil2d {
    int ntaps;           /* 9 (RB_STENCIL_FULL) or 5 (RB_STENCIL_STAR) */
    int dy[9], dx[9];    /* tap offsets */
    double w[9];         /* weights */
} rb_stencil2d;

/* Fill s from a conv op's state and weights. false unless the conv is a
 * single-channel, stride-1, not transposed, bias-free, 3-wide 2D stencil. */
bool rb_stencil2d_init(const rb_conv_state *cs, const double *w, rb_stencil2d *s);

/* One row of W points, zero outside the grid (up / dn NULL: the row above /
 * below lies outside). With ax[j] = sum_t w[t] row_{dy_t}[j + dx_t] summed in
 * tap order (as rb_conv_gather does):
 *   b == NULL:  y[j] = ax[j]                               (y = A x)
 *   b != NULL:  y[j] = mid[j] + h * ((b[j] - ax[j]) * inv)  (damped Jacobi, the
 *               generic path's operation order, so both agree bit for bit).
 * y must not overlap up, mid, dn or b. dn_ahead / b_ahead: doubles readable from
 * dn / b on (at least W), how far those memory streams may be prefetched.
 * stream: write y with streaming (non-temporal) stores where the build can; each
 * thread that did must call rb_stencil2d_stream_fence before its results are read. */
void rb_stencil2d_row(const rb_stencil2d *s, size_t W, const double *up, const double *mid, const double *dn,
                      const double *b, double inv, double h, double *y, size_t dn_ahead, size_t b_ahead,
                      bool stream);

/* Whether a kernel that touches `bytes` of grids should write its output with
 * streaming stores: true when they exceed the last-level cache (the output
 * would not stay cached anyway), so its lines are not read before being overwritten. */
bool rb_stencil2d_stream_stores(size_t bytes);
/* Order this thread's streaming stores before what follows (sfence). */
void rb_stencil2d_stream_fence(void);

/* The Jacobi row in place: row holds the old x row on entry and the new one on
 * exit, and save receives the old values (the next row's `up`). Same results as
 * rb_stencil2d_row with mid = the old row, bit for bit. b must not be NULL. */
void rb_stencil2d_row_in_place(const rb_stencil2d *s, size_t W, const double *up, double *row, double *save,
                               const double *dn, const double *b, double inv, double h, size_t dn_ahead,
                               size_t b_ahead);

/* The state of a Jacobi operator, or NULL if op is not one (jacobi.c). */
const rb_jacobi_state *rb_jacobi_state_of(const rb_op *op);

#endif
