/* context.c — error messages, threads and the allocator; no global state
 * except switching GSL's aborting default handler off once. */
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE (with _POSIX_C_SOURCE from the build) */
#include "resbridge/context.h"

#include <gsl/gsl_errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define RB_MESSAGE_LEN 512
#define RB_HUGE_MIN ((size_t)4 << 20) /* blocks from here on: grids */
#define RB_HUGE_ALIGN ((size_t)2 << 20)

struct rb_context {
    rb_allocator alloc;
    int threads;
    rb_status last_status;
    char message[RB_MESSAGE_LEN];
};

/* 64-byte aligned; blocks of 4 MiB and more (grids) 2 MiB aligned and, where the system has
 * transparent huge pages on request (Linux madvise mode), marked for them: a stencil pass over
 * a 3D grid walks fewer pages (127^3 solve 6-9 % faster, bench/RESULTS.md). The hint's failure
 * changes nothing. */
static void *default_alloc(size_t bytes, void *user)
{
    (void)user;
    void *p = NULL;
    if (bytes == 0) bytes = 1;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= RB_HUGE_MIN) {
        if (posix_memalign(&p, RB_HUGE_ALIGN, bytes) != 0) return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE);
        return p;
    }
#endif
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

static void default_free(void *ptr, void *user)
{
    (void)user;
    free(ptr);
}

rb_status rb_context_create(rb_context **ctx, const rb_allocator *alloc)
{
    if (ctx == NULL) return RB_ENULL;
    rb_allocator a = {default_alloc, default_free, NULL};
    if (alloc != NULL) {
        if (alloc->alloc == NULL || alloc->free == NULL) return RB_EINVAL;
        a = *alloc;
    }
    rb_context *c = a.alloc(sizeof *c, a.user);
    if (c == NULL) return RB_ENOMEM;
    memset(c, 0, sizeof *c);
    c->alloc = a;
    c->threads = 1;
    /* GSL's default handler aborts the process; resbridge checks GSL's return codes. */
    gsl_set_error_handler_off();
    *ctx = c;
    return RB_OK;
}

void rb_context_free(rb_context *ctx)
{
    if (ctx == NULL) return;
    rb_allocator a = ctx->alloc;
    a.free(ctx, a.user);
}

rb_status rb_context_set_threads(rb_context *ctx, int threads)
{
    if (ctx == NULL) return RB_ENULL;
    if (threads < 1 || threads > 1024)
        return rb_fail(ctx, RB_EINVAL, "threads: %d is outside 1..1024", threads);
    ctx->threads = threads;
    return RB_OK;
}

int rb_context_threads(const rb_context *ctx) { return ctx == NULL ? 1 : ctx->threads; }

const char *rb_context_message(const rb_context *ctx) { return ctx == NULL ? "" : ctx->message; }

rb_status rb_context_last_status(const rb_context *ctx) { return ctx == NULL ? RB_OK : ctx->last_status; }

void rb_context_clear_error(rb_context *ctx)
{
    if (ctx == NULL) return;
    ctx->last_status = RB_OK;
    ctx->message[0] = '\0';
}

rb_status rb_fail(rb_context *ctx, rb_status status, const char *fmt, ...)
{
    if (ctx == NULL) return status;
    ctx->last_status = status;
    /* formatted apart first: the arguments may include the context's own message (a caller
     * prefixing what a callee said), and vsnprintf must not read what it writes */
    char buf[sizeof ctx->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(ctx->message, buf, sizeof buf);
    return status;
}

void *rb_malloc(rb_context *ctx, size_t bytes)
{
    if (ctx == NULL) return NULL;
    void *p = ctx->alloc.alloc(bytes == 0 ? 1 : bytes, ctx->alloc.user);
    if (p == NULL) rb_fail(ctx, RB_ENOMEM, "allocation of %zu bytes failed", bytes);
    return p;
}

void *rb_calloc(rb_context *ctx, size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / size) {
        rb_fail(ctx, RB_ENOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = rb_malloc(ctx, count * size);
    if (p != NULL) memset(p, 0, count * size);
    return p;
}

void rb_free(rb_context *ctx, void *ptr)
{
    if (ctx == NULL || ptr == NULL) return;
    ctx->alloc.free(ptr, ctx->alloc.user);
}
