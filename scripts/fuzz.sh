#!/usr/bin/env bash
# libFuzzer over moe-tune's input parsers (fuzz/): builds fuzz/Sources/moe-tune-fuzz with
# libFuzzer and AddressSanitizer in .build-fuzz, then runs each target for SECONDS, one job:
#   bash scripts/fuzz.sh [all|TARGET[,TARGET...]] [SECONDS]      (defaults: all, 60)
# Targets: safetensors peft jsonl yaml tokenizer template gguf. Seeds: fuzz/corpus/TARGET
# (committed, read only); inputs the run finds go to .build-fuzz/corpus/TARGET, a crash,
# timeout or out-of-memory input to .build-fuzz/artifacts/TARGET/. Exits 1 when any target
# found something. Reproduce one input:
#   MOE_TUNE_FUZZ_TARGET=TARGET .build-fuzz/debug/moe-tune-fuzz FILE
set -euo pipefail
cd "$(dirname "$0")/.."
all=(safetensors peft jsonl yaml tokenizer template gguf)
which="${1:-all}"
secs="${2:-60}"
if [ "$which" = all ]; then targets=("${all[@]}"); else IFS=, read -r -a targets <<<"$which"; fi
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t' (targets: ${all[*]})" >&2; exit 2; }
done
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz: SECONDS must be a whole number" >&2; exit 2; }

bash scripts/setup.sh
# libFuzzer ships with the toolchain's clang (usr/lib/clang/*/lib/linux/libclang_rt.fuzzer*).
swift_bin="$(dirname "$(readlink -f "$(command -v swift)")")"
ls "$swift_bin"/../lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 \
  || { echo "fuzz: this Swift toolchain has no libFuzzer (libclang_rt.fuzzer)" >&2; exit 1; }
# The package declares the fuzz target only when MOE_TUNE_FUZZ=1 (libFuzzer provides main).
# One combined -sanitize=fuzzer,address: with SwiftPM's --sanitize=fuzzer --sanitize=address
# swiftc gets two -sanitize flags, keeps only the last, and the Swift code has no coverage.
MOE_TUNE_FUZZ=1 swift build --product moe-tune-fuzz --scratch-path .build-fuzz \
  -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address 2>&1 | grep -v "ld.gold: warning: Cannot export local symbol" || true
bin=.build-fuzz/debug/moe-tune-fuzz
[ -x "$bin" ] || { echo "fuzz: build failed" >&2; exit 1; }

export MOE_TUNE_FUZZ_FIXTURES="$PWD/Tests/MoETuneTests/Fixtures"
# Leaks are not findings here (the Swift runtime's caches look like leaks at exit).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
failed=()
summary=()
for t in "${targets[@]}"; do
  case "$t" in tokenizer|gguf) max_len=65536 ;; template) max_len=16384 ;; *) max_len=4096 ;; esac
  mkdir -p ".build-fuzz/corpus/$t" ".build-fuzz/artifacts/$t"
  log=".build-fuzz/$t.log"
  echo "fuzz: $t for ${secs}s (log $log)"
  rc=0
  # One process, one job; -timeout per input, -rss_limit_mb for the whole process (also the
  # largest single allocation). The outer timeout only catches a fuzzer that stops responding.
  # FUZZ_RUNS=N (with FUZZ_SEED=S) makes a run deterministic: exactly N inputs from seed S,
  # as CI uses it, so a run that passes here passes there; otherwise SECONDS of fuzzing.
  limit=(-max_total_time="$secs")
  [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
  [ -n "${FUZZ_SEED:-}" ] && limit+=(-seed="$FUZZ_SEED")
  MOE_TUNE_FUZZ_TARGET="$t" timeout -k 10 $((secs + 120)) "$bin" \
    ".build-fuzz/corpus/$t" "fuzz/corpus/$t" -dict="fuzz/dict/$t.dict" \
    "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix=".build-fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) after ${runs:-?} executions")
    grep -E "ERROR: |==[0-9]+==|Fatal error|SUMMARY|Test unit written|artifact_prefix" "$log" | head -20 >&2 || true
    tail -40 "$log" >&2
  else
    summary+=("$t: ${runs:-?} executions, coverage ${cov:-?}, no crash")
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}: see .build-fuzz/artifacts/ and .build-fuzz/*.log" >&2
  exit 1
fi
