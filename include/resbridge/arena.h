/* arena.h — one-allocation work memory, sized by a dry run.
 *
 * A computation that needs scratch memory takes an rb_arena. First run the
 * set-up with a measuring arena (rb_arena_measure): allocations return NULL
 * and only count bytes. Then reserve that many bytes once; every later step
 * takes its scratch from the arena and gives it back with a mark/reset pair,
 * so loops allocate nothing.
 *
 *     rb_arena a;
 *     rb_arena_measure(&a);                      // dry run: count only
 *     plan(&a);                                  // calls rb_arena_alloc(...)
 *     rb_arena_reserve(ctx, &a, rb_arena_peak(&a));
 *     size_t m = rb_arena_mark(&a); step(&a); rb_arena_reset(&a, m);
 *     rb_arena_release(ctx, &a);
 */
#ifndef RESBRIDGE_ARENA_H
#define RESBRIDGE_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include "resbridge/context.h"
#include "resbridge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RB_ARENA_ALIGN 64

typedef struct rb_arena {
    char *base;   /* NULL in measuring mode */
    size_t cap;   /* bytes reserved */
    size_t used;  /* bytes handed out */
    size_t peak;  /* high-water mark of used */
    bool measuring;
} rb_arena;

/* A measuring arena: allocations count bytes and return NULL. */
void rb_arena_measure(rb_arena *a);
/* Reserve bytes (one allocation) and switch to real mode; used/peak restart at 0. */
rb_status rb_arena_reserve(rb_context *ctx, rb_arena *a, size_t bytes);
void rb_arena_release(rb_context *ctx, rb_arena *a);

/* Bytes rounded up to the alignment, as the arena counts them. */
size_t rb_arena_bytes(size_t bytes);
/* Hand out bytes (64-byte aligned). Measuring: returns NULL and counts. Real: NULL
 * and RB_ENOMEM in ctx when the reservation is exhausted. */
void *rb_arena_alloc(rb_context *ctx, rb_arena *a, size_t bytes);
/* A tensor view of the given shape on arena memory (not zeroed). In measuring
 * mode only counts, and t->data is NULL. */
rb_status rb_arena_tensor(rb_context *ctx, rb_arena *a, rb_tensor *t, rb_shape shape);

static inline size_t rb_arena_mark(const rb_arena *a) { return a->used; }
static inline void rb_arena_reset(rb_arena *a, size_t mark) { if (mark <= a->used) a->used = mark; }
static inline size_t rb_arena_peak(const rb_arena *a) { return a->peak; }

#ifdef __cplusplus
}
#endif
#endif
