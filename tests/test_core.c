/* test_core.c — status list, context, tensors, arena: contracts and bad input. */
#include "testkit.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static void test_status_messages(void **state)
{
    (void)state;
    for (int s = 0; s < RB_STATUS_COUNT; s++) {
        assert_non_null(rb_strerror((rb_status)s));
        assert_true(strlen(rb_strerror((rb_status)s)) > 0);
        assert_true(strncmp(rb_status_name((rb_status)s), "RB_", 3) == 0);
    }
    assert_string_equal(rb_strerror(RB_ESHAPE), "tensor shapes do not match");
    assert_string_equal(rb_status_name(RB_EDIVERGED), "RB_EDIVERGED");
    assert_string_equal(rb_strerror((rb_status)999), "unknown status");
}

static void test_context(void **state)
{
    rb_context *ctx = *state;
    assert_int_equal(rb_context_threads(ctx), 1);
    RB_CHECK(ctx, rb_context_set_threads(ctx, 2));
    assert_int_equal(rb_context_threads(ctx), 2);
    RB_EXPECT(ctx, RB_EINVAL, "threads: 0", rb_context_set_threads(ctx, 0));
    assert_int_equal(rb_context_threads(ctx), 2);
    assert_int_equal(rb_context_last_status(ctx), RB_EINVAL);
    rb_context_clear_error(ctx);
    assert_string_equal(rb_context_message(ctx), "");
    /* a caller prefixing what a callee said: the message may be an argument of its own rewrite */
    rb_fail(ctx, RB_EDIVERGED, "inner: sample %d", 7);
    rb_fail(ctx, RB_EDIVERGED, "outer, batch %d: %s", 22, rb_context_message(ctx));
    assert_string_equal(rb_context_message(ctx), "outer, batch 22: inner: sample 7");
    rb_context_clear_error(ctx);
    assert_int_equal(rb_context_create(NULL, NULL), RB_ENULL);
    rb_allocator bad = {NULL, NULL, NULL};
    rb_context *c2 = NULL;
    assert_int_equal(rb_context_create(&c2, &bad), RB_EINVAL);
    assert_null(c2);
    /* the default allocator: 64-byte aligned; grids (>= 4 MiB) 2 MiB aligned on Linux (huge pages) */
    const size_t sizes[3] = {24, (size_t)4 << 20, ((size_t)5 << 20) + 8};
    for (int i = 0; i < 3; i++) {
        unsigned char *p = rb_malloc(ctx, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
#if defined(__linux__)
        if (sizes[i] >= ((size_t)4 << 20)) assert_int_equal((uintptr_t)p % ((size_t)2 << 20), 0);
#endif
        memset(p, 0xab, sizes[i]); /* all of it writable */
        assert_int_equal(p[sizes[i] - 1], 0xab);
        rb_free(ctx, p);
    }
}

static void test_tensor(void **state)
{
    rb_context *ctx = *state;
    rb_tensor t;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &t, rb_shape_3d(2, 3, 4, 5, 6)));
    assert_int_equal(rb_tensor_count(&t), 720);
    assert_true(t.owns);
    for (size_t i = 0; i < 720; i++) assert_true(t.data[i] == 0.0);
    RB_AT(&t, 1, 2, 3, 4, 5) = 9.0;
    assert_true(t.data[719] == 9.0);
    RB_AT(&t, 1, 0, 0, 0, 0) = 4.0;
    assert_true(t.data[360] == 4.0);
    char buf[64];
    assert_string_equal(rb_shape_format(t.shape, buf, sizeof buf), "(2,3,4,5,6)");
    rb_tensor_release(ctx, &t);
    assert_null(t.data);

    rb_tensor u = {{0}, NULL, false};
    RB_EXPECT(ctx, RB_EINVAL, "zero dimension", rb_tensor_alloc(ctx, &u, rb_shape_2d(1, 1, 0, 4)));
    assert_null(u.data);
    RB_EXPECT(ctx, RB_EINVAL, "too large", rb_tensor_alloc(ctx, &u, rb_shape_3d(1u << 22, 1u << 22, 1u << 22, 1, 1)));
    double buf4[4] = {1, 2, 3, 4};
    RB_EXPECT(ctx, RB_ENULL, "data", rb_tensor_view(ctx, &u, NULL, rb_shape_vec(4)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &u, buf4, rb_shape_vec(4)));
    assert_false(u.owns);
    assert_float_equal(rb_tensor_norm2(&u), sqrt(30.0), 1e-15);
    /* no overflow or underflow: |(3, 4) * 1e200| = 5e200, |(3, 4) * 1e-200| = 5e-200 (closed form) */
    double big[2] = {3e200, 4e200}, tiny[2] = {3e-200, 4e-200};
    rb_tensor tb, tt;
    RB_CHECK(ctx, rb_tensor_view(ctx, &tb, big, rb_shape_vec(2)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &tt, tiny, rb_shape_vec(2)));
    assert_true(fabs(rb_tensor_norm2(&tb) / 5e200 - 1) < 1e-15);
    assert_true(fabs(rb_tensor_norm2(&tt) / 5e-200 - 1) < 1e-15);
    rb_tensor v;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &v, rb_shape_vec(5)));
    RB_EXPECT(ctx, RB_ESHAPE, "(1,1,1,1,5)", rb_tensor_copy(ctx, &u, &v));
    RB_EXPECT(ctx, RB_EINVAL, "not finite", rb_tensor_axpy(ctx, NAN, &u, &u));
    rb_tensor_release(ctx, &u); /* a view: data untouched */
    assert_true(buf4[3] == 4.0);
    rb_tensor_release(ctx, &v);
}

static void test_arena_dry_run(void **state)
{
    rb_context *ctx = *state;
    rb_arena a;
    rb_arena_measure(&a);
    assert_null(rb_arena_alloc(ctx, &a, 10));
    rb_tensor t;
    RB_CHECK(ctx, rb_arena_tensor(ctx, &a, &t, rb_shape_vec(100)));
    assert_null(t.data);
    assert_int_equal(rb_arena_peak(&a), 64 + 832);
    RB_CHECK(ctx, rb_arena_reserve(ctx, &a, rb_arena_peak(&a)));
    size_t m = rb_arena_mark(&a);
    void *p = rb_arena_alloc(ctx, &a, 10);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % RB_ARENA_ALIGN, 0);
    RB_CHECK(ctx, rb_arena_tensor(ctx, &a, &t, rb_shape_vec(100)));
    assert_non_null(t.data);
    /* exhausted: a clear ENOMEM, nothing handed out */
    assert_null(rb_arena_alloc(ctx, &a, 1));
    assert_int_equal(rb_context_last_status(ctx), RB_ENOMEM);
    assert_non_null(strstr(rb_context_message(ctx), "arena exhausted"));
    rb_arena_reset(&a, m);
    assert_non_null(rb_arena_alloc(ctx, &a, 800));
    rb_arena_release(ctx, &a);
}

static void test_failing_allocator_no_leak(void **state)
{
    (void)state;
    /* every allocation point fails once: ENOMEM, and no block stays live */
    for (long budget = 0; budget < 8; budget++) {
        rb_failing_alloc fa = {budget, 0};
        rb_allocator al = rb_failing_allocator(&fa);
        rb_context *ctx = NULL;
        rb_status st = rb_context_create(&ctx, &al);
        if (st != RB_OK) {
            assert_int_equal(st, RB_ENOMEM);
            assert_int_equal(fa.live, 0);
            continue;
        }
        rb_tensor t, u;
        rb_op *op = NULL;
        st = rb_tensor_alloc(ctx, &t, rb_shape_vec(16));
        if (st == RB_OK) {
            st = rb_op_laplacian_create(ctx, 2, 0.1, &op);
            if (st == RB_OK) {
                rb_arena a = {0};
                st = rb_arena_reserve(ctx, &a, 1024);
                if (st == RB_OK) {
                    st = rb_tensor_alloc(ctx, &u, rb_shape_vec(4));
                    if (st == RB_OK) rb_tensor_release(ctx, &u);
                    rb_arena_release(ctx, &a);
                }
                rb_op_free(ctx, op);
            }
            rb_tensor_release(ctx, &t);
        }
        if (st != RB_OK) {
            assert_int_equal(st, RB_ENOMEM);
            assert_int_equal(rb_context_last_status(ctx), RB_ENOMEM);
        }
        rb_context_free(ctx);
        assert_int_equal(fa.live, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_messages),
        cmocka_unit_test_setup_teardown(test_context, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_tensor, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_arena_dry_run, rb_test_setup, rb_test_teardown),
        cmocka_unit_test(test_failing_allocator_no_leak),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
