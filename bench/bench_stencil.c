/* bench_stencil.c — the memory-bound grid kernels against a STREAM triad run in
 * the same process, with the same thread count.
 *
 *   triad      a[i] = b[i] + s c[i]                     24 bytes per element
 *   stencil    y = A x, 5-point Laplacian (rb_op_apply)   24 bytes per grid point
 *   jacobi     one damped-Jacobi sweep x <- x + omega D^-1 (b - A x) through
 *              rb_residual_step, in place and out of place 24 bytes per grid point
 *
 * (24 bytes per point for every kernel, as the issue defines effective bandwidth;
 * a kernel's traffic is not what is being counted.) The triad and the kernels run
 * in interleaved rounds and each keeps its best of --reps rounds, so a noisy
 * moment on a shared machine does not favour one of them. Prints one JSON object
 * per row, then a Markdown table: the ratio of each kernel's best bandwidth to
 * the triad's best, and the median over rounds of the ratio within a round (less
 * sensitive to one lucky or unlucky moment).
 *
 * OpenBLAS (linked by resbridge, unused here) starts its thread pool when the
 * program loads, and those threads spin for a while on the cores this benchmark
 * measures; unless OPENBLAS_NUM_THREADS is set, the program sets it to 1 and
 * restarts itself.
 *
 *     bench_stencil --threads 1,2 --sizes 1023,2047 --reps 30
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchkit.h"
#include "resbridge/resbridge.h"

#define MAX_LIST 8
#define MAX_ROWS 128
#define MAX_REPS 1000

typedef struct row {
    const char *kernel;
    size_t n;
    int threads;
    double seconds, gbps, triad_gbps;
    double median_ratio; /* median over rounds of (triad time / kernel time) in the same round */
} row;

static int parse_list(const char *s, long *out, int max)
{
    int k = 0;
    char *end;
    while (*s && k < max) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1) return -1;
        out[k++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return k;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void first_touch(double *p, size_t len, double v, int threads)
{
    const long long m = (long long)len;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long long i = 0; i < m; i++) p[i] = v + 1e-3 * (double)(i % 1000);
}

typedef enum kernel { K_STENCIL, K_JACOBI_IN, K_JACOBI_OUT, K_JACOBI_GENERIC_IN, K_COUNT } kernel;
static const char *const kernel_names[K_COUNT] = {"stencil y=Ax", "jacobi in place", "jacobi out of place",
                                                  "jacobi generic in place"};

static int fail(rb_context *ctx, rb_status st, const char *what)
{
    fprintf(stderr, "bench_stencil: %s: %s (%s)\n", what, rb_status_name(st), rb_context_message(ctx));
    return 1;
}

/* Time of one call of one kernel (seconds), or a negative value on failure. */
static double kernel_seconds(rb_context *ctx, kernel k, const rb_op *A, const rb_op *J, rb_tensor *x, rb_tensor *y,
                             rb_arena *work)
{
    const double omega = 0.8;
    rb_status st = RB_OK;
    double t0 = bench_now();
    switch (k) {
    case K_STENCIL: st = rb_op_apply(ctx, A, x, y, work); break;
    case K_JACOBI_IN: st = rb_residual_step(ctx, J, omega, x, x, work); break;
    case K_JACOBI_OUT: st = rb_residual_step(ctx, J, omega, x, y, work); break;
    case K_JACOBI_GENERIC_IN: st = rb_residual_step_generic(ctx, J, omega, x, x, work); break;
    default: break;
    }
    double t = bench_now() - t0;
    if (st != RB_OK) {
        fail(ctx, st, kernel_names[k]);
        return -1.0;
    }
    return t;
}

/* The 1-minute load average (Linux), or -1: on a shared 2-core machine, a load
 * above ~0.2 before the run means someone else's work shares the cores measured. */
static double load_average(void)
{
    double l = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1) l = -1.0;
        fclose(f);
    }
    return l;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_stencil [--threads 1,2] [--sizes 1023,2047] [--reps 30]\n"
               "  Effective bandwidth (24 bytes per point) of y = A x and of one damped-Jacobi sweep,\n"
               "  and its ratio to a STREAM triad (24 bytes per element) run in the same process.\n");
}

int main(int argc, char **argv)
{
    if (getenv("OPENBLAS_NUM_THREADS") == NULL && setenv("OPENBLAS_NUM_THREADS", "1", 1) == 0) {
        execv("/proc/self/exe", argv);
        /* not restarted: measure anyway */
    }
    long threads_l[MAX_LIST] = {1, 2}, sizes[MAX_LIST] = {1023, 2047}, reps = 30;
    int nthreads = 2, nsizes = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (strcmp(argv[i], "--threads") == 0) {
            nthreads = parse_list(argv[++i], threads_l, MAX_LIST);
        } else if (strcmp(argv[i], "--sizes") == 0) {
            nsizes = parse_list(argv[++i], sizes, MAX_LIST);
        } else if (strcmp(argv[i], "--reps") == 0) {
            long v[1] = {reps};
            if (parse_list(argv[++i], v, 1) != 1 || v[0] > MAX_REPS) nthreads = -1;
            reps = v[0];
        } else {
            nthreads = -1;
        }
        if (nthreads < 1 || nsizes < 1) {
            fprintf(stderr, "bench_stencil: bad argument near '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    const double load_before = load_average();
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return 1;
    row rows[MAX_ROWS];
    int nrows = 0, rc = 0;
    for (int si = 0; si < nsizes && rc == 0; si++) {
        const size_t n = (size_t)sizes[si], len = n * n;
        const rb_shape sh = rb_shape_2d(1, 1, n, n);
        rb_tensor x = {0}, y = {0}, b = {0};
        rb_op *A = NULL, *J = NULL;
        rb_arena work = {0};
        double *ta = NULL, *tb = NULL, *tc = NULL;
        rb_status st = rb_tensor_alloc(ctx, &x, sh);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &y, sh);
        if (st == RB_OK) st = rb_tensor_alloc(ctx, &b, sh);
        if (st == RB_OK) st = rb_op_laplacian_create(ctx, 2, 1.0 / (double)(n + 1), &A);
        if (st == RB_OK) st = rb_op_jacobi_create(ctx, A, &b, &J);
        if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_residual_workspace(J, sh));
        if (st == RB_OK) {
            ta = rb_malloc(ctx, len * sizeof(double));
            tb = rb_malloc(ctx, len * sizeof(double));
            tc = rb_malloc(ctx, len * sizeof(double));
            if (ta == NULL || tb == NULL || tc == NULL) st = RB_ENOMEM;
        }
        if (st != RB_OK) rc = fail(ctx, st, "set-up");
        for (int ti = 0; ti < nthreads && rc == 0; ti++) {
            const int T = (int)threads_l[ti];
            st = rb_context_set_threads(ctx, T);
            if (st != RB_OK) {
                rc = fail(ctx, st, "--threads");
                break;
            }
            first_touch(ta, len, 0.0, T), first_touch(tb, len, 1.0, T), first_touch(tc, len, 2.0, T);
            first_touch(x.data, len, 0.5, T), first_touch(y.data, len, 0.0, T), first_touch(b.data, len, 1.0, T);
            /* Rounds of triad and every kernel, interleaved, so that a noisy moment on a
             * shared machine hits all of them alike; each keeps its best time. Round 0 warms up. */
            double best[K_COUNT + 1];
            static double ratio[K_COUNT][MAX_REPS];
            for (int k = 0; k <= K_COUNT; k++) best[k] = 1e30;
            for (long round = 0; round <= reps && rc == 0; round++) {
                double t[K_COUNT + 1] = {0};
                t[K_COUNT] = bench_triad_seconds(ta, tb, tc, len, T);
                for (int k = 0; k < K_COUNT && rc == 0; k++) {
                    t[k] = kernel_seconds(ctx, (kernel)k, A, J, &x, &y, &work);
                    if (t[k] < 0) rc = 1;
                }
                for (int k = 0; k <= K_COUNT && round > 0; k++) {
                    if (t[k] < best[k]) best[k] = t[k];
                    if (k < K_COUNT) ratio[k][round - 1] = t[K_COUNT] / t[k];
                }
            }
            if (rc != 0) break;
            const double triad_gbps = 24.0 * (double)len / best[K_COUNT] * 1e-9;
            if (nrows < MAX_ROWS) rows[nrows++] = (row){"STREAM triad", n, T, best[K_COUNT], triad_gbps, triad_gbps, 1.0};
            for (int k = 0; k < K_COUNT; k++)
                if (nrows < MAX_ROWS)
                    rows[nrows++] = (row){kernel_names[k], n, T, best[k], 24.0 * (double)len / best[k] * 1e-9, triad_gbps,
                                          median(ratio[k], reps)};
        }
        rb_free(ctx, ta), rb_free(ctx, tb), rb_free(ctx, tc);
        rb_arena_release(ctx, &work);
        rb_op_free(ctx, J), rb_op_free(ctx, A);
        rb_tensor_release(ctx, &x), rb_tensor_release(ctx, &y), rb_tensor_release(ctx, &b);
    }
    rb_context_free(ctx);
    if (rc != 0) return rc;

    const double load_after = load_average();
    for (int i = 0; i < nrows; i++)
        printf("{\"bench\": \"stencil\", \"kernel\": \"%s\", \"n\": %zu, \"threads\": %d, \"seconds\": %.6e, "
               "\"gbps\": %.3f, \"triad_gbps\": %.3f, \"ratio_to_triad\": %.3f, \"median_round_ratio\": %.3f, "
               "\"reps\": %ld, "
               "\"loadavg_before\": %.2f, \"loadavg_after\": %.2f}\n",
               rows[i].kernel, rows[i].n, rows[i].threads, rows[i].seconds, rows[i].gbps, rows[i].triad_gbps,
               rows[i].gbps / rows[i].triad_gbps, rows[i].median_ratio, reps, load_before, load_after);
    printf("\n| kernel | n | threads | GB/s | ratio to triad | median ratio per round |\n"
           "|---|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < nrows; i++)
        printf("| %s | %zu^2 | %d | %.1f | %.2f | %.2f |\n", rows[i].kernel, rows[i].n, rows[i].threads, rows[i].gbps,
               rows[i].gbps / rows[i].triad_gbps, rows[i].median_ratio);
    printf("\n1-minute load average before / after the run: %.2f / %.2f\n", load_before, load_after);
    return 0;
}
