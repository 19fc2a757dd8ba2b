/* mgnet.h — MgNet (He & Xu, 2019) as one rb_op: an image classifier whose feature extractor is
 * the down-leg of the one V-cycle (vcycle.h) in network mode (vnet.h).
 *
 *   x (N, Cin, H, W), zero-padded to the vertex grid n = 2^L - 1 >= H, W
 *   f_0 = K * x                          data-feature map (3x3 conv Cin -> C)
 *   u_0 = 0; on every level l = 0 .. L-1 (n, (n-1)/2, ..., 3):
 *       nu times   u <- u + sigma(B_l * sigma(f - A_l * u))        (a residual step)
 *       u_{l+1} = Pi_l * u,   f_{l+1} = R_l * (f - A_l * u) + A_{l+1} * u_{l+1}
 *   logits = W mean(u_{L-1}) + b          global average pooling, linear head
 *
 * with sigma = ReLU. With batch normalisation (rb_op_mgnet_create_norm, norm = RB_NORM_BATCH) the
 * smoother is that of He & Xu's MgNet code, u <- u + sigma(BN(B_l * sigma(BN(f - A_l * u)))) (vnet.h;
 * the level's steps share B_l and its two batch norms); with RB_NORM_BATCH_ALL so are the transfers,
 * u_{l+1} = sigma(BN(Pi_l * u)), f_{l+1} = sigma(BN(R_l * (f - A_l * u))) + A_{l+1} * u_{l+1}; the
 * data-feature map stays unnormalised, and each batch's statistics are over its own samples (a
 * short last batch is not padded). One flat parameter vector (K, then every level's A, S, R, Pi,
 * then W, b; normalised, S is gamma, beta of BN_r, B_l, gamma, beta of BN_B, and R, Pi are each
 * the convolution's weights then gamma, beta of its batch norm),
 * so the trainer, checkpoints and NPY export take it as they take a ResNet
 * (rb_model_desc.kind = RB_MODEL_MGNET). Internally the cycle runs on batches of at most
 * RB_MGNET_BATCH samples; a taped forward takes at most that many. */
#ifndef RESBRIDGE_MGNET_H
#define RESBRIDGE_MGNET_H

#include "resbridge/vnet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RB_MGNET_BATCH 128

/* in_channels x in_h x in_w images (in_h, in_w <= 1023), `channels` features, `smoothing`
 * steps per level (1..8), `classes` outputs; weights initialised from `seed`. */
rb_status rb_op_mgnet_create(rb_context *ctx, size_t in_channels, size_t in_h, size_t in_w, size_t channels, int smoothing,
                             size_t classes, unsigned long seed, rb_op **out);
/* The same with the smoothers' normalisation (RB_NORM_NONE: rb_op_mgnet_create). */
rb_status rb_op_mgnet_create_norm(rb_context *ctx, size_t in_channels, size_t in_h, size_t in_w, size_t channels, int smoothing,
                                  size_t classes, rb_norm_kind norm, unsigned long seed, rb_op **out);
/* The cycle inside an MgNet op (its batch norms: rb_vnet_bn), NULL if op is not one. */
rb_vnet *rb_op_mgnet_vnet(const rb_op *op);

#ifdef __cplusplus
}
#endif
#endif
