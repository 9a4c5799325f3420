#!/usr/bin/env bash
# Peak RSS of 10 LoRA training steps on one GGUF model stored four ways: as given (e.g. Q4_1),
# converted to Q4_0 and to f32 by `moe-tune merge --format gguf` (no adapter), and the given
# file re-quantized to NF4 while loading. Release build; /usr/bin/time -f %M.
#   bash scripts/gguf_rss.sh [MODEL.gguf [MORE.gguf ...]]   (default: SmolLM2 from scripts/get_smollm2.sh)
# MORE: further files of the same model run as given (e.g. a Q4_K_M from llama.cpp's quantizer).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(bash scripts/get_smollm2.sh)}"
MORE=("${@:2}")
BIN="${MOE_TUNE:-.build/release/moe-tune}"
[ -x "$BIN" ] || swift build -c release
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
for t in q4_0 f32; do "$BIN" merge --model "$MODEL" --format gguf --gguf-type $t --out "$W/model-$t.gguf" >/dev/null; done
run() {
  name=$1; model=$2; shift 2
  /usr/bin/time -f "$name: peak RSS %M KB, wall %e s" "$BIN" train --config configs/demo.yaml --set model="$model" \
    --set data.train=data/train.jsonl --set data.valid=null --set data.test=null --set training.max_steps=10 \
    --set training.eval_every=0 --set training.batch_size=4 --set training.max_seq_len=64 \
    --set "lora.targets=[query,key,value,projection,mlp]" --set training.out_dir="$W/out-$name" "$@" 2>&1 | grep -E "trained|peak RSS"
}
run as-given "$MODEL"
run q4_0 "$W/model-q4_0.gguf"
run f32 "$W/model-f32.gguf"
run nf4 "$MODEL" --set "quantization={type: nf4, block_size: 64, double_quant: true}"
for m in "${MORE[@]}"; do run "$(basename "$m" .gguf)" "$m"; done
