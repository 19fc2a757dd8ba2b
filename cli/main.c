/* main.c — the resbridge command: dispatch to one file per subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const rb_cli_command commands[] = {
    {"demo", "the bridge end to end on small problems, each checked against its oracle", rb_cli_demo},
    {"ode", "a ResNet as a discretised ODE: integrators, gradients, checked against CVODE/CVODES", rb_cli_ode},
    {"poisson", "solve -div(a grad u) = f by multigrid (1D/2D/3D), checked against exact solutions or LAPACK", rb_cli_poisson},
    {"vcycle", "one V-cycle, two readings: the multigrid solver or the network (Poisson or saved weights)", rb_cli_vcycle},
    {"train", "train a ResNet, its plain twin or a residual MLP (Fashion-MNIST or synthetic data)", rb_cli_train},
    {"eval", "evaluate a trained network from its checkpoint", rb_cli_eval},
    {"learn-smoother", "train multigrid smoothers by backpropagation through the V-cycle (network mode)", rb_cli_learn_smoother},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: resbridge <command> [options]   (resbridge <command> --help)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    /* resbridge runs its own threads (--threads) and calls single-threaded BLAS;
     * the pthread OpenBLAS otherwise starts a pool at load time that spins and
     * takes a core. OPENBLAS_NUM_THREADS is read only at load, so unless the user
     * set it, set it to 1 and restart once. */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL && setenv("OPENBLAS_NUM_THREADS", "1", 1) == 0)
        execv("/proc/self/exe", argv); /* returns only on failure: then carry on */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("resbridge %s\n", RB_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "resbridge: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
