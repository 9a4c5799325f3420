#!/usr/bin/env bash
# Allocations per decoded token, under an LD_PRELOAD allocation counter (scripts/alloc_count.c).
#  1. The check (fails on any): DecodeAllocationTests runs Generator.generate for 16 and 80
#     new tokens (greedy and sampled, fast products, a dense and an MoE GGUF fixture) and
#     requires the same number of allocations; it needs the test build (swift build --build-tests).
#  2. A figure: `moe-tune generate --ignore-eos --json` for 16 and 80 tokens, the difference
#     per token. Not zero: the reply's text is decoded from the token ids once at the end.
#   bash scripts/check_decode_allocs.sh [MODEL] [BINARY]     (CI: .ci/run, after the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-Tests/MoETuneTests/Fixtures/gguf/tiny-llama/model.gguf}
bin=${2:-.build/debug/moe-tune}
bundle=${XCTEST_BUNDLE:-$(dirname "$bin")/moe-tunePackageTests.xctest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/alloc_count.so" scripts/alloc_count.c -ldl
if ! LD_PRELOAD="$work/alloc_count.so" "$bundle" MoETuneTests.DecodeAllocationTests >"$work/test.log" 2>&1 \
  || ! grep -q '^decode allocations' "$work/test.log"; then
  grep -E 'error|decode allocations|Skipped|Executed' "$work/test.log" | head -20 >&2
  echo "check_decode_allocs: FAILED (the decoding loop allocates per token, or the test did not run)" >&2
  exit 1
fi
grep '^decode allocations' "$work/test.log"
count() {
  LD_PRELOAD="$work/alloc_count.so" "$bin" generate --model "$model" --prompt "The history of the Roman Empire" \
    --max-new-tokens "$1" --ignore-eos --json 2>&1 >/dev/null | sed -n 's/^allocations: //p' | tail -1
}
a=$(count 16); b=$(count 80)
echo "generate: $a allocations for 16 tokens, $b for 80: $(( (b - a) / 64 )) per token ($(( b - a )) for 64 more; the reply's text)"
echo "check_decode_allocs: OK"
