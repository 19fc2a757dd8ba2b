#!/usr/bin/env bash
# Installs what is missing, builds resbridge (Release) and runs `resbridge demo`.
# Usage: bash scripts/demo.sh [demo options, e.g. --json]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target resbridge_cli >/dev/null
exec ./build/resbridge demo "$@"
