/* loss.c — softmax cross-entropy and mean squared error with their gradients (see train.h). */
#include "resbridge/train.h"

#include <math.h>
#include <string.h>

/* Common checks: pred valid, N >= 1, dpred (if given) the same shape. Sets *per = values per sample. */
static rb_status check_pred(rb_context *ctx, const char *fn, const rb_tensor *pred, const void *target,
                            const char *tname, const double *loss, const rb_tensor *dpred, size_t *per)
{
    if (ctx == NULL) return RB_ENULL;
    rb_status st = rb_tensor_check(ctx, pred, "prediction");
    if (st != RB_OK) return st;
    if (target == NULL || loss == NULL) return rb_fail(ctx, RB_ENULL, "%s: %s is NULL", fn, target ? "loss" : tname);
    if (dpred != NULL) {
        st = rb_tensor_check_same(ctx, pred, "prediction", dpred, "gradient");
        if (st != RB_OK) return st;
    }
    *per = rb_tensor_count(pred) / pred->shape.n;
    return RB_OK;
}

rb_status rb_loss_softmax_xent(rb_context *ctx, const rb_tensor *logits, const int32_t *labels, double *loss,
                               rb_tensor *dlogits, size_t *correct)
{
    static const char fn[] = "rb_loss_softmax_xent";
    size_t K;
    rb_status st = check_pred(ctx, fn, logits, labels, "labels", loss, dlogits, &K);
    if (st != RB_OK) return st;
    size_t N = logits->shape.n;
    if (K < 2) return rb_fail(ctx, RB_ESHAPE, "%s: %zu logit per sample; softmax needs at least 2 classes", fn, K);
    for (size_t i = 0; i < N; i++)
        if (labels[i] < 0 || (size_t)labels[i] >= K)
            return rb_fail(ctx, RB_EINVAL, "%s: label %d of sample %zu is out of range 0..%zu", fn, labels[i], i, K - 1);
    double total = 0;
    size_t right = 0;
    for (size_t i = 0; i < N; i++) {
        const double *z = logits->data + i * K;
        size_t arg = 0;
        for (size_t k = 1; k < K; k++)
            if (z[k] > z[arg]) arg = k;
        double zmax = z[arg], sum = 0;
        for (size_t k = 0; k < K; k++) sum += exp(z[k] - zmax);
        double lse = zmax + log(sum);
        total += lse - z[labels[i]];
        right += arg == (size_t)labels[i];
        if (!isfinite(lse))
            return rb_fail(ctx, RB_EDIVERGED, "%s: the loss is not finite (sample %zu has non-finite logits)", fn, i);
    }
    if (!isfinite(total)) return rb_fail(ctx, RB_EDIVERGED, "%s: the loss is not finite", fn);
    if (dlogits != NULL)
        for (size_t i = 0; i < N; i++) { /* d/dz_k = (softmax_k - [k == label]) / N */
            const double *z = logits->data + i * K;
            double *g = dlogits->data + i * K;
            double zmax = z[0], sum = 0;
            for (size_t k = 1; k < K; k++) zmax = fmax(zmax, z[k]);
            for (size_t k = 0; k < K; k++) sum += (g[k] = exp(z[k] - zmax));
            for (size_t k = 0; k < K; k++) g[k] = (g[k] / sum - (k == (size_t)labels[i])) / (double)N;
        }
    *loss = total / (double)N;
    if (correct) *correct = right;
    return RB_OK;
}

rb_status rb_loss_mse(rb_context *ctx, const rb_tensor *pred, const double *target, double *loss, rb_tensor *dpred)
{
    size_t per;
    rb_status st = check_pred(ctx, "rb_loss_mse", pred, target, "target", loss, dpred, &per);
    if (st != RB_OK) return st;
    size_t n = rb_tensor_count(pred);
    double total = 0;
    for (size_t i = 0; i < n; i++) total += (pred->data[i] - target[i]) * (pred->data[i] - target[i]);
    if (!isfinite(total)) return rb_fail(ctx, RB_EDIVERGED, "rb_loss_mse: the loss is not finite");
    if (dpred != NULL)
        for (size_t i = 0; i < n; i++) dpred->data[i] = 2 * (pred->data[i] - target[i]) / (double)n;
    *loss = total / (double)n;
    return RB_OK;
}
