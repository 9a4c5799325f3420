#!/usr/bin/env bash
# Allocations per decoded token: runs `moe-tune generate --ignore-eos` twice on a model (16
# and 80 new tokens) under an LD_PRELOAD allocation counter (scripts/alloc_count.c) and
# prints the difference per token. The decoding step itself allocates nothing; what is left
# is the reply's text (the token ids and their decoded string, built once at the end).
#   bash scripts/check_decode_allocs.sh [MODEL] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-Tests/MoETuneTests/Fixtures/gguf/tiny-llama/model.gguf}
bin=${2:-.build/release/moe-tune}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/alloc_count.so" scripts/alloc_count.c -ldl
count() {
  LD_PRELOAD="$work/alloc_count.so" "$bin" generate --model "$model" --prompt "The history of the Roman Empire" \
    --max-new-tokens "$1" --ignore-eos --json 2>&1 >/dev/null | sed -n 's/^allocations: //p' | tail -1
}
a=$(count 16); b=$(count 80)
echo "allocations: $a for 16 tokens, $b for 80 tokens: $(( (b - a) / 64 )) per token ($(( b - a )) for 64 more)"
