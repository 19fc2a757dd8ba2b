#!/bin/bash
# peer_torch_unet.sh — cross-check resbridge's U-Net (unet.h: lifting, V/W/F network-mode
# cycles, projection; forward, MSE loss, every parameter and input gradient) against the
# same network in PyTorch float64 (tests/peer_torch_unet.py; skipped without python3-torch).
#
#   bash tests/peer_torch_unet.sh <dir of the resbridge binary> <build dir>
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_peer_torch.sh" unet "$@"
