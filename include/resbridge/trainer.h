/* trainer.h — the training loop: mini-batch steps (taped forward, loss,
 * taped backward, optimiser), epochs over a data set, evaluation, and
 * checkpoints that resume a run exactly.
 *
 *     rb_trainer_config cfg = rb_trainer_config_default();
 *     rb_trainer tr; rb_trainer_init(ctx, &tr, model, &cfg, &train);
 *     for (e = 0; e < epochs; e++) {
 *         rb_trainer_epoch(ctx, &tr, &train, NULL, NULL, &stats);       // shuffled by (seed, epoch)
 *         rb_model_evaluate(ctx, model, &test, 256, &loss, &acc);
 *         rb_checkpoint_save(ctx, "run.ckpt", &tr);                      // atomic, checksummed
 *     }
 *     rb_trainer_release(ctx, &tr);
 *
 * Reproducible: for a fixed seed and thread count the losses are the same on
 * every run, and a run resumed from a checkpoint continues with the same losses
 * as an uninterrupted one.
 */
#ifndef RESBRIDGE_TRAINER_H
#define RESBRIDGE_TRAINER_H

#include "resbridge/data.h"
#include "resbridge/model.h"
#include "resbridge/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rb_trainer_config {
    rb_optimizer_config opt;
    double lr;                /* base learning rate */
    rb_lr_kind schedule;      /* CONSTANT, STEP (gamma every step_epochs), COSINE (over `epochs`) */
    size_t epochs;            /* the schedule's length (COSINE) */
    size_t step_epochs;       /* STEP: epochs between decays */
    double gamma;             /* STEP: decay factor */
    size_t batch;
    unsigned long seed;       /* the data shuffle */
} rb_trainer_config;

/* The nets issue's reference schedule: SGD, momentum 0.9, weight decay 5e-4, lr 0.1
 * cosine over 5 epochs, batch 128, seed 1. */
rb_trainer_config rb_trainer_config_default(void);

typedef struct rb_trainer {
    rb_model *model;
    rb_trainer_config cfg;
    rb_optimizer opt;
    rb_lr_schedule sched;     /* in optimiser steps */
    uint64_t step;            /* optimiser steps taken */
    size_t epoch;             /* epochs completed */
    size_t steps_per_epoch;
    /* private: one allocation each, sized for a full batch */
    rb_arena work;
    void *tape;
    rb_tensor x, out, dout;
    double *grad;
    int32_t *labels;
    double *targets;
} rb_trainer;

/* ds is the training set: it fixes the sample shape, the loss (labels: softmax
 * cross-entropy; targets: MSE) and the steps per epoch. The model is borrowed. */
rb_status rb_trainer_init(rb_context *ctx, rb_trainer *tr, rb_model *model, const rb_trainer_config *cfg,
                          const rb_dataset *ds);
void rb_trainer_release(rb_context *ctx, rb_trainer *tr);

/* One optimiser step on a batch (x: (B, sample...), B <= cfg.batch; labels or targets).
 * *loss is the batch's mean loss before the step, *correct the samples classified right.
 * A non-finite loss or gradient is RB_EDIVERGED with the parameters unchanged. */
rb_status rb_trainer_step(rb_context *ctx, rb_trainer *tr, const rb_tensor *x, const int32_t *labels,
                          const double *targets, double *loss, size_t *correct);

typedef struct rb_epoch_stats {
    size_t epoch;             /* 1-based number of the epoch just completed */
    double loss;              /* mean training loss over the epoch's batches (sample-weighted) */
    double accuracy;          /* fraction right during the epoch (classification), else 0 */
    double seconds;
} rb_epoch_stats;

/* Progress after every batch (the library prints nothing; the CLI draws it on stderr). */
typedef void (*rb_progress_fn)(void *user, size_t batch, size_t batches, double loss, double accuracy);

/* The next epoch (number tr->epoch + 1): shuffle by (cfg.seed, epoch), every batch one step. */
rb_status rb_trainer_epoch(rb_context *ctx, rb_trainer *tr, const rb_dataset *ds, rb_progress_fn progress, void *user,
                           rb_epoch_stats *stats);

/* Inference-mode loss and accuracy (or 0 for regression) over a data set. */
rb_status rb_model_evaluate(rb_context *ctx, rb_model *model, const rb_dataset *ds, size_t batch, double *loss,
                            double *accuracy);

/* The model's outputs on every sample of ds, in data order (inference mode): pred holds
 * ds->count * model->desc.outputs values. */
rb_status rb_model_predict(rb_context *ctx, rb_model *model, const rb_dataset *ds, size_t batch, double *pred);

/* ---- checkpoints ------------------------------------------------------------------------------
 *
 * A versioned binary file: magic, version, the model description, the
 * training configuration and progress, then the parameters, the batch-norm
 * running statistics and the optimiser state, then a CRC-32 of everything.
 * Saved through a temporary file and a rename. Loading checks everything
 * (magic, version, sizes, checksum, that the file's model is this model)
 * before touching memory: a truncated or corrupt file is RB_EFORMAT and
 * nothing changes. */
rb_status rb_checkpoint_save(rb_context *ctx, const char *path, const rb_trainer *tr);
/* The model description (and training configuration, may be NULL) stored in a checkpoint. */
rb_status rb_checkpoint_peek(rb_context *ctx, const char *path, rb_model_desc *desc, rb_trainer_config *cfg);
/* Restore the model's parameters and statistics, and the trainer's progress and optimiser
 * state (tr may be NULL: model only). */
rb_status rb_checkpoint_load(rb_context *ctx, const char *path, rb_model *model, rb_trainer *tr);

#ifdef __cplusplus
}
#endif
#endif
