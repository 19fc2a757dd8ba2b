/* tensor.c — shapes, owning tensors and views, elementwise helpers. */
#include "resbridge/tensor.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

size_t rb_shape_count(rb_shape s)
{
    size_t dims[5] = {s.n, s.c, s.d, s.h, s.w};
    size_t count = 1;
    for (int i = 0; i < 5; i++) {
        if (dims[i] == 0) return 0;
        if (count > SIZE_MAX / sizeof(double) / dims[i]) return 0;
        count *= dims[i];
    }
    return count;
}

bool rb_shape_equal(rb_shape a, rb_shape b)
{
    return a.n == b.n && a.c == b.c && a.d == b.d && a.h == b.h && a.w == b.w;
}

const char *rb_shape_format(rb_shape s, char *buf, size_t len)
{
    if (buf == NULL || len == 0) return buf;
    snprintf(buf, len, "(%zu,%zu,%zu,%zu,%zu)", s.n, s.c, s.d, s.h, s.w);
    return buf;
}

static rb_status check_shape(rb_context *ctx, rb_shape shape, const char *name)
{
    if (rb_shape_count(shape) == 0) {
        char b[96];
        return rb_fail(ctx, RB_EINVAL, "%s: shape %s has a zero dimension or is too large", name,
                       rb_shape_format(shape, b, sizeof b));
    }
    return RB_OK;
}

rb_status rb_tensor_alloc(rb_context *ctx, rb_tensor *t, rb_shape shape)
{
    if (ctx == NULL) return RB_ENULL;
    if (t == NULL) return rb_fail(ctx, RB_ENULL, "rb_tensor_alloc: t is NULL");
    rb_status st = check_shape(ctx, shape, "rb_tensor_alloc: shape");
    if (st != RB_OK) return st;
    double *data = rb_calloc(ctx, rb_shape_count(shape), sizeof(double));
    if (data == NULL) return RB_ENOMEM;
    t->shape = shape;
    t->data = data;
    t->owns = true;
    return RB_OK;
}

rb_status rb_tensor_view(rb_context *ctx, rb_tensor *t, double *data, rb_shape shape)
{
    if (ctx == NULL) return RB_ENULL;
    if (t == NULL) return rb_fail(ctx, RB_ENULL, "rb_tensor_view: t is NULL");
    if (data == NULL) return rb_fail(ctx, RB_ENULL, "rb_tensor_view: data is NULL");
    rb_status st = check_shape(ctx, shape, "rb_tensor_view: shape");
    if (st != RB_OK) return st;
    t->shape = shape;
    t->data = data;
    t->owns = false;
    return RB_OK;
}

void rb_tensor_release(rb_context *ctx, rb_tensor *t)
{
    if (t == NULL) return;
    if (t->owns) rb_free(ctx, t->data);
    memset(t, 0, sizeof *t);
}

rb_status rb_tensor_check(rb_context *ctx, const rb_tensor *t, const char *name)
{
    if (t == NULL) return rb_fail(ctx, RB_ENULL, "%s is NULL", name);
    if (t->data == NULL) return rb_fail(ctx, RB_ENULL, "%s has no data (NULL)", name);
    return check_shape(ctx, t->shape, name);
}

rb_status rb_tensor_check_same(rb_context *ctx, const rb_tensor *a, const char *aname, const rb_tensor *b,
                               const char *bname)
{
    rb_status st = rb_tensor_check(ctx, a, aname);
    if (st == RB_OK) st = rb_tensor_check(ctx, b, bname);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(a->shape, b->shape)) {
        char sa[96], sb[96];
        return rb_fail(ctx, RB_ESHAPE, "%s has shape %s but %s has shape %s", aname,
                       rb_shape_format(a->shape, sa, sizeof sa), bname,
                       rb_shape_format(b->shape, sb, sizeof sb));
    }
    return RB_OK;
}

rb_status rb_tensor_fill(rb_context *ctx, rb_tensor *t, double value)
{
    rb_status st = rb_tensor_check(ctx, t, "rb_tensor_fill: t");
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(t);
    for (size_t i = 0; i < n; i++) t->data[i] = value;
    return RB_OK;
}

rb_status rb_tensor_copy(rb_context *ctx, const rb_tensor *src, rb_tensor *dst)
{
    rb_status st = rb_tensor_check_same(ctx, src, "rb_tensor_copy: src", dst, "rb_tensor_copy: dst");
    if (st != RB_OK) return st;
    if (src->data != dst->data) memmove(dst->data, src->data, rb_tensor_count(src) * sizeof(double));
    return RB_OK;
}

rb_status rb_tensor_axpy(rb_context *ctx, double alpha, const rb_tensor *x, rb_tensor *y)
{
    rb_status st = rb_tensor_check_same(ctx, x, "rb_tensor_axpy: x", y, "rb_tensor_axpy: y");
    if (st != RB_OK) return st;
    if (!isfinite(alpha)) return rb_fail(ctx, RB_EINVAL, "rb_tensor_axpy: alpha = %g is not finite", alpha);
    size_t n = rb_tensor_count(x);
    for (size_t i = 0; i < n; i++) y->data[i] += alpha * x->data[i];
    return RB_OK;
}

double rb_tensor_dot(const rb_tensor *a, const rb_tensor *b)
{
    if (a == NULL || b == NULL || !rb_shape_equal(a->shape, b->shape)) return NAN;
    size_t n = rb_tensor_count(a);
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a->data[i] * b->data[i];
    return s;
}

/* Euclidean norm without overflow or underflow: the plain sum of squares when
 * it is safely in range, else a second pass scaled by the largest entry. */
double rb_tensor_norm2(const rb_tensor *t)
{
    if (t == NULL) return NAN;
    double ss = rb_tensor_dot(t, t);
    if (ss < 1e300 && ss > 1e-300) return sqrt(ss);
    size_t n = rb_tensor_count(t);
    double big = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = fabs(t->data[i]);
        if (!(a <= big)) big = a; /* propagates NaN */
    }
    if (!(big > 0) || !isfinite(big)) return big;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = t->data[i] / big;
        acc += v * v;
    }
    return big * sqrt(acc);
}

double rb_tensor_max_rel_diff(const rb_tensor *a, const rb_tensor *b)
{
    if (a == NULL || b == NULL || !rb_shape_equal(a->shape, b->shape)) return INFINITY;
    size_t n = rb_tensor_count(a);
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a->data[i] - b->data[i]);
        if (!(d <= diff)) diff = d; /* propagates NaN */
        if (fabs(b->data[i]) > scale) scale = fabs(b->data[i]);
    }
    return diff / (scale > 1e-300 ? scale : 1e-300);
}
