/* stencil_fast.c — single-channel 2D 3x3 stride-1 stencils, memory-bound.
 * (Not yet implemented: declines, so the reference loop runs.) */
#include "conv_internal.h"

bool rb_stencil_fast_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                             const double *x, double *y)
{
    (void)ctx, (void)cs, (void)g, (void)w, (void)x, (void)y;
    return false;
}
