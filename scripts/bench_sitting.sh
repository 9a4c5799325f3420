#!/usr/bin/env bash
# One side-by-side sitting of moe-tune against transformers + peft (README "Speed" → "Figures"):
# bench-small and bench-64 (../shared/peer/make_model.py), moe-tune's bench-train and the peer's
# peft_bench.py alternating, 2 threads each; one JSON line per run appended to OUT with the time
# and the load average. Run it on a machine with nothing else running.
#   bash scripts/bench_sitting.sh [OUT.jsonl] [MOE_TUNE_BINARY] [PEER_PYTHON]
set -uo pipefail
OUT="${1:-bench-sitting.jsonl}"
B="${2:-.build/release/moe-tune}"
PY="${3:-$HOME/peer-venv/bin/python}"
PEER="$(cd "$(dirname "$0")/../.." && pwd)/shared/peer/peft_bench.py"
[ -f "$PEER" ] || PEER=../shared/peer/peft_bench.py
SMALL="${BENCH_SMALL:-$HOME/bench-small}" B64="${BENCH_64:-$HOME/bench-64}"
run() {
  local tag="$1"; shift
  local t0 out; t0=$(date -u +%T); out=$("$@" 2>/dev/null | tail -1)
  [ -n "$out" ] || out=null
  echo "{\"tag\":\"$tag\",\"t\":\"$t0\",\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"r\":$out}" >> "$OUT"
}
# 8 experts top-2 against 64 experts top-8 at equal active FLOPs, every expert adapted.
for i in 1 2 3 4 5; do
  run small-experts "$B" bench-train --model "$SMALL" --experts
  run b64-experts "$B" bench-train --model "$B64" --experts
done
# moe-tune beside peft.
for i in 1 2; do
  for mode in "" --experts --qlora; do
    run "small${mode:-qkvo}" "$B" bench-train --model "$SMALL" $mode
    run "peft-small${mode:-qkvo}" "$PY" "$PEER" --model "$SMALL" $mode
  done
done
for mode in "" --experts; do
  run "b64${mode:-qkvo}" "$B" bench-train --model "$B64" $mode
  run "peft-b64${mode:-qkvo}" "$PY" "$PEER" --model "$B64" $mode
done
# The step's fraction of the large-sgemm rate, and one against two threads.
run small-qkvo-peak "$B" bench-train --model "$SMALL" --peak
for i in 1 2; do
  run small-qkvo-1t "$B" bench-train --model "$SMALL" --threads 1
  run small-qkvo-2t "$B" bench-train --model "$SMALL" --threads 2
done
