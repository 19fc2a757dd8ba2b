#!/bin/bash
# degradation.sh — He et al.'s degradation experiment in miniature: plain nets of increasing
# depth train worse (higher training loss after the same epochs) while their residual twins
# (identical layers plus identity/projection skips) do not.
#
#     bench/degradation.sh                   # depths 8 20 56, width 8, 2 epochs on 12000 images
#     DEPTHS="8 20" EPOCHS=1 LIMIT=3000 TEST_LIMIT=2000 bench/degradation.sh
#
# Each run: resbridge train --model resnet|plain --depth D --width W --epochs E --limit N
# (SGD momentum 0.9, weight decay 5e-4, lr 0.1 cosine, batch 128, seed 1, Fashion-MNIST).
# Prints a Markdown table: final training loss, training accuracy of the last epoch, test accuracy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
DEPTHS=${DEPTHS:-"8 20 56"}
WIDTH=${WIDTH:-8}
EPOCHS=${EPOCHS:-2}
LIMIT=${LIMIT:-12000}
THREADS=${THREADS:-2}
TEST_LIMIT=${TEST_LIMIT:-10000}
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target resbridge_cli -j2 >/dev/null
echo "| depth | plain: train loss | residual: train loss | plain: test acc | residual: test acc | parameters (plain / residual) |"
echo "|---:|---:|---:|---:|---:|---|"
for D in $DEPTHS; do
  row="| $D"
  declare -A loss acc par
  for M in plain resnet; do
    out=$("$BUILD/resbridge" train --model "$M" --depth "$D" --width "$WIDTH" --epochs "$EPOCHS" --limit "$LIMIT" \
          --threads "$THREADS" --test-limit "$TEST_LIMIT" --json)
    loss[$M]=$(sed -e 's/.*"train_loss":\[\([^]]*\)\].*/\1/' -e 's/.*,//' <<<"$out")
    acc[$M]=$(sed -e 's/.*"test_accuracy":\[\([^]]*\)\].*/\1/' -e 's/.*,//' <<<"$out")
    par[$M]=$(sed -e 's/.*"params":\([0-9]*\).*/\1/' <<<"$out")
  done
  printf '%s | %.4f | %.4f | %.2f%% | %.2f%% | %s / %s |\n' "$row" "${loss[plain]}" "${loss[resnet]}" \
    "$(awk "BEGIN{print 100*${acc[plain]}}")" "$(awk "BEGIN{print 100*${acc[resnet]}}")" "${par[plain]}" "${par[resnet]}"
done
