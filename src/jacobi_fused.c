/* jacobi_fused.c — the fused damped-Jacobi sweep behind rb_residual_step.
 *
 *   y = x + h * ((b - A x) * (1/D))      one pass over x, b and y
 *
 * for single-channel 2D stencils (3x3 and 5-point), out of place and in place.
 * In place it is still Jacobi, not Gauss-Seidel: each thread walks its block of
 * rows keeping the OLD previous row in a row buffer (the row kernel copies each
 * row's old values out as it overwrites them), and the old rows just outside its
 * block are saved before any thread writes.
 * The arithmetic is the generic path's (rb_residual_step_generic with
 * jacobi_apply), in the same order, so both agree bit for bit; the row loop is
 * the one in stencil_fast.c. Other shapes, and in place without room in the
 * arena for the row buffers, take the generic path.
 */
#include "jacobi_internal.h"
#include "resbridge/residual.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

#define ROWS_PER_THREAD 3 /* old previous row, old current row, old row below the block */

size_t rb_jacobi_fused_workspace(const rb_op *op, rb_shape in)
{
    const rb_jacobi_state *js = op->state;
    const size_t per_row = ROWS_PER_THREAD * RB_JACOBI_FUSED_MAX_THREADS * sizeof(double);
    size_t rows = in.w > SIZE_MAX / per_row ? SIZE_MAX : rb_arena_bytes(in.w * per_row);
    size_t a = rb_op_workspace(js->A, in);
    return rows > SIZE_MAX - a ? SIZE_MAX : rows + a;
}

/* Out of place: every row reads x only, so rows are independent. (N,1,1,H,W) */
static void sweep_out_of_place(const rb_stencil2d *s, size_t N, size_t H, size_t W, const double *x, const double *b,
                               double inv, double h, double *y, int threads)
{
    const long long rows = (long long)(N * H);
    const size_t total = N * H * W;
    const bool stream = rb_stencil2d_stream_stores(3 * total * sizeof(double));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static) nowait
        for (long long r = 0; r < rows; r++) {
            const size_t i = (size_t)r % H, o = (size_t)r * W;
            const double *mid = x + o;
            const double *up = i > 0 ? mid - W : NULL, *dn = i + 1 < H ? mid + W : NULL;
            rb_stencil2d_row(s, W, up, mid, dn, b + o, inv, h, y + o, total - o - W, total - o, stream);
        }
        if (stream) rb_stencil2d_stream_fence();
    }
}

/* In place on x. buf: ROWS_PER_THREAD * W doubles per thread, `threads` threads.
 * Each thread sweeps its block of rows; the row kernel hands back the old row
 * it overwrote (`cur`), which is the next row's `up`. */
static void sweep_in_place(const rb_stencil2d *s, size_t N, size_t H, size_t W, double *x, const double *b,
                           double inv, double h, double *buf, int threads)
{
    const size_t row_bytes = W * sizeof(double), total = N * H * W;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t r0 = H * t / nt, r1 = H * (t + 1) / nt; /* this thread's rows [r0, r1) */
        double *prev = buf + t * ROWS_PER_THREAD * W, *cur = prev + W, *below = cur + W;
        for (size_t n = 0; n < N; n++) {
            double *img = x + n * H * W;
            const double *bimg = b + n * H * W;
            /* old rows next to the block, before any thread writes this image */
            if (r0 < r1 && r0 > 0) memcpy(prev, img + (r0 - 1) * W, row_bytes);
            if (r0 < r1 && r1 < H) memcpy(below, img + r1 * W, row_bytes);
#pragma omp barrier
            for (size_t i = r0; i < r1; i++) {
                double *row = img + i * W;
                const size_t o = (n * H + i) * W; /* offset of row i in x and b */
                const double *up = i > 0 ? prev : NULL;
                const double *dn = i + 1 == H ? NULL : i + 1 == r1 ? below : row + W;
                const size_t dn_ahead = dn == row + W ? total - o - W : W;
                rb_stencil2d_row_in_place(s, W, up, row, cur, dn, bimg + i * W, inv, h, dn_ahead, total - o);
                double *tmp = prev;
                prev = cur, cur = tmp;
            }
        }
    }
}

rb_status rb_jacobi_fused_step(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x, rb_tensor *y,
                               rb_arena *work)
{
    const rb_jacobi_state *js = op->state;
    const rb_shape sh = x->shape;
    rb_stencil2d s;
    if (!rb_stencil2d_init(rb_conv_state_of(js->A), js->A->params, &s) || sh.c != 1 || sh.d != 1)
        return rb_residual_step_generic(ctx, op, h, x, y, work);
    const double inv = 1.0 / js->diag;
    int threads = rb_context_threads(ctx);
    if (x->data != y->data) {
        sweep_out_of_place(&s, sh.n, sh.h, sh.w, x->data, js->b.data, inv, h, y->data, threads);
        return RB_OK;
    }
    /* In place: blocks of rows, with row buffers from the arena for as many threads
     * as it has room for (at most RB_JACOBI_FUSED_MAX_THREADS, at most one per row). */
    if (threads > RB_JACOBI_FUSED_MAX_THREADS) threads = RB_JACOBI_FUSED_MAX_THREADS;
    if ((size_t)threads > sh.h) threads = (int)sh.h;
    if (work == NULL || work->measuring || work->used > work->cap)
        return rb_residual_step_generic(ctx, op, h, x, y, work);
    const size_t room = work->cap - work->used, per_thread = ROWS_PER_THREAD * sh.w * sizeof(double);
    while (threads > 1 && rb_arena_bytes((size_t)threads * per_thread) > room) threads--;
    if (rb_arena_bytes(per_thread) > room) return rb_residual_step_generic(ctx, op, h, x, y, work);
    size_t mark = rb_arena_mark(work);
    double *buf = rb_arena_alloc(ctx, work, (size_t)threads * per_thread);
    if (buf == NULL) return rb_context_last_status(ctx); /* cannot happen: room checked */
    sweep_in_place(&s, sh.n, sh.h, sh.w, x->data, js->b.data, inv, h, buf, threads);
    rb_arena_reset(work, mark);
    return RB_OK;
}
