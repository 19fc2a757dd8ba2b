/* benchkit.h — what the bench programs share: a monotonic clock, deterministic inputs, a STREAM
 * triad, and a TRY that reports a failed call with the context's message and returns 1. */
#ifndef RESBRIDGE_BENCHKIT_H
#define RESBRIDGE_BENCHKIT_H

#include <stdio.h>
#include <time.h>

#include "resbridge/resbridge.h"

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Deterministic values in [-scale, scale) (a 64-bit LCG: the same on every platform). */
static inline void bench_fill(double *p, size_t len, unsigned long long seed, double scale)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = scale * ((double)(seed >> 11) * 0x1.0p-52 - 1.0);
    }
}

/* Seconds of one STREAM triad a[i] = b[i] + 3 c[i] on `len` doubles per array, on `threads`
 * OpenMP threads (static partition: first-touch the arrays the same way). */
static inline double bench_triad_seconds(double *a, const double *b, const double *c, size_t len, int threads)
{
    const double s = 3.0;
    const long long m = (long long)len;
    double t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long long i = 0; i < m; i++) a[i] = b[i] + s * c[i];
    (void)threads;
    return bench_now() - t0;
}

/* In a function returning int, with `ctx` in scope: return 1 after printing "prog: call: message". */
#define BENCH_TRY(prog, call)                                                                      \
    do {                                                                                           \
        rb_status st_ = (call);                                                                    \
        if (st_ != RB_OK) {                                                                        \
            fprintf(stderr, "%s: %s: %s\n", prog, #call, rb_context_message(ctx));                 \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

#endif
