#!/bin/bash
# run_peer_torch.sh — the common runner of the PyTorch cross-checks (tests/peer_torch_*.sh).
#
#   bash tests/run_peer_torch.sh <what> <dir of the resbridge binary> <build dir>
#
# Runs <build dir>/tests/dump_<what> into a temporary directory, then
# tests/peer_torch_<what>.py on it. Exit 77 (CTest: skipped) when /usr/bin/python3
# cannot import torch and numpy.
set -u
what=${1:?usage: run_peer_torch.sh <what> <dir of the resbridge binary> <build dir>}
builddir=${3:?usage: run_peer_torch.sh <what> <dir of the resbridge binary> <build dir>}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=/usr/bin/python3

if ! [ -x "$python" ] || ! "$python" -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "SKIP: $python cannot import torch and numpy (install python3-torch); PyTorch $what cross-check not run"
  exit 77
fi
dump="$builddir/tests/dump_$what"
if ! [ -x "$dump" ]; then
  echo "FAIL: $dump not found (build the dump_$what target)" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rb_peer_torch_$what.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

"$dump" "$tmp" || { echo "FAIL: dump_$what failed" >&2; exit 1; }
"$python" "$here/peer_torch_$what.py" "$tmp"
