/* blocks.h — the branch structures of residual networks, as rb_ops. With the
 * residual layer (residual.h: x + h F(x), the identity skip) and chains, they
 * build every block of the nets issue:
 *
 *   plain            chain(F, relu)                   no skip
 *   ResNet v1        chain(residual(F, h), relu)      ReLU(x + h F(x))
 *   v1, projection   chain(sum(P, F, 1, h), relu)     ReLU(P x + h F(x)), P = 1x1 conv + BN
 *   v2 (pre-act.)    residual(F', h)                  x + h F'(x), F' = BN-ReLU-conv-BN-ReLU-conv
 *   highway          residual(gate(F, T), 1)          x + T(x) (F(x) - x) = T F(x) + (1 - T) x
 *   dense (DenseNet) concat(F)                        [x, F(x)] along the channels
 *
 * Every one owns its parts, gathers their parameters (op->params) and has
 * taped passes, so a network built from them runs forward once and backward once.
 */
#ifndef RESBRIDGE_BLOCKS_H
#define RESBRIDGE_BLOCKS_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = a A(x) + b B(x); A and B must map the input to the same shape. Takes A and B. */
rb_status rb_op_sum_create(rb_context *ctx, rb_op *A, rb_op *B, double a, double b, rb_op **out);

/* y = [x, F(x)] along the channel dimension: (N,C,D,H,W) -> (N,C+K,D,H,W) for
 * F: (N,C,D,H,W) -> (N,K,D,H,W). Takes F. */
rb_status rb_op_concat_create(rb_context *ctx, rb_op *F, rb_op **out);

/* The highway branch G(x) = T(x) * (F(x) - x) (elementwise), so that the residual
 * layer x + G(x) = T F(x) + (1 - T) x (Srivastava et al. 2015). F and T keep the
 * shape; T should end in a sigmoid. Takes F and T. */
rb_status rb_op_highway_gate_create(rb_context *ctx, rb_op *F, rb_op *T, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
