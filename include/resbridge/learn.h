/* learn.h — multigrid learned by backpropagation through the network-mode cycle.
 *
 * The smoother of every level but the coarsest (a 3x3 stencil B_l applied to the
 * residual, u <- u + B_l (f - A_l u), pre and post) is trained by Adam through k
 * cycles from u = 0 on batches of random right-hand sides, minimising the mean
 * log residual reduction per cycle, (1/k) log(|f - A u_k| / |f|). The weights are
 * dimensionless and point-symmetric: B_l = theta_l / D_l (D_l the centre of A_l,
 * theta_l a 3x3 stencil with theta(-i,-j) = theta(i,j), five values), so the cycle
 * stays symmetric (a CG preconditioner) and theta carries over to finer and coarser
 * grids. R and P stay full weighting and bilinear interpolation. A smoothing step
 * costs one 5-point residual and one 9-point stencil, as V(1,1) with 3x3 stencils does.
 *
 *     rb_vnet *net;  ... rb_vnet_set_poisson(ctx, net, 0.8);   // start: damped Jacobi
 *     rb_learn_config lc = rb_learn_config_default();
 *     rb_learn_report rep;
 *     rb_learn_smoother(ctx, net, &lc, &rep);
 *     rb_vnet_measure_factor(ctx, net, 1, 60, &factor);             // asymptotic factor
 */
#ifndef RESBRIDGE_LEARN_H
#define RESBRIDGE_LEARN_H

#include "resbridge/vnet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_learn_config {
    int cycles;          /* k: cycles backpropagated through, 1..32 (default 6) */
    int steps;           /* Adam steps (default 400) */
    double lr;           /* Adam learning rate on theta (default 0.01), cosine-annealed to lr/20 */
    unsigned long seed;  /* right-hand sides */
} rb_learn_config;

rb_learn_config rb_learn_config_default(void);

typedef struct rb_learn_report {
    int steps;
    double loss_first, loss_last; /* mean log residual reduction per cycle (first step, mean of the last 10) */
    double seconds;
} rb_learn_report;

/* Train the smoothers of net in place. The net must have C = 1, sigma =
 * identity and a coarse solve; its batch is the number of right-hand sides per step. It
 * starts from the net's current weights (e.g. rb_vnet_set_poisson: damped Jacobi), made
 * point-symmetric. RB_EDIVERGED when the loss stops being finite. */
rb_status rb_learn_smoother(rb_context *ctx, rb_vnet *net, const rb_learn_config *cfg, rb_learn_report *report);

/* Copy the learned smoothers (theta = B D) from one net to another of the same
 * kind but any size: level l of `to` takes the weights of the level of `from` with the same
 * grid size, the finest level of `from` for finer grids, its coarsest smoothed level for
 * coarser ones. The step sizes h are copied too. */
rb_status rb_vnet_copy_smoothers(rb_context *ctx, const rb_vnet *from, rb_vnet *to);

/* The asymptotic convergence factor of the net's cycle as a solver (batch 1), measured as
 * rb_mg_solve's: cycles from u = 0 for a seeded random right-hand side until the relative
 * residual reaches 1e-12 or max_cycles, geometric mean of the ratios over the second half.
 * RB_EDIVERGED (with the factor) when it is >= 1: such a cycle is not a solver. */
rb_status rb_vnet_measure_factor(rb_context *ctx, rb_vnet *net, unsigned long seed, int max_cycles, double *factor);

#ifdef __cplusplus
}
#endif
#endif
