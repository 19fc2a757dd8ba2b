/* op.h — the operator interface: F(x), its vector-Jacobian product and its
 * parameter gradient.
 *
 * An rb_op is a pointer to a const type object (name, flags, functions) plus
 * the operator's own state and, if it has any, a flat array of parameters.
 * Stencils, convolutions, activations, Jacobi residual operators, ODE
 * right-hand sides and network blocks are all rb_ops, and every implementation
 * passes one conformance suite (tests/conformance.h).
 *
 *     rb_op *relu;
 *     rb_op_activation_create(ctx, RB_ACT_RELU, &relu);
 *     rb_op_apply(ctx, relu, &x, &y, NULL);          // y = F(x)
 *     rb_op_vjp(ctx, relu, &x, &dy, 1.0, &dx, NULL);  // dx += J_F(x)^T dy
 *     rb_op_free(ctx, relu);
 *
 * Conventions: apply overwrites y; vjp and param_grad ACCUMULATE (+=), scaled
 * by alpha, so a caller zeroes gradients explicitly. x and y never alias in
 * apply. Scratch memory comes from the arena `work` (may be NULL when
 * rb_op_workspace reports 0 bytes).
 */
#ifndef RESBRIDGE_OP_H
#define RESBRIDGE_OP_H

#include <stdbool.h>
#include <stddef.h>
#include "resbridge/arena.h"
#include "resbridge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_op rb_op;
struct rb_residual_pass; /* residual.h */

enum rb_op_flags {
    RB_OP_LINEAR = 1u << 0,     /* F(a x + b z) = a F(x) + b F(z) */
    RB_OP_HAS_PARAMS = 1u << 1, /* op->params / op->nparams are meaningful */
    RB_OP_SAME_SHAPE = 1u << 2, /* output shape == input shape (residual-step capable) */
    RB_OP_COMPOSITE = 1u << 3,  /* owns parts whose parameters live in its own vector (chain, residual layer, ...) */
};

typedef struct rb_op_type {
    const char *name;
    unsigned flags;
    /* Output shape for input shape `in`; RB_ESHAPE (with message) if not accepted. */
    rb_status (*shape)(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out);
    /* Bytes of arena scratch apply/vjp/param_grad/fused need for input shape `in` (NULL: 0). */
    size_t (*workspace)(const rb_op *op, rb_shape in);
    /* y = F(x). Shapes already validated by the caller. */
    rb_status (*apply)(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work);
    /* dx += alpha * J_F(x)^T dy. */
    rb_status (*vjp)(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                     double alpha, rb_tensor *dx, rb_arena *work);
    /* dparams[0..nparams) += alpha * (dF(x)/dtheta)^T dy. NULL when no parameters. */
    rb_status (*param_grad)(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                            double alpha, double *dparams, rb_arena *work);
    /* Optional fused kernel for y = x + h F(x) (see residual.h). y may equal x
     * (in place) only if the type sets fused_in_place. NULL: generic path only. */
    rb_status (*residual_fused)(rb_context *ctx, const rb_op *op, double h, const rb_tensor *x,
                                rb_tensor *y, rb_arena *work);
    int fused_in_place;
    /* Optional, with an in-place residual_fused: that step on u in place together with
     * what `pass` asks around it, in the same pass over the grid (a prolongation added
     * before; the residual's norm or restriction after: rb_residual_pass, residual.h).
     * Sets *done when it did all of it; otherwise it changes nothing and leaves *done
     * false. Called through rb_residual_step_pass only, with arguments already checked. */
    rb_status (*residual_fused_pass)(rb_context *ctx, const rb_op *op, double h, rb_tensor *u,
                                     const struct rb_residual_pass *pass, bool *done, rb_arena *work);
    /* Release the state (not the rb_op struct itself). NULL: nothing to release. */
    void (*destroy)(rb_context *ctx, rb_op *op);
    /* Optional taped passes, for deep compositions (a network's training step runs
     * every op forward once and backward once, nothing recomputed):
     *   tape_bytes      bytes forward_taped keeps for input shape `in`, beyond x and y (NULL: 0);
     *   forward_taped   y = F(x), filling the tape;
     *   backward_taped  from x, y = F(x) and the tape: dx += alpha J^T dy (dx may be NULL) and
     *                   dparams += alpha (dF/dtheta)^T dy (dparams may be NULL).
     * Types without them get apply, and vjp + param_grad recomputing from x. */
    size_t (*tape_bytes)(const rb_op *op, rb_shape in);
    rb_status (*forward_taped)(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                               rb_arena *work);
    rb_status (*backward_taped)(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                rb_arena *work);
    /* Optional: the backward pass (backward_taped's, or vjp + param_grad's for types without
     * a tape, which get tape == NULL) with dx OVERWRITTEN: dx = alpha J^T dy (dx not NULL),
     * dparams += alpha (dF/dtheta)^T dy as always. A caller whose dx holds nothing yet (a
     * chain's intermediate gradients) then neither zeroes it nor has it read back. NULL:
     * the caller zeroes dx and runs the accumulating pass. */
    rb_status (*backward_overwrite)(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                    const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx,
                                    double *dparams, rb_arena *work);
} rb_op_type;

struct rb_op {
    const rb_op_type *type;
    void *state;       /* type-specific */
    double *params;    /* flat parameter vector (owned by the op), or NULL */
    size_t nparams;
    double t;          /* time, for non-autonomous right-hand sides; others ignore it */
};

/* Allocate an rb_op with the given type and state (state is owned by the op
 * from now on and released through type->destroy by rb_op_free). */
rb_status rb_op_new(rb_context *ctx, const rb_op_type *type, void *state, size_t nparams, rb_op **out);
void rb_op_free(rb_context *ctx, rb_op *op);

/* Checked calls: validate pointers and shapes, then dispatch to the type. */
rb_status rb_op_shape(rb_context *ctx, const rb_op *op, rb_shape in, rb_shape *out);
size_t rb_op_workspace(const rb_op *op, rb_shape in);
rb_status rb_op_apply(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work);
rb_status rb_op_vjp(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                    double alpha, rb_tensor *dx, rb_arena *work);
rb_status rb_op_param_grad(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                           double alpha, double *dparams, rb_arena *work);

/* The taped passes (see rb_op_type): rb_op_forward is apply that also fills
 * `tape` (rb_op_tape_bytes(op, x->shape) bytes, 64-byte aligned; NULL when 0);
 * rb_op_backward computes, from x, y = F(x) and that tape, dx += alpha J^T dy
 * and dparams += alpha (dF/dtheta)^T dy in one pass (either may be NULL).
 * With tape == NULL rb_op_backward recomputes the forward pass in `work`
 * (rb_op_backward_workspace bytes). */
size_t rb_op_tape_bytes(const rb_op *op, rb_shape in);
size_t rb_op_backward_workspace(const rb_op *op, rb_shape in);
rb_status rb_op_forward(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape, rb_arena *work);
rb_status rb_op_backward(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y, const void *tape,
                         const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams, rb_arena *work);

/* RB_OK if F maps shape `in` to itself (residual branches, ODE right-hand
 * sides); else RB_ESHAPE with "fn: F (name) maps A to B; F must keep the shape". */
rb_status rb_op_check_keeps_shape(rb_context *ctx, const rb_op *F, rb_shape in, const char *fn);

#ifdef __cplusplus
}
#endif
#endif
