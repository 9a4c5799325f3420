#!/usr/bin/env bash
# moe-tune's adapters in peft 0.21 on transformers 5, per MoE family and target kind.
#   bash scripts/check_peft_out.sh [OUT_DIR]      (needs ~/peer-venv and a built moe-tune)
#   FAMILIES="qwen2_moe" CASES="full" bash scripts/check_peft_out.sh   (a subset)
# For each MoE fixture model, trains 3 steps of moe-tune (so every B is non-zero) in three
# setups, merges each adapter with moe-tune, and runs scripts/check_peft_load.py: peft loads
# the adapter fully and its logits equal transformers' logits of moe-tune's merged folder.
#   all:    every target kind the family has (attention, mlp = experts and dense MLP, router,
#           shared_expert, head unless tied), overrides mlp rank 3 / alpha 5, router rank 1 / alpha 3
#   subset: mlp and router in the last layer only, rsLoRA (full target_parameters names, no target_modules)
#   full:   query LoRA and the router trained in full (modules_to_save)
#   esft:   attention and mlp with lora.experts {select: gate_score, coverage: 0.5}: only the
#           selected experts are adapted (the others are zero blocks of the fused tensors)
#   kind-K: one target kind K alone (CASES="kind-query kind-key kind-value kind-projection kind-mlp
#           kind-router kind-shared_expert kind-head"; kinds a family lacks are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/check_peft_out}
BIN=${MOE_TUNE:-.build/debug/moe-tune}
PY=${PYTHON:-$HOME/peer-venv/bin/python}
FIX=Tests/MoETuneTests/Fixtures
rm -rf "$OUT"; mkdir -p "$OUT"
status=0
for fam in ${FAMILIES:-mixtral qwen2_moe qwen3_moe olmoe granitemoe deepseek_v2 gpt_oss}; do
  tied=$($PY -c "import json;print(json.load(open('$FIX/$fam/config.json')).get('tie_word_embeddings', False))")
  shared=""; [ "$fam" = qwen2_moe ] || [ "$fam" = deepseek_v2 ] && shared=", shared_expert"
  head=", head"; [ "$tied" = True ] && head=""
  for case in ${CASES:-all subset full}; do
    if [ "$case" = kind-shared_expert ] && [ -z "$shared" ]; then continue; fi
    if [ "$case" = kind-head ] && [ -z "$head" ]; then continue; fi
    d="$OUT/$fam-$case"; mkdir -p "$d"
    case $case in
      all) lora="targets: [query, key, value, projection, mlp, router$shared$head]
  overrides: {mlp: {rank: 3, alpha: 5}, router: {rank: 1, alpha: 3}}"; moe="router: lora";;
      subset) lora="targets: [mlp, router]
  layers: 1
  rslora: true"; moe="router: lora";;
      full) lora="targets: [query]"; moe="router: full";;
      esft) lora="targets: [query, key, value, projection, mlp]
  experts: {select: gate_score, coverage: 0.5}"; moe="router: frozen";;
      kind-*) lora="targets: [${case#kind-}]"; moe="router: frozen"; [ "$case" = kind-router ] && moe="router: lora";;
    esac
    cat > "$d/train.yaml" <<EOF
model: $FIX/$fam
data:
  train: data/train.jsonl
lora:
  rank: 2
  alpha: 4
  $lora
moe:
  $moe
optimizer:
  lr: 5.0e-2
training:
  batch_size: 2
  max_steps: 3
  max_seq_len: 32
  out_dir: $d/adapter
EOF
    "$BIN" train --config "$d/train.yaml" > "$d/train.log" 2>&1
    "$BIN" merge --model "$FIX/$fam" --adapter "$d/adapter" --out "$d/merged" > "$d/merge.log" 2>&1
    if $PY scripts/check_peft_load.py --model "$FIX/$fam" --adapter "$d/adapter" --merged "$d/merged" --json > "$d/check.json" 2> "$d/check.err"; then r=ok; else r=FAIL; status=1; fi
    $PY -c "
import json; r = json.load(open('$d/check.json'))
print(f\"$fam $case: loads {r['loaded']}, logits vs moe-tune merge {r.get('logits_max_abs_diff_vs_merged', float('nan')):.2e}, vs base {r.get('logits_max_abs_diff_vs_base', float('nan')):.3f}, loss peft {r.get('peft_loss', float('nan')):.6f} merged {r.get('merged_loss', float('nan')):.6f} $r\", r.get('error', ''))"
  done
done
exit $status
