/* adaptive.c — adaptive step sizes for the explicit methods (see ode.h): an
 * error estimate of the solution the method advances with, error per unit
 * step, and the standard controller with a safety factor.
 *
 * Every try is made of the fixed-step methods' own steps, so every stage is a
 * residual step: forward Euler's estimate comes from the embedded Euler/Heun
 * pair (rb_ode_heun_pair: Heun's predictor is the Euler step), the others
 * estimate by step doubling with their `step` function. */
#include "resbridge/ode.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "ode_private.h"

static rb_status check_adaptive(rb_context *ctx, const rb_ode_method *method, const rb_op *F, double t0, double T,
                                const rb_tensor *x0, const rb_tensor *xT, double rtol, double atol, double h0,
                                long max_steps)
{
    const char *fn = "rb_ode_integrate_adaptive";
    rb_status st = rb_ode_check_problem(ctx, fn, method, F, t0, T, x0, xT);
    if (st != RB_OK) return st;
    if (method->implicit)
        return rb_fail(ctx, RB_EUNSUPPORTED, "%s: %s is implicit; the adaptive mode is for the explicit methods "
                       "(euler, heun, rk4, leapfrog)", fn, method->name);
    if (!(isfinite(rtol) && rtol > 0)) return rb_fail(ctx, RB_EINVAL, "%s: rtol = %g must be finite and > 0", fn, rtol);
    if (!(isfinite(atol) && atol >= 0)) return rb_fail(ctx, RB_EINVAL, "%s: atol = %g must be finite and >= 0", fn, atol);
    if (!(isfinite(h0) && h0 > 0)) return rb_fail(ctx, RB_EINVAL, "%s: h0 = %g must be finite and > 0", fn, h0);
    if (max_steps < 1) return rb_fail(ctx, RB_EINVAL, "%s: max_steps = %ld must be >= 1", fn, max_steps);
    return RB_OK;
}

/* One try from (t, x) with step h: the new state y and the estimate e of its local error. */
static rb_status try_step(rb_context *ctx, const rb_ode_method *method, rb_op *F, double t, double h,
                          const rb_tensor *x, rb_tensor *y, rb_tensor *e, rb_tensor *mid, rb_arena *work)
{
    size_t n = rb_tensor_count(x);
    rb_status st;
    if (method == rb_ode_euler) {
        /* y = the Euler step, mid = Heun's: e = mid - y */
        st = rb_ode_heun_pair(ctx, F, t, h, x, y, mid, work);
        if (st == RB_OK)
            for (size_t i = 0; i < n; i++) e->data[i] = mid->data[i] - y->data[i];
        return st;
    }
    /* step doubling: e (one step of h), then y by two steps of h/2; Richardson: err(y) = (y - e) / (2^p - 1) */
    st = method->step(ctx, F, t, h, x, e, NULL, work);
    if (st == RB_OK) st = method->step(ctx, F, t, 0.5 * h, x, mid, NULL, work);
    if (st == RB_OK) st = method->step(ctx, F, t + 0.5 * h, 0.5 * h, mid, y, NULL, work);
    if (st == RB_OK) {
        double scale = 1.0 / (ldexp(1.0, method->order) - 1.0);
        for (size_t i = 0; i < n; i++) e->data[i] = (y->data[i] - e->data[i]) * scale;
    }
    return st;
}

/* ||e_i / (atol + rtol max(|x_i|, |y_i|))||_rms; a zero weight with e_i != 0 is infinite. */
static double weighted_rms(const rb_tensor *e, const rb_tensor *x, const rb_tensor *y, double rtol, double atol)
{
    size_t n = rb_tensor_count(e);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double w = atol + rtol * fmax(fabs(x->data[i]), fabs(y->data[i]));
        if (e->data[i] == 0) continue;
        if (w == 0) return INFINITY;
        double q = e->data[i] / w;
        sum += q * q;
    }
    return sqrt(sum / (double)n);
}

rb_status rb_ode_integrate_adaptive(rb_context *ctx, const rb_ode_method *method, rb_op *F, double t0, double T,
                                    const rb_tensor *x0, rb_tensor *xT, double rtol, double atol, double h0,
                                    long max_steps, rb_ode_adaptive_stats *stats)
{
    const char *fn = "rb_ode_integrate_adaptive";
    rb_status st = check_adaptive(ctx, method, F, t0, T, x0, xT, rtol, atol, h0, max_steps);
    if (st != RB_OK) return st;
    const rb_shape shape = x0->shape;
    const size_t n = rb_shape_count(shape), S = rb_arena_bytes(n * sizeof(double));
    rb_ode_adaptive_stats s = {0, 0, 0, 0, 0};
    if (T == t0) {
        memmove(xT->data, x0->data, n * sizeof(double));
        if (stats) *stats = s;
        return RB_OK;
    }
    rb_arena a = {0};
    st = rb_arena_reserve(ctx, &a, 4 * S + rb_ode_step_workspace(method, F, shape) + 256);
    if (st != RB_OK) return st;
    rb_tensor x, y, e, mid;
    st = rb_arena_tensor(ctx, &a, &x, shape);
    if (st == RB_OK) st = rb_arena_tensor(ctx, &a, &y, shape);
    if (st == RB_OK) st = rb_arena_tensor(ctx, &a, &e, shape);
    if (st == RB_OK) st = rb_arena_tensor(ctx, &a, &mid, shape);
    if (st != RB_OK) {
        rb_arena_release(ctx, &a);
        return st;
    }
    memcpy(x.data, x0->data, n * sizeof(double));
    /* err ~ h^p per unit step: Euler's pair estimates h^2, doubling h^(p+1); divided by h */
    const double span = fabs(T - t0), dir = T > t0 ? 1.0 : -1.0, expo = 1.0 / (double)method->order;
    const double t_entry = F->t;
    double t = t0, h = dir * fmin(h0, span), facmax = 5.0;
    long tries = 0;
    s.h_min = INFINITY;
    for (;;) {
        if (tries >= max_steps) {
            st = rb_fail(ctx, RB_EMAXITER, "%s: %s took %ld tries (%ld accepted, %ld rejected) and reached t = %.17g "
                         "of T = %.17g (rtol %g, atol %g)", fn, method->name, tries, s.steps, s.rejected, t, T, rtol, atol);
            break;
        }
        int last = dir * (t + h - T) >= -1e-12 * span;
        if (last) h = T - t;
        if (!(fabs(h) > 16 * DBL_EPSILON * fmax(fabs(t), span))) {
            st = rb_fail(ctx, RB_EDIVERGED, "%s: %s: the step size %.3e underflowed at t = %.17g of T = %.17g (the "
                         "solution may blow up, or rtol %g is below double precision)", fn, method->name, fabs(h), t, T, rtol);
            break;
        }
        tries++;
        st = try_step(ctx, method, F, t, h, &x, &y, &e, &mid, &a);
        if (st != RB_OK) break;
        if (!rb_ode_all_finite(y.data, n)) {
            st = rb_fail(ctx, RB_EDIVERGED, "%s: %s step from t = %.17g with h = %.3e gave a non-finite state", fn,
                         method->name, t, h);
            break;
        }
        double err = weighted_rms(&e, &x, &y, rtol, atol) * span / fabs(h);
        if (err <= 1.0) {
            s.steps++;
            if (!last || s.steps == 1) s.h_min = fmin(s.h_min, fabs(h)), s.h_max = fmax(s.h_max, fabs(h));
            if (!last) s.h_last = fabs(h);
            t = last ? T : t + h;
            double *swap = x.data;
            x.data = y.data, y.data = swap;
            if (last) break;
            h *= err == 0 ? facmax : fmin(facmax, fmax(0.2, 0.9 * pow(err, -expo)));
            facmax = 5.0;
        } else {
            s.rejected++;
            h *= isfinite(err) ? fmax(0.2, fmin(1.0, 0.9 * pow(err, -expo))) : 0.2;
            facmax = 1.0; /* no growth right after a rejection */
        }
    }
    F->t = t_entry;
    if (st == RB_OK) {
        memcpy(xT->data, x.data, n * sizeof(double));
        if (stats) *stats = s;
    }
    rb_arena_release(ctx, &a);
    return st;
}
