#!/usr/bin/env bash
# Installs the built resbridge into a temporary prefix and builds a user's
# program against it twice: with CMake's find_package(resbridge) and with
# pkg-config resbridge. Both programs must run and reach the known result.
# Usage: install_check.sh <source dir> <build dir>
set -euo pipefail
src=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
# the tests' sanitizer flags must reach the consumer builds too
flags=$(grep -E '^RB_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" >/dev/null && echo "-fsanitize=address,undefined" || true)
cmake -S "$src/examples/consumer" -B "$tmp/cmake-consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$tmp/cmake-consumer" >/dev/null
out1=$(LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/cmake-consumer/consumer" | tail -1)
pcdir=$(dirname "$(find "$tmp/prefix" -name resbridge.pc | head -1)")
libdir=$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir resbridge)
# shellcheck disable=SC2046
cc $flags "$src/examples/jacobi_poisson.c" $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs resbridge) -lm \
  -o "$tmp/pc-consumer"
out2=$(LD_LIBRARY_PATH="$libdir" "$tmp/pc-consumer" | tail -1)
echo "find_package: $out1"
echo "pkg-config:   $out2"
# the example converges to the discrete solution: the last line's error is below 1e-5
for o in "$out1" "$out2"; do
  awk '{ if ($NF + 0 < 1e-5) exit 0; exit 1 }' <<<"$o" || { echo "consumer did not reach the discrete solution: $o"; exit 1; }
done
echo "2 passed, 0 failed"
