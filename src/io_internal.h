/* io_internal.h — writing files safely, shared by NPY files and checkpoints:
 * the content goes to a temporary file next to the destination, is flushed
 * and fsync'ed, and is renamed over the destination (then the directory is
 * synced), so a reader sees the old file or the new one, never a torn one. */
#ifndef RB_IO_INTERNAL_H
#define RB_IO_INTERNAL_H

#include <stddef.h>
#include "resbridge/context.h"

/* Full write(2) loop. Returns 0 or an errno value. */
int rb_io_write_all(int fd, const void *buf, size_t len);

/* Write `path` atomically; emit(fd, user) writes the content (with rb_io_write_all) and
 * returns 0 or an errno value. Failures are RB_EIO naming fn, the step and the path. */
rb_status rb_io_write_atomic(rb_context *ctx, const char *fn, const char *path, int (*emit)(int fd, void *user),
                             void *user);

/* Thread-safe strerror into buf. */
const char *rb_io_strerror(int err, char *buf, size_t len);

/* "fn: what 'path': strerror(err)" as RB_EIO. */
rb_status rb_io_fail(rb_context *ctx, const char *fn, const char *what, const char *path, int err);

#endif
