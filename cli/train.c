/* train.c — `resbridge train` and `resbridge eval`: networks on Fashion-MNIST,
 * synthetic vector data or Poisson pairs (the U-Net that solves), with
 * checkpoints that resume a run exactly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"

static const char *const model_choices[] = {"resnet", "plain", "mlp", "mgnet", "unet", NULL};
static const char *const block_choices[] = {"v1", "v2", "highway", "dense", "plain", NULL};
static const char *const data_choices[] = {"fashion-mnist", "synthetic", "poisson", NULL};
enum { DATA_FMNIST, DATA_SYNTHETIC, DATA_POISSON };
#define POISSON_SEED 7 /* the data's draw (the same pairs for every --seed of the net) */
static const char *const opt_choices[] = {"sgd", "adam", NULL};
static const char *const sched_choices[] = {"constant", "step", "cosine", NULL};
static const char *const norm_choices[] = {"none", "batch", "batch-all", NULL}; /* rb_norm_kind's order */

/* Fashion-MNIST's training-set pixel mean and standard deviation (tests/test_data.c checks them). */
#define FMNIST_MEAN 0.2860
#define FMNIST_STD 0.3530

static void usage(FILE *f, int eval)
{
    if (eval) {
        fprintf(f, "usage: resbridge eval --checkpoint FILE [--data fashion-mnist|synthetic|poisson] [--data-dir DIR] [--batch B] [--test-limit N]\n"
                   "         [--threads T] [--json]\n\n"
                   "Evaluates a trained network (inference-mode batch norm) on the test split.\n");
        return;
    }
    fprintf(f,
            "usage: resbridge train [--model resnet|plain|mlp|mgnet|unet] [--depth D] [--width W] [--block v1|v2|highway|dense|plain]\n"
            "         [--data fashion-mnist|synthetic|poisson] [--n N] [--epochs E] [--batch B] [--optimizer sgd|adam] [--lr X]\n"
            "         [--schedule constant|step|cosine] [--momentum M] [--weight-decay L] [--h H] [--seed S]\n"
            "         [--threads T] [--limit N] [--test-limit N] [--data-dir DIR] [--checkpoint FILE] [--resume FILE] [--stop-after K]\n         [--export PREFIX] [--norm none|batch|batch-all] [--json]\n\n"
            "Trains a network with mini-batch SGD or Adam. Without options: the reference ResNet of the nets issue\n"
            "(3x3 conv to 16 + BN + ReLU, three basic blocks at 16, one stride-2 block to 32, pooling, linear 10;\n"
            "29,050 parameters) on Fashion-MNIST, SGD momentum 0.9, weight decay 5e-4, lr 0.1 cosine over 5 epochs,\n"
            "batch 128, 2 threads if the machine has them.\n"
            "  --depth     conv nets: 6n+2 (three stages of n blocks, widths W, 2W, 4W); 0 = the reference; mlp: blocks\n"
            "  --plain     = --model plain: the same layers without the skips (the plain twin)\n"
            "  --model mgnet  MgNet: the down-leg of the network-mode V-cycle (3x3 data-feature conv to W channels,\n"
            "              D smoothing steps u += relu(B * relu(f - A * u)) per level on 31, 15, 7, 3, projections,\n"
            "              pooling, linear 10); --width W (16), --depth D (0: 2); --norm batch: the smoothers of He & Xu's\n"
            "              code, u += relu(BN(B * relu(BN(f - A * u)))) (inference-mode BN when evaluating); --norm batch-all:\n"
            "              also the transfers, u' = relu(BN(Pi * u)), f' = relu(BN(R * (f - A * u))) + A' * u'\n"
            "  --model unet   the U-Net that solves -div(a grad u) = f (data: --data poisson, pairs (f, log a) -> u from\n"
            "              the multigrid solver on n x n grids, --n N (31)): lift 2 -> W channels, D network-mode V(1,1)\n"
            "              cycles (tanh) to 3 points, projection W -> 1; --width W (8), --depth D (0: 2). Defaults: Adam\n"
            "              lr 0.003 cosine, batch 16, 4 epochs, 256 training and 64 test pairs (--limit, --test-limit);\n"
            "              the report adds the test relative error |u_net - u| / |u| (and before this run's first\n"
            "              epoch) and the V-cycles the classical solver (RB-GS V(2,1) from u = 0) needs for the same error\n"
            "  --limit N   train on the first N training samples only; --test-limit N: test on the first N (quick runs)\n"
            "  --checkpoint FILE  save after every epoch (atomically);  --resume FILE  continue a saved run exactly\n"
            "  --stop-after K     stop after epoch K of the schedule (resume later with --resume)\n"
            "  --export PREFIX    write the trained weights as PREFIXparams.npy and PREFIXbn_stats.npy\n"
            "                     (model, data and schedule come from the checkpoint)\n"
            "Progress goes to stderr when it is a terminal. Exit status: 0 done, 1 diverged, 2 bad usage or error.\n");
}

typedef struct opts {
    rb_model_desc model;
    rb_trainer_config tc;
    int eval, data, json, threads, have_epochs, have_data, have_opt, have_lr, have_batch, have_wd, have_width;
    long n;
    long limit, test_limit, stop_after;
    const char *data_dir, *checkpoint, *resume, *export_prefix;
} opts;

static int parse(int argc, char **argv, opts *o, int eval)
{
    rb_args a;
    rb_args_init(&a, argc, argv, eval ? "resbridge eval" : "resbridge train");
    const char *opt;
    long v;
    int c;
    int kind = 0, have_model_opt = 0;
    o->model = rb_model_desc_default(RB_MODEL_RESNET);
    o->eval = eval;
    o->tc = rb_trainer_config_default();
    o->threads = sysconf(_SC_NPROCESSORS_ONLN) >= 2 ? 2 : 1;
    while ((opt = rb_args_next(&a)) != NULL) {
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout, eval);
            return 0;
        } else if (!strcmp(opt, "--data")) {
            if (rb_args_choice(&a, opt, data_choices, &o->data)) o->have_data = 1;
        } else if (!strcmp(opt, "--n")) {
            rb_args_long(&a, opt, 3, 1023, &o->n);
        } else if (!strcmp(opt, "--data-dir")) {
            o->data_dir = rb_args_value(&a, opt);
        } else if (!strcmp(opt, "--batch")) {
            if (rb_args_long(&a, opt, 1, 1 << 16, &v)) o->tc.batch = (size_t)v, o->have_batch = 1;
        } else if (!strcmp(opt, "--threads")) {
            if (rb_args_long(&a, opt, 1, 1024, &v)) o->threads = (int)v;
        } else if (!strcmp(opt, "--json")) {
            o->json = 1;
        } else if (!strcmp(opt, "--checkpoint")) {
            o->checkpoint = rb_args_value(&a, opt);
        } else if (!strcmp(opt, "--test-limit")) {
            rb_args_long(&a, opt, 1, 1L << 30, &o->test_limit);
        } else if (eval) {
            rb_args_unknown(&a, opt);
        } else if (!strcmp(opt, "--model")) {
            if (rb_args_choice(&a, opt, model_choices, &kind)) have_model_opt = 1;
        } else if (!strcmp(opt, "--plain")) {
            kind = RB_MODEL_PLAIN, have_model_opt = 1;
        } else if (!strcmp(opt, "--depth")) {
            if (rb_args_long(&a, opt, 0, 1000, &v)) o->model.depth = (size_t)v, have_model_opt = 1;
        } else if (!strcmp(opt, "--width")) {
            if (rb_args_long(&a, opt, 1, 4096, &v)) o->model.width = (size_t)v, have_model_opt = 1, o->have_width = 1;
        } else if (!strcmp(opt, "--norm")) {
            if (rb_args_choice(&a, opt, norm_choices, &c)) o->model.norm = (rb_norm_kind)c, have_model_opt = 1;
        } else if (!strcmp(opt, "--block")) {
            if (rb_args_choice(&a, opt, block_choices, &c)) o->model.block = (rb_block_kind)c, have_model_opt = 1;
        } else if (!strcmp(opt, "--h")) {
            rb_args_double(&a, opt, -1e3, 1e3, &o->model.h);
        } else if (!strcmp(opt, "--epochs")) {
            if (rb_args_long(&a, opt, 1, 100000, &v)) o->tc.epochs = (size_t)v, o->have_epochs = 1;
        } else if (!strcmp(opt, "--optimizer")) {
            if (rb_args_choice(&a, opt, opt_choices, &c)) {
                o->have_opt = 1;
                double lr = o->tc.lr, wd = o->tc.opt.weight_decay;
                o->tc.opt = rb_optimizer_config_default((rb_optimizer_kind)c);
                o->tc.opt.weight_decay = wd;
                if (c == RB_OPT_ADAM && lr == 0.1) o->tc.lr = 1e-3; /* Adam's usual default */
            }
        } else if (!strcmp(opt, "--lr")) {
            if (rb_args_double(&a, opt, 1e-12, 1e3, &o->tc.lr)) o->have_lr = 1;
        } else if (!strcmp(opt, "--schedule")) {
            if (rb_args_choice(&a, opt, sched_choices, &c)) o->tc.schedule = (rb_lr_kind)c;
        } else if (!strcmp(opt, "--momentum")) {
            rb_args_double(&a, opt, 0, 0.999999, &o->tc.opt.momentum);
        } else if (!strcmp(opt, "--weight-decay")) {
            if (rb_args_double(&a, opt, 0, 1, &o->tc.opt.weight_decay)) o->have_wd = 1;
        } else if (!strcmp(opt, "--seed")) {
            if (rb_args_long(&a, opt, 0, 1L << 40, &v)) o->tc.seed = o->model.seed = (unsigned long)v;
        } else if (!strcmp(opt, "--stop-after")) {
            rb_args_long(&a, opt, 1, 100000, &o->stop_after);
        } else if (!strcmp(opt, "--limit")) {
            rb_args_long(&a, opt, 1, 1L << 30, &o->limit);
        } else if (!strcmp(opt, "--export")) {
            o->export_prefix = rb_args_value(&a, opt);
        } else if (!strcmp(opt, "--resume")) {
            o->resume = rb_args_value(&a, opt);
        } else {
            rb_args_unknown(&a, opt);
        }
    }
    if (a.failed) return 2;
    if (eval && o->checkpoint == NULL) {
        fprintf(stderr, "resbridge eval: --checkpoint FILE is required\n");
        return 2;
    }
    if (o->resume && have_model_opt) {
        fprintf(stderr, "resbridge train: --resume takes the model from the checkpoint; drop --model/--depth/--width/--block/--norm\n");
        return 2;
    }
    if (o->model.norm != RB_NORM_NONE && kind != RB_MODEL_MGNET) {
        fprintf(stderr, "resbridge train: --norm %s normalises MgNet's cycle: use --model mgnet\n", norm_choices[o->model.norm]);
        return 2;
    }
    o->model.kind = (rb_model_kind)kind;
    if (kind == RB_MODEL_MLP) {
        rb_model_desc m = rb_model_desc_default(RB_MODEL_MLP);
        m.block = o->model.block == RB_BLOCK_V1 ? RB_BLOCK_V2 : o->model.block;
        if (o->model.depth) m.depth = o->model.depth;
        if (o->model.width != 16) m.width = o->model.width;
        m.h = o->model.h, m.seed = o->model.seed;
        o->model = m;
    }
    if (kind == RB_MODEL_UNET) { /* the grid-to-grid net on Poisson pairs, the example's schedule */
        rb_model_desc m = rb_model_desc_default(RB_MODEL_UNET);
        if (o->model.depth) m.depth = o->model.depth;
        if (o->have_width) m.width = o->model.width;
        if (o->n) m.in_h = m.in_w = (size_t)o->n, m.outputs = m.in_h * m.in_w;
        m.seed = o->model.seed;
        o->model = m;
        if (!o->have_data) o->data = DATA_POISSON;
        if (!o->have_opt) o->tc.opt = rb_optimizer_config_default(RB_OPT_ADAM);
        if (!o->have_opt && !o->have_wd) o->tc.opt.weight_decay = 0;
        if (!o->have_lr) o->tc.lr = 3e-3;
        if (!o->have_batch) o->tc.batch = 16;
        if (!o->have_epochs) o->tc.epochs = 4;
    }
    if (o->n && kind != RB_MODEL_UNET && !o->resume) {
        fprintf(stderr, "resbridge train: --n sets the U-Net's grid: use --model unet\n");
        return 2;
    }
    if (o->data == DATA_SYNTHETIC && o->model.kind != RB_MODEL_MLP && !o->resume) {
        fprintf(stderr, "resbridge train: --data synthetic is vector data: use --model mlp\n");
        return 2;
    }
    if (!o->resume && !eval && (o->data == DATA_POISSON) != (o->model.kind == RB_MODEL_UNET)) {
        fprintf(stderr, "resbridge train: --data poisson and --model unet go together (grid-to-grid regression)\n");
        return 2;
    }
    return -1;
}

typedef struct data_pair {
    rb_dataset train, test;
} data_pair;

static rb_status load_data(rb_context *ctx, const opts *o, const rb_model_desc *d, data_pair *p)
{
    rb_status st;
    if (d->kind == RB_MODEL_UNET) { /* the model decides (also when resumed or evaluated from a checkpoint) */
        size_t ntrain = o->limit > 0 ? (size_t)o->limit : 256, ntest = o->test_limit > 0 ? (size_t)o->test_limit : 64;
        st = o->eval ? RB_OK : rb_dataset_poisson(ctx, d->in_h, ntrain, POISSON_SEED, RB_SPLIT_TRAIN, &p->train);
        if (st == RB_OK) st = rb_dataset_poisson(ctx, d->in_h, ntest, POISSON_SEED, RB_SPLIT_TEST, &p->test);
        return st;
    }
    if (o->data == DATA_FMNIST) {
        st = rb_dataset_fashion_mnist(ctx, o->data_dir, RB_SPLIT_TRAIN, &p->train);
        if (st == RB_OK) st = rb_dataset_fashion_mnist(ctx, o->data_dir, RB_SPLIT_TEST, &p->test);
        if (st == RB_OK) st = rb_dataset_standardize(ctx, &p->train, FMNIST_MEAN, FMNIST_STD);
        if (st == RB_OK) st = rb_dataset_standardize(ctx, &p->test, FMNIST_MEAN, FMNIST_STD);
    } else {
        size_t din = d->in_channels * d->in_h * d->in_w;
        st = rb_dataset_synthetic(ctx, 4096, din, d->outputs, 0.01, 7, RB_SPLIT_TRAIN, &p->train);
        if (st == RB_OK) st = rb_dataset_synthetic(ctx, 1024, din, d->outputs, 0.01, 7, RB_SPLIT_TEST, &p->test);
    }
    if (st == RB_OK && o->limit > 0 && (size_t)o->limit < p->train.count) p->train.count = (size_t)o->limit;
    if (st == RB_OK && o->test_limit > 0 && (size_t)o->test_limit < p->test.count) p->test.count = (size_t)o->test_limit;
    return st;
}

typedef struct progress_state {
    size_t epoch, epochs;
    double t0;
} progress_state;

static void progress(void *user, size_t batch, size_t batches, double loss, double acc)
{
    progress_state *p = user;
    if (batch % 10 != 0 && batch != batches) return;
    double el = rb_cli_now() - p->t0;
    fprintf(stderr, "\repoch %zu/%zu  batch %zu/%zu  loss %.4f  acc %.2f%%  %.0f s, ETA %.0f s   ", p->epoch, p->epochs, batch,
            batches, loss, 100 * acc, el, el / (double)batch * (double)(batches - batch));
    if (batch == batches) fputc('\n', stderr);
}

static void print_list(const double *v, size_t n, int pct)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ",%.6g" : "%.6g", pct && isnan(v[i]) ? 0 : v[i]);
    putchar(']');
}

/* The U-Net's score on the Poisson test pairs, and the classical solver's for the same error. */
typedef struct solve_report {
    double err_mean, err_max, net_seconds;
    rb_poisson_baseline_report mg;
} solve_report;

/* The net's relative error |y_net - y| / |y| on each test pair (err, test->count values; may be
 * NULL), their mean and max; with baseline, the classical solver's cycles to the same errors. */
static rb_status solve_score(rb_context *ctx, rb_model *m, const rb_dataset *test, int baseline, solve_report *r)
{
    const size_t g = test->target_len;
    double *pred = malloc(test->count * g * sizeof(double)), *err = malloc(test->count * sizeof(double));
    rb_status st = pred == NULL || err == NULL ? RB_ENOMEM : RB_OK;
    double t0 = rb_cli_now();
    if (st == RB_OK) st = rb_model_predict(ctx, m, test, RB_MODEL_UNET_BATCH, pred);
    r->net_seconds = rb_cli_now() - t0;
    r->err_mean = r->err_max = 0;
    for (size_t s = 0; st == RB_OK && s < test->count; s++) {
        double d = 0, y = 0;
        for (size_t i = 0; i < g; i++) {
            const double t = test->y[s * g + i];
            d += (pred[s * g + i] - t) * (pred[s * g + i] - t), y += t * t;
        }
        err[s] = sqrt(d / y);
        r->err_mean += err[s] / (double)test->count, r->err_max = fmax(r->err_max, err[s]);
    }
    if (st == RB_OK && baseline) st = rb_poisson_baseline(ctx, test, POISSON_SEED, RB_SPLIT_TEST, err, 100, &r->mg);
    free(pred), free(err);
    return st;
}

static int fail(rb_context *ctx, rb_status st)
{
    fprintf(stderr, "resbridge: %s: %s\n", rb_strerror(st), rb_context_message(ctx));
    return st == RB_EDIVERGED ? 1 : 2;
}

int rb_cli_train(int argc, char **argv)
{
    opts o = {0};
    int rc = parse(argc, argv, &o, 0);
    if (rc >= 0) return rc;
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    rb_context_set_threads(ctx, o.threads);
    rb_status st = RB_OK;
    if (o.resume) {
        size_t epochs = o.tc.epochs;
        st = rb_checkpoint_peek(ctx, o.resume, &o.model, &o.tc);
        if (st == RB_OK && o.have_epochs && epochs != o.tc.epochs)
            st = rb_fail(ctx, RB_EINVAL, "--epochs %zu differs from the resumed run's %zu (its schedule depends on it)", epochs,
                         o.tc.epochs);
    }
    data_pair d = {0};
    rb_model *m = NULL;
    rb_trainer tr = {0};
    if (o.model.kind == RB_MODEL_UNET) o.data = DATA_POISSON;
    if (st == RB_OK) st = load_data(ctx, &o, &o.model, &d); /* first: it names a bad --n */
    if (st == RB_OK) st = rb_model_create(ctx, &o.model, &m);
    if (st == RB_OK) st = rb_trainer_init(ctx, &tr, m, &o.tc, &d.train);
    if (st == RB_OK && o.resume) st = rb_checkpoint_load(ctx, o.resume, m, &tr);
    if (st != RB_OK) {
        rc = fail(ctx, st);
        goto done;
    }
    size_t E = o.tc.epochs, last = o.stop_after > 0 && (size_t)o.stop_after < E ? (size_t)o.stop_after : E;
    double *tl = calloc(E, sizeof(double)), *ta = calloc(E, sizeof(double)), *secs = calloc(E, sizeof(double));
    size_t first = tr.epoch;
    solve_report before = {0}; /* the U-Net's test error at the start of this run */
    if (o.model.kind == RB_MODEL_UNET) st = solve_score(ctx, m, &d.test, 0, &before);
    progress_state ps = {0, E, 0.0};
    int tty = isatty(2);
    for (size_t e = first; e < last && st == RB_OK; e++) {
        rb_epoch_stats s;
        ps.epoch = e + 1;
        ps.t0 = rb_cli_now();
        st = rb_trainer_epoch(ctx, &tr, &d.train, tty ? progress : NULL, &ps, &s);
        double tloss = 0, tacc = 0;
        if (st == RB_OK) st = rb_model_evaluate(ctx, m, &d.test, 256, &tloss, &tacc);
        if (st == RB_OK && o.checkpoint) st = rb_checkpoint_save(ctx, o.checkpoint, &tr);
        if (st != RB_OK) break;
        tl[e] = s.loss, ta[e] = d.test.labels ? tacc : tloss, secs[e] = s.seconds;
        if (!o.json)
        {
            if (d.test.labels)
                printf("epoch %zu/%zu  train loss %.5f  train acc %.2f%%  test acc %.2f%%  %.1f s\n", e + 1, E, s.loss,
                       100 * s.accuracy, 100 * tacc, s.seconds);
            else
                printf("epoch %zu/%zu  train loss %.5f  test loss %.5f  %.1f s\n", e + 1, E, s.loss, tloss, s.seconds);
        }
    }
    if (st == RB_OK && o.export_prefix) st = rb_model_export_npy(ctx, m, o.export_prefix);
    solve_report sr = {0};
    const int unet = o.model.kind == RB_MODEL_UNET;
    if (st == RB_OK && unet) st = solve_score(ctx, m, &d.test, 1, &sr);
    if (st == RB_OK && unet && !o.json)
        printf("test pairs (%zu, n = %zu): U-Net relative error |u_net - u|/|u| mean %.3e (%.3e at the start), max %.3e\n"
               "  (%.3f ms per pair);\n"
               "  RB-GS V(2,1) from u = 0 reaches each pair's error in %.2f cycles (mean, max %d; one cycle: %.3e),\n"
               "  %.3f ms per cycle, + set-up %.3f ms per coefficient field\n", d.test.count, o.model.in_h, sr.err_mean, before.err_mean,
               sr.err_max, 1e3 * sr.net_seconds / (double)d.test.count, sr.mg.cycles_mean, sr.mg.cycles_max, sr.mg.err_one_cycle,
               1e3 * sr.mg.cycle_seconds / (double)(sr.mg.cycles_total ? sr.mg.cycles_total : 1),
               1e3 * sr.mg.setup_seconds / (double)d.test.count);
    if (st != RB_OK) {
        rc = fail(ctx, st);
        if (o.checkpoint) fprintf(stderr, "resbridge: the last checkpoint (%s) is intact\n", o.checkpoint);
    } else if (o.json) {
        /* blocks belong to the ResNet, its plain twin and the MLP; MgNet and the U-Net have none */
        const bool blocks = o.model.kind != RB_MODEL_MGNET && o.model.kind != RB_MODEL_UNET;
        printf("{\"model\":\"%s\",\"block\":%s%s%s,\"depth\":%zu,\"width\":%zu,\"norm\":\"%s\",\"params\":%zu,\"data\":\"%s\",\"epochs\":%zu,"
               "\"batch\":%zu,\"optimizer\":\"%s\",\"lr\":%g,\"seed\":%lu,\"threads\":%d,\"first_epoch\":%zu,\"train_loss\":",
               rb_model_kind_name(o.model.kind), blocks ? "\"" : "", blocks ? rb_block_kind_name(o.model.block) : "null",
               blocks ? "\"" : "", o.model.depth, o.model.width, rb_norm_kind_name(o.model.norm),
               m->net->nparams, data_choices[o.data], E, o.tc.batch, rb_optimizer_name(o.tc.opt.kind), o.tc.lr, o.tc.seed,
               o.threads, first + 1);
        print_list(tl + first, last > first ? last - first : 0, 0);
        printf(d.test.labels ? ",\"test_accuracy\":" : ",\"test_accuracy\":null,\"test_loss\":");
        print_list(ta + first, last > first ? last - first : 0, 0);
        printf(",\"seconds_per_epoch\":");
        print_list(secs + first, last > first ? last - first : 0, 0);
        if (unet)
            printf(",\"n\":%zu,\"test_pairs\":%zu,\"test_rel_err_start\":%.4e,\"test_rel_err_mean\":%.4e,\"test_rel_err_max\":%.4e,\"net_ms_per_pair\":%.4f,"
                   "\"mg_cycles_to_match_mean\":%.2f,\"mg_cycles_to_match_max\":%d,\"mg_err_one_cycle\":%.4e,"
                   "\"mg_ms_per_cycle\":%.4f,\"mg_setup_ms\":%.4f",
                   o.model.in_h, d.test.count, before.err_mean, sr.err_mean, sr.err_max, 1e3 * sr.net_seconds / (double)d.test.count,
                   sr.mg.cycles_mean, sr.mg.cycles_max, sr.mg.err_one_cycle,
                   1e3 * sr.mg.cycle_seconds / (double)(sr.mg.cycles_total ? sr.mg.cycles_total : 1),
                   1e3 * sr.mg.setup_seconds / (double)d.test.count);
        printf("}\n");
        rc = 0;
    } else {
        rc = 0;
    }
    free(tl), free(ta), free(secs);
done:
    rb_trainer_release(ctx, &tr);
    rb_model_free(ctx, m);
    rb_dataset_release(ctx, &d.train);
    rb_dataset_release(ctx, &d.test);
    rb_context_free(ctx);
    return rc;
}

int rb_cli_eval(int argc, char **argv)
{
    opts o = {0};
    int rc = parse(argc, argv, &o, 1);
    if (rc >= 0) return rc;
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 2;
    rb_context_set_threads(ctx, o.threads);
    data_pair d = {0};
    rb_model *m = NULL;
    double loss = 0, acc = 0;
    rb_status st = rb_checkpoint_peek(ctx, o.checkpoint, &o.model, NULL);
    if (o.model.kind == RB_MODEL_UNET) o.data = DATA_POISSON;
    if (st == RB_OK) st = rb_model_create(ctx, &o.model, &m);
    if (st == RB_OK) st = rb_checkpoint_load(ctx, o.checkpoint, m, NULL);
    if (st == RB_OK) st = load_data(ctx, &o, &o.model, &d);
    if (st == RB_OK) st = rb_model_evaluate(ctx, m, &d.test, o.tc.batch, &loss, &acc);
    solve_report sr = {0};
    const int unet = o.model.kind == RB_MODEL_UNET;
    if (st == RB_OK && unet) st = solve_score(ctx, m, &d.test, 0, &sr);
    if (st != RB_OK) {
        rc = fail(ctx, st);
    } else if (o.json) {
        printf("{\"model\":\"%s\",\"params\":%zu,\"data\":\"%s\",\"test_loss\":%.9g,\"test_accuracy\":", rb_model_kind_name(o.model.kind),
               m->net->nparams, data_choices[o.data], loss);
        if (d.test.labels) printf("%.6g}\n", acc);
        else if (unet) printf("null,\"test_rel_err_mean\":%.4e,\"test_rel_err_max\":%.4e}\n", sr.err_mean, sr.err_max);
        else printf("null}\n");
        rc = 0;
    } else {
        printf("%s (%zu parameters) on the %s test set: loss %.5f", rb_model_kind_name(o.model.kind), m->net->nparams,
               data_choices[o.data], loss);
        if (d.test.labels) printf(", accuracy %.2f%%", 100 * acc);
        if (unet) printf(", relative error |u_net - u|/|u| mean %.3e, max %.3e", sr.err_mean, sr.err_max);
        printf("\n");
        rc = 0;
    }
    rb_model_free(ctx, m);
    rb_dataset_release(ctx, &d.train);
    rb_dataset_release(ctx, &d.test);
    rb_context_free(ctx);
    return rc;
}
