/* odeiv2.c — GSL's Prince-Dormand 8(9) Runge-Kutta (gsl_odeiv2_step_rk8pd) as
 * a second ODE oracle, independent of SUNDIALS (see reference.h). GSL's
 * aborting error handler is off (rb_context_create); every code is checked. */
#include "ode_internal.h"

#include <gsl/gsl_errno.h>
#include <gsl/gsl_odeiv2.h>
#include <math.h>
#include <string.h>

/* F failed: stop (GSL returns GSL_EBADFUNC at once). Non-finite values:
 * GSL_ERANGE, which makes the evolve step retry with half the step size. */
static int gsl_rhs(double t, const double y[], double dydt[], void *data)
{
    int r = rb_ode_rhs_eval(data, t, y, dydt);
    return r < 0 ? GSL_EBADFUNC : r > 0 ? GSL_ERANGE : GSL_SUCCESS;
}

static rb_status gsl_fail(const rb_ode_rhs *rhs, int code, double t, double T)
{
    static const char fn[] = "rb_ref_odeiv2";
    rb_context *ctx = rhs->ctx;
    const char *name = code == GSL_EBADFUNC  ? "GSL_EBADFUNC"
                       : code == GSL_ERANGE  ? "GSL_ERANGE"
                       : code == GSL_EMAXITER ? "GSL_EMAXITER"
                       : code == GSL_FAILURE ? "GSL_FAILURE"
                       : code == GSL_ENOPROG ? "GSL_ENOPROG"
                       : code == GSL_ENOMEM  ? "GSL_ENOMEM"
                       : code == GSL_EINVAL  ? "GSL_EINVAL"
                                             : "GSL error";
    rb_status st = rb_ode_rhs_report(rhs, fn, name);
    if (st != RB_OK) return st;
    if (rhs->nonfinite && (code == GSL_ERANGE || code == GSL_FAILURE))
        return rb_fail(ctx, RB_EDIVERGED, "%s: F (%s) returned non-finite values (last at t = %.17g); rk8pd stopped "
                       "at t = %.17g of T = %.17g (%s)", fn, rhs->F->type->name, rhs->nonfinite_t, t, T, name);
    switch (code) {
    case GSL_EMAXITER:
        return rb_fail(ctx, RB_EMAXITER, "%s: GSL_EMAXITER: %ld steps taken before reaching T = %.17g (stopped at "
                       "t = %.17g)", fn, RB_REF_ODE_MAX_STEPS, T, t);
    case GSL_FAILURE:
    case GSL_ENOPROG:
        return rb_fail(ctx, RB_EDIVERGED, "%s: %s: the step size cannot shrink further to meet the tolerance at "
                       "t = %.17g of T = %.17g (the solution may blow up, or rtol is below double precision)", fn,
                       name, t, T);
    case GSL_ENOMEM:
        return rb_fail(ctx, RB_ENOMEM, "%s: GSL_ENOMEM: GSL could not allocate its workspace", fn);
    case GSL_EINVAL:
        return rb_fail(ctx, RB_EINVAL, "%s: GSL_EINVAL: GSL refused the arguments (%s)", fn, gsl_strerror(code));
    default:
        return rb_fail(ctx, RB_EDIVERGED, "%s: %s %d (%s) at t = %.17g of T = %.17g", fn, name, code,
                       gsl_strerror(code), t, T);
    }
}

rb_status rb_ref_odeiv2(rb_context *ctx, rb_op *F, double t0, double T, const rb_tensor *x0, rb_tensor *xT,
                        double rtol, double atol)
{
    rb_status st = rb_ode_check(ctx, "rb_ref_odeiv2", F, t0, T, x0, xT, rtol, atol);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(x0);
    if (T == t0) {
        memmove(xT->data, x0->data, n * sizeof *xT->data);
        return RB_OK;
    }
    double t_entry = F->t;
    rb_ode_rhs rhs;
    st = rb_ode_rhs_open(ctx, F, x0->shape, &rhs);
    double *y = st == RB_OK ? rb_malloc(ctx, n * sizeof *y) : NULL;
    if (st == RB_OK && y == NULL) st = RB_ENOMEM;
    gsl_odeiv2_system sys = {gsl_rhs, NULL, n, &rhs}; /* the driver keeps a pointer to it */
    gsl_odeiv2_driver *driver = NULL;
    if (st == RB_OK) {
        double h0 = (T - t0) * 1e-3;
        if (h0 == 0.0) h0 = T - t0;
        driver = gsl_odeiv2_driver_alloc_y_new(&sys, gsl_odeiv2_step_rk8pd, h0, atol, rtol);
        if (driver == NULL) st = gsl_fail(&rhs, GSL_ENOMEM, t0, T);
    }
    if (st == RB_OK) {
        gsl_odeiv2_driver_set_nmax(driver, (unsigned long)RB_REF_ODE_MAX_STEPS);
        memcpy(y, x0->data, n * sizeof *y);
        double t = t0;
        int code = gsl_odeiv2_driver_apply(driver, &t, T, y);
        if (code != GSL_SUCCESS) {
            st = gsl_fail(&rhs, code, t, T);
        } else {
            for (size_t i = 0; i < n && st == RB_OK; i++)
                if (!isfinite(y[i]))
                    st = rb_fail(ctx, RB_EDIVERGED, "rb_ref_odeiv2: x(T)[%zu] = %g is not finite", i, y[i]);
        }
        if (st == RB_OK) memcpy(xT->data, y, n * sizeof *y);
    }
    if (driver != NULL) gsl_odeiv2_driver_free(driver);
    rb_free(ctx, y);
    rb_ode_rhs_close(&rhs);
    F->t = t_entry;
    return st;
}
