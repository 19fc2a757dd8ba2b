/* io_internal.h — writing files safely, shared by NPY files, checkpoints and
 * network weights: the content goes to a temporary file next to the destination,
 * is flushed and fsync'ed, and is renamed over the destination (then the directory
 * is synced), so a reader sees the old file or the new one, never a torn one.
 * Also the pieces of the checksummed binary formats (checkpoint.c, vnet.c):
 * little-endian integers, doubles as their bits, CRC-32, whole-file reads. */
#ifndef RB_IO_INTERNAL_H
#define RB_IO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
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

/* Little-endian integers and doubles (as their IEEE bits) in byte buffers. */
static inline uint64_t rb_io_dbits(double v) { uint64_t u; memcpy(&u, &v, 8); return u; }
static inline double rb_io_bitsd(uint64_t u) { double v; memcpy(&v, &u, 8); return v; }
static inline void rb_io_put_u32(unsigned char *b, uint32_t v) { for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i)); }
static inline uint32_t rb_io_get_u32(const unsigned char *b)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)b[i] << (8 * i);
    return v;
}
static inline void rb_io_put_u64(unsigned char *b, uint64_t v) { for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i)); }
static inline uint64_t rb_io_get_u64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* CRC-32 (zlib's) of len bytes. */
uint32_t rb_io_crc32(const void *data, size_t len);

/* The whole of `path` in a new buffer (*data, rb_free it; *size bytes). RB_ENOTFOUND when it
 * does not exist, RB_EIO when it cannot be read, messages naming fn and the path. */
rb_status rb_io_read_file(rb_context *ctx, const char *fn, const char *path, unsigned char **data, size_t *size);

#endif
