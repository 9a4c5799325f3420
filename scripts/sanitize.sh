#!/usr/bin/env bash
# The test suite under a sanitizer, in its own build folder (.build-address, .build-thread):
#   bash scripts/sanitize.sh [address|thread] [TEST FILTER]
# address: heap/stack overflows, use after free, leaks of the C targets; thread: data races
# in the parallel kernels (parallelChunks, the BLAS-threaded products) and the signal handler.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-address}"
case "$kind" in address|thread) ;; *) echo "usage: $0 [address|thread] [filter]" >&2; exit 2 ;; esac
bash scripts/setup.sh
swift build --build-tests --sanitize="$kind" --scratch-path ".build-$kind"
if [ -n "${2:-}" ]; then
  swift test --skip-build --sanitize="$kind" --scratch-path ".build-$kind" --filter "$2"
else
  swift test --skip-build --sanitize="$kind" --scratch-path ".build-$kind"
fi
