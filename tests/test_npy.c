/* test_npy.c — NumPy .npy read/write: round trips, hand-written NumPy files,
 * every refusal (status, message, output untouched), atomic writes, hostile
 * input, and NumPy itself as the oracle when /usr/bin/python3 has it. */
#include "testkit.h"

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a scratch directory for the whole suite ---------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    return rb_test_suite_dir_setup("npy");
}

static int group_teardown(void **state)
{
    (void)state;
    return rb_test_suite_dir_teardown();
}

static void put_le_f64(unsigned char *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    for (int k = 0; k < 8; k++) p[k] = (unsigned char)(u >> (8 * k));
}

/* A .npy file as bytes: magic, version major.0, header length (2 or 4 bytes),
 * the dict padded with spaces to a 64-byte boundary and '\n', then `ndata`
 * little-endian doubles 0.5*i, then `extra` junk bytes. Caller frees. */
static unsigned char *build_npy(int major, const char *dict, size_t ndata, size_t extra, size_t *len)
{
    size_t lenbytes = major == 1 ? 2 : 4;
    size_t pre = 8 + lenbytes, dl = strlen(dict);
    size_t hlen = dl + 1;
    hlen += (64 - (pre + hlen) % 64) % 64;
    size_t total = pre + hlen + 8 * ndata + extra;
    unsigned char *b = calloc(total ? total : 1, 1);
    assert_non_null(b);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major, b[7] = 0;
    for (size_t k = 0; k < lenbytes; k++) b[8 + k] = (unsigned char)(hlen >> (8 * k));
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', hlen - dl - 1);
    b[pre + hlen - 1] = '\n';
    for (size_t i = 0; i < ndata; i++) put_le_f64(b + pre + hlen + 8 * i, 0.5 * (double)i);
    for (size_t i = 0; i < extra; i++) b[pre + hlen + 8 * ndata + i] = 0xAB;
    *len = total;
    return b;
}

static void write_npy(const char *path, int major, const char *dict, size_t ndata, size_t extra)
{
    size_t len;
    unsigned char *b = build_npy(major, dict, ndata, extra, &len);
    rb_test_write_file(path, b, len);
    free(b);
}

/* ---- round trips --------------------------------------------------------------------------- */

static void fill_with_specials(rb_tensor *t, uint64_t seed)
{
    rb_test_rng r = {seed};
    rb_test_fill(&r, t, -10.0, 10.0);
    size_t n = rb_tensor_count(t);
    const double specials[] = {0.0, -0.0, INFINITY, -INFINITY, DBL_MAX, -DBL_MIN, 4.9406564584124654e-324, 1.0 / 3.0};
    for (size_t i = 0; i < sizeof specials / sizeof *specials && i < n; i++) t->data[(i * 7) % n] = specials[i];
}

static void test_round_trip(void **state)
{
    rb_context *ctx = *state;
    const rb_shape shapes[] = {{1, 1, 1, 1, 1}, {2, 3, 4, 5, 6}, {1, 1, 1, 7, 9}, {3, 1, 2, 1, 5},
                               {1, 1, 1, 1, 1000}, {5, 2, 1, 1, 3}};
    char p[8192];
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        rb_tensor x, y;
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, shapes[s]));
        fill_with_specials(&x, 100 + s);
        if (s == 1) x.data[3] = NAN;
        rb_test_suite_path(p, sizeof p, "round.npy");
        RB_CHECK(ctx, rb_npy_write(ctx, p, &x));
        RB_CHECK(ctx, rb_npy_read(ctx, p, &y));
        assert_true(rb_shape_equal(x.shape, y.shape));
        assert_true(y.owns);
        assert_memory_equal(x.data, y.data, rb_tensor_count(&x) * sizeof(double)); /* bit-exact */
        rb_tensor_release(ctx, &x);
        rb_tensor_release(ctx, &y);
    }
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
}

/* The written bytes: format 1.0, the header NumPy writes, data at a multiple of 64. */
static void test_written_layout(void **state)
{
    rb_context *ctx = *state;
    rb_tensor x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_3d(2, 3, 4, 5, 6)));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) x.data[i] = (double)i - 0.25;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "layout.npy");
    RB_CHECK(ctx, rb_npy_write(ctx, p, &x));
    size_t len;
    unsigned char *b = rb_test_slurp(p, &len);
    assert_memory_equal(b, "\x93NUMPY\x01\x00", 8);
    size_t hlen = (size_t)b[8] | (size_t)b[9] << 8;
    size_t off = 10 + hlen;
    assert_int_equal(off % 64, 0);
    assert_int_equal(b[off - 1], '\n');
    assert_int_equal(len, off + 8 * 720);
    const char dict[] = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 4, 5, 6), }";
    assert_memory_equal(b + 10, dict, sizeof dict - 1);
    for (size_t i = 10 + sizeof dict - 1; i < off - 1; i++) assert_int_equal(b[i], ' ');
    unsigned char want[8];
    put_le_f64(want, 719.0 - 0.25);
    assert_memory_equal(b + off + 8 * 719, want, 8);
    free(b);
    rb_tensor_release(ctx, &x);
}

/* ---- hand-written files, byte for byte as np.save writes them (NumPy 1.24) -------------------- */

/* np.save of a small C-order float64 array: the header is 128 bytes in total. */
static size_t numpy_file(unsigned char *b, const char *dict, const double *v, size_t n)
{
    memcpy(b, "\x93NUMPY\x01\x00\x76\x00", 10); /* version 1.0, header length 118 */
    size_t dl = strlen(dict);
    memcpy(b + 10, dict, dl);
    memset(b + 10 + dl, ' ', 127 - 10 - dl);
    b[127] = '\n';
    for (size_t i = 0; i < n; i++) put_le_f64(b + 128 + 8 * i, v[i]);
    return 128 + 8 * n;
}

static const double hw_2d[12] = {-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75}; /* arange(12)/4-1 */
static const double hw_1d[3] = {1.5, -2.0, 3.25};
static const double hw_0d[1] = {7.0};

static void write_hand_files(void)
{
    unsigned char b[512];
    char p[8192];
    rb_test_write_file(rb_test_suite_path(p, sizeof p, "hw_2d.npy"), b,
               numpy_file(b, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", hw_2d, 12));
    rb_test_write_file(rb_test_suite_path(p, sizeof p, "hw_1d.npy"), b,
               numpy_file(b, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", hw_1d, 3));
    rb_test_write_file(rb_test_suite_path(p, sizeof p, "hw_0d.npy"), b,
               numpy_file(b, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", hw_0d, 1));
}

static void expect_file(rb_context *ctx, const char *name, rb_shape shape, const double *v)
{
    char p[8192];
    rb_tensor t;
    RB_CHECK(ctx, rb_npy_read(ctx, rb_test_suite_path(p, sizeof p, name), &t));
    char a[96], b[96];
    if (!rb_shape_equal(t.shape, shape))
        fail_msg("%s: shape %s, expected %s", name, rb_shape_format(t.shape, a, sizeof a),
                 rb_shape_format(shape, b, sizeof b));
    for (size_t i = 0; i < rb_tensor_count(&t); i++) assert_true(t.data[i] == v[i]);
    rb_tensor_release(ctx, &t);
}

static void test_read_numpy_bytes(void **state)
{
    rb_context *ctx = *state;
    write_hand_files();
    expect_file(ctx, "hw_2d.npy", rb_shape_2d(1, 1, 3, 4), hw_2d);
    expect_file(ctx, "hw_1d.npy", rb_shape_vec(3), hw_1d);
    expect_file(ctx, "hw_0d.npy", rb_shape_vec(1), hw_0d);
}

/* Versions 2.0 and 3.0, and headers written differently but meaning the same. */
static void test_read_variants(void **state)
{
    rb_context *ctx = *state;
    char p[8192];
    double v[120];
    for (int i = 0; i < 120; i++) v[i] = 0.5 * i;
    static const struct {
        int major;
        const char *dict;
        rb_shape shape;
    } cases[] = {
        {2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", {1, 1, 1, 3, 4}},
        {3, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", {1, 1, 1, 3, 4}},
        {1, "{\"shape\": (2,3,4), \"fortran_order\": False, \"descr\": \"<f8\"}", {1, 1, 2, 3, 4}},
        {1, "{ 'shape' : ( 5 , ) ,'descr':'<f8','fortran_order':False }", {1, 1, 1, 1, 5}},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1, 3, 4)}", {1, 2, 1, 3, 4}},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 1, 4, 5), }", {2, 3, 1, 4, 5}},
        {1, "{'descr': '<f8',\t'fortran_order': False,\r\n'shape': (), }", {1, 1, 1, 1, 1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        rb_test_suite_path(p, sizeof p, "variant.npy");
        write_npy(p, cases[c].major, cases[c].dict, rb_shape_count(cases[c].shape), 0);
        rb_tensor t;
        RB_CHECK(ctx, rb_npy_read(ctx, p, &t));
        assert_true(rb_shape_equal(t.shape, cases[c].shape));
        for (size_t i = 0; i < rb_tensor_count(&t); i++) assert_true(t.data[i] == v[i]);
        rb_tensor_release(ctx, &t);
    }
}

/* ---- refusals -------------------------------------------------------------------------------- */

static double g_sentinel_data[2] = {42.0, 43.0};

static rb_tensor sentinel(void)
{
    rb_tensor t = {{9, 8, 7, 6, 5}, g_sentinel_data, false};
    return t;
}

/* Field by field (the struct has padding bytes). */
static void assert_untouched(const rb_tensor *out)
{
    rb_tensor ref = sentinel();
    assert_true(rb_shape_equal(out->shape, ref.shape));
    assert_ptr_equal(out->data, ref.data);
    assert_true(out->owns == ref.owns);
    assert_true(g_sentinel_data[0] == 42.0 && g_sentinel_data[1] == 43.0);
}

/* Read must fail with `want`, a message naming the path and `needle`, and leave out untouched. */
static void expect_refusal(rb_context *ctx, const char *path, rb_status want, const char *needle)
{
    rb_tensor out = sentinel();
    rb_context_clear_error(ctx);
    RB_EXPECT(ctx, want, needle, rb_npy_read(ctx, path, &out));
    if (strstr(rb_context_message(ctx), path) == NULL)
        fail_msg("message '%s' does not name the path %s", rb_context_message(ctx), path);
    assert_untouched(&out);
}

static void test_refuse_headers(void **state)
{
    rb_context *ctx = *state;
    static const struct {
        int major;
        const char *dict;
        size_t ndata;
        const char *needle;
    } cases[] = {
        {1, "hello", 12, "not a dictionary"},
        {1, "", 12, "not a dictionary"},
        {1, "{'descr': '<f8', ", 12, "bad header"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), } x", 12, "garbage after"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4) 'x'}", 12, "expected ',' or '}'"},
        {1, "{'fortran_order': False, 'shape': (3, 4), }", 12, "missing key 'descr'"},
        {1, "{'descr': '<f8', 'shape': (3, 4), }", 12, "missing key 'fortran_order'"},
        {1, "{'descr': '<f8', 'fortran_order': False, }", 12, "missing key 'shape'"},
        {1, "{}", 12, "missing key"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), 'foo': 1, }", 12, "unexpected key 'foo'"},
        {1, "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, "duplicate key 'descr'"},
        {1, "{descr: '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, "expected a quoted key"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, -4), }", 12, "negative dimension"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3.0, 4), }", 12, "not a non-negative integer"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 'a'), }", 12, "not a non-negative integer"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4e2), }", 12, "not a non-negative integer"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, None), }", 12, "not a non-negative integer"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 1, 1, 3, 4), }", 12, "more than 5 dimensions"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 0), }", 0, "zero-size dimension"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }", 0, "zero-size dimension"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }", 12, "overflows"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }", 12, "overflows"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999999,), }", 12, "overflows"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (12), }", 12, "not a tuple"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': [3, 4], }", 12, "not a tuple"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4, }", 12, "bad header"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,, 4), }", 12, "bad header"},
        {1, "{'descr': '>f8', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '>f8'"},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '<f4'"},
        {1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '|u1'"},
        {1, "{'descr': '|O', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '|O'"},
        {1, "{'descr': '=f8', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '=f8'"},
        {1, "{'descr': '<c16', 'fortran_order': False, 'shape': (3, 4), }", 12, "dtype '<c16'"},
        {1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3, 4), }", 12, "structured"},
        {1, "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4), }", 12, "fortran_order True"},
        {1, "{'descr': '<f8', 'fortran_order': 'no', 'shape': (3, 4), }", 12, "True or False"},
        {1, "{'descr': '<f8', 'fortran_order': Falsey, 'shape': (3, 4), }", 12, "True or False"},
        {1, "{'descr': '<f\\x38', 'fortran_order': False, 'shape': (3, 4), }", 12, "unsupported character"},
        {1, "{'descr': '<f8, 'fortran_order': False, 'shape': (3, 4), }", 12, "bad header"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 11, "data truncated"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 0, "data truncated"},
        {2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 13, "trailing bytes"},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000,), }", 12, "data truncated"},
    };
    char p[8192];
    rb_test_suite_path(p, sizeof p, "bad.npy");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        write_npy(p, cases[c].major, cases[c].dict, cases[c].ndata, 0);
        expect_refusal(ctx, p, RB_EFORMAT, cases[c].needle);
    }
    /* A few stray bytes (not a whole double) after the data. */
    write_npy(p, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, 3);
    expect_refusal(ctx, p, RB_EFORMAT, "trailing bytes");
    /* A NUL byte inside the header. */
    size_t len;
    unsigned char *b = build_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, 0, &len);
    b[20] = '\0';
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "bad header");
    free(b);
}

static void test_refuse_framing(void **state)
{
    rb_context *ctx = *state;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "frame.npy");
    size_t len;
    unsigned char *b = build_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, 0, &len);

    rb_test_write_file(p, b, 0);
    expect_refusal(ctx, p, RB_EFORMAT, "bad magic");
    rb_test_write_file(p, b, 5);
    expect_refusal(ctx, p, RB_EFORMAT, "too short");
    static const char zip[] = "PK\x03\x04 this is a zip file, not npy";
    rb_test_write_file(p, zip, sizeof zip - 1);
    expect_refusal(ctx, p, RB_EFORMAT, "bad magic");
    b[1] = 'M';
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "bad magic");
    b[1] = 'N';

    b[6] = 4;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "version 4.0");
    b[6] = 1, b[7] = 1;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "version 1.1");
    b[6] = 0, b[7] = 0;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "version 0.0");
    b[6] = 1, b[7] = 0;

    rb_test_write_file(p, b, 9);
    expect_refusal(ctx, p, RB_EFORMAT, "header length field");
    b[8] = 0xe8, b[9] = 0x03; /* 1000 bytes of header in a 200-byte file */
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "beyond the end of the file");
    b[8] = 0xff, b[9] = 0xff;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "header length 65535 goes beyond");
    free(b);

    /* Version 2.0 with a 4-byte header length: beyond the 1 MiB limit, and beyond the file. */
    b = build_npy(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12, 0, &len);
    b[8] = 0xff, b[9] = 0xff, b[10] = 0xff, b[11] = 0x7f;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "1 MiB");
    b[8] = 0x00, b[9] = 0x00, b[10] = 0x01, b[11] = 0x00;
    rb_test_write_file(p, b, len);
    expect_refusal(ctx, p, RB_EFORMAT, "beyond the end of the file");
    rb_test_write_file(p, b, 11);
    expect_refusal(ctx, p, RB_EFORMAT, "header length field");
    free(b);

    /* Not there, and not a file. */
    rb_test_suite_path(p, sizeof p, "does-not-exist.npy");
    expect_refusal(ctx, p, RB_ENOTFOUND, "No such file");
    rb_test_suite_path(p, sizeof p, "does-not-exist/x.npy");
    expect_refusal(ctx, p, RB_ENOTFOUND, "No such file");
    expect_refusal(ctx, rb_test_suite_dir(), RB_EIO, "directory");
}

/* Every truncation of a valid file and random corruptions of its header: a
 * clean refusal or a valid tensor, never a crash, an over-read or a leak. */
static void test_hostile_input(void **state)
{
    (void)state;
    rb_failing_alloc fa = {-1, 0};
    rb_allocator a = rb_failing_allocator(&fa);
    rb_context *ctx;
    assert_int_equal(rb_context_create(&ctx, &a), RB_OK);
    long base = fa.live;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "hostile.npy");
    size_t len;
    unsigned char *b = build_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 6, 0, &len);
    for (size_t cut = 0; cut < len; cut++) {
        rb_test_write_file(p, b, cut);
        rb_tensor out = sentinel();
        rb_status st = rb_npy_read(ctx, p, &out);
        assert_int_equal(st, RB_EFORMAT);
        assert_untouched(&out);
        assert_int_equal(fa.live, base);
    }
    rb_test_rng r = {77};
    unsigned char *c = malloc(len);
    assert_non_null(c);
    int accepted = 0;
    for (int trial = 0; trial < 4000; trial++) {
        memcpy(c, b, len);
        int flips = 1 + trial % 3;
        for (int k = 0; k < flips; k++) {
            size_t pos = (size_t)rb_test_uniform(&r, 0.0, 64.0);
            const char alphabet[] = "(),:'\"{} 0123456789-<>fT\n\x00\xff";
            c[pos] = trial % 2 ? (unsigned char)rb_test_uniform(&r, 0.0, 256.0)
                               : (unsigned char)alphabet[(size_t)rb_test_uniform(&r, 0.0, sizeof alphabet - 1)];
        }
        rb_test_write_file(p, c, len);
        rb_tensor out = sentinel();
        rb_status st = rb_npy_read(ctx, p, &out);
        if (st == RB_OK) {
            accepted++;
            assert_true(rb_tensor_count(&out) == 6);
            rb_tensor_release(ctx, &out);
        } else {
            assert_int_equal(st, RB_EFORMAT);
            assert_untouched(&out);
        }
        assert_int_equal(fa.live, base);
    }
    assert_true(accepted > 0); /* harmless flips (padding spaces) still read */
    free(c);
    free(b);
    rb_context_free(ctx);
    assert_int_equal(fa.live, 0);
}

/* Allocation failures while reading and writing: an error, no leak, files intact. */
static void test_allocation_failures(void **state)
{
    (void)state;
    rb_failing_alloc fa = {-1, 0};
    rb_allocator a = rb_failing_allocator(&fa);
    rb_context *ctx;
    assert_int_equal(rb_context_create(&ctx, &a), RB_OK);
    long base = fa.live;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "alloc.npy");
    rb_tensor x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_2d(2, 1, 3, 3)));
    rb_test_rng r = {5};
    rb_test_fill(&r, &x, -1, 1);
    RB_CHECK(ctx, rb_npy_write(ctx, p, &x));

    for (long budget = 0; budget < 2; budget++) {
        fa.budget = budget;
        rb_tensor out = sentinel();
        rb_status st = rb_npy_read(ctx, p, &out);
        assert_int_equal(st, RB_ENOMEM);
        assert_non_null(strstr(rb_context_message(ctx), p));
        assert_untouched(&out);
        assert_int_equal(fa.live, base + 1);
    }
    /* A failed overwrite leaves the old file as it was. */
    rb_tensor z;
    fa.budget = -1;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &z, rb_shape_vec(4)));
    fa.budget = 0;
    RB_EXPECT(ctx, RB_ENOMEM, p, rb_npy_write(ctx, p, &z));
    fa.budget = -1;
    rb_tensor y;
    RB_CHECK(ctx, rb_npy_read(ctx, p, &y));
    assert_true(rb_shape_equal(y.shape, x.shape));
    assert_memory_equal(y.data, x.data, rb_tensor_count(&x) * sizeof(double));
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &y);
    rb_tensor_release(ctx, &z);
    assert_int_equal(fa.live, base);
    rb_context_free(ctx);
    assert_int_equal(fa.live, 0);
}

/* ---- writing: errors and atomicity -------------------------------------------------------------- */

static void test_write_errors(void **state)
{
    rb_context *ctx = *state;
    rb_tensor x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_vec(3)));
    char p[8192], sub[8192 + 16];

    /* Into a directory that does not exist. */
    rb_test_suite_path(p, sizeof p, "no-such-dir/x.npy");
    RB_EXPECT(ctx, RB_EIO, "No such file or directory", rb_npy_write(ctx, p, &x));
    assert_non_null(strstr(rb_context_message(ctx), p));
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    struct stat sb;
    assert_int_not_equal(stat(rb_test_suite_path(sub, sizeof sub, "no-such-dir"), &sb), 0);

    /* The rename fails (the destination is a non-empty directory): the temp file is removed. */
    rb_test_suite_path(p, sizeof p, "occupied.npy");
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(sub, sizeof sub, "%s/keep", p);
    rb_test_write_file(sub, "x", 1);
    RB_EXPECT(ctx, RB_EIO, "cannot rename", rb_npy_write(ctx, p, &x));
    assert_non_null(strstr(rb_context_message(ctx), p));
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    assert_int_equal(stat(sub, &sb), 0);

    /* Bad arguments. */
    RB_EXPECT(ctx, RB_ENULL, "path", rb_npy_write(ctx, NULL, &x));
    RB_EXPECT(ctx, RB_EINVAL, "empty", rb_npy_write(ctx, "", &x));
    RB_EXPECT(ctx, RB_ENULL, "t is NULL", rb_npy_write(ctx, "never.npy", NULL));
    rb_tensor empty = {{1, 1, 1, 1, 0}, x.data, false};
    RB_EXPECT(ctx, RB_EINVAL, "zero dimension", rb_npy_write(ctx, "never.npy", &empty));
    rb_tensor nodata = {{1, 1, 1, 1, 3}, NULL, false};
    RB_EXPECT(ctx, RB_ENULL, "no data", rb_npy_write(ctx, "never.npy", &nodata));
    assert_int_equal(rb_npy_write(NULL, "never.npy", &x), RB_ENULL);
    assert_int_not_equal(access("never.npy", F_OK), 0);
    rb_tensor out = sentinel();
    RB_EXPECT(ctx, RB_ENULL, "path", rb_npy_read(ctx, NULL, &out));
    RB_EXPECT(ctx, RB_ENULL, "out", rb_npy_read(ctx, "x.npy", NULL));
    assert_int_equal(rb_npy_read(NULL, "x.npy", &out), RB_ENULL);
    assert_untouched(&out);
    rb_tensor_release(ctx, &x);
}

static void test_overwrite(void **state)
{
    rb_context *ctx = *state;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "over.npy");
    rb_tensor a, b, r;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &a, rb_shape_2d(1, 2, 5, 5)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &b, rb_shape_vec(7)));
    rb_test_rng rng = {9};
    rb_test_fill(&rng, &a, -1, 1);
    rb_test_fill(&rng, &b, -1, 1);
    RB_CHECK(ctx, rb_npy_write(ctx, p, &a));
    assert_int_equal(chmod(p, 0640), 0);
    for (int k = 0; k < 5; k++) {
        const rb_tensor *w = k % 2 ? &a : &b;
        RB_CHECK(ctx, rb_npy_write(ctx, p, w));
        assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
        RB_CHECK(ctx, rb_npy_read(ctx, p, &r));
        assert_true(rb_shape_equal(r.shape, w->shape));
        assert_memory_equal(r.data, w->data, rb_tensor_count(w) * sizeof(double));
        rb_tensor_release(ctx, &r);
    }
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0640); /* the replaced file's mode is kept */
    rb_tensor_release(ctx, &a);
    rb_tensor_release(ctx, &b);
}

/* ---- NumPy as the oracle ------------------------------------------------------------------------ */

static const char oracle_py[] =
    "import io, sys\n"
    "import numpy as np\n"
    "np.seterr(all='ignore')  # 2*DBL_MAX -> inf on purpose\n"
    "d = sys.argv[1]\n"
    "def saved(a):\n"
    "    b = io.BytesIO(); np.save(b, a); return b.getvalue()\n"
    "def raw(name):\n"
    "    with open(d + '/' + name, 'rb') as f: return f.read()\n"
    "x = np.load(d + '/c.npy')\n"
    "assert x.dtype == np.float64 and x.shape == (2, 3, 1, 4, 5), (x.dtype, x.shape)\n"
    "assert raw('c.npy') == saved(x), 'the C writer differs from np.save'\n"
    "assert raw('hw_2d.npy') == saved(np.arange(12.0).reshape(3, 4) / 4 - 1), 'hw_2d.npy'\n"
    "assert raw('hw_1d.npy') == saved(np.array([1.5, -2.0, 3.25])), 'hw_1d.npy'\n"
    "assert raw('hw_0d.npy') == saved(np.array(7.0)), 'hw_0d.npy'\n"
    "np.save(d + '/py_2x.npy', 2 * x)\n"
    "np.save(d + '/py_2d.npy', np.arange(12.0).reshape(3, 4) / 7)\n"
    "np.save(d + '/py_0d.npy', np.float64(3.5))\n"
    "for v in (2, 3):\n"
    "    with open(d + '/py_v%d.npy' % v, 'wb') as f: np.lib.format.write_array(f, x, version=(v, 0))\n"
    "np.save(d + '/py_f4.npy', x.astype(np.float32))\n"
    "np.save(d + '/py_be.npy', x.astype('>f8'))\n"
    "np.save(d + '/py_i8.npy', np.arange(6).reshape(2, 3))\n"
    "np.save(d + '/py_fortran.npy', np.asfortranarray(np.ones((3, 4))))\n"
    "np.save(d + '/py_empty.npy', np.zeros((0, 3)))\n"
    "np.save(d + '/py_obj.npy', np.array([1, 'a'], dtype=object), allow_pickle=True)\n"
    "np.save(d + '/py_rec.npy', np.zeros(3, dtype=[('a', '<f8'), ('b', '<i4')]))\n";

static int have_numpy(void)
{
    int rc = system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1");
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

static void test_numpy_oracle(void **state)
{
    rb_context *ctx = *state;
    if (!have_numpy()) {
        print_message("SKIP: /usr/bin/python3 with numpy is not available; NumPy cross-check not run\n");
        skip();
    }
    assert_null(strchr(rb_test_suite_dir(), '\''));
    char p[8192], cmd[16384];
    write_hand_files();
    rb_tensor x;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &x, rb_shape_3d(2, 3, 1, 4, 5)));
    fill_with_specials(&x, 31);
    RB_CHECK(ctx, rb_npy_write(ctx, rb_test_suite_path(p, sizeof p, "c.npy"), &x));
    rb_test_write_file(rb_test_suite_path(p, sizeof p, "oracle.py"), oracle_py, sizeof oracle_py - 1);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/oracle.py' '%s' 1>&2", rb_test_suite_dir(), rb_test_suite_dir());
    int rc = system(cmd);
    assert_true(rc != -1 && WIFEXITED(rc));
    if (WEXITSTATUS(rc) != 0) fail_msg("NumPy oracle script failed (exit %d), see stderr", WEXITSTATUS(rc));

    rb_tensor y;
    RB_CHECK(ctx, rb_npy_read(ctx, rb_test_suite_path(p, sizeof p, "py_2x.npy"), &y));
    assert_true(rb_shape_equal(y.shape, x.shape));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) {
        double want = 2.0 * x.data[i];
        assert_memory_equal(&y.data[i], &want, sizeof want);
    }
    rb_tensor_release(ctx, &y);
    for (int v = 2; v <= 3; v++) {
        char name[32];
        snprintf(name, sizeof name, "py_v%d.npy", v);
        RB_CHECK(ctx, rb_npy_read(ctx, rb_test_suite_path(p, sizeof p, name), &y));
        assert_true(rb_shape_equal(y.shape, x.shape));
        assert_memory_equal(y.data, x.data, rb_tensor_count(&x) * sizeof(double));
        rb_tensor_release(ctx, &y);
    }
    RB_CHECK(ctx, rb_npy_read(ctx, rb_test_suite_path(p, sizeof p, "py_2d.npy"), &y));
    assert_true(rb_shape_equal(y.shape, rb_shape_2d(1, 1, 3, 4)));
    for (int i = 0; i < 12; i++) assert_true(y.data[i] == (double)i / 7.0);
    rb_tensor_release(ctx, &y);
    RB_CHECK(ctx, rb_npy_read(ctx, rb_test_suite_path(p, sizeof p, "py_0d.npy"), &y));
    assert_true(rb_shape_equal(y.shape, rb_shape_vec(1)) && y.data[0] == 3.5);
    rb_tensor_release(ctx, &y);

    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_f4.npy"), RB_EFORMAT, "dtype '<f4'");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_be.npy"), RB_EFORMAT, "dtype '>f8'");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_i8.npy"), RB_EFORMAT, "dtype '<i8'");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_fortran.npy"), RB_EFORMAT, "fortran_order True");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_empty.npy"), RB_EFORMAT, "zero-size");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_obj.npy"), RB_EFORMAT, "dtype '|O'");
    expect_refusal(ctx, rb_test_suite_path(p, sizeof p, "py_rec.npy"), RB_EFORMAT, "structured");
    rb_tensor_release(ctx, &x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_written_layout, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_read_numpy_bytes, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_read_variants, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_headers, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_framing, rb_test_setup, rb_test_teardown),
        cmocka_unit_test(test_hostile_input),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test_setup_teardown(test_write_errors, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_overwrite, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_numpy_oracle, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests_name("npy", tests, group_setup, group_teardown);
}
