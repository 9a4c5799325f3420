#!/usr/bin/env bash
# Trains a few steps of LoRA on every model fixture (and the demo model) and prints the
# SHA-256 of each adapter: a refactoring that must not change any number is checked by
# running this before and after and comparing the two lists (diff).
#   bash scripts/adapter_digests.sh [MOE_TUNE_BINARY] > digests.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.build/debug/moe-tune}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
models=(data/demo-model)
for d in Tests/MoETuneTests/Fixtures/*/; do
  d=${d%/}
  [ -f "$d/config.json" ] && [ -f "$d/model.safetensors" ] && [ -f "$d/tokenizer.model" ] && models+=("$d")
done
for m in "${models[@]}"; do
  name=$(basename "$m")
  i=0
  for extra in 'lora.targets=[query,key,value,projection]' 'lora.targets=[query,key,value,projection,mlp]' \
      'lora.dropout=0.1' 'quantization.type=nf4'; do
    i=$((i + 1))
    out="$work/$name-$i"
    if "$bin" train --config configs/demo.yaml --set model="$m" --set training.max_steps=3 \
        --set training.eval_every=0 --set "$extra" --set training.out_dir="$out" \
        >"$work/log" 2>&1; then
      echo "$(sha256sum < "$out/adapter_model.safetensors" | cut -c1-16) $name $extra"
    else
      echo "failed $name $extra: $(tail -1 "$work/log" | cut -c1-160)"
    fi
  done
done
