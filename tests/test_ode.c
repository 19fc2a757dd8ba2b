/* test_ode.c — ResNets as discretised ODEs (ode.h), each test naming its oracle:
 *   right-hand sides                  the conformance suite (finite differences, linearity)
 *   their BLAS products, 1-2 threads  the definitions, summed by hand
 *   Euler = ResNet                    a hand-written loop of rb_residual_step (bit-identical)
 *   observed orders                   CVODE BDF and Adams and GSL odeiv2 rk8pd at rtol 1e-12 (linear, neural,
 *                                     Hamiltonian F)
 *   Hamiltonian pair                  its definition written out; P_Y F + P_Z F = F
 *   leapfrog                          det of the one-step Jacobian = 1 (dgeev, dgetrf), M^T J M = J and the
 *                                     modified energy (closed forms); forward Euler's energy (1 + h^2)^k
 *   adaptive steps                    CVODE at rtol 1e-12 (error ~ tol), closed-form step counts for x' = lambda x
 *   backprop gradients                central finite differences of rb_ode_integrate
 *   Euler's gradient as h -> 0        the CVODES continuous adjoint (difference O(h))
 *   checkpointing                     full storage (bit-identical), peak bytes O(sqrt L)
 *   Jacobi = pseudo-time Euler        one damped Jacobi sweep (bit-identical); CVODE steady state = dgesv
 *   stability of the Euler stack      max |1 + h lambda| over dgeev's eigenvalues
 *   gradient highway                  closed forms from the eigenvalues of a symmetric W
 *   bad input                         statuses, messages, outputs untouched (Newton failures too)
 * Every test prints what it measured (cmocka print_message). */
#include "conformance.h"
#include "ode_checks.h"
#include "testkit.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>

/* ---- helpers ------------------------------------------------------------------------------ */

/* Weight sets (W_k (n*n) then b_k (n), the layout of the neural and the Hamiltonian right-hand sides): W
 * entries uniform in [-w, w), b in [-0.5, 0.5). */
static rb_op *fill_sets(rb_op *F, size_t n, size_t sets, double w, uint64_t seed)
{
    rb_test_rng r = {seed};
    for (size_t s = 0; s < sets; s++) {
        double *p = F->params + s * (n * n + n);
        for (size_t k = 0; k < n * n; k++) p[k] = rb_test_uniform(&r, -w, w);
        for (size_t k = 0; k < n; k++) p[n * n + k] = rb_test_uniform(&r, -0.5, 0.5);
    }
    return F;
}

static rb_op *make_neural(rb_context *ctx, size_t n, rb_activation act, size_t sets, double width, double w,
                          uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_neural_create(ctx, n, act, sets, width, NULL, &F));
    return fill_sets(F, n, sets, w, seed);
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

/* The Hamiltonian pair on (y, z) of width m each: K entries uniform in [-w, w), b in [-0.5, 0.5). */
static rb_op *make_hamiltonian(rb_context *ctx, size_t m, rb_activation act, size_t sets, double width, double w,
                               uint64_t seed)
{
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_hamiltonian_create(ctx, m, act, sets, width, NULL, &F));
    return fill_sets(F, m, sets, w, seed);
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

    /* the Hamiltonian pair (3 weight sets) and its two parts, at times in each set */
    rb_op *hm = make_hamiltonian(ctx, 3, RB_ACT_TANH, 3, 0.5, 1.0, 31), *Fy, *Fz;
    RB_CHECK(ctx, rb_op_ode_part(ctx, hm, RB_ODE_PART_Y, &Fy));
    RB_CHECK(ctx, rb_op_ode_part(ctx, hm, RB_ODE_PART_Z, &Fz));
    for (int k = 0; k < 4; k++) {
        hm->t = Fy->t = Fz->t = times[k];
        c = rb_conformance_default(hm, rb_shape_1d(2, 1, 6), "ode_hamiltonian tanh, 3 sets, batch");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(Fy, rb_shape_1d(2, 1, 6), "ode_hamiltonian part y");
        rb_conformance_run(ctx, &c);
        c = rb_conformance_default(Fz, rb_shape_1d(2, 1, 6), "ode_hamiltonian part z");
        rb_conformance_run(ctx, &c);
    }
    {
        /* apply against the definition y' = tanh(K z + b), z' = -tanh(K^T y + b) written out, set 1 at t = 0.7;
         * and P_Y F + P_Z F = F exactly */
        rb_tensor x, f, fy, fz;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_vec(6)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_shape_vec(6)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &fy, rb_shape_vec(6)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &fz, rb_shape_vec(6)));
        rb_test_rng rx = {32};
        rb_test_fill(&rx, &x, -1, 1);
        rb_arena aw = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &aw, rb_op_workspace(hm, x.shape)));
        hm->t = Fy->t = Fz->t = 0.7;
        RB_CHECK(ctx, rb_op_apply(ctx, hm, &x, &f, &aw));
        RB_CHECK(ctx, rb_op_apply(ctx, Fy, &x, &fy, &aw));
        RB_CHECK(ctx, rb_op_apply(ctx, Fz, &x, &fz, &aw));
        const double *K = hm->params + 12, *b = K + 9, *y = x.data, *z = x.data + 3;
        for (int i = 0; i < 3; i++) {
            double a = b[i], cc = b[i];
            for (int j = 0; j < 3; j++) a += K[i * 3 + j] * z[j], cc += K[j * 3 + i] * y[j];
            assert_true(fabs(f.data[i] - tanh(a)) <= 1e-15 && fabs(f.data[3 + i] + tanh(cc)) <= 1e-15);
            assert_true(fy.data[3 + i] == 0 && fz.data[i] == 0);
            assert_true(fy.data[i] == f.data[i] && fz.data[3 + i] == f.data[3 + i]);
        }
        rb_arena_release(ctx, &aw);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &fy), rb_tensor_release(ctx, &fz);
    }
    rb_op_free(ctx, hm);

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

/* ---- the dense products (GEMV/GEMM/GER, split over threads) against their definitions ------------
 * apply: y = tanh(A x + b); vjp: dx += alpha A^T (tanh'(z) dy); param_grad: dW += alpha dz x^T
 * (antisymmetric: A = W - W^T - gamma I, dW += dA - dA^T), db += alpha dz; each row of a batch
 * alike. Odd widths, so that thread blocks are uneven; 1 row (GEMV, GER) and several (GEMM);
 * products of >= 2^20 multiply-adds (129 x 129 x 63 rows, 1025 x 1025 x 1 row) are split
 * over the threads, smaller ones are not. */

static void check_dense_products(rb_context *ctx, rb_op *F, size_t n, int antisym, double gamma, size_t rows)
{
    const size_t nn = n * n, count = rows * n;
    const double alpha = 0.7, *W = F->params, *b = W + nn;
    rb_tensor x, dy, y, dx;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_1d(rows, 1, n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dy, x.shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, x.shape));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &dx, x.shape));
    rb_test_rng r = {31 + rows};
    for (size_t i = 0; i < count; i++) x.data[i] = rb_test_uniform(&r, -1, 1), dy.data[i] = rb_test_uniform(&r, -1, 1);
    double *A = calloc(nn, sizeof *A), *dz = calloc(count, sizeof *dz), *yr = calloc(count, sizeof *yr);
    double *dxr = calloc(count, sizeof *dxr), *dpr = calloc(F->nparams, sizeof *dpr), *dp = calloc(F->nparams, sizeof *dp);
    assert_non_null(A), assert_non_null(dz), assert_non_null(yr), assert_non_null(dxr), assert_non_null(dpr),
        assert_non_null(dp);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) A[i * n + j] = antisym ? W[i * n + j] - W[j * n + i] - (i == j ? gamma : 0) : W[i * n + j];
    for (size_t q = 0; q < rows; q++)
        for (size_t i = 0; i < n; i++) {
            double z = b[i];
            for (size_t j = 0; j < n; j++) z += A[i * n + j] * x.data[q * n + j];
            yr[q * n + i] = tanh(z);
            dz[q * n + i] = alpha * (1 - yr[q * n + i] * yr[q * n + i]) * dy.data[q * n + i];
        }
    for (size_t q = 0; q < rows; q++)
        for (size_t i = 0; i < n; i++) {
            dpr[nn + i] += dz[q * n + i];
            for (size_t j = 0; j < n; j++) {
                dxr[q * n + j] += A[i * n + j] * dz[q * n + i];
                dpr[i * n + j] += dz[q * n + i] * x.data[q * n + j];
                if (antisym) dpr[j * n + i] -= dz[q * n + i] * x.data[q * n + j];
            }
        }
    rb_arena aw = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &aw, rb_op_workspace(F, x.shape)));
    for (int threads = 1; threads <= 2; threads++) {
        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
        rb_tensor_fill(ctx, &dx, 0.0);
        memset(dp, 0, F->nparams * sizeof *dp);
        RB_CHECK(ctx, rb_op_apply(ctx, F, &x, &y, &aw));
        RB_CHECK(ctx, rb_op_vjp(ctx, F, &x, &dy, alpha, &dx, &aw));
        RB_CHECK(ctx, rb_op_param_grad(ctx, F, &x, &dy, alpha, dp, &aw));
        double ey = rb_test_rel_diff(y.data, yr, count), ex = rb_test_rel_diff(dx.data, dxr, count),
               ep = rb_test_rel_diff(dp, dpr, F->nparams);
        print_message("%s, n = %zu, %zu row(s), %d thread(s): rel. diff to the definition: apply %.1e, vjp %.1e, "
                      "param_grad %.1e\n", F->type->name, n, rows, threads, ey, ex, ep);
        assert_true(ey <= 1e-14 && ex <= 1e-14 && ep <= 1e-14);
    }
    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
    rb_arena_release(ctx, &aw);
    free(A), free(dz), free(yr), free(dxr), free(dpr), free(dp);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &dy), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dx);
}

static void test_dense_products(void **state)
{
    rb_context *ctx = *state;
    const size_t cases[][2] = {{37, 1}, {37, 5}, {129, 63}, {1025, 1}}; /* n, rows */
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        size_t n = cases[c][0];
        rb_op *nl = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 2.0 / sqrt((double)n), 21), *as;
        RB_CHECK(ctx, rb_op_ode_antisym_create(ctx, n, RB_ACT_TANH, 0.2, nl->params, &as));
        check_dense_products(ctx, nl, n, 0, 0.0, cases[c][1]);
        check_dense_products(ctx, as, n, 1, 0.2, cases[c][1]);
        rb_op_free(ctx, nl), rb_op_free(ctx, as);
    }
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

static void test_orders_vs_cvode(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    rb_tensor x0;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    rb_test_rng r = {7};
    rb_test_fill(&r, &x0, -1, 1);
    rb_op *lin = make_linear(ctx, n, 1.0, -0.5, 8);
    rb_test_ode_orders(ctx, lin, "linear W x", &x0, 1.0);
    rb_op *nl = make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.5, 9);
    rb_test_ode_orders(ctx, nl, "tanh(W x + b)", &x0, 1.0);
    rb_op *hm = make_hamiltonian(ctx, n / 2, RB_ACT_TANH, 1, 1.0, 1.5, 33);
    rb_test_ode_orders(ctx, hm, "Hamiltonian tanh", &x0, 1.0);
    rb_op_free(ctx, lin), rb_op_free(ctx, nl), rb_op_free(ctx, hm);
    rb_tensor_release(ctx, &x0);
}

/* ---- backprop against finite differences ---------------------------------------------------- */

static void test_backprop_vs_fd(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 3, L = 10;
    rb_shape s = rb_shape_1d(2, 1, n); /* a batch of two states */
    rb_tensor x0, c;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c, s));
    rb_test_rng r = {11};
    rb_test_fill(&r, &x0, -1, 1);
    rb_test_fill(&r, &c, -1, 1);
    /* neural with two weight sets switching at t = 0.5, the antisymmetric net, the Hamiltonian pair
     * (m = 2 on a state of width 4, two weight sets) */
    rb_op *F = make_neural(ctx, n, RB_ACT_TANH, 2, 0.5, 1.2, 12);
    rb_test_ode_backprop_vs_fd(ctx, F, "neural 2set", &x0, &c, L, 1e-5);
    rb_op_free(ctx, F);
    RB_CHECK(ctx, rb_op_ode_antisym_create(ctx, n, RB_ACT_TANH, 0.2, NULL, &F));
    for (size_t k = 0; k < F->nparams; k++) F->params[k] = rb_test_uniform(&r, -1, 1);
    rb_test_ode_backprop_vs_fd(ctx, F, "antisym", &x0, &c, L, 1e-5);
    rb_op_free(ctx, F);
    rb_tensor x4, c4; /* the Hamiltonian state is 2 x 4 wide */
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x4, rb_shape_1d(2, 1, 4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &c4, rb_shape_1d(2, 1, 4)));
    rb_test_fill(&r, &x4, -1, 1);
    rb_test_fill(&r, &c4, -1, 1);
    F = make_hamiltonian(ctx, 2, RB_ACT_TANH, 2, 0.5, 1.2, 34);
    rb_test_ode_backprop_vs_fd(ctx, F, "hamilt 2set", &x4, &c4, L, 1e-5);
    rb_op_free(ctx, F);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &c), rb_tensor_release(ctx, &x4), rb_tensor_release(ctx, &c4);
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
            d[k] = fmax(rb_test_rel_diff(dx0.data, ref.data, n), rb_test_rel_diff(dth, ref_th, np));
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
    rb_op *H = make_hamiltonian(ctx, n / 2, RB_ACT_TANH, 1, 1.0, 1.0, 35), *F0 = F;
    for (size_t m = 0; methods()[m] != NULL; m++) {
        const rb_ode_method *M = methods()[m];
        F = rb_test_ode_applicable(M, F0) ? F0 : H; /* leapfrog: the Hamiltonian pair */
        np = F->nparams;
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
    rb_op_free(ctx, F0), rb_op_free(ctx, H);
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
    double err = rb_test_rel_diff(steady.data, u, n);
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
    assert_true(rb_test_untouched(&xT, 7.0));
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
    assert_true(rb_test_untouched(&xT, 7.0));
    /* backward: an empty tape, another F, wrong shapes */
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, 0);
    RB_EXPECT(ctx, RB_EINVAL, "tape", rb_ode_backward(ctx, &tape, F, &x0, &xT, NULL));
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_rk4, F, 0, 1, 4, &x0, &xT, NULL, &tape));
    rb_tensor_fill(ctx, &xT, 7.0);
    RB_EXPECT(ctx, RB_EINVAL, "not the operator", rb_ode_backward(ctx, &tape, id, &x0, &xT, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "shape", rb_ode_backward(ctx, &tape, F, &x4, &xT, NULL));
    RB_EXPECT(ctx, RB_ENULL, "dLdx0", rb_ode_backward(ctx, &tape, F, &x0, NULL, NULL));
    assert_true(rb_test_untouched(&xT, 7.0));
    rb_ode_tape_release(ctx, &tape);
    rb_op_free(ctx, id);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &x4);
    rb_op_free(ctx, F);
}

/* ---- leapfrog: volume preservation, symplecticity, energy (closed forms and LAPACK) ------------ */

/* det of a row-major n x n matrix two ways: dgetrf (product of U's diagonal, pivot signs) and dgeev
 * (product of the eigenvalues; the imaginary part of the product must vanish). */
static void determinants(rb_context *ctx, const double *M, size_t n, double *det_lu, double *det_eig)
{
    double *A = test_malloc(n * n * sizeof *A), *wr = test_malloc(n * sizeof *wr), *wi = test_malloc(n * sizeof *wi);
    lapack_int *piv = test_malloc(n * sizeof *piv);
    memcpy(A, M, n * n * sizeof *A);
    assert_int_equal(LAPACKE_dgetrf(LAPACK_ROW_MAJOR, (lapack_int)n, (lapack_int)n, A, (lapack_int)n, piv), 0);
    double d = 1;
    for (size_t i = 0; i < n; i++) d *= A[i * n + i] * (piv[i] != (lapack_int)(i + 1) ? -1 : 1);
    *det_lu = d;
    RB_CHECK(ctx, rb_ref_eig_general(ctx, M, n, wr, wi));
    double re = 1, im = 0;
    for (size_t i = 0; i < n; i++) {
        double r2 = re * wr[i] - im * wi[i];
        im = re * wi[i] + im * wr[i], re = r2;
    }
    assert_true(fabs(im) <= 1e-12 * fabs(re));
    *det_eig = re;
    test_free(A), test_free(wr), test_free(wi), test_free(piv);
}

/* The one-step map's matrix of a linear F, column j = step(e_j) (row-major 2m x 2m). */
static void step_matrix(rb_context *ctx, const rb_ode_method *M, rb_op *F, size_t n, double h, double *out)
{
    rb_tensor e, col;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &col, rb_shape_vec(n)));
    for (size_t j = 0; j < n; j++) {
        rb_tensor_fill(ctx, &e, 0.0);
        e.data[j] = 1.0;
        RB_CHECK(ctx, rb_ode_integrate(ctx, M, F, 0.0, h, 1, &e, &col, NULL, NULL));
        for (size_t i = 0; i < n; i++) out[i * n + j] = col.data[i];
    }
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &col);
}

static void test_leapfrog_volume_and_symplectic(void **state)
{
    rb_context *ctx = *state;
    const size_t m = 3, n = 2 * m;
    const double h = 0.3;
    double Ml[36], Me[36], dl, dle, de, dee;
    /* linear pair (sigma = id, b = 0): y' = K z, z' = -K^T y with a random K */
    rb_op *F = make_hamiltonian(ctx, m, RB_ACT_IDENTITY, 1, 1.0, 1.0, 41);
    for (size_t k = 0; k < m; k++) F->params[m * m + k] = 0.0;
    step_matrix(ctx, rb_ode_leapfrog, F, n, h, Ml);
    step_matrix(ctx, rb_ode_euler, F, n, h, Me);
    determinants(ctx, Ml, n, &dl, &dle);
    determinants(ctx, Me, n, &de, &dee);
    /* Euler: det(I + h A), A = [[0, K], [-K^T, 0]] has eigenvalues +-i s_k (s_k^2 eigenvalues of K^T K, dsyev) */
    double KtK[9], w[3], want_e = 1;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) {
            KtK[i * m + j] = 0;
            for (size_t k = 0; k < m; k++) KtK[i * m + j] += F->params[k * m + i] * F->params[k * m + j];
        }
    RB_CHECK(ctx, rb_ref_eig_sym(ctx, KtK, m, w));
    for (size_t k = 0; k < m; k++) want_e *= 1 + h * h * w[k];
    print_message("one-step map, linear pair m = 3, h = 0.3: leapfrog det = %.15f (dgetrf) %.15f (dgeev); Euler det = "
                  "%.12f (dgetrf) vs prod(1 + h^2 s_k^2) = %.12f\n", dl, dle, de, want_e);
    assert_true(fabs(dl - 1) <= 1e-13 && fabs(dle - 1) <= 1e-12);
    assert_true(fabs(de - want_e) <= 1e-12 * want_e && fabs(dee - want_e) <= 1e-11 * want_e && want_e > 1.1);
    /* symmetric K: the pair is Hamiltonian (H = (y^T K y + z^T K z)/2) and leapfrog is symplectic: M^T J M = J */
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < i; j++) F->params[i * m + j] = F->params[j * m + i];
    step_matrix(ctx, rb_ode_leapfrog, F, n, h, Ml);
    step_matrix(ctx, rb_ode_euler, F, n, h, Me);
    double dev_l = 0, dev_e = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double J = i + m == j ? 1 : j + m == i ? -1 : 0, sl = 0, se = 0; /* (M^T J M)_ij */
            for (size_t k = 0; k < m; k++)
                sl += Ml[k * n + i] * Ml[(k + m) * n + j] - Ml[(k + m) * n + i] * Ml[k * n + j],
                se += Me[k * n + i] * Me[(k + m) * n + j] - Me[(k + m) * n + i] * Me[k * n + j];
            dev_l = fmax(dev_l, fabs(sl - J)), dev_e = fmax(dev_e, fabs(se - J));
        }
    print_message("symmetric K: max |M^T J M - J| leapfrog %.1e (<= 1e-13), Euler %.2e\n", dev_l, dev_e);
    assert_true(dev_l <= 1e-13 && dev_e > 1e-2);
    rb_op_free(ctx, F);

    /* nonlinear pair (tanh, b != 0, two weight sets): the Jacobian of one step, row by row from the discrete
     * adjoint, has determinant 1 (each half-update is a shear) */
    F = make_hamiltonian(ctx, m, RB_ACT_TANH, 2, 0.15, 1.5, 42);
    rb_tensor x0, xT, e, g;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &g, rb_shape_vec(n)));
    rb_test_rng r = {43};
    rb_test_fill(&r, &x0, -1, 1);
    rb_ode_tape tape;
    rb_ode_tape_init(&tape, 1);
    RB_CHECK(ctx, rb_ode_integrate(ctx, rb_ode_leapfrog, F, 0.0, h, 1, &x0, &xT, NULL, &tape));
    for (size_t i = 0; i < n; i++) {
        rb_tensor_fill(ctx, &e, 0.0), rb_tensor_fill(ctx, &g, 0.0);
        e.data[i] = 1.0;
        RB_CHECK(ctx, rb_ode_backward(ctx, &tape, F, &e, &g, NULL));
        memcpy(Ml + i * n, g.data, n * sizeof(double));
    }
    rb_ode_tape_release(ctx, &tape);
    determinants(ctx, Ml, n, &dl, &dle);
    print_message("tanh pair, one leapfrog step (h = 0.3, crossing a weight switch): det of the Jacobian %.15f (dgetrf) "
                  "%.15f (dgeev)\n", dl, dle);
    assert_true(fabs(dl - 1) <= 1e-13 && fabs(dle - 1) <= 1e-12);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &g);
    rb_op_free(ctx, F);
}

static void test_leapfrog_energy(void **state)
{
    rb_context *ctx = *state;
    /* harmonic oscillator y' = z, z' = -y (K = 1, sigma = id, b = 0), h = 0.1, 10^4 steps.
     * Leapfrog's matrix is [[c, h], [-h a, c]] with c = 1 - h^2/2, a = 1 - h^2/4: it keeps the modified energy
     * H~ = (a y^2 + z^2)/2 exactly, so H = (y^2 + z^2)/2 stays in [H~, H~/a]; M^k = cos(k th) I + sin(k th)/sin(th)
     * (M - c I) with cos th = c, sin th = h sqrt(a). Forward Euler's matrix [[1, h], [-h, 1]] multiplies H by
     * 1 + h^2 per step. */
    const double h = 0.1, a = 1 - h * h / 4, c = 1 - h * h / 2, th = atan2(h * sqrt(a), c);
    const long steps = 10000;
    double K[2] = {1.0, 0.0};
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_hamiltonian_create(ctx, 1, RB_ACT_IDENTITY, 1, 1.0, K, &F));
    rb_tensor xl, xe, yl, ye;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xl, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xe, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yl, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ye, rb_shape_vec(2)));
    const double y0 = 0.8, z0 = -0.3, H0 = (y0 * y0 + z0 * z0) / 2, Ht0 = (a * y0 * y0 + z0 * z0) / 2;
    xl.data[0] = xe.data[0] = y0, xl.data[1] = xe.data[1] = z0;
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_ode_step_workspace(rb_ode_leapfrog, F, xl.shape) +
                                              rb_ode_step_workspace(rb_ode_euler, F, xl.shape)));
    double drift = 0, Hmin = INFINITY, Hmax = 0, euler_dev = 0;
    for (long k = 1; k <= steps; k++) {
        RB_CHECK(ctx, rb_ode_leapfrog->step(ctx, F, (double)(k - 1) * h, h, &xl, &yl, NULL, &work));
        RB_CHECK(ctx, rb_ode_euler->step(ctx, F, (double)(k - 1) * h, h, &xe, &ye, NULL, &work));
        RB_CHECK(ctx, rb_tensor_copy(ctx, &yl, &xl));
        RB_CHECK(ctx, rb_tensor_copy(ctx, &ye, &xe));
        double y = xl.data[0], z = xl.data[1], H = (y * y + z * z) / 2, Ht = (a * y * y + z * z) / 2;
        drift = fmax(drift, fabs(Ht - Ht0) / Ht0);
        Hmin = fmin(Hmin, H), Hmax = fmax(Hmax, H);
        double He = (xe.data[0] * xe.data[0] + xe.data[1] * xe.data[1]) / 2;
        euler_dev = fmax(euler_dev, fabs(He / (H0 * pow(1 + h * h, (double)k)) - 1));
    }
    double ck = cos((double)steps * th), sk = sin((double)steps * th) / (h * sqrt(a));
    double yk = ck * y0 + sk * h * z0, zk = ck * z0 - sk * h * a * y0;
    double He = (xe.data[0] * xe.data[0] + xe.data[1] * xe.data[1]) / 2;
    print_message("harmonic oscillator, h = 0.1, 10^4 steps: leapfrog modified energy drift %.1e (<= 1e-11), H in "
                  "[%.6f, %.6f] (closed form [H~, H~/a] = [%.6f, %.6f]), final state vs closed form %.1e; Euler H/H0 = "
                  "%.4e vs (1 + h^2)^k = %.4e (max rel dev %.1e)\n", drift, Hmin, Hmax, Ht0, Ht0 / a,
                  hypot(xl.data[0] - yk, xl.data[1] - zk), He / H0, pow(1 + h * h, (double)steps), euler_dev);
    assert_true(drift <= 1e-11);
    assert_true(Hmin >= Ht0 * (1 - 1e-11) && Hmax <= Ht0 / a * (1 + 1e-11));
    assert_true(Hmax - Hmin >= 0.9 * (Ht0 / a - Ht0) * 0.5); /* it does oscillate inside the band */
    assert_true(hypot(xl.data[0] - yk, xl.data[1] - zk) <= 1e-9);
    assert_true(euler_dev <= 1e-9 && He / H0 > 1e40);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &xl), rb_tensor_release(ctx, &xe), rb_tensor_release(ctx, &yl), rb_tensor_release(ctx, &ye);
    rb_op_free(ctx, F);
}

static void test_leapfrog_refuses(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = make_neural(ctx, 4, RB_ACT_TANH, 1, 1.0, 1.0, 44), *P;
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(4)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(4)));
    rb_tensor_fill(ctx, &x0, 0.5), rb_tensor_fill(ctx, &xT, 7.0);
    const rb_ode_method *M;
    RB_CHECK(ctx, rb_ode_method_parse(ctx, "leapfrog", &M));
    assert_ptr_equal(M, rb_ode_leapfrog);
    assert_true(M->partitioned && !M->implicit && M->order == 2);
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "leapfrog needs a partitioned right-hand side",
              rb_ode_integrate(ctx, rb_ode_leapfrog, F, 0, 1, 4, &x0, &xT, NULL, NULL));
    print_message("leapfrog on tanh(W x + b): \"%s\"\n", rb_context_message(ctx));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "ode_neural", rb_ode_integrate(ctx, rb_ode_leapfrog, F, 0, 1, 4, &x0, &xT, NULL, NULL));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "not a partitioned", rb_op_ode_part(ctx, F, RB_ODE_PART_Y, &P));
    /* the step itself refuses too (a caller going around rb_ode_integrate) */
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_ode_step_workspace(rb_ode_leapfrog, F, x0.shape)));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "not a partitioned", rb_ode_leapfrog->step(ctx, F, 0, 0.1, &x0, &xT, NULL, &work));
    rb_arena_release(ctx, &work);
    assert_true(rb_test_untouched(&xT, 7.0));
    assert_false(rb_op_ode_is_partitioned(F) || rb_op_ode_is_partitioned(NULL));
    /* the pair's constructor and part selector */
    rb_op *G, *H = make_hamiltonian(ctx, 2, RB_ACT_TANH, 1, 1.0, 1.0, 45);
    assert_true(rb_op_ode_is_partitioned(H));
    RB_EXPECT(ctx, RB_EINVAL, "m = 0", rb_op_ode_hamiltonian_create(ctx, 0, RB_ACT_TANH, 1, 1.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "sets", rb_op_ode_hamiltonian_create(ctx, 2, RB_ACT_TANH, 0, 1.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "set_width", rb_op_ode_hamiltonian_create(ctx, 2, RB_ACT_TANH, 2, -1.0, NULL, &G));
    RB_EXPECT(ctx, RB_EINVAL, "sigma", rb_op_ode_hamiltonian_create(ctx, 2, (rb_activation)7, 1, 1.0, NULL, &G));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_ode_hamiltonian_create(ctx, 2, RB_ACT_TANH, 1, 1.0, NULL, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "part = 5", rb_op_ode_part(ctx, H, (rb_ode_part)5, &P));
    RB_EXPECT(ctx, RB_ENULL, "Fp", rb_op_ode_part(ctx, H, RB_ODE_PART_Y, NULL));
    rb_tensor x3;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x3, rb_shape_vec(3)));
    RB_EXPECT(ctx, RB_ESHAPE, "needs (N,1,1,1,4)", rb_ode_integrate(ctx, rb_ode_leapfrog, H, 0, 1, 4, &x3, &x3, NULL, NULL));
    rb_tensor_release(ctx, &x3), rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F), rb_op_free(ctx, H);
}

/* ---- adaptive steps: error ~ tol against CVODE, closed-form step counts ---------------------- */

static void test_adaptive_vs_cvode(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 4;
    rb_tensor x0, ref, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, rb_shape_vec(n)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(n)));
    rb_test_rng r = {51};
    rb_test_fill(&r, &x0, -1, 1);
    rb_op *Fs[3] = {make_linear(ctx, n, 1.0, -0.5, 8), make_neural(ctx, n, RB_ACT_TANH, 1, 1.0, 1.5, 9),
                    make_hamiltonian(ctx, n / 2, RB_ACT_TANH, 1, 1.0, 1.5, 33)};
    const char *label[3] = {"linear W x", "tanh(W x + b)", "Hamiltonian"};
    for (int f = 0; f < 3; f++) {
        RB_CHECK(ctx, rb_ref_cvode(ctx, Fs[f], 0.0, 1.0, &x0, &ref, RB_REF_CVODE_BDF, 1e-12, 1e-14, 0, NULL));
        for (size_t m = 0; methods()[m] != NULL; m++) {
            const rb_ode_method *M = methods()[m];
            if (M->implicit || !rb_test_ode_applicable(M, Fs[f])) continue;
            /* tolerances: four decades each, within reach of the method's step counts and CVODE's 1e-12 */
            double tol0 = M->order == 1 ? 1e-2 : M->order == 2 ? 1e-4 : 1e-6, ratio[4], err[4];
            rb_ode_adaptive_stats st[4];
            for (int k = 0; k < 4; k++) {
                double tol = tol0 * pow(10.0, -k);
                RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, M, Fs[f], 0.0, 1.0, &x0, &xT, tol, tol, 1e-3, 10000000, &st[k]));
                err[k] = 0; /* in the controller's own weights: |x - x_ref| / (atol + rtol |x_ref|) */
                for (size_t i = 0; i < n; i++) err[k] = fmax(err[k], fabs(xT.data[i] - ref.data[i]) / (tol * (1 + fabs(ref.data[i]))));
                ratio[k] = err[k];
            }
            double slope = log10(ratio[0] * tol0 / (ratio[3] * tol0 * 1e-3)) / 3; /* d log(error) / d log(tol) */
            print_message("%-14s %-8s adaptive vs CVODE: error/tol at tol %.0e..%.0e = %.2f %.2f %.2f %.2f, slope %.3f "
                          "(1 +- 0.15), steps %ld..%ld, rejected %ld..%ld\n", label[f], M->name, tol0, tol0 * 1e-3,
                          ratio[0], ratio[1], ratio[2], ratio[3], slope, st[0].steps, st[3].steps, st[0].rejected,
                          st[3].rejected);
            for (int k = 0; k < 4; k++)
                if (!(ratio[k] <= 5 && ratio[k] >= 0.1)) fail_msg("%s %s: error/tol %.3g at k = %d", label[f], M->name, ratio[k], k);
            if (!(fabs(slope - 1) <= 0.15)) fail_msg("%s %s: tolerance slope %.3f", label[f], M->name, slope);
            for (int k = 1; k < 4; k++) assert_true(err[k] * tol0 * pow(10.0, -k) < err[k - 1] * tol0 * pow(10.0, 1 - k));
        }
    }
    for (int f = 0; f < 3; f++) rb_op_free(ctx, Fs[f]);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &ref), rb_tensor_release(ctx, &xT);
}

static void test_adaptive_step_count(void **state)
{
    rb_context *ctx = *state;
    /* x' = lambda x, Euler with its Heun estimate, atol = 0: e = h^2 lambda^2 x / 2 and |y| < |x|, so
     * err = |h| lambda^2 T / (2 rtol) and h is accepted iff |h| <= h_ok = 2 rtol / (lambda^2 T). The controller
     * (exponent 1) moves to h* = 0.9 h_ok and stays: from h0 < h*, steps of h0, 5 h0, 25 h0, ... below h*, then
     * h* up to T (the last shortened). From h0 = 10 h*: err = 9, rejected (h *= 0.2); err = 1.8, rejected
     * (h *= 0.9 / 1.8); then h* throughout: exactly 2 rejections. */
    const double lambda = -1.0, T = 1.0, rtol = 1e-3, hok = 2 * rtol / (lambda * lambda * T), hs = 0.9 * hok;
    double W = lambda;
    rb_op *F;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, 1, &W, &F));
    rb_tensor x0, xT;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(1)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(1)));
    x0.data[0] = 1.0;
    const double h0s[2] = {1e-5, 10 * hs};
    for (int k = 0; k < 2; k++) {
        rb_ode_adaptive_stats st;
        RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, rb_ode_euler, F, 0.0, T, &x0, &xT, rtol, 0.0, h0s[k], 100000, &st));
        long growth = 0;
        double covered = 0, hg = h0s[k];
        if (k == 0)
            for (; hg < hs; hg *= 5) covered += hg, growth++;
        long want = growth + (long)ceil((T - covered) / hs - 1e-9), want_rej = k == 0 ? 0 : 2;
        print_message("x' = -x, Euler adaptive, rtol 1e-3, h0 = %.1e: %ld steps (closed form %ld), %ld rejected (%ld), "
                      "h = %.6e (h* = 0.9 * 2 rtol / (lambda^2 T) = %.6e); x(1) = %.6f vs e^-1 = %.6f\n", h0s[k], st.steps,
                      want, st.rejected, want_rej, st.h_last, hs, xT.data[0], exp(-1.0));
        assert_true(labs(st.steps - want) <= 1 && st.rejected == want_rej);
        assert_true(fabs(st.h_last - hs) <= 1e-9 * hs && fabs(st.h_max - hs) <= 1e-9 * hs);
        /* Euler's global error with constant h: e^-1 - (1 - h)^(T/h) ~ T h e^-1 / 2 = 0.184 h */
        double gerr = (exp(-1.0) - xT.data[0]) / hs;
        assert_true(gerr >= 0.17 && gerr <= 0.2);
    }
    /* halving rtol doubles the steps (h* proportional to rtol) */
    rb_ode_adaptive_stats a, b;
    RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, rb_ode_euler, F, 0.0, T, &x0, &xT, 1e-4, 0.0, hs, 100000, &a));
    RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, rb_ode_euler, F, 0.0, T, &x0, &xT, 5e-5, 0.0, hs, 100000, &b));
    print_message("rtol 1e-4: %ld steps, 5e-5: %ld steps (ratio %.3f, closed form 2)\n", a.steps, b.steps,
                  (double)b.steps / (double)a.steps);
    assert_true(fabs((double)b.steps / (double)a.steps - 2) <= 0.01);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT);
    rb_op_free(ctx, F);
}

static void test_adaptive_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *F = make_neural(ctx, 3, RB_ACT_TANH, 1, 1.0, 1.0, 52);
    rb_tensor x0, xT, back;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x0, rb_shape_vec(3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &xT, rb_shape_vec(3)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &back, rb_shape_vec(3)));
    rb_tensor_fill(ctx, &x0, 0.5), rb_tensor_fill(ctx, &xT, 7.0);
    const rb_ode_method *R = rb_ode_rk4;
    assert_int_equal(rb_ode_integrate_adaptive(NULL, R, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL), RB_ENULL);
    RB_EXPECT(ctx, RB_ENULL, "method", rb_ode_integrate_adaptive(ctx, NULL, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "implicit",
              rb_ode_integrate_adaptive(ctx, rb_ode_beuler, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "partitioned",
              rb_ode_integrate_adaptive(ctx, rb_ode_leapfrog, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "rtol", rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 0.0, 1e-8, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "atol", rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 1e-6, -1.0, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "h0", rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.0, 100, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "max_steps", rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 0, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "finite", rb_ode_integrate_adaptive(ctx, R, F, 0, NAN, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL));
    RB_EXPECT(ctx, RB_EMAXITER, "took 5 tries",
              rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 1e-10, 1e-12, 0.01, 5, NULL));
    print_message("max_steps 5: \"%s\"\n", rb_context_message(ctx));
    double big[9] = {1e200, 0, 0, 0, 1e200, 0, 0, 0, 1e200};
    rb_op *B;
    RB_CHECK(ctx, rb_op_ode_linear_create(ctx, 3, big, &B));
    B->t = 2.5;
    RB_EXPECT(ctx, RB_EDIVERGED, "non-finite", rb_ode_integrate_adaptive(ctx, R, B, 0, 1, &x0, &xT, 1e-6, 1e-8, 0.01, 100, NULL));
    print_message("x' = 1e200 x: \"%s\"\n", rb_context_message(ctx));
    assert_true(B->t == 2.5);
    assert_true(rb_test_untouched(&xT, 7.0));
    rb_op_free(ctx, B);
    /* T == t0 copies; T < t0 integrates backwards: there and back again within the tolerance */
    RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, R, F, 1, 1, &x0, &xT, 1e-6, 1e-8, 0.1, 100, NULL));
    assert_true(rb_test_untouched(&xT, 0.5));
    RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, R, F, 0, 1, &x0, &xT, 1e-9, 1e-9, 0.1, 100000, NULL));
    RB_CHECK(ctx, rb_ode_integrate_adaptive(ctx, R, F, 1, 0, &xT, &back, 1e-9, 1e-9, 0.1, 100000, NULL));
    double d = rb_tensor_max_rel_diff(&back, &x0);
    print_message("rk4 adaptive 0 -> 1 -> 0 at tol 1e-9: back to x0 within %.1e\n", d);
    assert_true(d <= 1e-8 && d > 0);
    rb_tensor_release(ctx, &x0), rb_tensor_release(ctx, &xT), rb_tensor_release(ctx, &back);
    rb_op_free(ctx, F);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rhs_conform, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_dense_products, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_euler_is_residual_stack, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_orders_vs_cvode, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_backprop_vs_fd, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_backprop_vs_cvodes_adjoint, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_checkpointing, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_jacobi_pseudo_time, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_euler_stability, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_gradient_highway, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_leapfrog_volume_and_symplectic, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_leapfrog_energy, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_leapfrog_refuses, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_adaptive_vs_cvode, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_adaptive_step_count, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_adaptive_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
