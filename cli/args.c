/* args.c — option parsing for the subcommands (see args.h). */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void rb_args_init(rb_args *a, int argc, char **argv, const char *cmd)
{
    a->argc = argc, a->argv = argv, a->i = 1, a->cmd = cmd, a->failed = false;
}

const char *rb_args_next(rb_args *a) { return a->failed || a->i >= a->argc ? NULL : a->argv[a->i++]; }

const char *rb_args_value(rb_args *a, const char *opt)
{
    if (a->i >= a->argc) {
        fprintf(stderr, "%s: option %s needs a value\n", a->cmd, opt);
        a->failed = true;
        return NULL;
    }
    return a->argv[a->i++];
}

bool rb_args_long(rb_args *a, const char *opt, long lo, long hi, long *out)
{
    const char *v = rb_args_value(a, opt);
    if (v == NULL) return false;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "%s: %s %s: expected an integer in %ld..%ld\n", a->cmd, opt, v, lo, hi);
        a->failed = true;
        return false;
    }
    *out = x;
    return true;
}

bool rb_args_double(rb_args *a, const char *opt, double lo, double hi, double *out)
{
    const char *v = rb_args_value(a, opt);
    if (v == NULL) return false;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end != '\0' || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "%s: %s %s: expected a number in [%g, %g]\n", a->cmd, opt, v, lo, hi);
        a->failed = true;
        return false;
    }
    *out = x;
    return true;
}

bool rb_args_choice(rb_args *a, const char *opt, const char *const *choices, int *out)
{
    const char *v = rb_args_value(a, opt);
    if (v == NULL) return false;
    for (int i = 0; choices[i] != NULL; i++)
        if (strcmp(v, choices[i]) == 0) {
            *out = i;
            return true;
        }
    fprintf(stderr, "%s: %s %s: expected one of", a->cmd, opt, v);
    for (int i = 0; choices[i] != NULL; i++) fprintf(stderr, " %s", choices[i]);
    fprintf(stderr, "\n");
    a->failed = true;
    return false;
}

void rb_args_unknown(rb_args *a, const char *opt)
{
    fprintf(stderr, "%s: unknown option '%s' (try --help)\n", a->cmd, opt);
    a->failed = true;
}

double rb_cli_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Point coefficients of --coef (kind: 0 const, 1 jump, 2 smooth) on the full (n+2)^dim grid with its
 * boundary, malloc'ed; NULL for const (or out of memory). */
double *rb_cli_coefficients(int dim, size_t n, int kind)
{
    if (kind == 0) return NULL;
    size_t m = n + 2, my = dim >= 2 ? m : 1, mz = dim == 3 ? m : 1;
    double *a = malloc(m * my * mz * sizeof *a), h = 1.0 / (double)(n + 1), pi = acos(-1.0);
    if (a == NULL) return NULL;
    for (size_t z = 0; z < mz; z++)
        for (size_t y = 0; y < my; y++)
            for (size_t x = 0; x < m; x++) {
                double px = (double)x * h, py = (double)y * h, pz = (double)z * h;
                double v;
                if (kind == 1) {
                    bool hi = px > 0.5 && (dim < 2 || py > 0.5) && (dim < 3 || pz > 0.5);
                    v = hi ? 1e4 : 1.0;
                } else {
                    v = 1 + 0.5 * sin(2 * pi * px) * (dim >= 2 ? sin(2 * pi * py) : 1) * (dim == 3 ? sin(2 * pi * pz) : 1);
                }
                a[(z * my + y) * m + x] = v;
            }
    return a;
}
