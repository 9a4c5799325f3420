#!/usr/bin/env bash
# Installs the Debian packages moe-tune builds against, if any is missing.
# Used by scripts/test.sh and scripts/demo.sh; safe to run repeatedly.
#   bash scripts/setup.sh [--mpi]    --mpi: also Open MPI (multi-process training and its tests)
set -euo pipefail
pkgs=(libopenblas-dev libsentencepiece-dev pkg-config)
[ "${1:-}" = --mpi ] && pkgs+=(openmpi-bin libopenmpi-dev)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: the Swift toolchain (swift) is not on PATH" >&2; exit 1; }
