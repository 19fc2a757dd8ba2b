/* conv_gemm.c — multi-channel 2D convolutions through OpenBLAS GEMM, and direct
 * vector kernels where a GEMM would be too thin.
 *
 * The three products of a conv op, for 2D full-pattern kernels (3x3 or 1x1),
 * stride 1 or 2, both grid conventions, plain or transposed ("fine" and
 * "coarse" as in conv_internal.h), each as a gather on a copy of its input:
 *
 *   forward          coarse[n] = W * col(fine[n])  (+ bias)
 *   backward data    (beta 0 or 1)
 *                    stride 1: fine[n] = beta * fine[n] + alpha * Wflip * col(coarse[n])   (the
 *                      same gather, with the kernel mirrored and its channels swapped)
 *                    stride 2, or few fine channels: fine[n] = beta * fine[n] + col2im(alpha * W^T coarse[n])
 *   backward weight  dW += alpha * sum_n coarse[n] * col(fine[n])^T
 *
 * col() is one of four copies, chosen per shape (measured with bench/bench_conv.c
 * against the reference loops and against each other):
 *   NONE    1x1 stride 1: the input itself is the GEMM operand, nothing is copied.
 *   IM2COL  rows (ci, tap): each channel's taps as shifted (strided) copies, one
 *           GEMM with K = cin*taps. Stride 2.
 *   ROWS3   stride-1 3x3: only the three horizontally shifted copies of each
 *           channel, with a zero row above and below; the three vertical taps are
 *           three GEMMs (K = 3*cin) on views of it one row apart. A third of
 *           im2col's copying and no wasted columns: faster than im2col from 2
 *           input channels on (up to 1.6x on the measured shapes).
 *   PAD     stride-1 3x3 with one input channel or one output channel (weight
 *           gradient: up to 4 input channels), where a GEMM would be thin (K = 9):
 *           a zero-framed copy and AVX2 kernels. Each output vector loads its 9
 *           inputs once for all output channels (direct_gather_band), or sums many
 *           input channels into one output (direct_reduce_band); the weight
 *           gradient keeps 4 output channels x 3 taps in registers
 *           (direct_weight_band). 1.5-2x faster than GEMM on those shapes.
 * Work is cut into jobs (sample, band of output rows) so that a copy stays in
 * cache and one image can keep two threads busy. OpenMP threads take jobs and
 * call single-threaded OpenBLAS (OpenBLAS is switched to one thread while these
 * run — a process-wide setting — and restored afterwards). Forward and
 * backward-data results do not depend on the thread count or the order of jobs
 * (col2im adds even bands, then odd bands, so bands never race); the weight
 * gradient gives each thread a fixed range of jobs and adds the per-thread partial
 * sums in thread order: reproducible for a fixed thread count.
 *
 * Scratch memory comes only from the arena: reordered weights (shared), one copy
 * band per thread, one partial dW per thread (weight gradient). At most
 * RB_CONV_GEMM_MAX_THREADS threads are used (more in the context are capped);
 * rb_conv_gemm_workspace reports the bytes for that many. With a NULL or too
 * small arena every entry declines and the reference loop runs; so does a call
 * too small to gain (RB_CONV_GEMM_MIN_WORK).
 */
#include "blas_internal.h"
#include "conv_internal.h"
#include "op_internal.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

/* Threads the GEMM paths use at most (their per-thread scratch is sized for this many). */
#define RB_CONV_GEMM_MAX_THREADS 16
/* Doubles in one thread's copy band. */
#ifndef RB_CONV_GEMM_BAND
#define RB_CONV_GEMM_BAND (96u * 1024u)
#endif
/* ROWS3 instead of IM2COL (stride-1 3x3) from this many input channels on. */
#ifndef RB_CONV_GEMM_ROWS3_MIN
#define RB_CONV_GEMM_ROWS3_MIN 2
#endif
/* Below this many multiply-adds in a call the reference loop is as fast (the call takes a
 * microsecond or two, about what planning, scratch and the OpenBLAS thread switch cost);
 * above it the fast paths win for every channel count, 1 -> 1 included (measured). */
#ifndef RB_CONV_GEMM_MIN_WORK
#define RB_CONV_GEMM_MIN_WORK 1024
#endif
/* Stride-1 3x3: direct vector kernels on a zero-framed copy (PAD) for gathers (forward,
 * backward data) with at most this many input channels or this many output channels, and
 * for weight gradients with at most this many input channels. */
#ifndef RB_CONV_GEMM_DIRECT_MAX
#define RB_CONV_GEMM_DIRECT_MAX 1
#endif
#ifndef RB_CONV_GEMM_DIRECT_MAX_OUT
#define RB_CONV_GEMM_DIRECT_MAX_OUT 1
#endif
#ifndef RB_CONV_GEMM_DIRECT_WEIGHT_MAX
#define RB_CONV_GEMM_DIRECT_WEIGHT_MAX 4
#endif

/* Four doubles in a vector register (GCC/Clang vector extension: AVX2 with x86-64-v3). */
#if defined(__GNUC__)
#define RB_CONV_HAVE_DIRECT 1
#if !defined(__AVX__) && !defined(__clang__)
/* Without AVX, GCC notes that 32-byte vectors passed by value change the ABI (-Wpsabi); every
 * function here that takes one is static, so no ABI is crossed. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef double v4d __attribute__((vector_size(32)));
static inline v4d v4_load(const double *p)
{
    v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void v4_store(double *p, v4d v) { memcpy(p, &v, sizeof v); }
static inline v4d v4_set1(double a) { return (v4d){a, a, a, a}; }
static inline double v4_sum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }
/* a*b + c, fused where the target has FMA (ISO C mode does not contract a*b + c). */
#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
static inline v4d v4_fma(v4d a, v4d b, v4d c) { return _mm256_fmadd_pd(a, b, c); }
#else
static inline v4d v4_fma(v4d a, v4d b, v4d c) { return a * b + c; }
#endif
#else
#define RB_CONV_HAVE_DIRECT 0
#endif

typedef enum copy_kind { COPY_NONE, COPY_IM2COL, COPY_ROWS3, COPY_PAD } copy_kind;

/* Row length of a PAD copy: a zero, the w values, then zeros, a multiple of 4 with room for
 * the loads (at offsets +1, +2) of the last vector, or of the last 16 columns in
 * direct_reduce_band. */
static size_t pad_width(size_t w)
{
    size_t a = (w + 8) / 4 * 4, b = (w + 15) / 16 * 16 + 4;
    return a > b ? a : b;
}

/* One gather: out[o][y][x] = beta*out + alpha * sum_{i,t} A(o,i,t) in[i][s*y+off+dy_t][s*x+off+dx_t]
 * for each sample, in (ni, ih, iw) -> out (no, oh, ow). A is [o][i][t] for NONE, IM2COL
 * and PAD, [ty][o][i][tx] for ROWS3. */
typedef struct gather_plan {
    copy_kind copy;
    size_t ni, no;          /* channels of in and out */
    size_t ih, iw, oh, ow;  /* extents of in and out */
    int s, off, ntaps;
    const int (*tap)[3];
    size_t rows, bands;     /* output rows per band, bands per sample */
    size_t band;            /* doubles of one thread's copy buffer */
} gather_plan;

/* Bands of about RB_CONV_GEMM_BAND doubles (per_row doubles per output row), equal in size. */
static void split_rows(size_t oh, size_t per_row, size_t *rows, size_t *bands)
{
    size_t r = per_row == 0 ? oh : RB_CONV_GEMM_BAND / per_row;
    if (r < 1) r = 1;
    if (r > oh) r = oh;
    size_t b = (oh + r - 1) / r;
    *rows = (oh + b - 1) / b;
    *bands = (oh + *rows - 1) / *rows;
}

/* weight: the plan serves the weight gradient (whose PAD kernel wants few input channels). */
static gather_plan gather_plan_make(const rb_conv_state *cs, size_t ni, size_t no, size_t ih, size_t iw, size_t oh,
                                    size_t ow, int s, int off, bool weight)
{
    gather_plan p = {0};
    p.ni = ni, p.no = no, p.ih = ih, p.iw = iw, p.oh = oh, p.ow = ow;
    p.s = s, p.off = off, p.ntaps = cs->ntaps, p.tap = (const int (*)[3])cs->tap;
    if (cs->desc.ksize == 1 && s == 1)
        p.copy = COPY_NONE;
    else if (RB_CONV_HAVE_DIRECT && cs->desc.ksize == 3 && s == 1 &&
             (weight ? ni <= RB_CONV_GEMM_DIRECT_WEIGHT_MAX
                     : ni <= RB_CONV_GEMM_DIRECT_MAX || no <= RB_CONV_GEMM_DIRECT_MAX_OUT))
        p.copy = COPY_PAD;
    else if (cs->desc.ksize == 3 && s == 1 && ni >= RB_CONV_GEMM_ROWS3_MIN)
        p.copy = COPY_ROWS3;
    else
        p.copy = COPY_IM2COL;
    size_t per_row = p.copy == COPY_ROWS3 ? 3 * ni * iw
                     : p.copy == COPY_PAD ? ni * pad_width(iw)
                                          : ni * (size_t)p.ntaps * ow;
    split_rows(oh, per_row, &p.rows, &p.bands);
    p.band = p.copy == COPY_NONE    ? 0
             : p.copy == COPY_ROWS3 ? 3 * ni * (p.rows + 2) * iw
             : p.copy == COPY_PAD   ? ni * (p.rows + 2) * pad_width(iw) + 4 * no
                                    : ni * (size_t)p.ntaps * p.rows * ow;
    return p;
}

/* dst[x] = src[s*x + start] where 0 <= s*x + start < n, else 0, for x < len; src NULL: zeros. */
static void copy_row(double *dst, const double *src, size_t len, int s, long long start, size_t n)
{
    if (src == NULL) {
        memset(dst, 0, len * sizeof *dst);
        return;
    }
    size_t lo = start < 0 ? (size_t)((-start + s - 1) / s) : 0;
    long long lim = (long long)n - start;
    size_t hi = lim <= 0 ? 0 : (size_t)((lim + s - 1) / s);
    if (hi > len) hi = len;
    if (lo > hi) lo = hi;
    memset(dst, 0, lo * sizeof *dst);
    if (s == 1) {
        memcpy(dst + lo, src + (long long)lo + start, (hi - lo) * sizeof *dst);
    } else {
        for (size_t x = lo; x < hi; x++) dst[x] = src[(long long)((size_t)s * x) + start];
    }
    memset(dst + hi, 0, (len - hi) * sizeof *dst);
}

/* dst[s*x + start] += src[x] where 0 <= s*x + start < n, for x < len. */
static void add_row(double *restrict dst, const double *restrict src, size_t len, int s, long long start, size_t n)
{
    size_t lo = start < 0 ? (size_t)((-start + s - 1) / s) : 0;
    long long lim = (long long)n - start;
    size_t hi = lim <= 0 ? 0 : (size_t)((lim + s - 1) / s);
    if (hi > len) hi = len;
    if (s == 1) {
        double *d = dst + start;
        for (size_t x = lo; x < hi; x++) d[x] += src[x];
    } else {
        for (size_t x = lo; x < hi; x++) dst[(long long)((size_t)s * x) + start] += src[x];
    }
}

#if RB_CONV_HAVE_DIRECT
/* Rows [rr0, rr1) of the PAD copy [ni][rows+2][pad_width] of output rows [y0, y0+rows):
 * buf[i][rr][1 + x] = in[i][y0 - 1 + rr][x], zero elsewhere. (Rows are short: vector
 * stores in line, not memset/memcpy calls.) */
static void fill_pad_rows(const gather_plan *p, const double *in, size_t y0, size_t rows, size_t rr0, size_t rr1,
                          double *buf)
{
    const size_t W = p->iw, wp = pad_width(W), W4 = W / 4 * 4;
    for (size_t i = 0; i < p->ni; i++)
        for (size_t rr = rr0; rr < rr1; rr++) {
            double *dst = buf + (i * (rows + 2) + rr) * wp;
            long long fy = (long long)(y0 + rr) - 1;
            for (size_t x = 0; x < wp; x += 4) v4_store(dst + x, v4_set1(0.0));
            if (fy < 0 || fy >= (long long)p->ih) continue;
            const double *src = in + (i * p->ih + (size_t)fy) * W;
            for (size_t x = 0; x < W4; x += 4) v4_store(dst + 1 + x, v4_load(src + x));
            for (size_t x = W4; x < W; x++) dst[1 + x] = src[x];
        }
}
#endif

/* One channel's ROWS3 copy: dst row rr (of rows + 2) = input row y0 + rr - 1 shifted by dx
 * (dst[x] = row[x + dx]), zero outside the image. The valid rows are one contiguous block of
 * the channel: one shifted block copy, then the column the shift wrapped into is zeroed. */
static void fill_rows3(const double *chan, size_t ih, size_t iw, size_t y0, size_t rows, int dx, double *dst)
{
    const size_t f0 = y0 > 0 ? y0 - 1 : 0, f1 = y0 + rows + 1 < ih ? y0 + rows + 1 : ih; /* valid input rows */
    const size_t pre = (f0 + 1 - y0) * iw, n = f1 > f0 ? (f1 - f0) * iw : 0, total = (rows + 2) * iw;
    memset(dst, 0, pre * sizeof *dst);
    double *d = dst + pre;
    const double *src = chan + f0 * iw;
    if (n > 0) {
        if (dx == 0) {
            memcpy(d, src, n * sizeof *d);
        } else if (dx < 0) { /* d[k] = src[k - 1]; column 0 of every row is outside */
            memcpy(d + 1, src, (n - 1) * sizeof *d);
            for (size_t k = 0; k < n; k += iw) d[k] = 0.0;
        } else { /* d[k] = src[k + 1]; column iw - 1 of every row is outside */
            memcpy(d, src + 1, (n - 1) * sizeof *d);
            for (size_t k = iw - 1; k < n; k += iw) d[k] = 0.0;
        }
    }
    memset(d + n, 0, (total - pre - n) * sizeof *d);
}

/* The copy of output rows [y0, y0+rows) of one sample's input `in` into buf. */
static void fill_band(const gather_plan *p, const double *in, size_t y0, size_t rows, double *buf)
{
    if (p->copy == COPY_IM2COL) {
        size_t N = rows * p->ow;
        for (size_t i = 0; i < p->ni; i++) {
            const double *chan = in + i * p->ih * p->iw;
            for (int t = 0; t < p->ntaps; t++) {
                double *dst = buf + (i * (size_t)p->ntaps + (size_t)t) * N;
                for (size_t y = 0; y < rows; y++) {
                    long long fy = (long long)(p->s * (y0 + y)) + p->off + p->tap[t][1];
                    const double *src = fy >= 0 && fy < (long long)p->ih ? chan + (size_t)fy * p->iw : NULL;
                    copy_row(dst + y * p->ow, src, p->ow, p->s, p->off + p->tap[t][2], p->iw);
                }
            }
        }
    } else if (p->copy == COPY_ROWS3) {
        size_t ld = (rows + 2) * p->iw;
        for (size_t i = 0; i < p->ni; i++) {
            const double *chan = in + i * p->ih * p->iw;
            for (int dx = -1; dx <= 1; dx++) fill_rows3(chan, p->ih, p->iw, y0, rows, dx, buf + (i * 3 + (size_t)(dx + 1)) * ld);
        }
    } else if (p->copy == COPY_PAD) {
#if RB_CONV_HAVE_DIRECT
        fill_pad_rows(p, in, y0, rows, 0, rows + 2, buf);
#endif
    }
}

#if RB_CONV_HAVE_DIRECT
/* sum_t k[t] * in_t over one channel's 3x3 taps, in three independent chains. */
static inline v4d tap9(const double *k, v4d i0, v4d i1, v4d i2, v4d i3, v4d i4, v4d i5, v4d i6, v4d i7, v4d i8)
{
    v4d a = v4_fma(v4_set1(k[2]), i2, v4_fma(v4_set1(k[1]), i1, v4_set1(k[0]) * i0));
    v4d b = v4_fma(v4_set1(k[5]), i5, v4_fma(v4_set1(k[4]), i4, v4_set1(k[3]) * i3));
    v4d c = v4_fma(v4_set1(k[8]), i8, v4_fma(v4_set1(k[7]), i7, v4_set1(k[6]) * i6));
    return (a + b) + c;
}

/* PAD gather, stride-1 3x3: out rows [0, rows) (out at the band's first row of channel 0,
 * channels p->oh*p->ow apart) = beta*out + alpha * sum_{i,t} A[o][i][t] pad[i][r+ty][x+tx] (+ bias).
 * Each output vector loads its 9 inputs of a channel once and uses them for every output
 * channel. One input channel, full vector, plain forward: stored at once; otherwise the sums
 * wait in acc (4*no doubles) for the last channel and the epilogue. */
static void direct_gather_band(const gather_plan *p, const double *A, const double *bias, double alpha, double beta,
                               const double *pad, size_t rows, double *out, double *acc)
{
    const size_t W = p->ow, wp = pad_width(W), ni = p->ni, no = p->no, ldo = p->oh * p->ow, chan = (rows + 2) * wp;
    for (size_t r = 0; r < rows; r++)
        for (size_t x = 0; x < W; x += 4) {
            const size_t lanes = W - x < 4 ? W - x : 4;
            double *dst = out + r * W + x;
            if (ni == 1 && lanes == 4 && alpha == 1.0 && beta == 0.0) {
                const double *q0 = pad + r * wp + x, *q1 = q0 + wp, *q2 = q1 + wp;
                const v4d i0 = v4_load(q0), i1 = v4_load(q0 + 1), i2 = v4_load(q0 + 2);
                const v4d i3 = v4_load(q1), i4 = v4_load(q1 + 1), i5 = v4_load(q1 + 2);
                const v4d i6 = v4_load(q2), i7 = v4_load(q2 + 1), i8 = v4_load(q2 + 2);
                for (size_t o = 0; o < no; o++) {
                    v4d s = tap9(A + o * 9, i0, i1, i2, i3, i4, i5, i6, i7, i8);
                    v4_store(dst + o * ldo, bias != NULL ? s + v4_set1(bias[o]) : s);
                }
                continue;
            }
            for (size_t i = 0; i < ni; i++) {
                const double *q0 = pad + i * chan + r * wp + x, *q1 = q0 + wp, *q2 = q1 + wp;
                const v4d i0 = v4_load(q0), i1 = v4_load(q0 + 1), i2 = v4_load(q0 + 2);
                const v4d i3 = v4_load(q1), i4 = v4_load(q1 + 1), i5 = v4_load(q1 + 2);
                const v4d i6 = v4_load(q2), i7 = v4_load(q2 + 1), i8 = v4_load(q2 + 2);
                if (i == 0)
                    for (size_t o = 0; o < no; o++)
                        v4_store(acc + 4 * o, tap9(A + o * ni * 9, i0, i1, i2, i3, i4, i5, i6, i7, i8));
                else
                    for (size_t o = 0; o < no; o++)
                        v4_store(acc + 4 * o, v4_load(acc + 4 * o) +
                                                  tap9(A + (o * ni + i) * 9, i0, i1, i2, i3, i4, i5, i6, i7, i8));
            }
            for (size_t o = 0; o < no; o++) {
                double *d = dst + o * ldo, *s = acc + 4 * o;
                for (size_t l = 0; l < lanes; l++) {
                    double v = alpha * s[l] + (bias != NULL ? bias[o] : 0.0);
                    d[l] = beta == 0.0 ? v : beta * d[l] + v;
                }
            }
        }
}

/* PAD gather for few output channels (and many input channels): each output channel's
 * vectors, up to four side by side, sum over all input channels and taps, two chains each.
 * The PAD copy of `in` (band at row y0) is made row by row just before it is needed, so the
 * reads of `in` overlap the arithmetic. */
static void direct_reduce_band(const gather_plan *p, const double *A, const double *bias, double alpha, double beta,
                               const double *in, size_t y0, size_t rows, double *pad, double *out)
{
    const size_t W = p->ow, wp = pad_width(W), ni = p->ni, no = p->no, ldo = p->oh * p->ow, chan = (rows + 2) * wp;
    fill_pad_rows(p, in, y0, rows, 0, 2, pad);
    for (size_t r = 0; r < rows; r++) {
        fill_pad_rows(p, in, y0, rows, r + 2, r + 3, pad);
        for (size_t o = 0; o < no; o++)
            for (size_t x = 0; x < W; x += 16) {
                v4d a0 = v4_set1(0.0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (size_t i = 0; i < ni; i++) {
                    const double *k = A + (o * ni + i) * 9, *q = pad + i * chan + r * wp + x;
                    for (size_t ty = 0; ty < 3; ty++, k += 3, q += wp) {
                        const v4d w0 = v4_set1(k[0]), w1 = v4_set1(k[1]), w2 = v4_set1(k[2]);
                        a0 = v4_fma(w0, v4_load(q), a0), b0 = v4_fma(w1, v4_load(q + 1), b0);
                        a1 = v4_fma(w0, v4_load(q + 4), a1), b1 = v4_fma(w1, v4_load(q + 5), b1);
                        a2 = v4_fma(w0, v4_load(q + 8), a2), b2 = v4_fma(w1, v4_load(q + 9), b2);
                        a3 = v4_fma(w0, v4_load(q + 12), a3), b3 = v4_fma(w1, v4_load(q + 13), b3);
                        a0 = v4_fma(w2, v4_load(q + 2), a0), a1 = v4_fma(w2, v4_load(q + 6), a1);
                        a2 = v4_fma(w2, v4_load(q + 10), a2), a3 = v4_fma(w2, v4_load(q + 14), a3);
                    }
                }
                const v4d sum[4] = {a0 + b0, a1 + b1, a2 + b2, a3 + b3};
                for (size_t v = 0; v < 4 && x + 4 * v < W; v++) {
                    double s[4], *d = out + o * ldo + r * W + x + 4 * v;
                    v4_store(s, sum[v]);
                    size_t lanes = W - x - 4 * v < 4 ? W - x - 4 * v : 4;
                    for (size_t l = 0; l < lanes; l++) {
                        double val = alpha * s[l] + (bias != NULL ? bias[o] : 0.0);
                        d[l] = beta == 0.0 ? val : beta * d[l] + val;
                    }
                }
            }
    }
}

/* PAD weight gradient, stride-1 3x3: part[o][i][t] += sum_{r<rows, x} dy[o][r][x] pad[i][r+ty][x+tx]
 * (dy at the band's first row of channel 0). Four output channels times one tap row at a
 * time: 12 accumulators. */
static void direct_weight_band(const gather_plan *p, const double *pad, size_t rows, const double *dy, double *part)
{
    const size_t W = p->ow, W4 = W / 4 * 4, wp = pad_width(W), ni = p->ni, no = p->no, ldo = p->oh * p->ow;
    const size_t chan = (rows + 2) * wp;
    for (size_t i = 0; i < ni; i++)
        for (size_t o = 0; o < no; o += 4) {
            const size_t nb = no - o < 4 ? no - o : 4;
            const double *d[4];
            for (size_t k = 0; k < 4; k++) d[k] = dy + (o + (k < nb ? k : 0)) * ldo;
            for (size_t ty = 0; ty < 3; ty++) {
                v4d s[4][3];
                for (size_t k = 0; k < 4; k++) s[k][0] = s[k][1] = s[k][2] = v4_set1(0.0);
                for (size_t r = 0; r < rows; r++) {
                    const double *q = pad + i * chan + (r + ty) * wp;
                    const size_t dr = r * W;
                    for (size_t x = 0; x < W4; x += 4) {
                        const v4d a0 = v4_load(q + x), a1 = v4_load(q + x + 1), a2 = v4_load(q + x + 2);
                        for (size_t k = 0; k < 4; k++) {
                            const v4d g = v4_load(d[k] + dr + x);
                            s[k][0] = v4_fma(g, a0, s[k][0]);
                            s[k][1] = v4_fma(g, a1, s[k][1]);
                            s[k][2] = v4_fma(g, a2, s[k][2]);
                        }
                    }
                    if (W4 < W) { /* last columns: dy lanes past the row are zero */
                        const v4d a0 = v4_load(q + W4), a1 = v4_load(q + W4 + 1), a2 = v4_load(q + W4 + 2);
                        for (size_t k = 0; k < 4; k++) {
                            double t4[4] = {0.0, 0.0, 0.0, 0.0};
                            memcpy(t4, d[k] + dr + W4, (W - W4) * sizeof(double));
                            const v4d g = v4_load(t4);
                            s[k][0] = v4_fma(g, a0, s[k][0]);
                            s[k][1] = v4_fma(g, a1, s[k][1]);
                            s[k][2] = v4_fma(g, a2, s[k][2]);
                        }
                    }
                }
                for (size_t k = 0; k < nb; k++)
                    for (size_t tx = 0; tx < 3; tx++) part[((o + k) * ni + i) * 9 + ty * 3 + tx] += v4_sum(s[k][tx]);
            }
        }
}
#endif

/* One band of one sample: out rows [y0, y0+rows) = beta*out + alpha*A*col (+ bias, then beta must be 0). */
static void gather_band(const gather_plan *p, const double *A, const double *bias, const double *in, double alpha,
                        double beta, double *out, size_t y0, double *buf)
{
    size_t rows = p->rows < p->oh - y0 ? p->rows : p->oh - y0;
    int N = (int)(rows * p->ow), ldc = (int)(p->oh * p->ow);
    double *C = out + y0 * p->ow;
#if RB_CONV_HAVE_DIRECT
    if (p->copy == COPY_PAD) {
        if (p->ni <= RB_CONV_GEMM_DIRECT_MAX) {
            fill_band(p, in, y0, rows, buf);
            direct_gather_band(p, A, bias, alpha, beta, buf, rows, C, buf + p->band - 4 * p->no);
        } else {
            direct_reduce_band(p, A, bias, alpha, beta, in, y0, rows, buf, C);
        }
        return;
    }
#endif
    if (bias != NULL) {
        for (size_t o = 0; o < p->no; o++)
            for (int j = 0; j < N; j++) C[o * (size_t)ldc + (size_t)j] = bias[o];
        beta = 1.0;
    }
    int M = (int)p->no, K = (int)(p->ni * (size_t)p->ntaps);
    switch (p->copy) {
    case COPY_NONE:
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, A, K, in + y0 * p->iw,
                    (int)(p->ih * p->iw), beta, C, ldc);
        break;
    case COPY_IM2COL:
        fill_band(p, in, y0, rows, buf);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, A, K, buf, N, beta, C, ldc);
        break;
    case COPY_PAD: /* handled above */
        break;
    case COPY_ROWS3: {
        fill_band(p, in, y0, rows, buf);
        int K3 = (int)(3 * p->ni), ldb = (int)((rows + 2) * p->iw);
        for (size_t ty = 0; ty < 3; ty++)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K3, alpha, A + ty * p->no * 3 * p->ni, K3,
                        buf + ty * p->iw, ldb, ty == 0 ? beta : 1.0, C, ldc);
        break;
    }
    }
}

/* ---- scratch from the arena ------------------------------------------------------------- */

/* What one call needs: shared doubles (reordered weights) and per-thread doubles. */
typedef struct scratch_need {
    size_t shared, per_thread, jobs;
} scratch_need;

static size_t threads_for(size_t want, size_t jobs)
{
    size_t t = want < RB_CONV_GEMM_MAX_THREADS ? want : RB_CONV_GEMM_MAX_THREADS;
    if (t > jobs) t = jobs;
    return t < 1 ? 1 : t;
}

static size_t need_bytes(scratch_need nd, size_t threads)
{
    size_t b = nd.shared ? rb_arena_bytes(nd.shared * sizeof(double)) : 0;
    if (nd.per_thread) b += threads * rb_arena_bytes(nd.per_thread * sizeof(double));
    return b;
}

/* Take the scratch for `threads` threads from work, or return false (leaving work and
 * ctx untouched; a measuring arena counts the bytes and declines). */
static bool take_scratch(rb_context *ctx, rb_arena *work, scratch_need nd, size_t threads, double **shared,
                         double **per_thread, size_t *stride)
{
    if (work == NULL) return false;
    size_t bytes = need_bytes(nd, threads);
    if (work->measuring) {
        size_t m = rb_arena_mark(work);
        (void)rb_arena_alloc(ctx, work, bytes);
        rb_arena_reset(work, m);
        return false;
    }
    if (work->cap < work->used || work->cap - work->used < bytes) return false;
    *shared = nd.shared ? rb_arena_alloc(ctx, work, nd.shared * sizeof(double)) : NULL;
    *stride = rb_arena_bytes(nd.per_thread * sizeof(double)) / sizeof(double);
    *per_thread = nd.per_thread ? rb_arena_alloc(ctx, work, threads * *stride * sizeof(double)) : NULL;
    return true;
}

/* ---- which shapes, which algorithm -------------------------------------------------------- */

static bool fits_int(size_t v) { return v <= (size_t)INT_MAX / 4; }

static bool supported(const rb_conv_state *cs, const rb_conv_geom *g)
{
    if (cs == NULL || g == NULL) return false;
    const rb_conv_desc *d = &cs->desc;
    if (d->dims != 2 || d->pattern != RB_STENCIL_FULL || (d->ksize != 1 && d->ksize != 3)) return false;
    if (g->fd != 1 || g->cd != 1 || g->s[1] != g->s[2] || g->off[1] != g->off[2]) return false;
    if (g->n == 0 || g->cf == 0 || g->cc == 0) return false;
    if (g->n * g->cf * g->cc * (size_t)cs->ntaps * g->ch * g->cw < RB_CONV_GEMM_MIN_WORK) return false;
    if (!fits_int(g->fh * g->fw) || !fits_int(g->ch * g->cw) || !fits_int(g->cf * 9 * (g->fh + 2) * g->fw) ||
        !fits_int(g->cc * 9 * (g->ch + 2) * g->cw))
        return false;
    return true;
}

static gather_plan forward_plan(const rb_conv_state *cs, const rb_conv_geom *g)
{
    return gather_plan_make(cs, g->cf, g->cc, g->fh, g->fw, g->ch, g->cw, g->s[2], g->off[2], false);
}

/* The copy of the fine grid for the weight gradient. */
static gather_plan weight_plan(const rb_conv_state *cs, const rb_conv_geom *g)
{
    return gather_plan_make(cs, g->cf, g->cc, g->fh, g->fw, g->ch, g->cw, g->s[2], g->off[2], true);
}

static gather_plan flip_plan(const rb_conv_state *cs, const rb_conv_geom *g)
{
    return gather_plan_make(cs, g->cc, g->cf, g->ch, g->cw, g->fh, g->fw, 1, 0, false);
}

/* Backward data as the flipped forward gather (stride 1), or col2im. Copy costs per point:
 * the gather copies 1 (PAD), 3 (ROWS3) or 9 (IM2COL) values per coarse channel, col2im
 * writes and adds 9 per fine channel. */
static bool backward_is_flip(const rb_conv_state *cs, const rb_conv_geom *g)
{
    if (g->s[2] != 1) return false;
    if (cs->desc.ksize == 1) return true;
    copy_kind k = flip_plan(cs, g).copy;
    bool reduce = k == COPY_PAD && g->cc > RB_CONV_GEMM_DIRECT_MAX; /* direct_reduce_band: load-bound, count as 9 */
    size_t gather_copy = (k == COPY_PAD && !reduce ? 1 : k == COPY_ROWS3 ? 3 : 9) * g->cc;
    return gather_copy <= 18 * g->cf;
}

/* col2im bands of coarse rows: dcol = alpha W^T dy, rows (ci, tap), then added into fine. */
static void col2im_bands(const rb_conv_state *cs, const rb_conv_geom *g, size_t *rows, size_t *bands, size_t *band)
{
    size_t per_row = g->cf * (size_t)cs->ntaps * g->cw;
    split_rows(g->ch, per_row, rows, bands);
    *band = per_row * *rows + g->fw; /* dcol, and one fine row for col2im_add */
}

/* fine += the contributions of dcol (rows (ci, tap), coarse rows [y0, y0+r)). Stride 1 sums
 * the taps' shifted rows into tmp, one fine row at a time, and adds tmp once: shifting the
 * loads rather than the stores keeps a vector store from overlapping the next pass's loads. */
static void col2im_add(const rb_conv_state *cs, const rb_conv_geom *g, const double *dcol, size_t y0, size_t r,
                       double *fine, double *tmp)
{
    const size_t nt = (size_t)cs->ntaps, N = r * g->cw, fw = g->fw;
    const int s = g->s[2], off = g->off[2];
    for (size_t ci = 0; ci < g->cf; ci++) {
        double *chan = fine + ci * g->fh * fw;
        const double *rows_ci = dcol + ci * nt * N;
        if (s != 1) {
            for (size_t t = 0; t < nt; t++)
                for (size_t yy = 0; yy < r; yy++) {
                    long long fy = (long long)(s * (y0 + yy)) + off + cs->tap[t][1];
                    if (fy < 0 || fy >= (long long)g->fh) continue;
                    add_row(chan + (size_t)fy * fw, rows_ci + t * N + yy * g->cw, g->cw, s, off + cs->tap[t][2], fw);
                }
            continue;
        }
        size_t f0 = y0 > 0 ? y0 - 1 : 0, f1 = y0 + r + 1 < g->fh ? y0 + r + 1 : g->fh;
        for (size_t fy = f0; fy < f1; fy++) {
            bool any = false;
            for (size_t t = 0; t < nt; t++) {
                long long q = (long long)fy - cs->tap[t][1] - (long long)y0;
                if (q < 0 || q >= (long long)r) continue;
                const int tx = cs->tap[t][2];
                const double *src = rows_ci + t * N + (size_t)q * fw - tx; /* tmp[x] += row[x - tx] */
                const size_t lo = tx > 0 ? (size_t)tx : 0, hi = tx < 0 ? fw - (size_t)(-tx) : fw;
                if (!any) memset(tmp, 0, fw * sizeof *tmp);
                any = true;
                for (size_t x = lo; x < hi; x++) tmp[x] += src[x];
            }
            if (any) {
                double *d = chan + fy * fw;
                for (size_t x = 0; x < fw; x++) d[x] += tmp[x];
            }
        }
    }
}

static scratch_need forward_need(const rb_conv_state *cs, const rb_conv_geom *g)
{
    gather_plan p = forward_plan(cs, g);
    scratch_need nd = {0, p.band, g->n * p.bands};
    if (p.copy == COPY_ROWS3) nd.shared = g->cc * g->cf * (size_t)cs->ntaps;
    return nd;
}

static scratch_need backward_data_need(const rb_conv_state *cs, const rb_conv_geom *g)
{
    scratch_need nd = {0, 0, 0};
    if (backward_is_flip(cs, g)) {
        gather_plan p = flip_plan(cs, g);
        nd.shared = g->cc * g->cf * (size_t)cs->ntaps;
        nd.per_thread = p.band;
        nd.jobs = g->n * p.bands;
    } else {
        size_t rows, bands, band;
        col2im_bands(cs, g, &rows, &bands, &band);
        nd.per_thread = band;
        nd.jobs = g->n * ((bands + 1) / 2);
    }
    return nd;
}

static scratch_need backward_weight_need(const rb_conv_state *cs, const rb_conv_geom *g)
{
    gather_plan p = weight_plan(cs, g);
    scratch_need nd = {0, p.band + g->cc * g->cf * (size_t)cs->ntaps, g->n * p.bands};
    return nd;
}

size_t rb_conv_gemm_workspace(const rb_conv_state *cs, const rb_conv_geom *g)
{
    if (!supported(cs, g)) return 0;
    scratch_need nd[3] = {forward_need(cs, g), backward_data_need(cs, g), backward_weight_need(cs, g)};
    size_t most = 0;
    for (int k = 0; k < 3; k++) {
        size_t b = need_bytes(nd[k], threads_for(RB_CONV_GEMM_MAX_THREADS, nd[k].jobs));
        if (b > most) most = b;
    }
    return most;
}

/* Gather matrix A for a plan: G(o,i,t) = W[o][i][t] (flip: W[i][o][ntaps-1-t], the kernel
 * mirrored, channels swapped), laid out [o][i][t], or [ty][o][i][tx] for ROWS3. */
static void gather_weights(const gather_plan *p, bool flip, const double *w, double *A)
{
    size_t nt = (size_t)p->ntaps;
    for (size_t o = 0; o < p->no; o++)
        for (size_t i = 0; i < p->ni; i++)
            for (size_t t = 0; t < nt; t++) {
                double v = flip ? w[(i * p->no + o) * nt + (nt - 1 - t)] : w[(o * p->ni + i) * nt + t];
                size_t at = p->copy == COPY_ROWS3 ? (((t / 3) * p->no + o) * p->ni + i) * 3 + t % 3
                                                  : (o * p->ni + i) * nt + t;
                A[at] = v;
            }
}

/* Run a gather over all samples and bands on T threads (each job writes its own rows). */
static void gather_run(size_t T, const gather_plan *p, size_t nsamples, const double *A, const double *bias,
                       const double *in, double alpha, double beta, double *out, double *bufs, size_t stride)
{
    const size_t jobs = nsamples * p->bands, isz = p->ni * p->ih * p->iw, osz = p->no * p->oh * p->ow;
#pragma omp parallel num_threads((int)T) if (T > 1)
    {
        double *buf = bufs != NULL ? bufs + (size_t)omp_get_thread_num() * stride : NULL;
#pragma omp for schedule(dynamic, 1)
        for (size_t j = 0; j < jobs; j++) {
            size_t n = j / p->bands, b = j % p->bands;
            gather_band(p, A, bias, in + n * isz, alpha, beta, out + n * osz, b * p->rows, buf);
        }
    }
}

/* ---- the three entries ------------------------------------------------------------------ */

bool rb_conv_gemm_forward(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                          const double *bias, const double *x, double *y, rb_arena *work)
{
    if (!supported(cs, g) || w == NULL || x == NULL || y == NULL) return false;
    gather_plan p = forward_plan(cs, g);
    scratch_need nd = forward_need(cs, g);
    size_t T = threads_for((size_t)rb_context_threads(ctx), nd.jobs), stride = 0;
    double *shared = NULL, *bufs = NULL;
    size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    if (!take_scratch(ctx, work, nd, T, &shared, &bufs, &stride)) return false;
    const double *A = w;
    if (p.copy == COPY_ROWS3) {
        gather_weights(&p, false, w, shared);
        A = shared;
    }
    int saved = rb_blas_single_begin();
    gather_run(T, &p, g->n, A, bias, x, 1.0, 0.0, y, bufs, stride);
    rb_blas_single_end(saved);
    rb_arena_reset(work, mark);
    return true;
}

bool rb_conv_gemm_backward_data(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *w,
                                const double *dy, double alpha, double beta, double *dx, rb_arena *work)
{
    if (!supported(cs, g) || w == NULL || dy == NULL || dx == NULL) return false;
    scratch_need nd = backward_data_need(cs, g);
    size_t T = threads_for((size_t)rb_context_threads(ctx), nd.jobs), stride = 0;
    double *shared = NULL, *bufs = NULL;
    size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    if (!take_scratch(ctx, work, nd, T, &shared, &bufs, &stride)) return false;
    int saved = rb_blas_single_begin();
    if (backward_is_flip(cs, g)) {
        gather_plan p = flip_plan(cs, g);
        gather_weights(&p, true, w, shared);
        gather_run(T, &p, g->n, shared, NULL, dy, alpha, beta, dx, bufs, stride);
    } else {
        if (beta == 0.0) rb_zero(ctx, dx, g->n * g->cf * g->fh * g->fw); /* col2im adds into dx */
        size_t rows, bands, band;
        col2im_bands(cs, g, &rows, &bands, &band);
        const size_t nt = (size_t)cs->ntaps, fsz = g->cf * g->fh * g->fw, csz = g->cc * g->ch * g->cw;
        /* Bands two apart never touch the same fine row: even bands first, then odd ones. */
        for (size_t phase = 0; phase < 2; phase++) {
            const size_t per = (bands + 1 - phase) / 2, jobs = g->n * per;
            if (jobs == 0) continue;
#pragma omp parallel num_threads((int)T) if (T > 1)
            {
                double *dcol = bufs + (size_t)omp_get_thread_num() * stride;
#pragma omp for schedule(dynamic, 1)
                for (size_t j = 0; j < jobs; j++) {
                    size_t n = j / per, y0 = (2 * (j % per) + phase) * rows;
                    size_t r = rows < g->ch - y0 ? rows : g->ch - y0;
                    int N = (int)(r * g->cw);
                    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(g->cf * nt), N, (int)g->cc, alpha, w,
                                (int)(g->cf * nt), dy + n * csz + y0 * g->cw, (int)(g->ch * g->cw), 0.0, dcol, N);
                    col2im_add(cs, g, dcol, y0, r, dx + n * fsz, dcol + band - g->fw);
                }
            }
        }
    }
    rb_blas_single_end(saved);
    rb_arena_reset(work, mark);
    return true;
}

bool rb_conv_gemm_backward_weight(rb_context *ctx, const rb_conv_state *cs, const rb_conv_geom *g, const double *x,
                                  const double *dy, double alpha, double *dw, rb_arena *work)
{
    if (!supported(cs, g) || x == NULL || dy == NULL || dw == NULL) return false;
    gather_plan p = weight_plan(cs, g);
    scratch_need nd = backward_weight_need(cs, g);
    size_t T = threads_for((size_t)rb_context_threads(ctx), nd.jobs), stride = 0;
    double *shared = NULL, *bufs = NULL;
    size_t mark = work != NULL ? rb_arena_mark(work) : 0;
    if (!take_scratch(ctx, work, nd, T, &shared, &bufs, &stride)) return false;
    const size_t nw = g->cc * g->cf * (size_t)cs->ntaps, jobs = nd.jobs;
    const size_t fsz = g->cf * g->fh * g->fw, csz = g->cc * g->ch * g->cw;
    int saved = rb_blas_single_begin();
    /* Thread tid: partial[tid] = sum over its jobs of dy_band * col_band^T (layout of the plan's A). */
#pragma omp parallel for num_threads((int)T) schedule(static, 1) if (T > 1)
    for (size_t tid = 0; tid < T; tid++) {
        double *part = bufs + tid * stride, *buf = part + nw;
        memset(part, 0, nw * sizeof *part);
        for (size_t j = jobs * tid / T; j < jobs * (tid + 1) / T; j++) {
            size_t n = j / p.bands, y0 = (j % p.bands) * p.rows;
            size_t r = p.rows < p.oh - y0 ? p.rows : p.oh - y0;
            int K = (int)(r * p.ow), lda = (int)(p.oh * p.ow), M = (int)g->cc;
            const double *dyb = dy + n * csz + y0 * p.ow, *in = x + n * fsz;
            if (p.copy == COPY_NONE) {
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, (int)g->cf, K, 1.0, dyb, lda, in + y0 * p.iw,
                            (int)(p.ih * p.iw), 1.0, part, (int)g->cf);
            } else if (p.copy == COPY_PAD) {
#if RB_CONV_HAVE_DIRECT
                fill_band(&p, in, y0, r, buf);
                direct_weight_band(&p, buf, r, dyb, part);
#endif
            } else if (p.copy == COPY_IM2COL) {
                int Nw = (int)(g->cf * (size_t)cs->ntaps);
                fill_band(&p, in, y0, r, buf);
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Nw, K, 1.0, dyb, lda, buf, K, 1.0, part, Nw);
            } else { /* ROWS3, transposed: part[ty][(ci, tx)][co] (measured a little faster than [ty][co][(ci, tx)]) */
                int N3 = (int)(3 * g->cf), ldb = (int)((r + 2) * p.iw);
                fill_band(&p, in, y0, r, buf);
                for (size_t ty = 0; ty < 3; ty++)
                    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N3, M, K, 1.0, buf + ty * p.iw, ldb, dyb, lda,
                                1.0, part + ty * g->cc * 3 * g->cf, M);
            }
        }
    }
    rb_blas_single_end(saved);
    /* dw += alpha * (partial[0] + partial[1] + ...), in thread order. */
    const size_t nt = (size_t)cs->ntaps;
    for (size_t o = 0; o < g->cc; o++)
        for (size_t i = 0; i < g->cf; i++)
            for (size_t t = 0; t < nt; t++) {
                size_t at = p.copy == COPY_ROWS3 ? (((t / 3) * g->cf + i) * 3 + t % 3) * g->cc + o
                                                 : (o * g->cf + i) * nt + t;
                double acc = 0.0;
                for (size_t tid = 0; tid < T; tid++) acc += bufs[tid * stride + at];
                dw[(o * g->cf + i) * nt + t] += alpha * acc;
            }
    rb_arena_reset(work, mark);
    return true;
}
