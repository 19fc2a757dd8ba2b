/* conv.h — stencils and convolutions, written once: 1D/2D/3D, single- or
 * multi-channel, 3-wide or 1-wide kernels, stride 1 or 2, plain or transposed,
 * each an rb_op with forward, input-gradient (vjp) and weight-gradient products.
 *
 * Geometry (per active spatial dimension, correlation convention as in PyTorch):
 *   y[o] = bias + sum_j w[j] x[s*o + off + j],   j in {-r..r}, r = ksize/2,
 * with x taken as zero outside the grid. Stride 1: off = 0, same size.
 * Stride 2 comes in two conventions:
 *   RB_GRID_VERTEX (multigrid): off = 1, n = 2k+1 -> k points (no padding);
 *   RB_GRID_CELL (CNN, padding ksize/2): off = 0, n -> ceil(n/2) (2k -> k).
 * A transposed conv is the exact adjoint of the plain one with the same
 * descriptor: k -> 2k+1 (vertex) or k -> 2k (cell).
 *
 * Parameters: weights [cout][cin][ntaps] for a plain conv and [cin][cout][ntaps]
 * for a transposed one (PyTorch layouts), then bias[cout] if desc.bias.
 * Taps run row-major over (dz, dy, dx) in {-1,0,1}^dims; RB_STENCIL_STAR keeps
 * only the 2*dims+1 taps with |dz|+|dy|+|dx| <= 1 (3-, 5-, 7-point stencils).
 *
 *     rb_conv_desc d = rb_conv_desc_default(2, 16, 32);   // 2D 3x3, 16 -> 32 channels
 *     d.stride = 2; d.grid = RB_GRID_CELL;
 *     rb_op *conv; rb_op_conv_create(ctx, &d, weights, &conv);
 *     rb_op_apply(ctx, conv, &x, &y, &work);               // (N,16,1,H,W) -> (N,32,1,H/2,W/2)
 */
#ifndef RESBRIDGE_CONV_H
#define RESBRIDGE_CONV_H

#include <stdbool.h>
#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rb_grid { RB_GRID_VERTEX, RB_GRID_CELL, RB_GRID_COUNT } rb_grid;
typedef enum rb_stencil { RB_STENCIL_FULL, RB_STENCIL_STAR, RB_STENCIL_COUNT } rb_stencil;

typedef struct rb_conv_desc {
    int dims;           /* active spatial dims, 1..3: the last `dims` of (D, H, W) */
    size_t cin, cout;   /* channels of the op's input and output */
    int ksize;          /* 1 or 3 */
    rb_stencil pattern; /* FULL: ksize^dims taps; STAR: 2*dims+1 taps (ksize 3) */
    int stride;         /* 1 or 2 */
    rb_grid grid;       /* stride-2 convention */
    bool transposed;    /* adjoint of the plain conv (stride 2 only makes sense, 1 allowed) */
    bool bias;
} rb_conv_desc;

/* dims-D, 3-wide, full pattern, stride 1, vertex grid, not transposed, no bias. */
rb_conv_desc rb_conv_desc_default(int dims, size_t cin, size_t cout);

/* Validate a descriptor (message names the bad field). */
rb_status rb_conv_desc_check(rb_context *ctx, const rb_conv_desc *desc);
size_t rb_conv_ntaps(const rb_conv_desc *desc);
size_t rb_conv_nparams(const rb_conv_desc *desc);
/* Output extent of one active dimension for input extent n (RB_ESHAPE when n is
 * not accepted, e.g. vertex stride 2 with n != 2k+1). */
rb_status rb_conv_out_extent(rb_context *ctx, const rb_conv_desc *desc, size_t n, size_t *out);

/* Create a conv op. params: rb_conv_nparams(desc) values copied in, or NULL (zeros). */
rb_status rb_op_conv_create(rb_context *ctx, const rb_conv_desc *desc, const double *params, rb_op **out);
/* The descriptor of a conv op, or NULL if op is not one. */
const rb_conv_desc *rb_op_conv_desc(const rb_op *op);

/* Single-channel stride-1 stencil, weights in tap order (ntaps values). */
rb_status rb_op_stencil_create(rb_context *ctx, int dims, rb_stencil pattern, const double *weights,
                               rb_op **out);
/* The negative Laplacian -Delta_h with mesh width h on a dims-D vertex grid
 * (3-, 5-, 7-point star: centre 2*dims/h^2, neighbours -1/h^2), zero Dirichlet
 * values outside the grid. */
rb_status rb_op_laplacian_create(rb_context *ctx, int dims, double h, rb_op **out);

/* Damped-Jacobi residual operator F(x) = D^{-1} (b - A x) for a single-channel
 * stride-1 stencil A (no bias) with non-zero centre weight D. b is referenced,
 * not copied (its data may change between calls; its shape may not). With
 * rb_residual_step and h = omega this is one damped Jacobi sweep; the type has
 * a fused in-place kernel for 2D 3x3 stencils. */
rb_status rb_op_jacobi_create(rb_context *ctx, const rb_op *A, const rb_tensor *b, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
