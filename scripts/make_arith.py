"""data/arith/: additions asked in chat form for the real-model GRPO demo (configs/grpo-smollm2.yaml,
scripts/demo-grpo-real.sh). Each question asks for the number alone ("What is 7 + 5? Reply with
only the number."); the config's reward checks the last number of the reply against "answer".

    python3 scripts/make_arith.py [--seed 0]

train.jsonl  GRPO lines {"prompt": [{"role": "user", ...}], "answer": "12", "task": "add"}: every
             pair (a, b) of numbers below LIMIT not held out, each with one of the phrasings
valid.jsonl  the same form on HELD pairs never in train.jsonl (the accuracy before and after)
test.jsonl   the valid questions as chats {"messages": [user, assistant answer]}, for
             `moe-tune eval --generate` (exact match of the greedy reply, the template's end of turn)
sft.jsonl    the train questions as chats answered "7 + 10 = 17": SFT rows about as long as GRPO's
             (prompt + a 12-token completion), for the peak-RSS comparison in docs/benchmarks.md
"""
import argparse
import json
import os
import random

PHRASINGS = [
    "What is {a} + {b}? Reply with only the number.",
    "Compute {a} + {b}. Answer with just the number.",
    "{a} + {b} = ? Give only the number.",
    "Add {a} and {b}. Reply with only the number.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=20, help="operands are 0 ..< LIMIT")
    ap.add_argument("--held", type=int, default=64, help="pairs held out for valid.jsonl / test.jsonl")
    ap.add_argument("--shots", type=int, default=0, help="worked examples (user question, assistant number) before the question")
    ap.add_argument("--out", default="data/arith")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pairs = [(a, b) for a in range(args.limit) for b in range(args.limit)]
    rng.shuffle(pairs)
    held, train = pairs[:args.held], pairs[args.held:]
    os.makedirs(args.out, exist_ok=True)

    def question(a, b):
        return rng.choice(PHRASINGS).format(a=a, b=b)

    # The worked examples: fixed pairs whose sums are below 10, the same before every question.
    shots = []
    for a, b in [(2, 3), (4, 1), (3, 3)][:args.shots]:
        shots += [{"role": "user", "content": PHRASINGS[0].format(a=a, b=b)}, {"role": "assistant", "content": str(a + b)}]

    def chat(q):
        return shots + [{"role": "user", "content": q}]

    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for a, b in train:
            f.write(json.dumps({"prompt": chat(question(a, b)), "answer": str(a + b), "task": "add"}) + "\n")
    with open(os.path.join(args.out, "valid.jsonl"), "w") as fv, open(os.path.join(args.out, "test.jsonl"), "w") as ft:
        for a, b in held:
            q = question(a, b)
            fv.write(json.dumps({"prompt": chat(q), "answer": str(a + b), "task": "add"}) + "\n")
            ft.write(json.dumps({"messages": chat(q) + [{"role": "assistant", "content": str(a + b)}], "task": "add"}) + "\n")
    with open(os.path.join(args.out, "sft.jsonl"), "w") as f:
        for a, b in train:
            reply = f"{a} + {b} = {a + b}"
            f.write(json.dumps({"messages": chat(question(a, b)) + [{"role": "assistant", "content": reply}], "task": "add"}) + "\n")
    print(f"{args.out}: {len(train)} train, {len(held)} valid/test prompts (operands below {args.limit})")


if __name__ == "__main__":
    main()
