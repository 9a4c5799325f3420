#!/usr/bin/env bash
# GRPO with a verifiable reward on the demo model (data/demo-model): a short SFT run (60 steps
# of configs/demo.yaml) leaves the adapter part-way trained; GRPO (configs/grpo.yaml: the
# exact-answer reward against data/grpo.jsonl's "answer") then starts from that adapter. The
# exact-match accuracy of greedy answers on data/test.jsonl is printed before and after, with
# the wall time of each run. MOE_TUNE=path picks the binary (default: build release).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MOE_TUNE:-./.build/release/moe-tune}
if [ -z "${MOE_TUNE:-}" ]; then swift build -c release --product moe-tune; fi
[ -f data/grpo.jsonl ] || python3 scripts/make_grpo_data.py
accuracy() {
  "$bin" eval --model data/demo-model --adapter "$1" --data data/test.jsonl --generate --max-new-tokens 8 2>/dev/null \
    | grep -E "^exact match|^  (add|capital|reverse) "
}
echo "== SFT, 60 steps (configs/demo.yaml) -> out/grpo-demo-sft"
start=$(date +%s)
"$bin" train --config configs/demo.yaml --set training.max_steps=60 --set training.eval_every=0 \
  --set training.out_dir=out/grpo-demo-sft --overwrite 2>/dev/null | tail -1
echo "   ($(( $(date +%s) - start )) s)"
echo "== before GRPO: data/demo-model + out/grpo-demo-sft on data/test.jsonl"
accuracy out/grpo-demo-sft
echo "== GRPO (configs/grpo.yaml from out/grpo-demo-sft) -> out/grpo-demo"
start=$(date +%s)
"$bin" train --config configs/grpo.yaml --set training.init_adapter=out/grpo-demo-sft \
  --set training.out_dir=out/grpo-demo --overwrite 2>&1 | grep -E "^valid at|^trained"
echo "   ($(( $(date +%s) - start )) s on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores)"
echo "== after GRPO: data/demo-model + out/grpo-demo on data/test.jsonl"
accuracy out/grpo-demo
echo "== report: out/grpo-demo/report.html"
