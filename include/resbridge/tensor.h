/* tensor.h — dense double-precision grids of shape (N, C, D, H, W).
 *
 * One type for everything: unused dimensions are 1. A 1D grid of n points is
 * (1,1,1,1,n), a 2D grid (1,1,1,n,n), a 3D grid (1,1,n,n,n), a batch of
 * multi-channel images (N,C,1,H,W), a plain vector (1,1,1,1,n). Row-major:
 * W varies fastest. A tensor owns its data (rb_tensor_alloc) or is a view of
 * someone else's memory (rb_tensor_view); rb_tensor_release frees only owners.
 *
 *     rb_tensor u;
 *     rb_tensor_alloc(ctx, &u, rb_shape_2d(1, 1, 63, 63));   // zeroed
 *     RB_AT(&u, 0, 0, 0, i, j) = 1.0;
 *     rb_tensor_release(ctx, &u);
 */
#ifndef RESBRIDGE_TENSOR_H
#define RESBRIDGE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include "resbridge/context.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_shape {
    size_t n, c, d, h, w;
} rb_shape;

typedef struct rb_tensor {
    rb_shape shape;
    double *data;
    bool owns; /* true: data came from rb_tensor_alloc and is freed by release */
} rb_tensor;

/* Shape builders. */
static inline rb_shape rb_shape_1d(size_t n, size_t c, size_t w) { rb_shape s = {n, c, 1, 1, w}; return s; }
static inline rb_shape rb_shape_2d(size_t n, size_t c, size_t h, size_t w) { rb_shape s = {n, c, 1, h, w}; return s; }
static inline rb_shape rb_shape_3d(size_t n, size_t c, size_t d, size_t h, size_t w) { rb_shape s = {n, c, d, h, w}; return s; }
static inline rb_shape rb_shape_vec(size_t len) { rb_shape s = {1, 1, 1, 1, len}; return s; }

/* Number of elements; 0 if any dimension is 0 or the product overflows. */
size_t rb_shape_count(rb_shape s);
bool rb_shape_equal(rb_shape a, rb_shape b);
/* Writes "(N,C,D,H,W)" into buf (always NUL-terminated). Returns buf. */
const char *rb_shape_format(rb_shape s, char *buf, size_t len);

static inline size_t rb_tensor_count(const rb_tensor *t) { return rb_shape_count(t->shape); }

/* Element access (no bounds check). */
#define RB_AT(t, in, ic, id, ih, iw)                                                       \
    ((t)->data[((((size_t)(in) * (t)->shape.c + (size_t)(ic)) * (t)->shape.d + (size_t)(id)) \
                     * (t)->shape.h + (size_t)(ih)) * (t)->shape.w + (size_t)(iw)])

/* Allocate a zeroed owning tensor. On error *t is untouched. */
rb_status rb_tensor_alloc(rb_context *ctx, rb_tensor *t, rb_shape shape);
/* Wrap user memory (not owned). data must hold rb_shape_count(shape) doubles. */
rb_status rb_tensor_view(rb_context *ctx, rb_tensor *t, double *data, rb_shape shape);
/* Free an owning tensor's data and reset it; a view is only reset. NULL-safe. */
void rb_tensor_release(rb_context *ctx, rb_tensor *t);

/* Validation shared by every public function: t non-NULL with data, all dims >= 1. */
rb_status rb_tensor_check(rb_context *ctx, const rb_tensor *t, const char *name);
/* Both valid and equal in shape. */
rb_status rb_tensor_check_same(rb_context *ctx, const rb_tensor *a, const char *aname,
                               const rb_tensor *b, const char *bname);

/* Elementwise helpers. */
rb_status rb_tensor_fill(rb_context *ctx, rb_tensor *t, double value);
rb_status rb_tensor_copy(rb_context *ctx, const rb_tensor *src, rb_tensor *dst);
/* y += alpha * x */
rb_status rb_tensor_axpy(rb_context *ctx, double alpha, const rb_tensor *x, rb_tensor *y);
double rb_tensor_dot(const rb_tensor *a, const rb_tensor *b);
double rb_tensor_norm2(const rb_tensor *t);
/* max |a-b| / max(max|b|, tiny); shapes must match (else returns INFINITY). */
double rb_tensor_max_rel_diff(const rb_tensor *a, const rb_tensor *b);

#ifdef __cplusplus
}
#endif
#endif
