/* cli.h — subcommands of the resbridge program; each is a thin face over the library. */
#ifndef RB_CLI_H
#define RB_CLI_H

#include "resbridge/resbridge.h"

typedef struct rb_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} rb_cli_command;

int rb_cli_demo(int argc, char **argv);
int rb_cli_poisson(int argc, char **argv);
int rb_cli_ode(int argc, char **argv);
int rb_cli_train(int argc, char **argv);
int rb_cli_eval(int argc, char **argv);
int rb_cli_learn_smoother(int argc, char **argv);
int rb_cli_vcycle(int argc, char **argv);

#endif
