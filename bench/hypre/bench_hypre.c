/* bench_hypre.c — hypre's PFMG on the Poisson problem resbridge's multigrid solves,
 * the peer side of a side-by-side comparison.
 *
 * Problem: -Delta u = 1 on the unit square (--dim 2) or cube (--dim 3), n interior
 * points per direction (n = 2^k - 1), h = 1/(n+1), 5-/7-point stencil scaled by
 * 1/h^2, zero Dirichlet boundary (couplings to boundary points are dropped: those
 * stencil coefficients are set to zero), zero initial guess, stop at
 * ||b - A x||_2 / ||b||_2 < 1e-8.
 *
 * hypre Struct interface, one box per rank: slabs along the slowest dimension
 * (y in 2D, z in 3D). Interior points have global indices 1..n, so the boundary
 * sits at 0 and n+1 and PFMG's coarse points (even indices) form the nested
 * vertex-centred grids 2,4,..,n-1 (--base 0 shifts the indices to 0..n-1, which
 * makes PFMG keep the points next to the boundary instead; see README.md).
 *
 * Configurations (--config):
 *   pfmg      PFMG as solver, hypre's defaults: weighted Jacobi, Galerkin coarse
 *             operators, 1 pre / 1 post sweep, skip relaxation on alternate levels
 *   pfmg-rb   PFMG as solver with red-black Gauss-Seidel, nonsymmetric sweeps
 *             (relax type 3), V(1,1) in 2D and V(2,1) in 3D (hypre always uses the
 *             non-Galerkin 5-/7-point coarse operators with red-black relaxation)
 *   pcg-pfmg  PCG (2-norm residual criterion) preconditioned by one PFMG V(1,1)
 *             cycle with symmetric red-black Gauss-Seidel (relax type 2), tol 0,
 *             zero initial guess
 *   all       the three, one after another
 * Every relaxation setting can be overridden (--relax, --rap, --pre, --post,
 * --skip, --sym); the defaults are the best measured on the development machine
 * (README.md).
 *
 * Timing: every repetition creates the solver, sets it up (seconds_setup) and
 * solves from x = 0 (seconds_solve), each phase between MPI barriers, wall clock
 * from MPI_Wtime on rank 0. Reported: the best setup, the best solve, and the best
 * setup+solve of one repetition (seconds_total) over --reps. Matrix assembly
 * (the problem, not the solver) is reported apart as seconds_assemble.
 * After every solve the relative residual is recomputed here with
 * HYPRE_StructMatrixMatvec and checked against the tolerance; rel_residual is that
 * value (hypre's own figure is hypre_rel_residual).
 *
 *   mpirun --allow-run-as-root -np 2 ./build-hypre/bench_hypre --dim 2 --n 1023 --config all
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

/* hypre's headers declare e.g. HYPRE_Init() without a prototype. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "HYPRE.h"
#include "HYPRE_struct_ls.h"
#include "HYPRE_utilities.h"
#pragma GCC diagnostic pop

#define TOL 1e-8
#define MAX_ITER 1000
#define MAX_REPS 1000

typedef struct problem {
    MPI_Comm comm;
    int rank, nranks;
    int dim, n, base, sym;
    HYPRE_Int lower[3], upper[3]; /* this rank's box */
    long long local_points;
    HYPRE_StructGrid grid;
    HYPRE_StructStencil stencil;
    HYPRE_StructMatrix A;
    HYPRE_StructVector b, x, r;
    double seconds_assemble;
} problem;

/* -1 = the configuration's default */
typedef struct settings {
    int relax, rap, pre, post, skip;
} settings;

typedef struct result {
    int iterations;
    double hypre_rel, true_rel;
    double setup, solve;
} result;

static void die(const problem *p, const char *what)
{
    if (!p || p->rank == 0)
        fprintf(stderr, "bench_hypre: %s\n", what);
    MPI_Abort(MPI_COMM_WORLD, 2);
}

static void check(HYPRE_Int err, const char *call)
{
    if (err) {
        char msg[256];
        HYPRE_DescribeError(err, msg);
        fprintf(stderr, "bench_hypre: %s failed: %s\n", call, msg);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
}
#define H(call) check((call), #call)

/* points of the box in the directions below the slowest one (one "plane") */
static long long plane_points(const problem *p)
{
    long long m = 1;
    for (int d = 0; d < p->dim - 1; d++)
        m *= (long long)(p->upper[d] - p->lower[d] + 1);
    return m;
}

static void build(problem *p)
{
    const int dim = p->dim, n = p->n, s = dim - 1; /* slab direction */
    if (p->nranks > n)
        die(p, "more ranks than grid planes");
    for (int d = 0; d < dim; d++) {
        p->lower[d] = p->base;
        p->upper[d] = p->base + n - 1;
    }
    p->lower[s] = p->base + (HYPRE_Int)((long long)p->rank * n / p->nranks);
    p->upper[s] = p->base + (HYPRE_Int)((long long)(p->rank + 1) * n / p->nranks) - 1;
    p->local_points = plane_points(p) * (p->upper[s] - p->lower[s] + 1);

    MPI_Barrier(p->comm);
    double t0 = MPI_Wtime();

    H(HYPRE_StructGridCreate(p->comm, dim, &p->grid));
    H(HYPRE_StructGridSetExtents(p->grid, p->lower, p->upper));
    H(HYPRE_StructGridAssemble(p->grid));

    /* entries: 0 centre, then -x, +x, -y, +y (, -z, +z) */
    const int nent = 2 * dim + 1;
    H(HYPRE_StructStencilCreate(dim, nent, &p->stencil));
    HYPRE_Int off[3] = { 0, 0, 0 };
    H(HYPRE_StructStencilSetElement(p->stencil, 0, off));
    for (int d = 0; d < dim; d++)
        for (int side = 0; side < 2; side++) {
            off[0] = off[1] = off[2] = 0;
            off[d] = side ? 1 : -1;
            H(HYPRE_StructStencilSetElement(p->stencil, 1 + 2 * d + side, off));
        }

    H(HYPRE_StructMatrixCreate(p->comm, p->grid, p->stencil, &p->A));
    H(HYPRE_StructMatrixSetSymmetric(p->A, p->sym));
    H(HYPRE_StructMatrixInitialize(p->A));

    const double ih2 = (double)(n + 1) * (double)(n + 1);
    const long long pp = plane_points(p);
    double *values = malloc((size_t)pp * (size_t)nent * sizeof *values);
    if (!values)
        die(p, "out of memory");
    HYPRE_Int entries[7];
    for (int e = 0; e < nent; e++)
        entries[e] = e;
    const HYPRE_Int first = p->base, last = p->base + n - 1;
    for (HYPRE_Int k = p->lower[s]; k <= p->upper[s]; k++) {
        HYPRE_Int lo[3], hi[3];
        memcpy(lo, p->lower, sizeof lo);
        memcpy(hi, p->upper, sizeof hi);
        lo[s] = hi[s] = k;
        long long m = 0;
        HYPRE_Int idx[3] = { 0, 0, k };
        if (dim == 2)
            idx[1] = k;
        const HYPRE_Int jlo = dim == 3 ? lo[1] : 0, jhi = dim == 3 ? hi[1] : 0;
        for (HYPRE_Int j = jlo; j <= jhi; j++) {
            if (dim == 3)
                idx[1] = j;
            for (HYPRE_Int i = lo[0]; i <= hi[0]; i++, m++) {
                idx[0] = i;
                double *v = values + m * nent;
                v[0] = 2.0 * dim * ih2;
                for (int d = 0; d < dim; d++) {
                    v[1 + 2 * d] = idx[d] == first ? 0.0 : -ih2;
                    v[2 + 2 * d] = idx[d] == last ? 0.0 : -ih2;
                }
            }
        }
        H(HYPRE_StructMatrixSetBoxValues(p->A, lo, hi, nent, entries, values));
    }
    free(values);
    H(HYPRE_StructMatrixAssemble(p->A));

    HYPRE_StructVector *vecs[3] = { &p->b, &p->x, &p->r };
    for (int v = 0; v < 3; v++) {
        H(HYPRE_StructVectorCreate(p->comm, p->grid, vecs[v]));
        H(HYPRE_StructVectorInitialize(*vecs[v]));
        H(HYPRE_StructVectorSetConstantValues(*vecs[v], v == 0 ? 1.0 : 0.0));
        H(HYPRE_StructVectorAssemble(*vecs[v]));
    }
    MPI_Barrier(p->comm);
    p->seconds_assemble = MPI_Wtime() - t0;
}

static void destroy(problem *p)
{
    HYPRE_StructVectorDestroy(p->r);
    HYPRE_StructVectorDestroy(p->x);
    HYPRE_StructVectorDestroy(p->b);
    HYPRE_StructMatrixDestroy(p->A);
    HYPRE_StructStencilDestroy(p->stencil);
    HYPRE_StructGridDestroy(p->grid);
}

/* global sum of squares of a vector, read plane by plane through the public interface */
static double norm2(const problem *p, HYPRE_StructVector v)
{
    const int s = p->dim - 1;
    const long long pp = plane_points(p);
    double *buf = malloc((size_t)pp * sizeof *buf);
    if (!buf)
        die(p, "out of memory");
    double local = 0.0;
    for (HYPRE_Int k = p->lower[s]; k <= p->upper[s]; k++) {
        HYPRE_Int lo[3], hi[3];
        memcpy(lo, p->lower, sizeof lo);
        memcpy(hi, p->upper, sizeof hi);
        lo[s] = hi[s] = k;
        H(HYPRE_StructVectorGetBoxValues(v, lo, hi, buf));
        for (long long m = 0; m < pp; m++)
            local += buf[m] * buf[m];
    }
    free(buf);
    double global = 0.0;
    MPI_Allreduce(&local, &global, 1, MPI_DOUBLE, MPI_SUM, p->comm);
    return sqrt(global);
}

/* ||b - A x|| / ||b||, computed here (r = b; r = -A x + r) */
static double true_rel_residual(const problem *p)
{
    H(HYPRE_StructVectorSetConstantValues(p->r, 1.0)); /* = b */
    H(HYPRE_StructMatrixMatvec(-1.0, p->A, p->x, 1.0, p->r));
    return norm2(p, p->r) / norm2(p, p->b);
}

/* u at the centre point (n odd), for checking the problem against the continuous solution */
static double centre_value(const problem *p)
{
    const HYPRE_Int c = p->base + p->n / 2, s = p->dim - 1;
    HYPRE_Int idx[3] = { c, c, c };
    double v = 0.0, global = 0.0;
    if (c >= p->lower[s] && c <= p->upper[s])
        H(HYPRE_StructVectorGetValues(p->x, idx, &v));
    MPI_Allreduce(&v, &global, 1, MPI_DOUBLE, MPI_SUM, p->comm);
    return global;
}

typedef enum { CFG_PFMG, CFG_PFMG_RB, CFG_PCG_PFMG, CFG_COUNT } config;
static const char *const config_names[CFG_COUNT] = { "pfmg", "pfmg-rb", "pcg-pfmg" };

/* the configuration's defaults, overridden by the command line's settings */
static settings resolve(config c, int dim, settings over)
{
    settings s;
    switch (c) {
    case CFG_PFMG: /* hypre's defaults */
        s = (settings){ .relax = 1, .rap = 0, .pre = 1, .post = 1, .skip = 1 };
        break;
    case CFG_PFMG_RB:
        /* best measured (README.md): the nonsymmetric red-black sweeps (red then black,
         * before and after the coarse grid) take about half the V-cycles of the symmetric
         * ones; V(1,1) in 2D, V(2,1) in 3D */
        s = (settings){ .relax = 3, .rap = 1, .pre = dim == 3 ? 2 : 1, .post = 1, .skip = 1 };
        break;
    default: /* CFG_PCG_PFMG */
        /* CG needs a symmetric preconditioner: symmetric red-black sweeps, V(1,1)
         * (with relax type 3 PCG stagnates in 2D, README.md) */
        s = (settings){ .relax = 2, .rap = 1, .pre = 1, .post = 1, .skip = 1 };
        break;
    }
    if (over.relax >= 0) s.relax = over.relax;
    if (over.rap >= 0) s.rap = over.rap;
    if (over.pre >= 0) s.pre = over.pre;
    if (over.post >= 0) s.post = over.post;
    if (over.skip >= 0) s.skip = over.skip;
    /* hypre's PFMG uses the non-Galerkin coarse operators whenever relaxation is red-black */
    if (s.relax == 2 || s.relax == 3)
        s.rap = 1;
    return s;
}

static void pfmg_settings(HYPRE_StructSolver pf, settings s)
{
    H(HYPRE_StructPFMGSetRelaxType(pf, s.relax));
    H(HYPRE_StructPFMGSetRAPType(pf, s.rap));
    H(HYPRE_StructPFMGSetNumPreRelax(pf, s.pre));
    H(HYPRE_StructPFMGSetNumPostRelax(pf, s.post));
    H(HYPRE_StructPFMGSetSkipRelax(pf, s.skip));
}

static result run_once(problem *p, config c, settings s, int verbose)
{
    result res = { 0 };
    HYPRE_StructSolver solver = NULL, precond = NULL;
    H(HYPRE_StructVectorSetConstantValues(p->x, 0.0));

    MPI_Barrier(p->comm);
    double t0 = MPI_Wtime();
    if (c == CFG_PCG_PFMG) {
        H(HYPRE_StructPCGCreate(p->comm, &solver));
        H(HYPRE_StructPCGSetTol(solver, TOL));
        H(HYPRE_StructPCGSetMaxIter(solver, MAX_ITER));
        H(HYPRE_StructPCGSetTwoNorm(solver, 1)); /* stop on ||r||_2 / ||b||_2 */
        H(HYPRE_StructPCGSetRelChange(solver, 0));
        H(HYPRE_StructPCGSetLogging(solver, 1));
        H(HYPRE_StructPCGSetPrintLevel(solver, verbose ? 2 : 0));
        H(HYPRE_StructPFMGCreate(p->comm, &precond));
        H(HYPRE_StructPFMGSetMaxIter(precond, 1));
        H(HYPRE_StructPFMGSetTol(precond, 0.0));
        H(HYPRE_StructPFMGSetZeroGuess(precond));
        pfmg_settings(precond, s);
        H(HYPRE_StructPCGSetPrecond(solver, HYPRE_StructPFMGSolve, HYPRE_StructPFMGSetup, precond));
        H(HYPRE_StructPCGSetup(solver, p->A, p->b, p->x));
    } else {
        H(HYPRE_StructPFMGCreate(p->comm, &solver));
        H(HYPRE_StructPFMGSetTol(solver, TOL)); /* relative: ||r||_2 / ||b||_2 */
        H(HYPRE_StructPFMGSetMaxIter(solver, MAX_ITER));
        H(HYPRE_StructPFMGSetRelChange(solver, 0));
        H(HYPRE_StructPFMGSetZeroGuess(solver)); /* x is zero: saves the first sweep's A x */
        pfmg_settings(solver, s);
        H(HYPRE_StructPFMGSetLogging(solver, 1));
        H(HYPRE_StructPFMGSetPrintLevel(solver, verbose ? 1 : 0));
        H(HYPRE_StructPFMGSetup(solver, p->A, p->b, p->x));
    }
    MPI_Barrier(p->comm);
    double t1 = MPI_Wtime();
    HYPRE_Int its = 0;
    /* a solver that has not converged within MAX_ITER returns an error: the residual is
     * checked below instead */
    if (c == CFG_PCG_PFMG)
        HYPRE_StructPCGSolve(solver, p->A, p->b, p->x);
    else
        HYPRE_StructPFMGSolve(solver, p->A, p->b, p->x);
    MPI_Barrier(p->comm);
    double t2 = MPI_Wtime();
    HYPRE_ClearAllErrors();

    if (c == CFG_PCG_PFMG) {
        H(HYPRE_StructPCGGetNumIterations(solver, &its));
        H(HYPRE_StructPCGGetFinalRelativeResidualNorm(solver, &res.hypre_rel));
        HYPRE_StructPCGDestroy(solver);
        HYPRE_StructPFMGDestroy(precond);
    } else {
        H(HYPRE_StructPFMGGetNumIterations(solver, &its));
        H(HYPRE_StructPFMGGetFinalRelativeResidualNorm(solver, &res.hypre_rel));
        HYPRE_StructPFMGDestroy(solver);
    }
    res.iterations = (int)its;
    res.setup = t1 - t0;
    res.solve = t2 - t1;
    res.true_rel = true_rel_residual(p);
    return res;
}

static void run_config(problem *p, config c, settings over, int reps, int verbose)
{
    settings s = resolve(c, p->dim, over);
    double best_setup = INFINITY, best_solve = INFINITY, best_total = INFINITY;
    result last = { 0 };
    int ok = 1;
    for (int rep = 0; rep < reps; rep++) {
        result r = run_once(p, c, s, verbose && rep == 0);
        if (r.setup < best_setup) best_setup = r.setup;
        if (r.solve < best_solve) best_solve = r.solve;
        if (r.setup + r.solve < best_total) best_total = r.setup + r.solve;
        if (!(r.true_rel <= TOL) || r.iterations >= MAX_ITER)
            ok = 0;
        double centre = verbose ? centre_value(p) : 0.0;
        if (p->rank == 0 && verbose)
            fprintf(stderr, "# %s rep %d: %d its, setup %.4f s, solve %.4f s, rel %.3e (hypre %.3e), u(centre) %.10f\n",
                    config_names[c], rep, r.iterations, r.setup, r.solve, r.true_rel, r.hypre_rel, centre);
        last = r;
    }
    if (p->rank == 0) {
        if (c == CFG_PCG_PFMG && s.relax == 3)
            fprintf(stderr, "bench_hypre: warning: relax type 3 makes the preconditioner nonsymmetric\n");
        if (!ok)
            fprintf(stderr, "bench_hypre: %s did not reach ||b - A x|| / ||b|| <= %g\n", config_names[c], TOL);
        printf("{\"peer\":\"hypre\",\"config\":\"%s\",\"dim\":%d,\"n\":%d,\"ranks\":%d,"
               "\"iterations\":%d,\"rel_residual\":%.6e,"
               "\"seconds_setup\":%.6f,\"seconds_solve\":%.6f,\"seconds_total\":%.6f,"
               "\"hypre_rel_residual\":%.6e,\"converged\":%s,\"reps\":%d,\"seconds_assemble\":%.6f,"
               "\"relax_type\":%d,\"rap_type\":%d,\"pre\":%d,\"post\":%d,\"skip_relax\":%d,"
               "\"symmetric_storage\":%d,\"index_base\":%d,\"hypre\":\"%s\"}\n",
               config_names[c], p->dim, p->n, p->nranks, last.iterations, last.true_rel, best_setup,
               best_solve, best_total, last.hypre_rel, ok ? "true" : "false", reps, p->seconds_assemble,
               s.relax, s.rap, s.pre, s.post, s.skip, p->sym, p->base, HYPRE_RELEASE_VERSION);
        fflush(stdout);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_hypre [--dim 2|3] [--n N] [--reps R] [--config pfmg|pfmg-rb|pcg-pfmg|all]\n"
            "                   [--relax 0-3] [--rap 0|1] [--pre K] [--post K] [--skip 0|1]\n"
            "                   [--sym 0|1] [--base 0|1] [--verbose]\n"
            "  defaults: --dim 2 --n 1023 --reps 3 --config all --sym 1 --base 1\n");
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    problem p = { .comm = MPI_COMM_WORLD, .dim = 2, .n = 1023, .base = 1, .sym = 1 };
    MPI_Comm_rank(p.comm, &p.rank);
    MPI_Comm_size(p.comm, &p.nranks);

    int reps = 3, verbose = 0, which = -1; /* -1 = all */
    settings over = { -1, -1, -1, -1, -1 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--verbose")) {
            verbose = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (p.rank == 0)
                usage();
            MPI_Finalize();
            return 0;
        }
        if (!v) {
            ok = 0;
        } else if (!strcmp(a, "--dim")) {
            ok = parse_int(v, 2, 3, &p.dim);
        } else if (!strcmp(a, "--n")) {
            ok = parse_int(v, 1, 1 << 20, &p.n);
        } else if (!strcmp(a, "--reps")) {
            ok = parse_int(v, 1, MAX_REPS, &reps);
        } else if (!strcmp(a, "--config")) {
            which = -2;
            if (!strcmp(v, "all"))
                which = -1;
            for (int c = 0; c < CFG_COUNT; c++)
                if (!strcmp(v, config_names[c]))
                    which = c;
            ok = which != -2;
        } else if (!strcmp(a, "--relax")) {
            ok = parse_int(v, 0, 3, &over.relax);
        } else if (!strcmp(a, "--rap")) {
            ok = parse_int(v, 0, 1, &over.rap);
        } else if (!strcmp(a, "--pre")) {
            ok = parse_int(v, 0, 10, &over.pre);
        } else if (!strcmp(a, "--post")) {
            ok = parse_int(v, 0, 10, &over.post);
        } else if (!strcmp(a, "--skip")) {
            ok = parse_int(v, 0, 1, &over.skip);
        } else if (!strcmp(a, "--sym")) {
            ok = parse_int(v, 0, 1, &p.sym);
        } else if (!strcmp(a, "--base")) {
            ok = parse_int(v, 0, 1, &p.base);
        } else {
            ok = 0;
        }
        if (!ok) {
            if (p.rank == 0) {
                fprintf(stderr, "bench_hypre: bad argument %s%s%s\n", a, v ? " " : "", v ? v : "");
                usage();
            }
            MPI_Finalize();
            return 1;
        }
        i++;
    }

    H(HYPRE_Init());
    build(&p);
    if (p.rank == 0 && verbose)
        fprintf(stderr, "# %dD n=%d, %d ranks, %lld points on rank 0, assembly %.3f s\n", p.dim, p.n,
                p.nranks, p.local_points, p.seconds_assemble);
    for (int c = 0; c < CFG_COUNT; c++)
        if (which < 0 || which == c)
            run_config(&p, (config)c, over, reps, verbose);
    destroy(&p);
    HYPRE_Finalize();
    MPI_Finalize();
    return 0;
}
