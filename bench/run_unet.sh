#!/bin/bash
# run_unet.sh — resbridge's U-Net (unet.h) vs the same network in PyTorch float64: a training
# step's work (forward with the tape / autograd graph, MSE loss, backward to every parameter
# and the input), 1 and 2 threads.
#
# Builds bench_unet (Release, in build-bench), then for each thread count runs bench_unet and
# bench/unet_torch.py back to back, ROUNDS times (alternating, so both see the same machine),
# keeps the best of each side and prints a Markdown table (ratio = PyTorch ms / resbridge ms).
#
#     bench/run_unet.sh                                    # n = 63, 5 levels, 2 -> 16 -> 1, N = 8, 2 cycles
#     ROUNDS=5 CONFIG="--n 31 --levels 4 --channels 8 --batch 16" bench/run_unet.sh
set -euo pipefail

source "$(dirname "$0")/benchkit.sh" # ROOT BUILD ROUNDS REPS MIN_TIME THREADS PYTHON RUNS
CONFIG=${CONFIG:-"--n 63 --levels 5 --in 2 --channels 16 --out 1 --batch 8 --cycles 2"}

bench_build bench_unet
LOAD_BEFORE=$(bench_load)
for T in $THREADS; do
  for r in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    "$BUILD/bench_unet" --threads "$T" $CONFIG --reps "$REPS" --min-time "$MIN_TIME" >>"$RUNS"
    # shellcheck disable=SC2086
    OPENBLAS_NUM_THREADS=1 "$PYTHON" "$ROOT/bench/unet_torch.py" --threads "$T" $CONFIG --reps "$REPS" --min-time "$MIN_TIME" >>"$RUNS"
  done
done
LOAD_AFTER=$(bench_load)

"$PYTHON" - "$RUNS" "$ROUNDS" "$REPS" "$MIN_TIME" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import collections, json, sys
runs, rounds, reps, min_time, load_before, load_after = sys.argv[1:7]
best = collections.defaultdict(lambda: [float("inf")] * 2)
configs = {}
for line in open(runs):
    d = json.loads(line)
    k = (d["threads"], d["impl"])
    configs[d["impl"]] = (d["config"], d["params"])
    best[k] = [min(best[k][0], d["fwd_s"]), min(best[k][1], d["bwd_s"])]
assert configs["resbridge"] == configs["torch"], configs
cfg, params = configs["resbridge"]
print(f"U-Net (n,levels,Cin,C,Cout,N,cycles) = ({cfg}), {params} parameters, tanh, V(1,1). Best of {rounds} "
      f"alternating runs (each the best of >= {reps} steps and >= {min_time} s); ms per step; ratio = PyTorch / resbridge.\n")
print("| threads | resbridge fwd + bwd ms | PyTorch fwd + bwd ms | ratio | fwd ratio | bwd ratio |")
print("|---|---|---|---|---|---|")
for t in sorted({k[0] for k in best}):
    rb, th = best[(t, "resbridge")], best[(t, "torch")]
    print(f"| {t} | {rb[0] * 1e3:.1f} + {rb[1] * 1e3:.1f} = {sum(rb) * 1e3:.1f} | {th[0] * 1e3:.1f} + {th[1] * 1e3:.1f} = "
          f"{sum(th) * 1e3:.1f} | {sum(th) / sum(rb):.2f} | {th[0] / rb[0]:.2f} | {th[1] / rb[1]:.2f} |")
print(f"\nLoad average (1, 5, 15 min) before: {load_before}; after: {load_after} "
      "(a load well above the thread count means other work shared the cores).")
PY
