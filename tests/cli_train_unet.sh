#!/bin/bash
# cli_train_unet.sh — `resbridge train --model unet` end to end on Poisson pairs (n = 15, a few
# seconds). Oracles: the run's own start (training lowers the test relative error |u_net - u|/|u|
# below 0.8 of the untrained net's, and the test loss falls epoch by epoch); an uninterrupted
# run (one stopped after epoch 1 and resumed from its checkpoint reports the same losses and
# final error); the training report (`resbridge eval` of the checkpoint gives its last test
# loss); a bad --n is refused (exit 2) with a message naming the valid sizes.
#
#   bash tests/cli_train_unet.sh <path of the resbridge binary>
set -eu
rb=${1:?usage: cli_train_unet.sh <resbridge binary>}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rb_train_unet.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
run=(--model unet --n 15 --width 4 --limit 64 --test-limit 16 --threads 1 --epochs 3)
data=(--limit 64 --test-limit 16 --threads 1)
"$rb" train "${run[@]}" --json >"$tmp/full.json"
list() { sed -e "s/.*\"$2\":\[\([^]]*\)\].*/\1/" "$1"; }
num() { sed -e "s/.*\"$2\":\([-0-9.e+]*\).*/\1/" "$1"; }
start=$(num "$tmp/full.json" test_rel_err_start) end=$(num "$tmp/full.json" test_rel_err_mean)
losses=$(list "$tmp/full.json" test_loss)
echo "test relative error: $start untrained -> $end after 3 epochs; test loss $losses"
awk -v a="$start" -v b="$end" 'BEGIN { exit !(b < 0.8 * a) }' || { echo "FAIL: training did not lower the test error"; exit 1; }
echo "$losses" | awk -F, '{ for (i = 2; i <= NF; i++) if (!($i < $(i - 1))) exit 1 }' || { echo "FAIL: test loss not falling"; exit 1; }
grep -q '"mg_cycles_to_match_mean":[0-9]' "$tmp/full.json" || { echo "FAIL: no classical comparison"; exit 1; }
# stopped after epoch 1, resumed: the same numbers
"$rb" train "${run[@]}" --checkpoint "$tmp/run.ckpt" --stop-after 1 --json >"$tmp/part1.json"
"$rb" train --resume "$tmp/run.ckpt" "${data[@]}" --checkpoint "$tmp/run.ckpt" --json >"$tmp/part2.json"
joined="$(list "$tmp/part1.json" train_loss),$(list "$tmp/part2.json" train_loss)"
[ "$joined" = "$(list "$tmp/full.json" train_loss)" ] || { echo "FAIL: resumed losses $joined differ"; exit 1; }
[ "$(num "$tmp/part2.json" test_rel_err_mean)" = "$end" ] || { echo "FAIL: resumed final error differs"; exit 1; }
grep -q '"first_epoch":2' "$tmp/part2.json" || { echo "FAIL: the resumed run did not start at epoch 2"; exit 1; }
echo "resumed: train loss $joined, final error $end"
# eval of the checkpoint: the last test loss
ev=$("$rb" eval --checkpoint "$tmp/run.ckpt" --test-limit 16 --threads 1 --json)
loss=$(echo "$ev" | sed -e 's/.*"test_loss":\([-0-9.e+]*\).*/\1/')
awk -v a="$loss" -v b="${losses##*,}" 'BEGIN { exit !(a - b < 1e-5 * b && b - a < 1e-5 * b) }' ||
  { echo "FAIL: eval gives test loss $loss, training reported ${losses##*,}"; exit 1; }
echo "eval: $ev"
# a bad grid size
set +e
"$rb" train --model unet --n 30 2>"$tmp/err"
rc=$?
set -e
[ $rc = 2 ] && grep -q "m 2^k - 1" "$tmp/err" || { echo "FAIL: --n 30: exit $rc, $(cat "$tmp/err")"; exit 1; }
echo "refused: $(cat "$tmp/err")"
