/* model.h — networks built from layers and blocks: a ResNet of configurable
 * depth and widths and its plain twin (identical layers, no skips), a
 * residual MLP for vector data, MgNet (mgnet.h) and the U-Net (unet.h). A model is one rb_op (a chain), so its
 * forward and backward passes are the op interface's taped passes.
 *
 *     rb_model_desc d = rb_model_desc_default(RB_MODEL_RESNET);   // the reference network (29,050 parameters)
 *     rb_model *m; rb_model_create(ctx, &d, &m);
 *     rb_model_set_mode(ctx, m, RB_BN_EVAL);
 *     rb_op_apply(ctx, m->net, &images, &logits, &work);
 *     rb_model_free(ctx, m);
 */
#ifndef RESBRIDGE_MODEL_H
#define RESBRIDGE_MODEL_H

#include "resbridge/layers.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rb_model_kind { RB_MODEL_RESNET, RB_MODEL_PLAIN, RB_MODEL_MLP, RB_MODEL_MGNET, RB_MODEL_UNET, RB_MODEL_KIND_COUNT } rb_model_kind;
/* MGNET: the MgNet classifier of mgnet.h (width = channels C, depth = smoothing steps per level, 0: 2). */
/* UNET: the grid-to-grid U-Net of unet.h (rb_op_unet_create), a regression model: in_channels x n x n
 * (in_h = in_w = n, of the form m 2^k - 1) -> n x n (outputs = n^2); width = channels C, depth = cycles K
 * (0: 2), every level to 3 points, V(1,1), tanh, chunks of RB_MODEL_UNET_BATCH samples.
 * The default: rb_dataset_poisson's pairs on n = 31 (2 channels, C = 8). */
#define RB_MODEL_UNET_BATCH 16
/* PLAIN: the same layers without skips (the plain twin; --model plain is a ResNet with plain blocks). */
typedef enum rb_block_kind { RB_BLOCK_V1, RB_BLOCK_V2, RB_BLOCK_HIGHWAY, RB_BLOCK_DENSE, RB_BLOCK_PLAIN, RB_BLOCK_KIND_COUNT } rb_block_kind;

typedef struct rb_model_desc {
    rb_model_kind kind;
    rb_block_kind block;    /* the block; PLAIN models (and RB_BLOCK_PLAIN) drop the skips */
    size_t depth;           /* 0: the reference network; else conv nets 6n+2 (three stages of n
                               blocks, widths w, 2w, 4w), MLP: number of blocks */
    size_t width;           /* stem / first-stage width (conv) or hidden width (MLP) */
    size_t in_channels, in_h, in_w; /* conv: sample (C,H,W); MLP: in_w inputs (C = H = 1) */
    size_t outputs;         /* classes (or regression outputs) */
    double h;               /* residual step of every skip: x + h F(x) (1 by default) */
    unsigned long seed;     /* weight initialisation */
    rb_norm_kind norm;      /* MGNET: the smoothers' normalisation (mgnet.h); NONE for every other kind */
} rb_model_desc;

/* The reference network of the nets issue for Fashion-MNIST (RESNET, PLAIN): 3x3
 * conv to 16 + BN + ReLU, three basic blocks at 16, one stride-2 block to 32
 * with a 1x1 projection shortcut, global average pooling, linear 10. MLP: 8
 * inputs, width 32, depth 4, 1 output. */
rb_model_desc rb_model_desc_default(rb_model_kind kind);
rb_status rb_model_kind_parse(rb_context *ctx, const char *name, rb_model_kind *kind);   /* resnet, plain, mlp, mgnet, unet */
rb_status rb_block_kind_parse(rb_context *ctx, const char *name, rb_block_kind *kind);   /* v1, v2, highway, dense, plain */
const char *rb_model_kind_name(rb_model_kind kind);
const char *rb_block_kind_name(rb_block_kind kind);

#define RB_MODEL_MAX_BN 256

typedef struct rb_model {
    rb_model_desc desc;
    rb_op *net;             /* the whole network: (N, sample) -> (N,1,1,1,outputs) */
    rb_shape sample;        /* one input, n = 1 */
    size_t nbn;
    rb_op *bn[RB_MODEL_MAX_BN]; /* its batch-norm layers (owned by net; MgNet's: its cycle's), for mode switches and checkpoints */
} rb_model;

/* Build and initialise (He-normal convolutions, fan-out; PyTorch's uniform for
 * dense layers; BN gamma 1, beta 0; highway gates biased to carry). The
 * message names the layer when widths or strides do not fit. */
rb_status rb_model_create(rb_context *ctx, const rb_model_desc *desc, rb_model **out);
void rb_model_free(rb_context *ctx, rb_model *m);
/* Every batch-norm layer to `mode` (RB_BN_TRAIN_TRACK for a training forward, RB_BN_EVAL for inference). */
rb_status rb_model_set_mode(rb_context *ctx, rb_model *m, rb_bn_mode mode);

/* Weights as NumPy files, to compare with other tools: <prefix>params.npy (the flat
 * parameter vector, layers in construction order, PyTorch layouts) and
 * <prefix>bn_stats.npy (each batch-norm layer's running mean then variance).
 * Import checks the sizes and finiteness before it changes anything. */
rb_status rb_model_export_npy(rb_context *ctx, const rb_model *m, const char *prefix);
rb_status rb_model_import_npy(rb_context *ctx, rb_model *m, const char *prefix);

#ifdef __cplusplus
}
#endif
#endif
