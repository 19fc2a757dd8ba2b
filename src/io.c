/* io.c — atomic file writes, whole-file reads, CRC-32 (see io_internal.h). */
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Thread-safe strerror (XSI strerror_r, which _POSIX_C_SOURCE=200809L selects). */
const char *rb_io_strerror(int err, char *buf, size_t len)
{
    if (strerror_r(err, buf, len) != 0) snprintf(buf, len, "error %d", err);
    return buf;
}

rb_status rb_io_fail(rb_context *ctx, const char *fn, const char *what, const char *path, int err)
{
    char eb[128];
    return rb_fail(ctx, RB_EIO, "%s: %s '%s': %s", fn, what, path, rb_io_strerror(err, eb, sizeof eb));
}

int rb_io_write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (k == 0) return EIO;
        p += (size_t)k;
        len -= (size_t)k;
    }
    return 0;
}

rb_status rb_io_write_atomic(rb_context *ctx, const char *fn, const char *path, int (*emit)(int fd, void *user),
                             void *user)
{
    static const char suffix[] = ".tmp.XXXXXX";
    size_t plen = strlen(path);
    char *tmp = rb_malloc(ctx, plen + sizeof suffix);
    if (tmp == NULL) return rb_fail(ctx, RB_ENOMEM, "%s: '%s': out of memory for the temporary name", fn, path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);

    int fd = mkstemp(tmp);
    if (fd < 0) {
        int err = errno;
        rb_status st = rb_io_fail(ctx, fn, "cannot create a temporary file next to", path, err);
        rb_free(ctx, tmp);
        return st;
    }
    /* mkstemp creates mode 0600; keep the mode of a file we replace, else 0644. */
    struct stat old;
    mode_t mode = (stat(path, &old) == 0 && S_ISREG(old.st_mode)) ? (old.st_mode & 0777) : 0644;
    const char *what = "cannot write";
    int err = 0;
    if (fchmod(fd, mode) != 0) err = errno, what = "cannot set the mode of the temporary file for";
    if (err == 0) err = emit(fd, user);
    if (err == 0 && fsync(fd) != 0) err = errno, what = "cannot sync";
    if (close(fd) != 0 && err == 0) err = errno, what = "cannot close";
    if (err == 0 && rename(tmp, path) != 0) err = errno, what = "cannot rename the temporary file onto";
    if (err != 0) {
        unlink(tmp);
        rb_free(ctx, tmp);
        return rb_io_fail(ctx, fn, what, path, err);
    }
    rb_free(ctx, tmp);

    /* Make the rename durable: sync the directory (best effort; not every file system allows it). */
    char *dir = rb_malloc(ctx, plen + 2);
    if (dir != NULL) {
        memcpy(dir, path, plen + 1);
        char *slash = strrchr(dir, '/');
        if (slash == NULL) strcpy(dir, ".");
        else if (slash == dir) dir[1] = '\0';
        else *slash = '\0';
        int dfd = open(dir, O_RDONLY);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        rb_free(ctx, dir);
    } else {
        rb_context_clear_error(ctx); /* the file is written; the directory sync is only a courtesy */
    }
    return RB_OK;
}

uint32_t rb_io_crc32(const void *data, size_t len)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *p = data;
    while (len > 0) { /* zlib takes uInt lengths */
        uInt k = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, p, k);
        p += k, len -= k;
    }
    return (uint32_t)crc;
}

rb_status rb_io_read_file(rb_context *ctx, const char *fn, const char *path, unsigned char **data, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        char eb[128];
        int err = errno;
        return rb_fail(ctx, err == ENOENT ? RB_ENOTFOUND : RB_EIO, "%s: cannot open '%s': %s", fn, path,
                       rb_io_strerror(err, eb, sizeof eb));
    }
    rb_status st = RB_OK;
    long len = -1;
    if (fseek(fp, 0, SEEK_END) == 0) len = ftell(fp);
    if (len < 0 || fseek(fp, 0, SEEK_SET) != 0) st = rb_io_fail(ctx, fn, "cannot read", path, errno);
    unsigned char *buf = NULL;
    if (st == RB_OK && (buf = rb_malloc(ctx, len > 0 ? (size_t)len : 1)) == NULL)
        st = rb_fail(ctx, RB_ENOMEM, "%s: '%s': no memory for %ld bytes", fn, path, len);
    if (st == RB_OK && fread(buf, 1, (size_t)len, fp) != (size_t)len) st = rb_io_fail(ctx, fn, "cannot read", path, EIO);
    fclose(fp);
    if (st != RB_OK) {
        rb_free(ctx, buf);
        return st;
    }
    *data = buf, *size = (size_t)len;
    return RB_OK;
}
