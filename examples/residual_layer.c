/* residual_layer.c — a ResNet layer y = x + h F(x) with F = conv3x3 -> ReLU ->
 * conv3x3 on a batch of 2-channel images, forward and backward. */
#include <stdio.h>
#include <stdlib.h>

#include <resbridge/resbridge.h>

#define CHECK(call)                                                                  \
    do {                                                                             \
        rb_status st_ = (call);                                                      \
        if (st_ != RB_OK) {                                                          \
            fprintf(stderr, "%s: %s: %s\n", #call, rb_strerror(st_), rb_context_message(ctx)); \
            return 1;                                                                \
        }                                                                            \
    } while (0)

int main(void)
{
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    rb_conv_desc d = rb_conv_desc_default(2, 2, 2); /* 2D, 3x3, 2 -> 2 channels, same size */
    d.bias = true;
    double w[2 * 2 * 9 + 2];
    srand(1);
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) w[i] = 0.2 * (rand() / (double)RAND_MAX - 0.5);
    rb_op *parts[3];
    CHECK(rb_op_conv_create(ctx, &d, w, &parts[0]));
    CHECK(rb_op_activation_create(ctx, RB_ACT_RELU, &parts[1]));
    CHECK(rb_op_conv_create(ctx, &d, w, &parts[2]));
    rb_op *F;
    CHECK(rb_op_chain_create(ctx, parts, 3, &F)); /* F owns the parts now */

    rb_shape s = rb_shape_2d(4, 2, 16, 16); /* (N, C, H, W) */
    rb_tensor x, y, dy, dx;
    CHECK(rb_tensor_alloc(ctx, &x, s));
    CHECK(rb_tensor_alloc(ctx, &y, s));
    CHECK(rb_tensor_alloc(ctx, &dy, s));
    CHECK(rb_tensor_alloc(ctx, &dx, s));
    for (size_t i = 0; i < rb_tensor_count(&x); i++) x.data[i] = (double)(i % 7) - 3.0;
    rb_tensor_fill(ctx, &dy, 1.0); /* gradient of sum(y) */
    double *dtheta = calloc(F->nparams, sizeof *dtheta);
    if (dtheta == NULL) return 1;

    rb_arena work = {0};
    CHECK(rb_arena_reserve(ctx, &work, rb_residual_workspace(F, s))); /* once; the loop allocates nothing */
    CHECK(rb_residual_step(ctx, F, 1.0, &x, &y, &work));                      /* y = x + F(x) */
    CHECK(rb_residual_backward(ctx, F, 1.0, &x, &dy, &dx, dtheta, &work));    /* dx, dtheta += ... */
    printf("sum(y) = %.6f, |dx| = %.6f, %zu parameters, |dtheta|_1 = ", rb_tensor_dot(&y, &dy), rb_tensor_norm2(&dx),
           F->nparams);
    double l1 = 0;
    for (size_t i = 0; i < F->nparams; i++) l1 += dtheta[i] < 0 ? -dtheta[i] : dtheta[i];
    printf("%.6f\n", l1);

    free(dtheta);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy), rb_tensor_release(ctx, &dx);
    rb_op_free(ctx, F);
    rb_context_free(ctx);
    return 0;
}
