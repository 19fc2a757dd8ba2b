/* ode_internal.h — what the ODE oracles (cvode.c, odeiv2.c) share: argument
 * checks and the evaluation of F(t, x) on a solver's raw arrays, recording why
 * it failed so the caller can report it after the solver returns. */
#ifndef RB_REFERENCE_ODE_INTERNAL_H
#define RB_REFERENCE_ODE_INTERNAL_H

#include "resbridge/reference.h"

#define RB_ODE_MESSAGE_LEN 320

typedef struct rb_ode_rhs {
    rb_context *ctx;
    rb_op *F;
    rb_shape shape;       /* of the state */
    size_t n;             /* entries of the state */
    rb_arena work;        /* F's scratch (rb_op_workspace bytes) */
    /* the first failure of F: its status, where, and its message */
    rb_status status;
    double fail_t;
    const char *fail_what; /* "apply", "vjp", "param_grad" */
    char message[RB_ODE_MESSAGE_LEN];
    /* F returned a non-finite value (the solver may retry with a smaller step) */
    int nonfinite;
    double nonfinite_t;
} rb_ode_rhs;

/* Validate the arguments every ODE oracle takes (fn names the caller in messages):
 * F keeps the shape of x0, x0 finite, x0 and the output xT valid and of one
 * shape, times finite, tolerances finite and > 0. */
rb_status rb_ode_check(rb_context *ctx, const char *fn, const rb_op *F, double t0, double T, const rb_tensor *x0,
                       const rb_tensor *xT, double rtol, double atol);

/* Reserve F's scratch for the state shape; the record starts clean. */
rb_status rb_ode_rhs_open(rb_context *ctx, rb_op *F, rb_shape shape, rb_ode_rhs *r);
void rb_ode_rhs_close(rb_ode_rhs *r);

/* ydot = F(t, y) on raw arrays of r->n doubles (y != ydot). Returns 0 on
 * success, 1 when ydot holds a non-finite value (recoverable: a smaller step
 * may help), -1 when F failed (recorded in r; every later call returns -1 at
 * once without calling F: SUNDIALS' fixed-point solver treats a failing
 * right-hand side as a convergence failure and retries with smaller steps). */
int rb_ode_rhs_eval(rb_ode_rhs *r, double t, const double *y, double *ydot);

/* dx = alpha J_F(t, x)^T dy (overwrites dx). Same returns as rb_ode_rhs_eval. */
int rb_ode_rhs_vjp(rb_ode_rhs *r, double t, const double *x, const double *dy, double alpha, double *dx);

/* dtheta[0..F->nparams) = alpha (dF/dtheta)(t, x)^T dy (overwrites). Same returns. */
int rb_ode_rhs_param_grad(rb_ode_rhs *r, double t, const double *x, const double *dy, double alpha,
                          double *dtheta);

/* If F failed, record its status with F's message in the context and return it
 * (fn names the caller, `flag` what the solver said); else RB_OK. */
rb_status rb_ode_rhs_report(const rb_ode_rhs *r, const char *fn, const char *flag);

#endif
