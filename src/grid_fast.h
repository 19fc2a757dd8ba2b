/* grid_fast.h — the single-channel grid kernels of the multigrid cycle beyond the
 * 2D stencil row of jacobi_internal.h: the 3D 7-point star row (stencil_fast.c),
 * residual rows r = f - A u in 2D and 3D (stencil_fast.c), and the stride-2
 * vertex-centred transfers (transfer_fast.c): restriction, prolongation, the
 * prolongation added to a grid, and the residual restricted in one pass.
 *
 * Each agrees with the reference loops of conv.c (rb_conv_gather /
 * rb_conv_scatter) and with the separate calls it fuses bit for bit: taps are
 * summed in tap order from 0.0, taps outside the grid skipped, exactly as
 * the reference does (tests/test_mg_kernels.c). */
#ifndef RB_GRID_FAST_H
#define RB_GRID_FAST_H

#include "jacobi_internal.h"

/* ---- stencil rows (stencil_fast.c) ---------------------------------------------------------- */

/* A single-channel stride-1 3D 7-point star: weights in tap order
 * (z-, y-, x-, centre, x+, y+, z+). */
typedef struct rb_stencil3d {
    double w[7];
} rb_stencil3d;

/* false unless cs is a single-channel, stride-1, not transposed, bias-free 3D star. */
bool rb_stencil3d_init(const rb_conv_state *cs, const double *w, rb_stencil3d *s);

/* One row of W points of the 3D star; zm, ym, yp, zp are the neighbour rows (NULL:
 * outside the grid). f == NULL: y = A x; else y = f - A x. y must not overlap the
 * inputs. zp_reach / f_reach: doubles readable from zp / f on (how far those memory
 * streams may be prefetched). */
void rb_stencil3d_row(const rb_stencil3d *s, size_t W, const double *zm, const double *ym, const double *mid,
                      const double *yp, const double *zp, const double *f, double *y, size_t zp_reach, size_t f_reach);

/* A single-channel stride-1 stencil the residual kernels take: 2D 3x3 / 5-point
 * (jacobi_internal.h) or 3D 7-point star. */
typedef struct rb_stencil_any {
    int dims;            /* 2 or 3 */
    rb_stencil2d s2;
    rb_stencil3d s3;
} rb_stencil_any;

/* false unless A is a conv op one of the two kernels takes, for a (N,1,D,H,W) grid. */
bool rb_stencil_any_init(const rb_op *A, rb_shape s, rb_stencil_any *k);

/* Residual of one line of sample n: r = f - A u on row `l` (2D) or plane `l` (3D),
 * written to r_line (W or H*W doubles). In 3D only the plane's rows y0 <= y < y1 (0, H: all
 * of it), each at r_line + y W; in 2D y0 and y1 are not read. */
void rb_stencil_residual_line(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, size_t n,
                              size_t l, size_t y0, size_t y1, double *r_line);

/* The same with u, f and r_line stored split (each row's even points, then its odd ones:
 * xsplit.h), for stencils rb_stencil_split_takes (the 2D 5-point star): the same r, bit for bit. */
bool rb_stencil_split_takes(const rb_stencil_any *k);
void rb_stencil_residual_line_split(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, size_t n,
                                    size_t l, double *restrict r_line);

/* r = f - A u over the whole grid, and, if norm2 != NULL, the sum of r^2 into *norm2
 * (summed in an order fixed by the build, W and the thread count). Same r as
 * rb_op_apply then f - Au. r == NULL: the norm only, each thread's rows going through
 * rows_scratch + thread * W (threads * W doubles; at most 64 threads run). */
void rb_stencil_residual(const rb_stencil_any *k, rb_shape s, const double *u, const double *f, double *r,
                         double *norm2, int threads, double *rows_scratch);

/* sum of r[0 .. n)^2, in an order fixed by n (the residual kernels' norm). */
double rb_sum_squares(const double *r, size_t n);
#define RB_STENCIL_RESIDUAL_MAX_THREADS 64

/* ---- transfers (transfer_fast.c) -------------------------------------------------------------- */

/* Behind the conv op's apply (conv.c): a single-channel, bias-free, 3-wide, full-pattern,
 * stride-2 vertex-centred conv in 2D or 3D, plain (restriction) or transposed
 * (prolongation). false: not handled, fall through to the reference loops. */
bool rb_transfer_fast_apply(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                            const double *x, double *y);

/* fine += P coarse for a transposed conv P that rb_transfer_fast_apply handles. false:
 * not handled (nothing changed). Same result as rb_op_apply(P) into a temporary and
 * then fine += temporary. */
bool rb_transfer_prolong_add(rb_context *ctx, const rb_op *P, const rb_tensor *coarse, rb_tensor *fine);

/* Its pieces, for the red-black wavefront's first stage (redblack.c): whether P maps the
 * coarse shape onto the fine one as such a prolongation (filling its geometry), and
 * fine line l of sample n (a row in 2D, a plane in 3D) += (P coarse) there (add), or = (P
 * coarse) (!add: the line's values before are not read), in 3D only the plane's rows
 * y0 <= y < y1 (0, H: all of it; 2D: not read); split: the fine
 * rows are stored even points first, then odd ones (xsplit.h), the same sums; csplit (with
 * split): the coarse rows too. */
bool rb_transfer_prolong_plan(const rb_op *P, rb_shape coarse, rb_shape fine, rb_conv_geom *g);
void rb_transfer_prolong_line(const rb_conv_geom *g, int dims, const double *w, const double *coarse, size_t n,
                              size_t l, size_t y0, size_t y1, double *fine_line, bool add, bool split, bool csplit);

/* coarse = R (f - A u) in one pass, for a stencil A that rb_stencil_any_init takes and a
 * plain conv R that rb_transfer_fast_apply handles. Scratch: residual lines from work
 * (rb_transfer_restrict_residual_workspace). false: not handled, nothing changed. */
bool rb_transfer_restrict_residual(rb_context *ctx, const rb_op *A, const rb_op *R, const rb_tensor *u,
                                   const rb_tensor *f, rb_tensor *coarse, rb_arena *work);
size_t rb_transfer_restrict_residual_workspace(const rb_op *A, const rb_op *R, rb_shape fine);

/* The pieces of that pass, for kernels that produce the residual lines themselves (the
 * red-black wavefront's last stage, redblack.c): whether (A, R) on this fine grid is a
 * pair it takes (filling the stencil and R's geometry), and coarse line C of sample n
 * (a row in 2D, a plane in 3D) from the residual lines 2C, 2C+1, 2C+2 under it, in 3D only
 * the coarse plane's rows Y0 <= Y < Y1 (those read the fine lines' rows 2 Y0 to 2 Y1, both
 * included; 0, ch: all of it; 2D: not read). */
bool rb_transfer_restrict_pair(const rb_op *A, const rb_op *R, rb_shape fine, rb_stencil_any *k, rb_conv_geom *g);
/* R's half of that: whether R is a restriction of `dims` dimensions those lines take on this grid. */
bool rb_transfer_restrict_plan(const rb_op *R, int dims, rb_shape fine, rb_conv_geom *g);
/* coarse = R fine for a 2D restriction R those lines take, fine stored split (xsplit.h), coarse
 * split too if csplit: the plain restriction's sums, bit for bit. false: not taken, nothing done. */
bool rb_transfer_restrict_split(rb_context *ctx, const rb_op *R, const rb_tensor *fine, rb_tensor *coarse, bool csplit);

/* (split: the fine lines' rows stored even points first, then odd ones, xsplit.h; csplit: the
 * coarse rows so stored) */
void rb_transfer_restrict_line(const rb_conv_geom *g, int dims, const double *w, size_t n, size_t C, size_t Y0,
                               size_t Y1, const double *const lines[3], double *coarse, bool split, bool csplit);

#endif
