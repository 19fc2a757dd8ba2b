#!/usr/bin/env bash
# Installs what is missing, builds resbridge with -Wall -Wextra -Werror and runs
# the whole test suite (cmocka suites and the PyTorch cross-checks) with CTest.
# Usage: bash scripts/test.sh              Release build in build/
#        bash scripts/test.sh --sanitize   AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dir=build
flags=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = --sanitize ]; then
  dir=build-asan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DRB_SANITIZE=ON)
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/test.sh [--sanitize]" >&2
  exit 2
fi
cmake -S . -B "$dir" -DRB_WERROR=ON "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
ctest --output-on-failure --timeout 900
