/* test_data.c — data sets: IDX/gzip parsing against files written here with
 * zlib (known content), every refusal (missing, truncated, corrupt, wrong
 * magic, inconsistent counts, labels out of range), the real Fashion-MNIST
 * against its published properties (60000/10000 samples, 6000/1000 per class,
 * mean pixel 0.2860), synthetic data against its defining formula, Poisson pairs
 * (their u against LAPACK dpbsv on the solver's operator and against a 5-point
 * stencil with harmonic face coefficients written here; their f's scale against
 * its closed-form expectation), and the seeded shuffle (a permutation, a function
 * of (seed, epoch) only). */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char g_dir[4096];

static int group_setup(void **state)
{
    (void)state;
    return rb_test_scratch_dir(g_dir, sizeof g_dir, "data");
}

static void remove_files(void)
{
    const char *names[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                           "t10k-labels-idx1-ubyte.gz"};
    char p[8192];
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, names[i]);
        unlink(p);
    }
}

static int group_teardown(void **state)
{
    (void)state;
    rb_test_remove_tree(g_dir);
    return 0;
}

/* Write an IDX file: header bytes as given (magic + big-endian dims), then data; `gzip` 0 writes it raw. */
static void write_idx(const char *name, const unsigned char *magic, const uint32_t *dims, unsigned ndim,
                      const unsigned char *data, size_t len, int gzip)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    unsigned char head[16];
    memcpy(head, magic, 4);
    for (unsigned k = 0; k < ndim; k++) {
        head[4 + 4 * k] = (unsigned char)(dims[k] >> 24);
        head[5 + 4 * k] = (unsigned char)(dims[k] >> 16);
        head[6 + 4 * k] = (unsigned char)(dims[k] >> 8);
        head[7 + 4 * k] = (unsigned char)dims[k];
    }
    if (gzip) {
        gzFile f = gzopen(p, "wb");
        assert_non_null(f);
        assert_int_equal(gzwrite(f, head, 4 + 4 * ndim), (int)(4 + 4 * ndim));
        if (len) assert_int_equal(gzwrite(f, data, (unsigned)len), (int)len);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        fwrite(head, 1, 4 + 4 * ndim, f);
        fwrite(data, 1, len, f);
        fclose(f);
    }
}

static const unsigned char MAGIC3[4] = {0, 0, 8, 3}, MAGIC1[4] = {0, 0, 8, 1};

/* A small valid split: `count` images whose pixel (i, r, c) = (i * 7 + r * 28 + c) mod 256, labels i mod 10. */
static void write_split(const char *prefix, uint32_t count, size_t image_bytes_cut, uint32_t label_count, int bad_label)
{
    size_t len = (size_t)count * 784;
    unsigned char *img = malloc(len), *lab = malloc(label_count);
    for (size_t i = 0; i < len; i++) img[i] = (unsigned char)(((i / 784) * 7 + i % 784) % 256);
    for (uint32_t i = 0; i < label_count; i++) lab[i] = (unsigned char)(i % 10);
    if (bad_label) lab[label_count - 1] = 10;
    char in[64], ln[64];
    snprintf(in, sizeof in, "%s-images-idx3-ubyte.gz", prefix);
    snprintf(ln, sizeof ln, "%s-labels-idx1-ubyte.gz", prefix);
    uint32_t idims[3] = {count, 28, 28}, ldims[1] = {label_count};
    write_idx(in, MAGIC3, idims, 3, img, len - image_bytes_cut, 1);
    write_idx(ln, MAGIC1, ldims, 1, lab, label_count, 1);
    free(img);
    free(lab);
}

static void idx_round_trip(void **state)
{
    rb_context *ctx = *state;
    write_split("train", 13, 0, 13, 0);
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TRAIN, &ds));
    assert_int_equal(ds.count, 13);
    assert_int_equal(ds.classes, 10);
    assert_true(rb_shape_equal(ds.sample, rb_shape_2d(1, 1, 28, 28)));
    for (size_t i = 0; i < 13; i++) {
        assert_int_equal(ds.labels[i], (int)(i % 10));
        for (size_t r = 0; r < 28; r++)
            for (size_t c = 0; c < 28; c++)
                assert_true(ds.x[i * 784 + r * 28 + c] == ((i * 7 + r * 28 + c) % 256) / 255.0);
    }
    rb_dataset_release(ctx, &ds);
    assert_null(ds.x);
    remove_files();
}

static void idx_refusals(void **state)
{
    rb_context *ctx = *state;
    rb_dataset ds = {.count = 12345};
    /* missing: the message names the Debian package */
    RB_EXPECT(ctx, RB_ENOTFOUND, "dataset-fashion-mnist", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* truncated image data */
    write_split("t10k", 5, 100, 5, 0);
    RB_EXPECT(ctx, RB_EFORMAT, "truncated", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* label count differs from image count */
    write_split("t10k", 5, 0, 4, 0);
    RB_EXPECT(ctx, RB_EFORMAT, "4 labels but", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* a label out of range */
    write_split("t10k", 5, 0, 5, 1);
    RB_EXPECT(ctx, RB_EFORMAT, "out of range", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* wrong magic (a label file where images belong) */
    write_split("t10k", 5, 0, 5, 0);
    unsigned char lab[5] = {0};
    uint32_t ldims[1] = {5};
    write_idx("t10k-images-idx3-ubyte.gz", MAGIC1, ldims, 1, lab, 5, 1);
    RB_EXPECT(ctx, RB_EFORMAT, "not an IDX file", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* images of the wrong size */
    uint32_t idims[3] = {5, 27, 29};
    unsigned char *img = calloc(5 * 27 * 29, 1);
    write_idx("t10k-images-idx3-ubyte.gz", MAGIC3, idims, 3, img, 5 * 27 * 29, 1);
    RB_EXPECT(ctx, RB_EFORMAT, "28x28", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    free(img);
    /* a header announcing absurd sizes is refused before any allocation */
    uint32_t huge[3] = {0xffffffffu, 28, 28};
    write_idx("t10k-images-idx3-ubyte.gz", MAGIC3, huge, 3, NULL, 0, 1);
    RB_EXPECT(ctx, RB_EFORMAT, "implausible", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds));
    /* a corrupt gzip stream: a valid gzip file with bytes flipped in the middle */
    write_split("t10k", 50, 0, 50, 0);
    char p[8192];
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", g_dir);
    FILE *f = fopen(p, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    for (long at = 20; at < size - 10; at += 37) {
        fseek(f, at, SEEK_SET);
        fputc(0xA5, f);
    }
    fclose(f);
    rb_status st = rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, &ds);
    assert_int_equal(st, RB_EFORMAT);
    /* nothing was written to the output on any failure */
    assert_int_equal(ds.count, 12345);
    assert_null(ds.x);
    /* arguments */
    RB_EXPECT(ctx, RB_ENULL, "ds is NULL", rb_dataset_fashion_mnist(ctx, g_dir, RB_SPLIT_TEST, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "split", rb_dataset_fashion_mnist(ctx, g_dir, (rb_split)7, &ds));
    remove_files();
}

/* The real data set (Debian's dataset-fashion-mnist) against its published properties. */
static void fashion_mnist_real(void **state)
{
    rb_context *ctx = *state;
    rb_dataset tr, te;
    rb_status st = rb_dataset_fashion_mnist(ctx, NULL, RB_SPLIT_TRAIN, &tr);
    if (st == RB_ENOTFOUND) skip(); /* scripts/setup.sh installs it; CI has it */
    RB_CHECK(ctx, st);
    RB_CHECK(ctx, rb_dataset_fashion_mnist(ctx, NULL, RB_SPLIT_TEST, &te));
    assert_int_equal(tr.count, 60000);
    assert_int_equal(te.count, 10000);
    size_t per_class[2][10] = {{0}};
    for (size_t i = 0; i < tr.count; i++) per_class[0][tr.labels[i]]++;
    for (size_t i = 0; i < te.count; i++) per_class[1][te.labels[i]]++;
    for (int c = 0; c < 10; c++) {
        assert_int_equal(per_class[0][c], 6000);
        assert_int_equal(per_class[1][c], 1000);
    }
    double sum = 0, sq = 0, lo = 1, hi = 0;
    size_t total = tr.count * 784;
    for (size_t i = 0; i < total; i++) {
        sum += tr.x[i], sq += tr.x[i] * tr.x[i];
        lo = fmin(lo, tr.x[i]), hi = fmax(hi, tr.x[i]);
    }
    double mean = sum / (double)total, sd = sqrt(sq / (double)total - mean * mean);
    /* the widely used normalisation constants of Fashion-MNIST's training set: 0.2860, 0.3530 */
    assert_true(fabs(mean - 0.2860) < 5e-5);
    assert_true(fabs(sd - 0.3530) < 5e-5);
    assert_true(lo == 0.0 && hi == 1.0);
    RB_CHECK(ctx, rb_dataset_standardize(ctx, &te, mean, sd));
    RB_EXPECT(ctx, RB_EINVAL, "std > 0", rb_dataset_standardize(ctx, &te, mean, 0.0));
    rb_dataset_release(ctx, &tr);
    rb_dataset_release(ctx, &te);
}

static void synthetic_formula(void **state)
{
    rb_context *ctx = *state;
    rb_dataset a, b, t;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 50, 4, 3, 0.0, 11, RB_SPLIT_TRAIN, &a));
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 50, 4, 3, 0.0, 11, RB_SPLIT_TRAIN, &b));
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 50, 4, 3, 0.0, 11, RB_SPLIT_TEST, &t));
    assert_memory_equal(a.x, b.x, 50 * 4 * sizeof(double));
    assert_memory_equal(a.y, b.y, 50 * 3 * sizeof(double));
    assert_true(memcmp(a.x, t.x, 50 * 4 * sizeof(double)) != 0);
    for (size_t i = 0; i < 50 * 4; i++) assert_true(a.x[i] >= -1 && a.x[i] <= 1);
    assert_int_equal(a.target_len, 3);
    rb_dataset_release(ctx, &a);
    rb_dataset_release(ctx, &b);
    rb_dataset_release(ctx, &t);

    /* One teacher for both splits: with d_in = d_out = 1, y = a tanh(b x) is odd and
     * monotone in x, so the union of both splits, sorted by x, has monotone y with
     * the sign of x times one fixed sign. */
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 200, 1, 1, 0.0, 3, RB_SPLIT_TRAIN, &a));
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 200, 1, 1, 0.0, 3, RB_SPLIT_TEST, &t));
    double xs[400], ys[400];
    for (size_t i = 0; i < 200; i++) xs[i] = a.x[i], ys[i] = a.y[i], xs[200 + i] = t.x[i], ys[200 + i] = t.y[i];
    for (size_t i = 1; i < 400; i++) /* insertion sort by x */
        for (size_t j = i; j > 0 && xs[j - 1] > xs[j]; j--) {
            double tx = xs[j], ty = ys[j];
            xs[j] = xs[j - 1], ys[j] = ys[j - 1], xs[j - 1] = tx, ys[j - 1] = ty;
        }
    double dir = ys[399] > ys[0] ? 1 : -1;
    for (size_t i = 1; i < 400; i++) assert_true(dir * (ys[i] - ys[i - 1]) >= 0);
    for (size_t i = 0; i < 400; i++) assert_true(dir * ys[i] * xs[i] >= 0);
    rb_dataset_release(ctx, &a);
    rb_dataset_release(ctx, &t);

    /* The noise is Gaussian with the asked standard deviation, on the same x:
     * 20000 differences have sample mean ~ 0 (5 sigma: 5 * 0.1 / sqrt(20000)) and std 0.1 +- 3 %. */
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 20000, 2, 1, 0.0, 9, RB_SPLIT_TRAIN, &a));
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 20000, 2, 1, 0.1, 9, RB_SPLIT_TRAIN, &b));
    assert_memory_equal(a.x, b.x, 20000 * 2 * sizeof(double));
    double m = 0, v = 0;
    for (size_t i = 0; i < 20000; i++) m += b.y[i] - a.y[i];
    m /= 20000;
    for (size_t i = 0; i < 20000; i++) v += (b.y[i] - a.y[i] - m) * (b.y[i] - a.y[i] - m);
    assert_true(fabs(m) < 5 * 0.1 / sqrt(20000.0));
    assert_true(fabs(sqrt(v / 19999) - 0.1) < 0.003);
    rb_dataset_release(ctx, &a);
    RB_EXPECT(ctx, RB_EINVAL, "noise", rb_dataset_synthetic(ctx, 5, 2, 1, -1.0, 1, RB_SPLIT_TRAIN, &b));
    RB_EXPECT(ctx, RB_EINVAL, "count = 0", rb_dataset_synthetic(ctx, 0, 2, 1, 0.0, 1, RB_SPLIT_TRAIN, &b));
    rb_dataset_release(ctx, &b);
}

static void batcher_permutation(void **state)
{
    rb_context *ctx = *state;
    rb_dataset ds;
    RB_CHECK(ctx, rb_dataset_synthetic(ctx, 103, 2, 1, 0.0, 5, RB_SPLIT_TRAIN, &ds));
    rb_batcher b, b2;
    RB_CHECK(ctx, rb_batcher_init(ctx, &b, &ds, 10, 42));
    RB_CHECK(ctx, rb_batcher_init(ctx, &b2, &ds, 10, 42));
    double xbuf[20], xbuf2[20], y[10], y2[10];
    rb_tensor x, x2;
    RB_CHECK(ctx, rb_tensor_view(ctx, &x, xbuf, rb_shape_vec(20)));
    RB_CHECK(ctx, rb_tensor_view(ctx, &x2, xbuf2, rb_shape_vec(20)));
    double first_epoch0 = 0;
    for (size_t epoch = 0; epoch < 3; epoch++) {
        int seen[103] = {0};
        RB_CHECK(ctx, rb_batcher_epoch(ctx, &b, epoch));
        RB_CHECK(ctx, rb_batcher_epoch(ctx, &b2, epoch)); /* a second batcher ("resumed run") agrees */
        size_t count, count2, batches = 0, total = 0;
        for (;;) {
            RB_CHECK(ctx, rb_batcher_next(ctx, &b, &x, NULL, y, &count));
            RB_CHECK(ctx, rb_batcher_next(ctx, &b2, &x2, NULL, y2, &count2));
            assert_int_equal(count, count2);
            if (count == 0) break;
            assert_memory_equal(xbuf, xbuf2, count * 2 * sizeof(double));
            assert_int_equal(x.shape.n, count);
            if (epoch == 0 && batches == 0) first_epoch0 = xbuf[0];
            if (epoch == 1 && batches == 0) assert_true(xbuf[0] != first_epoch0);
            for (size_t s = 0; s < count; s++) {
                /* find the sample: its x and y must match the data set's row */
                size_t hit = 103;
                for (size_t i = 0; i < 103; i++)
                    if (ds.x[2 * i] == xbuf[2 * s] && ds.x[2 * i + 1] == xbuf[2 * s + 1]) hit = i;
                assert_true(hit < 103);
                assert_true(ds.y[hit] == y[s]);
                seen[hit]++;
            }
            batches++, total += count;
        }
        assert_int_equal(batches, 11); /* 10 full batches and one of 3 */
        assert_int_equal(total, 103);
        for (size_t i = 0; i < 103; i++) assert_int_equal(seen[i], 1);
    }
    /* evaluation order: the data order */
    rb_batcher_set_shuffle(&b, 0);
    RB_CHECK(ctx, rb_batcher_epoch(ctx, &b, 7));
    size_t count;
    RB_CHECK(ctx, rb_batcher_next(ctx, &b, &x, NULL, NULL, &count));
    assert_memory_equal(xbuf, ds.x, 20 * sizeof(double));
    int32_t lab[10];
    RB_EXPECT(ctx, RB_EINVAL, "without labels", rb_batcher_next(ctx, &b, &x, lab, NULL, &count));
    RB_EXPECT(ctx, RB_EINVAL, "batch size is 0", rb_batcher_init(ctx, &b2, &ds, 0, 1));
    rb_batcher_release(ctx, &b);
    rb_batcher_release(ctx, &b2);
    rb_dataset_release(ctx, &ds);
}

/* Oracles: LAPACK dpbsv on the solver's fine operator, and -div(a grad u) assembled here as the
 * 5-point stencil with harmonic-mean face coefficients (multigrid.h's discretisation). */
static void poisson_solves(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 7, g = n * n, m = n + 2, count = 3;
    rb_dataset ds, again, more, test;
    RB_CHECK(ctx, rb_dataset_poisson(ctx, n, count, 5, RB_SPLIT_TRAIN, &ds));
    assert_int_equal(ds.target_len, g);
    assert_true(rb_shape_equal(ds.sample, rb_shape_2d(1, 2, n, n)));
    assert_null(ds.labels);
    double coef[81], f[49], u[49], h = 1.0 / (double)(n + 1);
    for (size_t s = 0; s < count; s++) {
        RB_CHECK(ctx, rb_poisson_pair(ctx, n, 5, RB_SPLIT_TRAIN, s, coef, f));
        for (size_t i = 0; i < g; i++) {
            assert_true(fabs(ds.x[2 * s * g + i] * RB_POISSON_SF - f[i]) <= 1e-14 * (1 + fabs(f[i])));
            const double la = log(coef[(i / n + 1) * m + i % n + 1]);
            assert_true(fabs(ds.x[(2 * s + 1) * g + i] - la) <= 1e-14);
            u[i] = RB_POISSON_SU * ds.y[s * g + i];
        }
        /* dpbsv */
        rb_mg_problem pb = {2, n, coef, 1.0};
        rb_mg_options o = rb_mg_options_default(2);
        rb_mg *mg = NULL;
        rb_tensor tf, tu;
        RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
        RB_CHECK(ctx, rb_tensor_view(ctx, &tf, f, rb_shape_2d(1, 1, n, n)));
        RB_CHECK(ctx, rb_tensor_alloc(ctx, &tu, rb_shape_2d(1, 1, n, n)));
        RB_CHECK(ctx, rb_ref_solve_spd_banded(ctx, rb_mg_operator(mg), &tf, &tu));
        double d = 0, nu = 0, r = 0, nf = 0;
        for (size_t i = 0; i < g; i++) d += (u[i] - tu.data[i]) * (u[i] - tu.data[i]), nu += tu.data[i] * tu.data[i];
        if (!(sqrt(d / nu) <= 1e-9)) fail_msg("pair %zu: |u - u_dpbsv| / |u| = %.3g", s, sqrt(d / nu));
        /* the stencil */
        for (size_t i = 1; i <= n; i++)
            for (size_t j = 1; j <= n; j++) {
                const size_t nb[4][2] = {{i - 1, j}, {i + 1, j}, {i, j - 1}, {i, j + 1}};
                const double ap = coef[i * m + j], up = u[(i - 1) * n + j - 1];
                double au = 0;
                for (int k = 0; k < 4; k++) {
                    const size_t a = nb[k][0], b = nb[k][1];
                    const double aq = coef[a * m + b], uq = a == 0 || b == 0 || a > n || b > n ? 0.0 : u[(a - 1) * n + b - 1];
                    au += 2 * ap * aq / (ap + aq) * (up - uq) / (h * h);
                }
                r += (f[(i - 1) * n + j - 1] - au) * (f[(i - 1) * n + j - 1] - au), nf += f[(i - 1) * n + j - 1] * f[(i - 1) * n + j - 1];
            }
        if (!(sqrt(r / nf) <= 1e-9)) fail_msg("pair %zu: |f - A u| / |f| = %.3g with the harmonic 5-point stencil", s, sqrt(r / nf));
        rb_tensor_release(ctx, &tu);
        rb_mg_free(ctx, mg);
    }
    /* the same draw again; a longer draw starts alike; TEST is another draw */
    RB_CHECK(ctx, rb_dataset_poisson(ctx, n, count, 5, RB_SPLIT_TRAIN, &again));
    RB_CHECK(ctx, rb_dataset_poisson(ctx, n, count + 2, 5, RB_SPLIT_TRAIN, &more));
    RB_CHECK(ctx, rb_dataset_poisson(ctx, n, count, 5, RB_SPLIT_TEST, &test));
    assert_memory_equal(ds.x, again.x, count * 2 * g * sizeof(double));
    assert_memory_equal(ds.y, again.y, count * g * sizeof(double));
    assert_memory_equal(ds.x, more.x, count * 2 * g * sizeof(double));
    for (size_t s = 0; s < count; s++) assert_true(memcmp(ds.x + 2 * s * g, test.x + 2 * s * g, g * sizeof(double)) != 0);
    /* the classical baseline: targets 0 take every allowed cycle, RB-GS V(2,1) gains > 10x per cycle */
    double zero[3] = {0, 0, 0}, big[3] = {10, 10, 10};
    rb_poisson_baseline_report rep;
    RB_CHECK(ctx, rb_poisson_baseline(ctx, &ds, 5, RB_SPLIT_TRAIN, zero, 3, &rep));
    assert_int_equal(rep.cycles_total, 9);
    assert_int_equal(rep.cycles_max, 3);
    if (!(rep.err_one_cycle > 0 && rep.err_one_cycle < 0.1)) fail_msg("error after one cycle %.3g", rep.err_one_cycle);
    RB_CHECK(ctx, rb_poisson_baseline(ctx, &ds, 5, RB_SPLIT_TRAIN, big, 3, &rep));
    assert_int_equal(rep.cycles_total, 3);
    RB_EXPECT(ctx, RB_EINVAL, "is not pair", rb_poisson_baseline(ctx, &test, 5, RB_SPLIT_TRAIN, zero, 3, &rep));
    /* bad input, *ds untouched */
    rb_dataset keep = test;
    RB_EXPECT(ctx, RB_EINVAL, "m 2^k - 1", rb_dataset_poisson(ctx, 30, 2, 1, RB_SPLIT_TRAIN, &test));
    RB_EXPECT(ctx, RB_EINVAL, "3 <= n <= 1023", rb_dataset_poisson(ctx, 1, 2, 1, RB_SPLIT_TRAIN, &test));
    RB_EXPECT(ctx, RB_EINVAL, "count = 0", rb_dataset_poisson(ctx, 7, 0, 1, RB_SPLIT_TRAIN, &test));
    RB_EXPECT(ctx, RB_EINVAL, "split", rb_dataset_poisson(ctx, 7, 2, 1, (rb_split)7, &test));
    RB_EXPECT(ctx, RB_ENULL, "ds is NULL", rb_dataset_poisson(ctx, 7, 2, 1, RB_SPLIT_TRAIN, NULL));
    assert_memory_equal(&keep, &test, sizeof keep);
    rb_dataset_release(ctx, &ds), rb_dataset_release(ctx, &again), rb_dataset_release(ctx, &more), rb_dataset_release(ctx, &test);
}

/* Oracle: closed form. f = sum d_kl sin(k pi x) sin(l pi y), d_kl ~ U(-1, 1): the grid mean of
 * E f^2 is (1/3) sum_kl mean sin^2(k pi x) mean sin^2(l pi y) = 3 ((n+1) / 2n)^2 (-> 3/4 =
 * RB_POISSON_SF^2 as n grows); over 2000 pairs the sample mean lies within 5 %. */
static void poisson_scale(void **state)
{
    rb_context *ctx = *state;
    const size_t n = 15, pairs = 2000;
    double f[225], sum = 0;
    for (size_t s = 0; s < pairs; s++) {
        RB_CHECK(ctx, rb_poisson_pair(ctx, n, 3, RB_SPLIT_TEST, s, NULL, f));
        for (size_t i = 0; i < n * n; i++) sum += f[i] * f[i];
    }
    const double mean = sum / (double)(pairs * n * n), q = (double)(n + 1) / (double)(2 * n), want = 3 * q * q;
    if (!(fabs(mean / want - 1) < 0.05)) fail_msg("mean f^2 %.4f, expected %.4f", mean, want);
    assert_true(fabs(RB_POISSON_SF * RB_POISSON_SF - 0.75) < 1e-15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(idx_round_trip, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(idx_refusals, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(fashion_mnist_real, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(synthetic_formula, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(batcher_permutation, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(poisson_solves, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(poisson_scale, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
