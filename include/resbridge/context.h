/* context.h — the object every resbridge call takes: last error message,
 * thread count, allocator. No global state: two contexts in two threads
 * never interfere.
 *
 *     rb_context *ctx;
 *     if (rb_context_create(&ctx, NULL) != RB_OK) return 1;   // default malloc/free
 *     rb_context_set_threads(ctx, 2);
 *     ... rb_* calls ...; on failure print rb_context_message(ctx)
 *     rb_context_free(ctx);
 *
 * Creating a context also switches GSL's process-wide default error handler
 * off (GSL would otherwise abort); resbridge maps GSL errors to statuses.
 */
#ifndef RESBRIDGE_CONTEXT_H
#define RESBRIDGE_CONTEXT_H

#include <stddef.h>
#include "resbridge/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A user allocator. alloc returns memory aligned to at least 64 bytes or NULL. */
typedef struct rb_allocator {
    void *(*alloc)(size_t bytes, void *user);
    void (*free)(void *ptr, void *user);
    void *user;
} rb_allocator;

typedef struct rb_context rb_context;

/* Create a context. alloc may be NULL (aligned malloc/free; on Linux, blocks of 4 MiB and
 * more are 2 MiB aligned and marked for transparent huge pages); the context itself is
 * allocated with it. Threads default to 1. */
rb_status rb_context_create(rb_context **ctx, const rb_allocator *alloc);
void rb_context_free(rb_context *ctx);

/* Threads used by parallel kernels (OpenMP). 1 <= threads <= 1024. */
rb_status rb_context_set_threads(rb_context *ctx, int threads);
int rb_context_threads(const rb_context *ctx);

/* The message of the last failure ("" if none). Valid until the next failing call. */
const char *rb_context_message(const rb_context *ctx);
/* The status of the last failure (RB_OK if none). */
rb_status rb_context_last_status(const rb_context *ctx);
void rb_context_clear_error(rb_context *ctx);

/* Memory through the context's allocator (64-byte aligned). rb_malloc records
 * RB_ENOMEM in the context and returns NULL on failure; rb_free(ctx, NULL) is a no-op. */
void *rb_malloc(rb_context *ctx, size_t bytes);
void *rb_calloc(rb_context *ctx, size_t count, size_t size);
void rb_free(rb_context *ctx, void *ptr);

/* Record a failure: sets the status and a printf-style message and returns
 * status, so a function can write `return rb_fail(ctx, RB_EINVAL, "h=%g", h);`.
 * Safe with ctx == NULL (then it only returns status). */
rb_status rb_fail(rb_context *ctx, rb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
