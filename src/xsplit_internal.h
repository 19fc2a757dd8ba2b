/* xsplit_internal.h — one row of the split layout (xsplit.h), for the drivers that move grids
 * in and out of it in their own passes (multigrid.c copies and checks f and u in one). */
#ifndef RB_XSPLIT_INTERNAL_H
#define RB_XSPLIT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* out = the row in[0 .. W) split (to_split) or back; in and out do not overlap. */
void rb_xsplit_row(const double *in, double *out, size_t W, bool to_split);

#endif
