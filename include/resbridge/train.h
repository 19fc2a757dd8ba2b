/* train.h — what training needs besides the network: losses with their
 * gradients, optimisers (SGD with momentum and weight decay, Adam) and
 * learning-rate schedules, all with PyTorch's definitions so that runs can be
 * compared step by step.
 *
 *     double loss; size_t correct;
 *     rb_loss_softmax_xent(ctx, &logits, labels, &loss, &dlogits, &correct);
 *     ... backward through the network into grad ...
 *     rb_optimizer opt; rb_optimizer_init(ctx, &opt, &cfg, nparams);
 *     double lr = rb_lr_at(&sched, step);
 *     rb_optimizer_step(ctx, &opt, params, grad, lr);
 *     rb_optimizer_release(ctx, &opt);
 */
#ifndef RESBRIDGE_TRAIN_H
#define RESBRIDGE_TRAIN_H

#include <stdint.h>
#include "resbridge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- losses ---------------------------------------------------------------------------------
 *
 * Both average over the batch (PyTorch's reduction = 'mean'). The prediction is
 * (N, ...): sample i's values are the i-th block of count/N values. The
 * gradient, when dpred is non-NULL (same shape as pred), is OVERWRITTEN with
 * dL/dpred. A non-finite loss is RB_EDIVERGED (training stops there). */

/* L = -(1/N) sum_i log softmax(z_i)[label_i]; labels in [0, K). *correct (may be
 * NULL) counts samples whose largest logit is the label's (first maximum wins). */
rb_status rb_loss_softmax_xent(rb_context *ctx, const rb_tensor *logits, const int32_t *labels, double *loss,
                               rb_tensor *dlogits, size_t *correct);

/* L = (1/(N K)) sum (pred - target)^2 over all N K values (torch.nn.MSELoss). */
rb_status rb_loss_mse(rb_context *ctx, const rb_tensor *pred, const double *target, double *loss, rb_tensor *dpred);

/* ---- optimisers ----------------------------------------------------------------------------- */

typedef enum rb_optimizer_kind { RB_OPT_SGD, RB_OPT_ADAM, RB_OPT_COUNT } rb_optimizer_kind;

typedef struct rb_optimizer_config {
    rb_optimizer_kind kind;
    double momentum;      /* SGD: 0 <= momentum < 1 (torch.optim.SGD, dampening 0, not Nesterov) */
    double weight_decay;  /* >= 0, added to the gradient as weight_decay * param (both optimisers) */
    double beta1, beta2;  /* Adam: in [0, 1) (defaults 0.9, 0.999) */
    double eps;           /* Adam: > 0 (default 1e-8) */
} rb_optimizer_config;

/* SGD, momentum 0.9, no weight decay; Adam's betas and eps at PyTorch's defaults. */
rb_optimizer_config rb_optimizer_config_default(rb_optimizer_kind kind);
rb_status rb_optimizer_parse(rb_context *ctx, const char *name, rb_optimizer_kind *kind); /* "sgd", "adam" */
const char *rb_optimizer_name(rb_optimizer_kind kind);

typedef struct rb_optimizer {
    rb_optimizer_config cfg;
    size_t n;              /* parameters */
    uint64_t steps;        /* steps taken */
    double *m;             /* SGD: momentum buffer; Adam: first moment */
    double *v;             /* Adam: second moment (NULL for SGD) */
} rb_optimizer;

rb_status rb_optimizer_init(rb_context *ctx, rb_optimizer *opt, const rb_optimizer_config *cfg, size_t nparams);
/* One update of params[0..n) with gradient grad at learning rate lr (finite, > 0):
 *   SGD:  g = grad + wd p;  b = g (first step) or momentum b + g;  p -= lr b
 *   Adam: g = grad + wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *         p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * A non-finite gradient is RB_EDIVERGED and leaves params and state unchanged. */
rb_status rb_optimizer_step(rb_context *ctx, rb_optimizer *opt, double *params, const double *grad, double lr);
void rb_optimizer_release(rb_context *ctx, rb_optimizer *opt);

/* ---- learning-rate schedules ---------------------------------------------------------------- */

typedef enum rb_lr_kind { RB_LR_CONSTANT, RB_LR_STEP, RB_LR_COSINE, RB_LR_COUNT } rb_lr_kind;

typedef struct rb_lr_schedule {
    rb_lr_kind kind;
    double base;          /* lr at step 0 */
    uint64_t period;      /* STEP: multiply by gamma every `period` steps; COSINE: total steps T */
    double gamma;         /* STEP: factor in (0, 1] */
    double floor;         /* COSINE: eta_min, lr at step T (>= 0) */
} rb_lr_schedule;

/* Validate a schedule (message names the field). */
rb_status rb_lr_check(rb_context *ctx, const rb_lr_schedule *s);
/* lr at step t: CONSTANT base; STEP base gamma^floor(t / period) (torch StepLR);
 * COSINE floor + (base - floor)(1 + cos(pi min(t, T) / T)) / 2 (torch CosineAnnealingLR). */
double rb_lr_at(const rb_lr_schedule *s, uint64_t t);

#ifdef __cplusplus
}
#endif
#endif
