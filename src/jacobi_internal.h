/* jacobi_internal.h — state of the Jacobi residual operator, shared with its fused kernel. */
#ifndef RB_JACOBI_INTERNAL_H
#define RB_JACOBI_INTERNAL_H

#include "conv_internal.h"

typedef struct rb_jacobi_state {
    const rb_op *A;   /* the stencil (not owned) */
    rb_tensor b;      /* view of the right-hand side */
    double diag;      /* A's centre weight, read at creation */
    int centre;       /* index of the centre tap */
} rb_jacobi_state;

/* Fused y = x + h D^{-1} (b - A x), one pass, in place allowed. Falls back to
 * the generic path for shapes it does not handle. */
rb_status rb_jacobi_fused_step(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                               rb_arena *work);
size_t rb_jacobi_fused_workspace(const rb_op *op, rb_shape in);

#endif
