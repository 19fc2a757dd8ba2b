/* residual.h — THE primitive: y = x + h·F(x), and its backward pass.
 *
 * One update, three readings:
 *   forward Euler step of dx/dt = F(x) with step h;
 *   damped Jacobi sweep when F(x) = D^{-1}(b - A x) and h = omega;
 *   a residual network layer when F is a small learned block.
 * Every integrator, smoother and residual block in resbridge calls these
 * functions; nothing else forms x + h·F(x).
 *
 *     rb_residual_step(ctx, F, h, &x, &y, &work);        // y = x + h F(x)
 *     rb_residual_step(ctx, F, h, &x, &x, &work);        // in place
 *     rb_residual_backward(ctx, F, h, &x, &dy, &dx, dtheta, &work);
 *
 * Generic path: F(x) is evaluated into y (or, in place, into arena scratch),
 * then y = x + h·F(x). If the operator's type supplies a fused kernel
 * (rb_op_type.residual_fused), the step goes through it; the generic path
 * stays the reference it is tested against (rb_residual_step_generic).
 */
#ifndef RESBRIDGE_RESIDUAL_H
#define RESBRIDGE_RESIDUAL_H

#include "resbridge/activation.h"
#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = x + h F(x). F must map a shape to itself. y may be x (in place): then the
 * fused kernel runs if it supports in place, else F(x) goes to arena scratch
 * (rb_residual_workspace bytes). h must be finite. */
rb_status rb_residual_step(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x,
                           rb_tensor *y, rb_arena *work);

/* The reference implementation, never fused. Same contract as rb_residual_step. */
rb_status rb_residual_step_generic(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x,
                                   rb_tensor *y, rb_arena *work);

/* What else a smoothing step's pass over the grid can do (the multigrid cycle's
 * fusions, vcycle.c), all optional:
 *   P != NULL:  before the step, u += P c (P a prolongation, c on the coarse grid);
 *               assign: u = P c (full multigrid's interpolation, a start from zero)
 *   A != NULL:  after the step, with the residual r = f - A u of the new u (not stored):
 *       norm2 != NULL:  *norm2 = sum of r_i^2 (plain sum; the caller guards over- and underflow)
 *       R != NULL:      *coarse = R r (R a restriction; coarse its output shape) */
typedef struct rb_residual_pass {
    const rb_op *P;
    const rb_tensor *c;
    const rb_op *A;
    const rb_tensor *f;
    double *norm2;
    const rb_op *R;
    rb_tensor *coarse;
    bool assign;          /* with P: u = P c instead of u += P c (u's values before are not read) */
} rb_residual_pass;

/* u += P c (or u = P c), then u <- u + h F(u) in place exactly as rb_residual_step, then the residual's
 * norm / restriction -- all in one pass, if F's type has a kernel for this pass
 * (rb_op_type.residual_fused_pass): *done = true. *done = false: nothing was done, and the
 * caller makes the separate calls. A fused kernel gives the separate calls' numbers: the
 * grids bit for bit, the sum of squares to rounding (another summation order). */
rb_status rb_residual_step_pass(rb_context *ctx, const rb_op *F, double h, rb_tensor *u, const rb_residual_pass *pass,
                                bool *done, rb_arena *work);

/* Scratch bytes rb_residual_step / rb_residual_backward need for input shape `in`. */
size_t rb_residual_workspace(const rb_op *F, rb_shape in);

/* Backward of y = x + h F(x), accumulating:
 *   dx     += dy + h J_F(x)^T dy
 *   dtheta += h (dF/dtheta)^T dy      (skipped when dtheta is NULL or F has no params)
 * x is the step's INPUT. dx must not alias dy. */
rb_status rb_residual_backward(rb_context *ctx, const rb_op *F, double h, const rb_tensor *x,
                               const rb_tensor *dy, rb_tensor *dx, double *dtheta, rb_arena *work);

/* The residual layer x -> x + h F(x) as an rb_op (a ResNet block's skip
 * connection): apply is rb_residual_step, its gradients rb_residual_backward's,
 * and its taped passes keep F(x) and F's tape. It takes ownership of F and
 * gathers F's parameters as its own (on failure the caller keeps F). */
rb_status rb_op_residual_create(rb_context *ctx, rb_op *F, double h, rb_op **out);

/* The post-activation residual layer x -> act(x + h F(x)) (ResNet v1's block with act =
 * ReLU): the residual layer above with the activation fused into the step's pass over the
 * grid, forwards and backwards (act' is taken at x + h F(x), recomputed from the tape), so
 * the same numbers as that layer chained with the activation, to rounding, in one pass
 * fewer each way. act = RB_ACT_IDENTITY gives rb_op_residual_create's layer. */
rb_status rb_op_residual_act_create(rb_context *ctx, rb_op *F, double h, rb_activation act, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
