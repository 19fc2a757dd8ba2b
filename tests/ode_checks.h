/* ode_checks.h — checks every ODE right-hand side runs, shared by the ODE suites.
 *
 *     rb_test_ode_orders(ctx, F, "tanh(W x + b)", &x0, 1.0);          // every method against CVODE BDF
 *     rb_test_ode_backprop_vs_fd(ctx, F, "conv", &x0, &c, 10, 1e-5);  // every method against central differences
 */
#ifndef RB_ODE_CHECKS_H
#define RB_ODE_CHECKS_H

#include "testkit.h"

/* 1 if every entry of t equals v (an output left untouched), else 0 */
int rb_test_untouched(const rb_tensor *t, double v);

/* max |a - b| / max |b| */
double rb_test_rel_diff(const double *a, const double *b, size_t n);

/* 1 if method M can integrate F (a partitioned method such as leapfrog needs a partitioned F). */
int rb_test_ode_applicable(const rb_ode_method *M, const rb_op *F);

/* Observed order of every applicable method in rb_ode_methods from L0, 2 L0, 4 L0
 * steps on [0, T] (L0 = 8 for order 4, 32 for order 2, 64 for order 1) against
 * three references at rtol 1e-12 (CVODE BDF, CVODE Adams, GSL rk8pd; they must
 * agree to 1e-10): order +- 0.1 (+- 0.2 for RK4) from the last two, twice that
 * from the first two; the finest error stays well above the references' own. */
void rb_test_ode_orders(rb_context *ctx, rb_op *F, const char *label, const rb_tensor *x0, double T);

/* For every applicable method: dL/dx0 and dL/dtheta of L = <c, x(1)> after L steps from
 * rb_ode_backward against central differences (step eps) of rb_ode_integrate,
 * relative error <= 1e-6 (Newton tolerance 1e-14 for the implicit methods). */
void rb_test_ode_backprop_vs_fd(rb_context *ctx, rb_op *F, const char *label, rb_tensor *x0, const rb_tensor *c,
                                size_t L, double eps);

#endif
