#!/bin/bash
# peer_torch_conv.sh — cross-check resbridge's conv op (plain and transposed, 1D/2D/3D,
# stride 1 and 2, cell and vertex grids, forward, input and parameter gradients)
# against PyTorch float64 (tests/peer_torch_conv.py; skipped without python3-torch).
#
#   bash tests/peer_torch_conv.sh <dir of the resbridge binary> <build dir>
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_peer_torch.sh" conv "$@"
