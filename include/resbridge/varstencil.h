/* varstencil.h — single-channel stencils whose weights vary from point to point
 * (variable-coefficient diffusion, Galerkin coarse operators):
 *
 *     y[p] = sum_t W[t][p] x[p + tap_t],   x = 0 outside the grid,
 *
 * taps as in conv.h (row-major over {-1,0,1}^dims, STAR keeps 2 dims + 1).
 * The weights are the op's parameters: op->params[t * points + p], with
 * points = D*H*W of `grid`; every sample of a batch uses the same weights.
 *
 *     rb_op *A; rb_op_varstencil_create(ctx, 2, RB_STENCIL_STAR, grid, weights, &A);
 *     rb_op_apply(ctx, A, &u, &Au, NULL);
 */
#ifndef RESBRIDGE_VARSTENCIL_H
#define RESBRIDGE_VARSTENCIL_H

#include "resbridge/conv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* grid: the (1,1,D,H,W) shape the stencil lives on (inputs may have any N, C = 1).
 * weights: ntaps * points values copied in, or NULL (zeros). */
rb_status rb_op_varstencil_create(rb_context *ctx, int dims, rb_stencil pattern, rb_shape grid, const double *weights,
                                  rb_op **out);

/* The stencil of a linear same-shape single-channel operator on `grid` whose
 * couplings reach at most one point in each direction, probed with 3^dims
 * applications (e.g. the Galerkin product R A P). */
rb_status rb_op_varstencil_probe(rb_context *ctx, const rb_op *F, int dims, rb_shape grid, rb_op **out);

/* The Galerkin operator R A P on the coarse grid. P maps the coarse grid to A's grid, R
 * back. For single-channel convs R (plain) and P (transposed) of one stride (the transfers
 * rb_mg_transfers_create makes) and a varstencil A, it is summed from their weights:
 * (R A P)[I][T] = sum of R_r A_s(i) P_p over the fine points i under I and their neighbours
 * j = i + s under I + T (equal to the probes' stencil to rounding; 255^3 fine grid: 3 s
 * instead of 9). Other linear operators are probed as above, with P, A and R applied in
 * turn (referenced, not copied: no chain of copies of a large A). */
rb_status rb_op_varstencil_galerkin(rb_context *ctx, const rb_op *R, const rb_op *A, const rb_op *P, int dims,
                                    rb_shape coarse, rb_op **out);

/* Pattern, tap count, centre tap and grid of a varstencil op; false if op is not one. */
bool rb_op_varstencil_info(const rb_op *op, int *dims, int *ntaps, int *centre, rb_shape *grid);

#ifdef __cplusplus
}
#endif
#endif
