/* testkit.c — shared test helpers. */
#include "testkit.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int rb_test_scratch_dir(char *buf, size_t len, const char *prefix)
{
    const char *base = getenv("RB_TEST_DATA");
    snprintf(buf, len, "%s/%s_XXXXXX", base && base[0] ? base : "/tmp", prefix);
    if (mkdtemp(buf) != NULL) return 0;
    snprintf(buf, len, "/tmp/%s_XXXXXX", prefix);
    return mkdtemp(buf) != NULL ? 0 : -1;
}

void rb_test_remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    char p[8192];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rb_test_remove_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}
