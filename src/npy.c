/* npy.c — NumPy .npy files: little-endian float64, C order.
 *
 * Writing produces the bytes np.save would produce for the same (N,C,D,H,W)
 * float64 array (format 1.0, NumPy >= 1.23 header layout with its spare
 * growth space, data aligned to 64 bytes), through a temporary file that is
 * flushed, fsync'ed and renamed over the destination.
 *
 * Reading accepts format 1.0, 2.0 and 3.0 and parses the header dictionary
 * with a small, bounded parser of exactly the Python literals np.save writes
 * (strings, True/False, a tuple of non-negative integers); anything else is
 * refused. Sizes are checked against the file before anything is allocated,
 * so a hostile header cannot make us read past a buffer or allocate for data
 * that is not there.
 */
#include "resbridge/npy.h"
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64
#define NPY_GROWTH_AXIS_MAX_DIGITS 21 /* numpy.lib.format.GROWTH_AXIS_MAX_DIGITS */
#define NPY_MAX_HEADER (1u << 20)     /* 1 MiB: far beyond any real header */
#define NPY_MAX_DIMS 5

/* ---- small helpers ---------------------------------------------------------------------- */

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void swap8(double *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char b[8], r[8];
        memcpy(b, &v[i], 8);
        for (int k = 0; k < 8; k++) r[k] = b[7 - k];
        memcpy(&v[i], r, 8);
    }
}

/* The header np.save writes for a C-order float64 array of this shape:
 * magic, version 1.0, little-endian uint16 length, the dict, spare space for
 * growing the first axis, padding to 64 bytes, '\n'. Returns its length. */
static size_t make_header(rb_shape s, char *buf, size_t cap)
{
    char dict[256];
    char first[32];
    int fl = snprintf(first, sizeof first, "%zu", s.n);
    int dl = snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%zu, %zu, %zu, %zu, %zu), }",
                      s.n, s.c, s.d, s.h, s.w);
    size_t len = (size_t)dl;
    if (fl < NPY_GROWTH_AXIS_MAX_DIGITS)
        for (int i = 0; i < NPY_GROWTH_AXIS_MAX_DIGITS - fl; i++) dict[len++] = ' ';
    size_t hlen = len + 1; /* + '\n' */
    size_t pad = NPY_ALIGN - ((NPY_MAGIC_LEN + 2 + 2 + hlen) % NPY_ALIGN); /* 1..64, as NumPy */
    size_t total_hlen = hlen + pad;
    size_t total = NPY_MAGIC_LEN + 2 + 2 + total_hlen;
    if (total > cap) return 0;
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = 1, buf[7] = 0;
    buf[8] = (char)(total_hlen & 0xff), buf[9] = (char)((total_hlen >> 8) & 0xff);
    memcpy(buf + 10, dict, len);
    memset(buf + 10 + len, ' ', pad);
    buf[total - 1] = '\n';
    return total;
}

typedef struct npy_emit_args {
    const char *header;
    size_t hsize;
    const rb_tensor *t;
} npy_emit_args;

/* The header, then the data in little-endian order. */
static int npy_emit(int fd, void *user)
{
    const npy_emit_args *a = user;
    int err = rb_io_write_all(fd, a->header, a->hsize);
    size_t count = rb_tensor_count(a->t);
    if (err != 0) return err;
    if (host_is_little_endian()) return rb_io_write_all(fd, a->t->data, count * sizeof(double));
    double chunk[256];
    for (size_t i = 0; i < count && err == 0; i += 256) {
        size_t k = count - i < 256 ? count - i : 256;
        memcpy(chunk, a->t->data + i, k * sizeof(double));
        swap8(chunk, k);
        err = rb_io_write_all(fd, chunk, k * sizeof(double));
    }
    return err;
}

rb_status rb_npy_write(rb_context *ctx, const char *path, const rb_tensor *t)
{
    static const char fn[] = "rb_npy_write";
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL) return rb_fail(ctx, RB_ENULL, "%s: path is NULL", fn);
    if (path[0] == '\0') return rb_fail(ctx, RB_EINVAL, "%s: path is empty", fn);
    rb_status st = rb_tensor_check(ctx, t, "rb_npy_write: t");
    if (st != RB_OK) return st;

    char header[512];
    size_t hsize = make_header(t->shape, header, sizeof header);
    if (hsize == 0) return rb_fail(ctx, RB_EINVAL, "%s: '%s': header does not fit", fn, path);

    npy_emit_args args = {header, hsize, t};
    return rb_io_write_atomic(ctx, fn, path, npy_emit, &args);
}

/* ---- the header dictionary ------------------------------------------------------------------ */

typedef struct hparser {
    const char *p, *end;
    char err[160];
} hparser;

static void skip_ws(hparser *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

static int perr(hparser *h, const char *msg)
{
    if (h->err[0] == '\0') snprintf(h->err, sizeof h->err, "%s", msg);
    return -1;
}

/* A quoted string without escapes (as NumPy writes them), copied (truncated) into out. */
static int parse_string(hparser *h, char *out, size_t cap)
{
    skip_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return perr(h, "expected a quoted string");
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        unsigned char c = (unsigned char)*h->p;
        if (c == '\\' || c == '\n' || c < 0x20 || c >= 0x7f) return perr(h, "unsupported character in a string");
        if (n + 1 < cap) out[n++] = (char)c;
        else return perr(h, "string too long");
        h->p++;
    }
    if (h->p >= h->end) return perr(h, "unterminated string");
    h->p++;
    out[n] = '\0';
    return 0;
}

static int accept_char(hparser *h, char c)
{
    skip_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return 1;
    }
    return 0;
}

static int is_ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}

static int parse_bool(hparser *h, int *v)
{
    skip_ws(h);
    size_t left = (size_t)(h->end - h->p);
    if (left >= 4 && memcmp(h->p, "True", 4) == 0 && (left == 4 || !is_ident_char(h->p[4]))) {
        h->p += 4, *v = 1;
        return 0;
    }
    if (left >= 5 && memcmp(h->p, "False", 5) == 0 && (left == 5 || !is_ident_char(h->p[5]))) {
        h->p += 5, *v = 0;
        return 0;
    }
    return perr(h, "'fortran_order' is not True or False");
}

/* A tuple of non-negative integers: (), (a,), (a, b), (a, b,). */
static int parse_shape(hparser *h, size_t *dims, int *ndims)
{
    skip_ws(h);
    if (!accept_char(h, '(')) return perr(h, "'shape' is not a tuple");
    int n = 0;
    int trailing_comma = 0;
    for (;;) {
        skip_ws(h);
        if (accept_char(h, ')')) break;
        if (h->p >= h->end) return perr(h, "unterminated 'shape' tuple");
        char c = *h->p;
        if (c == '-') return perr(h, "'shape' has a negative dimension");
        if (c < '0' || c > '9') return perr(h, "'shape' has a dimension that is not a non-negative integer");
        uint64_t v = 0;
        int overflow = 0;
        while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
            unsigned dgt = (unsigned)(*h->p - '0');
            if (v > (UINT64_MAX - dgt) / 10) overflow = 1;
            else v = v * 10 + dgt;
            h->p++;
        }
        if (h->p < h->end && (is_ident_char(*h->p) || *h->p == 'e' || *h->p == 'E'))
            return perr(h, "'shape' has a dimension that is not a non-negative integer");
        if (overflow || v > SIZE_MAX) return perr(h, "'shape' has a dimension too large (size overflows)");
        if (n >= NPY_MAX_DIMS) return perr(h, "'shape' has more than 5 dimensions");
        dims[n++] = (size_t)v;
        trailing_comma = accept_char(h, ',');
        if (!trailing_comma) {
            if (!accept_char(h, ')')) return perr(h, "'shape' tuple is malformed (expected ',' or ')')");
            break;
        }
    }
    if (n == 1 && !trailing_comma) return perr(h, "'shape' is not a tuple (a 1-tuple needs a trailing comma)");
    *ndims = n;
    return 0;
}

typedef struct npy_header {
    char descr[32];
    int fortran;
    size_t dims[NPY_MAX_DIMS];
    int ndims;
} npy_header;

static int parse_dict(hparser *h, npy_header *out)
{
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    if (!accept_char(h, '{')) return perr(h, "header is not a dictionary (no '{')");
    for (;;) {
        if (accept_char(h, '}')) break;
        char key[32];
        skip_ws(h);
        if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return perr(h, "expected a quoted key or '}'");
        if (parse_string(h, key, sizeof key) != 0) return -1;
        if (!accept_char(h, ':')) return perr(h, "expected ':' after a key");
        int *seen;
        if (strcmp(key, "descr") == 0) {
            seen = &have_descr;
            if (*seen) return perr(h, "duplicate key 'descr'");
            skip_ws(h);
            if (h->p < h->end && (*h->p == '[' || *h->p == '('))
                return perr(h, "dtype is a structured (record) type, not '<f8'");
            if (parse_string(h, out->descr, sizeof out->descr) != 0) return -1;
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &have_fortran;
            if (*seen) return perr(h, "duplicate key 'fortran_order'");
            if (parse_bool(h, &out->fortran) != 0) return -1;
        } else if (strcmp(key, "shape") == 0) {
            seen = &have_shape;
            if (*seen) return perr(h, "duplicate key 'shape'");
            if (parse_shape(h, out->dims, &out->ndims) != 0) return -1;
        } else {
            snprintf(h->err, sizeof h->err, "unexpected key '%s'", key);
            return -1;
        }
        *seen = 1;
        if (!accept_char(h, ',')) {
            if (!accept_char(h, '}')) return perr(h, "expected ',' or '}' in the dictionary");
            break;
        }
    }
    skip_ws(h);
    if (h->p != h->end) return perr(h, "garbage after the header dictionary");
    if (!have_descr) return perr(h, "missing key 'descr'");
    if (!have_fortran) return perr(h, "missing key 'fortran_order'");
    if (!have_shape) return perr(h, "missing key 'shape'");
    return 0;
}

/* ---- reading ----------------------------------------------------------------------------- */

/* fread exactly len bytes. Returns 0, or an errno value (0 < ) on error, or -1 on early EOF. */
static int read_exact(FILE *f, void *buf, size_t len)
{
    size_t k = fread(buf, 1, len, f);
    if (k == len) return 0;
    if (ferror(f)) return errno != 0 ? errno : EIO;
    return -1;
}

rb_status rb_npy_read(rb_context *ctx, const char *path, rb_tensor *out)
{
    static const char fn[] = "rb_npy_read";
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL) return rb_fail(ctx, RB_ENULL, "%s: path is NULL", fn);
    if (out == NULL) return rb_fail(ctx, RB_ENULL, "%s: out is NULL", fn);

    errno = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        int err = errno;
        char eb[128];
        if (err == ENOENT || err == ENOTDIR)
            return rb_fail(ctx, RB_ENOTFOUND, "%s: cannot open '%s': %s", fn, path, rb_io_strerror(err, eb, sizeof eb));
        return rb_io_fail(ctx, fn, "cannot open", path, err);
    }

    rb_status st = RB_OK;
    char *hbuf = NULL;
    rb_tensor t = {{0, 0, 0, 0, 0}, NULL, false};
    int rc;

    struct stat sb;
    long long fsize = -1; /* -1: not a regular file, size unknown */
    if (fstat(fileno(f), &sb) != 0) {
        st = rb_io_fail(ctx, fn, "cannot stat", path, errno);
        goto done;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = rb_io_fail(ctx, fn, "cannot read", path, EISDIR);
        goto done;
    }
    if (S_ISREG(sb.st_mode)) fsize = (long long)sb.st_size;

    unsigned char pre[12];
    rc = read_exact(f, pre, 8);
    if (rc > 0) {
        st = rb_io_fail(ctx, fn, "cannot read", path, rc);
        goto done;
    }
    if (rc < 0 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is not a .npy file (bad magic%s)", fn, path,
                     rc < 0 ? ": file too short" : "");
        goto done;
    }
    int major = pre[6], minor = pre[7];
    if (!((major == 1 || major == 2 || major == 3) && minor == 0)) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': unsupported .npy format version %d.%d (1.0, 2.0, 3.0 are known)", fn,
                     path, major, minor);
        goto done;
    }
    size_t lenbytes = major == 1 ? 2 : 4;
    rc = read_exact(f, pre + 8, lenbytes);
    if (rc > 0) {
        st = rb_io_fail(ctx, fn, "cannot read", path, rc);
        goto done;
    }
    if (rc < 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': file ends inside the header length field (truncated)", fn, path);
        goto done;
    }
    uint32_t hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
    if (lenbytes == 4) hlen |= (uint32_t)pre[10] << 16 | (uint32_t)pre[11] << 24;
    size_t data_off = 8 + lenbytes + (size_t)hlen;
    if (hlen > NPY_MAX_HEADER) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': header length %lu is larger than the 1 MiB limit", fn, path,
                     (unsigned long)hlen);
        goto done;
    }
    if (fsize >= 0 && (long long)data_off > fsize) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': header length %lu goes beyond the end of the file (%lld bytes)", fn,
                     path, (unsigned long)hlen, fsize);
        goto done;
    }
    hbuf = rb_malloc(ctx, (size_t)hlen + 1);
    if (hbuf == NULL) {
        st = rb_fail(ctx, RB_ENOMEM, "%s: '%s': out of memory for a %lu-byte header", fn, path, (unsigned long)hlen);
        goto done;
    }
    rc = read_exact(f, hbuf, hlen);
    if (rc > 0) {
        st = rb_io_fail(ctx, fn, "cannot read", path, rc);
        goto done;
    }
    if (rc < 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': header length %lu goes beyond the end of the file", fn, path,
                     (unsigned long)hlen);
        goto done;
    }
    hbuf[hlen] = '\0';

    npy_header hd;
    memset(&hd, 0, sizeof hd);
    hparser hp = {hbuf, hbuf + hlen, {0}};
    if (parse_dict(&hp, &hd) != 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': bad header: %s (at byte %ld of the header)", fn, path, hp.err,
                     (long)(hp.p - hbuf));
        goto done;
    }
    if (strcmp(hd.descr, "<f8") != 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': dtype '%s' is not supported (only little-endian float64 '<f8')", fn,
                     path, hd.descr);
        goto done;
    }
    if (hd.fortran) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': fortran_order True is not supported (only C order)", fn, path);
        goto done;
    }
    rb_shape shape = {1, 1, 1, 1, 1};
    size_t *slot[5] = {&shape.n, &shape.c, &shape.d, &shape.h, &shape.w};
    for (int i = 0; i < hd.ndims; i++) {
        if (hd.dims[i] == 0) {
            st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': shape has a zero-size dimension (axis %d); empty arrays are not supported",
                         fn, path, i);
            goto done;
        }
        *slot[5 - hd.ndims + i] = hd.dims[i];
    }
    size_t count = rb_shape_count(shape);
    char sbuf[128];
    if (count == 0 || count > (SIZE_MAX - data_off) / sizeof(double) ||
        (unsigned long long)count > (unsigned long long)(INT64_MAX - (long long)data_off) / sizeof(double)) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': shape %s has too many elements (size overflows)", fn, path,
                     rb_shape_format(shape, sbuf, sizeof sbuf));
        goto done;
    }
    size_t nbytes = count * sizeof(double);
    if (fsize >= 0) {
        long long want = (long long)data_off + (long long)nbytes;
        if (fsize < want) {
            st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': data truncated: shape %s needs %zu bytes of data, the file has %lld",
                         fn, path, rb_shape_format(shape, sbuf, sizeof sbuf), nbytes, fsize - (long long)data_off);
            goto done;
        }
        if (fsize > want) {
            st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': %lld trailing bytes after the data of shape %s", fn, path,
                         fsize - want, rb_shape_format(shape, sbuf, sizeof sbuf));
            goto done;
        }
    }

    st = rb_tensor_alloc(ctx, &t, shape);
    if (st != RB_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", rb_context_message(ctx));
        st = rb_fail(ctx, st, "%s: '%s': %s", fn, path, msg);
        goto done;
    }
    rc = read_exact(f, t.data, nbytes);
    if (rc > 0) {
        st = rb_io_fail(ctx, fn, "cannot read", path, rc);
        goto done;
    }
    if (rc < 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': data truncated: shape %s needs %zu bytes of data", fn, path,
                     rb_shape_format(shape, sbuf, sizeof sbuf), nbytes);
        goto done;
    }
    unsigned char extra;
    rc = read_exact(f, &extra, 1);
    if (rc > 0) {
        st = rb_io_fail(ctx, fn, "cannot read", path, rc);
        goto done;
    }
    if (rc == 0) {
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': trailing bytes after the data of shape %s", fn, path,
                     rb_shape_format(shape, sbuf, sizeof sbuf));
        goto done;
    }
    if (!host_is_little_endian()) swap8(t.data, count);

done:
    fclose(f);
    rb_free(ctx, hbuf);
    if (st == RB_OK) {
        *out = t;
    } else {
        rb_tensor_release(ctx, &t);
    }
    return st;
}
