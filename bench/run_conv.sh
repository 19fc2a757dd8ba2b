#!/bin/bash
# run_conv.sh — resbridge vs PyTorch (float64) for multi-channel 3x3 stride-1 convolutions,
# forward + backward-data + backward-weight, 1 and 2 threads.
#
# Builds bench_conv (Release, in build-bench), then for each thread count and shape runs
# bench_conv and bench/conv_torch.py back to back, ROUNDS times (alternating, so both see the
# same machine), keeps the best time of each product for each side, and prints a Markdown
# table (ratio = PyTorch ms / resbridge ms, fwd + bwd-data + bwd-weight). PyTorch gets its best
# setting: OPENBLAS_NUM_THREADS=1 and torch.set_num_threads(T).
#
#     bench/run_conv.sh                      # table on stdout
#     ROUNDS=5 MIN_TIME=2 bench/run_conv.sh  # more runs on a noisy machine
#     bench/run_conv.sh --json runs.jsonl    # also keep every JSON line
set -euo pipefail

source "$(dirname "$0")/benchkit.sh" # ROOT BUILD ROUNDS REPS MIN_TIME THREADS PYTHON RUNS
SHAPES=${SHAPES:-"16,64,64,64,64 64,16,32,32,16 128,32,28,28,32 128,1,28,28,16"}
JSON=""
if [ "${1:-}" = "--json" ]; then JSON=${2:?--json needs a file name}; fi

bench_build bench_conv
LOAD_BEFORE=$(bench_load)
for T in $THREADS; do
  for r in $(seq "$ROUNDS"); do
    for S in $SHAPES; do
      "$BUILD/bench_conv" --threads "$T" --shape "$S" --reps "$REPS" --min-time "$MIN_TIME" >>"$RUNS"
      OPENBLAS_NUM_THREADS=1 "$PYTHON" "$ROOT/bench/conv_torch.py" --threads "$T" --shape "$S" --reps "$REPS" \
        --min-time "$MIN_TIME" >>"$RUNS"
    done
  done
done
if [ -n "$JSON" ]; then cp "$RUNS" "$JSON"; fi
LOAD_AFTER=$(bench_load)

"$PYTHON" - "$RUNS" "$ROUNDS" "$REPS" "$MIN_TIME" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import collections, json, sys
runs, rounds, reps, min_time, load_before, load_after = sys.argv[1:7]
keys = ("fwd_s", "bwd_data_s", "bwd_weight_s")
best = collections.defaultdict(lambda: [float("inf")] * 3)
order = []
for line in open(runs):
    d = json.loads(line)
    impl = "torch" if d["impl"] == "torch" else "rb"
    k = (tuple(d["shape"]), d["threads"])
    if k not in order:
        order.append(k)
    b = best[(k, impl)]
    for i, f in enumerate(keys):
        b[i] = min(b[i], d[f])
print(f"Best of {rounds} alternating runs (each the best of >= {reps} calls and >= {min_time} s); "
      "times in ms, fwd + bwd-data + bwd-weight; ratio = PyTorch / resbridge.\n")
print("| shape (N,Cin,H,W,Cout) | threads | resbridge ms | PyTorch ms | ratio | resbridge GFLOP/s "
      "| fwd / bwd-data / bwd-weight ratio |")
print("|---|---|---|---|---|---|---|")
for k in sorted(order, key=lambda k: (k[1], order.index(k))):
    (n, ci, h, w, co), t = k
    rb, th = best[(k, "rb")], best[(k, "torch")]
    flops = 2.0 * n * co * ci * 9 * h * w
    per = " / ".join(f"{a / b:.2f}" for a, b in zip(th, rb))
    print(f"| {n},{ci},{h},{w},{co} | {t} | {sum(rb) * 1e3:.2f} | {sum(th) * 1e3:.2f} | "
          f"{sum(th) / sum(rb):.2f} | {3 * flops / sum(rb) * 1e-9:.1f} | {per} |")
print(f"\nLoad average (1, 5, 15 min) before: {load_before}; after: {load_after} "
      "(a load well above the thread count means other work shared the cores).")
PY
