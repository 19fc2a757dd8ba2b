/* demo.c — `resbridge demo` (placeholder entry; filled in below). */
#include "cli.h"
int rb_cli_demo(int argc, char **argv) { (void)argc, (void)argv; return 1; }
