/* activation.h — pointwise nonlinearities as rb_ops (same shape in and out).
 *
 *     rb_op *act; rb_op_activation_create(ctx, RB_ACT_GELU, &act);
 *     rb_op_apply(ctx, act, &x, &y, NULL);
 *
 * GELU is the exact form x * Phi(x) (PyTorch's default, approximate='none').
 */
#ifndef RESBRIDGE_ACTIVATION_H
#define RESBRIDGE_ACTIVATION_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RB_ACTIVATION_LIST(X) \
    X(RB_ACT_IDENTITY, "identity") \
    X(RB_ACT_RELU, "relu")         \
    X(RB_ACT_TANH, "tanh")         \
    X(RB_ACT_GELU, "gelu")         \
    X(RB_ACT_SIGMOID, "sigmoid")

#define RB_ACT_ENUM_(e, name) e,
typedef enum rb_activation { RB_ACTIVATION_LIST(RB_ACT_ENUM_) RB_ACT_COUNT } rb_activation;
#undef RB_ACT_ENUM_

const char *rb_activation_name(rb_activation act);
/* Look up by name ("relu"); RB_EINVAL for an unknown name. */
rb_status rb_activation_parse(rb_context *ctx, const char *name, rb_activation *act);
rb_status rb_op_activation_create(rb_context *ctx, rb_activation act, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
