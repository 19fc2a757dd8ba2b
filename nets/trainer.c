/* trainer.c — training steps, epochs and evaluation (see trainer.h). */
#include "resbridge/trainer.h"

#include <math.h>
#include <string.h>
#include <time.h>

rb_trainer_config rb_trainer_config_default(void)
{
    rb_trainer_config c = {.opt = rb_optimizer_config_default(RB_OPT_SGD), .lr = 0.1, .schedule = RB_LR_COSINE,
                           .epochs = 5, .step_epochs = 1, .gamma = 0.1, .batch = 128, .seed = 1};
    c.opt.momentum = 0.9;
    c.opt.weight_decay = 5e-4;
    return c;
}

static size_t bn_stat_count(const rb_model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nbn; i++) n += 2 * (m->bn[i]->nparams / 2);
    return n;
}

/* Copy every batch-norm layer's running statistics to (save = 1) or from (save = 0) buf. */
static void bn_stats_copy(rb_model *m, double *buf, int save)
{
    for (size_t i = 0; i < m->nbn; i++) {
        size_t c = m->bn[i]->nparams / 2;
        double *rm = rb_op_batchnorm_running_mean(m->bn[i]); /* mean then var, contiguous */
        if (save) memcpy(buf, rm, 2 * c * sizeof(double));
        else memcpy(rm, buf, 2 * c * sizeof(double));
        buf += 2 * c;
    }
}

void rb_trainer_release(rb_context *ctx, rb_trainer *tr)
{
    if (tr == NULL) return;
    rb_optimizer_release(ctx, &tr->opt);
    rb_arena_release(ctx, &tr->work);
    rb_free(ctx, tr->tape);
    rb_tensor_release(ctx, &tr->x);
    rb_tensor_release(ctx, &tr->out);
    rb_tensor_release(ctx, &tr->dout);
    rb_free(ctx, tr->grad);
    rb_free(ctx, tr->labels);
    rb_free(ctx, tr->targets);
    memset(tr, 0, sizeof *tr);
}

rb_status rb_trainer_init(rb_context *ctx, rb_trainer *tr, rb_model *model, const rb_trainer_config *cfg,
                          const rb_dataset *ds)
{
    static const char fn[] = "rb_trainer_init";
    if (ctx == NULL) return RB_ENULL;
    if (tr == NULL || model == NULL || cfg == NULL || ds == NULL)
        return rb_fail(ctx, RB_ENULL, "%s: trainer, model, config and data set must not be NULL", fn);
    if (ds->count == 0 || ds->x == NULL) return rb_fail(ctx, RB_EINVAL, "%s: the training set is empty", fn);
    if (cfg->batch == 0) return rb_fail(ctx, RB_EINVAL, "%s: batch size is 0, must be >= 1", fn);
    if (cfg->epochs == 0) return rb_fail(ctx, RB_EINVAL, "%s: epochs = 0", fn);
    if (ds->labels == NULL && ds->y == NULL) return rb_fail(ctx, RB_EINVAL, "%s: the data set has neither labels nor targets", fn);
    if (ds->labels != NULL && ds->classes != model->desc.outputs)
        return rb_fail(ctx, RB_ESHAPE, "%s: the data set has %zu classes, the model %zu outputs", fn, ds->classes, model->desc.outputs);
    if (ds->labels == NULL && ds->target_len != model->desc.outputs)
        return rb_fail(ctx, RB_ESHAPE, "%s: targets have %zu values, the model %zu outputs", fn, ds->target_len, model->desc.outputs);
    if (rb_shape_count(ds->sample) != rb_shape_count(model->sample))
        return rb_fail(ctx, RB_ESHAPE, "%s: samples have %zu values, the model takes %zu", fn, rb_shape_count(ds->sample),
                       rb_shape_count(model->sample));
    rb_trainer t = {.model = model, .cfg = *cfg};
    t.steps_per_epoch = (ds->count + cfg->batch - 1) / cfg->batch;
    t.sched = (rb_lr_schedule){.kind = cfg->schedule, .base = cfg->lr, .gamma = cfg->gamma};
    t.sched.period = cfg->schedule == RB_LR_STEP ? cfg->step_epochs * t.steps_per_epoch : cfg->epochs * t.steps_per_epoch;
    rb_status st = rb_lr_check(ctx, &t.sched);
    if (st == RB_OK) st = rb_optimizer_init(ctx, &t.opt, &cfg->opt, model->net->nparams);
    if (st != RB_OK) return st;
    rb_shape in = model->sample, out;
    in.n = cfg->batch;
    st = rb_op_shape(ctx, model->net, in, &out);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &t.x, in);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &t.out, out);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &t.dout, out);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &t.work, rb_op_workspace(model->net, in));
    size_t tb = rb_op_tape_bytes(model->net, in);
    if (st == RB_OK && tb > 0 && (t.tape = rb_malloc(ctx, tb)) == NULL) st = RB_ENOMEM;
    if (st == RB_OK && (t.grad = rb_malloc(ctx, (model->net->nparams + bn_stat_count(model)) * sizeof(double))) == NULL)
        st = RB_ENOMEM;
    if (st == RB_OK && ds->labels && (t.labels = rb_malloc(ctx, cfg->batch * sizeof(int32_t))) == NULL) st = RB_ENOMEM;
    if (st == RB_OK && !ds->labels && (t.targets = rb_malloc(ctx, cfg->batch * ds->target_len * sizeof(double))) == NULL)
        st = RB_ENOMEM;
    if (st != RB_OK) {
        rb_trainer_release(ctx, &t);
        return st;
    }
    *tr = t;
    return RB_OK;
}

/* A view of the trainer's buffer b shaped for a batch of n. */
static rb_tensor batch_view(const rb_tensor *b, size_t n)
{
    rb_tensor v = *b;
    v.shape.n = n;
    v.owns = false;
    return v;
}

rb_status rb_trainer_step(rb_context *ctx, rb_trainer *tr, const rb_tensor *x, const int32_t *labels,
                          const double *targets, double *loss, size_t *correct)
{
    static const char fn[] = "rb_trainer_step";
    if (ctx == NULL) return RB_ENULL;
    if (tr == NULL || tr->model == NULL || loss == NULL) return rb_fail(ctx, RB_ENULL, "%s: trainer or loss is NULL", fn);
    rb_status st = rb_tensor_check(ctx, x, "rb_trainer_step: x");
    if (st != RB_OK) return st;
    const size_t B = x->shape.n;
    rb_model *m = tr->model;
    if (B > tr->cfg.batch) return rb_fail(ctx, RB_ESHAPE, "%s: batch of %zu > the configured %zu", fn, B, tr->cfg.batch);
    if (rb_tensor_count(x) / B != rb_shape_count(m->sample))
        return rb_fail(ctx, RB_ESHAPE, "%s: samples have %zu values, the model takes %zu", fn, rb_tensor_count(x) / B,
                       rb_shape_count(m->sample));
    if ((labels == NULL) == (targets == NULL)) return rb_fail(ctx, RB_EINVAL, "%s: give labels or targets (exactly one)", fn);
    rb_tensor xin = *x, out = batch_view(&tr->out, B), dout = batch_view(&tr->dout, B);
    xin.shape = m->sample;
    xin.shape.n = B;
    const size_t np = m->net->nparams;
    double *bn_saved = tr->grad + np;
    bn_stats_copy(m, bn_saved, 1);

    /* forward once (tracking the batch statistics), loss, backward once from the tape */
    st = rb_model_set_mode(ctx, m, RB_BN_TRAIN_TRACK);
    if (st == RB_OK) st = rb_op_forward(ctx, m->net, &xin, &out, tr->tape, &tr->work);
    rb_status st2 = rb_model_set_mode(ctx, m, RB_BN_TRAIN);
    if (st == RB_OK) st = st2;
    size_t right = 0;
    if (st == RB_OK) st = labels ? rb_loss_softmax_xent(ctx, &out, labels, loss, &dout, &right)
                                 : rb_loss_mse(ctx, &out, targets, loss, &dout);
    if (st == RB_OK) {
        memset(tr->grad, 0, np * sizeof(double));
        st = rb_op_backward(ctx, m->net, &xin, &out, tr->tape, &dout, 1.0, NULL, tr->grad, &tr->work);
    }
    if (st == RB_OK) st = rb_optimizer_step(ctx, &tr->opt, m->net->params, tr->grad, rb_lr_at(&tr->sched, tr->step));
    if (st != RB_OK) {
        bn_stats_copy(m, bn_saved, 0); /* nothing of a failed step stays */
        return st;
    }
    tr->step++;
    if (correct) *correct = right;
    return RB_OK;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

rb_status rb_trainer_epoch(rb_context *ctx, rb_trainer *tr, const rb_dataset *ds, rb_progress_fn progress, void *user,
                           rb_epoch_stats *stats)
{
    if (ctx == NULL) return RB_ENULL;
    if (tr == NULL || ds == NULL || tr->model == NULL) return rb_fail(ctx, RB_ENULL, "rb_trainer_epoch: trainer or data set is NULL");
    double t0 = now();
    rb_batcher b;
    rb_status st = rb_batcher_init(ctx, &b, ds, tr->cfg.batch, tr->cfg.seed);
    if (st == RB_OK) st = rb_batcher_epoch(ctx, &b, tr->epoch);
    double sum = 0;
    size_t seen = 0, right_total = 0, batches = (ds->count + tr->cfg.batch - 1) / tr->cfg.batch, k = 0;
    while (st == RB_OK) {
        size_t n = 0, right = 0;
        rb_tensor x = tr->x;
        st = rb_batcher_next(ctx, &b, &x, tr->labels, tr->targets, &n);
        if (st != RB_OK || n == 0) break;
        double loss;
        st = rb_trainer_step(ctx, tr, &x, tr->labels, tr->labels ? NULL : tr->targets, &loss, &right);
        if (st == RB_EDIVERGED)
            st = rb_fail(ctx, RB_EDIVERGED, "training diverged in epoch %zu, batch %zu of %zu: %s", tr->epoch + 1, k + 1,
                         batches, rb_context_message(ctx));
        if (st != RB_OK) break;
        sum += loss * (double)n, seen += n, right_total += right, k++;
        if (progress) progress(user, k, batches, sum / (double)seen, tr->labels ? (double)right_total / (double)seen : 0);
    }
    rb_batcher_release(ctx, &b);
    if (st != RB_OK) return st;
    tr->epoch++;
    if (stats)
        *stats = (rb_epoch_stats){.epoch = tr->epoch, .loss = sum / (double)seen,
                                  .accuracy = tr->labels ? (double)right_total / (double)seen : 0, .seconds = now() - t0};
    return RB_OK;
}

/* Inference over ds in data order: loss and accuracy (may be NULL), the outputs into pred (may be NULL). */
static rb_status evaluate(rb_context *ctx, const char *fn, rb_model *model, const rb_dataset *ds, size_t batch, double *loss,
                          double *accuracy, double *pred)
{
    if (model == NULL || ds == NULL) return rb_fail(ctx, RB_ENULL, "%s: model and data set must not be NULL", fn);
    if (batch == 0) return rb_fail(ctx, RB_EINVAL, "%s: batch size is 0, must be >= 1", fn);
    if (ds->count == 0 || ds->x == NULL) return rb_fail(ctx, RB_EINVAL, "%s: the data set is empty", fn);
    if (rb_shape_count(ds->sample) != rb_shape_count(model->sample))
        return rb_fail(ctx, RB_ESHAPE, "%s: samples have %zu values, the model takes %zu", fn, rb_shape_count(ds->sample),
                       rb_shape_count(model->sample));
    rb_shape in = model->sample, os;
    in.n = batch;
    rb_tensor x = {0}, out = {0};
    rb_arena work = {0};
    int32_t *labels = NULL;
    double *targets = NULL;
    rb_status st = rb_op_shape(ctx, model->net, in, &os);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &x, in);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &out, os);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_op_workspace(model->net, in));
    if (st == RB_OK && ds->labels && (labels = rb_malloc(ctx, batch * sizeof(int32_t))) == NULL) st = RB_ENOMEM;
    if (st == RB_OK && !ds->labels && (targets = rb_malloc(ctx, batch * ds->target_len * sizeof(double))) == NULL) st = RB_ENOMEM;
    if (st == RB_OK) st = rb_model_set_mode(ctx, model, RB_BN_EVAL);
    rb_batcher b = {0};
    if (st == RB_OK) st = rb_batcher_init(ctx, &b, ds, batch, 0);
    if (st == RB_OK) {
        rb_batcher_set_shuffle(&b, 0);
        st = rb_batcher_epoch(ctx, &b, 0);
    }
    double sum = 0;
    size_t seen = 0, right_total = 0;
    while (st == RB_OK) {
        size_t n = 0, right = 0;
        rb_tensor xb = x;
        st = rb_batcher_next(ctx, &b, &xb, labels, targets, &n);
        if (st != RB_OK || n == 0) break;
        xb.shape = model->sample, xb.shape.n = n;
        rb_tensor ob = batch_view(&out, n);
        double l;
        st = rb_op_apply(ctx, model->net, &xb, &ob, &work);
        if (st == RB_OK && pred != NULL) memcpy(pred + seen * model->desc.outputs, ob.data, n * model->desc.outputs * sizeof(double));
        if (st == RB_OK) st = labels ? rb_loss_softmax_xent(ctx, &ob, labels, &l, NULL, &right) : rb_loss_mse(ctx, &ob, targets, &l, NULL);
        if (st == RB_OK) sum += l * (double)n, seen += n, right_total += right;
    }
    rb_status st2 = rb_model_set_mode(ctx, model, RB_BN_TRAIN);
    if (st == RB_OK) st = st2;
    rb_batcher_release(ctx, &b);
    rb_tensor_release(ctx, &x);
    rb_tensor_release(ctx, &out);
    rb_arena_release(ctx, &work);
    rb_free(ctx, labels);
    rb_free(ctx, targets);
    if (st != RB_OK) return st;
    if (loss != NULL) *loss = sum / (double)seen;
    if (accuracy != NULL) *accuracy = ds->labels ? (double)right_total / (double)seen : 0;
    return RB_OK;
}

rb_status rb_model_evaluate(rb_context *ctx, rb_model *model, const rb_dataset *ds, size_t batch, double *loss,
                            double *accuracy)
{
    if (ctx == NULL) return RB_ENULL;
    if (loss == NULL || accuracy == NULL) return rb_fail(ctx, RB_ENULL, "rb_model_evaluate: loss and accuracy must not be NULL");
    return evaluate(ctx, "rb_model_evaluate", model, ds, batch, loss, accuracy, NULL);
}

rb_status rb_model_predict(rb_context *ctx, rb_model *model, const rb_dataset *ds, size_t batch, double *pred)
{
    if (ctx == NULL) return RB_ENULL;
    if (pred == NULL) return rb_fail(ctx, RB_ENULL, "rb_model_predict: pred is NULL");
    return evaluate(ctx, "rb_model_predict", model, ds, batch, NULL, NULL, pred);
}
