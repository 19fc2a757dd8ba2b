#!/bin/bash
# run_poisson.sh — resbridge's multigrid solver against hypre PFMG, side by side: time to
# ||f - A u|| <= 1e-8 ||f|| for -Delta u = 1 (zero Dirichlet values, zero initial guess) on
# 2D n = 1023, 2047 and 3D n = 127, 255, with 1 and 2 cores (resbridge: OpenMP threads;
# hypre: MPI ranks, one thread each), and the smoother's bandwidth against a STREAM triad.
#
# Builds bench_poisson and bench_hypre (Release, in $BUILD), then for every case runs, ROUNDS
# times and alternating (so both see the same machine), resbridge in each of its
# configurations (every core count in one process, solves alternating between them, so that
# two cores against one is measured in the same minutes) and, per core count, hypre in each of
# its (bench_hypre --config all: PFMG with hypre's defaults, PFMG with red-black Gauss-Seidel,
# CG preconditioned by PFMG). Each side keeps its best configuration and its best solve;
# setup (hierarchy, coarse operators, factorisation) is timed apart on both sides. Prints a
# Markdown table (ratio = hypre s / resbridge s).
#
#     bench/run_poisson.sh                           # table on stdout
#     ROUNDS=3 bench/run_poisson.sh --json runs.jsonl  # also keep every JSON line
#     CASES="2:1023" CORES=1 bench/run_poisson.sh     # one case
#
# The machine's load matters (2 cores shared with other work): the table reports the
# 1-minute load average seen by every run; rerun when it was above ~0.3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-5}                 # solves per resbridge run (best kept)
HYPRE_REPS=${HYPRE_REPS:-2}     # set-up + solve per hypre run and configuration
CASES=${CASES:-"2:1023 2:2047 3:127 3:255"}
CORES=${CORES:-"1 2"}
SWEEP_N=${SWEEP_N:-2047}
PYTHON=${PYTHON:-/usr/bin/python3}
# resbridge configurations, separated by '|': RB-GS V(2,1) (the default), red-black SOR
# (over-relaxed Gauss-Seidel smoothing, which takes fewer cycles), and SOR with the finest level
# smoothed (0, 3) over coarse V(1,2) or V(2,1) (--fine-pre 0: one pass over the finest grid per
# cycle, which also restricts the residual for the next cycle); in 2D also that with the FMG start
# (--fmg-start: the first cycle's coarse-grid problem solved by full multigrid; 4 cycles instead of 5).
RB_CONFIGS_2=${RB_CONFIGS_2:-"--pre 2 --post 1|--pre 1 --post 2 --omega 1.15|--pre 1 --post 2 --omega 1.15 --fine-pre 0 --fine-post 3|--pre 1 --post 2 --omega 1.14 --fine-pre 0 --fine-post 3 --fmg-start"}
RB_CONFIGS_3=${RB_CONFIGS_3:-"--pre 2 --post 1|--pre 2 --post 1 --omega 1.25|--pre 1 --post 2 --omega 1.25|--pre 2 --post 1 --omega 1.25 --fine-pre 0 --fine-post 3"}
HYPRE_CONFIGS=${HYPRE_CONFIGS:-"--config all"}
JSON=""
if [ "${1:-}" = "--json" ]; then JSON=${2:?--json needs a file name}; fi

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target bench_poisson -j2 >/dev/null
HAVE_HYPRE=1
cmake --build "$BUILD" --target bench_hypre -j2 >/dev/null 2>&1 || HAVE_HYPRE=0
[ -x "$BUILD/bench_hypre" ] || HAVE_HYPRE=0
[ "$HAVE_HYPRE" = 1 ] || echo "run_poisson: bench_hypre not built (hypre or MPI missing): resbridge only" >&2

RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
THREADS=$(echo "$CORES" | tr ' ' ',')
for C in $CASES; do
  D=${C%%:*} N=${C##*:}
  if [ "$D" = 2 ]; then CONFIGS=$RB_CONFIGS_2; else CONFIGS=$RB_CONFIGS_3; fi
  for r in $(seq "$ROUNDS"); do
    IFS='|' read -ra RBC <<<"$CONFIGS"
    for cfg in "${RBC[@]}"; do
      # every core count in one process, solves alternating (bench_poisson.c)
      # shellcheck disable=SC2086
      "$BUILD/bench_poisson" --dim "$D" --n "$N" --threads "$THREADS" --reps "$REPS" $cfg >>"$RUNS"
    done
    if [ "$HAVE_HYPRE" = 1 ]; then
      for T in $CORES; do
        IFS='|' read -ra HC <<<"$HYPRE_CONFIGS"
        for cfg in "${HC[@]}"; do
          # shellcheck disable=SC2086
          mpirun --allow-run-as-root -np "$T" "$BUILD/bench_hypre" --dim "$D" --n "$N" --reps "$HYPRE_REPS" $cfg \
            2>/dev/null | sed "s/^{/{\"loadavg\":$(cut -d' ' -f1 /proc/loadavg),/" >>"$RUNS"
        done
      done
    fi
  done
done
"$BUILD/bench_poisson" --sweeps --n "$SWEEP_N" --threads "$THREADS" --reps 30 >>"$RUNS"
if [ -n "$JSON" ]; then cp "$RUNS" "$JSON"; fi

"$PYTHON" - "$RUNS" "$ROUNDS" "$REPS" "$HYPRE_REPS" <<'PY'
import json, sys
runs, rounds, reps, hreps = sys.argv[1:5]
rb, hy, sweeps, loads, cal = {}, {}, [], [], []
for line in open(runs):
    d = json.loads(line)
    if d.get("bench") == "sweep":
        sweeps.append(d)
        loads.append(d["loadavg_before"])
        continue
    if d.get("peer") == "hypre":
        key = (d["dim"], d["n"], d["ranks"])
        loads.append(d.get("loadavg", -1))
        if not d["converged"]:
            continue
        if key not in hy or d["seconds_solve"] < hy[key]["seconds_solve"]:
            hy[key] = d
        continue
    key = (d["dim"], d["n"], d["threads"])
    loads.extend([d["loadavg_before"], d["loadavg_after"]])
    cal.append(d)
    if d["rel_residual"] > 1e-8:
        continue
    if key not in rb or d["seconds_solve"] < rb[key]["seconds_solve"]:
        rb[key] = d
goal = {2: 10, 3: 8}
print(f"Best of {rounds} alternating rounds; resbridge: best of {reps} solves per run and of its configurations; "
      f"hypre: best of {hreps} set-up + solve per run and of its configurations. Solve times (set-up apart), "
      "ratio = hypre / resbridge.\n")
print("| case | cores | resbridge s | resbridge config | cycles | hypre s | hypre config | iterations | ratio | goal | "
      "set-up s (resbridge / hypre) | ratio incl. set-up |")
print("|---|---:|---:|---|---:|---:|---|---:|---:|---|---|---:|")
for key in sorted(rb):
    dim, n, t = key
    r = rb[key]
    h = hy.get(key)
    cfg = r["config"] + (f" w={r['omega']:.2f}" if "omega" in r["config"] else "")
    if h:
        ratio = h["seconds_solve"] / r["seconds_solve"]
        hc = f"{h['config']} (relax {h['relax_type']}, {h['pre']}/{h['post']})"
        met = "met" if ratio >= goal[dim] else "not met"
        total = (h["seconds_setup"] + h["seconds_solve"]) / (r["seconds_setup"] + r["seconds_solve"])
        print(f"| {dim}D n={n} | {t} | {r['seconds_solve']:.4f} | {cfg} | {r['cycles']} | {h['seconds_solve']:.4f} | {hc} | "
              f"{h['iterations']} | {ratio:.1f} | >= {goal[dim]}: {met} | {r['seconds_setup']:.3f} / {h['seconds_setup']:.3f} | "
              f"{total:.1f} |")
    else:
        print(f"| {dim}D n={n} | {t} | {r['seconds_solve']:.4f} | {cfg} | {r['cycles']} | - | - | - | - | - | "
              f"{r['seconds_setup']:.3f} / - | - |")
print("\n2 cores against 1 (resbridge, best solves, the two alternating in each run; goal >= 1.8), beside what\n"
      "the machine gave the same processes right after their solves (bench_poisson.c: a compute-bound loop of\n"
      "fixed work, and a STREAM triad on arrays 6x the L3 cache, each on 1 and 2 threads; best of each):\n")
print("| case | 1 core s | 2 cores s | speed-up | compute loop's speed-up | triad's speed-up (median) |")
print("|---|---:|---:|---:|---:|---:|")
for (dim, n, t) in sorted(rb):
    if t == 1 and (dim, n, 2) in rb:
        a, b = rb[(dim, n, 1)]["seconds_solve"], rb[(dim, n, 2)]["seconds_solve"]
        def gain(field, agg=min):
            v = [agg([d[field] for d in cal if (d["dim"], d["n"], d["threads"]) == (dim, n, k)]) for k in (1, 2)]
            return v[0] / v[1]
        med = lambda xs: sorted(xs)[len(xs) // 2]
        print(f"| {dim}D n={n} | {a:.4f} | {b:.4f} | {a / b:.2f} | {gain('seconds_compute'):.2f} | "
              f"{gain('seconds_triad'):.2f} ({gain('seconds_triad_median', med):.2f}) |")
print("\nSmoother bandwidth (24 bytes per grid point and sweep) against a STREAM triad in the same process "
      "(goal >= 1.0):\n")
print("| kernel | n | threads | GB/s | ratio to triad |")
print("|---|---:|---:|---:|---:|")
for d in sweeps:
    print(f"| {d['kernel']} | {d['n']}^2 | {d['threads']} | {d['gbps']:.1f} | {d['ratio_to_triad']:.2f} |")
ok = [l for l in loads if l >= 0]
if ok:
    print(f"\n1-minute load average seen by the runs: {min(ok):.2f} .. {max(ok):.2f}")
PY
