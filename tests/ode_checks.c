/* ode_checks.c — see ode_checks.h. */
#include "ode_checks.h"

#include <math.h>

int rb_test_untouched(const rb_tensor *t, double v)
{
    for (size_t i = 0; i < rb_tensor_count(t); i++)
        if (t->data[i] != v) return 0;
    return 1;
}

double rb_test_rel_diff(const double *a, const double *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), s = fmax(s, fabs(b[i]));
    return s > 0 ? d / s : d;
}

int rb_test_ode_applicable(const rb_ode_method *M, const rb_op *F)
{
    return !M->partitioned || rb_op_ode_is_partitioned(F);
}

void rb_test_ode_orders(rb_context *ctx, rb_op *F, const char *label, const rb_tensor *x0, double T)
{
    /* three independent references at rtol 1e-13: CVODE BDF, CVODE Adams, GSL odeiv2 rk8pd */
    static const char *const ref_name[3] = {"CVODE BDF", "CVODE Adams", "rk8pd"};
    rb_tensor ref[3], xT;
    for (int r = 0; r < 3; r++) RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref[r], x0->shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, x0->shape));
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0.0, T, x0, &ref[0], RB_REF_CVODE_BDF, 1e-13, 1e-15, 0, NULL));
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0.0, T, x0, &ref[1], RB_REF_CVODE_ADAMS, 1e-13, 1e-15, 0, NULL));
    RB_CHECK(ctx, rb_ref_odeiv2(ctx, F, 0.0, T, x0, &ref[2], 1e-13, 1e-15));
    double agree = fmax(rb_tensor_max_rel_diff(&ref[1], &ref[0]), rb_tensor_max_rel_diff(&ref[2], &ref[0]));
    print_message("%-16s references agree: max rel diff of Adams and rk8pd vs BDF %.1e (<= 1e-10)\n", label, agree);
    assert_true(agree <= 1e-10);
    for (size_t m = 0; rb_ode_methods[m] != NULL; m++) {
        const rb_ode_method *M = rb_ode_methods[m];
        if (!rb_test_ode_applicable(M, F)) continue;
        size_t L0 = M->order == 4 ? 8 : M->order == 2 ? 32 : 64;
        double err[3][3], tol = M->order == 4 ? 0.2 : 0.1;
        for (int k = 0; k < 3; k++) {
            RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, T, L0 << k, x0, &xT, NULL, NULL));
            for (int r = 0; r < 3; r++) err[r][k] = rb_tensor_max_rel_diff(&xT, &ref[r]);
        }
        for (int r = 0; r < 3; r++) {
            double order = log2(err[r][1] / err[r][2]);
            print_message("%-16s %-9s L = %3zu..%3zu: error vs %-11s %.2e %.2e %.2e, observed order %.3f (%d +- %.1f)\n",
                          label, M->name, L0, L0 << 2, ref_name[r], err[r][0], err[r][1], err[r][2], order, M->order, tol);
            if (!(fabs(order - M->order) <= tol)) fail_msg("%s %s vs %s: order %.3f", label, M->name, ref_name[r], order);
            assert_true(fabs(log2(err[r][0] / err[r][1]) - M->order) <= 2 * tol);
            assert_true(err[r][2] > 1e-10); /* well above the references' own error */
        }
    }
    for (int r = 0; r < 3; r++) rb_tensor_release(ctx, &ref[r]);
    rb_tensor_release(ctx, &xT);
}

static double loss(rb_context *ctx, const rb_ode_method *M, rb_op *F, size_t L, const rb_tensor *x0,
                   const rb_tensor *c, rb_tensor *xT, const rb_ode_options *opt)
{
    RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 1.0, L, x0, xT, opt, NULL));
    return rb_tensor_dot(c, xT);
}

void rb_test_ode_backprop_vs_fd(rb_context *ctx, rb_op *F, const char *label, rb_tensor *x0, const rb_tensor *c,
                                size_t L, double eps)
{
    rb_ode_options opt = rb_ode_options_default();
    opt.newton_tol = 1e-14;
    rb_tensor xT, dx0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, x0->shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, x0->shape));
    size_t nx = rb_tensor_count(x0), np = F->nparams;
    double *dth = test_calloc(np ? np : 1, sizeof *dth), *fd = test_malloc((nx + np) * sizeof *fd);
    for (size_t m = 0; rb_ode_methods[m] != NULL; m++) {
        const rb_ode_method *M = rb_ode_methods[m];
        if (!rb_test_ode_applicable(M, F)) continue;
        rb_ode_tape tape;
        rb_ode_tape_init(&tape, 1);
        RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 1.0, L, x0, &xT, &opt, &tape));
        rb_tensor_fill(ctx, &dx0, 0.0);
        memset(dth, 0, (np ? np : 1) * sizeof *dth);
        RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, c, &dx0, dth));
        rb_ode_tape_release(ctx, &tape);
        for (size_t i = 0; i < nx + np; i++) {
            double *v = i < nx ? &x0->data[i] : &F->params[i - nx], keep = *v;
            *v = keep + eps;
            double lp = loss(ctx, M, F, L, x0, c, &xT, &opt);
            *v = keep - eps;
            double lm = loss(ctx, M, F, L, x0, c, &xT, &opt);
            *v = keep;
            fd[i] = (lp - lm) / (2 * eps);
        }
        double ex = rb_test_rel_diff(dx0.data, fd, nx), et = np ? rb_test_rel_diff(dth, fd + nx, np) : 0.0;
        print_message("%-16s %-9s backprop vs central differences: dL/dx0 (%zu) %.1e, dL/dtheta (%zu) %.1e (<= 1e-6)\n",
                      label, M->name, nx, ex, np, et);
        if (!(ex <= 1e-6 && et <= 1e-6)) fail_msg("%s %s: dx0 %.3g dtheta %.3g", label, M->name, ex, et);
    }
    test_free(dth), test_free(fd);
    rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &dx0);
}
