/* test_vnet_io.c — weights files of the network-mode V-cycle (rb_vnet_save/load/peek):
 *   round trip: every weight and step size back bit for bit, and the reloaded net's cycles
 *     equal the saved net's bit for bit (also through the coarse LU, refreshed on load);
 *   the layout: size from the documented format, magic, CRC-32 recomputed by zlib (the oracle);
 *   any_size: the damped-Jacobi weights saved on n = 31 load onto n = 127 (and 15) as the
 *     damped-Jacobi weights of that grid: the loaded net reproduces the multigrid solver
 *     (rb_mg, Jacobi) iterate for iterate (<= 1e-13); learned weights follow the documented
 *     mapping B_l = B_file[s] D_file[s] / D_l;
 *   refusals: corrupt byte, truncated, wrong magic, empty, missing, other n/levels (both
 *     shapes named), other activation, a singular coarsest A; after each the net is unchanged
 *     (weights and cycle output bit for bit); atomic writes leave no partial file. */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static int group_setup(void **state)
{
    (void)state;
    return rb_test_suite_dir_setup("vnet_io");
}

static int group_teardown(void **state)
{
    (void)state;
    return rb_test_suite_dir_teardown();
}

static rb_vnet *make_net(rb_context *ctx, rb_vnet_config c)
{
    rb_vnet *net = NULL;
    RB_CHECK(ctx, rb_vnet_create(ctx, &c, &net));
    return net;
}

/* All parameters of a net, level by level, A B R P, in one new buffer. */
static double *weights_of(const rb_vnet *net, size_t *count)
{
    size_t n = 0;
    const rb_vnet_config *c = rb_vnet_config_of(net);
    for (size_t l = 0; l < c->levels; l++)
        for (int p = 0; p < RB_VNET_PART_COUNT; p++) n += rb_vnet_op(net, l, (rb_vnet_part)p) ? rb_vnet_op(net, l, (rb_vnet_part)p)->nparams : 0;
    double *w = malloc((n ? n : 1) * sizeof *w), *q = w;
    assert_non_null(w);
    for (size_t l = 0; l < c->levels; l++)
        for (int p = 0; p < RB_VNET_PART_COUNT; p++) {
            const rb_op *op = rb_vnet_op(net, l, (rb_vnet_part)p);
            if (op) memcpy(q, op->params, op->nparams * sizeof *q), q += op->nparams;
        }
    *count = n;
    return w;
}

/* Two cycles of the net on a fixed right-hand side (new tensor). */
static rb_tensor cycles_of(rb_context *ctx, rb_vnet *net, uint64_t seed)
{
    rb_tensor f, u;
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &f, rb_vnet_shape(net, 0)));
    RB_CHECK(ctx, rb_tensor_alloc(ctx, &u, rb_vnet_shape(net, 0)));
    rb_test_rng r = {seed};
    rb_test_fill(&r, &f, -1, 1);
    RB_CHECK(ctx, rb_vnet_forward(ctx, net, &f, NULL, &u, 2, false));
    rb_tensor_release(ctx, &f);
    return u;
}

/* The net's state: weights and what its cycles compute. */
typedef struct net_state {
    double *w;
    size_t nw;
    rb_tensor u;
} net_state;

static net_state state_of(rb_context *ctx, rb_vnet *net)
{
    net_state s;
    s.w = weights_of(net, &s.nw);
    s.u = cycles_of(ctx, net, 77);
    return s;
}

static void assert_same_state(rb_context *ctx, rb_vnet *net, const net_state *s)
{
    net_state t = state_of(ctx, net);
    assert_int_equal(t.nw, s->nw);
    assert_memory_equal(t.w, s->w, s->nw * sizeof(double));
    assert_memory_equal(t.u.data, s->u.data, rb_tensor_count(&s->u) * sizeof(double));
    free(t.w);
    rb_tensor_release(ctx, &t.u);
}

static void release_state(rb_context *ctx, net_state *s)
{
    free(s->w);
    rb_tensor_release(ctx, &s->u);
}

/* ---- round trip ---------------------------------------------------------------------------------- */

static void round_trip_case(rb_context *ctx, rb_vnet_config c, const char *name)
{
    char p[8192];
    rb_test_suite_path(p, sizeof p, name);
    rb_vnet *a = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_set_step(ctx, a, 0.7));
    c.seed += 100; /* other weights to overwrite */
    rb_vnet *b = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_save(ctx, a, p));
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    RB_CHECK(ctx, rb_vnet_load(ctx, b, p, false));
    net_state sa = state_of(ctx, a);
    assert_same_state(ctx, b, &sa); /* weights, step sizes and the coarse factorisation: the same cycles */
    /* the step size came back too: set b's to another value, reload, same again */
    RB_CHECK(ctx, rb_vnet_set_step(ctx, b, 1.3));
    RB_CHECK(ctx, rb_vnet_load(ctx, b, p, false));
    assert_same_state(ctx, b, &sa);
    /* peek names the configuration it was written by */
    rb_vnet_config pc;
    RB_CHECK(ctx, rb_vnet_peek(ctx, p, &pc));
    assert_int_equal(pc.dim, c.dim), assert_int_equal(pc.n, c.n), assert_int_equal(pc.levels, c.levels);
    assert_int_equal(pc.channels, c.channels), assert_int_equal(pc.act, c.act), assert_int_equal(pc.cycle, c.cycle);
    assert_int_equal(pc.pre, c.pre), assert_int_equal(pc.post, c.post), assert_int_equal(pc.coarse_solve, c.coarse_solve);

    /* the layout against the documented format; the checksum recomputed by zlib */
    size_t len;
    unsigned char *bytes = rb_test_slurp(p, &len);
    assert_memory_equal(bytes, "RBVNET\r\n", 8);
    size_t nsteps = 0;
    for (size_t l = 0; l < c.levels; l++) {
        bool coarsest = l + 1 == c.levels;
        nsteps += coarsest ? (c.coarse_solve ? 0 : (size_t)c.pre) : (size_t)(c.pre + c.post);
    }
    assert_int_equal(len, 16 + 8 * 10 + 8 * 7 * c.levels + 8 * (sa.nw + nsteps) + 4);
    uint32_t crc = (uint32_t)crc32(0L, bytes, (uInt)(len - 4)), stored = 0;
    for (int i = 0; i < 4; i++) stored |= (uint32_t)bytes[len - 4 + i] << (8 * i);
    assert_int_equal(crc, stored);
    free(bytes);
    print_message("round trip %s: %zu bytes, %zu weights, bit for bit\n", name, len, sa.nw);
    release_state(ctx, &sa);
    rb_vnet_free(ctx, a), rb_vnet_free(ctx, b);
}

static void test_round_trip(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default(); /* 2D, n = 31, 3 levels, C = 1, coarse solve */
    round_trip_case(ctx, c, "solved.rbw");
    c.n = 15, c.levels = 3, c.channels = 2, c.act = RB_ACT_TANH, c.coarse_solve = false, c.pre = 2, c.post = 1;
    c.cycle = RB_CYCLE_W;
    round_trip_case(ctx, c, "tanh_w.rbw");
    c = rb_vnet_config_default();
    c.dim = 1, c.n = 63, c.levels = 4, c.act = RB_ACT_RELU, c.pre = 1, c.post = 2;
    round_trip_case(ctx, c, "relu_1d.rbw");
}

/* ---- any_size: the Poisson weights of one grid are those of every grid --------------------------- */

static void scramble(rb_vnet *net, uint64_t seed)
{
    rb_test_rng r = {seed};
    for (size_t l = 0; l < rb_vnet_config_of(net)->levels; l++)
        for (int p = RB_VNET_B; p <= RB_VNET_P; p++) {
            rb_op *op = rb_vnet_op(net, l, (rb_vnet_part)p);
            for (size_t i = 0; op && i < op->nparams; i++) op->params[i] = rb_test_uniform(&r, -1, 1);
        }
}

static void poisson_any_size_case(rb_context *ctx, const char *file, size_t n)
{
    rb_mg_problem pb = {2, n, NULL, 1.0};
    rb_mg_options o = rb_mg_options_default(2);
    o.smoother = RB_SMOOTHER_JACOBI, o.omega = 0.8, o.pre = 1, o.post = 1, o.coarse_max = 7;
    rb_mg *mg = NULL;
    RB_CHECK(ctx, rb_mg_create(ctx, &pb, &o, &mg));
    rb_vnet_config c = rb_vnet_config_default();
    c.n = n, c.levels = rb_mg_levels(mg);
    rb_vnet *net = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_set_poisson(ctx, net, 0.5)); /* A: the Poisson stencils of this grid */
    scramble(net, n);                                   /* B, R, P: anything */
    RB_CHECK(ctx, rb_vnet_load(ctx, net, file, true));
    /* oracle: the multigrid solver with damped Jacobi, omega = 0.8 */
    const double worst = rb_test_vnet_vs_mg(ctx, net, mg, 3, n, false);
    print_message("any_size: n = 31, 3 levels -> n = %zu, %zu levels: loaded net vs multigrid max rel diff %.2e\n", n,
                  rb_mg_levels(mg), worst);
    assert_true(worst <= 1e-13);
    rb_vnet_free(ctx, net);
    rb_mg_free(ctx, mg);
}

static void test_any_size_poisson(void **state)
{
    rb_context *ctx = *state;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "poisson31.rbw");
    rb_vnet_config c = rb_vnet_config_default(); /* n = 31, 3 levels */
    rb_vnet *net = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_set_poisson(ctx, net, 0.8));
    RB_CHECK(ctx, rb_vnet_save(ctx, net, p));
    rb_vnet_free(ctx, net);
    poisson_any_size_case(ctx, p, 127); /* more levels: the extra ones reuse level 1 of the file */
    poisson_any_size_case(ctx, p, 15);  /* fewer levels */
    poisson_any_size_case(ctx, p, 31);
}

/* Learned weights: the documented mapping, level by level. */
static void test_any_size_mapping(void **state)
{
    rb_context *ctx = *state;
    char p[8192];
    rb_test_suite_path(p, sizeof p, "learned.rbw");
    rb_vnet_config c = rb_vnet_config_default(); /* n = 31, 3 levels, random weights */
    rb_vnet *src = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_set_step(ctx, src, 0.6));
    RB_CHECK(ctx, rb_vnet_save(ctx, src, p));
    c.n = 127, c.levels = 5;
    rb_vnet *net = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_set_poisson(ctx, net, 1.0));
    RB_CHECK(ctx, rb_vnet_load(ctx, net, p, true));
    for (size_t l = 0; l + 1 < c.levels; l++) {
        size_t s = l < 2 ? 0 : l - 2; /* the same grid size: 127, 63, 31 -> 31 (level 0), 15 -> 15 (level 1) */
        const rb_op *As = rb_vnet_op(src, s, RB_VNET_A), *Al = rb_vnet_op(net, l, RB_VNET_A);
        double scale = As->params[4] / Al->params[4]; /* the centre taps; Al is the Poisson stencil */
        assert_true(fabs(Al->params[4] - 4.0 * pow((double)((c.n + 1) >> l), 2)) <= 1e-9 * Al->params[4]);
        const rb_op *Bs = rb_vnet_op(src, s, RB_VNET_B), *Bl = rb_vnet_op(net, l, RB_VNET_B);
        for (size_t i = 0; i < Bs->nparams; i++) assert_true(fabs(Bl->params[i] - Bs->params[i] * scale) <= 1e-15 * fabs(Bs->params[i] * scale));
        for (int q = RB_VNET_R; q <= RB_VNET_P; q++)
            assert_memory_equal(rb_vnet_op(net, l, (rb_vnet_part)q)->params, rb_vnet_op(src, s, (rb_vnet_part)q)->params,
                                rb_vnet_op(src, s, (rb_vnet_part)q)->nparams * sizeof(double));
    }
    assert_null(rb_vnet_op(net, c.levels - 1, RB_VNET_B)); /* the solved coarsest level: nothing to load */
    /* the step size 0.6 came along: the net with B rescaled and h = 0.6 differs from h = 1 */
    rb_tensor u1 = cycles_of(ctx, net, 3);
    RB_CHECK(ctx, rb_vnet_set_step(ctx, net, 0.6));
    rb_tensor u2 = cycles_of(ctx, net, 3);
    assert_memory_equal(u1.data, u2.data, rb_tensor_count(&u1) * sizeof(double));
    rb_tensor_release(ctx, &u1), rb_tensor_release(ctx, &u2);
    rb_vnet_free(ctx, src), rb_vnet_free(ctx, net);
}

/* ---- refusals: status, message, net unchanged ------------------------------------------------------ */

static void expect_refused(rb_context *ctx, rb_vnet *net, const char *path, bool any_size, rb_status want, const char *needle,
                           const char *needle2)
{
    net_state before = state_of(ctx, net);
    RB_EXPECT(ctx, want, needle, rb_vnet_load(ctx, net, path, any_size));
    if (needle2) assert_non_null(strstr(rb_context_message(ctx), needle2));
    print_message("refused: %s\n", rb_context_message(ctx));
    assert_same_state(ctx, net, &before);
    release_state(ctx, &before);
}

static void test_refused(void **state)
{
    rb_context *ctx = *state;
    char good[8192], bad[8192];
    rb_test_suite_path(good, sizeof good, "good.rbw");
    rb_test_suite_path(bad, sizeof bad, "bad.rbw");
    rb_vnet_config c = rb_vnet_config_default(); /* n = 31, 3 levels */
    rb_vnet *a = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_save(ctx, a, good));
    c.seed = 9;
    rb_vnet *net = make_net(ctx, c);
    size_t len;
    unsigned char *bytes = rb_test_slurp(good, &len);

    /* one corrupt byte in the weights; one in the level records */
    bytes[len / 2] ^= 0x10;
    rb_test_write_file(bad, bytes, len);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "checksum mismatch", bad);
    bytes[len / 2] ^= 0x10;
    bytes[16 + 80 + 8] ^= 0x01; /* level 0's B count */
    rb_test_write_file(bad, bytes, len);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "truncated or corrupt", NULL);
    bytes[16 + 80 + 8] ^= 0x01;
    /* truncated: by a few bytes, inside the level records, inside the header, empty */
    rb_test_write_file(bad, bytes, len - 9);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "truncated", NULL);
    rb_test_write_file(bad, bytes, 16 + 80 + 20);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "truncated", NULL);
    rb_test_write_file(bad, bytes, 40);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "too short", NULL);
    rb_test_write_file(bad, bytes, 0);
    expect_refused(ctx, net, bad, true, RB_EFORMAT, "too short", NULL);
    /* wrong magic, wrong version */
    bytes[0] = 'X';
    rb_test_write_file(bad, bytes, len);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "bad magic", NULL);
    bytes[0] = 'R', bytes[8] = 7;
    rb_test_write_file(bad, bytes, len);
    expect_refused(ctx, net, bad, false, RB_EFORMAT, "format version 7", NULL);
    free(bytes);
    /* no such file */
    rb_test_suite_path(bad, sizeof bad, "missing.rbw");
    expect_refused(ctx, net, bad, false, RB_ENOTFOUND, "missing.rbw", NULL);

    /* other n and levels: both shapes named; with any_size the same file loads */
    rb_vnet_config c2 = rb_vnet_config_default();
    c2.n = 63, c2.levels = 4;
    rb_vnet *big = make_net(ctx, c2);
    expect_refused(ctx, big, good, false, RB_EINVAL, "weights are for 2D, n = 31 with 3 levels", "the net has 2D, n = 63 with 4 levels");
    RB_CHECK(ctx, rb_vnet_load(ctx, big, good, true));
    /* other activation: refused even with any_size */
    c2.act = RB_ACT_TANH;
    rb_vnet *tanh_net = make_net(ctx, c2);
    expect_refused(ctx, tanh_net, good, true, RB_EINVAL, "identity", "tanh");
    /* a one-level file cannot supply a multi-level net */
    rb_vnet_config c1 = rb_vnet_config_default();
    c1.n = 7, c1.levels = 1;
    rb_vnet *one = make_net(ctx, c1);
    rb_test_suite_path(bad, sizeof bad, "one.rbw");
    RB_CHECK(ctx, rb_vnet_save(ctx, one, bad));
    expect_refused(ctx, net, bad, true, RB_EINVAL, "n = 7 with 1 level", "n = 31 with 3 levels");

    /* a singular coarsest A: read and verified, then refused by the factorisation; the net is
     * as before (weights and its own coarse LU) */
    rb_op *Ac = rb_vnet_op(a, 2, RB_VNET_A);
    memset(Ac->params, 0, Ac->nparams * sizeof(double));
    rb_test_suite_path(bad, sizeof bad, "singular.rbw");
    RB_CHECK(ctx, rb_vnet_save(ctx, a, bad));
    expect_refused(ctx, net, bad, false, RB_ELAPACK, "singular", "unchanged");

    /* bad arguments */
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_vnet_load(ctx, NULL, good, false));
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_vnet_load(ctx, net, NULL, false));
    assert_int_equal(rb_vnet_load(NULL, net, good, false), RB_ENULL);
    rb_vnet_config pc;
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_vnet_peek(ctx, good, NULL));
    rb_test_suite_path(bad, sizeof bad, "missing.rbw");
    RB_EXPECT(ctx, RB_ENOTFOUND, "missing.rbw", rb_vnet_peek(ctx, bad, &pc));
    rb_vnet_free(ctx, a), rb_vnet_free(ctx, net), rb_vnet_free(ctx, big), rb_vnet_free(ctx, tanh_net), rb_vnet_free(ctx, one);
}

/* ---- writing: atomic, errors named ----------------------------------------------------------------- */

static void test_save_errors(void **state)
{
    rb_context *ctx = *state;
    rb_vnet_config c = rb_vnet_config_default();
    rb_vnet *net = make_net(ctx, c);
    char p[8192], sub[8300];
    struct stat sb;
    /* nets the format does not hold: MgNet projections, a solver's operators */
    rb_test_suite_path(p, sizeof p, "unsupported.rbw");
    rb_vnet_config mc = rb_vnet_config_default();
    mc.coarse_solve = false, mc.projection = true, mc.cycle = RB_CYCLE_DOWN;
    rb_vnet *mgnet = make_net(ctx, mc);
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "do not hold feature projections", rb_vnet_save(ctx, mgnet, p));
    RB_EXPECT(ctx, RB_EUNSUPPORTED, "do not hold feature projections", rb_vnet_load(ctx, mgnet, p, false));
    assert_int_not_equal(stat(p, &sb), 0);
    rb_vnet_free(ctx, mgnet);
    /* into a directory that does not exist: nothing is created */
    rb_test_suite_path(p, sizeof p, "no-such-dir/w.rbw");
    RB_EXPECT(ctx, RB_EIO, "No such file or directory", rb_vnet_save(ctx, net, p));
    assert_non_null(strstr(rb_context_message(ctx), p));
    assert_int_not_equal(stat(p, &sb), 0);
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    /* the rename fails (the destination is a non-empty directory): the temporary file is removed */
    rb_test_suite_path(p, sizeof p, "occupied.rbw");
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(sub, sizeof sub, "%s/keep", p);
    rb_test_write_file(sub, "x", 1);
    RB_EXPECT(ctx, RB_EIO, "cannot rename", rb_vnet_save(ctx, net, p));
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    assert_int_equal(stat(sub, &sb), 0);
    /* an existing file is replaced whole: a net of another shape over it reads back as that net */
    rb_test_suite_path(p, sizeof p, "replaced.rbw");
    RB_CHECK(ctx, rb_vnet_save(ctx, net, p));
    c.n = 15, c.levels = 2;
    rb_vnet *small = make_net(ctx, c);
    RB_CHECK(ctx, rb_vnet_save(ctx, small, p));
    rb_vnet_config pc;
    RB_CHECK(ctx, rb_vnet_peek(ctx, p, &pc));
    assert_int_equal(pc.n, 15), assert_int_equal(pc.levels, 2);
    assert_int_equal(rb_test_count_tmp_files(rb_test_suite_dir()), 0);
    /* bad arguments */
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_vnet_save(ctx, NULL, p));
    RB_EXPECT(ctx, RB_ENULL, "NULL", rb_vnet_save(ctx, net, NULL));
    RB_EXPECT(ctx, RB_EINVAL, "empty", rb_vnet_save(ctx, net, ""));
    assert_int_equal(rb_vnet_save(NULL, net, p), RB_ENULL);
    rb_vnet_free(ctx, net), rb_vnet_free(ctx, small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_any_size_poisson, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_any_size_mapping, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_refused, rb_test_setup, rb_test_teardown),
        cmocka_unit_test_setup_teardown(test_save_errors, rb_test_setup, rb_test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
