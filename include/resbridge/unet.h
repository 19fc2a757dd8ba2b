/* unet.h — the U-Net reading of the one V-cycle: a grid-to-grid network users train.
 *
 *     x (N, Cin, n^d)  --lift: 3^d conv Cin -> C (+ bias)-->  f        (the cycle's data)
 *     u = K cycles of rb_vnet (vnet.h: A, B, R, P per level, coarsest level smoothed) from u = 0
 *     y (N, Cout, n^d) <--proj: 3^d conv C -> Cout (+ bias)--  u
 *
 * Every smoothing step u <- u + h sigma(B * sigma(f - A u)) is a residual step, restriction a
 * stride-2 conv (the encoder), prolongation a transposed stride-2 conv added to u (the
 * decoder with its long skip connection). The parameters live in one flat vector (order:
 * lift W, lift b; per level l = 0..L-1: A_l, B_l, then R_l, P_l except on the coarsest level (then,
 * normalised, gamma and beta of BN_r and of BN_B);
 * proj W, proj b; each conv in PyTorch's layout, conv.h) with a gradient vector of the same
 * length, so rb_optimizer (train.h) steps them directly; a forward reads the flat vector.
 *
 *     rb_unet_config cfg = rb_unet_config_default();      // 2D, n = 31, 2 -> 8 -> 1 channels
 *     rb_unet *net; rb_unet_create(ctx, &cfg, &net);
 *     rb_unet_forward(ctx, net, &x, &y, true);            // taped
 *     rb_loss_mse(ctx, &y, target, &loss, &dy);
 *     rb_unet_zero_grad(net); rb_unet_backward(ctx, net, &dy, NULL);
 *     rb_optimizer_step(ctx, &opt, rb_unet_params(net), rb_unet_grad(net), lr);
 *
 * For the trainer (any batch size, checkpoints, NPY export) the same network is an owning
 * rb_op, rb_op_unet_create, model kind RB_MODEL_UNET (model.h); `resbridge train --model unet`
 * trains it on rb_dataset_poisson's pairs (data.h).
 */
#ifndef RESBRIDGE_UNET_H
#define RESBRIDGE_UNET_H

#include "resbridge/vnet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_unet_config {
    int dim;             /* 1, 2 or 3 */
    size_t n;            /* grid points per direction, n = m 2^k - 1 (vertex grids) */
    size_t levels;       /* V-cycle levels, 1..16; 0: rb_unet_levels_for(n) */
    size_t in_channels;  /* Cin >= 1 */
    size_t channels;     /* C >= 1: the cycle's width */
    size_t out_channels; /* Cout >= 1 */
    size_t batch;        /* N >= 1 samples per forward */
    int pre, post;       /* smoothing steps per level (pre >= 1: the coarsest level is smoothed) */
    int cycles;          /* K >= 1 cycles from u = 0 */
    rb_activation act;   /* sigma of the smoother */
    rb_cycle cycle;
    unsigned long seed;  /* initialisation (uniform +-1/sqrt(fan-in), biases too, as PyTorch) */
    rb_norm_kind norm;   /* the smoothers' normalisation (vnet.h): BN_r, BN_B's gamma and beta follow B_l in
                          * the flat vector; modes and running statistics through rb_unet_vnet (rb_vnet_bn).
                          * rb_op_unet_create takes NONE only */
} rb_unet_config;

/* The most levels n allows with every grid of >= 3 points: 31 -> 4 (31, 15, 7, 3). */
size_t rb_unet_levels_for(size_t n);

/* 2D, n = 31, 4 levels, 2 -> 8 -> 1 channels, N = 1, V(1,1), 2 cycles, tanh, seed 1. */
rb_unet_config rb_unet_config_default(void);

typedef struct rb_unet rb_unet;

rb_status rb_unet_create(rb_context *ctx, const rb_unet_config *cfg, rb_unet **out);
void rb_unet_free(rb_context *ctx, rb_unet *net);

const rb_unet_config *rb_unet_config_of(const rb_unet *net);
/* (N, Cin, n^d) and (N, Cout, n^d), unused dimensions 1. */
rb_shape rb_unet_in_shape(const rb_unet *net);
rb_shape rb_unet_out_shape(const rb_unet *net);
size_t rb_unet_nparams(const rb_unet *net);
/* The flat parameter vector (writable: the next forward uses it) and the gradient vector. */
double *rb_unet_params(rb_unet *net);
double *rb_unet_grad(rb_unet *net);
void rb_unet_zero_grad(rb_unet *net);
/* The inner cycle (its operators are overwritten from the flat vector on every forward). */
rb_vnet *rb_unet_vnet(const rb_unet *net);

/* y = U(x); taped: rb_unet_backward may follow (x is copied; it may change after the call). */
rb_status rb_unet_forward(rb_context *ctx, rb_unet *net, const rb_tensor *x, rb_tensor *y, bool taped);
/* Backward of the last taped forward for dy = dL/dy: dx = dL/dx (NULL: not wanted;
 * overwritten) and rb_unet_grad += dL/dtheta. Consumes the tape. */
rb_status rb_unet_backward(rb_context *ctx, rb_unet *net, const rb_tensor *dy, rb_tensor *dx);

/* The network as an rb_op (params = rb_unet_params; x of shape rb_unet_in_shape only):
 * apply is the forward, vjp and param_grad run a taped forward and the backward.
 * Borrowed: rb_unet_free frees it, never rb_op_free. */
rb_op *rb_unet_op(const rb_unet *net);

/* The network as an OWNING rb_op for any batch (rb_op_free frees it): x (N, Cin, n^d) ->
 * y (N, Cout, n^d) for every N >= 1, run in chunks of cfg->batch samples (the last one padded
 * with zeros), each chunk exactly rb_unet_forward on a net of cfg. The flat parameter vector
 * (the order above, initialised from cfg->seed as rb_unet_create does) is op->params, so the
 * trainer, its optimiser, checkpoints and NPY export use it as any model's (RB_MODEL_UNET,
 * model.h). Taped: rb_op_forward keeps one chunk net (and its tape) per cfg->batch samples. */
rb_status rb_op_unet_create(rb_context *ctx, const rb_unet_config *cfg, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
