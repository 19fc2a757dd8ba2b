/* data.h — data sets for training: Fashion-MNIST from its IDX files (gzip,
 * read with zlib), synthetic regression data generated in C, Poisson pairs
 * (f, a) -> u solved by the multigrid solver, and seeded, resumable mini-batch
 * shuffles.
 *
 *     rb_dataset train;
 *     rb_dataset_fashion_mnist(ctx, NULL, RB_SPLIT_TRAIN, &train);   // 60000 x (1,28,28)
 *     rb_batcher b; rb_batcher_init(ctx, &b, &train, 128, 42);
 *     for (size_t e = 0; e < epochs; e++) {
 *         rb_batcher_epoch(ctx, &b, e);                    // the shuffle depends on (seed, e) only
 *         while (rb_batcher_next(ctx, &b, &x, labels, NULL, &count) == RB_OK && count > 0) ...
 *     }
 *     rb_batcher_release(ctx, &b); rb_dataset_release(ctx, &train);
 *
 *     rb_dataset_poisson(ctx, 31, 256, 7, RB_SPLIT_TRAIN, &train);  // (f, log a) -> u pairs, n = 31
 *
 * Because an epoch's order depends only on the seed and the epoch number, a run
 * resumed from a checkpoint at an epoch boundary sees the same batches as an
 * uninterrupted one.
 */
#ifndef RESBRIDGE_DATA_H
#define RESBRIDGE_DATA_H

#include <stdint.h>
#include "resbridge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where Debian's dataset-fashion-mnist package puts the files. */
#define RB_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

typedef enum rb_split { RB_SPLIT_TRAIN, RB_SPLIT_TEST } rb_split;

typedef struct rb_dataset {
    size_t count;     /* samples */
    rb_shape sample;  /* shape of one sample, n = 1: (1,C,1,H,W) images or (1,1,1,1,d) vectors */
    double *x;        /* count * rb_shape_count(sample) values, sample after sample */
    size_t classes;   /* classification: number of classes, labels[i] in [0, classes); else 0 */
    int32_t *labels;  /* classification labels, or NULL */
    size_t target_len;/* regression: values per target; else 0 */
    double *y;        /* regression targets (count * target_len), or NULL */
} rb_dataset;

/* Load a split of Fashion-MNIST from `dir` (NULL: RB_FASHION_MNIST_DIR): the
 * IDX files train-images-idx3-ubyte.gz / train-labels-idx1-ubyte.gz (or
 * t10k-...). Pixels become doubles in [0, 1] (value / 255); samples have shape
 * (1,1,1,28,28) and 10 classes. A missing file is RB_ENOTFOUND with a message
 * naming the Debian package; a truncated, corrupt or inconsistent file is
 * RB_EFORMAT naming the file and what is wrong. On error *ds is untouched. */
rb_status rb_dataset_fashion_mnist(rb_context *ctx, const char *dir, rb_split split, rb_dataset *ds);

/* Synthetic regression data: x uniform in [-1, 1]^d_in, y = A tanh(B x) + noise
 * with A (d_out x d_in) and B (d_in x d_in) drawn once from `seed` (entries
 * uniform in [-1, 1], B scaled by 1/sqrt(d_in)) and noise Gaussian with
 * standard deviation `noise` >= 0. Two calls with the same arguments give the
 * same data; the `split` selects an independent draw of x (and noise) from the
 * same teacher, so TRAIN and TEST are the same problem. The noise has its own
 * generator: the same seed and split give the same x at every noise level. */
rb_status rb_dataset_synthetic(rb_context *ctx, size_t count, size_t d_in, size_t d_out, double noise,
                               unsigned long seed, rb_split split, rb_dataset *ds);

/* Poisson pairs for a grid-to-grid net (a U-Net that solves): -div(a grad u) = f on the unit
 * square, zero Dirichlet values, n x n interior points of the vertex grid (n = m 2^k - 1,
 * m in 1, 3, 5, 7, 3 <= n <= 1023), each pair drawn independently:
 *
 *   a = exp(sum_{k,l=0..1} c_kl cos(k pi x) cos(l pi y)), c_kl ~ U(-1/2, 1/2)  (smooth, 0.14 <= a <= 7.4)
 *   f = sum_{k,l=1..3} d_kl sin(k pi x) sin(l pi y),      d_kl ~ U(-1, 1)
 *   u = rb_mg_solve (RB-GS V(2,1), the Galerkin hierarchy of a) to a relative residual 1e-10.
 *
 * Samples have shape (1,2,1,n,n): channel 0 is f / RB_POISSON_SF, channel 1 is log a; the
 * regression target (target_len = n^2) is u / RB_POISSON_SU. The scales are fixed numbers,
 * not statistics of a draw, so that TRAIN and TEST (independent draws of the same
 * distribution: the split selects the generator's stream) are scaled alike:
 *   RB_POISSON_SF = sqrt(3/4), the expected RMS of f (E d^2 = 1/3, mean sin^2 = 1/2);
 *   RB_POISSON_SU = sqrt(sum_{k,l=1..3} ((k^2 + l^2) pi^2)^-2 / 12), the same for u when a = 1.
 * The relative error |u_net - u| / |u| is the same in scaled and unscaled units. Two calls
 * with the same (n, seed, split) give the same pairs; the first pairs do not depend on count. */
#define RB_POISSON_SF 0.8660254037844386
#define RB_POISSON_SU 0.01804317924346407
rb_status rb_dataset_poisson(rb_context *ctx, size_t n, size_t count, unsigned long seed, rb_split split, rb_dataset *ds);

/* Pair `index` of that draw without the solve: the coefficient's point values a on the
 * (n+2)^2 grid with its boundary (coef, what rb_mg_problem takes) and f (n^2, unscaled);
 * either may be NULL. */
rb_status rb_poisson_pair(rb_context *ctx, size_t n, unsigned long seed, rb_split split, size_t index, double *coef, double *f);

/* The classical side of a learned solver's score on such a draw: for every pair s of ds (the
 * draw rb_dataset_poisson made with n, seed, split: refused when its f differs), the multigrid
 * solver's RB-GS V(2,1) cycles from u = 0 until |u_k - u| <= target[s] |u| (target: e.g. the
 * net's relative error on pair s), at most max_cycles each. Times: set-up per coefficient field
 * and cycling (with one error norm per cycle) apart. */
typedef struct rb_poisson_baseline_report {
    double cycles_mean;       /* cycles to the target, mean over the pairs */
    int cycles_max;
    size_t cycles_total;
    double err_one_cycle;     /* relative error after one cycle, mean over the pairs */
    double setup_seconds;     /* rb_mg_create, all pairs */
    double cycle_seconds;     /* the cycles, all pairs */
} rb_poisson_baseline_report;
rb_status rb_poisson_baseline(rb_context *ctx, const rb_dataset *ds, unsigned long seed, rb_split split, const double *target,
                              int max_cycles, rb_poisson_baseline_report *rep);

/* Standardise every value in place: x = (x - mean) / std (std > 0, finite). */
rb_status rb_dataset_standardize(rb_context *ctx, rb_dataset *ds, double mean, double std);

void rb_dataset_release(rb_context *ctx, rb_dataset *ds);

/* ---- mini-batches -------------------------------------------------------------------------- */

typedef struct rb_batcher {
    const rb_dataset *ds;
    size_t batch;         /* samples per batch (the last batch of an epoch may be smaller) */
    unsigned long seed;
    size_t *order;        /* the epoch's permutation of 0..count-1 */
    size_t pos;           /* next position in order */
    int shuffle;          /* 0: data order (evaluation), 1: seeded shuffle per epoch */
} rb_batcher;

/* batch >= 1. Epochs are shuffled (seeded) unless rb_batcher_set_shuffle(b, 0)
 * asks for data order (evaluation). The batcher references ds; keep it alive. */
rb_status rb_batcher_init(rb_context *ctx, rb_batcher *b, const rb_dataset *ds, size_t batch, unsigned long seed);
void rb_batcher_set_shuffle(rb_batcher *b, int shuffle);
/* Start epoch `epoch`: the order is a function of (seed, epoch) only. */
rb_status rb_batcher_epoch(rb_context *ctx, rb_batcher *b, size_t epoch);
/* Copy the next batch: x gets shape (count, sample...) (x->data must hold
 * batch * sample values; its shape is set), labels (classification, may be
 * NULL) and y (regression, batch * target_len, may be NULL). *count = 0 at the
 * end of the epoch. */
rb_status rb_batcher_next(rb_context *ctx, rb_batcher *b, rb_tensor *x, int32_t *labels, double *y, size_t *count);
void rb_batcher_release(rb_context *ctx, rb_batcher *b);

#ifdef __cplusplus
}
#endif
#endif
