#!/bin/bash
# run_learned.sh — the learned-smoother cycle (network mode, smoothers learned on n = 127 by
# backpropagation and reused as they are) as a solver on 2D n = 1023: time to
# ||f - A u|| <= 1e-8 ||f|| for -Delta u = 1, zero Dirichlet values and initial guess, against the
# fixed damped-Jacobi cycle (network and MG mode), the MG solver's RB-GS V(2,1) and hypre PFMG
# (best of its configurations: defaults, red-black relaxation, PCG + PFMG), side by side,
# ROUNDS alternating rounds, 1 and 2 cores (resbridge threads; hypre MPI ranks).
#
#     bench/run_learned.sh                      # Markdown table on stdout
#     CORES=1 ROUNDS=1 STEPS=100 bench/run_learned.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
ROUNDS=${ROUNDS:-2}
CORES=${CORES:-"1 2"}
STEPS=${STEPS:-300}
N=${N:-1023}
PYTHON=${PYTHON:-/usr/bin/python3}

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target bench_learned -j2 >/dev/null
HAVE_HYPRE=1
cmake --build "$BUILD" --target bench_hypre -j2 >/dev/null 2>&1 || HAVE_HYPRE=0
[ -x "$BUILD/bench_hypre" ] || HAVE_HYPRE=0

RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
for T in $CORES; do
  for r in $(seq "$ROUNDS"); do
    "$BUILD/bench_learned" --n "$N" --steps "$STEPS" --threads "$T" --reps 3 >>"$RUNS"
    if [ "$HAVE_HYPRE" = 1 ]; then
      mpirun --allow-run-as-root --oversubscribe -np "$T" "$BUILD/bench_hypre" --dim 2 --n "$N" --reps 2 --config all \
        2>/dev/null >>"$RUNS"
    fi
  done
done

"$PYTHON" - "$RUNS" "$ROUNDS" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("peer") == "hypre":
        if not d["converged"]:
            continue
        key = ("hypre PFMG (best: %s)" % d["config"], d["ranks"])
        name, t = "hypre", d["ranks"]
    else:
        name, t = d["solver"], d["threads"]
    key = (name, t)
    if key not in best or d["seconds_solve"] < best[key]["seconds_solve"]:
        best[key] = d
print(f"Best of {sys.argv[2]} alternating rounds (resbridge: best of 3 solves per run; hypre: best of 2 per run and of "
      "its configurations). Solve times, set-up apart; ratio = hypre / solver.\n")
print("| solver | cores | cycles | factor | seconds | hypre / solver |")
print("|---|---:|---:|---:|---:|---:|")
for (name, t) in sorted(best, key=lambda k: (k[1], k[0] != "hypre", k[0])):
    d = best[(name, t)]
    h = best.get(("hypre", t))
    label = f"hypre PFMG ({d['config']})" if name == "hypre" else name
    cyc = d.get("iterations", d.get("cycles"))
    fac = f"{d['convergence_factor']:.3f}" if "convergence_factor" in d else "-"
    ratio = f"{h['seconds_solve'] / d['seconds_solve']:.2f}" if h else "-"
    print(f"| {label} | {t} | {cyc} | {fac} | {d['seconds_solve']:.4f} | {ratio} |")
tr = [d for d in best.values() if "train_seconds" in d]
if tr:
    d = tr[0]
    print(f"\nSmoothers learned on n = {d['train_n']} in {d['train_steps']} Adam steps ({d['train_seconds']:.1f} s, final loss "
          f"{d['train_loss']:.3f} = log of the mean residual reduction per cycle), reused on n = {d['n']} without retraining.")
PY
