#!/bin/bash
# run_ode.sh — resbridge vs PyTorch (float64) for a neural ODE stack F(x) = tanh(W x + b),
# D = 256, L = 1000 steps over [0, 1] (Euler: a ResNet), batches 1 and 64, 1 and 2 threads:
# forward, forward + backward with every state stored, and with checkpoints every ceil(sqrt L).
#
# Builds bench_ode (Release, in $BUILD), writes the weights and inputs once (bench_ode --dump)
# and has bench/ode_torch.py check PyTorch's results against resbridge's (stops if they differ
# by more than 1e-10). Then for each thread count, ROUNDS times: for each batch, bench_ode and
# ode_torch.py back to back (alternating, so both see the same machine). PyTorch runs with
# torch.set_num_threads(T) and OPENBLAS_NUM_THREADS = each of TORCH_BLAS_THREADS (default: 1
# and T; its float64 matmuls are OpenBLAS's), and keeps its best; resbridge runs with
# OPENBLAS_NUM_THREADS=1 (it splits the work over its own T threads). Prints a Markdown table of
# best times and ratios (PyTorch ms / resbridge ms), then the memory table: tape peak bytes at
# L = MEM_LAYERS (10^4; batches MEM_BATCHES, default 1) with every state stored against
# checkpoints, and whether the two gradients are bit-identical.
#
#     bench/run_ode.sh                              # table on stdout
#     ROUNDS=5 METHODS="euler rk4" bench/run_ode.sh
#     bench/run_ode.sh --json runs.jsonl            # also keep every JSON line
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
MIN_TIME=${MIN_TIME:-1}
THREADS=${THREADS:-"1 2"}
BATCHES=${BATCHES:-"1 64"}
METHODS=${METHODS:-"euler"}
LAYERS=${LAYERS:-1000}
MEM_LAYERS=${MEM_LAYERS:-10000}
MEM_BATCHES=${MEM_BATCHES:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
JSON=""
if [ "${1:-}" = "--json" ]; then JSON=${2:?--json needs a file name}; fi

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target bench_ode -j2 >/dev/null

DATA=$(mktemp -d)
RUNS=$DATA/runs.jsonl
trap 'rm -rf "$DATA"' EXIT
BOPT=() MOPT=()
for B in $BATCHES; do BOPT+=(--batch "$B"); done
for M in $METHODS; do MOPT+=(--method "$M"); done
export OPENBLAS_NUM_THREADS=1
"$BUILD/bench_ode" "${BOPT[@]}" "${MOPT[@]}" --layers "$LAYERS" --reps 1 --min-time 0 --dump "$DATA" >/dev/null
if ! "$PYTHON" "$ROOT/bench/ode_torch.py" --data "$DATA" "${BOPT[@]}" "${MOPT[@]}" --layers "$LAYERS" --check-only \
  >"$DATA/check.jsonl"; then
  cat "$DATA/check.jsonl"
  echo "run_ode.sh: PyTorch and resbridge disagree; no timings" >&2
  exit 3
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
for T in $THREADS; do
  for r in $(seq "$ROUNDS"); do
    for M in $METHODS; do
      for B in $BATCHES; do
        OPENBLAS_NUM_THREADS=1 "$BUILD/bench_ode" --threads "$T" --batch "$B" --method "$M" --layers "$LAYERS" \
          --reps "$REPS" --min-time "$MIN_TIME" >>"$RUNS"
        for OB in ${TORCH_BLAS_THREADS:-$(echo 1 "$T" | tr ' ' '\n' | sort -u)}; do
          OPENBLAS_NUM_THREADS=$OB "$PYTHON" "$ROOT/bench/ode_torch.py" --data "$DATA" --threads "$T" --batch "$B" \
            --method "$M" --layers "$LAYERS" --reps "$REPS" --min-time "$MIN_TIME" | grep '"kind": "time"' >>"$RUNS"
        done
      done
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
for B in $MEM_BATCHES; do
  "$BUILD/bench_ode" --batch "$B" "${MOPT[@]}" --layers 1 --reps 1 --min-time 0 --mem-layers "$MEM_LAYERS" \
    --mem-batch "$B" | grep '"kind":"memory"' >>"$DATA/memory.jsonl"
done
if [ -n "$JSON" ]; then cat "$DATA/check.jsonl" "$RUNS" "$DATA/memory.jsonl" >"$JSON"; fi

"$PYTHON" - "$DATA" "$ROUNDS" "$REPS" "$MIN_TIME" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import collections, json, os, sys
data, rounds, reps, min_time, load_before, load_after = sys.argv[1:7]
keys = ("fwd_s", "fwdbwd_s", "fwdbwd_ckpt_s")
best = collections.defaultdict(lambda: [float("inf")] * 3)
blas = collections.defaultdict(dict)
order = []
for line in open(os.path.join(data, "runs.jsonl")):
    d = json.loads(line)
    k = (d["method"], d["batch"], d["threads"])
    if k not in order:
        order.append(k)
    b = best[(k, d["impl"])]
    for i, f in enumerate(keys):
        if d[f] < b[i]:
            b[i] = d[f]
            if d["impl"] == "torch":
                blas[k][f] = d["openblas_num_threads"]
checks = [json.loads(l) for l in open(os.path.join(data, "check.jsonl"))]
print("PyTorch vs resbridge, same weights and inputs: largest relative difference of x(T), dL/dx0, dL/dW, dL/db:")
for c in checks:
    print(f"  {c['method']}, batch {c['batch']}: {max(c['rel_diff_vs_resbridge'].values()):.1e} "
          f"(PyTorch checkpointed vs full: {c['checkpoint_vs_full']:.1e})")
print(f"\nBest of {rounds} alternating runs (each the best of >= {reps} calls and >= {min_time} s); times in ms; "
      "ratio = PyTorch / resbridge (> 1: resbridge faster).\n")
print("| method | batch | threads | fwd: resbridge / PyTorch ms | ratio | fwd+bwd, all states: resbridge / PyTorch ms "
      "| ratio | fwd+bwd, checkpoints: resbridge / PyTorch ms | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for k in sorted(order, key=lambda k: (k[0], k[2], k[1])):
    rb, th = best[(k, "resbridge")], best[(k, "torch")]
    cells = " | ".join(f"{a * 1e3:.1f} / {b * 1e3:.1f} | **{b / a:.2f}**" for a, b in zip(rb, th))
    print(f"| {k[0]} | {k[1]} | {k[2]} | {cells} |")
used = sorted({v for d in blas.values() for v in d.values()})
print(f"\nPyTorch's best times came with OPENBLAS_NUM_THREADS in {used}.")
print(f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after} "
      "(a load well above the thread count means other work shared the cores).\n")
print("| method | L | batch | stride | tape peak, all states | tape peak, checkpoints | ratio | gradients bit-identical "
      "| fwd+bwd s: all / checkpoints |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(os.path.join(data, "memory.jsonl")):
    m = json.loads(line)
    print(f"| {m['method']} | {m['L']} | {m['batch']} | {m['stride_ckpt']} | {m['peak_full_bytes'] / 2**20:.2f} MiB "
          f"| {m['peak_ckpt_bytes'] / 2**20:.2f} MiB | {m['peak_full_bytes'] / m['peak_ckpt_bytes']:.1f}x "
          f"| {'yes' if m['bit_identical'] else 'NO'} | {m['fwdbwd_s']:.2f} / {m['fwdbwd_ckpt_s']:.2f} |")
PY
