/* testkit.c — shared test helpers. */
#include "testkit.h"

#include <stdlib.h>
#include <string.h>

int rb_test_setup(void **state)
{
    rb_context *ctx;
    if (rb_context_create(&ctx, NULL) != RB_OK) return -1;
    *state = ctx;
    return 0;
}

int rb_test_teardown(void **state)
{
    rb_context_free(*state);
    return 0;
}

double rb_test_uniform(rb_test_rng *r, double lo, double hi)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return lo + (hi - lo) * (double)(z >> 11) * 0x1.0p-53;
}

void rb_test_fill(rb_test_rng *r, rb_tensor *t, double lo, double hi)
{
    size_t n = rb_tensor_count(t);
    for (size_t i = 0; i < n; i++) t->data[i] = rb_test_uniform(r, lo, hi);
}

static void *failing_alloc(size_t bytes, void *user)
{
    rb_failing_alloc *s = user;
    if (s->budget == 0) return NULL;
    if (s->budget > 0) s->budget--;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
    s->live++;
    return p;
}

static void failing_free(void *ptr, void *user)
{
    rb_failing_alloc *s = user;
    if (ptr != NULL) s->live--;
    free(ptr);
}

rb_allocator rb_failing_allocator(rb_failing_alloc *state)
{
    rb_allocator a = {failing_alloc, failing_free, state};
    return a;
}
