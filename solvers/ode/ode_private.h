/* ode_private.h — what the files of solvers/ode share and users do not see:
 * the weight set active at time t (piecewise-constant right-hand sides) and
 * the Euler/Heun pair both the fixed-step Heun and the adaptive mode use. */
#ifndef RB_SOLVERS_ODE_PRIVATE_H
#define RB_SOLVERS_ODE_PRIVATE_H

#include <math.h>

#include "resbridge/ode.h"

/* k = floor(t / width) clamped to [0, sets): a time within 1e-9 set widths
 * below a boundary counts as past it (t = j h computed in floating point). */
static inline size_t rb_ode_set_index(double t, size_t sets, double width)
{
    if (sets <= 1) return 0;
    double q = floor(t / width + 1e-9);
    if (!(q > 0)) return 0;
    if (q >= (double)(sets - 1)) return sets - 1;
    return (size_t)q;
}

/* One Heun step with its Euler predictor: xe = x + h F(t, x) (a residual step),
 * y = (x + xe + h F(t + h, xe)) / 2 (a second one). xe, y distinct from x. */
rb_status rb_ode_heun_pair(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *xe,
                           rb_tensor *y, rb_arena *work);

#endif
