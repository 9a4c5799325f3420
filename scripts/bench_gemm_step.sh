#!/usr/bin/env bash
# The whole training step with OpenBLAS alone against the measured per-shape rule, alternating:
#   bash scripts/bench_gemm_step.sh BINARY MODEL_DIR ROUNDS [--experts]
# Per round: MOE_TUNE_GEMM=openblas, then MOE_TUNE_GEMM=auto (BLIS / oneDNN where the rule picks
# them; needs libblis4-pthread and libdnnl2). One bench-train JSON line per run.
set -euo pipefail
bin=$1 model=$2 rounds=$3 experts=${4:-}
for r in $(seq 1 "$rounds"); do
  for mode in openblas auto; do
    echo "round $r gemm=$mode load=$(cut -d' ' -f1 /proc/loadavg): $(MOE_TUNE_GEMM=$mode "$bin" bench-train --model "$model" $experts)"
  done
done
