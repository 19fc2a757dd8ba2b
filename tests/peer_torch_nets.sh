#!/bin/bash
# peer_torch_nets.sh — cross-check resbridge's networks (ResNet v1 and v2 blocks, identity and
# projection shortcuts, the plain twin: forward, loss, all gradients, ten SGD steps)
# against PyTorch float64 (tests/peer_torch_nets.py; skipped without python3-torch).
#
#   bash tests/peer_torch_nets.sh <dir of the resbridge binary> <build dir>
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_peer_torch.sh" nets "$@"
