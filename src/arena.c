/* arena.c — one-allocation work memory with a measuring (dry-run) mode. */
#include "resbridge/arena.h"

#include <stdint.h>
#include <string.h>

void rb_arena_measure(rb_arena *a)
{
    if (a == NULL) return;
    memset(a, 0, sizeof *a);
    a->measuring = true;
}

size_t rb_arena_bytes(size_t bytes)
{
    if (bytes > SIZE_MAX - RB_ARENA_ALIGN) return SIZE_MAX;
    return (bytes + RB_ARENA_ALIGN - 1) / RB_ARENA_ALIGN * RB_ARENA_ALIGN;
}

rb_status rb_arena_reserve(rb_context *ctx, rb_arena *a, size_t bytes)
{
    if (ctx == NULL) return RB_ENULL;
    if (a == NULL) return rb_fail(ctx, RB_ENULL, "rb_arena_reserve: a is NULL");
    char *base = rb_malloc(ctx, bytes);
    if (base == NULL) return RB_ENOMEM;
    if (!a->measuring) rb_free(ctx, a->base);
    a->base = base;
    a->cap = bytes;
    a->used = 0;
    a->peak = 0;
    a->measuring = false;
    return RB_OK;
}

void rb_arena_release(rb_context *ctx, rb_arena *a)
{
    if (a == NULL) return;
    if (!a->measuring) rb_free(ctx, a->base);
    memset(a, 0, sizeof *a);
}

void *rb_arena_alloc(rb_context *ctx, rb_arena *a, size_t bytes)
{
    if (a == NULL) {
        rb_fail(ctx, RB_ENULL, "work arena is NULL but %zu bytes of scratch are needed", bytes);
        return NULL;
    }
    size_t need = rb_arena_bytes(bytes);
    if (need == SIZE_MAX || a->used > SIZE_MAX - need) {
        rb_fail(ctx, RB_ENOMEM, "arena request of %zu bytes overflows", bytes);
        return NULL;
    }
    if (a->measuring) {
        a->used += need;
        if (a->used > a->peak) a->peak = a->used;
        return NULL;
    }
    if (a->used + need > a->cap) {
        rb_fail(ctx, RB_ENOMEM, "work arena exhausted: %zu bytes needed, %zu of %zu left", need,
                a->cap - a->used, a->cap);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

rb_status rb_arena_tensor(rb_context *ctx, rb_arena *a, rb_tensor *t, rb_shape shape)
{
    if (t == NULL) return rb_fail(ctx, RB_ENULL, "rb_arena_tensor: t is NULL");
    size_t count = rb_shape_count(shape);
    if (count == 0) return rb_fail(ctx, RB_EINVAL, "rb_arena_tensor: shape has a zero dimension");
    bool measuring = a != NULL && a->measuring;
    double *data = rb_arena_alloc(ctx, a, count * sizeof(double));
    if (data == NULL && !measuring) return rb_context_last_status(ctx);
    t->shape = shape;
    t->data = data;
    t->owns = false;
    return RB_OK;
}
