/* conformance.h — the suite every rb_op implementation in resbridge runs.
 *
 *     rb_conformance_case c = rb_conformance_default(op, rb_shape_2d(2, 3, 5, 5), "conv 3x3");
 *     rb_conformance_run(ctx, &c);       // cmocka assertions inside
 *
 * Checks, each against an oracle:
 *   shapes     rb_op_shape agrees with what apply accepts; a wrong output shape is
 *              refused with RB_ESHAPE and the output is left untouched;
 *   vjp        J^T dy against central finite differences of <dy, F(x)>, per input
 *              component (random directions for large inputs), relative error <= tol;
 *              vjp accumulates (dx += alpha J^T dy);
 *   params     dF/dtheta^T dy likewise, per parameter;
 *   linearity  for RB_OP_LINEAR: F(a x + b z) = a F(x) + b F(z) and <F(x), y> = <x, J^T y>
 *              (adjoint identity) to 1e-12;
 *   residual   for same-shape ops: rb_residual_step (fused path, if any) equals
 *              rb_residual_step_generic, out of place and in place, to 1e-13;
 *   taped      rb_op_forward with a tape equals apply bit for bit; rb_op_backward from
 *              the tape and without one, and the type's backward_overwrite (into a dx
 *              of NaNs), equal vjp + param_grad to 1e-13.
 */
#ifndef RB_CONFORMANCE_H
#define RB_CONFORMANCE_H

#include "testkit.h"

typedef struct rb_conformance_case {
    const char *label;
    rb_op *op;
    rb_shape in;
    double tol;          /* relative error allowed for finite-difference checks (1e-6) */
    double lo, hi;       /* inputs drawn uniformly from [lo, hi) */
    double kink_gap;     /* inputs closer than this to 0 are moved away (ReLU); 0: off */
    uint64_t seed;
} rb_conformance_case;

rb_conformance_case rb_conformance_default(rb_op *op, rb_shape in, const char *label);
void rb_conformance_run(rb_context *ctx, const rb_conformance_case *c);

/* A fused operator against its oracle, the unfused composition (the same parameters): the
 * taped forward passes give the same y to tol_y (relative; 0: bit for bit), the taped
 * backward passes (alpha = 0.7) the same dx and parameter gradient to tol_grad. Returns the
 * fraction of y that is exactly 0 (that a ReLU was exercised). */
double rb_conformance_compare(rb_context *ctx, const rb_op *fused, const rb_op *unfused, const rb_tensor *x,
                              const rb_tensor *dy, double tol_y, double tol_grad);

#endif
