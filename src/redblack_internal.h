/* redblack_internal.h — the red-black star-stencil kernel behind the colour op's
 * half-sweep (colour.c) and the red-black Gauss-Seidel sweep op (rbgs.c).
 *
 * For a Jacobi operator F(u) = D^{-1}(b - A u) over a constant-coefficient 2D
 * 5-point or 3D 7-point star A, a colour step u <- u + h F(u) restricted to one
 * colour ((x + y + z) mod 2 == c) is, at each point of the colour,
 *
 *     u_p <- cb b_p + sum_t c_t u_{p+t} + cc u_p,
 *     cb = h / D,  c_t = -h w_t / D,  cc = 1 - h w_centre / D,
 *
 * summed in that order with fused multiply-adds (where the build has them), taps
 * outside the grid skipped. It agrees with the generic path (mask of F, then
 * x + h F) to rounding, and with itself bit for bit wherever it runs: vector
 * lanes, scalar tails, any thread count.
 *
 * A run is a sequence of `stages` colour steps on u in place, alternating colours
 * from `colour0`: stages = 1 is one half-sweep, stages = 2 one red-black sweep,
 * 2k k sweeps. The stages go through the grid in one pass, a wavefront over
 * "lines" (rows in 2D, planes in 3D): stage s works on line l - s while stage 0
 * works on line l, so every point is read from memory once per run. A star
 * couples a point only to the other colour, so each stage reads exactly the
 * values the sequence of separate colour steps would: the result is theirs,
 * bit for bit. Threads take blocks of lines (a trapezoid each); then each fills the
 * triangle at its block's upper boundary, as soon as the next thread's trapezoid has
 * gone past the triangle's lines (no barrier), the blocks sized so that every thread
 * has as many line-stages.
 */
#ifndef RB_REDBLACK_INTERNAL_H
#define RB_REDBLACK_INTERNAL_H

#include <stdbool.h>

#include "grid_fast.h"

/* An optional last stage of a run (after the last colour step, one line behind it):
 * the residual r = f - A u of the run's result, line by line into a ring of three
 * lines per thread, and from it the sum of squares and / or the restriction R r.
 * A is any stencil rb_stencil_any takes (a residual line reads lines l-1 .. l+1,
 * as a colour step does). Each contiguous run of residual lines restricts the coarse lines
 * whose three fine lines it holds (a thread's trapezoid and triangle make one run; in tiles,
 * each tile's trapezoid and the triangle are runs of their own); the coarse line whose lines
 * two runs share (at a block boundary, and in tiles where the trapezoid's runs meet the
 * triangle's) is restricted from its three residual lines computed again. */
typedef struct rb_redblack_then {
    rb_stencil_any A;
    const rb_op *vA;       /* or a varstencil (rb_varstencil_residual_line) instead of A */
    const double *f;
    bool norm;             /* sum r^2 into norm2 */
    double norm2;          /* out: summed per line, lines in order per thread, threads in order */
    const double *rw;      /* restriction weights (R->params), NULL: no restriction */
    rb_conv_geom g;        /* R's geometry */
    double *coarse;
    double *ring;          /* max_threads * 3 * line doubles */
    size_t line;           /* doubles per line: W (2D) or H*W (3D) */
    int max_threads;       /* threads the ring has room for (>= 1) */
    bool csplit;           /* with a split kernel (rb_redblack.split): the coarse grid stored split too */
} rb_redblack_then;

/* An optional first stage of a run (one line ahead of the first colour step): the
 * coarse-grid correction u += P c, or u = P c (assign), line by line (rb_transfer_prolong_line). */
typedef struct rb_redblack_first {
    rb_conv_geom g;        /* P's geometry */
    const double *w;       /* P->params */
    const double *c;       /* the coarse grid */
    bool csplit;           /* with a split kernel (rb_redblack.split): the coarse grid stored split too */
    bool assign;           /* u = P c: u's values before are not read */
} rb_redblack_first;

/* The class kernel's view of a Jacobi base J = D^{-1} (b - A u) (see rb_redblack_class_init):
 * the taps, their offsets in the grid, and the weights (w[t * tstride + p * wstep]: wstep 0
 * for a constant stencil, 1 for a point-dependent one). */
typedef struct rb_class_step {
    int nt;
    const int (*tap)[3];
    long long off[RB_CONV_MAX_TAPS];
    const double *w, *dvar; /* dvar: point-dependent diagonal, or NULL (then inv) */
    size_t tstride, wstep;
    double inv, h;
    bool reach_z, reach_y;  /* some tap leaves the plane / the row */
    bool parity;            /* the classes are parity classes, not red-black colours */
    int ncls, cls[8];       /* step j works on class cls[j mod ncls] */
    const double *packed[8]; /* by class: its weights in the packed layout (rb_redblack_class_pack),
                              * or NULL (read from w in place); parity classes of a varstencil only */
} rb_class_step;

typedef struct rb_redblack {
    int dims;              /* 2 or 3 (1..3 with a class kernel) */
    size_t n, d, h, w;     /* samples and grid extents (d = 1 in 2D) */
    double cn[6];          /* neighbour coefficients in tap order without the centre:
                            * 2D: y-, x-, x+, y+;  3D: z-, y-, x-, x+, y+, z+ */
    double cb, cc;         /* coefficients of b and of the point's old value */
    const double *b;       /* right-hand side (the Jacobi operator's b) */
    double *u;             /* the grid updated in place */
    const rb_redblack_first *first; /* NULL: no stage before the colour steps */
    rb_redblack_then *then; /* NULL: none after them */
    const rb_class_step *cls; /* NULL: the constant-star row kernel; else the class kernel */
    int step0;             /* the class kernel's first step is its class cls[step0 mod ncls] (0 from init) */
    bool split;            /* 2D star kernel only: u, b, the residual's f and lines stored split, each row's
                            * even points first, then its odd ones (xsplit.h); false from init */
    size_t tile;           /* 3D: rows per tile of the wavefront (see rb_redblack_run); 0 from init: chosen
                            * by the planes' size; the result is the same for any (the norm: to rounding) */
} rb_redblack;

/* Fill k for colour steps of size h with the Jacobi operator J on a grid of
 * shape s. false (k untouched) unless J is a Jacobi operator over a constant 2D
 * 5-point or 3D 7-point star, s has one channel and the star's dimensions, and
 * h is finite. k->u, k->first and k->then are left NULL: the caller points u at the grid. */
bool rb_redblack_init(const rb_op *J, rb_shape s, double h, rb_redblack *k);

/* The first x of class cls (a red-black colour, or with parity a parity class) in row (z, y)
 * of a grid, the class's points then every 2; -1: none in this row. */
long long rb_redblack_class_first(bool parity, int cls, size_t z, size_t y);

/* Fill k for class steps of size h with the Jacobi operator J on a grid of shape s: the
 * classes cls[0..ncls) repeated (red-black colours 0 / 1, or with `parity` the parity
 * classes of rb_op_parity_create), J over a constant conv stencil or a varstencil (point-
 * dependent diagonal), any dims. At each point p of a step's class
 *     u_p <- u_p + h (b_p - sum_t w_t(p) u_{p+t}) / D_p,
 * taps summed in tap order from 0 (those outside the grid skipped), then (b - Au) * (1/D)
 * (constant) or (b - Au) / D_p (point-dependent), then u + h F: the generic path's
 * operations (Jacobi, restricted, then the residual step), bit for bit. No stencil may
 * couple two points of a class: red-black colours need a star. Rows whose taps all lie
 * inside the grid run their inner points in vectorised blocks. The steps go through the
 * grid in one pass (the wavefront of rb_redblack_run), which is valid as for the colour
 * steps: each step reads lines l-1 .. l+1 only. false (k untouched) unless all of that
 * holds; cs holds the kernel's state and must live as long as k is used. */
bool rb_redblack_class_init(const rb_op *J, rb_shape s, double h, bool parity, const int *cls, int ncls, rb_class_step *cs,
                            rb_redblack *k);

/* The parity class cls's point weights (a varstencil's, nt planes of `grid`'s points) packed for
 * the class kernel: per row (z, y) of the class, slot (z/2) ((H+1)/2) + y/2, holding all the
 * row's class points -- x = 0 if the class has it (nt taps), the blocks of 4 class points
 * x, x+2, x+4, x+6 that the kernel vectorises (x from 2 or 1, while x + 8 < W), each nt taps of
 * 4 lanes in the order x, x+4, x+2, x+6 (the order the kernel's unpacklo of 8 consecutive
 * values gives), then the points after the blocks (nt taps each). The class's weights are then
 * one contiguous stream, read once per class step, instead of nt streams of which every row's
 * other half is skipped. count: the doubles of the layout (nt per class point). */
size_t rb_redblack_class_pack_count(rb_shape grid, int nt, int cls);
void rb_redblack_class_pack(const double *w, rb_shape grid, int nt, int cls, double *out);

/* The threads' schedule of a run over L lines with S stages on T >= 2 threads (rb_redblack_run
 * takes T <= L / (2S + 2) and splits the steps into several runs otherwise).
 *
 * Thread t's block is [bound(t), bound(t + 1)): the L / T lines of an even split, every inner
 * boundary moved (S - 1) / 2 lines down. Thread t < T - 1 fills the triangle at its block's
 * upper boundary (S (S - 1) line-stages) after its trapezoid, which lacks S (S - 1) / 2 of its
 * block's S lines per stage at each inner boundary; so every thread has about L S / T
 * line-stages: thread 0's block is the shorter by as much as its triangle adds, the last
 * thread's the longer by as much as its trapezoid lacks.
 *
 * The triangle at boundary r reads and writes lines r - S .. r + S (the straddling
 * restriction's residual lines read r + S + 1 too). The next thread's trapezoid, which starts
 * at r, touches lines x - S and above at its time x (stage s on line x - s reads x - s - 1):
 * once its first reach(S) times (x = r .. r + reach - 1) are done, it never touches those
 * lines again, and the triangle runs as soon as they are, not after the whole trapezoid (no
 * barrier). In tiles of rows the mark is its last tile's first reach(S) times (each tile runs
 * all the times), so the triangle waits for all but the last tile. */
long long rb_redblack_bound(long long L, int S, int T, int t);
long long rb_redblack_reach(int S);

/* `steps` colour steps on k->u in place, colours colour0, 1 - colour0, ... (with a class
 * kernel: its classes in turn; colour0 unused), with k->first's stage before them and
 * k->then's after them where set.
 *
 * In 3D a wavefront whose planes would not stay in the caches goes in tiles of rows (k->tile):
 * each thread takes its block of planes tile by tile, the whole wavefront over the block for
 * each, stage s one row behind stage s - 1 along y as it is one plane behind along z; then only
 * the tile's rows of about 2S planes are in flight. A tile's residual stage starts a run of its
 * own (the coarse rows whose fine rows it holds; the two fine rows under its first ones are
 * computed again), and so does a triangle (then the coarse plane straddling where the
 * trapezoid's runs end is restricted apart, as at the block boundaries). */
void rb_redblack_run(const rb_redblack *k, int colour0, int steps, int threads);

/* The colour sweep op's fused pass (colour.c; rb_op_type.residual_fused_pass), and with split_b
 * the same on a grid stored split (xsplit.h): u, pass->f and the residual's rows even points
 * first, then odd ones, and split_b the Jacobi operator's right-hand side so stored (in place of
 * the plain one it references); pass->P, A and R the plain operators, whose kernels then read
 * and write split rows, and with coarse_split the coarse grid's rows (pass->c, pass->coarse)
 * split too. *done = false, nothing done: op is not a colour sweep op or the kernels do not take
 * it (split: the 2D 5-point star only). pass may ask for nothing (the sweeps alone). */
struct rb_residual_pass;
/* The rows per tile of the colour sweep op's 3D wavefront (rb_redblack.tile; 0, as created: chosen
 * by the planes' size). The same grids for any; tests take small tiles on small grids. */
rb_status rb_colour_sweep_set_tile(rb_context *ctx, rb_op *op, size_t rows);
rb_status rb_colour_sweep_pass(rb_context *ctx, const rb_op *op, double h, rb_tensor *u,
                               const struct rb_residual_pass *pass, const double *split_b, bool coarse_split, bool *done,
                               rb_arena *work);

#endif
