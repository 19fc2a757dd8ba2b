/* npy.h — NumPy .npy files (format 1.0/2.0/3.0, little-endian float64, C order)
 * for moving tensors to and from Python.
 *
 *     rb_npy_write(ctx, "u.npy", &u);      // atomic: temp file, then rename
 *     rb_tensor v; rb_npy_read(ctx, "u.npy", &v);   // allocates v
 *     // python: np.load("u.npy") has shape (N, C, D, H, W)
 *
 * Writing stores the full 5-D shape. Reading accepts 0..5 dimensions, aligned
 * to the right of (N, C, D, H, W) (a (H, W) array becomes (1,1,1,H,W)). Other
 * dtypes, Fortran order, bad headers and truncated files are refused with a
 * message, and the output is untouched.
 */
#ifndef RESBRIDGE_NPY_H
#define RESBRIDGE_NPY_H

#include "resbridge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

rb_status rb_npy_write(rb_context *ctx, const char *path, const rb_tensor *t);
rb_status rb_npy_read(rb_context *ctx, const char *path, rb_tensor *out);

#ifdef __cplusplus
}
#endif
#endif
