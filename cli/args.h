/* args.h — the command line's small parsing helpers: every value checked, every
 * error naming the option. */
#ifndef RB_CLI_ARGS_H
#define RB_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>

/* Iterates over argv: rb_args_next returns the current option ("--n") and, for
 * options that take a value, rb_args_value fetches the next word. */
typedef struct rb_args {
    int argc, i;
    char **argv;
    const char *cmd;  /* for messages: "resbridge poisson" */
    bool failed;
} rb_args;

void rb_args_init(rb_args *a, int argc, char **argv, const char *cmd);
const char *rb_args_next(rb_args *a);
const char *rb_args_value(rb_args *a, const char *opt);
bool rb_args_long(rb_args *a, const char *opt, long lo, long hi, long *out);
bool rb_args_double(rb_args *a, const char *opt, double lo, double hi, double *out);
/* one of `choices` (NULL-terminated); *out is its index */
bool rb_args_choice(rb_args *a, const char *opt, const char *const *choices, int *out);
void rb_args_unknown(rb_args *a, const char *opt);

/* The coefficient fields of --coef const|jump|smooth (kind 0, 1, 2) on the full (n+2)^dim grid
 * with its boundary: jump a = 1e4 where x > 1/2 (and y, z > 1/2), 1 elsewhere; smooth
 * 1 + 0.5 prod sin(2 pi x_i). malloc'ed; NULL for const (or out of memory). */
double *rb_cli_coefficients(int dim, size_t n, int kind);

/* Seconds on the monotonic clock (for timings and progress). */
double rb_cli_now(void);

#endif
