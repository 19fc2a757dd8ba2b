#!/usr/bin/env bash
# Installs the Debian 12 packages resbridge needs that are not yet installed.
# Idempotent and non-interactive: runs `apt-get update` at most once, and only
# when something is missing. Must run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake pkg-config git      # compiler, build system
  libgsl-dev                                # GSL: RNG, statistics, odeiv2
  libsundials-dev                           # SUNDIALS 6.4: CVODE, CVODES (pulls in hypre)
  liblapacke-dev libopenblas-dev            # LAPACKE on OpenBLAS
  libcmocka-dev                             # unit tests
  zlib1g-dev                                # gzip'd IDX data sets
)
# Peers for cross-checks and data; skipped with RESBRIDGE_MINIMAL=1.
if [ "${RESBRIDGE_MINIMAL:-0}" != 1 ]; then
  packages+=(python3-torch python3-numpy dataset-fashion-mnist libhypre-dev openmpi-bin libopenmpi-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
