#!/usr/bin/env bash
# The test suite under a sanitizer, in its own build folder (.build-address, .build-thread):
#   bash scripts/sanitize.sh [address|thread] [TEST FILTER]
# address: heap/stack overflows, use after free, leaks of the C targets; thread: data races
# in the parallel kernels (parallelChunks, the BLAS-threaded products) and the signal handler.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-address}"
case "$kind" in address|thread) ;; *) echo "usage: $0 [address|thread] [filter]" >&2; exit 2 ;; esac
# ThreadSanitizer instruments the ifunc resolvers of CKernels' per-CPU clones, which run
# during relocation, before the TSan runtime is up (SIGSEGV in __tsan_func_entry from
# mt_max[resolver]): the C targets are built without it; every Swift target keeps it.
extra=()
[ "$kind" = thread ] && extra=(-Xcc -fno-sanitize=thread)
# Leaks are checked, except those of the runtime libraries (scripts/lsan.supp).
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
bash scripts/setup.sh
swift build --build-tests --sanitize="$kind" --scratch-path ".build-$kind" "${extra[@]}"
swift test --skip-build --sanitize="$kind" --scratch-path ".build-$kind" "${extra[@]}" ${2:+--filter "$2"}
