/* dump_unet.c — writes small U-Nets (unet.h) with everything PyTorch needs to check them:
 *
 *     dump_unet <dir>
 *
 * For each case <v>: <v>_params.npy (the flat parameter vector, order in unet.h), <v>_x.npy,
 * <v>_target.npy, <v>_y.npy (forward), <v>_loss.npy (MSE against the target), <v>_grad.npy
 * (dL/dtheta), <v>_dx.npy (dL/dx). manifest.txt lists
 * "<v> <dim> <n> <levels> <cin> <C> <cout> <batch> <pre> <post> <cycles> <activation> <cycle>"
 * per case. tests/peer_torch_unet.py rebuilds each network in PyTorch from that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testkit.h"

static int save(rb_context *ctx, const char *dir, const char *v, const char *what, const double *data, rb_shape s)
{
    return rb_test_dump_npy(ctx, "dump_unet", dir, v, what, data, s);
}

static void fill(rb_tensor *t, uint64_t *s)
{
    for (size_t i = 0; i < rb_tensor_count(t); i++) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        t->data[i] = (double)(*s >> 11) / 9007199254740992.0 * 2 - 1;
    }
}

static int dump(rb_context *ctx, const char *dir, FILE *manifest, const char *v, const rb_unet_config *c)
{
    rb_unet *net = NULL;
    rb_tensor x = {0}, t = {0}, y = {0}, dy = {0}, dx = {0};
    int err = 1;
    double loss;
    uint64_t s = c->seed * 7919u;
    rb_status st = rb_unet_create(ctx, c, &net);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &x, rb_unet_in_shape(net));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &dx, rb_unet_in_shape(net));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &t, rb_unet_out_shape(net));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &y, rb_unet_out_shape(net));
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &dy, rb_unet_out_shape(net));
    if (st == RB_OK) {
        fill(&x, &s), fill(&t, &s);
        st = rb_unet_forward(ctx, net, &x, &y, true);
    }
    if (st == RB_OK) st = rb_loss_mse(ctx, &y, t.data, &loss, &dy);
    if (st == RB_OK) st = rb_unet_backward(ctx, net, &dy, &dx);
    if (st != RB_OK) {
        fprintf(stderr, "dump_unet: %s: %s\n", v, rb_context_message(ctx));
    } else {
        const size_t np = rb_unet_nparams(net);
        err = save(ctx, dir, v, "params", rb_unet_params(net), rb_shape_vec(np)) | save(ctx, dir, v, "x", x.data, x.shape) |
              save(ctx, dir, v, "target", t.data, t.shape) | save(ctx, dir, v, "y", y.data, y.shape) |
              save(ctx, dir, v, "loss", &loss, rb_shape_vec(1)) | save(ctx, dir, v, "grad", rb_unet_grad(net), rb_shape_vec(np)) |
              save(ctx, dir, v, "dx", dx.data, dx.shape);
        fprintf(manifest, "%s %d %zu %zu %zu %zu %zu %zu %d %d %d %s %s\n", v, c->dim, c->n, c->levels, c->in_channels, c->channels,
                c->out_channels, c->batch, c->pre, c->post, c->cycles, rb_activation_name(c->act), rb_cycle_name(c->cycle));
    }
    rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &t), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &dy);
    rb_tensor_release(ctx, &dx);
    rb_unet_free(ctx, net);
    return err;
}

int main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: dump_unet <output dir>\n");
        return 2;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    FILE *manifest = rb_test_dump_manifest(argv[1]);
    if (manifest == NULL) {
        rb_context_free(ctx);
        return 1;
    }
    int err = 0;
    rb_unet_config c = rb_unet_config_default();
    c.n = 15, c.levels = 3, c.in_channels = 2, c.channels = 4, c.out_channels = 1, c.batch = 2, c.seed = 11;
    err |= dump(ctx, argv[1], manifest, "v2d_tanh", &c);
    c.in_channels = 1, c.channels = 3, c.out_channels = 2, c.cycle = RB_CYCLE_W, c.pre = 2, c.post = 1, c.cycles = 1;
    c.act = RB_ACT_GELU, c.seed = 12;
    err |= dump(ctx, argv[1], manifest, "w2d_gelu", &c);
    c.cycle = RB_CYCLE_F, c.pre = 1, c.post = 2, c.cycles = 2, c.act = RB_ACT_RELU, c.levels = 4, c.n = 31, c.seed = 13;
    err |= dump(ctx, argv[1], manifest, "f2d_relu", &c);
    c = rb_unet_config_default();
    c.dim = 1, c.n = 63, c.levels = 5, c.channels = 5, c.batch = 3, c.act = RB_ACT_SIGMOID, c.cycles = 3, c.seed = 14;
    err |= dump(ctx, argv[1], manifest, "v1d_sigmoid", &c);
    c = rb_unet_config_default();
    c.dim = 3, c.n = 7, c.levels = 2, c.channels = 3, c.act = RB_ACT_IDENTITY, c.seed = 15;
    err |= dump(ctx, argv[1], manifest, "v3d_identity", &c);
    fclose(manifest);
    rb_context_free(ctx);
    return err;
}
