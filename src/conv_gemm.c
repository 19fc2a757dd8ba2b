/* conv_gemm.c — multi-channel 2D convolutions through OpenBLAS GEMM.
 * (Not yet implemented: every entry declines, so the reference loops run.) */
#include "conv_internal.h"

size_t rb_conv_gemm_workspace(const rb_conv_state *cs, const rb_conv_geom *g)
{
    (void)cs, (void)g;
    return 0;
}

bool rb_conv_gemm_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                          const double *bias, const double *x, double *y, rb_arena *work)
{
    (void)ctx, (void)cs, (void)g, (void)w, (void)bias, (void)x, (void)y, (void)work;
    return false;
}

bool rb_conv_gemm_backward_data(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                                const double *dy, double alpha, double *dx, rb_arena *work)
{
    (void)ctx, (void)cs, (void)g, (void)w, (void)dy, (void)alpha, (void)dx, (void)work;
    return false;
}

bool rb_conv_gemm_backward_weight(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *x,
                                  const double *dy, double alpha, double *dw, rb_arena *work)
{
    (void)ctx, (void)cs, (void)g, (void)x, (void)dy, (void)alpha, (void)dw, (void)work;
    return false;
}
