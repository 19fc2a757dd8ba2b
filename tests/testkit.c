/* testkit.c — shared test helpers. */
#include "testkit.h"

#include <dirent.h>
#include <math.h>
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

rb_op *rb_test_varstencil(rb_context *ctx, int dims, rb_stencil pat, rb_shape grid, uint64_t seed)
{
    rb_op *A;
    grid.n = 1;
    RB_CHECK(ctx, rb_op_varstencil_create(ctx, dims, pat, grid, NULL, &A));
    int vd, nt, ce;
    rb_shape g;
    assert_true(rb_op_varstencil_info(A, &vd, &nt, &ce, &g));
    const size_t pts = rb_shape_count(g);
    rb_test_rng r = {seed};
    for (int t = 0; t < nt; t++)
        for (size_t p = 0; p < pts; p++)
            A->params[(size_t)t * pts + p] = t == ce ? rb_test_uniform(&r, 2.0 * nt, 3.0 * nt) : rb_test_uniform(&r, -1.5, 0.2);
    return A;
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

void rb_test_vnet_cycle_matrix(rb_context *ctx, rb_vnet *net, double *M)
{
    const rb_shape s = rb_vnet_shape(net, 0);
    const size_t N = rb_shape_count(s);
    rb_tensor e, u;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &e, s));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, s));
    for (size_t j = 0; j < N; j++) {
        memset(e.data, 0, N * sizeof(double));
        e.data[j] = 1;
        RB_CHECK(ctx, rb_vnet_forward(ctx, net, &e, NULL, &u, 1, false));
        for (size_t i = 0; i < N; i++) M[i * N + j] = u.data[i];
    }
    rb_tensor_release(ctx, &e), rb_tensor_release(ctx, &u);
}

double rb_test_vnet_error_radius(rb_context *ctx, rb_vnet *net)
{
    const rb_shape s = rb_vnet_shape(net, 0);
    const size_t N = rb_shape_count(s);
    double *M = calloc(N * N, sizeof(double)), *A = calloc(N * N, sizeof(double)), *E = calloc(N * N, sizeof(double));
    double *wr = calloc(N, sizeof(double)), *wi = calloc(N, sizeof(double));
    assert_true(M && A && E && wr && wi);
    rb_test_vnet_cycle_matrix(ctx, net, M);
    RB_CHECK(ctx, rb_ref_assemble(ctx, rb_vnet_op(net, 0, RB_VNET_A), s, A));
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++) {
            double ma = 0;
            for (size_t k = 0; k < N; k++) ma += M[i * N + k] * A[k * N + j];
            E[i * N + j] = (i == j) - ma;
        }
    RB_CHECK(ctx, rb_ref_eig_general(ctx, E, N, wr, wi));
    double rho = 0;
    for (size_t i = 0; i < N; i++) rho = fmax(rho, hypot(wr[i], wi[i]));
    free(M), free(A), free(E), free(wr), free(wi);
    return rho;
}

void rb_test_write_file(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len > 0) assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

unsigned char *rb_test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    unsigned char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

int rb_test_count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.") != NULL) n++;
    closedir(d);
    return n;
}

static char suite_dir[4096];

int rb_test_suite_dir_setup(const char *prefix) { return rb_test_scratch_dir(suite_dir, sizeof suite_dir, prefix); }

int rb_test_suite_dir_teardown(void)
{
    rb_test_remove_tree(suite_dir);
    return 0;
}

const char *rb_test_suite_dir(void) { return suite_dir; }

const char *rb_test_suite_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", suite_dir, name);
    return buf;
}

double rb_test_vnet_vs_mg(rb_context *ctx, rb_vnet *net, const rb_mg *mg, int cycles, uint64_t seed, bool taped_last)
{
    const rb_vcycle *vc = rb_mg_vcycle(mg);
    rb_arena work = {0};
    RB_CHECK(ctx, rb_arena_reserve(ctx, &work, rb_vcycle_workspace(vc) + 4096));
    rb_tensor f, u;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_mg_shape(mg)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, rb_mg_shape(mg)));
    rb_test_rng r = {seed};
    rb_test_fill(&r, &f, -1, 1);
    const size_t N = rb_tensor_count(&f);
    memcpy(vc->level[0].f.data, f.data, N * sizeof(double));
    memset(vc->level[0].u.data, 0, N * sizeof(double));
    double worst = 0;
    for (int k = 1; k <= cycles; k++) {
        RB_CHECK(ctx, rb_vcycle_run(ctx, vc, 0, &work));                                   /* MG mode: k cycles */
        RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, NULL, &u, k, taped_last && k == cycles)); /* network mode, from 0 */
        double d = 0, m = 0;
        for (size_t i = 0; i < N; i++) {
            d = fmax(d, fabs(u.data[i] - vc->level[0].u.data[i]));
            m = fmax(m, fabs(vc->level[0].u.data[i]));
        }
        worst = fmax(worst, m > 0 ? d / m : d);
    }
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    rb_arena_release(ctx, &work);
    return worst;
}

int rb_test_dump_npy(rb_context *ctx, const char *prog, const char *dir, const char *v, const char *what, const double *data,
                     rb_shape s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s_%s.npy", dir, v, what);
    rb_tensor t;
    if (rb_tensor_view(ctx, &t, (double *)data, s) != RB_OK || rb_npy_write(ctx, path, &t) != RB_OK) {
        fprintf(stderr, "%s: %s\n", prog, rb_context_message(ctx));
        return 1;
    }
    return 0;
}

FILE *rb_test_dump_manifest(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.txt", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) perror(path);
    return f;
}
