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
 * For a Jacobi operator over a star stencil (3-, 5-, 7-point; constant or
 * point-dependent weights) the type has a fused in-place kernel that visits only the
 * colour's points (for the constant 2D and 3D stars: src/redblack.c, vectorised).
 *
 * The colour sweep op (below) makes whole Gauss-Seidel sweeps one residual step,
 * so that a smoother's sweeps run in one pass over the grid:
 *
 *     const rb_op *rb[2] = {red, black};
 *     rb_op *gs;
 *     rb_op_colour_sweep_create(ctx, rb, 2, 1.0, 2, &gs);   // two sweeps, omega = 1
 *     rb_residual_step(ctx, gs, 1.0, &u, &u, &work);          // = the four colour steps above
 */
#ifndef RESBRIDGE_COLOUR_H
#define RESBRIDGE_COLOUR_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* base is referenced, not owned; it must keep the shape. colour is 0 or 1. */
rb_status rb_op_colour_create(rb_context *ctx, const rb_op *base, int colour, rb_op **out);

/* F restricted to one of the 2^d parity classes: the points (z, y, x) with
 * (x mod 2) + 2 (y mod 2) + 4 (z mod 2) == cls (cls 0..7; classes with a bit set for an
 * unused dimension are empty). No 3^d stencil couples two points of a class, so these
 * are the colours of Gauss-Seidel for full 9- and 27-point stencils (e.g. Galerkin
 * coarse operators), as red and black are for stars. For a Jacobi operator over any
 * stencil the type has a fused in-place kernel that visits only the class's points
 * (constant or point-dependent weights); the same kernel serves a red-black colour over
 * a point-dependent star. base is referenced, not owned. */
rb_status rb_op_parity_create(rb_context *ctx, const rb_op *base, int cls, rb_op **out);

/* For a parity class whose base is a Jacobi operator over a varstencil (point weights, e.g.
 * a Galerkin coarse operator): a copy of the class's weights in the layout its fused kernel
 * streams (the class's points contiguous, in the order its vector blocks take them) -- one
 * stream read once per class step instead of 3^d, each row of which is half skipped (a
 * 27-point class sweep 4-5x faster, bench/RESULTS.md §2b). The copy is a snapshot: the kernel
 * reads it, not the base's weights, until this is called again, so call it again after
 * changing them. It costs the class's share of the weights' memory (all 2^d classes: the
 * weights once more); rb_op_free releases it. RB_EINVAL for an op that is not a parity class,
 * RB_EUNSUPPORTED for a base without point weights, RB_ENOMEM with the old copy dropped (the
 * kernel then reads the weights in place, as without packing). */
rb_status rb_op_parity_pack(rb_context *ctx, rb_op *op);

/* Gauss-Seidel sweeps over colours as one residual step: with S one sweep (the
 * colour steps u <- u + omega F_c(u) in order, each through rb_residual_step),
 *
 *     G(u) = (S^sweeps(u) - u) / omega,   so   rb_residual_step(G, omega, u, u) = S^sweeps(u)
 *
 * (to rounding on the generic path, which composes the colour steps). For the
 * red and black colour ops of one Jacobi operator over a constant 2D 5-point or
 * 3D 7-point star, the fused kernel does all the sweeps in one pass over the grid
 * (red row / plane i, black i-1, red of the next sweep i-2, ...), in place: the
 * same numbers as the colour steps one after another, bit for bit. Other colour
 * ops (the 2^d parity classes of a full stencil, point-dependent stencils) take
 * the generic path. For a symmetric smoother's adjoint, pass the colours reversed.
 *
 * colours (1..8 ops of one shape) are referenced, not owned; omega finite and
 * nonzero; sweeps 1..64. The vjp differentiates with respect to u only (the
 * colour operators' parameters are not differentiated through). */
rb_status rb_op_colour_sweep_create(rb_context *ctx, const rb_op *const *colours, int ncolours, double omega,
                                    int sweeps, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
