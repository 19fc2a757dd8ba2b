/* data.c — Fashion-MNIST (IDX over gzip), synthetic regression data, Poisson pairs from the
 * multigrid solver, seeded mini-batches (see data.h). */
#include "resbridge/data.h"
#include "resbridge/multigrid.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <zlib.h>

#define FMNIST_PACKAGE "dataset-fashion-mnist"
#define IDX_MAX_ITEMS 10000000u /* far beyond any real file: bounds the allocation a header can ask for */

/* ---- IDX over gzip ----------------------------------------------------------------------------
 *
 * An IDX file is: two zero bytes, a type byte (0x08 = unsigned byte), the number
 * of dimensions, each dimension as a big-endian 32-bit integer, then the data. */

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

/* Read exactly len bytes; RB_EFORMAT naming the file if it ends early or is not valid gzip. */
static rb_status gz_read_all(rb_context *ctx, gzFile f, const char *path, const char *what, unsigned char *buf,
                             size_t len)
{
    size_t got = 0;
    while (got < len) {
        unsigned chunk = len - got > (1u << 30) ? 1u << 30 : (unsigned)(len - got);
        int r = gzread(f, buf + got, chunk);
        if (r < 0) {
            int err;
            const char *msg = gzerror(f, &err);
            return rb_fail(ctx, RB_EFORMAT, "%s: not a valid gzip stream while reading the %s (%s)", path, what, msg);
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    if (got < len)
        return rb_fail(ctx, RB_EFORMAT, "%s: truncated: the %s needs %zu bytes, the file has %zu", path, what, len, got);
    return RB_OK;
}

/* Read an IDX file of unsigned bytes with `ndim` dimensions into a new buffer. */
static rb_status idx_read(rb_context *ctx, const char *path, unsigned ndim, uint32_t *dims, unsigned char **data)
{
    FILE *probe = fopen(path, "rb");
    if (probe == NULL) {
        if (errno == ENOENT)
            return rb_fail(ctx, RB_ENOTFOUND, "%s: not found (Fashion-MNIST comes with the Debian package %s: "
                                              "apt-get install %s, or run scripts/setup.sh)",
                           path, FMNIST_PACKAGE, FMNIST_PACKAGE);
        return rb_fail(ctx, RB_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    fclose(probe);
    gzFile f = gzopen(path, "rb");
    if (f == NULL) return rb_fail(ctx, RB_EIO, "%s: cannot open with zlib", path);
    unsigned char head[4 + 4 * 3];
    rb_status st = gz_read_all(ctx, f, path, "header", head, 4);
    if (st == RB_OK && (head[0] != 0 || head[1] != 0 || head[2] != 0x08 || head[3] != ndim))
        st = rb_fail(ctx, RB_EFORMAT, "%s: not an IDX file of unsigned bytes with %u dimensions "
                                      "(magic %02x %02x %02x %02x, expected 00 00 08 %02x)",
                     path, ndim, head[0], head[1], head[2], head[3], ndim);
    if (st == RB_OK) st = gz_read_all(ctx, f, path, "header", head + 4, 4 * (size_t)ndim);
    size_t total = 1;
    for (unsigned k = 0; st == RB_OK && k < ndim; k++) {
        dims[k] = be32(head + 4 + 4 * k);
        if (dims[k] == 0 || dims[k] > IDX_MAX_ITEMS || total > SIZE_MAX / dims[k] || total * dims[k] > (size_t)1 << 34)
            st = rb_fail(ctx, RB_EFORMAT, "%s: implausible dimension %u = %u", path, k, dims[k]);
        else
            total *= dims[k];
    }
    unsigned char *buf = NULL;
    if (st == RB_OK) {
        buf = rb_malloc(ctx, total);
        if (buf == NULL) st = RB_ENOMEM;
    }
    if (st == RB_OK) st = gz_read_all(ctx, f, path, "data", buf, total);
    if (st == RB_OK) {
        unsigned char extra;
        int r = gzread(f, &extra, 1);
        if (r != 0)
            st = rb_fail(ctx, RB_EFORMAT, "%s: %s after the %zu data bytes the header announces", path,
                         r > 0 ? "extra bytes" : "corrupt gzip stream", total);
    }
    gzclose(f);
    if (st != RB_OK) {
        rb_free(ctx, buf);
        return st;
    }
    *data = buf;
    return RB_OK;
}

rb_status rb_dataset_fashion_mnist(rb_context *ctx, const char *dir, rb_split split, rb_dataset *ds)
{
    if (ctx == NULL) return RB_ENULL;
    if (ds == NULL) return rb_fail(ctx, RB_ENULL, "rb_dataset_fashion_mnist: ds is NULL");
    if (split != RB_SPLIT_TRAIN && split != RB_SPLIT_TEST)
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_fashion_mnist: split = %d, must be RB_SPLIT_TRAIN or RB_SPLIT_TEST", (int)split);
    if (dir == NULL) dir = RB_FASHION_MNIST_DIR;
    const char *prefix = split == RB_SPLIT_TRAIN ? "train" : "t10k";
    char ipath[4096], lpath[4096];
    if ((size_t)snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", dir, prefix) >= sizeof ipath ||
        (size_t)snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", dir, prefix) >= sizeof lpath)
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_fashion_mnist: directory name too long");

    uint32_t idim[3], ldim[1];
    unsigned char *img = NULL, *lab = NULL;
    rb_status st = idx_read(ctx, ipath, 3, idim, &img);
    if (st == RB_OK) st = idx_read(ctx, lpath, 1, ldim, &lab);
    if (st == RB_OK && ldim[0] != idim[0])
        st = rb_fail(ctx, RB_EFORMAT, "%s has %u labels but %s has %u images", lpath, ldim[0], ipath, idim[0]);
    if (st == RB_OK && (idim[1] != 28 || idim[2] != 28))
        st = rb_fail(ctx, RB_EFORMAT, "%s: images are %ux%u, Fashion-MNIST's are 28x28", ipath, idim[1], idim[2]);
    for (uint32_t i = 0; st == RB_OK && i < ldim[0]; i++)
        if (lab[i] >= 10) st = rb_fail(ctx, RB_EFORMAT, "%s: label %u of sample %u is out of range 0..9", lpath, lab[i], i);

    rb_dataset d = {0};
    if (st == RB_OK) {
        d.count = idim[0];
        d.sample = rb_shape_2d(1, 1, idim[1], idim[2]);
        d.classes = 10;
        size_t per = rb_shape_count(d.sample);
        d.x = rb_malloc(ctx, d.count * per * sizeof(double));
        d.labels = rb_malloc(ctx, d.count * sizeof(int32_t));
        if (d.x == NULL || d.labels == NULL) st = RB_ENOMEM;
        for (size_t i = 0; st == RB_OK && i < d.count * per; i++) d.x[i] = img[i] / 255.0;
        for (size_t i = 0; st == RB_OK && i < d.count; i++) d.labels[i] = lab[i];
    }
    rb_free(ctx, img);
    rb_free(ctx, lab);
    if (st != RB_OK) {
        rb_dataset_release(ctx, &d);
        return st;
    }
    *ds = d;
    return RB_OK;
}

/* ---- synthetic regression ------------------------------------------------------------------ */

rb_status rb_dataset_synthetic(rb_context *ctx, size_t count, size_t d_in, size_t d_out, double noise,
                               unsigned long seed, rb_split split, rb_dataset *ds)
{
    if (ctx == NULL) return RB_ENULL;
    if (ds == NULL) return rb_fail(ctx, RB_ENULL, "rb_dataset_synthetic: ds is NULL");
    if (count == 0 || d_in == 0 || d_out == 0)
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_synthetic: count = %zu, d_in = %zu, d_out = %zu: each must be >= 1",
                       count, d_in, d_out);
    if (d_in > 65536 || d_out > 65536 || count > SIZE_MAX / sizeof(double) / (d_in + d_out))
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_synthetic: %zu samples of %zu + %zu values is too large", count, d_in, d_out);
    if (!(noise >= 0) || !isfinite(noise))
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_synthetic: noise = %g, must be finite and >= 0", noise);
    if (split != RB_SPLIT_TRAIN && split != RB_SPLIT_TEST)
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_synthetic: split = %d, must be RB_SPLIT_TRAIN or RB_SPLIT_TEST", (int)split);

    rb_dataset d = {.count = count, .sample = rb_shape_vec(d_in), .target_len = d_out};
    d.x = rb_malloc(ctx, count * d_in * sizeof(double));
    d.y = rb_malloc(ctx, count * d_out * sizeof(double));
    double *A = rb_malloc(ctx, (d_out * d_in + d_in * d_in + d_in) * sizeof(double));
    gsl_rng *teacher = gsl_rng_alloc(gsl_rng_mt19937), *draw = gsl_rng_alloc(gsl_rng_mt19937),
            *shake = gsl_rng_alloc(gsl_rng_mt19937);
    rb_status st = RB_OK;
    if (d.x == NULL || d.y == NULL || A == NULL) st = RB_ENOMEM;
    else if (teacher == NULL || draw == NULL || shake == NULL) st = rb_fail(ctx, RB_ENOMEM, "rb_dataset_synthetic: cannot allocate a GSL generator");
    if (st == RB_OK) {
        double *B = A + d_out * d_in, *z = B + d_in * d_in;
        gsl_rng_set(teacher, seed);
        gsl_rng_set(draw, seed ^ (split == RB_SPLIT_TRAIN ? 0x5851f42d4c957f2dUL : 0x14057b7ef767814fUL));
        gsl_rng_set(shake, seed ^ (split == RB_SPLIT_TRAIN ? 0x2545f4914f6cdd1dUL : 0x9e3779b97f4a7c15UL));
        for (size_t i = 0; i < d_out * d_in; i++) A[i] = 2 * gsl_rng_uniform(teacher) - 1;
        for (size_t i = 0; i < d_in * d_in; i++) B[i] = (2 * gsl_rng_uniform(teacher) - 1) / sqrt((double)d_in);
        for (size_t s = 0; s < count; s++) {
            double *x = d.x + s * d_in, *y = d.y + s * d_out;
            for (size_t i = 0; i < d_in; i++) x[i] = 2 * gsl_rng_uniform(draw) - 1;
            for (size_t i = 0; i < d_in; i++) {
                double acc = 0;
                for (size_t j = 0; j < d_in; j++) acc += B[i * d_in + j] * x[j];
                z[i] = tanh(acc);
            }
            for (size_t k = 0; k < d_out; k++) {
                double acc = 0;
                for (size_t i = 0; i < d_in; i++) acc += A[k * d_in + i] * z[i];
                y[k] = acc + (noise > 0 ? gsl_ran_gaussian(shake, noise) : 0.0);
            }
        }
    }
    if (teacher) gsl_rng_free(teacher);
    if (draw) gsl_rng_free(draw);
    if (shake) gsl_rng_free(shake);
    rb_free(ctx, A);
    if (st != RB_OK) {
        rb_dataset_release(ctx, &d);
        return st;
    }
    *ds = d;
    return RB_OK;
}

/* ---- Poisson pairs (f, a) -> u ------------------------------------------------------------ */

#define POISSON_DRAWS 13 /* uniforms per pair: 4 c_kl, then 9 d_kl */

/* The generator of a (seed, split) stream, positioned at pair `index`. */
static rb_status poisson_stream(rb_context *ctx, const char *fn, unsigned long seed, rb_split split, size_t index, gsl_rng **out)
{
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    if (r == NULL) return rb_fail(ctx, RB_ENOMEM, "%s: cannot allocate a GSL generator", fn);
    gsl_rng_set(r, seed ^ (split == RB_SPLIT_TRAIN ? 0x3c6ef372fe94f82bUL : 0xa54ff53a5f1d36f1UL));
    for (size_t i = 0; i < index * POISSON_DRAWS; i++) (void)gsl_rng_get(r);
    *out = r;
    return RB_OK;
}

/* One pair's a (point values on the (n+2)^2 grid), f and log a (n^2 interior values); any may be NULL. */
static void poisson_draw(gsl_rng *rng, size_t n, double *coef, double *f, double *loga)
{
    const double pi = acos(-1.0), h = 1.0 / (double)(n + 1);
    double c[2][2], d[3][3];
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < 2; l++) c[k][l] = gsl_rng_uniform(rng) - 0.5;
    for (int k = 0; k < 3; k++)
        for (int l = 0; l < 3; l++) d[k][l] = 2 * gsl_rng_uniform(rng) - 1;
    const size_t m = n + 2;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < m; j++) {
            const double y = (double)i * h, x = (double)j * h;
            double e = 0, g = 0;
            for (int k = 0; k < 2; k++)
                for (int l = 0; l < 2; l++) e += c[k][l] * cos(k * pi * x) * cos(l * pi * y);
            if (coef != NULL) coef[i * m + j] = exp(e);
            if (i == 0 || j == 0 || i == m - 1 || j == m - 1) continue;
            for (int k = 0; k < 3; k++)
                for (int l = 0; l < 3; l++) g += d[k][l] * sin((k + 1) * pi * x) * sin((l + 1) * pi * y);
            if (f != NULL) f[(i - 1) * n + (j - 1)] = g;
            if (loga != NULL) loga[(i - 1) * n + (j - 1)] = e;
        }
}

static rb_status poisson_check(rb_context *ctx, const char *fn, size_t n, rb_split split)
{
    size_t lo, hi;
    rb_mg_nearest_sizes(n, &lo, &hi);
    if (n < 3 || n > 1023 || lo != n)
        return rb_fail(ctx, RB_EINVAL, "%s: n = %zu; the grid needs n = m 2^k - 1 (m in 1, 3, 5, 7), 3 <= n <= 1023 (nearest: %zu, %zu)",
                       fn, n, lo < 3 ? hi : lo, hi > 1023 ? lo : hi);
    if (split != RB_SPLIT_TRAIN && split != RB_SPLIT_TEST)
        return rb_fail(ctx, RB_EINVAL, "%s: split = %d, must be RB_SPLIT_TRAIN or RB_SPLIT_TEST", fn, (int)split);
    return RB_OK;
}

rb_status rb_poisson_pair(rb_context *ctx, size_t n, unsigned long seed, rb_split split, size_t index, double *coef, double *f)
{
    static const char fn[] = "rb_poisson_pair";
    if (ctx == NULL) return RB_ENULL;
    rb_status st = poisson_check(ctx, fn, n, split);
    if (st != RB_OK) return st;
    if (index > SIZE_MAX / POISSON_DRAWS) return rb_fail(ctx, RB_EINVAL, "%s: index = %zu is too large", fn, index);
    gsl_rng *r = NULL;
    st = poisson_stream(ctx, fn, seed, split, index, &r);
    if (st != RB_OK) return st;
    poisson_draw(r, n, coef, f, NULL);
    gsl_rng_free(r);
    return RB_OK;
}

rb_status rb_dataset_poisson(rb_context *ctx, size_t n, size_t count, unsigned long seed, rb_split split, rb_dataset *ds)
{
    static const char fn[] = "rb_dataset_poisson";
    if (ctx == NULL) return RB_ENULL;
    if (ds == NULL) return rb_fail(ctx, RB_ENULL, "%s: ds is NULL", fn);
    rb_status st = poisson_check(ctx, fn, n, split);
    if (st != RB_OK) return st;
    const size_t g = n * n, m = n + 2;
    if (count == 0 || count > SIZE_MAX / sizeof(double) / (3 * g))
        return rb_fail(ctx, RB_EINVAL, "%s: count = %zu, must be 1 .. %zu for n = %zu", fn, count, SIZE_MAX / sizeof(double) / (3 * g), n);
    rb_dataset d = {.count = count, .sample = rb_shape_2d(1, 2, n, n), .target_len = g};
    d.x = rb_malloc(ctx, count * 2 * g * sizeof(double));
    d.y = rb_malloc(ctx, count * g * sizeof(double));
    double *coef = rb_malloc(ctx, m * m * sizeof(double));
    gsl_rng *rng = NULL;
    if (d.x == NULL || d.y == NULL || coef == NULL) st = RB_ENOMEM;
    if (st == RB_OK) st = poisson_stream(ctx, fn, seed, split, 0, &rng);
    rb_mg_options o = rb_mg_options_default(2);
    for (size_t s = 0; s < count && st == RB_OK; s++) {
        double *f = d.x + 2 * s * g, *loga = f + g, *u = d.y + s * g;
        poisson_draw(rng, n, coef, f, loga);
        rb_mg_problem pb = {2, n, coef, 1.0};
        rb_mg *mg = NULL;
        rb_tensor tf, tu;
        st = rb_mg_create(ctx, &pb, &o, &mg);
        if (st == RB_OK) st = rb_tensor_view(ctx, &tf, f, rb_shape_2d(1, 1, n, n));
        if (st == RB_OK) st = rb_tensor_view(ctx, &tu, u, rb_shape_2d(1, 1, n, n));
        if (st == RB_OK) memset(u, 0, g * sizeof(double)), st = rb_mg_solve(ctx, mg, &tf, &tu, 1e-10, 50, NULL);
        rb_mg_free(ctx, mg);
        if (st != RB_OK) st = rb_fail(ctx, st, "%s: pair %zu: %s", fn, s, rb_context_message(ctx));
        for (size_t i = 0; st == RB_OK && i < g; i++) f[i] /= RB_POISSON_SF, u[i] /= RB_POISSON_SU;
    }
    if (rng != NULL) gsl_rng_free(rng);
    rb_free(ctx, coef);
    if (st != RB_OK) {
        rb_dataset_release(ctx, &d);
        return st;
    }
    *ds = d;
    return RB_OK;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

rb_status rb_poisson_baseline(rb_context *ctx, const rb_dataset *ds, unsigned long seed, rb_split split, const double *target,
                              int max_cycles, rb_poisson_baseline_report *rep)
{
    static const char fn[] = "rb_poisson_baseline";
    if (ctx == NULL) return RB_ENULL;
    if (ds == NULL || target == NULL || rep == NULL) return rb_fail(ctx, RB_ENULL, "%s: ds, target and rep must not be NULL", fn);
    const size_t n = ds->sample.w, g = n * n, m = n + 2;
    if (ds->y == NULL || ds->count == 0 || ds->sample.c != 2 || ds->sample.h != n || ds->target_len != g)
        return rb_fail(ctx, RB_EINVAL, "%s: ds is not a data set of rb_dataset_poisson", fn);
    rb_status st = poisson_check(ctx, fn, n, split);
    if (st != RB_OK) return st;
    if (max_cycles < 1 || max_cycles >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "%s: max_cycles = %d, must be 1..%d", fn, max_cycles, RB_MG_MAX_HISTORY - 1);
    double *coef = rb_malloc(ctx, (m * m + 2 * g) * sizeof(double)), *f = coef + m * m, *u = f + g;
    double errors[RB_MG_MAX_HISTORY];
    if (coef == NULL) return RB_ENOMEM;
    rb_poisson_baseline_report r = {0};
    rb_mg_options o = rb_mg_options_default(2);
    for (size_t s = 0; s < ds->count && st == RB_OK; s++) {
        st = rb_poisson_pair(ctx, n, seed, split, s, coef, f);
        for (size_t i = 0; st == RB_OK && i < g; i++) /* the draw must be ds's: its f, unscaled */
            if (fabs(f[i] / RB_POISSON_SF - ds->x[2 * s * g + i]) > 1e-12 * (1 + fabs(f[i])))
                st = rb_fail(ctx, RB_EINVAL, "%s: pair %zu is not pair %zu of (n %zu, seed %lu, split %d)", fn, s, s, n, seed, (int)split);
        for (size_t i = 0; st == RB_OK && i < g; i++) u[i] = RB_POISSON_SU * ds->y[s * g + i];
        rb_mg_problem pb = {2, n, coef, 1.0};
        rb_mg *mg = NULL;
        rb_tensor tf, tu;
        double t0 = now();
        if (st == RB_OK) st = rb_mg_create(ctx, &pb, &o, &mg);
        r.setup_seconds += now() - t0;
        if (st == RB_OK) st = rb_tensor_view(ctx, &tf, f, rb_shape_2d(1, 1, n, n));
        if (st == RB_OK) st = rb_tensor_view(ctx, &tu, u, rb_shape_2d(1, 1, n, n));
        int k = 0;
        t0 = now();
        if (st == RB_OK) st = rb_mg_cycles_to_error(ctx, mg, &tf, &tu, target[s], max_cycles, &k, errors);
        r.cycle_seconds += now() - t0;
        rb_mg_free(ctx, mg);
        if (st != RB_OK) break;
        r.cycles_total += (size_t)k, r.cycles_max = k > r.cycles_max ? k : r.cycles_max;
        r.err_one_cycle += errors[0] / (double)ds->count;
    }
    rb_free(ctx, coef);
    if (st != RB_OK) return st;
    r.cycles_mean = (double)r.cycles_total / (double)ds->count;
    *rep = r;
    return RB_OK;
}

rb_status rb_dataset_standardize(rb_context *ctx, rb_dataset *ds, double mean, double std)
{
    if (ctx == NULL) return RB_ENULL;
    if (ds == NULL || ds->x == NULL) return rb_fail(ctx, RB_ENULL, "rb_dataset_standardize: ds is NULL or empty");
    if (!isfinite(mean) || !isfinite(std) || !(std > 0))
        return rb_fail(ctx, RB_EINVAL, "rb_dataset_standardize: mean = %g, std = %g: need finite values, std > 0", mean, std);
    size_t total = ds->count * rb_shape_count(ds->sample);
    for (size_t i = 0; i < total; i++) ds->x[i] = (ds->x[i] - mean) / std;
    return RB_OK;
}

void rb_dataset_release(rb_context *ctx, rb_dataset *ds)
{
    if (ds == NULL) return;
    rb_free(ctx, ds->x);
    rb_free(ctx, ds->labels);
    rb_free(ctx, ds->y);
    memset(ds, 0, sizeof *ds);
}

/* ---- mini-batches -------------------------------------------------------------------------- */

rb_status rb_batcher_init(rb_context *ctx, rb_batcher *b, const rb_dataset *ds, size_t batch, unsigned long seed)
{
    if (ctx == NULL) return RB_ENULL;
    if (b == NULL || ds == NULL) return rb_fail(ctx, RB_ENULL, "rb_batcher_init: %s is NULL", b ? "ds" : "b");
    if (ds->count == 0 || ds->x == NULL) return rb_fail(ctx, RB_EINVAL, "rb_batcher_init: the data set is empty");
    if (batch == 0) return rb_fail(ctx, RB_EINVAL, "rb_batcher_init: batch size is 0, must be >= 1");
    size_t *order = rb_malloc(ctx, ds->count * sizeof(size_t));
    if (order == NULL) return RB_ENOMEM;
    for (size_t i = 0; i < ds->count; i++) order[i] = i;
    *b = (rb_batcher){.ds = ds, .batch = batch, .seed = seed, .order = order, .pos = 0, .shuffle = 1};
    return RB_OK;
}

void rb_batcher_set_shuffle(rb_batcher *b, int shuffle)
{
    if (b) b->shuffle = shuffle != 0;
}

rb_status rb_batcher_epoch(rb_context *ctx, rb_batcher *b, size_t epoch)
{
    if (ctx == NULL) return RB_ENULL;
    if (b == NULL || b->order == NULL) return rb_fail(ctx, RB_ENULL, "rb_batcher_epoch: batcher is NULL or released");
    for (size_t i = 0; i < b->ds->count; i++) b->order[i] = i;
    if (b->shuffle) {
        gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
        if (r == NULL) return rb_fail(ctx, RB_ENOMEM, "rb_batcher_epoch: cannot allocate a GSL generator");
        /* the order depends on (seed, epoch) only: a resumed run reshuffles alike */
        gsl_rng_set(r, b->seed * 0x9e3779b97f4a7c15UL + (unsigned long)epoch + 1);
        gsl_ran_shuffle(r, b->order, b->ds->count, sizeof(size_t));
        gsl_rng_free(r);
    }
    b->pos = 0;
    return RB_OK;
}

rb_status rb_batcher_next(rb_context *ctx, rb_batcher *b, rb_tensor *x, int32_t *labels, double *y, size_t *count)
{
    if (ctx == NULL) return RB_ENULL;
    if (b == NULL || b->order == NULL || x == NULL || x->data == NULL || count == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_batcher_next: batcher, x (with data) and count must not be NULL");
    const rb_dataset *ds = b->ds;
    if (labels != NULL && ds->labels == NULL) return rb_fail(ctx, RB_EINVAL, "rb_batcher_next: labels asked of a data set without labels");
    if (y != NULL && ds->y == NULL) return rb_fail(ctx, RB_EINVAL, "rb_batcher_next: targets asked of a data set without targets");
    size_t n = ds->count - b->pos < b->batch ? ds->count - b->pos : b->batch;
    size_t per = rb_shape_count(ds->sample);
    for (size_t s = 0; s < n; s++) {
        size_t i = b->order[b->pos + s];
        memcpy(x->data + s * per, ds->x + i * per, per * sizeof(double));
        if (labels) labels[s] = ds->labels[i];
        if (y) memcpy(y + s * ds->target_len, ds->y + i * ds->target_len, ds->target_len * sizeof(double));
    }
    if (n > 0) {
        x->shape = ds->sample;
        x->shape.n = n;
    }
    b->pos += n;
    *count = n;
    return RB_OK;
}

void rb_batcher_release(rb_context *ctx, rb_batcher *b)
{
    if (b == NULL) return;
    rb_free(ctx, b->order);
    memset(b, 0, sizeof *b);
}
