/* colour.h — an operator restricted to one colour of a red-black grid.
 *
 * F_c(u) = m_c * F(u), where m_c is 1 on grid points (z, y, x) with
 * (x + y + z) mod 2 == c and 0 elsewhere. With the Jacobi operator as F,
 * rb_residual_step(F_red, 1) then rb_residual_step(F_black, 1) is one
 * red-black Gauss-Seidel sweep: each colour a residual step restricted to it.
 *
 *     rb_op *red, *black;
 *     rb_op_colour_create(ctx, jacobi, 0, &red);
 *     rb_op_colour_create(ctx, jacobi, 1, &black);
 *     rb_residual_step(ctx, red, 1.0, &u, &u, &work);    // in place: a fused kernel
 *     rb_residual_step(ctx, black, 1.0, &u, &u, &work);
 *
 * For a Jacobi operator over a star stencil (3-, 5-, 7-point) the type has a
 * fused in-place kernel that visits only the colour's points.
 */
#ifndef RESBRIDGE_COLOUR_H
#define RESBRIDGE_COLOUR_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* base is referenced, not owned; it must keep the shape. colour is 0 or 1. */
rb_status rb_op_colour_create(rb_context *ctx, const rb_op *base, int colour, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
