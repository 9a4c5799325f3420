#!/usr/bin/env bash
# End-to-end `moe-tune train` throughput with and without packing, alternating runs.
#   bash scripts/bench_packing.sh BINARY CONFIG DATA MAX_SEQ_LEN BATCH_SIZE BATCH_TOKENS ROUNDS OUT
# One epoch of DATA on CONFIG's model and LoRA settings, no validation or test set; prints
# one line per run: trained (counted) tokens/s and real tokens/s over the training loop
# (metrics.jsonl's elapsed_s), steps, and the padding share over all steps.
set -euo pipefail
bin=$1 config=$2 data=$3 seq=$4 batch=$5 tokens=$6 rounds=$7 out=$8
for r in $(seq 1 "$rounds"); do
  for packing in false true; do
    extra=()
    if [ "$packing" = true ]; then extra=(--set training.batch_tokens="$tokens"); fi
    dir="$out/$r-$packing"
    mkdir -p "$out"
    "$bin" train --config "$config" --overwrite \
      --set data.train="$data" --set data.valid=null --set data.test=null \
      --set training.max_steps=null --set training.epochs=1 --set training.eval_every=0 \
      --set training.max_seq_len="$seq" --set training.batch_size="$batch" \
      --set training.packing="$packing" --set training.out_dir="$dir" "${extra[@]}" > "$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
    python3 - "$dir/metrics.jsonl" "$packing" "$r" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"type":"step"' in l.replace(" ", "")]
t = steps[-1]["elapsed_s"]
tok = sum(s["tokens"] for s in steps); real = sum(s["tokens_real"] for s in steps); comp = sum(s["tokens_computed"] for s in steps)
print(json.dumps({"round": int(sys.argv[3]), "packing": sys.argv[2] == "true", "steps": len(steps), "seconds": round(t, 2),
                  "trained_tokens_per_s": round(tok / t, 1), "real_tokens_per_s": round(real / t, 1),
                  "padding_share": round((comp - real) / comp, 4), "trained_tokens": tok}))
PY
  done
done
