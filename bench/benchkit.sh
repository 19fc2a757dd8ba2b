# benchkit.sh — what the side-by-side run scripts (bench/run_conv.sh, bench/run_unet.sh) share,
# sourced after `set -euo pipefail`: the settings (each overridable from the environment),
# a Release build of the bench targets, a temporary file for the JSON lines, the load average.
#
#     source "$(dirname "$0")/benchkit.sh"
#     bench_build bench_unet
#     LOAD_BEFORE=$(bench_load)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-5}
MIN_TIME=${MIN_TIME:-1}
THREADS=${THREADS:-"1 2"}
PYTHON=${PYTHON:-/usr/bin/python3}
RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT

bench_build() {
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target "$@" -j2 >/dev/null
}

bench_load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?"; }
