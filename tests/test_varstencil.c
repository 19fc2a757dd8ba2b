/* test_varstencil.c — point-dependent stencils: conformance (finite
 * differences, adjoint identity), equality with the conv stencil when the
 * weights are constant, Galerkin probing against the operator product it
 * probes, the definition's plain loops (A x and A^T x on rows the vectorised interior
 * takes), and the Jacobi operator over a varstencil. */
#include "conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++)
        for (int pat = 0; pat < RB_STENCIL_COUNT; pat++) {
            size_t n = dims == 3 ? 4 : 6;
            rb_shape grid = {1, 1, dims == 3 ? n : 1, dims >= 2 ? n + 1 : 1, n};
            rb_op *S;
            RB_CHECK(ctx, rb_op_varstencil_create(ctx, dims, (rb_stencil)pat, grid, NULL, &S));
            rb_test_rng r = {(uint64_t)(dims * 3 + pat)};
            for (size_t i = 0; i < S->nparams; i++) S->params[i] = rb_test_uniform(&r, -1, 1);
            rb_shape in = grid;
            in.n = 2;
            char label[64];
            snprintf(label, sizeof label, "varstencil %dD %s", dims, pat ? "star" : "full");
            rb_conformance_case c = rb_conformance_default(S, in, label);
            rb_conformance_run(ctx, &c);
            rb_op_free(ctx, S);
        }
}

/* Oracle: the conv op. Constant weights give the same operator. */
static void test_equals_conv_when_constant(void **state)
{
    rb_context *ctx = *state;
    rb_shape grid = rb_shape_2d(1, 1, 9, 8);
    double w[9] = {0.1, -1, 0.2, -1.5, 4.5, -0.7, 0.3, -1.1, 0.05};
    rb_op *C, *S;
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_FULL, w, &C));
    RB_CHECK(ctx, rb_op_varstencil_create(ctx, 2, RB_STENCIL_FULL, grid, NULL, &S));
    size_t pts = rb_shape_count(grid);
    for (int t = 0; t < 9; t++)
        for (size_t p = 0; p < pts; p++) S->params[(size_t)t * pts + p] = w[t];
    rb_tensor x, y1, y2;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, grid));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y1, grid));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y2, grid));
    rb_test_rng r = {5};
    rb_test_fill(&r, &x, -1, 1);
    RB_CHECK(ctx, rb_op_apply(ctx, C, &x, &y1, NULL));
    RB_CHECK(ctx, rb_op_apply(ctx, S, &x, &y2, NULL));
    assert_true(rb_tensor_max_rel_diff(&y2, &y1) <= 1e-15);
    /* the Jacobi operators over both agree too (point-dependent vs scalar diagonal) */
    rb_op *J1, *J2;
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, C, &x, &J1));
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, S, &x, &J2));
    RB_CHECK(ctx, rb_op_apply(ctx, J1, &y1, &y2, NULL));
    rb_tensor y3;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y3, grid));
    RB_CHECK(ctx, rb_op_apply(ctx, J2, &y1, &y3, NULL));
    assert_true(rb_tensor_max_rel_diff(&y3, &y2) <= 1e-15);
    rb_conformance_case c = rb_conformance_default(J2, grid, "jacobi over varstencil");
    rb_conformance_run(ctx, &c);
    rb_op_free(ctx, J1), rb_op_free(ctx, J2), rb_op_free(ctx, C), rb_op_free(ctx, S);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y1), rb_tensor_release(ctx, &y2), rb_tensor_release(ctx, &y3);
}

/* Oracle: the definition, y[p] = sum_t W[t][p] x[p + tap_t] over the taps inside the
 * grid, and its transpose, as plain loops here. Rows wide enough for the vectorised
 * interior (8 points at a time plus a tail), batches, 1 and 2 threads. */
static void reference(int dims, rb_stencil pat, rb_shape g, size_t batch, const double *W, const double *x, bool adjoint,
                      double *y)
{
    size_t pts = rb_shape_count(g), t = 0;
    memset(y, 0, batch * pts * sizeof(double));
    int rz = dims == 3, ry = dims >= 2;
    for (int dz = -rz; dz <= rz; dz++)
        for (int dy = -ry; dy <= ry; dy++)
            for (int dx = -1; dx <= 1; dx++, t++) {
                if (pat == RB_STENCIL_STAR && abs(dz) + abs(dy) + abs(dx) > 1) {
                    t--;
                    continue;
                }
                for (size_t n = 0; n < batch; n++)
                    for (size_t z = 0; z < g.d; z++)
                        for (size_t yy = 0; yy < g.h; yy++)
                            for (size_t xx = 0; xx < g.w; xx++) {
                                long long qz = (long long)z + dz, qy = (long long)yy + dy, qx = (long long)xx + dx;
                                if (qz < 0 || qy < 0 || qx < 0 || qz >= (long long)g.d || qy >= (long long)g.h ||
                                    qx >= (long long)g.w)
                                    continue;
                                size_t p = (z * g.h + yy) * g.w + xx, q = ((size_t)qz * g.h + (size_t)qy) * g.w + (size_t)qx;
                                if (adjoint) y[n * pts + q] += W[t * pts + p] * x[n * pts + p];
                                else y[n * pts + p] += W[t * pts + p] * x[n * pts + q];
                            }
            }
}

static void test_gather_vs_definition(void **state)
{
    rb_context *ctx = *state;
    static const size_t sizes[3][3] = {{1, 1, 37}, {1, 9, 21}, {5, 7, 19}};
    for (int dims = 1; dims <= 3; dims++)
        for (int pat = 0; pat < RB_STENCIL_COUNT; pat++)
            for (int threads = 1; threads <= 2; threads++) {
                RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
                rb_shape grid = {1, 1, sizes[dims - 1][0], sizes[dims - 1][1], sizes[dims - 1][2]};
                rb_op *S;
                RB_CHECK(ctx, rb_op_varstencil_create(ctx, dims, (rb_stencil)pat, grid, NULL, &S));
                rb_test_rng r = {(uint64_t)(100 + dims * 3 + pat)};
                for (size_t i = 0; i < S->nparams; i++) S->params[i] = rb_test_uniform(&r, -1, 1);
                rb_shape in = grid;
                in.n = 2;
                rb_tensor x, y, ref;
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, in));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, in));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, in));
                rb_test_fill(&r, &x, -1, 1);
                RB_CHECK(ctx, rb_op_apply(ctx, S, &x, &y, NULL));
                reference(dims, (rb_stencil)pat, grid, 2, S->params, x.data, false, ref.data);
                double e1 = rb_tensor_max_rel_diff(&y, &ref);
                /* the vjp accumulates: dx = 0.5 + 1.5 A^T x */
                for (size_t i = 0; i < rb_tensor_count(&y); i++) y.data[i] = 0.5;
                RB_CHECK(ctx, rb_op_vjp(ctx, S, &x, &x, 1.5, &y, NULL));
                reference(dims, (rb_stencil)pat, grid, 2, S->params, x.data, true, ref.data);
                for (size_t i = 0; i < rb_tensor_count(&ref); i++) ref.data[i] = 0.5 + 1.5 * ref.data[i];
                double e2 = rb_tensor_max_rel_diff(&y, &ref);
                if (!(e1 <= 1e-14 && e2 <= 1e-14))
                    fail_msg("%dD %s, %d threads: A x %.3g, A^T x %.3g from the definition", dims, pat ? "star" : "full",
                             threads, e1, e2);
                rb_op_free(ctx, S);
                rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &ref);
            }
}

/* Oracle: the product it probes. The Galerkin operator R A P, probed into a
 * 3^d stencil, acts on random vectors exactly as P, then A, then R. */
static void test_probe_galerkin(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++) {
        size_t k = 15, n = 2 * k + 1; /* coarse points inside (8 and 4 at a time) and on the faces */
        rb_shape fine = {1, 1, dims == 3 ? n : 1, dims >= 2 ? n : 1, n};
        rb_shape coarse = {1, 1, dims == 3 ? k : 1, dims >= 2 ? k : 1, k};
        /* a variable fine operator: random positive star weights */
        rb_op *A, *R, *P, *G;
        RB_CHECK(ctx, rb_op_varstencil_create(ctx, dims, RB_STENCIL_STAR, fine, NULL, &A));
        rb_test_rng r = {11};
        for (size_t i = 0; i < A->nparams; i++) A->params[i] = rb_test_uniform(&r, -1, 1);
        rb_conv_desc d = rb_conv_desc_default(dims, 1, 1);
        d.stride = 2;
        double w[27];
        for (int i = 0; i < 27; i++) w[i] = rb_test_uniform(&r, 0, 1);
        RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &R));
        d.transposed = true;
        RB_CHECK(ctx, rb_op_conv_create(ctx, &d, w, &P));
        rb_op *parts[3] = {P, A, R};
        rb_op *RAP;
        RB_CHECK(ctx, rb_op_chain_create(ctx, parts, 3, &RAP));
        RB_CHECK(ctx, rb_op_varstencil_probe(ctx, RAP, dims, coarse, &G));
        /* R, A, P referenced instead of chained: the product from their weights (the sum of
         * R_r A_s P_p per coarse point and tap), equal to the chain's probe to rounding; and
         * the probes of the referenced operators when the direct product does not apply (an
         * operator that is not a conv: the chain of R alone), bit for bit */
        rb_op *G2;
        RB_CHECK(ctx, rb_op_varstencil_galerkin(ctx, R, A, P, dims, coarse, &G2));
        assert_int_equal(G2->nparams, G->nparams);
        double gmax = 0.0, dmax = 0.0;
        size_t pattern = 0; /* entries zero in one and not the other (taps leaving the grid are 0) */
        for (size_t i = 0; i < G->nparams; i++) {
            gmax = fmax(gmax, fabs(G->params[i]));
            dmax = fmax(dmax, fabs(G2->params[i] - G->params[i]));
            pattern += (G2->params[i] == 0.0) != (G->params[i] == 0.0);
        }
        if (!(gmax > 0) || !(dmax <= 1e-14 * gmax) || pattern > 0)
            fail_msg("%dD: rb_op_varstencil_galerkin differs from the chain's probe by %.3g (max %.3g, %zu zero patterns)",
                     dims, dmax, gmax, pattern);
        rb_op_free(ctx, G2);
        rb_op *Rc, *R2;
        rb_conv_desc dr = rb_conv_desc_default(dims, 1, 1);
        dr.stride = 2;
        RB_CHECK(ctx, rb_op_conv_create(ctx, &dr, w, &R2));
        RB_CHECK(ctx, rb_op_chain_create(ctx, &R2, 1, &Rc)); /* owns R2 */
        RB_CHECK(ctx, rb_op_varstencil_galerkin(ctx, Rc, A, P, dims, coarse, &G2));
        for (size_t i = 0; i < G->nparams; i++)
            if (G2->params[i] != G->params[i]) fail_msg("%dD: the probes of R, A, P differ from the chain's at %zu", dims, i);
        rb_op_free(ctx, Rc);
        RB_EXPECT(ctx, RB_ESHAPE, "rb_op_varstencil_galerkin: operator 1 (varstencil): varstencil on grid",
                  rb_op_varstencil_galerkin(ctx, R, A, P, dims, fine, &(rb_op *){NULL}));
        RB_EXPECT(ctx, RB_ENULL, "operator 1 is NULL", rb_op_varstencil_galerkin(ctx, R, NULL, P, dims, coarse, &(rb_op *){NULL}));
        rb_op_free(ctx, G2);
        rb_tensor x, y1, y2;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, coarse));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y1, coarse));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y2, coarse));
        rb_arena a = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &a, rb_op_workspace(RAP, coarse)));
        for (int trial = 0; trial < 3; trial++) {
            rb_test_fill(&r, &x, -1, 1);
            RB_CHECK(ctx, rb_op_apply(ctx, RAP, &x, &y1, &a));
            RB_CHECK(ctx, rb_op_apply(ctx, G, &x, &y2, NULL));
            double err = rb_tensor_max_rel_diff(&y2, &y1);
            if (!(err <= 1e-13)) fail_msg("%dD probed R A P vs the product: %.3g", dims, err);
        }
        rb_arena_release(ctx, &a);
        rb_op_free(ctx, RAP), rb_op_free(ctx, G);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y1), rb_tensor_release(ctx, &y2);
    }
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *S = NULL;
    rb_shape grid = rb_shape_2d(1, 1, 4, 4);
    RB_EXPECT(ctx, RB_EINVAL, "desc.dims = 0", rb_op_varstencil_create(ctx, 0, RB_STENCIL_STAR, grid, NULL, &S));
    RB_EXPECT(ctx, RB_ESHAPE, "unused", rb_op_varstencil_create(ctx, 1, RB_STENCIL_STAR, grid, NULL, &S));
    double bad[20] = {0};
    bad[7] = NAN;
    RB_EXPECT(ctx, RB_EINVAL, "weights[7]", rb_op_varstencil_create(ctx, 2, RB_STENCIL_STAR, rb_shape_2d(1, 1, 2, 2), bad, &S));
    assert_null(S);
    RB_CHECK(ctx, rb_op_varstencil_create(ctx, 2, RB_STENCIL_STAR, grid, NULL, &S));
    rb_tensor b, x, y;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, grid));
    rb_op *J = NULL;
    RB_EXPECT(ctx, RB_EINVAL, "centre weight at point 0", rb_op_jacobi_create(ctx, S, &b, &J));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(1, 1, 4, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(1, 1, 4, 5)));
    RB_EXPECT(ctx, RB_ESHAPE, "same grid", rb_op_apply(ctx, S, &x, &y, NULL));
    rb_op *t;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_RELU, &t));
    RB_EXPECT(ctx, RB_EINVAL, "not linear", rb_op_varstencil_probe(ctx, t, 2, grid, &J));
    rb_op_free(ctx, t), rb_op_free(ctx, S);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_equals_conv_when_constant, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_gather_vs_definition, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_probe_galerkin, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("varstencil", tests, NULL, NULL);
}
