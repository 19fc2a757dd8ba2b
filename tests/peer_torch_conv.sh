#!/bin/bash
# peer_torch_conv.sh — cross-check resbridge's conv op (plain and transposed, 1D/2D/3D,
# stride 1 and 2, cell and vertex grids, forward, input and parameter gradients)
# against PyTorch float64.
#
#   bash tests/peer_torch_conv.sh <dir of the resbridge binary> <build dir>
#
# Runs <build dir>/tests/dump_conv into a temporary directory, then
# tests/peer_torch_conv.py on it. Exit 77 (CTest: skipped) when /usr/bin/python3
# cannot import torch.
set -u
bindir=${1:?usage: peer_torch_conv.sh <dir of the resbridge binary> <build dir>}
builddir=${2:?usage: peer_torch_conv.sh <dir of the resbridge binary> <build dir>}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=/usr/bin/python3

if ! [ -x "$python" ] || ! "$python" -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "SKIP: $python cannot import torch and numpy (install python3-torch); PyTorch conv cross-check not run"
  exit 77
fi
dump="$builddir/tests/dump_conv"
if ! [ -x "$dump" ]; then
  echo "FAIL: $dump not found (build the dump_conv target)" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rb_peer_torch_conv.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

"$dump" "$tmp" || { echo "FAIL: dump_conv failed" >&2; exit 1; }
"$python" "$here/peer_torch_conv.py" "$tmp"
