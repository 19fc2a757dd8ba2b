/* xsplit.h — grids stored with each row's even points first, then its odd points.
 *
 * A row of W values (x = 0 .. W-1 along the last axis; every (n, c, z, y) of a tensor is one)
 * is stored as x = 0, 2, 4, ... at positions 0 .. (W+1)/2 - 1, then x = 1, 3, 5, ... after
 * them: point x sits at x / 2 if x is even, (W + 1) / 2 + x / 2 if odd.
 *
 * Why: a red-black colour of a 2D grid is, row by row, either the even or the odd points. In
 * this layout a colour step over the 5-point star reads its points, its left and right
 * neighbours and its neighbour rows' values as contiguous runs: no deinterleaving, half the
 * vector instructions of the interleaved kernel. The 2D multigrid solver keeps every grid but
 * the coarsest this way while it cycles (rb_mg_solve, rb_mg_options.plain_fine; multigrid.h);
 * the transfers between grids read and write split rows directly.
 *
 * The operators that work on split grids are the plain ones seen through the layout:
 *
 *     rb_op *As;  rb_op_xsplit_create(ctx, A, true, true, &As);   // As(x) = S A S^T x
 *     rb_op *Rs;  rb_op_xsplit_create(ctx, R, true, false, &Rs);  // split fine -> plain coarse
 *     rb_op *Ps;  rb_op_xsplit_create(ctx, P, false, true, &Ps);  // plain coarse -> split fine
 *
 * (S the permutation into the split layout). Apply and vjp go through S as written (into
 * work scratch): the reference path. For a colour sweep op (colour.h) of the red and black
 * colours of a Jacobi operator over a constant 2D 5-point star, seen split on both sides,
 * rb_residual_step has a fused kernel working on the split rows, and rb_residual_step_pass
 * fuses with it the split views of the prolongation, residual and restriction that the
 * plain sweep op fuses: the same numbers as the plain op on the plain grid, bit for bit (the
 * residual's sum of squares to rounding: it is summed over the permuted rows).
 * That kernel reads the Jacobi operator's right-hand side split too: name the split right-hand
 * side with rb_op_xsplit_rhs (without one the view takes the reference path). */
#ifndef RESBRIDGE_XSPLIT_H
#define RESBRIDGE_XSPLIT_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = x in the split layout (to_split) or back to the plain one. x and y of one shape, not
 * overlapping. Runs on the context's threads. */
rb_status rb_xsplit(rb_context *ctx, const rb_tensor *x, rb_tensor *y, bool to_split);

/* The operator inner with its input (in_split) and / or output (out_split) in the split
 * layout. inner is referenced, not owned. At least one side split. */
rb_status rb_op_xsplit_create(rb_context *ctx, const rb_op *inner, bool in_split, bool out_split, rb_op **out);

/* For a view split on both sides whose inner op reads a right-hand side (a colour sweep op over
 * a Jacobi operator, which references f_plain): f_split holds that right-hand side in the split
 * layout. The fused kernel reads f_split instead of f_plain; the reference path first writes
 * f_split into f_plain in the plain layout, so that the inner op reads the same values. Both
 * are referenced, of one shape, not overlapping; both NULL: none (the reference path only, f_plain
 * as it is). */
rb_status rb_op_xsplit_rhs(rb_context *ctx, rb_op *op, const rb_tensor *f_split, rb_tensor *f_plain);

/* The plain operator an xsplit op views and its sides; false if op is not an xsplit op. */
bool rb_op_xsplit_info(const rb_op *op, const rb_op **inner, bool *in_split, bool *out_split);

#ifdef __cplusplus
}
#endif
#endif
