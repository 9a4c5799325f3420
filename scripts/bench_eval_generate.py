"""eval --generate: one binary against another, in alternating rounds on the same machine.

    python3 scripts/bench_eval_generate.py OLD_BIN NEW_BIN ROUNDS -- EVAL_ARGS...
    e.g. python3 scripts/bench_eval_generate.py /tmp/old/moe-tune .build/release/moe-tune 9 -- \\
           --model data/demo-model --data data/test.jsonl --max-new-tokens 8

Each round runs, for each binary, `eval EVAL_ARGS --generate` (the whole command) and
`eval EVAL_ARGS` (the loss pass alone). Prints the medians of CPU seconds (user + sys of the
child, from getrusage) and wall seconds, the generation's share (whole less loss pass) and
NEW's speed-up on it, in both. The generation's share is small on small models, so take
several rounds on a quiet machine.
"""
import resource, statistics, subprocess, sys, time

old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = sys.argv[4:]
if args and args[0] == "--":
    args = args[1:]


def run(binary, generate):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([binary, "eval", *args] + (["--generate"] if generate else []), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


times = {(who, g): [] for who in ("old", "new") for g in (True, False)}
for _ in range(rounds):
    for who, binary in (("old", old), ("new", new)):
        for g in (True, False):
            times[(who, g)].append(run(binary, g))
gen = {}
for who in ("old", "new"):
    med = {g: [statistics.median(x[i] for x in times[(who, g)]) for i in (0, 1)] for g in (True, False)}
    gen[who] = [med[True][i] - med[False][i] for i in (0, 1)]
    print(f"{who}: whole {med[True][0]:.3f} s CPU ({med[True][1]:.3f} wall), loss pass {med[False][0]:.3f} CPU "
          f"({med[False][1]:.3f} wall), generation {gen[who][0]:.3f} s CPU ({gen[who][1]:.3f} wall)")
if min(gen["new"]) > 0:
    print(f"generation: {gen['old'][0] / gen['new'][0]:.1f}x CPU, {gen['old'][1] / gen['new'][1]:.1f}x wall")
