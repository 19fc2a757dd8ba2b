/* testkit.h — small helpers shared by the cmocka suites. */
#ifndef RB_TESTKIT_H
#define RB_TESTKIT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "resbridge/resbridge.h"

/* A context for one test (cmocka setup/teardown put it in *state). */
int rb_test_setup(void **state);
int rb_test_teardown(void **state);

/* Fail the test with the context message unless st == RB_OK. */
#define RB_CHECK(ctx, call)                                                                          \
    do {                                                                                           \
        rb_status st_ = (call);                                                                    \
        if (st_ != RB_OK) fail_msg("%s -> %s: %s", #call, rb_status_name(st_), rb_context_message(ctx)); \
    } while (0)

/* Assert that call returns want and that the context message mentions `needle`. */
#define RB_EXPECT(ctx, want, needle, call)                                                          \
    do {                                                                                           \
        rb_status st_ = (call);                                                                    \
        if (st_ != (want))                                                                         \
            fail_msg("%s -> %s, expected %s (%s)", #call, rb_status_name(st_), rb_status_name(want), \
                     rb_context_message(ctx));                                                     \
        if (strstr(rb_context_message(ctx), (needle)) == NULL)                                     \
            fail_msg("%s: message '%s' does not mention '%s'", #call, rb_context_message(ctx), (needle)); \
    } while (0)

/* Deterministic uniform numbers in [lo, hi) (splitmix64). */
typedef struct rb_test_rng { uint64_t s; } rb_test_rng;
double rb_test_uniform(rb_test_rng *r, double lo, double hi);
void rb_test_fill(rb_test_rng *r, rb_tensor *t, double lo, double hi);

/* A point-dependent stencil (varstencil, pattern pat) on the grid of `grid` (its batch
 * ignored) with random weights: off-centre in [-1.5, 0.2), a dominant centre in [2, 3) x taps. */
rb_op *rb_test_varstencil(rb_context *ctx, int dims, rb_stencil pat, rb_shape grid, uint64_t seed);

/* A fresh scratch directory "<RB_TEST_DATA or /tmp>/<prefix>_XXXXXX" into buf (0 on success),
 * and removing a directory tree (files and subdirectories). */
int rb_test_scratch_dir(char *buf, size_t len, const char *prefix);
void rb_test_remove_tree(const char *dir);
/* Whole files for format tests (assert on failure): write len bytes; read all (*len bytes,
 * free() it); count the files in dir whose name contains ".tmp." (atomic-write leftovers). */
void rb_test_write_file(const char *path, const void *bytes, size_t len);
unsigned char *rb_test_slurp(const char *path, size_t *len);
int rb_test_count_tmp_files(const char *dir);

/* A suite's scratch directory: create it in the cmocka group setup (prefix names it), remove it
 * in the group teardown; rb_test_suite_path gives "<dir>/<name>" in buf. */
int rb_test_suite_dir_setup(const char *prefix);
int rb_test_suite_dir_teardown(void);
const char *rb_test_suite_dir(void);
const char *rb_test_suite_path(char *buf, size_t len, const char *name);

/* Network mode against MG mode: the largest relative difference (max norm) between the iterates
 * of 1..cycles cycles of net (each from u = 0 by rb_vnet_forward; the last one taped when
 * taped_last) and of the multigrid solver's cycle (rb_mg_vcycle), for f uniform in [-1,1] from seed. */
double rb_test_vnet_vs_mg(rb_context *ctx, rb_vnet *net, const rb_mg *mg, int cycles, uint64_t seed, bool taped_last);

/* For the dump programs (tests/dump_*.c): write data of shape s to <dir>/<v>_<what>.npy (0 on
 * success; 1 with "prog: message" on stderr), and open <dir>/manifest.txt for writing (NULL
 * after perror). */
int rb_test_dump_npy(rb_context *ctx, const char *prog, const char *dir, const char *v, const char *what, const double *data,
                     rb_shape s);
FILE *rb_test_dump_manifest(const char *dir);

/* An allocator that fails after `budget` successful allocations, counting live blocks. */
typedef struct rb_failing_alloc {
    long budget;   /* allocations left before failing; < 0: never fail */
    long live;     /* blocks allocated and not freed */
} rb_failing_alloc;
rb_allocator rb_failing_allocator(rb_failing_alloc *state);

/* The matrix M of one network-mode cycle from u = 0 (u = M f), assembled column by column
 * (M[i*N + j], N grid points), and the spectral radius of its error propagation I - M A
 * (LAPACK dgeev) for the net's finest operator A. */
void rb_test_vnet_cycle_matrix(rb_context *ctx, rb_vnet *net, double *M);
double rb_test_vnet_error_radius(rb_context *ctx, rb_vnet *net);

#endif
