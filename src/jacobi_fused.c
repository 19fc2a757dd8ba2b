/* jacobi_fused.c — the fused damped-Jacobi sweep behind rb_residual_step.
 * Placeholder until the fused kernel lands: delegates to the generic path,
 * which is the reference the fused kernel is tested against. */
#include "jacobi_internal.h"
#include "resbridge/residual.h"

size_t rb_jacobi_fused_workspace(const rb_op *op, rb_shape in)
{
    (void)op;
    return rb_arena_bytes(rb_shape_count(in) * sizeof(double));
}

rb_status rb_jacobi_fused_step(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                               rb_arena *work)
{
    return rb_residual_step_generic(ctx, op, h, x, y, work);
}
