#!/bin/bash
# cli_vcycle.sh — `resbridge vcycle`: one V-cycle, two readings, from the command line.
#   --mode net --weights poisson prints the residual history of --mode mg (the multigrid
#     solver is the oracle), relative agreement 1e-10, on several sizes, levels and V(pre,post);
#   the Poisson weights saved on n = 31 and reused with --any-size on n = 127 print it too;
#   a weights file for another grid, a corrupt one, a missing one and an unknown mode are
#   refused with exit status 2 and a message naming the problem (both shapes for the grid).
#
#   bash tests/cli_vcycle.sh <path of the resbridge binary>
set -eu
rb=${1:?usage: cli_vcycle.sh <resbridge binary>}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rb_vcycle.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
history() { sed -e 's/.*"residual_history":\[\([^]]*\)\].*/\1/' "$1"; }
# compare two comma-separated lists: same length, each |a - b| <= 1e-10 b + 1e-12. The floor:
# the iterates agree to rounding (~1e-15 relative), and |f - A u| / |f| amplifies that by up to
# the condition number of A (2.6e4 in 1D, n = 255), so small residuals agree to ~1e-11 absolute.
# A wrong weight (omega off by 1e-6) moves them by far more.
same() {
  awk -v a="$(history "$1")" -v b="$(history "$2")" 'BEGIN {
    na = split(a, x, ","); nb = split(b, y, ",");
    if (na != nb || na < 2) { printf "FAIL: %d vs %d entries\n", na, nb; exit 1 }
    worst = 0; bad = 0;
    for (i = 1; i <= na; i++) {
      d = x[i] - y[i]; if (d < 0) d = -d; m = y[i] < 0 ? -y[i] : y[i];
      if (d / m > worst) worst = d / m;
      if (d > 1e-10 * m + 1e-12) { printf "  entry %d: %.17g vs %.17g\n", i - 1, x[i], y[i]; bad = 1 }
    }
    printf "  %d entries, max relative difference %.2e\n", na, worst;
    exit bad }'
}
check() { # label, then the arguments shared by both runs
  local label=$1; shift
  "$rb" vcycle --mode mg "$@" --json >"$tmp/mg.json"
  "$rb" vcycle --mode net --weights poisson "$@" --json >"$tmp/net.json"
  echo "$label: net (poisson weights) vs mg"
  same "$tmp/net.json" "$tmp/mg.json" || { echo "FAIL: $label"; cat "$tmp/mg.json" "$tmp/net.json"; exit 1; }
}
check "2D n=127 V(1,1)" --dim 2 --n 127 --cycles 8
check "2D n=63 V(2,1) 3 levels" --dim 2 --n 63 --levels 3 --pre 2 --post 1 --cycles 6 --seed 5
check "1D n=255 V(1,2) omega 0.6" --dim 1 --n 255 --pre 1 --post 2 --omega 0.6 --cycles 6
check "3D n=15" --dim 3 --n 15 --cycles 5
# the network's weights reused on a larger grid
"$rb" vcycle --mode net --dim 2 --n 31 --cycles 1 --save "$tmp/p31.rbw" >/dev/null
"$rb" vcycle --mode net --dim 2 --n 127 --weights "$tmp/p31.rbw" --any-size --cycles 8 --json >"$tmp/reuse.json"
"$rb" vcycle --mode mg --dim 2 --n 127 --cycles 8 --json >"$tmp/mg.json"
echo "n=31 poisson weights on n=127 (--any-size) vs mg"
same "$tmp/reuse.json" "$tmp/mg.json" || { echo "FAIL: the reused weights"; exit 1; }
# refusals: exit 2, message
refused() { # needle, then the arguments
  local needle=$1; shift
  set +e
  "$rb" vcycle "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  set -e
  [ $rc -eq 2 ] || { echo "FAIL: exit $rc (expected 2) for $*"; cat "$tmp/err"; exit 1; }
  grep -qF -- "$needle" "$tmp/err" || { echo "FAIL: message lacks '$needle':"; cat "$tmp/err"; exit 1; }
  echo "refused ($*): $(cat "$tmp/err")"
}
refused "the weights are for 2D, n = 31 with 3 levels" --mode net --dim 2 --n 63 --levels 3 --weights "$tmp/p31.rbw"
refused "the net has 2D, n = 63 with 3 levels" --mode net --dim 2 --n 63 --levels 3 --weights "$tmp/p31.rbw"
cp "$tmp/p31.rbw" "$tmp/bad.rbw"
printf '\x55' | dd of="$tmp/bad.rbw" bs=1 seek=300 conv=notrunc 2>/dev/null
refused "checksum mismatch" --mode net --dim 2 --n 31 --weights "$tmp/bad.rbw"
refused "cannot open" --mode net --dim 2 --n 31 --weights "$tmp/missing.rbw"
refused "expected one of mg net" --mode multigrid --dim 2 --n 31
# a learned cycle that diverges (one Adam step of size 10 from Jacobi) is refused before it is used: exit 1
set +e
"$rb" learn-smoother --n 31 --levels 3 --steps 1 --lr 10 --eval-n none --save "$tmp/div.rbw" >/dev/null 2>&1
"$rb" vcycle --mode net --dim 2 --n 63 --weights "$tmp/div.rbw" --any-size --cycles 5 >"$tmp/out" 2>"$tmp/err"
rc=$?
set -e
[ $rc -eq 1 ] || { echo "FAIL: a divergent weights file ran (exit $rc)"; cat "$tmp/out" "$tmp/err"; exit 1; }
grep -qF "diverges on this grid" "$tmp/err" || { echo "FAIL: no refusal message:"; cat "$tmp/err"; exit 1; }
[ ! -s "$tmp/out" ] || { echo "FAIL: a refused cycle printed a history"; cat "$tmp/out"; exit 1; }
echo "refused (divergent weights): $(cat "$tmp/err")"
echo "PASS"
