/* learn.c — multigrid learned by backpropagation through the network-mode cycle (learn.h). */
#include "resbridge/learn.h"

#include <gsl/gsl_rng.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "resbridge/train.h"
#include "resbridge/varstencil.h"

rb_learn_config rb_learn_config_default(void)
{
    return (rb_learn_config){.cycles = 6, .steps = 400, .lr = 0.01, .seed = 1};
}

/* Point-symmetric stencils: tap k and its mirror K - 1 - k share a value; class k for k <= centre. */
static size_t sym_class(size_t k, size_t taps) { return k <= taps / 2 ? k : taps - 1 - k; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* theta <-> B on one level. B_l = S theta S with S = diag(D_l)^{-1/2}: the weight of tap k at
 * point p is theta_k s_p s_q (q = p + offset_k), a conv's single weight theta_k s^2 when D_l is
 * constant. s holds D^{-1/2} per point of the level. */
typedef struct level_map {
    rb_op *B;
    size_t taps, points, dims, grid[3]; /* grid: D, H, W */
    double *s;
    bool var; /* B is a varstencil (point-dependent weights) */
} level_map;

/* The neighbour of p across tap k, or p itself outside the grid (where the input is zero). */
static size_t neighbour(const level_map *m, size_t p, size_t k)
{
    size_t c[3] = {p / (m->grid[1] * m->grid[2]), p / m->grid[2] % m->grid[1], p % m->grid[2]};
    for (size_t a = 0; a < m->dims; a++, k /= 3) {
        size_t axis = 2 - a;
        long x = (long)c[axis] + (long)(k % 3) - 1;
        if (x < 0 || x >= (long)m->grid[axis]) return p;
        c[axis] = (size_t)x;
    }
    return (c[0] * m->grid[1] + c[1]) * m->grid[2] + c[2];
}

static double scale(const level_map *m, size_t p, size_t k) { return m->s[p] * m->s[neighbour(m, p, k)]; }

static void theta_to_B(const level_map *m, const double *theta)
{
    for (size_t k = 0; k < m->taps; k++) {
        const double t = theta[sym_class(k, m->taps)];
        if (!m->var) m->B->params[k] = t * m->s[0] * m->s[0];
        else for (size_t p = 0; p < m->points; p++) m->B->params[k * m->points + p] = t * scale(m, p, k);
    }
}

/* theta from B (at the middle point), symmetrised: the mean of each pair */
static void B_to_theta(const level_map *m, double *theta)
{
    const size_t p0 = m->points / 2;
    memset(theta, 0, (m->taps / 2 + 1) * sizeof(double));
    for (size_t k = 0; k < m->taps; k++) {
        const double w = m->var ? m->B->params[k * m->points + p0] / scale(m, p0, k) : m->B->params[k] / (m->s[0] * m->s[0]);
        theta[sym_class(k, m->taps)] += (k == m->taps / 2 ? 1.0 : 0.5) * w;
    }
}

/* d/dtheta += from B's gradient */
static void grad_B_to_theta(const level_map *m, const double *gb, double *g)
{
    for (size_t k = 0; k < m->taps; k++) {
        double acc = 0;
        if (!m->var) acc = gb[k] * m->s[0] * m->s[0];
        else for (size_t p = 0; p < m->points; p++) acc += gb[k * m->points + p] * scale(m, p, k);
        g[sym_class(k, m->taps)] += acc;
    }
}

static void level_map_release(rb_context *ctx, level_map *m) { rb_free(ctx, m->s), m->s = NULL; }

static rb_status level_map_init(rb_context *ctx, const rb_vnet *net, size_t l, level_map *m)
{
    const rb_shape g = rb_vnet_shape(net, l);
    *m = (level_map){.B = rb_vnet_op(net, l, RB_VNET_B), .dims = (size_t)rb_vnet_config_of(net)->dim, .grid = {g.d, g.h, g.w}};
    m->points = g.d * g.h * g.w;
    int dims, taps, centre;
    rb_shape grid;
    m->var = rb_op_varstencil_info(m->B, &dims, &taps, &centre, &grid);
    m->taps = m->var ? (size_t)taps : m->B->nparams;
    m->s = rb_calloc(ctx, m->points, sizeof(double));
    if (m->s == NULL) return RB_ENOMEM;
    rb_status st = rb_vnet_diagonal(ctx, net, l, m->s);
    for (size_t p = 0; p < m->points && st == RB_OK; p++) {
        if (!(m->s[p] > 0) || !isfinite(m->s[p]))
            st = rb_fail(ctx, RB_EINVAL, "learned smoother: A's diagonal on level %zu is %g at point %zu (must be > 0)", l, m->s[p], p);
        else m->s[p] = 1.0 / sqrt(m->s[p]);
    }
    if (st != RB_OK) level_map_release(ctx, m);
    return st;
}

/* All smoothed levels: theta is per level (taps / 2 + 1 values). */
typedef struct learn_map {
    level_map level[16];
    size_t levels, per;
} learn_map;

static void learn_map_release(rb_context *ctx, learn_map *m)
{
    for (size_t l = 0; l < m->levels; l++) level_map_release(ctx, &m->level[l]);
}

static rb_status learn_map_init(rb_context *ctx, rb_vnet *net, learn_map *m)
{
    memset(m, 0, sizeof *m);
    const size_t smoothed = rb_vnet_config_of(net)->levels - 1;
    rb_status st = RB_OK;
    for (; m->levels < smoothed && st == RB_OK; m->levels++) st = level_map_init(ctx, net, m->levels, &m->level[m->levels]);
    if (st != RB_OK) {
        m->levels--;
        learn_map_release(ctx, m);
        return st;
    }
    m->per = m->level[0].taps / 2 + 1;
    return RB_OK;
}

static size_t map_count(const learn_map *m) { return m->levels * m->per; }

static rb_status check_learnable(rb_context *ctx, const rb_vnet *net, const char *fn)
{
    if (net == NULL) return rb_fail(ctx, RB_ENULL, "%s: net is NULL", fn);
    const rb_vnet_config *c = rb_vnet_config_of(net);
    if (c->channels != 1 || c->act != RB_ACT_IDENTITY || !c->coarse_solve)
        return rb_fail(ctx, RB_EINVAL, "%s: needs a net with C = 1, sigma = identity and a coarse solve (has C = %zu, %s, %s)", fn,
                       c->channels, rb_activation_name(c->act), c->coarse_solve ? "coarse solve" : "coarse smoothing");
    if (c->levels < 2) return rb_fail(ctx, RB_EINVAL, "%s: needs at least 2 levels", fn);
    if (c->norm != RB_NORM_NONE) return rb_fail(ctx, RB_EINVAL, "%s: needs a net without normalisation (has %s)", fn, rb_norm_kind_name(c->norm));
    return RB_OK;
}

/* One step's loss (1/(N k)) sum_b log(|r_b| / |f_b|) and its seed du = dL/du_k. */
static rb_status loss_and_seed(rb_context *ctx, const rb_op *A, const rb_tensor *f, const rb_tensor *u, rb_tensor *r,
                               rb_tensor *du, int k, double *loss, rb_arena *work)
{
    rb_status st = rb_vcycle_residual(ctx, A, u, f, r, NULL, work);
    if (st != RB_OK) return st;
    const size_t N = f->shape.n, m = rb_tensor_count(f) / N;
    double L = 0;
    for (size_t b = 0; b < N; b++) {
        double rr = 0, ff = 0;
        for (size_t i = 0; i < m; i++) rr += r->data[b * m + i] * r->data[b * m + i], ff += f->data[b * m + i] * f->data[b * m + i];
        if (!(rr > 0) || !isfinite(rr)) return rb_fail(ctx, RB_EDIVERGED, "rb_learn_smoother: residual norm^2 = %g", rr);
        L += 0.5 * log(rr / ff);
        /* d/dr of log|r| / (N k) is r / (|r|^2 N k); r = f - A u, so du = -A^T of it */
        for (size_t i = 0; i < m; i++) r->data[b * m + i] /= rr * (double)N * (double)k;
    }
    *loss = L / ((double)N * (double)k);
    memset(du->data, 0, rb_tensor_count(du) * sizeof(double));
    return rb_op_vjp(ctx, A, u, r, -1.0, du, work);
}

rb_status rb_learn_smoother(rb_context *ctx, rb_vnet *net, const rb_learn_config *cfg, rb_learn_report *report)
{
    if (ctx == NULL) return RB_ENULL;
    if (cfg == NULL) return rb_fail(ctx, RB_ENULL, "rb_learn_smoother: cfg is NULL");
    rb_status st = check_learnable(ctx, net, "rb_learn_smoother");
    if (st != RB_OK) return st;
    if (cfg->cycles < 1 || cfg->cycles > 32) return rb_fail(ctx, RB_EINVAL, "rb_learn_smoother: cycles = %d, must be 1..32", cfg->cycles);
    if (cfg->steps < 1) return rb_fail(ctx, RB_EINVAL, "rb_learn_smoother: steps = %d, must be >= 1", cfg->steps);
    if (!(cfg->lr > 0) || !isfinite(cfg->lr)) return rb_fail(ctx, RB_EINVAL, "rb_learn_smoother: lr = %g, must be > 0", cfg->lr);
    learn_map m;
    st = learn_map_init(ctx, net, &m);
    if (st != RB_OK) return st;
    const size_t nt = map_count(&m);
    const rb_shape s = rb_vnet_shape(net, 0);
    rb_tensor f = {0}, u = {0}, r = {0}, du = {0};
    double *theta = rb_calloc(ctx, 2 * nt, sizeof(double)), *g = theta ? theta + nt : NULL;
    rb_optimizer opt = {0};
    rb_arena work = {0};
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (theta == NULL || rng == NULL) st = rb_fail(ctx, RB_ENOMEM, "rb_learn_smoother: out of memory");
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &f, s);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, s);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &r, s);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &du, s);
    if (st == RB_OK) st = rb_arena_reserve(ctx, &work, rb_op_workspace(rb_vnet_op(net, 0, RB_VNET_A), s) + 4096);
    rb_optimizer_config oc = rb_optimizer_config_default(RB_OPT_ADAM);
    if (st == RB_OK) st = rb_optimizer_init(ctx, &opt, &oc, nt);
    rb_lr_schedule sched = {RB_LR_COSINE, cfg->lr, (uint64_t)cfg->steps, 1.0, cfg->lr / 20};
    rb_learn_report local, *rep = report ? report : &local;
    memset(rep, 0, sizeof *rep);
    const double t0 = now();
    double tail = 0;
    int ntail = 0;
    if (st == RB_OK) {
        gsl_rng_set(rng, cfg->seed);
        for (size_t l = 0; l < m.levels; l++) B_to_theta(&m.level[l], theta + l * m.per);
        for (size_t l = 0; l < m.levels; l++) theta_to_B(&m.level[l], theta + l * m.per);
    }
    for (int step = 0; step < cfg->steps && st == RB_OK; step++) {
        for (size_t i = 0; i < rb_tensor_count(&f); i++) f.data[i] = 2 * gsl_rng_uniform(rng) - 1;
        double L = 0;
        st = rb_vnet_forward(ctx, net, &f, NULL, &u, cfg->cycles, true);
        if (st == RB_OK) st = loss_and_seed(ctx, rb_vnet_op(net, 0, RB_VNET_A), &f, &u, &r, &du, cfg->cycles, &L, &work);
        if (st == RB_OK) {
            rb_vnet_zero_grad(net);
            st = rb_vnet_backward(ctx, net, &du, NULL, NULL);
        }
        if (st != RB_OK) break;
        memset(g, 0, nt * sizeof(double));
        for (size_t l = 0; l < m.levels; l++) grad_B_to_theta(&m.level[l], rb_vnet_grad(net, m.level[l].B), g + l * m.per);
        st = rb_optimizer_step(ctx, &opt, theta, g, rb_lr_at(&sched, (uint64_t)step));
        if (st != RB_OK) break;
        for (size_t l = 0; l < m.levels; l++) theta_to_B(&m.level[l], theta + l * m.per);
        if (step == 0) rep->loss_first = L;
        if (step >= cfg->steps - 10) tail += L, ntail++;
        rep->steps = step + 1;
    }
    if (ntail > 0) rep->loss_last = tail / ntail;
    rep->seconds = now() - t0;
    gsl_rng_free(rng);
    rb_optimizer_release(ctx, &opt);
    rb_arena_release(ctx, &work);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u), rb_tensor_release(ctx, &r), rb_tensor_release(ctx, &du);
    rb_free(ctx, theta);
    learn_map_release(ctx, &m);
    return st;
}

rb_status rb_vnet_copy_smoothers(rb_context *ctx, const rb_vnet *from, rb_vnet *to)
{
    if (ctx == NULL) return RB_ENULL;
    rb_status st = check_learnable(ctx, from, "rb_vnet_copy_smoothers (from)");
    if (st == RB_OK) st = check_learnable(ctx, to, "rb_vnet_copy_smoothers (to)");
    if (st != RB_OK) return st;
    const rb_vnet_config *a = rb_vnet_config_of(from), *b = rb_vnet_config_of(to);
    if (a->dim != b->dim) return rb_fail(ctx, RB_EINVAL, "rb_vnet_copy_smoothers: dim %d to dim %d", a->dim, b->dim);
    learn_map ma, mb;
    st = learn_map_init(ctx, (rb_vnet *)from, &ma);
    if (st != RB_OK) return st;
    st = learn_map_init(ctx, to, &mb);
    if (st != RB_OK) {
        learn_map_release(ctx, &ma);
        return st;
    }
    double theta[16];
    for (size_t l = 0; l < mb.levels; l++) {
        const size_t n = rb_vnet_shape(to, l).w;
        size_t src = 0;
        while (src + 1 < ma.levels && rb_vnet_shape(from, src).w > n) src++;
        B_to_theta(&ma.level[src], theta);
        theta_to_B(&mb.level[l], theta);
    }
    learn_map_release(ctx, &ma), learn_map_release(ctx, &mb);
    return rb_vnet_set_step(ctx, to, rb_vnet_vcycle(from)->level[0].pre[0].h);
}

rb_status rb_vnet_measure_factor(rb_context *ctx, rb_vnet *net, unsigned long seed, int max_cycles, double *factor)
{
    if (ctx == NULL) return RB_ENULL;
    if (net == NULL || factor == NULL) return rb_fail(ctx, RB_ENULL, "rb_vnet_measure_factor: net or factor is NULL");
    if (max_cycles < 2 || max_cycles >= RB_MG_MAX_HISTORY)
        return rb_fail(ctx, RB_EINVAL, "rb_vnet_measure_factor: max_cycles = %d, must be 2..%d", max_cycles, RB_MG_MAX_HISTORY - 1);
    const rb_shape s = rb_vnet_shape(net, 0);
    rb_tensor f = {0}, u = {0};
    rb_status st = rb_tensor_alloc(ctx, &f, s);
    if (st == RB_OK) st = rb_tensor_alloc(ctx, &u, s);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (st == RB_OK && rng == NULL) st = rb_fail(ctx, RB_ENOMEM, "rb_vnet_measure_factor: no random number generator");
    rb_mg_report rep;
    if (st == RB_OK) {
        gsl_rng_set(rng, seed);
        for (size_t i = 0; i < rb_tensor_count(&f); i++) f.data[i] = 2 * gsl_rng_uniform(rng) - 1;
        st = rb_vnet_solve(ctx, net, &f, &u, 1e-12, max_cycles, &rep);
        if (st == RB_EMAXITER || st == RB_EDIVERGED) st = RB_OK; /* the factor is what is asked for */
    }
    if (st == RB_OK) {
        *factor = rep.convergence_factor;
        if (!(rep.convergence_factor < 1))
            st = rb_fail(ctx, RB_EDIVERGED, "the cycle does not converge: its asymptotic factor is %.4g >= 1 (over %d cycle%s)",
                         rep.convergence_factor, rep.cycles, rep.cycles == 1 ? "" : "s");
    }
    if (rng) gsl_rng_free(rng);
    rb_tensor_release(ctx, &f), rb_tensor_release(ctx, &u);
    return st;
}
