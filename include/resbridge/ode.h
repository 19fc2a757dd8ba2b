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

/* F(t, x) = sigma(W(t) x + b(t)) with weights smooth in t: a Chebyshev series
 * over [ta, tb],
 *     W(t) = sum_{k < terms} T_k(u) W_k,  b(t) = sum_k T_k(u) b_k,  u = 2 (t - ta) / (tb - ta) - 1,
 * T_0 = 1, T_1 = u, T_{k+1} = 2 u T_k - T_{k-1}. Chebyshev polynomials are
 * bounded by 1 on [ta, tb] and well conditioned there (unlike monomials), and
 * the coefficients of a smooth W(t) decay quickly; outside [ta, tb] the series
 * is extrapolated (still smooth, so oracles stepping past T see no kink).
 * terms in 1..RB_ODE_SMOOTH_MAX; params as for rb_op_ode_neural_create (each
 * W_k (n*n) then b_k (n)); the parameter gradient of set k is T_k(u) times
 * that of the weights at t. */
#define RB_ODE_SMOOTH_MAX 32
rb_status rb_op_ode_neural_smooth_create(rb_context *ctx, size_t n, rb_activation sigma, size_t terms, double ta,
                                         double tb, const double *params, rb_op **out);

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
    int partitioned; /* 1: needs a partitioned F (rb_op_ode_is_partitioned), e.g. leapfrog */
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

/* ==== Hamiltonian pair, partitioned right-hand sides, leapfrog, adaptive steps ==================
 *
 * Haber & Ruthotto, "Stable architectures for deep neural networks", Inverse
 * Problems 34 (2017) 014004, their Hamiltonian-inspired network: the state is a pair (y, z) and
 *     y' =  sigma(K(t) z + b(t)),      z' = -sigma(K(t)^T y + b(t)),
 * K square (m x m). The state is the two halves stacked in the last
 * dimension: (N,1,1,1,2m), y in [0, m), z in [m, 2m). With sigma = identity and
 * b = 0 the system is linear with the antisymmetric matrix [[0, K], [-K^T, 0]]
 * (norm-preserving); with K symmetric it is Hamiltonian, H = (y^T K y + z^T K z)/2.
 *
 *     rb_op *F; rb_op_ode_hamiltonian_create(ctx, m, RB_ACT_TANH, 1, 1.0, params, &F);
 *     rb_ode_integrate(ctx, rb_ode_leapfrog, F, 0.0, 1.0, 64, &x0, &xT, NULL, &tape);
 *     rb_ode_adaptive_stats s;
 *     rb_ode_integrate_adaptive(ctx, rb_ode_rk4, F, 0.0, 1.0, &x0, &xT, 1e-8, 1e-10, 0.01, 100000, &s);
 */

/* The Hamiltonian pair: K_k, b_k piecewise constant in t like the neural
 * right-hand side (k = floor(t / set_width) clamped to [0, sets)). params: the
 * sets concatenated, each K_k (m*m, row-major) then b_k (m). m in 1..16384. */
rb_status rb_op_ode_hamiltonian_create(rb_context *ctx, size_t m, rb_activation sigma, size_t sets, double set_width,
                                       const double *params, rb_op **out);

/* A partitioned right-hand side F(t, y, z) = (f(t, z), g(t, y)): the y-velocity
 * depends on z only and the z-velocity on y only (so each half-update of
 * leapfrog is explicit). The Hamiltonian pair is one; rb_op_ode_part gives its
 * restriction to one half as an rb_op on the whole state:
 *     RB_ODE_PART_Y: (f(t, z), 0)      RB_ODE_PART_Z: (0, g(t, y))
 * so x + c P F(x) is a residual step that moves one half only. The part ops are
 * owned by F (freed with it), share F's parameters (param_grad accumulates into
 * F's layout) and read their own time field `t`. */
typedef enum rb_ode_part { RB_ODE_PART_Y, RB_ODE_PART_Z, RB_ODE_PART_COUNT } rb_ode_part;

/* 1 if F is a partitioned right-hand side (made by rb_op_ode_hamiltonian_create), else 0. */
int rb_op_ode_is_partitioned(const rb_op *F);

/* *Fp = F restricted to one part (borrowed, owned by F). RB_EUNSUPPORTED naming
 * F's type if F is not partitioned. */
rb_status rb_op_ode_part(rb_context *ctx, rb_op *F, rb_ode_part part, rb_op **Fp);

/* Stormer-Verlet (kick-drift-kick), symplectic, order 2, for partitioned F:
 *     u = x + (h/2) P_Z F(t, x)          z half-kick      (rb_residual_step)
 *     v = u +  h    P_Y F(t + h/2, u)    y drift          (rb_residual_step)
 *     y = v + (h/2) P_Z F(t + h, v)      z half-kick      (rb_residual_step)
 * Consecutive half-kicks of one layer's weights make Haber & Ruthotto's Verlet
 * network (z staggered by h/2). Each half-update is a shear, so
 * the one-step map has determinant 1 for every sigma; for a Hamiltonian F it
 * is symplectic. A non-partitioned F is refused (RB_EUNSUPPORTED). The method
 * object has `partitioned` = 1. */
extern const rb_ode_method *const rb_ode_leapfrog;

/* ---- adaptive steps (explicit methods) ----------------------------------------------------------
 *
 * Error estimate of the solution the method advances with:
 *   euler     the embedded Euler/Heun pair 1(2): e = y_heun - y_euler (2 evaluations of F per try);
 *   heun, rk4, leapfrog   step doubling: one step of h and two of h/2; advance with the two
 *             half-steps, e = (y_{h/2,h/2} - y_h) / (2^p - 1) (Richardson; 3 steps per try).
 * Error per unit step: a step is accepted when
 *     err = ||e_i / (atol + rtol max(|x_i|, |y_i|))||_rms * |T - t0| / |h| <= 1,
 * so the local errors add up to about the tolerance over [t0, T] and the global
 * error is proportional to it (err ~ h^p: the new step is
 * h min(5, max(0.2, 0.9 err^(-1/p))), never larger right after a rejection).
 * The last step is shortened to end at T exactly. Implicit methods are refused
 * (RB_EUNSUPPORTED). */
typedef struct rb_ode_adaptive_stats {
    long steps;     /* accepted steps */
    long rejected;  /* rejected tries */
    double h_min, h_max; /* smallest and largest accepted |h| (the final step, shortened to end at T, excluded
                          * unless it is the only one) */
    double h_last;  /* the last accepted |h| before the final step */
} rb_ode_adaptive_stats;

/* xT = x(T) with adaptive steps from x(t0) = x0, starting with step h0 (> 0; its
 * sign follows T - t0). rtol > 0 and atol >= 0 finite. max_steps >= 1 bounds
 * the tries (accepted + rejected): reaching it is RB_EMAXITER with the time
 * reached. A non-finite state, or a step shrunk below 16 ulp of t, is
 * RB_EDIVERGED naming the time. xT may alias x0; on error xT is untouched.
 * stats may be NULL. F->t is restored. */
rb_status rb_ode_integrate_adaptive(rb_context *ctx, const rb_ode_method *method, rb_op *F, double t0, double T,
                                    const rb_tensor *x0, rb_tensor *xT, double rtol, double atol, double h0,
                                    long max_steps, rb_ode_adaptive_stats *stats);
/* ==== end: Hamiltonian pair, partitioned right-hand sides, leapfrog, adaptive steps ============== */

/* ==== more right-hand sides: user callbacks, convolutions =====================================
 *
 * ---- a user callback ---------------------------------------------------------------------------
 *
 * F(t, x) = f(t, x, params) from C functions (GSL style: int return, 0 = success,
 * user data last but one). The state is any tensor with n entries, passed as
 * one flat array; params (nparams values, copied in, owned by the op as
 * op->params) are passed as they are and must not be changed by the callbacks.
 * The products write (do not accumulate) their n (or nparams) outputs:
 *     jvp:       Jv  = J_f(t, x) v
 *     vjp:       out = J_f(t, x)^T w
 *     param_vjp: out = (df/dparams)(t, x)^T w
 *
 *     rb_ode_callbacks cb = {.f = my_f, .vjp = my_vjp, .user = &my_data};
 *     rb_op *F; rb_op_ode_callback_create(ctx, n, &cb, 0, NULL, 0, &F);
 *     rb_ode_integrate(ctx, rb_ode_rk4, F, 0.0, 1.0, 64, &x0, &xT, NULL, NULL);
 *
 * J^T w for the state comes from vjp if given, else from n calls of jvp (exact,
 * column by column), else -- only with the flag RB_ODE_CALLBACK_FD -- from
 * central finite differences of f (2n calls, step cbrt(eps) max(1, |x_j|);
 * error about 1e-10 relative). The parameter gradient comes from param_vjp,
 * else (RB_ODE_CALLBACK_FD) finite differences over the parameters. Finite
 * differences are never a silent fallback: without the flag a missing product
 * makes the op's vjp / param_grad fail with RB_EUNSUPPORTED, and
 * rb_op_ode_callback_gradients says which source each gradient uses. A callback
 * returning non-zero becomes RB_ECALLBACK naming the callback, its return value
 * and t; the op's outputs are then untouched. RB_ODE_CALLBACK_LINEAR declares f
 * linear in x (the op is RB_OP_LINEAR). */
typedef int (*rb_ode_fn)(double t, const double *x, const double *params, void *user, double *fx);
typedef int (*rb_ode_product_fn)(double t, const double *x, const double *params, const double *v, void *user,
                                 double *out);

typedef struct rb_ode_callbacks {
    rb_ode_fn f;                  /* required */
    rb_ode_product_fn jvp;        /* optional */
    rb_ode_product_fn vjp;        /* optional */
    rb_ode_product_fn param_vjp;  /* optional (ignored when nparams = 0) */
    void *user;
} rb_ode_callbacks;

enum rb_ode_callback_flags {
    RB_ODE_CALLBACK_FD = 1u << 0,     /* allow finite differences for missing products */
    RB_ODE_CALLBACK_LINEAR = 1u << 1, /* f(t, a x + b z) = a f(t, x) + b f(t, z) */
};

#define RB_ODE_GRAD_LIST(X)                          \
    X(RB_ODE_GRAD_NONE, "none (unsupported)")        \
    X(RB_ODE_GRAD_VJP, "vjp callback")               \
    X(RB_ODE_GRAD_JVP, "jvp callback, column by column") \
    X(RB_ODE_GRAD_FD, "central finite differences")
#define RB_ODE_GRAD_ENUM_(e, name) e,
typedef enum rb_ode_grad { RB_ODE_GRAD_LIST(RB_ODE_GRAD_ENUM_) RB_ODE_GRAD_COUNT } rb_ode_grad;
#undef RB_ODE_GRAD_ENUM_
const char *rb_ode_grad_name(rb_ode_grad g);

/* n >= 1 state entries, nparams parameters (params NULL: zeros), flags from
 * rb_ode_callback_flags. */
rb_status rb_op_ode_callback_create(rb_context *ctx, size_t n, const rb_ode_callbacks *cb, size_t nparams,
                                    const double *params, unsigned flags, rb_op **out);
/* Where the op's gradients come from: J^T w for the state and for the
 * parameters (RB_ODE_GRAD_NONE when there are no parameters). RB_EINVAL if op
 * is not a callback op. Either output may be NULL. */
rb_status rb_op_ode_callback_gradients(rb_context *ctx, const rb_op *op, rb_ode_grad *state, rb_ode_grad *params);

/* ---- convolutional right-hand sides on 2D multi-channel grids -----------------------------------
 *
 * The state is a batch of C-channel images (N, C, 1, H, W); K is a 3x3
 * convolution C -> C with zero padding (the foundation's conv op, conv.h),
 * b a bias per channel, sigma an activation:
 *     RB_ODE_CONV_PLAIN    F(x) = sigma(K * x + b)
 *     RB_ODE_CONV_STABLE   F(x) = -K^T sigma(K * x + b)     (Haber & Ruthotto 2017: for monotone sigma the
 *                                                            Jacobian -K^T D K is negative semi-definite)
 * K^T is the transposed conv with the same weights, so K appears once in the
 * parameters. params: K ([C][C][9], PyTorch layout) then b (C), copied in (NULL: zeros). */
typedef enum rb_ode_conv_form { RB_ODE_CONV_PLAIN, RB_ODE_CONV_STABLE, RB_ODE_CONV_FORM_COUNT } rb_ode_conv_form;
rb_status rb_op_ode_conv_create(rb_context *ctx, size_t channels, rb_activation sigma, rb_ode_conv_form form,
                                const double *params, rb_op **out);
/* Parameters of a conv right-hand side with C channels: 9 C^2 + C. */
size_t rb_ode_conv_nparams(size_t channels);

/* ==== end of: more right-hand sides ============================================================= */

#ifdef __cplusplus
}
#endif
#endif
