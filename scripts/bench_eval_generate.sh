#!/usr/bin/env bash
# eval --generate: one binary against another, in alternating rounds on the same machine.
#
#   bash scripts/bench_eval_generate.sh OLD_BIN NEW_BIN ROUNDS -- EVAL_ARGS...
#   e.g. bash scripts/bench_eval_generate.sh /tmp/old/moe-tune .build/release/moe-tune 7 -- \
#          --model data/demo-model --data data/test.jsonl --max-new-tokens 8
#
# Each round runs, for each binary, `eval EVAL_ARGS --generate` (the whole command) and
# `eval EVAL_ARGS` (the loss pass alone) under /usr/bin/time. Prints the medians of CPU
# seconds (user + sys) and wall seconds, the generation's share (whole less loss pass) and
# NEW's speed-up on it. The generation's share is small on small models, so several rounds
# on a quiet machine are needed for a stable figure.
set -euo pipefail
old=$1 new=$2 rounds=$3
shift 3
[ "${1:-}" = "--" ] && shift
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
run() {  # run NAME BIN ARGS...: appends "cpu wall" to $t/NAME
    local name=$1 bin=$2
    shift 2
    /usr/bin/time -o "$t/time" -f "%U %S %e" "$bin" eval "$@" >/dev/null 2>&1
    awk '{printf "%.3f %.3f\n", $1 + $2, $3}' "$t/time" >> "$t/$name"
}
for r in $(seq "$rounds"); do
    for who in old new; do
        bin=$old; [ $who = new ] && bin=$new
        run "$who-whole" "$bin" "$@" --generate
        run "$who-loss" "$bin" "$@"
    done
done
python3 - "$t" <<'PY'
import statistics, sys, os
t = sys.argv[1]
def med(name, col):
    return statistics.median(float(l.split()[col]) for l in open(os.path.join(t, name)))
gen = {}
for who in ("old", "new"):
    w, l = med(f"{who}-whole", 0), med(f"{who}-loss", 0)
    gen[who] = w - l
    print(f"{who}: whole {w:.3f} s CPU ({med(f'{who}-whole', 1):.3f} wall), loss pass {l:.3f} CPU ({med(f'{who}-loss', 1):.3f} wall), generation {w - l:.3f} s CPU")
if gen["new"] > 0:
    print(f"generation: {gen['old'] / gen['new']:.1f}x")
PY
