/* dump_nets.c — writes small ResNets (v1 and v2 blocks, identity and projection
 * shortcuts, and the plain twin) with everything PyTorch needs to check them:
 *
 *     dump_nets <dir>
 *
 * For each variant <v>: <v>_params.npy (rb_model_export_npy: the flat parameter
 * vector in construction order), <v>_x.npy, <v>_labels.npy, <v>_logits.npy (training-mode
 * forward), <v>_loss.npy, <v>_grad.npy (dL/dtheta), <v>_dx.npy (dL/dx), then ten
 * SGD steps (momentum 0.9, weight decay 5e-4, lr 0.05) on the same batch:
 * <v>_losses.npy and, by rb_model_export_npy, the final <v>_final_params.npy and
 * <v>_final_bn_stats.npy (batch-norm running statistics, mean then var per layer). manifest.txt lists
 * "<v> <block> <depth> <width> <h> <w> <classes> <batch>" per variant.
 * tests/peer_torch_nets.py rebuilds each network in PyTorch from that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testkit.h"

static int save(rb_context *ctx, const char *dir, const char *v, const char *what, const double *data, rb_shape s)
{
    return rb_test_dump_npy(ctx, "dump_nets", dir, v, what, data, s);
}

static int dump(rb_context *ctx, const char *dir, FILE *manifest, const char *v, rb_model_kind kind, rb_block_kind block)
{
    const size_t B = 6, H = 8, K = 5;
    rb_model_desc d = rb_model_desc_default(kind);
    d.block = block, d.depth = 8, d.width = 3, d.in_h = d.in_w = H, d.outputs = K, d.seed = 41;
    rb_model *m;
    rb_dataset ds = {0};
    rb_trainer tr;
    rb_status st = rb_model_create(ctx, &d, &m);
    if (st != RB_OK) goto fail;
    /* a batch: random images, labels 0..K-1 */
    ds.count = B, ds.sample = rb_shape_2d(1, 1, H, H), ds.classes = K;
    ds.x = malloc(B * H * H * sizeof(double)), ds.labels = malloc(B * sizeof(int32_t));
    double lab[6];
    uint64_t s = 12345;
    for (size_t i = 0; i < B * H * H; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        ds.x[i] = (double)(s >> 11) / 9007199254740992.0 * 2 - 1;
    }
    for (size_t i = 0; i < B; i++) ds.labels[i] = (int32_t)((i * 3 + 1) % K), lab[i] = ds.labels[i];
    rb_trainer_config c = rb_trainer_config_default();
    c.lr = 0.05, c.schedule = RB_LR_CONSTANT, c.batch = B, c.epochs = 1;
    st = rb_trainer_init(ctx, &tr, m, &c, &ds);
    if (st != RB_OK) goto fail;
    const size_t np = m->net->nparams;
    rb_tensor x, logits, dlog, dx;
    rb_tensor_view(ctx, &x, ds.x, rb_shape_2d(B, 1, H, H));
    rb_tensor_alloc(ctx, &logits, rb_shape_2d(B, 1, 1, K));
    rb_tensor_alloc(ctx, &dlog, logits.shape);
    rb_tensor_alloc(ctx, &dx, x.shape);
    double *grad = calloc(np, sizeof(double)), loss;
    rb_arena work = {0};
    rb_arena_reserve(ctx, &work, rb_op_backward_workspace(m->net, x.shape));
    char prefix[4096];
    snprintf(prefix, sizeof prefix, "%s/%s_", dir, v);
    int err = rb_model_export_npy(ctx, m, prefix) != RB_OK;
    /* training-mode forward (no statistics tracking), loss, backward */
    rb_model_set_mode(ctx, m, RB_BN_TRAIN);
    st = rb_op_apply(ctx, m->net, &x, &logits, &work);
    if (st == RB_OK) st = rb_loss_softmax_xent(ctx, &logits, ds.labels, &loss, &dlog, NULL);
    if (st == RB_OK) st = rb_op_backward(ctx, m->net, &x, NULL, NULL, &dlog, 1.0, &dx, grad, &work);
    if (st != RB_OK) goto fail;
    err |= save(ctx, dir, v, "x", ds.x, x.shape) | save(ctx, dir, v, "labels", lab, rb_shape_vec(B)) |
           save(ctx, dir, v, "logits", logits.data, logits.shape) | save(ctx, dir, v, "loss", &loss, rb_shape_vec(1)) |
           save(ctx, dir, v, "grad", grad, rb_shape_vec(np)) | save(ctx, dir, v, "dx", dx.data, dx.shape);
    double losses[10];
    for (int k = 0; k < 10 && st == RB_OK; k++) st = rb_trainer_step(ctx, &tr, &x, ds.labels, NULL, &losses[k], NULL);
    if (st != RB_OK) goto fail;
    snprintf(prefix, sizeof prefix, "%s/%s_final_", dir, v);
    err |= save(ctx, dir, v, "losses", losses, rb_shape_vec(10)) | (rb_model_export_npy(ctx, m, prefix) != RB_OK);
    fprintf(manifest, "%s %s %zu %zu %zu %zu %zu %zu\n", v, kind == RB_MODEL_PLAIN ? "plain" : rb_block_kind_name(block), d.depth,
            d.width, H, H, K, B);
    free(grad);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &logits), rb_tensor_release(ctx, &dlog), rb_tensor_release(ctx, &dx);
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    free(ds.x), free(ds.labels);
    return err;
fail:
    fprintf(stderr, "dump_nets: %s: %s\n", v, rb_context_message(ctx));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: dump_nets <output dir>\n");
        return 2;
    }
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    FILE *manifest = rb_test_dump_manifest(argv[1]);
    if (manifest == NULL) {
        return 1;
    }
    int err = dump(ctx, argv[1], manifest, "v1", RB_MODEL_RESNET, RB_BLOCK_V1) |
              dump(ctx, argv[1], manifest, "v2", RB_MODEL_RESNET, RB_BLOCK_V2) |
              dump(ctx, argv[1], manifest, "plain", RB_MODEL_PLAIN, RB_BLOCK_V1);
    fclose(manifest);
    rb_context_free(ctx);
    return err;
}
