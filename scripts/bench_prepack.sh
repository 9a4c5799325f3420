#!/usr/bin/env bash
# bench-train with and without pre-packed frozen weights, and peft, alternating:
#   bash scripts/bench_prepack.sh BINARY MODEL_DIR ROUNDS [--experts] [PEFT_PYTHON]
# Per round: moe-tune MOE_TUNE_PREPACK=0 (OpenBLAS re-packs every product), =forward (forward
# copy only), =1 (forward and input-gradient copies), then peft (../shared/peer/peft_bench.py,
# 2 threads). One JSON line per run (tokens_per_s, cpu_ms_per_token, peak_rss_mb, ...).
set -euo pipefail
bin=$1 model=$2 rounds=$3 experts=${4:-} py=${5:-$HOME/peer-venv/bin/python}
peer=$(dirname "$0")/../../shared/peer/peft_bench.py
[ -f "$peer" ] || peer=/work/shared/peer/peft_bench.py
for r in $(seq 1 "$rounds"); do
  for mode in 0 forward 1; do
    echo "round $r prepack=$mode: $(MOE_TUNE_PREPACK=$mode "$bin" bench-train --model "$model" $experts)"
  done
  echo "round $r peft: $("$py" "$peer" --model "$model" $experts 2>/dev/null | tail -1)"
done
