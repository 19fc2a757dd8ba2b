/* op_internal.h — unchecked dispatch for composite operators (chain, residual
 * layer, branches), which validate shapes once for the whole composition. */
#ifndef RB_OP_INTERNAL_H
#define RB_OP_INTERNAL_H

#include "resbridge/activation.h"
#include "resbridge/op.h"

/* y = F(x), filling tape when the type keeps one (tape may be NULL only when rb_op_tape_bytes is 0). */
rb_status rb_op_forward_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, void *tape,
                                  rb_arena *work);
/* dx += alpha J^T dy, dparams += alpha (dF/dtheta)^T dy; tape NULL: recompute it (and y) in work. */
rb_status rb_op_backward_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                   const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx, double *dparams,
                                   rb_arena *work);

/* The same with dx OVERWRITTEN (dx = alpha J^T dy): through the type's backward_overwrite when
 * it has one and the tape is at hand, else dx zeroed, then the above (dx NULL: the above). */
rb_status rb_op_backward_overwrite_unchecked(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *y,
                                             const void *tape, const rb_tensor *dy, double alpha, rb_tensor *dx,
                                             double *dparams, rb_arena *work);

/* A type's two backward entries, prefix##_backward_taped (accumulating into dx) and
 * prefix##_backward_overwrite (dx overwritten), from one function taking backward_taped's
 * arguments and then `bool assign`. */
#define RB_BACKWARD_PAIR(prefix, core)                                                                        \
    static rb_status prefix##_backward_taped(rb_context *ctx, const rb_op *op, const rb_tensor *x,            \
                                             const rb_tensor *y, const void *tape, const rb_tensor *dy,       \
                                             double alpha, rb_tensor *dx, double *dparams, rb_arena *work)   \
    {                                                                                                         \
        return core(ctx, op, x, y, tape, dy, alpha, dx, dparams, work, false);                                \
    }                                                                                                         \
    static rb_status prefix##_backward_overwrite(rb_context *ctx, const rb_op *op, const rb_tensor *x,        \
                                                 const rb_tensor *y, const void *tape, const rb_tensor *dy,   \
                                                 double alpha, rb_tensor *dx, double *dparams, rb_arena *work)\
    {                                                                                                         \
        return core(ctx, op, x, y, tape, dy, alpha, dx, dparams, work, true);                                 \
    }

/* Composite operators own their parts and gather the parts' parameters into
 * their own flat vector (op->params), each part pointing into it, recursively:
 * a composite nested in another is re-pointed with all its descendants. A
 * composite type sets RB_OP_COMPOSITE and keeps an rb_parts as the FIRST
 * member of its state. */
#define RB_PARTS_MAX 64
typedef struct rb_parts {
    size_t count;
    rb_op *part[RB_PARTS_MAX];
    double *own_params[RB_PARTS_MAX]; /* each part's original params array, restored on release */
} rb_parts;

/* Point op's parameters (and, for composites, every descendant's) at `to`, keeping offsets
 * (the values are not moved). */
void rb_op_rebase(rb_op *op, double *to);

/* Check parts (non-NULL, distinct, with a vjp); *nparams = their total, *linear = all linear. */
rb_status rb_parts_check(rb_context *ctx, const char *fn, rb_op *const *parts, size_t count, size_t *nparams,
                         int *linear);
/* Take the parts: copy their parameters into op->params (op created with the total) and point them there. */
void rb_parts_adopt(rb_parts *p, rb_op *op, rb_op *const *parts, size_t count);
/* Give each part its own parameter array back (with the current values) and free the parts. */
void rb_parts_release(rb_context *ctx, rb_parts *p);
/* The part's parameter gradient slice within the composite's gradient vector (NULL in, NULL out). */
static inline double *rb_parts_grad(const rb_op *composite, const rb_op *part, double *dparams)
{
    return dparams != NULL && part->nparams > 0 ? dparams + (size_t)(part->params - composite->params) : NULL;
}

/* apply for a taped composite: the tape goes to the work arena, then forward_taped. */
rb_status rb_op_apply_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, rb_tensor *y, rb_arena *work);
/* vjp and param_grad for a taped composite: backward recomputing its tape (rb_op_backward_unchecked). */
rb_status rb_op_vjp_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy, double alpha,
                             rb_tensor *dx, rb_arena *work);
rb_status rb_op_param_grad_via_tape(rb_context *ctx, const rb_op *op, const rb_tensor *x, const rb_tensor *dy,
                                    double alpha, double *dparams, rb_arena *work);
/* Visit op and, for composites, every descendant (depth first, parts in order). */
void rb_op_visit(rb_op *op, void (*fn)(rb_op *op, void *user), void *user);

/* Elementwise loops over at least RB_PARALLEL_MIN values run on the context's threads:
 *     const int T = rb_parallel_threads(ctx, n);
 *     #pragma omp parallel for simd num_threads(T) schedule(static) if (parallel : T > 1)
 * Every value is computed the same way on any thread count. (The `parallel :` matters: a bare
 * if clause applies to the simd part too, and on one thread the loop would not be vectorised.) */
#define RB_PARALLEL_MIN 32768
static inline int rb_parallel_threads(rb_context *ctx, size_t n)
{
    return n >= RB_PARALLEL_MIN ? rb_context_threads(ctx) : 1;
}
/* p[0..n) = 0, on those threads. */
void rb_zero(rb_context *ctx, double *p, size_t n);

/* The activations' loops over one range (activation.c), for fused kernels: y = act(x) and
 * dx += alpha act'(x) dy (assign: dx = ...), elementwise; x, y (dx) must not overlap. */
void rb_act_apply_range(rb_activation a, const double *restrict x, double *restrict y, size_t n);
void rb_act_vjp_range(rb_activation a, const double *restrict x, const double *restrict dy, double alpha,
                      double *restrict dx, size_t n, bool assign);

/* Byte offsets in tapes: every block starts 64-byte aligned. */
static inline char *rb_tape_at(void *tape, size_t offset) { return tape ? (char *)tape + offset : NULL; }

#endif
