#!/usr/bin/env bash
# The GGUF checks against the reference engines, with the release binary:
#   bash scripts/check_gguf.sh [MODEL.gguf]   (default: SmolLM2 from scripts/get_smollm2.sh)
# Needs a Python with torch, transformers, peft and gguf (PYTHON, default ~/peer-venv/bin/python).
# 1. eval on the GGUF equals transformers' loss on the same file; greedy generation of 16
#    tokens on 5 prompts equals transformers' (Tests/MoETuneTests/Fixtures/gguf/smollm2).
# 2. a LoRA trained on the GGUF base: eval --adapter vs peft on transformers' GGUF model;
#    merged to GGUF f32 and f16: transformers' loss on the merged files vs eval --adapter.
# 3. export-lora: gguf-py reads the adapter; with llama-cpp-python installed, llama.cpp's
#    loss on the merged f16 file and its greedy answer with base + LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$HOME/peer-venv/bin/python}"
MODEL="${1:-$(bash scripts/get_smollm2.sh)}"
BIN="${MOE_TUNE:-.build/release/moe-tune}"
[ -x "$BIN" ] || swift build -c release
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
FX=Tests/MoETuneTests/Fixtures/gguf/smollm2
rel() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{abs(a - b) / abs(b):.2e}')" "$1" "$2"; }
loss() { python3 -c "import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['loss'])"; }

echo "== 1. $MODEL: eval and greedy generation against transformers"
ours=$("$BIN" eval --model "$MODEL" --data $FX/eval.jsonl --json 2>/dev/null | loss)
ref=$("$PY" scripts/reference_gguf.py --gguf "$MODEL" --data $FX/eval.jsonl --prompts $FX/prompts.json --out "$W/ref.json" 2>/dev/null | loss)
echo "eval loss: moe-tune $ours, transformers $ref, relative difference $(rel "$ours" "$ref")"
same=0
for i in 0 1 2 3 4; do
    p=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[$i])" $FX/prompts.json)
    want=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['generations'][$i]['text'])" "$W/ref.json")
    got=$("$BIN" generate --model "$MODEL" --chat --prompt "$p" --max-new-tokens 16 2>/dev/null)
    if [ "$got" == "$want" ]; then same=$((same + 1)); else echo "differs for '$p': moe-tune '$got', transformers '$want'"; fi
done
echo "greedy generations equal to transformers': $same of 5"

echo "== 2. LoRA on the GGUF base, merged to GGUF"
"$BIN" train --config configs/demo.yaml --set model="$MODEL" --set data.train=data/train.jsonl --set data.valid=null \
    --set data.test=null --set training.max_steps=30 --set training.eval_every=0 --set training.max_seq_len=64 \
    --set training.out_dir="$W/lora" 2>/dev/null | tail -1
withad=$("$BIN" eval --model "$MODEL" --adapter "$W/lora" --data data/valid.jsonl --json 2>/dev/null | loss)
peft=$("$PY" scripts/reference_gguf.py --gguf "$MODEL" --adapter "$W/lora" --data data/valid.jsonl 2>/dev/null | loss)
echo "eval --adapter $withad; peft on transformers' GGUF model $peft (relative $(rel "$withad" "$peft"))"
for t in f32 f16; do
    "$BIN" merge --model "$MODEL" --adapter "$W/lora" --format gguf --gguf-type $t --out "$W/merged-$t.gguf" 2>/dev/null
    tl=$("$PY" scripts/reference_gguf.py --gguf "$W/merged-$t.gguf" --data data/valid.jsonl 2>/dev/null | loss)
    echo "merged $t: transformers' loss $tl vs eval --adapter $withad (relative $(rel "$tl" "$withad"))"
done

echo "== 3. export-lora"
"$BIN" export-lora --model "$MODEL" --adapter "$W/lora" --out "$W/adapter.gguf"
"$PY" -c "import gguf, sys; r = gguf.GGUFReader(sys.argv[1]); print('gguf-py reads', len(r.tensors), 'tensors, alpha', r.fields['adapter.lora.alpha'].contents())" "$W/adapter.gguf"
if "$PY" -c "import llama_cpp" 2>/dev/null; then
    "$PY" - "$W/merged-f16.gguf" "$MODEL" "$W/adapter.gguf" <<'PYEOF'
import sys, llama_cpp
merged, base, lora = sys.argv[1:4]
q = "Add 6 and 2."
for name, kw in [("merged f16", dict(model_path=merged)), ("base + LoRA", dict(model_path=base, lora_path=lora))]:
    llm = llama_cpp.Llama(n_ctx=256, verbose=False, **kw)
    out = llm.create_completion(q, max_tokens=16, temperature=0)
    print(f"llama.cpp {name}: {out['choices'][0]['text']!r}")
PYEOF
else
    echo "llama-cpp-python is not installed: llama.cpp checks skipped"
fi
