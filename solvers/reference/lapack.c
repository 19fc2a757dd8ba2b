/* lapack.c — the LAPACK oracles (see reference.h). */
#include "resbridge/reference.h"

#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DENSE 20000

/* Same-shape linear operator on a valid shape with at most `limit` entries. */
static rb_status check_linear(rb_context *ctx, const rb_op *F, rb_shape shape, size_t limit, const char *fn, size_t *n)
{
    if (ctx == NULL) return RB_ENULL;
    if (F == NULL) return rb_fail(ctx, RB_ENULL, "%s: F is NULL", fn);
    if (!(F->type->flags & RB_OP_LINEAR))
        return rb_fail(ctx, RB_EINVAL, "%s: %s is not linear; it has no matrix", fn, F->type->name);
    rb_shape out;
    rb_status st = rb_op_shape(ctx, F, shape, &out);
    if (st != RB_OK) return st;
    if (!rb_shape_equal(out, shape)) return rb_fail(ctx, RB_ESHAPE, "%s: %s does not keep the shape", fn, F->type->name);
    *n = rb_shape_count(shape);
    if (*n == 0 || *n > limit) return rb_fail(ctx, RB_EINVAL, "%s: %zu unknowns; at most %zu", fn, *n, limit);
    return RB_OK;
}

/* Apply F to `probe` (a tensor of `shape` on scratch) into `out`. */
static rb_status apply(rb_context *ctx, const rb_op *F, rb_tensor *probe, rb_tensor *out, rb_arena *work)
{
    size_t mark = rb_arena_mark(work);
    rb_status st = rb_op_apply(ctx, F, probe, out, work);
    rb_arena_reset(work, mark);
    return st;
}

typedef struct probe_set {
    rb_tensor e, col;
    rb_arena work;
} probe_set;

static rb_status probe_open(rb_context *ctx, const rb_op *F, rb_shape shape, probe_set *p)
{
    memset(p, 0, sizeof *p);
    rb_status st = rb_tensor_alloc(ctx, &p->e, shape);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &p->col, shape);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &p->work, rb_op_workspace(F, shape) + 64);
    return st;
}

static void probe_close(rb_context *ctx, probe_set *p)
{
    rb_tensor_release(ctx, &p->e);
    rb_tensor_release(ctx, &p->col);
    rb_arena_release(ctx, &p->work);
}

rb_status rb_ref_assemble(rb_context *ctx, const rb_op *F, rb_shape shape, double *M)
{
    size_t n;
    rb_status st = check_linear(ctx, F, shape, MAX_DENSE, "rb_ref_assemble", &n);
    if (st != RB_OK) return st;
    if (M == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_assemble: M is NULL");
    probe_set p;
    st = probe_open(ctx, F, shape, &p);
    for (size_t j = 0; j < n && st == RB_OK; j++) {
        p.e.data[j] = 1.0;
        st = apply(ctx, F, &p.e, &p.col, &p.work);
        p.e.data[j] = 0.0;
        for (size_t i = 0; i < n && st == RB_OK; i++) M[i * n + j] = p.col.data[i];
    }
    probe_close(ctx, &p);
    return st;
}

rb_status rb_ref_bandwidth(rb_context *ctx, const rb_op *F, rb_shape shape, size_t *kd)
{
    size_t n;
    rb_status st = check_linear(ctx, F, shape, (size_t)1 << 31, "rb_ref_bandwidth", &n);
    if (st != RB_OK) return st;
    if (kd == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_bandwidth: kd is NULL");
    probe_set p;
    st = probe_open(ctx, F, shape, &p);
    size_t cols[3] = {0, n / 2, n - 1}, band = 0;
    for (int c = 0; c < 3 && st == RB_OK; c++) {
        size_t j = cols[c];
        p.e.data[j] = 1.0;
        st = apply(ctx, F, &p.e, &p.col, &p.work);
        p.e.data[j] = 0.0;
        for (size_t i = 0; i < n && st == RB_OK; i++)
            if (p.col.data[i] != 0.0) {
                size_t d = i > j ? i - j : j - i;
                if (d > band) band = d;
            }
    }
    probe_close(ctx, &p);
    if (st == RB_OK) *kd = band;
    return st;
}

rb_status rb_ref_band(rb_context *ctx, const rb_op *F, rb_shape shape, size_t *kd_out, double **band_out)
{
    size_t n, kd;
    rb_status st = check_linear(ctx, F, shape, (size_t)1 << 31, "rb_ref_band", &n);
    if (st != RB_OK) return st;
    if (kd_out == NULL || band_out == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_band: output pointer is NULL");
    st = rb_ref_bandwidth(ctx, F, shape, &kd);
    if (st != RB_OK) return st;
    size_t ld = kd + 1;
    if (n > SIZE_MAX / sizeof(double) / ld) return rb_fail(ctx, RB_ENOMEM, "rb_ref_band: band too large");
    double *band = rb_calloc(ctx, n * ld, sizeof *band);
    if (band == NULL) return RB_ENOMEM;
    /* Probe columns j = c, c + (2kd+1), ... together: their images do not overlap within the band. */
    probe_set p;
    st = probe_open(ctx, F, shape, &p);
    size_t step = 2 * kd + 1;
    for (size_t c = 0; c < step && c < n && st == RB_OK; c++) {
        for (size_t j = c; j < n; j += step) p.e.data[j] = 1.0;
        st = apply(ctx, F, &p.e, &p.col, &p.work);
        for (size_t j = c; j < n; j += step) {
            p.e.data[j] = 0.0;
            for (size_t i = j >= kd ? j - kd : 0; i <= j; i++) band[kd + i - j + j * ld] = p.col.data[i];
        }
    }
    probe_close(ctx, &p);
    if (st != RB_OK) {
        rb_free(ctx, band);
        return st;
    }
    *kd_out = kd;
    *band_out = band;
    return RB_OK;
}

rb_status rb_ref_solve_spd_banded(rb_context *ctx, const rb_op *F, const rb_tensor *b, rb_tensor *x)
{
    rb_status st = rb_tensor_check_same(ctx, b, "b", x, "x");
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(b), kd;
    double *band = NULL;
    st = rb_ref_band(ctx, F, b->shape, &kd, &band);
    if (st != RB_OK) return st;
    double *rhs = rb_malloc(ctx, n * sizeof *rhs);
    if (rhs == NULL) {
        rb_free(ctx, band);
        return RB_ENOMEM;
    }
    memcpy(rhs, b->data, n * sizeof *rhs);
    lapack_int info = LAPACKE_dpbsv(LAPACK_COL_MAJOR, 'U', (lapack_int)n, (lapack_int)kd, 1, band, (lapack_int)(kd + 1),
                                    rhs, (lapack_int)n);
    if (info > 0)
        st = rb_fail(ctx, RB_ELAPACK, "dpbsv: the leading minor of order %d is not positive definite (operator %s "
                     "is not SPD)", (int)info, F->type->name);
    else if (info < 0)
        st = rb_fail(ctx, RB_ELAPACK, "dpbsv: argument %d had an illegal value", (int)-info);
    else
        memcpy(x->data, rhs, n * sizeof *rhs);
    rb_free(ctx, band), rb_free(ctx, rhs);
    return st;
}

static rb_status check_dense(rb_context *ctx, const double *M, size_t n, const char *fn)
{
    if (ctx == NULL) return RB_ENULL;
    if (M == NULL) return rb_fail(ctx, RB_ENULL, "%s: M is NULL", fn);
    if (n == 0 || n > MAX_DENSE) return rb_fail(ctx, RB_EINVAL, "%s: n = %zu, must be 1..%d", fn, n, MAX_DENSE);
    for (size_t i = 0; i < n * n; i++)
        if (!isfinite(M[i])) return rb_fail(ctx, RB_EINVAL, "%s: M[%zu] = %g is not finite", fn, i, M[i]);
    return RB_OK;
}

rb_status rb_ref_solve_dense(rb_context *ctx, const double *M, size_t n, const double *b, double *x)
{
    rb_status st = check_dense(ctx, M, n, "rb_ref_solve_dense");
    if (st != RB_OK) return st;
    if (b == NULL || x == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_solve_dense: %s is NULL", b ? "x" : "b");
    double *A = rb_malloc(ctx, n * n * sizeof *A), *r = rb_malloc(ctx, n * sizeof *r);
    lapack_int *piv = rb_malloc(ctx, n * sizeof *piv);
    if (A == NULL || r == NULL || piv == NULL) {
        rb_free(ctx, A), rb_free(ctx, r), rb_free(ctx, piv);
        return RB_ENOMEM;
    }
    memcpy(A, M, n * n * sizeof *A);
    memcpy(r, b, n * sizeof *r);
    lapack_int info = LAPACKE_dgesv(LAPACK_ROW_MAJOR, (lapack_int)n, 1, A, (lapack_int)n, piv, r, 1);
    if (info > 0) st = rb_fail(ctx, RB_ELAPACK, "dgesv: U(%d,%d) is exactly zero; the matrix is singular", (int)info, (int)info);
    else if (info < 0) st = rb_fail(ctx, RB_ELAPACK, "dgesv: argument %d had an illegal value", (int)-info);
    else memcpy(x, r, n * sizeof *r);
    rb_free(ctx, A), rb_free(ctx, r), rb_free(ctx, piv);
    return st;
}

rb_status rb_ref_eig_sym(rb_context *ctx, const double *M, size_t n, double *w)
{
    rb_status st = check_dense(ctx, M, n, "rb_ref_eig_sym");
    if (st != RB_OK) return st;
    if (w == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_eig_sym: w is NULL");
    double *A = rb_malloc(ctx, n * n * sizeof *A), *ev = rb_malloc(ctx, n * sizeof *ev);
    if (A == NULL || ev == NULL) {
        rb_free(ctx, A), rb_free(ctx, ev);
        return RB_ENOMEM;
    }
    memcpy(A, M, n * n * sizeof *A);
    lapack_int info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', (lapack_int)n, A, (lapack_int)n, ev);
    if (info > 0) st = rb_fail(ctx, RB_ELAPACK, "dsyev: %d off-diagonal elements did not converge to zero", (int)info);
    else if (info < 0) st = rb_fail(ctx, RB_ELAPACK, "dsyev: argument %d had an illegal value", (int)-info);
    else memcpy(w, ev, n * sizeof *ev);
    rb_free(ctx, A), rb_free(ctx, ev);
    return st;
}

rb_status rb_ref_eig_general(rb_context *ctx, const double *M, size_t n, double *wr, double *wi)
{
    rb_status st = check_dense(ctx, M, n, "rb_ref_eig_general");
    if (st != RB_OK) return st;
    if (wr == NULL || wi == NULL) return rb_fail(ctx, RB_ENULL, "rb_ref_eig_general: %s is NULL", wr ? "wi" : "wr");
    double *A = rb_malloc(ctx, n * n * sizeof *A), *re = rb_malloc(ctx, n * sizeof *re), *im = rb_malloc(ctx, n * sizeof *im);
    if (A == NULL || re == NULL || im == NULL) {
        rb_free(ctx, A), rb_free(ctx, re), rb_free(ctx, im);
        return RB_ENOMEM;
    }
    memcpy(A, M, n * n * sizeof *A);
    lapack_int info = LAPACKE_dgeev(LAPACK_ROW_MAJOR, 'N', 'N', (lapack_int)n, A, (lapack_int)n, re, im, NULL, 1, NULL, 1);
    if (info > 0) st = rb_fail(ctx, RB_ELAPACK, "dgeev: the QR algorithm failed; eigenvalues %d..%zu did not converge", (int)info, n);
    else if (info < 0) st = rb_fail(ctx, RB_ELAPACK, "dgeev: argument %d had an illegal value", (int)-info);
    else memcpy(wr, re, n * sizeof *re), memcpy(wi, im, n * sizeof *im);
    rb_free(ctx, A), rb_free(ctx, re), rb_free(ctx, im);
    return st;
}
