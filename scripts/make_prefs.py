"""data/prefs.jsonl: preference pairs for the DPO/ORPO demo (configs/dpo.yaml), from the demo's
data/train.jsonl: the right completion is chosen, the completion of another line of the same
task (a wrong answer) rejected. Seeded.

    python3 scripts/make_prefs.py > data/prefs.jsonl
"""
import json, random, sys

rows = [json.loads(l) for l in open("data/train.jsonl")]
rng = random.Random(0)
by_task = {}
for r in rows:
    by_task.setdefault(r["task"], []).append(r)
out = []
for r in rows[:400]:
    wrong = [o["completion"] for o in by_task[r["task"]] if o["completion"] != r["completion"]]
    out.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": rng.choice(wrong)})
for o in out:
    sys.stdout.write(json.dumps(o) + "\n")
