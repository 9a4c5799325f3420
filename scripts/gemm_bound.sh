#!/usr/bin/env bash
# The GEMM bound (README "Speed" → "The GEMM bound"): how fast could a bench-train step be if
# everything outside the matrix products took no time and every product ran as fast as
# OpenBLAS runs that shape alone, warm, on one core, with the cores perfectly shared? Compares
# that ceiling with moe-tune's measured step and, when the peer's venv is there, with peft's.
#   bash scripts/gemm_bound.sh [MOE_TUNE_BINARY] [bench-train options, e.g. --model ~/bench-small --qlora]
# Needs gcc and libopenblas-dev (pkg-config openblas); peft optional (~/peer-venv).
set -euo pipefail
B="${1:-.build/release/moe-tune}"; shift || true
ARGS=("$@"); [ ${#ARGS[@]} -gt 0 ] || ARGS=(--model "$HOME/bench-small")
PY="${PEER_PYTHON:-$HOME/peer-venv/bin/python}"
PEER="$(cd "$(dirname "$0")/../.." && pwd)/shared/peer/peft_bench.py"
W=$(mktemp -d); [ -n "${KEEP:-}" ] && echo "work files: $W" || trap 'rm -rf "$W"' EXIT
gcc -O2 -shared -fPIC "$(dirname "$0")/gemm_census.c" -o "$W/census.so" -ldl
gcc -O2 "$(dirname "$0")/gemm_replay.c" -o "$W/replay" $(pkg-config --cflags --libs openblas)
STEPS=4 WARM=1 ROUNDS="${ROUNDS:-3}"
# 1. The products of STEPS + WARM steps with their in-step times (one clock read per call), then
#    each shape alone, with the one-thread large-sgemm rate taken in the same process.
GEMM_CENSUS_OUT="$W/census.txt" LD_PRELOAD="$W/census.so" "$B" bench-train "${ARGS[@]}" --steps $STEPS --warmup $WARM \
  >/dev/null 2>&1
"$W/replay" "$W/census.txt" > "$W/replay.txt"
# 2. ROUNDS rounds of moe-tune's step with its peak (--peak) then peft's, alternating: the host's
#    speed drifts, so each side is a fraction of the peak taken beside it, and medians are reported.
for r in $(seq "$ROUNDS"); do
  "$B" bench-train "${ARGS[@]}" --peak 2>/dev/null | tail -1 >> "$W/runs.jsonl"
  if [ -x "$PY" ] && [ -f "$PEER" ]; then "$PY" "$PEER" "${ARGS[@]}" 2>/dev/null | tail -1 >> "$W/peft.jsonl" || true; fi
done
python3 - "$W" $((STEPS + WARM)) "${ARGS[@]}" <<'PY'
import json, os, statistics as st, sys
w, steps = sys.argv[1], int(sys.argv[2])
runs = [json.loads(l) for l in open(os.path.join(w, "runs.jsonl")) if l.strip()]
p = os.path.join(w, "peft.jsonl")
pefts = [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
flop = instep = alone = 0.0
peak1 = None
for line in open(os.path.join(w, "replay.txt")):
    f = line.split()
    if f[0] == "peak": peak1 = float(f[1]); continue
    ta, tb, m, n, k, beta, calls, s, best = f
    fl = 2.0 * int(m) * int(n) * int(k) * int(calls)
    flop += fl; instep += float(s); alone += float(best) * int(calls)
r0 = runs[0]
counted = r0["step_gflop"] * 1e9 * steps
eff_alone = flop / alone / 1e9 / peak1                 # the products alone, of the one-thread peak
bound_frac = eff_alone * counted / flop                # the step's counted FLOPs at that rate, nothing else
cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
print(f"CPU: {cpu}, {r0['threads']} threads; bench-train {' '.join(sys.argv[3:]) if len(sys.argv) > 3 else ''}")
print(f"products through OpenBLAS: {flop / steps / 1e9:.1f} GFLOP a step (bench-train counts {r0['step_gflop']})")
print(f"  alone, warm, one thread: {flop / alone / 1e9:.1f} GFLOP/s = {eff_alone:.1%} of the one-thread"
      f" 2048^3 rate {peak1:.1f} (same process)")
print(f"  in the step (census run): {flop / instep / 1e9:.1f} GFLOP/s per thread")
print(f"bound: every product at its rate alone, nothing else, cores perfectly shared = {bound_frac:.1%} of the peak on the counted FLOPs")
fm = [x["fraction_of_peak"] for x in runs]
tm = ", ".join("%.0f" % x["tokens_per_s"] for x in runs)
print(f"moe-tune: {tm} tok/s;"
      f" {', '.join(f'{x:.1%}' for x in fm)} of the peak beside it (median {st.median(fm):.1%})")
if pefts:
    # peft's fraction against the peak of the moe-tune run just before it; same FLOP count.
    fp = [q["tokens_per_s"] * x["step_gflop"] / (x["tokens_per_s"] * x["step_s"]) / x["peak_gflops"] for x, q in zip(runs, pefts)]
    ratios = [x["tokens_per_s"] / q["tokens_per_s"] for x, q in zip(runs, pefts)]
    tp = ", ".join("%.0f" % q["tokens_per_s"] for q in pefts)
    print(f"peft: {tp} tok/s; {', '.join(f'{x:.1%}' for x in fp)} of the peak (median {st.median(fp):.1%})")
    print(f"ratio to peft: measured {', '.join(f'{x:.2f}' for x in ratios)}x (median {st.median(ratios):.2f}x);"
          f" bound {bound_frac / st.median(fp):.2f}x")
PY
