/* resbridge.h — everything. One primitive, x <- x + h*F(x), read three ways:
 * an Euler step, a damped Jacobi sweep, a residual network layer.
 *
 *     #include <resbridge/resbridge.h>
 *     rb_context *ctx; rb_context_create(&ctx, NULL);
 *     rb_op *A; rb_op_laplacian_create(ctx, 1, h, &A);          // -u'' stencil
 *     rb_op *J; rb_op_jacobi_create(ctx, A, &f, &J);             // F(u) = D^-1 (f - A u)
 *     rb_residual_step(ctx, J, 2.0 / 3.0, &u, &u, &work);       // one damped Jacobi sweep
 */
#ifndef RESBRIDGE_H
#define RESBRIDGE_H

#include "resbridge/status.h"
#include "resbridge/context.h"
#include "resbridge/tensor.h"
#include "resbridge/arena.h"
#include "resbridge/op.h"
#include "resbridge/residual.h"
#include "resbridge/conv.h"
#include "resbridge/activation.h"
#include "resbridge/chain.h"
#include "resbridge/colour.h"
#include "resbridge/varstencil.h"
#include "resbridge/xsplit.h"
#include "resbridge/npy.h"
#include "resbridge/reference.h"
#include "resbridge/ode.h"
#include "resbridge/vcycle.h"
#include "resbridge/multigrid.h"
#include "resbridge/vnet.h"
#include "resbridge/learn.h"
#include "resbridge/mgnet.h"
#include "resbridge/unet.h"
#include "resbridge/data.h"
#include "resbridge/train.h"
#include "resbridge/layers.h"
#include "resbridge/blocks.h"
#include "resbridge/model.h"
#include "resbridge/trainer.h"
#include "resbridge/version.h"

#endif
