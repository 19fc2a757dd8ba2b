/* vnet.h — the V-cycle in network mode: MgNet / U-Net level operators on the one
 * cycle of vcycle.h, forward and backward through several cycles.
 *
 * On level l (C channels, batch N, vertex grids n_l = (n_{l-1} - 1) / 2):
 *     A_l   data-feature map, 3^d conv C -> C           r = f - A u
 *     B_l   smoother conv, 3^d C -> C                   u <- u + h sigma(B * sigma(f - A u))   (nu steps)
 *     R_l   restriction, stride-2 conv C -> C           f_{l+1} = R (f - A u), u_{l+1} = 0
 *     P_l   prolongation, transposed stride-2 conv      u <- u + P u_{l+1}   (the long skip)
 * and on the coarsest level either a direct solve (LU of its A, C = 1) or its smoothing
 * steps. Each smoothing step is rb_residual_step of rb_op_smoother_create(A, S, f), with
 * S = sigma o B o sigma (S = B for sigma = identity).
 *
 * With norm = RB_NORM_BATCH the smoother is MgNet's normalised one (the placement of He & Xu's
 * MgNet code, BN before each activation):
 *     u <- u + h sigma(BN_B(B * sigma(BN_r(f - A u))))
 * S = sigma o BN_B o B o sigma o BN_r, one chain per level owning B and both batch norms (the
 * level's smoothing steps share them, as they share B; each application in a tracking mode
 * moves the running statistics once, the backward's recomputation never). gamma and beta are
 * learned with the other parameters (parts RB_VNET_BN_R, RB_VNET_BN_B). With RB_NORM_BATCH_ALL,
 * in a net with projections (MgNet) the transfers are normalised as in that code too:
 *     u_{l+1} = sigma(BN(Pi * u)),   f_{l+1} = sigma(BN(R * (f - A u))) + A_{l+1} u_{l+1}
 * (parts RB_VNET_BN_PI, RB_VNET_BN_RT; R and Pi then name the convolutions inside).
 *
 * With C = 1, sigma = identity and rb_vnet_set_poisson (A = -Laplacian, B = D^{-1},
 * h = omega, R = full weighting, P = bilinear) the network is the damped-Jacobi
 * multigrid solver of multigrid.h, iterate for iterate (tests/test_vnet.c).
 *
 *     rb_vnet_config cfg = rb_vnet_config_default();   // 2D, n = 31, 3 levels, C = 1
 *     rb_vnet *net; rb_vnet_create(ctx, &cfg, &net);
 *     rb_vnet_forward(ctx, net, &f, NULL, &u, 2, true);     // two cycles from u = 0, taped
 *     rb_vnet_backward(ctx, net, &du, NULL, &df);           // dL/df, and dL/dtheta in rb_vnet_grad
 */
#ifndef RESBRIDGE_VNET_H
#define RESBRIDGE_VNET_H

#include <stdbool.h>
#include "resbridge/activation.h"
#include "resbridge/layers.h"
#include "resbridge/multigrid.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_vnet_config {
    int dim;             /* 1, 2 or 3 */
    size_t n;            /* finest grid: n points per direction, n = m 2^k - 1 */
    size_t levels;       /* 1 .. 16; each coarser grid has (n - 1) / 2 points */
    size_t channels;     /* C >= 1 */
    size_t batch;        /* N >= 1 samples per run */
    int pre, post;       /* smoothing steps per level, 0 .. 8 (the coarsest: pre steps when not solved) */
    rb_activation act;   /* sigma */
    rb_cycle cycle;
    bool coarse_solve;   /* coarsest level solved (LU of A; needs C = 1, sigma-free linear A) */
    bool projection;     /* MgNet's feature projection Pi_l (stride-2 conv C -> C): the coarse iterate
                          * starts at Pi u and f_{l+1} = R (f - A u) + A_{l+1} Pi u (a network, not a solver) */
    unsigned long seed;  /* weight initialisation (uniform, +-1/sqrt(fan-in)) */
    rb_norm_kind norm;   /* NONE; BATCH: the smoothers normalised (eps 1e-5, momentum 0.1, gamma 1, beta 0);
                          * BATCH_ALL: with projections, the transfers as well */
} rb_vnet_config;

/* 2D, n = 31, 3 levels, C = 1, N = 1, V(1,1), identity, coarse solve, seed 1, no normalisation. */
rb_vnet_config rb_vnet_config_default(void);

/* BN_R, BN_B: the smoother's batch norms (of f - A u, of B's output); BN_RT, BN_PI: those of the
 * restriction's and the projection's outputs (normalised nets with projections); NULL where absent. */
typedef enum rb_vnet_part {
    RB_VNET_A, RB_VNET_B, RB_VNET_R, RB_VNET_P, RB_VNET_PI, RB_VNET_BN_R, RB_VNET_BN_B, RB_VNET_BN_RT, RB_VNET_BN_PI,
    RB_VNET_PART_COUNT
} rb_vnet_part;

typedef struct rb_vnet rb_vnet;

rb_status rb_vnet_create(rb_context *ctx, const rb_vnet_config *cfg, rb_vnet **out);
void rb_vnet_free(rb_context *ctx, rb_vnet *net);

const rb_vnet_config *rb_vnet_config_of(const rb_vnet *net);
/* The level operator (its params may be set directly; call rb_vnet_refresh after changing
 * A on the coarsest level of a solved net). NULL for R, P on the coarsest level or a bad index. */
rb_op *rb_vnet_op(const rb_vnet *net, size_t level, rb_vnet_part part);
/* The grid of level l: (N, C, n_l...) with unused dimensions 1. */
rb_shape rb_vnet_shape(const rb_vnet *net, size_t level);
const rb_vcycle *rb_vnet_vcycle(const rb_vnet *net);
/* The step size h of every smoothing step (default 1). */
rb_status rb_vnet_set_step(rb_context *ctx, rb_vnet *net, double h);
/* The weights of the Poisson solver: A_l = -Laplacian on level l, B_l = D_l^{-1} (centre
 * tap), h = omega, R = full weighting, P = bilinear. Needs C = 1. */
rb_status rb_vnet_set_poisson(rb_context *ctx, rb_vnet *net, double omega);
/* Factorise the coarsest A again (after its weights changed). */
rb_status rb_vnet_refresh(rb_context *ctx, rb_vnet *net);

/* u = `cycles` cycles from u0 (NULL: zero) for right-hand side f (all of shape
 * rb_vnet_shape(net, 0)); taped: the backward can follow. */
rb_status rb_vnet_forward(rb_context *ctx, rb_vnet *net, const rb_tensor *f, const rb_tensor *u0, rb_tensor *u,
                          int cycles, bool taped);
/* Backward of the last taped rb_vnet_forward for seed du = dL/du: du0 = dL/du0 and
 * df = dL/df (each may be NULL; overwritten), and rb_vnet_grad(net, op) += dL/dtheta.
 * Consumes the tape. */
rb_status rb_vnet_backward(rb_context *ctx, rb_vnet *net, const rb_tensor *du, rb_tensor *du0, rb_tensor *df);
/* The gradient accumulator of a level operator's parameters (nparams values). */
double *rb_vnet_grad(const rb_vnet *net, const rb_op *op);
/* Level l's iterate after the last rb_vnet_forward (the coarsest for a DOWN cycle: MgNet's features). */
const rb_tensor *rb_vnet_level_u(const rb_vnet *net, size_t level);
/* rb_vnet_backward with seeds dL/du_l on every level (seeds[l] NULL: 0; seeds[0] the top level's). */
rb_status rb_vnet_backward_levels(rb_context *ctx, rb_vnet *net, const rb_tensor *const *seeds, rb_tensor *du0, rb_tensor *df);
void rb_vnet_zero_grad(rb_vnet *net);
/* The learned operators, level by level (A, S = sigma o B o sigma, R, P, Pi where present):
 * i < rb_vnet_nlearned(net); NULL past the end. */
size_t rb_vnet_nlearned(const rb_vnet *net);
rb_op *rb_vnet_learned(const rb_vnet *net, size_t i);

/* ---- normalisation ----------------------------------------------------------------------------
 * The net's batch-norm layers (level by level: BN_R, BN_B, then BN_RT, BN_PI where present), for mode switches, checkpoints and
 * export; i < rb_vnet_nbn(net), NULL past the end. */
size_t rb_vnet_nbn(const rb_vnet *net);
rb_op *rb_vnet_bn(const rb_vnet *net, size_t i);
/* Every batch-norm layer to `mode` (RB_BN_TRAIN_TRACK: the next forwards move the running
 * statistics; RB_BN_EVAL: they normalise with them). Nothing to do without normalisation. */
rb_status rb_vnet_set_mode(rb_context *ctx, rb_vnet *net, rb_bn_mode mode);
/* Forwards that recompute (a backward's) must not move the running statistics: hold = true
 * switches the layers in RB_BN_TRAIN_TRACK mode to RB_BN_TRAIN, hold = false switches those
 * back. rb_vnet_backward holds them itself while it recomputes the smoothers. */
rb_status rb_vnet_hold_tracking(rb_context *ctx, rb_vnet *net, bool hold);
/* Run on the first `rows` samples of the batch only (1 .. cfg.batch; the grids of
 * rb_vnet_shape, and so the arguments of rb_vnet_forward/backward, then have N = rows): batch
 * statistics over the samples there are, not over padding. Drops a taped forward. */
rb_status rb_vnet_set_rows(rb_context *ctx, rb_vnet *net, size_t rows);

/* Cycles (N = 1) from u until |f - A_0 u| <= tol |f| or max_cycles; the report as
 * rb_mg_solve's (RB_EMAXITER, RB_EDIVERGED with the history). */
rb_status rb_vnet_solve(rb_context *ctx, rb_vnet *net, const rb_tensor *f, rb_tensor *u, double tol, int max_cycles,
                        rb_mg_report *report);
/* Conjugate gradients (N = 1) from u, preconditioned by one cycle from zero (rb_pcg): the
 * cycle must be symmetric (post-smoothing the adjoint of pre-smoothing, P = c R^T), as the
 * Poisson and the learned point-symmetric weights make it. */
rb_status rb_vnet_pcg(rb_context *ctx, rb_vnet *net, const rb_tensor *f, rb_tensor *u, double tol, int max_iter,
                      rb_mg_report *report);

/* Variable coefficients: the level operators A_l become the multigrid solver's (referenced:
 * mg must outlive the net; rediscretised or Galerkin), R, P full weighting and bilinear,
 * and every smoother B_l a point-dependent full 3^d stencil (varstencil.h), starting as
 * damped Jacobi (B = D^{-1} pointwise, h = omega). mg must have the net's n and levels. */
rb_status rb_vnet_use_mg_operators(rb_context *ctx, rb_vnet *net, const rb_mg *mg, double omega);
/* The diagonal (centre weights) of level l's A, one value per grid point. */
rb_status rb_vnet_diagonal(rb_context *ctx, const rb_vnet *net, size_t level, double *diag);
/* ---- weights files ----------------------------------------------------------------------------
 * A versioned, checksummed binary file of a net's weights (little-endian):
 *   "RBVNET\r\n" magic, u32 version (1), u32 header words (10)
 *   header (u64 words): dim, n, levels, channels, act, pre, post, cycle, coarse_solve,
 *     h (the bits of the double: the first smoothing step's size)
 *   per level l (7 u64 words): parameter counts of A_l, B_l, R_l, P_l (0 where the level has
 *     none), its pre- and post-smoothing step counts, and D_l (the bits of the double: the
 *     centre of A_l, the mean of its C diagonal centre taps)
 *   per level l (doubles): A_l, B_l, R_l, P_l parameters, the pre steps' sizes h, the post steps'
 *   u32 CRC-32 (zlib) of every byte before it
 * Written to a temporary file and renamed (a reader sees the old file or the new one).
 *
 * rb_vnet_load reads the whole file and verifies magic, version, size and checksum and that it
 * fits the net, and only then changes the net (then rb_vnet_refresh); on any error the net is
 * left as it was, and the message names the file's shape and the net's.
 *   any_size = false: the file must be of the same configuration (dim, n, levels, channels, act,
 *     pre, post, cycle, coarse_solve); every weight and step size is restored bit for bit.
 *   any_size = true: learned weights reused on another grid. dim, channels, act, pre, post,
 *     cycle and coarse_solve must match; n and levels may differ. The net keeps its own A_l
 *     (e.g. the Poisson stencils of rb_vnet_set_poisson); level l of the net takes the file's
 *     smoothed level s(l) of the same grid size -- the file's finest for finer grids, its
 *     coarsest smoothed level for coarser ones (the rule of rb_vnet_copy_smoothers, learn.h) --
 *     and the net's coarsest level the file's coarsest:
 *         B_l = B_file[s] * D_file[s] / D_l      (smoother weights kept relative to D^{-1}),
 *         R_l = R_file[s], P_l = P_file[s], step sizes h = those of the file's level s.
 *     With the Poisson stencils, D_l = 2 dim (n_l + 1)^2, so a file of the damped-Jacobi
 *     weights (B = D^{-1}) loads as the damped-Jacobi weights of any n. Needs L_file >= 2 when
 *     the net has more than one level, and D_file[s], D_l finite and non-zero. */
/* Normalised nets (norm != NONE) are refused: version 1 holds no batch norms. */
rb_status rb_vnet_save(rb_context *ctx, const rb_vnet *net, const char *path);
rb_status rb_vnet_load(rb_context *ctx, rb_vnet *net, const char *path, bool any_size);
/* The configuration a weights file was written by (batch = 1, seed = 0), after the same checks
 * as rb_vnet_load: the net to create for it (or, with any_size, a template to change n, levels). */
rb_status rb_vnet_peek(rb_context *ctx, const char *path, rb_vnet_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
