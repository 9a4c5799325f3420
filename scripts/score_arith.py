"""Scores greedy replies to data/arith questions as configs/grpo-smollm2.yaml's rewards do:
the reply is exactly the sum (trimmed), and the last number in it is the sum.

    python3 scripts/score_arith.py --prompts data/arith/valid.jsonl > /tmp/q.jsonl
    moe-tune generate --model M.gguf [--adapter DIR] --prompts /tmp/q.jsonl --max-new-tokens 12 > /tmp/a.jsonl
    python3 scripts/score_arith.py data/arith/valid.jsonl /tmp/a.jsonl

The first form writes the questions as {"messages"} lines for `generate --prompts`; the second
reads generate's {"index", "text"} lines (in the file's order) and prints both rates.
"""
import json
import re
import sys


def last_number(text):
    nums = re.findall(r"-?(?:\d[\d,]*)?\.?\d+", text)
    return float(nums[-1].replace(",", "")) if nums else None


def main():
    if sys.argv[1] == "--prompts":
        for line in open(sys.argv[2]):
            print(json.dumps({"messages": json.loads(line)["prompt"]}))
        return
    answers = [json.loads(l)["answer"] for l in open(sys.argv[1])]
    texts = {}
    for line in open(sys.argv[2]):
        o = json.loads(line)
        if "index" in o:
            texts[o["index"]] = o["text"]
    assert len(texts) == len(answers), f"{len(texts)} replies for {len(answers)} questions"
    exact = sum(texts[i].strip() == a for i, a in enumerate(answers))
    number = sum(last_number(texts[i]) == float(a) for i, a in enumerate(answers))
    n = len(answers)
    print(f"reply exactly the sum {100 * exact / n:.1f}% ({exact} of {n}), last number the sum {100 * number / n:.1f}% ({number} of {n})")
    for i in range(3):
        print(f"  e.g. {texts[i]!r} (expected {answers[i]!r})")


if __name__ == "__main__":
    main()
