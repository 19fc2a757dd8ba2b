/* ode.h — ResNets as discretised ODEs: right-hand sides dx/dt = F(t, x) as
 * rb_ops, integrators as stacks of residual steps, and the discrete adjoint
 * (backpropagation through the steps) with checkpointing.
 *
 * A ResNet with L layers is forward Euler with h = (T - t0) / L: each layer is
 * rb_residual_step(F, h, x, y). Heun and RK4 are built from the same residual
 * steps; backward Euler and implicit midpoint solve their step equations by
 * Newton's method (dense Jacobian from F's vjp, LAPACKE_dgesv).
 *
 *     rb_op *F; rb_op_ode_neural_create(ctx, n, RB_ACT_TANH, 1, 1.0, params, &F);
 *     rb_ode_tape tape; rb_ode_tape_init(&tape, 0);             // checkpoint every ceil(sqrt(L))
 *     rb_ode_integrate(ctx, rb_ode_rk4, F, 0.0, 1.0, 64, &x0, &xT, NULL, &tape);
 *     rb_ode_backward(ctx, &tape, F, &dLdxT, &dLdx0, dLdtheta);  // accumulates
 *     rb_ode_tape_release(ctx, &tape);                            // tape.peak_bytes: memory used
 *
 * The time reaches F through F->t: integrators set it before every evaluation
 * of F (and of its vjp and param_grad) and restore the value it had on entry.
 * The state is any tensor F keeps the shape of.
 */
#ifndef RESBRIDGE_ODE_H
#define RESBRIDGE_ODE_H

#include "resbridge/activation.h"
#include "resbridge/op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- right-hand sides -----------------------------------------------------------------------
 *
 * Dense right-hand sides act on the last dimension: the state is a vector
 * (1,1,1,1,n) or a batch of vectors (N,1,1,1,n), each row transformed alike.
 * Weight matrices are row-major n x n. Parameters are copied in (NULL: zeros). */

/* F(x) = W x. params: W (n*n). Linear. */
rb_status rb_op_ode_linear_create(rb_context *ctx, size_t n, const double *W, rb_op **out);

/* F(t, x) = sigma(W_k x + b_k) with k = floor(t / set_width) clamped to [0, sets):
 * weights constant (sets = 1) or piecewise constant per layer. A time within
 * 1e-9 set widths below a boundary counts as past it (t = j h computed in
 * floating point). params: the sets concatenated, each W_k (n*n) then b_k (n). */
rb_status rb_op_ode_neural_create(rb_context *ctx, size_t n, rb_activation sigma, size_t sets, double set_width,
                                  const double *params, rb_op **out);

/* F(x) = sigma((W - W^T - gamma I) x + b) (Haber & Ruthotto's antisymmetric
 * network: the linear part has eigenvalues with real part -gamma). gamma >= 0
 * fixed at creation. params: W (n*n) then b (n). */
rb_status rb_op_ode_antisym_create(rb_context *ctx, size_t n, rb_activation sigma, double gamma, const double *params,
                                   rb_op **out);

/* ---- integrators ------------------------------------------------------------------------------ */

/* Newton settings of the implicit methods: converged when the step equation's
 * residual satisfies ||r||_2 <= tol (||x||_2 + ||y||_2) (or r == 0); at most
 * max_iter Newton updates, else RB_EMAXITER. A singular Newton matrix or a
 * non-finite residual is RB_EDIVERGED. The state must have at most
 * RB_ODE_NEWTON_MAX entries (the Jacobian is dense). */
typedef struct rb_ode_options {
    double newton_tol; /* default 1e-12 */
    int newton_max_iter; /* default 25 */
} rb_ode_options;

#define RB_ODE_NEWTON_MAX 2048
rb_ode_options rb_ode_options_default(void);

typedef struct rb_ode_method rb_ode_method;

/* One method as a type object, chosen at run time (GSL style). x and y never
 * alias; y is the state after one step of size h from time t. step_backward
 * ACCUMULATES dx += (dy/dx)^T dy and dtheta += (dy/dtheta)^T dy (dtheta may be
 * NULL); it takes the step's input x and output y (implicit methods use y,
 * explicit ones recompute their stages from x). Scratch comes from `work`
 * (rb_ode_step_workspace bytes). opt NULL: defaults. */
struct rb_ode_method {
    const char *name;
    int order;
    int implicit;
    size_t (*workspace)(const rb_op *F, rb_shape in);
    rb_status (*step)(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x, rb_tensor *y,
                      const rb_ode_options *opt, rb_arena *work);
    rb_status (*step_backward)(rb_context *ctx, rb_op *F, double t, double h, const rb_tensor *x,
                               const rb_tensor *y, const rb_tensor *dy, rb_tensor *dx, double *dtheta,
                               rb_arena *work);
};

extern const rb_ode_method *const rb_ode_euler;     /* y = x + h F(t, x): rb_residual_step, a ResNet layer */
extern const rb_ode_method *const rb_ode_heun;      /* x~ = x + h F(t, x), y = (x + x~ + h F(t + h, x~)) / 2 */
extern const rb_ode_method *const rb_ode_rk4;       /* classical Runge-Kutta, order 4 */
extern const rb_ode_method *const rb_ode_beuler;    /* y = x + h F(t + h, y), Newton */
extern const rb_ode_method *const rb_ode_imidpoint; /* y = x + h F(t + h/2, (x + y)/2), Newton */

/* All methods, NULL-terminated; look one up by name ("rk4"): RB_EINVAL if unknown. */
extern const rb_ode_method *const rb_ode_methods[];
rb_status rb_ode_method_parse(rb_context *ctx, const char *name, const rb_ode_method **method);

/* Scratch bytes one step or one step_backward of `method` needs for state shape `in`. */
size_t rb_ode_step_workspace(const rb_ode_method *method, const rb_op *F, rb_shape in);

/* ---- the tape: states for the discrete adjoint ------------------------------------------------
 *
 * rb_ode_integrate with a tape keeps x_0, x_k, x_2k, ... and x_L (k = every;
 * every = 1: all states; every = 0: k = ceil(sqrt(L)), peak memory O(sqrt L)).
 * rb_ode_backward recomputes the states between checkpoints segment by segment
 * with the same steps, so the gradient is bit-identical for every k. All of it
 * lives in one arena reserved by rb_ode_integrate. */
typedef struct rb_ode_tape {
    size_t every;               /* requested checkpoint stride (0: ceil(sqrt(L))) */
    /* filled by rb_ode_integrate */
    size_t stride;              /* stride used */
    const rb_ode_method *method;
    const rb_op *F;
    rb_ode_options opt;
    double t0, h;
    size_t L;
    rb_shape shape;
    size_t ncheck;              /* states stored */
    double *check;              /* ncheck states, x_{i*stride} then x_L */
    rb_arena arena;
    size_t peak_bytes;          /* high-water mark of the arena (forward and backward) */
    int ready;
    /* private: arena blocks */
    double *buf;                /* 2 states: stepping, then the adjoint */
    double *seg;                /* stride - 1 recomputed states */
    double *dtheta;             /* F->nparams */

} rb_ode_tape;

void rb_ode_tape_init(rb_ode_tape *tape, size_t every);
void rb_ode_tape_release(rb_context *ctx, rb_ode_tape *tape);

/* xT = x(T) by L fixed steps of h = (T - t0) / L from x(t0) = x0. t0, T finite,
 * T != t0 (negative h integrates backwards), L >= 1, F keeps x0's shape, x0
 * finite. A non-finite state stops the stack with RB_EDIVERGED naming the
 * step. xT may alias x0; on error xT is untouched. tape may be NULL (no
 * storage); otherwise it is (re)filled for rb_ode_backward. opt NULL: defaults. */
rb_status rb_ode_integrate(rb_context *ctx, const rb_ode_method *method, rb_op *F, double t0, double T, size_t L,
                           const rb_tensor *x0, rb_tensor *xT, const rb_ode_options *opt, rb_ode_tape *tape);

/* The discrete adjoint of the taped integration for a loss with dL/dx(T) = dLdxT:
 * ACCUMULATES dLdx0 += dL/dx0 and dLdtheta[0..F->nparams) += dL/dtheta
 * (dLdtheta may be NULL). F must be the taped operator with unchanged
 * parameters. On error the outputs are untouched. */
rb_status rb_ode_backward(rb_context *ctx, rb_ode_tape *tape, rb_op *F, const rb_tensor *dLdxT, rb_tensor *dLdx0,
                          double *dLdtheta);

#ifdef __cplusplus
}
#endif
#endif
