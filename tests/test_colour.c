/* test_colour.c — red-black half-sweeps as residual steps restricted to one
 * colour: conformance (fused vs generic, vjp by finite differences); the parity classes
 * of full stencils and the colours of point-dependent stars (conformance, the fused step
 * equal to the generic path bit for bit, every point in one class), and their sweep ops (all
 * sweeps in one pass) equal to the colour steps one after another bit for bit, also with a
 * varstencil's class weights packed (rb_op_parity_pack); and one
 * red-black Gauss-Seidel sweep against the same sweep done with the
 * LAPACK-assembled dense matrix. */
#include "conformance.h"

#include <math.h>
#include <stdio.h>

static void test_conformance(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++)
        for (int c = 0; c < 2; c++) {
            size_t n = dims == 3 ? 5 : 7;
            rb_shape s = {dims == 2 ? 2 : 1, 1, dims == 3 ? n : 1, dims >= 2 ? n + 1 : 1, n};
            rb_tensor b;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
            rb_test_rng r = {(uint64_t)(dims * 10 + c)};
            rb_test_fill(&r, &b, -1, 1);
            rb_op *A, *J, *C;
            RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, 0.25, &A));
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            RB_CHECK(ctx, rb_op_colour_create(ctx, J, c, &C));
            char label[64];
            snprintf(label, sizeof label, "colour %d of Jacobi, %dD", c, dims);
            rb_conformance_case cc = rb_conformance_default(C, s, label);
            rb_conformance_run(ctx, &cc);
            rb_op_free(ctx, C), rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b);
        }
}

/* The parity classes (and red-black over point-dependent stars): conformance, i.e. the
 * vjp by finite differences and the fused step against the generic path (mask of F,
 * then x + h F); then the fused step, in place and out of place and on 1..3 threads,
 * equal to the generic path bit for bit on grids with rows wide enough for the
 * vectorised interior; and the classes together touch every point once. */
static void test_parity_classes(void **state)
{
    rb_context *ctx = *state;
    static const size_t small[3][3] = {{1, 1, 9}, {1, 6, 7}, {4, 5, 5}}, wide[3][3] = {{1, 1, 77}, {1, 13, 41}, {9, 10, 37}};
    for (int dims = 1; dims <= 3; dims++)
        for (int kind = 0; kind < 3; kind++) { /* constant full conv, varstencil full, varstencil star (red-black) */
            for (int size = 0; size < 2; size++) {
                const size_t *e = size ? wide[dims - 1] : small[dims - 1];
                rb_shape grid = {1, 1, e[0], e[1], e[2]}, s = grid;
                s.n = size ? 2 : 1;
                rb_tensor b, x, yg, yf, cover;
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, s));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, s));
                RB_CHECK(ctx, rb_tensor_alloc(ctx, &cover, s));
                rb_test_rng r = {(uint64_t)(dims * 100 + kind * 10 + size)};
                rb_test_fill(&r, &b, -1, 1);
                rb_test_fill(&r, &x, -1, 1);
                rb_op *A, *J;
                if (kind == 0) {
                    double w[27];
                    for (int t = 0; t < 27; t++) w[t] = rb_test_uniform(&r, -1.0, 0.1);
                    int nt = dims == 1 ? 3 : dims == 2 ? 9 : 27;
                    w[(nt - 1) / 2] = 2.0 * nt;
                    RB_CHECK(ctx, rb_op_stencil_create(ctx, dims, RB_STENCIL_FULL, w, &A));
                } else {
                    A = rb_test_varstencil(ctx, dims, kind == 1 ? RB_STENCIL_FULL : RB_STENCIL_STAR, grid, 7u + (uint64_t)dims);
                }
                RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
                const int nclass = kind == 2 ? 2 : 1 << dims;
                rb_tensor_fill(ctx, &cover, 0.0);
                for (int c = 0; c < nclass; c++) {
                    rb_op *C;
                    if (kind == 2) RB_CHECK(ctx, rb_op_colour_create(ctx, J, c, &C));
                    else RB_CHECK(ctx, rb_op_parity_create(ctx, J, c, &C));
                    char label[80];
                    snprintf(label, sizeof label, "%s %d of Jacobi over %s, %dD", kind == 2 ? "colour" : "parity class", c,
                             kind == 0 ? "a constant 3^d stencil" : kind == 1 ? "a varstencil" : "a varstencil star", dims);
                    if (size == 0) {
                        rb_conformance_case cc = rb_conformance_default(C, s, label);
                        rb_conformance_run(ctx, &cc);
                    } else {
                        rb_arena work = {0};
                        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(C, s) + 4096));
                        RB_CHECK(ctx, rb_residual_step_generic(ctx, C, 0.9, &x, &yg, &work));
                        /* a varstencil's class also with its weights packed (rb_op_parity_pack) */
                        for (int packed = 0; packed <= (kind == 1); packed++) {
                            if (packed) RB_CHECK(ctx, rb_op_parity_pack(ctx, C));
                            for (int threads = 1; threads <= 3; threads++) {
                                RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
                                RB_CHECK(ctx, rb_residual_step(ctx, C, 0.9, &x, &yf, &work));
                                for (size_t i = 0; i < rb_tensor_count(&x); i++)
                                    if (yf.data[i] != yg.data[i])
                                        fail_msg("%s%s, %d threads: point %zu differs from the generic path", label,
                                                 packed ? " (packed)" : "", threads, i);
                                rb_tensor_copy(ctx, &x, &yf);
                                RB_CHECK(ctx, rb_residual_step(ctx, C, 0.9, &yf, &yf, &work));
                                for (size_t i = 0; i < rb_tensor_count(&x); i++)
                                    if (yf.data[i] != yg.data[i])
                                        fail_msg("%s%s, %d threads, in place: point %zu differs", label, packed ? " (packed)" : "",
                                                 threads, i);
                            }
                        }
                        if (kind == 1) {
                            /* the packed weights are a snapshot: new weights packed again are the ones used */
                            const size_t all = rb_shape_count(grid) * (size_t)(dims == 1 ? 3 : dims == 2 ? 9 : 27);
                            double *keep = test_malloc(all * sizeof *keep);
                            for (size_t i = 0; i < all; i++) keep[i] = A->params[i], A->params[i] *= 0.75;
                            rb_tensor y2;
                            RB_CHECK(ctx, rb_tensor_alloc(ctx, &y2, s));
                            RB_CHECK(ctx, rb_residual_step_generic(ctx, C, 0.9, &x, &y2, &work));
                            RB_CHECK(ctx, rb_op_parity_pack(ctx, C));
                            RB_CHECK(ctx, rb_residual_step(ctx, C, 0.9, &x, &yf, &work));
                            for (size_t i = 0; i < rb_tensor_count(&x); i++)
                                if (yf.data[i] != y2.data[i]) fail_msg("%s, packed again after new weights: point %zu differs", label, i);
                            for (size_t i = 0; i < all; i++) A->params[i] = keep[i];
                            RB_CHECK(ctx, rb_op_parity_pack(ctx, C));
                            test_free(keep);
                            rb_tensor_release(ctx, &y2);
                        }
                        RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
                        for (size_t i = 0; i < rb_tensor_count(&x); i++) cover.data[i] += yg.data[i] != x.data[i];
                        rb_arena_release(ctx, &work);
                    }
                    rb_op_free(ctx, C);
                }
                if (size == 1)
                    for (size_t i = 0; i < rb_tensor_count(&x); i++)
                        if (cover.data[i] != 1.0) fail_msg("%dD kind %d: point %zu changed by %g classes, not 1", dims, kind, i, cover.data[i]);
                rb_op_free(ctx, J), rb_op_free(ctx, A);
                rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yg);
                rb_tensor_release(ctx, &yf), rb_tensor_release(ctx, &cover);
            }
        }
}

/* The colour sweep op over parity classes and over the colours of point-dependent stars
 * (the class kernel in the red-black wavefront, all sweeps in one pass): equal bit for bit
 * to its colour steps one after another, on 1..3 threads, on grids big enough for the
 * threads' blocks, with the classes in sweep order and reversed (the adjoint smoother). */
static void test_class_sweeps(void **state)
{
    rb_context *ctx = *state;
    /* the last: below the star kernel's threshold for threads, above the point-dependent one's */
    static const size_t grids[][3] = {{1, 1, 4001}, {1, 200, 181}, {1, 150, 210}, {40, 30, 31}, {42, 28, 33}, {20, 24, 25}};
    static const int dims_of[] = {1, 2, 2, 3, 3, 3};
    for (size_t gi = 0; gi < sizeof grids / sizeof *grids; gi++)
        for (int kind = 1; kind <= 2; kind++) { /* varstencil full (parity classes), varstencil star (red-black) */
            const int dims = dims_of[gi];
            rb_shape s = {1, 1, grids[gi][0], grids[gi][1], grids[gi][2]};
            rb_tensor b, x, ref, y;
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &ref, s));
            RB_CHECK(ctx, rb_tensor_alloc(ctx, &y, s));
            rb_test_rng r = {(uint64_t)(gi * 10 + (size_t)kind)};
            rb_test_fill(&r, &b, -1, 1);
            rb_test_fill(&r, &x, -1, 1);
            rb_op *A = rb_test_varstencil(ctx, dims, kind == 1 ? RB_STENCIL_FULL : RB_STENCIL_STAR, s, 3 + gi), *J;
            RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
            const int nc = kind == 1 ? 1 << dims : 2;
            rb_op *C[8];
            for (int c = 0; c < nc; c++) {
                if (kind == 1) RB_CHECK(ctx, rb_op_parity_create(ctx, J, c, &C[c]));
                else RB_CHECK(ctx, rb_op_colour_create(ctx, J, c, &C[c]));
            }
            for (int order = 0; order < 4; order++) /* 2, 3: the parity classes packed (rb_op_parity_pack) */
                for (int sweeps = 1; sweeps <= 2; sweeps++) {
                    if (order >= 2 && kind != 1) continue;
                    if (order == 2 && sweeps == 1)
                        for (int c = 0; c < nc; c++) RB_CHECK(ctx, rb_op_parity_pack(ctx, C[c]));
                    const rb_op *cols[8];
                    for (int c = 0; c < nc; c++) cols[c] = C[order % 2 ? nc - 1 - c : c];
                    rb_op *G;
                    RB_CHECK(ctx, rb_op_colour_sweep_create(ctx, cols, nc, 1.1, sweeps, &G));
                    rb_arena work = {0};
                    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(G, s) + rb_residual_workspace(C[0], s)));
                    for (int threads = 1; threads <= 3; threads++) {
                        RB_CHECK(ctx, rb_context_set_threads(ctx, threads));
                        rb_tensor_copy(ctx, &x, &ref);
                        for (int k = 0; k < nc * sweeps; k++) RB_CHECK(ctx, rb_residual_step(ctx, cols[k % nc], 1.1, &ref, &ref, &work));
                        rb_tensor_copy(ctx, &x, &y);
                        RB_CHECK(ctx, rb_residual_step(ctx, G, 1.1, &y, &y, &work));
                        for (size_t i = 0; i < rb_tensor_count(&x); i++)
                            if (y.data[i] != ref.data[i])
                                fail_msg("%dD grid %zu %s, order %d%s, %d sweeps, %d threads: point %zu: sweep op %.17g, "
                                         "colour steps %.17g", dims, gi, kind == 1 ? "parity classes" : "red-black", order % 2,
                                         order >= 2 ? " (packed)" : "",
                                         sweeps, threads, i, y.data[i], ref.data[i]);
                    }
                    RB_CHECK(ctx, rb_context_set_threads(ctx, 1));
                    rb_arena_release(ctx, &work);
                    rb_op_free(ctx, G);
                }
            for (int c = 0; c < nc; c++) rb_op_free(ctx, C[c]);
            rb_op_free(ctx, J), rb_op_free(ctx, A);
            rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &ref), rb_tensor_release(ctx, &y);
        }
}

/* Oracle: the dense red-black Gauss-Seidel sweep with the assembled matrix. */
static void test_rbgs_against_dense(void **state)
{
    rb_context *ctx = *state;
    for (int dims = 1; dims <= 3; dims++) {
        size_t m = dims == 3 ? 5 : dims == 2 ? 9 : 15;
        rb_shape s = {1, 1, dims == 3 ? m : 1, dims >= 2 ? m : 1, m};
        size_t n = rb_shape_count(s);
        double h = 1.0 / (double)(m + 1);
        rb_tensor b, u;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
        rb_test_rng r = {7};
        rb_test_fill(&r, &b, -1, 1);
        rb_test_fill(&r, &u, -1, 1);
        rb_op *A, *J, *red, *black;
        RB_CHECK(ctx, rb_op_laplacian_create(ctx, dims, h, &A));
        RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 0, &red));
        RB_CHECK(ctx, rb_op_colour_create(ctx, J, 1, &black));
        double *M = test_malloc(n * n * sizeof *M), *v = test_malloc(n * sizeof *v);
        RB_CHECK(ctx, rb_ref_assemble(ctx, A, s, M));
        for (size_t i = 0; i < n; i++) v[i] = u.data[i];
        for (int colour = 0; colour < 2; colour++)
            for (size_t k = 0; k < s.d; k++)
                for (size_t j = 0; j < s.h; j++)
                    for (size_t i = 0; i < m; i++) {
                        if ((i + j + k) % 2 != (size_t)colour) continue;
                        size_t p = (k * s.h + j) * m + i;
                        double acc = b.data[p];
                        for (size_t q = 0; q < n; q++)
                            if (q != p) acc -= M[p * n + q] * v[q];
                        v[p] = acc / M[p * n + p];
                    }
        rb_arena work = {0};
        RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(red, s)));
        RB_CHECK(ctx, rb_residual_step(ctx, red, 1.0, &u, &u, &work));
        RB_CHECK(ctx, rb_residual_step(ctx, black, 1.0, &u, &u, &work));
        rb_tensor vt;
        rb_tensor_view(ctx, &vt, v, s);
        double err = rb_tensor_max_rel_diff(&u, &vt);
        if (!(err <= 1e-13)) fail_msg("%dD red-black sweep vs dense Gauss-Seidel: %.3g", dims, err);
        test_free(M), test_free(v);
        rb_arena_release(ctx, &work);
        rb_op_free(ctx, red), rb_op_free(ctx, black), rb_op_free(ctx, J), rb_op_free(ctx, A);
        rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &u);
    }
}

static void test_bad_input(void **state)
{
    rb_context *ctx = *state;
    rb_op *a, *c = NULL;
    RB_CHECK(ctx, rb_op_activation_create(ctx, RB_ACT_TANH, &a));
    RB_EXPECT(ctx, RB_EINVAL, "colour = 2", rb_op_colour_create(ctx, a, 2, &c));
    RB_EXPECT(ctx, RB_ENULL, "base", rb_op_colour_create(ctx, NULL, 0, &c));
    RB_EXPECT(ctx, RB_EINVAL, "cls = 8", rb_op_parity_create(ctx, a, 8, &c));
    RB_EXPECT(ctx, RB_EINVAL, "cls = -1", rb_op_parity_create(ctx, a, -1, &c));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_op_parity_create(ctx, a, 0, NULL));
    assert_null(c);
    /* packing: only a parity class, only over point weights */
    RB_EXPECT(ctx, RB_ENULL, "op is NULL", rb_op_parity_pack(ctx, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "not a parity class", rb_op_parity_pack(ctx, a));
    RB_CHECK(ctx, rb_op_colour_create(ctx, a, 0, &c));
    RB_EXPECT(ctx, RB_EINVAL, "red-black colour op, not a parity class", rb_op_parity_pack(ctx, c));
    rb_op_free(ctx, c);
    RB_CHECK(ctx, rb_op_parity_create(ctx, a, 1, &c));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "no point weights to pack", rb_op_parity_pack(ctx, c));
    rb_op_free(ctx, c);
    rb_op_free(ctx, a);
}

/* Packing again after new weights when memory runs out: RB_ENOMEM, and the class reads its
 * (new) weights in place, so the fused step still equals the generic path; nothing leaks. */
static void test_pack_out_of_memory(void **state)
{
    (void)state;
    rb_failing_alloc fa = {-1, 0};
    rb_allocator al = rb_failing_allocator(&fa);
    rb_context *ctx;
    assert_int_equal(rb_context_create(&ctx, &al), RB_OK);
    rb_shape s = {1, 1, 9, 10, 37};
    rb_tensor b, x, yg, yf;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yg, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &yf, s));
    rb_test_rng r = {5};
    rb_test_fill(&r, &b, -1, 1);
    rb_test_fill(&r, &x, -1, 1);
    rb_op *A = rb_test_varstencil(ctx, 3, RB_STENCIL_FULL, s, 17), *J, *C;
    RB_CHECK(ctx, rb_op_jacobi_create(ctx, A, &b, &J));
    RB_CHECK(ctx, rb_op_parity_create(ctx, J, 5, &C));
    RB_CHECK(ctx, rb_op_parity_pack(ctx, C));
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_residual_workspace(C, s) + 4096));
    for (size_t i = 0; i < A->nparams; i++) A->params[i] *= 1.25;
    fa.budget = 0;
    RB_EXPECT(ctx, RB_ENOMEM, "allocation", rb_op_parity_pack(ctx, C));
    fa.budget = -1;
    RB_CHECK(ctx, rb_residual_step_generic(ctx, C, 0.9, &x, &yg, &work));
    RB_CHECK(ctx, rb_residual_step(ctx, C, 0.9, &x, &yf, &work));
    for (size_t i = 0; i < rb_tensor_count(&x); i++)
        if (yf.data[i] != yg.data[i]) fail_msg("after a failed pack: point %zu differs from the generic path", i);
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, C), rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &b), rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &yg), rb_tensor_release(ctx, &yf);
    rb_context_free(ctx);
    assert_int_equal(fa.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conformance, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_parity_classes, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_class_sweeps, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_rbgs_against_dense, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, rb_test_setup, rb_test_teardown),
        cmocka_unit_test(test_pack_out_of_memory),
    };
    return cmocka_run_group_tests_name("colour", tests, NULL, NULL);
}
