/* test_xsplit.c — grids stored each row's even points first, then its odd ones (xsplit.h).
 *
 * Oracles:
 *   the layout (rb_xsplit)                     the closed form: x at x / 2 (even), (W+1)/2 + x / 2 (odd)
 *   split views of a stencil, a restriction    the conformance suite (vjp by finite differences, the
 *     and a prolongation                         adjoint identity) and the plain op on the plain grid
 *                                                permuted by the closed form: equal
 *   the split view of a colour sweep op        the plain sweep op on the plain grid: equal bit for bit
 *     (fused kernel on split rows)               (1..3 threads, odd and even widths, in and out of place)
 *   its reference path (h != omega)            the plain generic path, also when the plain right-hand
 *                                                side held other values (it is written from the split one)
 * (The fused pass with prolongation, residual and restriction: test_mg_kernels; the solver with
 * its finest grid split against the plain one: test_multigrid.) */
#include "conformance.h"

#include <math.h>
#include <stdio.h>

static size_t where(size_t x, size_t W) { return (x & 1) ? (W + 1) / 2 + x / 2 : x / 2; }

/* y[p] = x[q] with q the closed-form place of p: split (to_split) or back. */
static void permute_by_formula(const rb_tensor *x, rb_tensor *y, bool to_split)
{
    const size_t W = x->shape.w, n = rb_tensor_count(x);
    for (size_t i = 0; i < n; i++) {
        const size_t row = i - i % W, p = row + where(i % W, W);
        if (to_split) y->data[p] = x->data[i];
        else y->data[i] = x->data[p];
    }
}

static void test_layout(void **state)
{
    rb_context *ctx = *state;
    for (size_t W = 1; W <= 21; W++) {
        rb_shape s = {2, 1, 2, 3, W};
        rb_tensor x, y, z;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &z, s));
        const size_t n = rb_tensor_count(&x);
        for (size_t i = 0; i < n; i++) x.data[i] = (double)i;
        RB_CHECK(ctx, rb_xsplit(ctx, &x, &y, true));
        for (size_t i = 0; i < n; i++) {
            const size_t row = i - i % W;
            if (y.data[row + where(i % W, W)] != (double)i) fail_msg("W = %zu: value %zu not at its place", W, i);
        }
        RB_CHECK(ctx, rb_xsplit(ctx, &y, &z, false));
        for (size_t i = 0; i < n; i++)
            if (z.data[i] != x.data[i]) fail_msg("W = %zu: split and back changed entry %zu", W, i);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &z);
    }
}

/* The split views of a 2D star, of a restriction and of a prolongation (the restriction's apply
 * reads the split rows directly): the conformance suite, and apply equal to the plain op on the
 * plain grid, permuted. */
static void test_views_of_plain_ops(void **state)
{
    rb_context *ctx = *state;
    rb_op *A, *R, *P;
    const double w[5] = {-1.0, -0.7, 4.2, -1.3, -0.9};
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_STAR, w, &A));
    RB_CHECK(ctx, rb_mg_transfers_create(ctx, 2, &R, &P));
    const rb_shape fine = rb_shape_2d(2, 1, 9, 11), coarse = rb_shape_2d(2, 1, 4, 5);
    struct {
        const rb_op *op;
        bool in, out;
        rb_shape s;
        const char *label;
    } cases[] = {{A, true, true, fine, "split star"},
                 {R, true, false, fine, "restriction from a split grid"},
                 {R, true, true, fine, "restriction between split grids"},
                 {P, false, true, coarse, "prolongation onto a split grid"},
                 {P, true, true, coarse, "prolongation between split grids"}};
    for (int c = 0; c < 5; c++) {
        rb_op *V;
        RB_CHECK(ctx, rb_op_xsplit_create(ctx, cases[c].op, cases[c].in, cases[c].out, &V));
        rb_conformance_case cc = rb_conformance_default(V, cases[c].s, cases[c].label);
        rb_conformance_run(ctx, &cc);
        rb_shape out;
        RB_CHECK(ctx, rb_op_shape(ctx, V, cases[c].s, &out));
        rb_tensor x, xp, y, yp, yq;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, cases[c].s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &xp, cases[c].s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, out));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &yp, out));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &yq, out));
        rb_test_rng r = {(uint64_t)(40 + c)};
        rb_test_fill(&r, &x, -1, 1);
        rb_arena work = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_op_workspace(V, cases[c].s) + 4096));
        RB_CHECK(ctx, rb_op_apply(ctx, V, &x, &y, &work));
        /* the oracle: x to the plain layout by the formula, the plain op, and the output back */
        if (cases[c].in) permute_by_formula(&x, &xp, false);
        else rb_tensor_copy(ctx, &x, &xp);
        RB_CHECK(ctx, rb_op_apply(ctx, cases[c].op, &xp, &yp, NULL));
        if (cases[c].out) permute_by_formula(&yp, &yq, true);
        else rb_tensor_copy(ctx, &yp, &yq);
        for (size_t i = 0; i < rb_tensor_count(&y); i++)
            if (y.data[i] != yq.data[i]) fail_msg("%s: entry %zu is %g, the plain op gives %g", cases[c].label, i, y.data[i], yq.data[i]);
        const rb_op *inner;
        bool in, outs;
        assert_true(rb_op_xsplit_info(V, &inner, &in, &outs));
        assert_ptr_equal(inner, cases[c].op);
        assert_true(in == cases[c].in && outs == cases[c].out);
        rb_arena_release(ctx, &work);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &xp), rb_tensor_release(ctx, &y);
        rb_tensor_release(ctx, &yp), rb_tensor_release(ctx, &yq);
        rb_op_free(ctx, V);
    }
    assert_false(rb_op_xsplit_info(A, NULL, NULL, NULL));
    rb_op_free(ctx, A), rb_op_free(ctx, R), rb_op_free(ctx, P);
}

/* The split view of a red-black colour sweep op: its fused kernel on the split grid equals the
 * plain op's on the plain grid bit for bit; its reference path (h != omega, or no split
 * right-hand side named) equals the plain generic path, reading the split right-hand side. */
static void test_sweep_view(void **state)
{
    rb_context *ctx = *state;
    static const size_t shapes[][3] = {{1, 1, 1}, {1, 3, 2}, {2, 5, 9}, {1, 17, 16}, {1, 40, 33}, {1, 200, 181}, {2, 185, 190}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const rb_shape s = rb_shape_2d(shapes[si][0], 1, shapes[si][1], shapes[si][2]);
        const size_t n = rb_shape_count(s);
        rb_op *A, *J, *C[2], *G;
        const double w[5] = {-1.1, -0.8, 4.5, -1.2, -0.9};
        RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_STAR, w, &A));
        rb_tensor f, fplain, fsplit, x, xs, y, ys, back;
        rb_tensor *all[] = {&f, &fplain, &fsplit, &x, &xs, &y, &ys, &back};
        for (int k = 0; k < 8; k++) RB_CHECK(ctx, rb_tensor_alloc(ctx, all[k], s));
        rb_test_rng r = {(uint64_t)(70 + si)};
        rb_test_fill(&r, &f, -1, 1);
        rb_test_fill(&r, &x, -1, 1);
        RB_CHECK(ctx, rb_xsplit(ctx, &f, &fsplit, true));
        RB_CHECK(ctx, rb_xsplit(ctx, &x, &xs, true));
        RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &fplain, &J)); /* the view's plain rhs: the reference path fills it */
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &C[0]));
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &C[1]));
        const rb_op *cols[2] = {C[0], C[1]};
        for (int sweeps = 1; sweeps <= 3; sweeps += 2) {
            const double omega = sweeps == 1 ? 1.15 : 1.0;
            RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, 2, omega, sweeps, &G));
            rb_op *V;
            RB_CHECK(ctx, rb_op_xsplit_create(ctx, G, true, true, &V));
            rb_arena work = {0};
            RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(V, s) + rb_residual_workspace(G, s) + 4096));
            for (int h_kind = 0; h_kind < 3; h_kind++) { /* fused; reference (h != omega); reference (no rhs named) */
                const double h = h_kind == 1 ? 0.8 : omega;
                RB_CHECK(ctx, rb_op_xsplit_rhs(ctx, V, h_kind == 2 ? NULL : &fsplit, h_kind == 2 ? NULL : &fplain));
                /* the plain oracle, its rhs f */
                rb_tensor_copy(ctx, &f, &fplain);
                if (h_kind == 0) RB_CHECK(ctx, rb_residual_step(ctx, G, h, &x, &y, &work));
                else RB_CHECK(ctx, rb_residual_step_generic(ctx, G, h, &x, &y, &work));
                for (int threads = 1; threads <= 3; threads++)
                    for (int in_place = 0; in_place < 2; in_place++) {
                        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
                        /* the plain rhs spoiled: the view's fused path reads the split one, its
                         * reference path writes it from the split one (unless none is named) */
                        if (h_kind < 2) rb_tensor_fill(ctx, &fplain, 9.0);
                        if (in_place) {
                            rb_tensor_copy(ctx, &xs, &ys);
                            RB_CHECK(ctx, rb_residual_step(ctx, V, h, &ys, &ys, &work));
                        } else {
                            RB_CHECK(ctx, rb_residual_step(ctx, V, h, &xs, &ys, &work));
                        }
                        RB_CHECK(ctx, rb_xsplit(ctx, &ys, &back, false));
                        const double tol = h_kind == 0 ? 0.0 : 1e-13;
                        for (size_t i = 0; i < n; i++)
                            if (!(fabs(back.data[i] - y.data[i]) <= tol * (1.0 + fabs(y.data[i]))))
                                fail_msg("shape %zu, %d sweeps, %s, %d threads%s: point %zu is %.17g, plain %.17g", si, sweeps,
                                         h_kind == 0 ? "fused" : h_kind == 1 ? "reference path" : "no rhs named", threads,
                                         in_place ? ", in place" : "", i, back.data[i], y.data[i]);
                    }
            }
            RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
            rb_arena_release(ctx, &work);
            rb_op_free(ctx, V), rb_op_free(ctx, G);
        }
        rb_op_free(ctx, C[0]), rb_op_free(ctx, C[1]), rb_op_free(ctx, J), rb_op_free(ctx, A);
        for (int k = 0; k < 8; k++) rb_tensor_release(ctx, all[k]);
    }
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *A, *V = NULL;
    const double w[5] = {-1, -1, 4, -1, -1};
    RB_CHECK(ctx, rb_op_stencil_create(ctx, 2, RB_STENCIL_STAR, w, &A));
    rb_tensor x, y, z;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(1, 1, 4, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, rb_shape_2d(1, 1, 4, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &z, rb_shape_2d(1, 1, 5, 4)));
    RB_EXPECT(ctx, RB_ENULL, "x is NULL", rb_xsplit(ctx, NULL, &y, true));
    RB_EXPECT(ctx, RB_ESHAPE, "but y is", rb_xsplit(ctx, &x, &z, true));
    RB_EXPECT(ctx, RB_EINVAL, "overlap", rb_xsplit(ctx, &x, &x, true));
    assert_int_equal(rb_xsplit(NULL, &x, &y, true), RB_ENULL);
    RB_EXPECT(ctx, RB_ENULL, "inner is NULL", rb_op_xsplit_create(ctx, NULL, true, true, &V));
    RB_EXPECT(ctx, RB_ENULL, "out is NULL", rb_op_xsplit_create(ctx, A, true, true, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "neither side is split", rb_op_xsplit_create(ctx, A, false, false, &V));
    assert_null(V);
    RB_EXPECT(ctx, RB_EINVAL, "not an xsplit op", rb_op_xsplit_rhs(ctx, A, &x, &y));
    RB_CHECK(ctx, rb_op_xsplit_create(ctx, A, true, false, &V));
    RB_EXPECT(ctx, RB_EINVAL, "split on both sides", rb_op_xsplit_rhs(ctx, V, &x, &y));
    rb_op_free(ctx, V);
    RB_CHECK(ctx, rb_op_xsplit_create(ctx, A, true, true, &V));
    RB_EXPECT(ctx, RB_ENULL, "go together", rb_op_xsplit_rhs(ctx, V, &x, NULL));
    RB_EXPECT(ctx, RB_ESHAPE, "f_plain is", rb_op_xsplit_rhs(ctx, V, &x, &z));
    RB_EXPECT(ctx, RB_EINVAL, "overlap", rb_op_xsplit_rhs(ctx, V, &x, &x));
    RB_CHECK(ctx, rb_op_xsplit_rhs(ctx, V, NULL, NULL));
    rb_op_free(ctx, V), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_layout, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_views_of_plain_ops, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_sweep_view, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
