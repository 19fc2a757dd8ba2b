/* jacobi_poisson.c — damped Jacobi for -u'' = f on (0,1), u(0) = u(1) = 0, as
 * repeated residual steps u <- u + omega D^{-1} (f - A u).
 *
 * f = pi^2 sin(pi x), so the discrete solution is c_h sin(pi x_i) with
 * c_h = (pi h)^2 / (4 sin^2(pi h / 2)); the program prints the error against
 * it as the sweeps go (slowly: Jacobi alone is a smoother, not a solver;
 * multigrid is what makes it fast). */
#include <math.h>
#include <stdio.h>

#include <resbridge/resbridge.h>

int main(void)
{
    const size_t n = 31;
    const double h = 1.0 / (double)(n + 1), pi = acos(-1.0), omega = 2.0 / 3.0;
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    rb_tensor u, f;
    rb_op *A = NULL, *J = NULL;
    rb_arena work = {0};
    rb_status st = rb_tensor_alloc(ctx, &u, rb_shape_vec(n));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &f, rb_shape_vec(n));
    if (st == RB_OK) st = rb_op_laplacian_create(ctx, 1, h, &A);   /* A = -d^2/dx^2, 3-point */
    if (st == RB_OK) st = rb_op_jacobi_create(ctx, A, &f, &J);     /* F(u) = D^-1 (f - A u) */
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_residual_workspace(J, u.shape));
    if (st != RB_OK) {
        fprintf(stderr, "%s: %s\n", rb_strerror(st), rb_context_message(ctx));
        return 1;
    }
    double c_h = (pi * h) * (pi * h) / (4 * pow(sin(pi * h / 2), 2));
    for (size_t i = 0; i < n; i++) f.data[i] = pi * pi * sin(pi * (double)(i + 1) * h);
    for (int sweep = 1; sweep <= 4096 && st == RB_OK; sweep++) {
        st = rb_residual_step(ctx, J, omega, &u, &u, &work);       /* one damped Jacobi sweep */
        if ((sweep & (sweep - 1)) == 0) {
            double err = 0;
            for (size_t i = 0; i < n; i++) err = fmax(err, fabs(u.data[i] - c_h * sin(pi * (double)(i + 1) * h)));
            printf("sweep %5d  max error vs discrete solution %.3e\n", sweep, err);
        }
    }
    if (st != RB_OK) fprintf(stderr, "%s: %s\n", rb_strerror(st), rb_context_message(ctx));
    rb_arena_release(ctx, &work);
    rb_op_free(ctx, J), rb_op_free(ctx, A);
    rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &f);
    rb_context_free(ctx);
    return st == RB_OK ? 0 : 1;
}
