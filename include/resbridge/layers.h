/* layers.h — network layers as rb_ops (the convolution is conv.h's, the
 * activations activation.h's): dense, flatten, global average pooling, batch
 * normalisation and layer normalisation. Parameter layouts are PyTorch's, so
 * weights move between the two through NPY files unchanged.
 *
 *     rb_op *fc; rb_op_dense_create(ctx, 32, 10, true, NULL, &fc);  // (N,32) -> (N,10)
 *     rb_op *bn; rb_op_batchnorm_create(ctx, 16, 1e-5, 0.1, &bn);   // BatchNorm2d(16)
 *     rb_op_batchnorm_set_mode(ctx, bn, RB_BN_TRAIN_TRACK);         // next forward updates the running stats
 *
 * A vector batch is (N,1,1,1,d); images are (N,C,1,H,W) (any (N,C,D,H,W)).
 */
#ifndef RESBRIDGE_LAYERS_H
#define RESBRIDGE_LAYERS_H

#include <stdbool.h>
#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = W x + b per sample: (N, any shape with `in` values) -> (N,1,1,1,out).
 * params: W [out][in] (torch.nn.Linear.weight), then b [out] if bias. NULL: zeros. */
rb_status rb_op_dense_create(rb_context *ctx, size_t in, size_t out, bool bias, const double *params, rb_op **out_op);

/* (N,C,D,H,W) -> (N,1,1,1,C*D*H*W), values unchanged (torch.flatten(x, 1)). */
rb_status rb_op_flatten_create(rb_context *ctx, rb_op **out);

/* (N,C,D,H,W) -> (N,1,1,1,C): the mean over D*H*W per channel
 * (AdaptiveAvgPool2d(1) followed by flatten). */
rb_status rb_op_global_avg_pool_create(rb_context *ctx, rb_op **out);

/* Batch normalisation over (N, D, H, W) per channel (torch.nn.BatchNorm2d):
 *   training:   y = gamma (x - mean_B) / sqrt(var_B + eps) + beta (biased batch variance);
 *   inference:  the same with the running mean and variance (a linear map).
 * params: gamma [C] (initialised to 1 when params is NULL), beta [C].
 * Running statistics start at mean 0, variance 1; in RB_BN_TRAIN_TRACK mode
 * every forward (apply) also updates them as PyTorch does:
 *   running = (1 - momentum) running + momentum batch, with the UNBIASED batch variance.
 * Forwards inside backward passes must run in RB_BN_TRAIN (no tracking), or
 * the statistics would move twice per step. */
typedef enum rb_bn_mode { RB_BN_TRAIN, RB_BN_TRAIN_TRACK, RB_BN_EVAL, RB_BN_MODE_COUNT } rb_bn_mode;
rb_status rb_op_batchnorm_create(rb_context *ctx, size_t channels, double eps, double momentum, rb_op **out);
rb_status rb_op_batchnorm_set_mode(rb_context *ctx, rb_op *bn, rb_bn_mode mode);
/* Batch normalisation followed by a ReLU, in one pass each way: y = max(0, BN(x)), the same
 * parameters, running statistics and modes as rb_op_batchnorm_create's op (and the same
 * numbers as that op chained with a ReLU, to rounding); the backward pass recomputes where
 * the ReLU passed from x and the statistics, so nothing more is stored. */
rb_status rb_op_batchnorm_relu_create(rb_context *ctx, size_t channels, double eps, double momentum, rb_op **out);
/* The running statistics (channels values each), for checkpoints and export; NULL if bn is not one. */
double *rb_op_batchnorm_running_mean(rb_op *bn);
double *rb_op_batchnorm_running_var(rb_op *bn);
/* 1 if op is a batch-normalisation op (with or without the fused ReLU). */
int rb_op_is_batchnorm(const rb_op *op);
/* Its mode (RB_BN_MODE_COUNT if bn is not a batch-norm op). */
rb_bn_mode rb_op_batchnorm_mode(const rb_op *bn);

/* Normalisation inside the network-mode cycle (vnet.h; MgNet, mgnet.h): none; BATCH, batch
 * normalisation before each activation of the smoothers, u <- u + sigma(BN(B * sigma(BN(f - A u))));
 * BATCH_ALL, in nets with projections also of the transfers' outputs (He & Xu's MgNet code). */
typedef enum rb_norm_kind { RB_NORM_NONE, RB_NORM_BATCH, RB_NORM_BATCH_ALL, RB_NORM_KIND_COUNT } rb_norm_kind;
const char *rb_norm_kind_name(rb_norm_kind kind); /* "none", "batch", "batch-all" */

/* Layer normalisation over each sample's `size` values (C*D*H*W), with an
 * elementwise affine map (torch.nn.LayerNorm(normalized_shape = the sample shape)):
 *   y = gamma (x - mean) / sqrt(var + eps) + beta.  params: gamma [size] (1 when NULL), beta [size]. */
rb_status rb_op_layernorm_create(rb_context *ctx, size_t size, double eps, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
