/* data.c — Fashion-MNIST (IDX over gzip), synthetic regression data, seeded
 * mini-batches (see data.h). */
#include "resbridge/data.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
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
