#!/usr/bin/env bash
# moe-tune beside llama.cpp on the same GGUF, the same prompts and thread count, alternating
# ROUNDS times: decode tokens/s (a short prompt, NEW tokens, end of sequence ignored) and
# prompt tokens/s (a prompt of about 512 tokens). Prints one line per run and the medians.
#   PY=/path/to/venv/bin/python bash scripts/bench_decode.sh FILE.gguf [NEW] [ROUNDS] [THREADS]
# PY's environment needs llama-cpp-python (built from source: CMAKE_ARGS="-DGGML_NATIVE=ON").
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$1 new=${2:-128} rounds=${3:-3} threads=${4:-2}
py=${PY:-python3}
bin=${BIN:-.build/release/moe-tune}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "The history of the Roman Empire" > "$work/short.txt"
python3 -c "
w='the history of the roman empire began when augustus became the first emperor and it lasted for many centuries across europe africa and asia '.split()
print(' '.join(w[i % len(w)] for i in range(470)))" > "$work/long.txt"
grep -m1 'model name' /proc/cpuinfo
echo "threads $threads; flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|fma)$' | tr '\n' ' ')"
run_moe() {
  MOE_TUNE_THREADS=$threads "$bin" generate --model "$gguf" --prompt "$(cat "$1")" --max-new-tokens "$2" --ignore-eos --json 2>/dev/null |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.pop('text'); print(json.dumps(d))"
}
for r in $(seq "$rounds"); do
  echo "moe-tune decode $(run_moe "$work/short.txt" "$new")" | tee -a "$work/log"
  echo "llama.cpp decode $("$py" scripts/llama_speed.py "$gguf" "$work/short.txt" "$new" "$threads")" | tee -a "$work/log"
  echo "moe-tune prompt $(run_moe "$work/long.txt" 1)" | tee -a "$work/log"
  echo "llama.cpp prompt $("$py" scripts/llama_speed.py "$gguf" "$work/long.txt" 1 "$threads")" | tee -a "$work/log"
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
done
python3 - "$work/log" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    tool, kind, obj = line.split(" ", 2)
    d = json.loads(obj)
    runs.setdefault((tool, kind), []).append(d["tokens_per_s"] if kind == "decode" else d["prompt_tokens_per_s"])
for kind in ("decode", "prompt"):
    m, l = statistics.median(runs[("moe-tune", kind)]), statistics.median(runs[("llama.cpp", kind)])
    print(f"median {kind} tokens/s: moe-tune {m:.1f}, llama.cpp {l:.1f}, ratio {m / l:.2f}x")
PY
