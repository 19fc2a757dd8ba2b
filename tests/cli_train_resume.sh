#!/bin/bash
# cli_train_resume.sh — `resbridge train` end to end on Fashion-MNIST (a small slice): a run
# stopped after epoch 1 and resumed from its checkpoint reports the same epoch-2 loss and
# test accuracy as an uninterrupted run; a corrupt checkpoint is refused (exit 2, message
# naming the problem) and left as it was; `resbridge eval` reproduces the final test
# accuracy from the checkpoint. Skipped (77) without the dataset-fashion-mnist package.
#
#   bash tests/cli_train_resume.sh <path of the resbridge binary>
set -eu
rb=${1:?usage: cli_train_resume.sh <resbridge binary>}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rb_train_resume.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
run=(--limit 384 --test-limit 1000 --batch 64 --depth 8 --width 4 --threads 1 --epochs 2)
if ! "$rb" train "${run[@]}" --json >"$tmp/full.json" 2>"$tmp/err"; then
  if grep -q "dataset-fashion-mnist" "$tmp/err"; then echo "SKIP: $(cat "$tmp/err")"; exit 77; fi
  cat "$tmp/err"; exit 1
fi
"$rb" train "${run[@]}" --checkpoint "$tmp/run.ckpt" --stop-after 1 --json >"$tmp/part1.json"
"$rb" train --resume "$tmp/run.ckpt" --limit 384 --test-limit 1000 --threads 1 --checkpoint "$tmp/run.ckpt" --json >"$tmp/part2.json"
field() { sed -e "s/.*\"$2\":\[\([^]]*\)\].*/\1/" "$1"; }
full_loss=$(field "$tmp/full.json" train_loss) full_acc=$(field "$tmp/full.json" test_accuracy)
joined_loss="$(field "$tmp/part1.json" train_loss),$(field "$tmp/part2.json" train_loss)"
joined_acc="$(field "$tmp/part1.json" test_accuracy),$(field "$tmp/part2.json" test_accuracy)"
echo "uninterrupted: loss $full_loss, accuracy $full_acc"
echo "resumed:       loss $joined_loss, accuracy $joined_acc"
[ "$full_loss" = "$joined_loss" ] && [ "$full_acc" = "$joined_acc" ] || { echo "FAIL: the resumed run differs"; exit 1; }
grep -q '"first_epoch":2' "$tmp/part2.json" || { echo "FAIL: the resumed run did not start at epoch 2"; exit 1; }
# eval from the checkpoint gives the last test accuracy
acc=$("$rb" eval --checkpoint "$tmp/run.ckpt" --test-limit 1000 --threads 1 --json | sed -e 's/.*"test_accuracy":\([0-9.e-]*\)}.*/\1/')
last=${full_acc##*,}
[ "$acc" = "$last" ] || { echo "FAIL: eval gives $acc, training reported $last"; exit 1; }
echo "eval:          accuracy $acc"
# a corrupt checkpoint: refused with a message, file untouched
cp "$tmp/run.ckpt" "$tmp/bad.ckpt"
printf '\x55' | dd of="$tmp/bad.ckpt" bs=1 seek=500 conv=notrunc 2>/dev/null
sum_before=$(cksum <"$tmp/bad.ckpt")
set +e
"$rb" train --resume "$tmp/bad.ckpt" --limit 384 --threads 1 2>"$tmp/err"
rc=$?
set -e
[ $rc = 2 ] && grep -q "checksum mismatch" "$tmp/err" || { echo "FAIL: corrupt checkpoint: exit $rc, $(cat "$tmp/err")"; exit 1; }
[ "$sum_before" = "$(cksum <"$tmp/bad.ckpt")" ] || { echo "FAIL: the corrupt checkpoint was modified"; exit 1; }
echo "corrupt checkpoint refused: $(cat "$tmp/err")"
