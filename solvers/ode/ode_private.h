/* ode_private.h — what the files of solvers/ode share and users do not see:
 * the weight set active at time t (piecewise-constant right-hand sides) and
 * the Euler/Heun pair both the fixed-step Heun and the adaptive mode use;
 * the argument checks of the integrators. */
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

/* 1 if v[0..n) are all finite. */
static inline int rb_ode_all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* The checks every integrator makes (fn names the caller): ctx, method, F not
 * NULL; x0 and xT valid, of one shape, which F keeps; a partitioned F for a
 * partitioned method; t0, T and x0 finite. */
rb_status rb_ode_check_problem(rb_context *ctx, const char *fn, const rb_ode_method *method, const rb_op *F, double t0,
                               double T, const rb_tensor *x0, const rb_tensor *xT);

/* One Heun step with its Euler predictor: xe = x + h F(t, x) (a residual step),
 * y = (x + xe + h F(t + h, xe)) / 2 (a second one). xe, y distinct from x. */
rb_status rb_ode_heun_pair(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *xe,
                           rb_tensor *y, rb_arena *work);

#endif
