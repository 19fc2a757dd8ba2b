/* xsplit_internal.h — one row of the split layout (xsplit.h), for the drivers that move grids
 * in and out of it in their own passes (multigrid.c copies and checks f and u in one). */
#ifndef RB_XSPLIT_INTERNAL_H
#define RB_XSPLIT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* Where point x of a row is stored: odd = (W + 1) / 2 for a split row (even x at x / 2, odd x at
 * odd + x / 2), odd = 0 for a plain row (at x). The one place the layout's formula is written. */
static inline size_t rb_xsplit_at(size_t x, size_t odd) { return odd == 0 ? x : (x & 1) ? odd + x / 2 : x / 2; }

/* out = the row in[0 .. W) split (to_split) or back; in and out do not overlap. */
void rb_xsplit_row(const double *in, double *out, size_t W, bool to_split);

#endif
