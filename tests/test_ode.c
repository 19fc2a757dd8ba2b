/* test_ode.c — ResNets as discretised ODEs (ode.h), each test naming its oracle:
 *   right-hand sides                  the conformance suite (finite differences, linearity)
 *   Euler = ResNet                    a hand-written loop of rb_residual_step (bit-identical)
 *   observed orders                   CVODE BDF at rtol 1e-12 (linear and neural F)
 *   backprop gradients                central finite differences of rb_ode_integrate
 *   Euler's gradient as h -> 0        the CVODES continuous adjoint (difference O(h))
 *   checkpointing                     full storage (bit-identical), peak bytes O(sqrt L)
 *   Jacobi = pseudo-time Euler        one damped Jacobi sweep (bit-identical); CVODE steady state = dgesv
 *   stability of the Euler stack      max |1 + h lambda| over dgeev's eigenvalues
 *   gradient highway                  closed forms from the eigenvalues of a symmetric W
 *   bad input                         statuses, messages, outputs untouched (Newton failures too)
 * Every test prints what it measured (cmocka print_message). */
#include "conformance.h"
#include "testkit.h"

#include <math.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static rb_op *make_neural(rb_context *ctx, size_t n, rb_activation act, size_t sets, double width, double w,
                          uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_neural_create(ctx, n, act, sets, width, NULL, &F));
    rb_test_rng r = {seed};
    for (size_t s = 0; s < sets; s++) {
        double *p = F->params + s * (n * n + n);
        for (size_t k = 0; k < n * n; k++) p[k] = rb_test_uniform(&r, -w, w);
        for (size_t k = 0; k < n; k++) p[n * n + k] = rb_test_uniform(&r, -0.5, 0.5);
    }
    return F;
}

static rb_op *make_linear(rb_context *ctx, size_t n, double w, double shift, uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, NULL, &F));
    rb_test_rng r = {seed};
    for (size_t k = 0; k < n * n; k++) F->params[k] = rb_test_uniform(&r, -w, w);
    for (size_t i = 0; i < n; i++) F->params[i * n + i] += shift;
    return F;
}

static double rel_diff(const double *a, const double *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), s = fmax(s, fabs(b[i]));
    return s > 0 ? d / s : d;
}

static int untouched(const rb_tensor *t, double v)
{
    for (size_t i = 0; i < rb_tensor_count(t); i++)
        if (t->data[i] != v) return 0;
    return 1;
}

static const rb_ode_method *const *methods(void) { return rb_ode_methods; }

/* ---- right-hand sides pass the conformance suite ---------------------------------------------- */

static void test_rhs_conform(void **state)
{
    rb_context *ctx = *state;
    rb_op *lin = make_linear(ctx, 5, 0.8, 0, 1);
    rb_conformance_case c = rb_conformance_default(lin, rb_shape_vec(5), "ode_linear vector");
    rb_conformance_run(ctx, &c);
    c = rb_conformance_default(lin, rb_shape_1d(3, 1, 5), "ode_linear batch");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, lin);

    rb_op *nl = make_neural(ctx, 4, RB_ACT_TANH, 3, 0.5, 1.0, 2);
    const double times[] = {0.2, 0.7, 1.3, 9.0};
    for (int k = 0; k < 4; k++) {
        nl->t = times[k];
        c = rb_conformance_default(nl, rb_shape_1d(2, 1, 4), "ode_neural tanh, 3 sets, batch");
        rb_conformance_run(ctx, &c);
    }
    rb_op_free(ctx, nl);
    nl = make_neural(ctx, 4, RB_ACT_GELU, 1, 1.0, 1.0, 3);
    c = rb_conformance_default(nl, rb_shape_vec(4), "ode_neural gelu");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, nl);

    rb_op *as;
    RB_CHECK(ctx, rb_op_ode_antisym_create(ctx, 4, RB_ACT_TANH, 0.1, NULL, &as));
    rb_test_rng r = {4};
    for (size_t k = 0; k < as->nparams; k++) as->params[k] = rb_test_uniform(&r, -1, 1);
    c = rb_conformance_default(as, rb_shape_1d(2, 1, 4), "ode_antisym tanh");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, as);
    /* antisym with identity and b = 0: the matrix W - W^T - gamma I has eigenvalues with real part -gamma */
    RB_CHECK(ctx, rb_op_ode_antisym_create(ctx, 4, RB_ACT_IDENTITY, 0.3, NULL, &as));
    for (size_t k = 0; k < 16; k++) as->params[k] = rb_test_uniform(&r, -1, 1);
    double M[16], wr[4], wi[4];
    for (int i = 0; i < 4; i++) /* the matrix of the linear part (b = 0, sigma = id) from its definition */
        for (int j = 0; j < 4; j++) M[i * 4 + j] = as->params[i * 4 + j] - as->params[j * 4 + i] - (i == j ? 0.3 : 0);
    rb_tensor e, col;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, rb_shape_vec(4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &col, rb_shape_vec(4)));
    rb_arena aw = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &aw, rb_op_workspace(as, e.shape)));
    for (int j = 0; j < 4; j++) { /* and the op applies that matrix */
        rb_tensor_fill(ctx, &e, 0.0);
        e.data[j] = 1.0;
        RB_CHECK(ctx, rb_op_apply(ctx, as, &e, &col, &aw));
        for (int i = 0; i < 4; i++) assert_true(fabs(col.data[i] - M[i * 4 + j]) <= 1e-15);
    }
    rb_arena_release(ctx, &aw), rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &col);
    RB_CHECK(ctx, rb_ref_eig_general(ctx, M, 4, wr, wi));
    for (int i = 0; i < 4; i++) assert_true(fabs(wr[i] + 0.3) <= 1e-12);
    print_message("antisym: eigenvalues of W - W^T - 0.3 I have real parts %.3g %.3g %.3g %.3g (dgeev)\n", wr[0],
                  wr[1], wr[2], wr[3]);
    rb_op_free(ctx, as);
}

/* ---- Euler is the ResNet: rb_residual_step layer by layer --------------------------------------- */

static void test_euler_is_residual_stack(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4, L = 7;
    const double T = 1.4, h = T / L;
    rb_op *F = make_neural(ctx, n, RB_ACT_TANH, L, h, 1.0, 5); /* one weight set per layer */
    rb_shape s = rb_shape_1d(3, 1, n);
    rb_tensor x0, xT, x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
    rb_test_rng r = {6};
    rb_test_fill(&r, &x0, -1, 1);
    F->t = -5.0;
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_euler, F, 0.0, T, L, &x0, &xT, NULL, NULL));
    assert_true(F->t == -5.0);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(F, s)));
    RB_CHECK(ctx, rb_tensor_copy(ctx, &x0, &x));
    for (size_t j = 0; j < L; j++) {
        F->t = (double)j * h; /* layer j uses weight set j */
        RB_CHECK(ctx, rb_residual_step(ctx, F, h, &x, &y, &work));
        RB_CHECK(ctx, rb_tensor_copy(ctx, &y, &x));
    }
    assert_memory_equal(x.data, xT.data, rb_tensor_count(&x) * sizeof(double));
    /* and the weight sets matter */
    rb_op *F1 = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.0, 5);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_euler, F1, 0.0, T, L, &x0, &y, NULL, NULL));
    assert_true(rb_tensor_max_rel_diff(&y, &xT) > 1e-3);
    print_message("Euler, 7 layers with 7 weight sets = 7 rb_residual_step calls: bit-identical\n");
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
    rb_op_free(ctx, F), rb_op_free(ctx, F1);
}

/* ---- observed orders against CVODE ----------------------------------------------------------- */

static void check_orders(rb_context *ctx, rb_op *F, const char *label, const rb_tensor *x0, double T)
{
    rb_tensor ref, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, x0->shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, x0->shape));
    RB_CHECK(ctx, rb_ref_cvode(ctx, F, 0.0, T, x0, &ref, RB_REF_CVODE_BDF, 1e-12, 1e-14, 0, NULL));
    for (size_t m = 0; methods()[m] != NULL; m++) {
        const rb_ode_method *M = methods()[m];
        size_t L0 = M->order == 4 ? 8 : M->order == 2 ? 32 : 64;
        double err[3], order = 0;
        for (int k = 0; k < 3; k++) {
            RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, T, L0 << k, x0, &xT, NULL, NULL));
            err[k] = rb_tensor_max_rel_diff(&xT, &ref);
        }
        order = log2(err[1] / err[2]);
        double tol = M->order == 4 ? 0.2 : 0.1;
        print_message("%-16s %-9s L = %3zu..%3zu: error vs CVODE BDF %.2e %.2e %.2e, observed order %.3f "
                      "(%d +- %.1f)\n", label, M->name, L0, L0 << 2, err[0], err[1], err[2], order, M->order, tol);
        if (!(fabs(order - M->order) <= tol)) fail_msg("%s %s: order %.3f", label, M->name, order);
        assert_true(fabs(log2(err[0] / err[1]) - M->order) <= 2 * tol);
        assert_true(err[2] > 1e-10); /* well above CVODE's own error */
    }
    rb_tensor_release(ctx, &ref), rb_tensor_release(ctx, &xT);
}

static void test_orders_vs_cvode(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    rb_tensor x0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    rb_test_rng r = {7};
    rb_test_fill(&r, &x0, -1, 1);
    rb_op *lin = make_linear(ctx, n, 1.0, -0.5, 8);
    check_orders(ctx, lin, "linear W x", &x0, 1.0);
    rb_op *nl = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.5, 9);
    check_orders(ctx, nl, "tanh(W x + b)", &x0, 1.0);
    rb_op_free(ctx, lin), rb_op_free(ctx, nl);
    rb_tensor_release(ctx, &x0);
}

/* ---- backprop against finite differences ---------------------------------------------------- */

static double loss(rb_context *ctx, const rb_ode_method *M, rb_op *F, size_t L, const rb_tensor *x0,
                   const rb_tensor *c, rb_tensor *xT, const rb_ode_options *opt)
{
    RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 1.0, L, x0, xT, opt, NULL));
    return rb_tensor_dot(c, xT);
}

static void test_backprop_vs_fd(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3, L = 10;
    const double eps = 1e-5;
    rb_ode_options opt = rb_ode_options_default();
    opt.newton_tol = 1e-14;
    rb_shape s = rb_shape_1d(2, 1, n); /* a batch of two states */
    rb_tensor x0, c, xT, dx0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, s));
    rb_test_rng r = {11};
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    size_t nx = rb_tensor_count(&x0);
    for (int kind = 0; kind < 2; kind++) {
        /* neural with two weight sets switching at t = 0.5, and the antisymmetric net */
        rb_op *F;
        if (kind == 0) F = make_neural(ctx, n, RB_ACT_TANH, 2, 0.5, 1.2, 12);
        else {
            RB_CHECK(ctx, rb_op_ode_antisym_create(ctx, n, RB_ACT_TANH, 0.2, NULL, &F));
            for (size_t k = 0; k < F->nparams; k++) F->params[k] = rb_test_uniform(&r, -1, 1);
        }
        size_t np = F->nparams;
        double *dth = test_calloc(np, sizeof *dth), *fd = test_malloc((nx + np) * sizeof *fd);
        for (size_t m = 0; methods()[m] != NULL; m++) {
            const rb_ode_method *M = methods()[m];
            rb_ode_tape tape;
            rb_ode_tape_init(&tape, 1);
            RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 1.0, L, &x0, &xT, &opt, &tape));
            rb_tensor_fill(ctx, &dx0, 0.0);
            memset(dth, 0, np * sizeof *dth);
            RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &c, &dx0, dth));
            rb_ode_tape_release(ctx, &tape);
            for (size_t i = 0; i < nx + np; i++) {
                double *v = i < nx ? &x0.data[i] : &F->params[i - nx], keep = *v;
                *v = keep + eps;
                double lp = loss(ctx, M, F, L, &x0, &c, &xT, &opt);
                *v = keep - eps;
                double lm = loss(ctx, M, F, L, &x0, &c, &xT, &opt);
                *v = keep;
                fd[i] = (lp - lm) / (2 * eps);
            }
            double ex = rel_diff(dx0.data, fd, nx), et = rel_diff(dth, fd + nx, np);
            print_message("%-11s %-9s backprop vs central differences: dL/dx0 %.1e, dL/dtheta (%zu) %.1e (<= 1e-6)\n",
                          kind ? "antisym" : "neural 2set", M->name, ex, np, et);
            if (!(ex <= 1e-6 && et <= 1e-6)) fail_msg("%s: dx0 %.3g dtheta %.3g", M->name, ex, et);
        }
        test_free(dth), test_free(fd);
        rb_op_free(ctx, F);
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &dx0);
}

/* ---- Euler's discrete adjoint converges to CVODES's continuous adjoint at order 1 ------------- */

static void test_backprop_vs_cvodes_adjoint(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    rb_op *F = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.0, 13);
    size_t np = F->nparams;
    rb_tensor x0, c, xT, dx0, ref;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, rb_shape_vec(n)));
    rb_test_rng r = {14};
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    double *ref_th = test_malloc(np * sizeof *ref_th), *dth = test_malloc(np * sizeof *dth);
    RB_CHECK(ctx, rb_ref_cvodes_adjoint(ctx, F, 0.0, 1.0, &x0, &c, &ref, ref_th, 1e-11, 1e-13));
    for (size_t m = 0; m < 3; m++) {
        const rb_ode_method *M = methods()[m];
        size_t L0 = M->order == 4 ? 8 : M->order == 2 ? 32 : 50;
        double d[3];
        for (int k = 0; k < 3; k++) {
            rb_ode_tape tape;
            rb_ode_tape_init(&tape, 0);
            RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 1.0, L0 << k, &x0, &xT, NULL, &tape));
            rb_tensor_fill(ctx, &dx0, 0.0);
            memset(dth, 0, np * sizeof *dth);
            RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &c, &dx0, dth));
            rb_ode_tape_release(ctx, &tape);
            d[k] = fmax(rel_diff(dx0.data, ref.data, n), rel_diff(dth, ref_th, np));
        }
        double order = log2(d[1] / d[2]);
        print_message("%-6s backprop vs CVODES adjoint, L = %zu, %zu, %zu: %.2e %.2e %.2e, order %.3f (%d +- 0.15)\n",
                      M->name, L0, L0 * 2, L0 * 4, d[0], d[1], d[2], order, M->order);
        if (!(fabs(order - M->order) <= 0.15)) fail_msg("%s: gradient order %.3f", M->name, order);
    }
    test_free(ref_th), test_free(dth);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &xT);
    rb_tensor_release(ctx, &dx0), rb_tensor_release(ctx, &ref);
    rb_op_free(ctx, F);
}

/* ---- checkpointing: bit-identical gradients, O(sqrt L) memory --------------------------------- */

static void test_checkpointing(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4, L = 400;
    rb_op *F = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.0, 15);
    size_t np = F->nparams;
    rb_tensor x0, c, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_test_rng r = {16};
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    const size_t strides[] = {1, 0, 7, 400};
    size_t S = rb_arena_bytes(n * sizeof(double));
    for (size_t m = 0; methods()[m] != NULL; m++) {
        const rb_ode_method *M = methods()[m];
        double grad_full[4 + 20], grad[4 + 20];
        size_t peak_full = 0;
        for (int k = 0; k < 4; k++) {
            rb_ode_tape tape;
            rb_ode_tape_init(&tape, strides[k]);
            rb_tensor dx0;
            RB_CHECK(ctx, rb_tensor_view(ctx, &dx0, grad, rb_shape_vec(n)));
            memset(grad, 0, sizeof grad);
            RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, 2.0, L, &x0, &xT, NULL, &tape));
            RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &c, &dx0, grad + n));
            size_t ws = rb_ode_step_workspace(M, F, x0.shape), peak = tape.peak_bytes;
            if (k == 0) {
                memcpy(grad_full, grad, sizeof grad);
                peak_full = peak;
                assert_true(peak >= (L + 1) * n * sizeof(double));
            } else {
                assert_memory_equal(grad, grad_full, (n + np) * sizeof(double));
            }
            if (k == 1) {
                /* stride 20: 21 checkpoints + x_L slot + 19 recomputed + 2 adjoint states, plus one step's scratch */
                size_t bound = 3 * 20 * S + ws + rb_arena_bytes(np * sizeof(double)) + 256;
                print_message("%-9s L = 400: peak bytes full storage %zu, checkpoints every 20: %zu (bound 60 states + "
                              "step scratch = %zu); gradients bit-identical\n", M->name, peak_full, peak, bound);
                assert_true(peak <= bound && peak * 4 < peak_full);
                assert_int_equal(tape.stride, 20);
            }
            rb_ode_tape_release(ctx, &tape);
        }
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* ---- Jacobi as pseudo-time: the same primitive, and CVODE's steady state is LAPACK's solution ---- */

static void test_jacobi_pseudo_time(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 15;
    const double omega = 2.0 / 3.0;
    rb_shape s = rb_shape_vec(n);
    rb_op *A, *J;
    RB_CHECK(ctx, rb_op_laplacian_create(ctx, 1, 1.0 / (n + 1), &A));
    rb_tensor b, x0, sweep, euler, steady;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &sweep, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &euler, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &steady, s));
    rb_test_rng r = {21};
    rb_test_fill(&r, &b, -1, 1);
    rb_test_fill(&r, &x0, -1, 1);
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    /* one damped Jacobi sweep = one Euler step of dx/dt = D^{-1}(b - A x) with h = omega */
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(J, s)));
    RB_CHECK(ctx, rb_residual_step(ctx, J, omega, &x0, &sweep, &work));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_euler, J, 0.0, omega, 1, &x0, &euler, NULL, NULL));
    assert_memory_equal(sweep.data, euler.data, n * sizeof(double));
    /* CVODE BDF to t = 3000 (slowest mode e^{-0.019 t}) against dgesv on the assembled A */
    rb_ref_ode_stats st;
    RB_CHECK(ctx, rb_ref_cvode(ctx, J, 0.0, 3000.0, &x0, &steady, RB_REF_CVODE_BDF, 1e-12, 1e-14, 0, &st));
    double *M = test_malloc(n * n * sizeof *M), *u = test_malloc(n * sizeof *u);
    RB_CHECK(ctx, rb_ref_assemble(ctx, A, s, M));
    RB_CHECK(ctx, rb_ref_solve_dense(ctx, M, n, b.data, u));
    double err = rel_diff(steady.data, u, n);
    print_message("Jacobi sweep (omega = 2/3) = Euler step: bit-identical; CVODE BDF steady state (t = 3000, %ld steps) vs "
                  "dgesv: %.2e (<= 1e-8)\n", st.steps, err);
    if (!(err <= 1e-8)) fail_msg("steady state vs dgesv: %.3g", err);
    test_free(M), test_free(u);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &sweep);
    rb_tensor_release(ctx, &euler), rb_tensor_release(ctx, &steady);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
}

/* ---- stability of the Euler stack: max |1 + h lambda| <= 1 over dgeev's eigenvalues --------------- */

static void test_euler_stability(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4, L = 1000;
    rb_op *F = make_linear(ctx, n, 1.0, -2.0, 22);
    double wr[4], wi[4];
    RB_CHECK(ctx, rb_ref_eig_general(ctx, F->params, n, wr, wi));
    double hmax = INFINITY;
    for (size_t i = 0; i < n; i++) {
        assert_true(wr[i] < 0);
        hmax = fmin(hmax, -2 * wr[i] / (wr[i] * wr[i] + wi[i] * wi[i]));
    }
    rb_tensor x0, xL;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xL, rb_shape_vec(n)));
    rb_test_rng r = {23};
    rb_test_fill(&r, &x0, -1, 1);
    const double factors[2] = {0.99, 1.01};
    for (int k = 0; k < 2; k++) {
        double h = factors[k] * hmax, rho = 0;
        for (size_t i = 0; i < n; i++) rho = fmax(rho, hypot(1 + h * wr[i], h * wi[i]));
        RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_euler, F, 0.0, h * (double)L, L, &x0, &xL, NULL, NULL));
        double growth = rb_tensor_norm2(&xL) / rb_tensor_norm2(&x0);
        double rate = log(growth) / (double)L;
        print_message("Euler, x' = W x, h = %.2f h_max (h_max = %.4f from dgeev): max|1 + h lambda| = %.5f, "
                      "|x_1000|/|x_0| = %.3e, per-layer rate %.5f (predicted %.5f)\n", factors[k], hmax, rho, growth,
                      exp(rate), rho);
        assert_true(k == 0 ? rho < 1 && growth < 1e-3 : rho > 1 && growth > 1e3);
        assert_true(fabs(rate - log(rho)) <= 5e-3);
    }
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xL);
    rb_op_free(ctx, F);
}

/* ---- gradient highway: ||dx_L/dx_0|| for plain and residual linear stacks, closed forms ---------- */

/* spectral norm of the n x n matrix G (row-major) by dsyev of G^T G */
static double spectral_norm(rb_context *ctx, const double *G, size_t n)
{
    double GtG[16], w[4];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            GtG[i * n + j] = 0;
            for (size_t k = 0; k < n; k++) GtG[i * n + j] += G[k * n + i] * G[k * n + j];
        }
    RB_CHECK(ctx, rb_ref_eig_sym(ctx, GtG, n, w));
    return sqrt(w[n - 1]);
}

static void test_gradient_highway(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4, L = 50;
    const double lambda[4] = {0.9, -0.9, 0.5, -0.2}, T = 1.0, h = T / L;
    /* W = Q diag(lambda) Q^T with a Householder Q */
    double v[4] = {0.3, -1.1, 0.7, 0.2}, vv = 0, W[16];
    for (size_t i = 0; i < n; i++) vv += v[i] * v[i];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            W[i * n + j] = 0;
            for (size_t k = 0; k < n; k++) {
                double qik = (i == k) - 2 * v[i] * v[k] / vv, qjk = (j == k) - 2 * v[j] * v[k] / vv;
                W[i * n + j] += qik * lambda[k] * qjk;
            }
        }
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, W, &F));
    rb_tensor e, g, g2, x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &g, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &g2, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_tensor_fill(ctx, &x0, 0.5);
    double plain[16], resid[16];
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, 0);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_euler, F, 0.0, T, L, &x0, &xT, NULL, &tape));
    for (size_t i = 0; i < n; i++) {
        rb_tensor_fill(ctx, &e, 0.0);
        e.data[i] = 1.0;
        /* plain stack x <- W x: backprop e_i through 50 layers by the vjp */
        RB_CHECK(ctx, rb_tensor_copy(ctx, &e, &g));
        for (size_t l = 0; l < L; l++) {
            rb_tensor_fill(ctx, &g2, 0.0);
            RB_CHECK(ctx, rb_op_vjp(ctx, F, &x0, &g, 1.0, &g2, NULL));
            RB_CHECK(ctx, rb_tensor_copy(ctx, &g2, &g));
        }
        memcpy(plain + i * n, g.data, n * sizeof(double));
        /* residual stack x <- x + h W x: the Euler integrator's discrete adjoint */
        rb_tensor_fill(ctx, &g, 0.0);
        RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &e, &g, NULL));
        memcpy(resid + i * n, g.data, n * sizeof(double));
    }
    rb_ode_tape_release(ctx, &tape);
    double np_ = spectral_norm(ctx, plain, n), nr = spectral_norm(ctx, resid, n);
    double want_p = pow(0.9, (double)L), want_r = 0;
    for (size_t i = 0; i < n; i++) want_r = fmax(want_r, pow(fabs(1 + h * lambda[i]), (double)L));
    print_message("gradient highway, 50 linear layers, eigenvalues {0.9, -0.9, 0.5, -0.2}: plain ||dx_L/dx_0|| = %.6e "
                  "(0.9^50 = %.6e), residual (h = 1/50) %.6f (max|1 + h lambda|^50 = %.6f)\n", np_, want_p, nr, want_r);
    assert_true(fabs(np_ - want_p) <= 1e-10 * want_p && fabs(nr - want_r) <= 1e-10 * want_r);
    assert_true(np_ < 0.01 && nr > 1.0);
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &g), rb_tensor_release(ctx, &g2);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

/* ---- bad input ---------------------------------------------------------------------------------- */

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3;
    rb_op *F = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.0, 17);
    rb_tensor x0, xT, x4;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x4, rb_shape_vec(n + 1)));
    rb_tensor_fill(ctx, &x0, 0.5);
    rb_tensor_fill(ctx, &xT, 7.0);
    const rb_ode_method *E = rb_ode_euler;
    assert_int_equal(rb_ode_integrate(NULL, E, F, 0, 1, 4, &x0, &xT, NULL, NULL), RB_ENULL);
    RB_EXPECT(ctx, RB_ENULL, "method is NULL", rb_ode_integrate(ctx, NULL, F, 0, 1, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_ENULL, "F is NULL", rb_ode_integrate(ctx, E, NULL, 0, 1, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_ENULL, "x0", rb_ode_integrate(ctx, E, F, 0, 1, 4, NULL, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_ENULL, "xT", rb_ode_integrate(ctx, E, F, 0, 1, 4, &x0, NULL, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "L = 0", rb_ode_integrate(ctx, E, F, 0, 1, 0, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_ode_integrate(ctx, E, F, 0, NAN, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_ode_integrate(ctx, E, F, 0, INFINITY, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "non-zero", rb_ode_integrate(ctx, E, F, 1, 1, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "shape", rb_ode_integrate(ctx, E, F, 0, 1, 4, &x0, &x4, NULL, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "width 3", rb_ode_integrate(ctx, E, F, 0, 1, 4, &x4, &x4, NULL, NULL));
    rb_conv_desc d = rb_conv_desc_default(1, 1, 2);
    d.ksize = 1;
    double w2[2] = {1, -1};
    rb_op *widen;
    RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w2, &widen));
    RB_EXPECT(ctx, RB_ESHAPE, "keep the shape", rb_ode_integrate(ctx, E, widen, 0, 1, 4, &x0, &xT, NULL, NULL));
    rb_op_free(ctx, widen);
    x0.data[1] = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "x0[1]", rb_ode_integrate(ctx, E, F, 0, 1, 4, &x0, &xT, NULL, NULL));
    x0.data[1] = 0.5;
    rb_ode_options bad = {0.0, 5};
    RB_EXPECT(ctx, RB_EINVAL, "newton_tol", rb_ode_integrate(ctx, rb_ode_beuler, F, 0, 1, 4, &x0, &xT, &bad, NULL));
    assert_true(untouched(&xT, 7.0));
    /* right-hand side constructors */
    rb_op *G;
    RB_EXPECT(ctx, RB_EINVAL, "n = 0", rb_op_ode_linear_create(ctx, 0, NULL, &G));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_ode_linear_create(ctx, 3, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "sets", rb_op_ode_neural_create(ctx, 3, RB_ACT_TANH, 0, 1.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "set_width", rb_op_ode_neural_create(ctx, 3, RB_ACT_TANH, 2, 0.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "sigma", rb_op_ode_neural_create(ctx, 3, (rb_activation)9, 1, 1.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "gamma", rb_op_ode_antisym_create(ctx, 3, RB_ACT_TANH, -1.0, NULL, &G));
    const rb_ode_method *M;
    RB_EXPECT(ctx, RB_EINVAL, "unknown ODE method", rb_ode_method_parse(ctx, "rk5", &M));
    RB_CHECK(ctx, rb_ode_method_parse(ctx, "imidpoint", &M));
    assert_ptr_equal(M, rb_ode_imidpoint);

    /* Newton failures: too few iterations for a nonlinear F; a singular Newton matrix I - h W with W = I, h = 1 */
    rb_ode_options one = {1e-12, 1};
    rb_op *strong = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 3.0, 18);
    RB_EXPECT(ctx, RB_EMAXITER, "Newton did not converge in 1 iterations",
              rb_ode_integrate(ctx, rb_ode_beuler, strong, 0, 1, 2, &x0, &xT, &one, NULL));
    RB_EXPECT(ctx, RB_EMAXITER, "Newton did not converge",
              rb_ode_integrate(ctx, rb_ode_imidpoint, strong, 0, 1, 2, &x0, &xT, &one, NULL));
    print_message("Newton with 1 iteration: \"%s\"\n", rb_context_message(ctx));
    rb_op_free(ctx, strong);
    double I3[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    rb_op *id;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, n, I3, &id));
    RB_EXPECT(ctx, RB_EDIVERGED, "singular", rb_ode_integrate(ctx, rb_ode_beuler, id, 0, 1, 1, &x0, &xT, NULL, NULL));
    print_message("backward Euler, W = I, h = 1: \"%s\"\n", rb_context_message(ctx));
    /* a blow-up: x' = 1e200 x overflows in the second layer */
    for (int i = 0; i < 3; i++) id->params[i * 4] = 1e200;
    id->t = 3.0;
    RB_EXPECT(ctx, RB_EDIVERGED, "step 1 of 4", rb_ode_integrate(ctx, rb_ode_euler, id, 0, 4, 4, &x0, &xT, NULL, NULL));
    assert_true(id->t == 3.0);
    assert_true(untouched(&xT, 7.0));
    /* backward: an empty tape, another F, wrong shapes */
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, 0);
    RB_EXPECT(ctx, RB_EINVAL, "tape", rb_ode_backward(ctx, &tape, F, &x0, &xT, NULL));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, F, 0, 1, 4, &x0, &xT, NULL, &tape));
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_EINVAL, "not the operator", rb_ode_backward(ctx, &tape, id, &x0, &xT, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "shape", rb_ode_backward(ctx, &tape, F, &x4, &xT, NULL));
    RB_EXPECT(ctx, RB_ENULL, "dLdx0", rb_ode_backward(ctx, &tape, F, &x0, NULL, NULL));
    assert_true(untouched(&xT, 7.0));
    rb_ode_tape_release(ctx, &tape);
    rb_op_free(ctx, id);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &x4);
    rb_op_free(ctx, F);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rhs_conform, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_euler_is_residual_stack, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_orders_vs_cvode, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_backprop_vs_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_backprop_vs_cvodes_adjoint, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_checkpointing, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_jacobi_pseudo_time, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_euler_stability, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_gradient_highway, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
