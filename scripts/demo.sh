#!/usr/bin/env bash
# The main job on the small model and data shipped in data/: installs what it needs,
# builds moe-tune (release), evaluates the base model on the test split (loss and
# exact-match accuracy of greedy answers), fine-tunes it with LoRA as configs/demo.yaml
# says, and evaluates the adapter the same way. The run's report is out/demo/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --product moe-tune
bin=./.build/release/moe-tune
echo "== base model on data/test.jsonl"
$bin eval --model data/demo-model --data data/test.jsonl --generate --max-new-tokens 8
echo "== fine-tuning (configs/demo.yaml)"
$bin train --config configs/demo.yaml --overwrite
echo "== fine-tuned (data/demo-model + out/demo) on data/test.jsonl"
$bin eval --model data/demo-model --adapter out/demo --data data/test.jsonl --generate --max-new-tokens 8
echo "== report: out/demo/report.html"
