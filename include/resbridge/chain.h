/* chain.h — composition of operators, F = F_k o ... o F_1, as one rb_op.
 *
 * The chain takes ownership of its operators and gathers their parameters
 * into one flat vector (op->params), so optimisers, checkpoints and the
 * conformance suite see a single parameter array; each part keeps pointing
 * into it.
 *
 *     rb_op *parts[3] = {conv1, tanh, conv2};
 *     rb_op *branch; rb_op_chain_create(ctx, parts, 3, &branch);  // owns the parts now
 *     rb_residual_step(ctx, branch, 1.0, &x, &y, &work);          // a residual layer
 *
 * Intermediates live in the work arena (rb_op_workspace tells how much for
 * a given input shape); the backward passes recompute the forward pass.
 */
#ifndef RESBRIDGE_CHAIN_H
#define RESBRIDGE_CHAIN_H

#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RB_CHAIN_MAX 64 /* parts at most */

/* On success the chain owns parts[0..count); on failure the caller still does. */
rb_status rb_op_chain_create(rb_context *ctx, rb_op *const *parts, size_t count, rb_op **out);

#ifdef __cplusplus
}
#endif
#endif
