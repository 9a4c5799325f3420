#!/usr/bin/env bash
# libFuzzer over moe-tune's input parsers (fuzz/): builds fuzz/Sources/moe-tune-fuzz with
# libFuzzer and AddressSanitizer in .build-fuzz, then runs each target in turn, one job:
#   bash scripts/fuzz.sh [all|TARGET[,TARGET...]] [SECONDS]      (defaults: all, 60)
#   bash scripts/fuzz.sh --minutes N [all|TARGET[,TARGET...]]    a sitting: N minutes PER target
#   bash scripts/fuzz.sh --report                                 the tally's totals per target
#                                       (and how far each is towards 2 million executions)
# Targets: safetensors peft jsonl yaml tokenizer template gguf. Both modes start from the
# committed corpus fuzz/corpus/TARGET plus the inputs earlier runs found in
# .build-fuzz/corpus/TARGET (where new inputs go); a crash, timeout or out-of-memory input
# goes to .build-fuzz/artifacts/TARGET/. The SECONDS mode (CI: FUZZ_RUNS, FUZZ_SEED) leaves
# fuzz/ alone. A --minutes sitting then merges the inputs found into fuzz/corpus/TARGET with
# libFuzzer's -merge=1 and -set_cover_merge=1 (re-minimised each time: the seeds stay; of the
# other inputs only those that add coverage, those committed before first, then the new ones
# smallest first, at most FUZZ_CORPUS_FILES files (500) and FUZZ_CORPUS_KB KiB (1024) per
# target) and appends one line per target to fuzz/executions.tsv (date, target, executions,
# seconds, coverage, crashes, corpus files, build); commit both.
# Build: FUZZ_BUILD=debug|release (default: debug for the SECONDS mode, as CI has always run
# it; release for --minutes); FUZZ_NO_BUILD=1 skips the build (a second sitting beside one
# that is running, on other targets). Long sittings: run under nice -n 19 on a shared machine.
# Exits 1 when any target found something. Reproduce one input (BUILD: debug or release):
#   SWIFT_DETERMINISTIC_HASHING=1 MOE_TUNE_FUZZ_TARGET=TARGET .build-fuzz/BUILD/moe-tune-fuzz FILE
set -euo pipefail
cd "$(dirname "$0")/.."
all=(safetensors peft jsonl yaml tokenizer template gguf)
tally=fuzz/executions.tsv

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi

if [ "${1:-}" = --report ]; then
  [ -f "$tally" ] || { echo "fuzz: no tally yet ($tally)" >&2; exit 1; }
  awk -F'\t' 'NR > 1 {
      n[$2]++; ex[$2] += $3; s[$2] += $4; cr[$2] += $6; cov[$2] = $5; files[$2] = $7
      if (!($2 in first)) { first[$2] = substr($1, 1, 10); order[++k] = $2 }
      last[$2] = substr($1, 1, 10)
    }
    END {
      printf "%-12s %8s %14s %9s %9s %8s %7s %7s %7s  %s\n", "target", "sittings", "executions", "seconds", "exec/s", "coverage", "crashes", "corpus", "of 2M", "dates"
      for (i = 1; i <= k; i++) { t = order[i]; E += ex[t]; S += s[t]; C += cr[t]
        printf "%-12s %8d %14d %9d %9.0f %8s %7d %7s %6.0f%%  %s..%s\n", t, n[t], ex[t], s[t], s[t] ? ex[t] / s[t] : 0, cov[t], cr[t], files[t], ex[t] / 20000, first[t], last[t] }
      printf "%-12s %8s %14d %9d %9s %8s %7d\n", "all", "", E, S, "", "", C
    }' "$tally"
  exit 0
fi

minutes=""
if [ "${1:-}" = --minutes ]; then
  minutes="${2:-}"
  [[ "$minutes" =~ ^[0-9]+$ ]] && [ "$minutes" -gt 0 ] || { echo "fuzz: --minutes needs a whole number of minutes (per target)" >&2; exit 2; }
  which="${3:-all}"
  secs=$((minutes * 60))
  build="${FUZZ_BUILD:-release}"
else
  which="${1:-all}"
  secs="${2:-60}"
  build="${FUZZ_BUILD:-debug}"
fi
if [ "$which" = all ]; then targets=("${all[@]}"); else IFS=, read -r -a targets <<<"$which"; fi
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t' (targets: ${all[*]})" >&2; exit 2; }
done
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz: SECONDS must be a whole number" >&2; exit 2; }
[[ "$build" = debug || "$build" = release ]] || { echo "fuzz: FUZZ_BUILD must be debug or release" >&2; exit 2; }
max_files="${FUZZ_CORPUS_FILES:-500}"
max_kb="${FUZZ_CORPUS_KB:-1024}"

bin=.build-fuzz/$build/moe-tune-fuzz
if [ "${FUZZ_NO_BUILD:-}" != 1 ]; then
  bash scripts/setup.sh
  # libFuzzer ships with the toolchain's clang (usr/lib/clang/*/lib/linux/libclang_rt.fuzzer*).
  swift_bin="$(dirname "$(readlink -f "$(command -v swift)")")"
  ls "$swift_bin"/../lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 \
    || { echo "fuzz: this Swift toolchain has no libFuzzer (libclang_rt.fuzzer)" >&2; exit 1; }
  # The package declares the fuzz target only when MOE_TUNE_FUZZ=1 (libFuzzer provides main).
  # One combined -sanitize=fuzzer,address: with SwiftPM's --sanitize=fuzzer --sanitize=address
  # swiftc gets two -sanitize flags, keeps only the last, and the Swift code has no coverage.
  MOE_TUNE_FUZZ=1 swift build -c "$build" --product moe-tune-fuzz --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address 2>&1 | grep -v "ld.gold: warning: Cannot export local symbol" || true
fi
[ -x "$bin" ] || { echo "fuzz: build failed ($bin missing)" >&2; exit 1; }

export MOE_TUNE_FUZZ_FIXTURES="$PWD/Tests/MoETuneTests/Fixtures"
# Leaks are not findings here (the Swift runtime's caches look like leaks at exit).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# Swift seeds its hashing per process: with it fixed, Dictionary and Set orders, and so the
# coverage an input gives, repeat from run to run (stable merges, findings that reproduce).
export SWIFT_DETERMINISTIC_HASHING=1

# Merges the inputs a sitting found into the committed corpus, re-minimising it: the seeds
# (files not named by a 40-hex SHA-1, from make_corpus.py or added by hand) always stay. Two
# passes that keep only inputs adding coverage (libFuzzer's features) to what the corpus being
# built already covers: first -merge=1 over the merged inputs already committed (smallest
# first; those still adding coverage over the seeds stay, so the committed set changes little),
# then -set_cover_merge=1 over those found in .build-fuzz/corpus/TARGET (a greedy set cover:
# fewer files than -merge=1 for the same features). Past max_files files or max_kb KiB the
# largest new ones are left out. Prints "added removed".
merge_corpus() {
  local t=$1 max_len=$2 dir="fuzz/corpus/$1" tmp=".build-fuzz/merge/$1" dir_abs="$PWD/fuzz/corpus/$1"
  rm -rf "$tmp"; mkdir -p "$tmp/out" "$tmp/pool" "$dir"
  local f size files=0 bytes=0 added=0 removed=0 pass
  for f in "$dir"/*; do
    [ -f "$f" ] || continue
    if [[ "$(basename "$f")" =~ ^[0-9a-f]{40}$ ]]; then cp "$f" "$tmp/pool/"; else
      cp "$f" "$tmp/out/"; files=$((files + 1)); bytes=$((bytes + $(stat -c %s "$f"))); fi
  done
  for pass in "merge $tmp/pool" "set_cover_merge .build-fuzz/corpus/$t"; do
    if ! MOE_TUNE_FUZZ_TARGET="$t" "$bin" -"${pass%% *}"=1 "$tmp/out" "${pass#* }" \
        -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=".build-fuzz/artifacts/$t/" >>".build-fuzz/$t.merge.log" 2>&1; then
      echo "fuzz: $t: merge failed (corpus left as it was), see .build-fuzz/$t.merge.log" >&2
      echo "0 0"; return
    fi
  done
  local keep=()
  while read -r size f; do
    [[ "$f" =~ ^[0-9a-f]{40}$ ]] || continue
    if [ $((files + 1)) -gt "$max_files" ] || [ $((bytes + size)) -gt $((max_kb * 1024)) ]; then continue; fi
    keep+=("$f"); files=$((files + 1)); bytes=$((bytes + size))
  done < <(cd "$tmp/out" && for f in *; do
             [ -e "$dir_abs/$f" ] && o=0 || o=1; printf '%s %s %s\n' "$o" "$(stat -c %s "$f")" "$f"
           done | sort -k1,1n -k2,2n | cut -d' ' -f2-)
  for f in "$dir"/*; do
    [[ "$(basename "$f")" =~ ^[0-9a-f]{40}$ ]] || continue
    [[ " ${keep[*]:-} " == *" $(basename "$f") "* ]] || { rm "$f"; removed=$((removed + 1)); }
  done
  for f in "${keep[@]:+${keep[@]}}"; do
    [ -e "$dir/$f" ] || { cp "$tmp/out/$f" "$dir/$f"; added=$((added + 1)); }
  done
  rm -rf "$tmp"
  echo "$added $removed"
}

failed=()
summary=()
for t in "${targets[@]}"; do
  case "$t" in tokenizer|gguf) max_len=65536 ;; template) max_len=16384 ;; *) max_len=4096 ;; esac
  mkdir -p ".build-fuzz/corpus/$t" ".build-fuzz/artifacts/$t"
  log=".build-fuzz/$t.log"
  echo "fuzz: $t for ${secs}s, $build build (log $log)"
  rc=0
  # One process, one job; -timeout per input, -rss_limit_mb for the whole process (also the
  # largest single allocation). The outer timeout only catches a fuzzer that stops responding.
  # FUZZ_RUNS=N (with FUZZ_SEED=S) makes a run deterministic: exactly N inputs from seed S,
  # as CI uses it, so a run that passes here passes there; otherwise SECONDS of fuzzing.
  limit=(-max_total_time="$secs")
  [ -n "${FUZZ_RUNS:-}" ] && [ -z "$minutes" ] && limit=(-runs="$FUZZ_RUNS")
  [ -n "${FUZZ_SEED:-}" ] && limit+=(-seed="$FUZZ_SEED")
  # Findings are libFuzzer's crash-, timeout-, oom- and leak- files; a slow-unit- file (an input
  # that took long, e.g. while the machine was busy or the process stopped) is not one.
  findings() { mkdir -p ".build-fuzz/artifacts/$t"
    find ".build-fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l; }
  artifacts_before=$(findings)
  start=$(date +%s)
  MOE_TUNE_FUZZ_TARGET="$t" timeout -k 10 $((secs + 120)) "$bin" \
    ".build-fuzz/corpus/$t" "fuzz/corpus/$t" -dict="fuzz/dict/$t.dict" \
    "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix=".build-fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  elapsed=$(( $(date +%s) - start ))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  # -a: a log that quotes a fuzzed input holds binary bytes, and grep would only say it matches.
  cov=$(grep -a -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  crashes=$(( $(findings) - artifacts_before ))
  [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
  extra=""
  if [ -n "$minutes" ]; then
    : >".build-fuzz/$t.merge.log"
    read -r added removed < <(merge_corpus "$t" "$max_len")
    files=$(find "fuzz/corpus/$t" -maxdepth 1 -type f | wc -l)
    [ -f "$tally" ] || printf 'date\ttarget\texecutions\tseconds\tcoverage\tcrashes\tcorpus_files\tbuild\n' >"$tally"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$t" "${runs:-0}" "$elapsed" \
      "${cov:-0}" "$crashes" "$files" "$build" >>"$tally"
    extra=", fuzz/corpus/$t: $added inputs added, $removed dropped, $files files"
  fi
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) after ${runs:-?} executions in ${elapsed}s$extra")
    grep -E "ERROR: |==[0-9]+==|Fatal error|SUMMARY|Test unit written|artifact_prefix" "$log" | head -20 >&2 || true
    tail -40 "$log" >&2
  else
    summary+=("$t: ${runs:-?} executions in ${elapsed}s, coverage ${cov:-?}, no crash$extra")
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}: see .build-fuzz/artifacts/ and .build-fuzz/*.log" >&2
  exit 1
fi
