"""data/grpo.jsonl and data/grpo-valid.jsonl: prompts with a verifiable answer for the GRPO demo
(configs/grpo.yaml), from the demo's data/train.jsonl and data/valid.jsonl: {"prompt", "answer",
"task"}, the answer being the completion without its leading space (the exact reward trims both).

    python3 scripts/make_grpo_data.py
"""
import json

for src, dst, n in [("data/train.jsonl", "data/grpo.jsonl", 400), ("data/valid.jsonl", "data/grpo-valid.jsonl", 64)]:
    rows = [json.loads(l) for l in open(src)][:n]
    with open(dst, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "answer": r["completion"].strip(), "task": r["task"]}) + "\n")
