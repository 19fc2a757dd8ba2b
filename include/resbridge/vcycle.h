/* vcycle.h — the V-, W- and F-cycle (and full multigrid over them), written once over per-level
 * operators.
 *
 * The same routine runs a multigrid solver (MG mode: stencils, Jacobi or
 * red-black smoothers, full weighting, linear interpolation) and a U-Net /
 * MgNet (NN mode: learned convolutions and activations). On level l:
 *
 *     smooth:     u <- u + h F(u)         for each pre-smoothing step (rb_residual_step)
 *     residual:   r = f - A u
 *     restrict:   f_{l+1} = R r,  u_{l+1} = 0   (with a projection Pi: u_{l+1} = Pi u,
 *                 f_{l+1} = R r + A_{l+1} u_{l+1}, MgNet's form)
 *     recurse:    once (V), twice (W), or an F-cycle then a V-cycle (F)
 *     correct:    u <- u + P u_{l+1}      (the U-Net's long skip connection)
 *     smooth:     each post-smoothing step
 *
 * and on the coarsest level a direct solve. The smoother operators read f_l
 * themselves (e.g. the Jacobi operator F(u) = D^{-1}(f - A u) references f).
 *
 *     rb_vcycle vc = {levels, nlevels, coarse_solve, coarse_data, RB_CYCLE_V};
 *     for (k = 0; k < cycles; k++) rb_vcycle_run(ctx, &vc, &work);   // u_0 improves
 */
#ifndef RESBRIDGE_VCYCLE_H
#define RESBRIDGE_VCYCLE_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* V, W, F; DOWN: the down-leg only (pre-smoothing and restriction on every level, then the
 * coarsest level; no correction, no post-smoothing): MgNet's feature extractor. */
typedef enum rb_cycle { RB_CYCLE_V, RB_CYCLE_W, RB_CYCLE_F, RB_CYCLE_DOWN, RB_CYCLE_COUNT } rb_cycle;

const char *rb_cycle_name(rb_cycle c);

/* One smoothing step: u <- u + h F(u). Every smoother is of the residual-correction
 * form F(u) = S(f - A u) with the level's A (Jacobi: S = D^{-1}; a colour: S = m_c D^{-1};
 * MgNet: S = sigma(B * sigma(.))). Naming S lets the taped cycle differentiate through
 * f and the parameters of A and S (rb_vcycle_backward); F is then typically
 * rb_op_smoother_create(A, S, f). S may be NULL for forward-only cycles. */
typedef struct rb_vstep {
    const rb_op *F;
    double h;
    const rb_op *S;
} rb_vstep;

typedef struct rb_vlevel {
    rb_tensor u, f, r;     /* iterate, right-hand side, residual / scratch (same shape;
                            * r's contents after a cycle are unspecified) */
    const rb_op *A;        /* r = f - A u */
    const rb_vstep *pre;   /* pre-smoothing steps, in order */
    size_t npre;
    const rb_vstep *post;  /* post-smoothing steps, in order */
    size_t npost;
    const rb_op *R;        /* r_l -> f_{l+1} (NULL on the coarsest level) */
    const rb_op *P;        /* u_{l+1} -> correction on level l (NULL on the coarsest level) */
    const rb_op *Pi;       /* optional feature projection (MgNet): the coarse iterate starts at
                            * u_{l+1} = Pi u and f_{l+1} = R (f - A u) + A_{l+1} u_{l+1}; NULL: u_{l+1} = 0 */
} rb_vlevel;

/* Solve (approximately or exactly) on the coarsest level: u = A^{-1} f. */
typedef rb_status (*rb_coarse_solve_fn)(rb_context *ctx, void *data, const rb_tensor *f, rb_tensor *u);

typedef struct rb_vcycle {
    rb_vlevel *level;          /* level[0] finest ... level[nlevels-1] coarsest */
    size_t nlevels;
    rb_coarse_solve_fn coarse_solve; /* NULL: the coarsest level is smoothed instead (its pre
                                      * steps from u = 0, as in MgNet) */
    void *coarse_data;
    rb_cycle cycle;
    rb_coarse_solve_fn coarse_adjoint; /* u = A^{-T} f for the taped backward; NULL: coarse_solve
                                        * is a linear self-adjoint solve (symmetric A) */
} rb_vcycle;

/* Check shapes and pointers once (rb_vcycle_run assumes a checked hierarchy). */
rb_status rb_vcycle_check(rb_context *ctx, const rb_vcycle *vc);

/* Work memory one cycle needs (scratch of smoothers and operators). */
size_t rb_vcycle_workspace(const rb_vcycle *vc);

/* One cycle from level `from` down (0 for the whole hierarchy): improves level[from].u
 * for right-hand side level[from].f. Allocates nothing. */
rb_status rb_vcycle_run(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_arena *work);

/* rb_vcycle_run, and then ||f - A u|| on level[from] into *norm (a solve driver's
 * convergence test): where the last post-smoothing step's operator can (the red-black
 * colour sweep op), summed in that step's pass over the grid, else in a pass of its
 * own (rb_vcycle_residual). Equal to rb_vcycle_run then rb_vcycle_residual to rounding. */
rb_status rb_vcycle_run_norm(rb_context *ctx, const rb_vcycle *vc, size_t from, double *norm, rb_arena *work);

/* rb_vcycle_run_norm for a driver that runs cycles one after another on one f: where level
 * `from` has no pre-smoothing (and no projection), the residual the cycle's last pass computes
 * for the norm is also restricted there, f_{from+1} = R (f - A u), and the next cycle starts from
 * it instead of a pass of its own. *restricted: on entry whether level[from+1].f holds that
 * restriction for the current u (false for a first cycle, and whenever u, f or level from+1's
 * f changed since the last call); on return whether it does now. The same numbers as
 * rb_vcycle_run_norm. */
rb_status rb_vcycle_run_next(rb_context *ctx, const rb_vcycle *vc, size_t from, double *norm, bool *restricted,
                             rb_arena *work);

/* Full multigrid on level `from` (0: the whole hierarchy) for level[from].f: f is restricted to
 * every coarser level (f_{l+1} = R f_l), the coarsest level solved (or smoothed from u = 0), and
 * each level from the second-coarsest up to `from` starts from the next one's result
 * interpolated, u_l = P u_{l+1} (taken into its first pre-smoothing pass where the smoother's
 * operator can; u_l's values before are not read), then runs `cycles` (1..64) cycles of vc's
 * kind. level[from].u is output only; the coarser levels' u and f are overwritten. Not for a
 * DOWN hierarchy. Allocates nothing. */
rb_status rb_vcycle_fmg(rb_context *ctx, const rb_vcycle *vc, size_t from, int cycles, rb_arena *work);

/* The up-leg of one cycle on level `from` (below the coarsest) alone, for a driver that made
 * level[from+1].u another way, e.g. by rb_vcycle_fmg for f_{from+1} = R (f - A u): u += P
 * u_{from+1} (assign: u = P u_{from+1}, u's values not read -- a start from u = 0), the
 * post-smoothing, ||f - A u|| into *norm; where level `from` has no
 * pre-smoothing (and no projection) its last pass also restricts the new residual,
 * f_{from+1} = R (f - A u), for rb_vcycle_run_next's next cycle (*restricted: whether it did).
 * The same numbers as the second half of rb_vcycle_run_norm. */
rb_status rb_vcycle_run_up(rb_context *ctx, const rb_vcycle *vc, size_t from, bool assign, double *norm,
                           bool *restricted, rb_arena *work);

/* ---- network mode: the cycle taped, and its backward ------------------------------------------
 *
 * The same cycle (cycle() in vcycle.c) records what its backward needs on a tape: the
 * iterate before each smoothing step, the iterate and the new coarse data at each
 * restriction, the coarse iterate at each correction. rb_vcycle_backward walks one
 * cycle's records in reverse with the adjoints of u and f on every level:
 *
 *     rb_vtape tape; rb_vtape_init(ctx, &tape, k * rb_vcycle_tape_bytes(&vc, 0));
 *     for (c = 0; c < k; c++) rb_vcycle_run_taped(ctx, &vc, 0, &tape, &work);  // k cycles
 *     // du = dL/du_k (seed), df = 0
 *     for (c = 0; c < k; c++) rb_vcycle_backward(ctx, &vc, 0, &tape, &du, &df, grad_of, user, &work);
 *     // now du = dL/du_0, df = dL/df, and grad_of(op) slices hold dL/dtheta
 *
 * Every smoothing step needs its S (rb_vstep). The top level's f must not change between
 * the forward and the backward calls. */
typedef struct rb_vtape {
    rb_arena mem;
    void *last;  /* the newest record */
    void *begin; /* the record that opens the cycle being recorded */
} rb_vtape;

rb_status rb_vtape_init(rb_context *ctx, rb_vtape *tape, size_t bytes);
void rb_vtape_clear(rb_vtape *tape);
void rb_vtape_release(rb_context *ctx, rb_vtape *tape);

/* Tape bytes of one cycle from level `from`. */
size_t rb_vcycle_tape_bytes(const rb_vcycle *vc, size_t from);
/* Work bytes rb_vcycle_backward needs (besides rb_vcycle_workspace for the forward). */
size_t rb_vcycle_backward_workspace(const rb_vcycle *vc, size_t from);

/* rb_vcycle_run, recording on the tape (fused passes are not taken: same numbers). */
rb_status rb_vcycle_run_taped(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_vtape *tape, rb_arena *work);

/* Where an operator's parameter gradient accumulates (NULL: not learned). */
typedef double *(*rb_vgrad_fn)(void *user, const rb_op *op);

/* Backward of the newest taped cycle (which it removes from the tape): on entry du holds
 * dL/du after the cycle, on return dL/du before it; df += dL/df (level `from`'s f);
 * grad_of(user, op) += dL/dtheta for A, S, R, P and Pi of every level (grad_of may be NULL).
 * seeds (may be NULL; else nlevels entries, each NULL or of its level's shape): dL/du_l of
 * the other levels' iterates after the cycle (a DOWN cycle's output is the coarsest u). */
rb_status rb_vcycle_backward(rb_context *ctx, const rb_vcycle *vc, size_t from, rb_vtape *tape, rb_tensor *du,
                             rb_tensor *df, const rb_tensor *const *seeds, rb_vgrad_fn grad_of, void *user,
                             rb_arena *work);

/* The smoothing operator in residual-correction form, F(u) = S(f - A u): A and S
 * (shape-keeping) and f are referenced, not owned; f's data may change between calls.
 * Its vjp differentiates with respect to u only (-A^T J_S^T); the taped cycle reaches f
 * and the parameters through rb_vstep.S. rb_residual_step(F, h, u, u) is the step. */
rb_status rb_op_smoother_create(rb_context *ctx, const rb_op *A, const rb_op *S, const rb_tensor *f, rb_op **out);

/* r = f - A u on one level (the residual the cycle uses). */
rb_status rb_vlevel_residual(rb_context *ctx, const rb_vlevel *lv, rb_arena *work);

/* r = f - A u for any operator A and, if norm != NULL, ||r||_2 into *norm (scaled
 * where the squares would over- or underflow; NaN if r has one): one pass for
 * single-channel 2D and 3D stencils, the same r as rb_op_apply then f - Au.
 * r must not alias u or f. r == NULL: the norm only (the solve drivers'
 * convergence test), with a row per thread, or a grid for other operators, from work. */
rb_status rb_vcycle_residual(rb_context *ctx, const rb_op *A, const rb_tensor *u, const rb_tensor *f, rb_tensor *r,
                             double *norm, rb_arena *work);

#ifdef __cplusplus
}
#endif
#endif
