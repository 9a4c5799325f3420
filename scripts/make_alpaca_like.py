"""A synthetic instruction set with an Alpaca-like spread of lengths, for measuring packing.

Writes JSONL lines {"prompt", "completion"} (an instruction, for about 40% followed by an
input, as in the Stanford Alpaca data; the full Alpaca prompt template alone is ~100 tokens
with the demo tokenizer, so it is left out) whose tokenized length (BOS + prompt +
completion + EOS, as moe-tune builds it) lies between 20 and 500 tokens: log-normal target
lengths (median ~110 tokens, long tail). Words come from the demo set's vocabulary, so the
demo model's 400-piece SentencePiece tokenizer encodes them in few pieces. Deterministic
for a seed.

  ~/tok-venv/bin/python scripts/make_alpaca_like.py --tokenizer data/demo-model/tokenizer.model \
      --out /tmp/alpaca-like.jsonl --count 1000
"""
import argparse, json, math, random
import sentencepiece as spm

p = argparse.ArgumentParser()
p.add_argument("--tokenizer", required=True, help="tokenizer.model whose lengths are targeted")
p.add_argument("--out", required=True)
p.add_argument("--count", type=int, default=1000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--min", type=int, default=20)
p.add_argument("--max", type=int, default=500)
a = p.parse_args()
sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
rng = random.Random(a.seed)
WORDS = ("add and the of is what capital reverse word paris rome berlin madrid one two three four five six seven "
         "eight nine ten sum answer name city country france italy spain germany letters back").split()

def prompt(instruction, inp):
    return instruction + ("\n" + inp if inp else "") + "\nAnswer:"

def length(instruction, inp, output):
    return 1 + len(sp.encode(prompt(instruction, inp))) + len(sp.encode(" " + output)) + 1   # BOS ... EOS

def words(n):
    return " ".join(rng.choice(WORDS) for _ in range(n))

base = length("", "", "")
lines, lengths = [], []
while len(lines) < a.count:
    target = int(math.exp(rng.gauss(math.log(110), 0.75)))
    if not (a.min <= target <= a.max) or target < base + 3:
        continue
    inp = words(rng.randint(2, min(30, target // 8))) if rng.random() < 0.4 else ""
    instruction = words(rng.randint(1, max(1, min(15, target // 8))))
    output = ""
    # Grow the output until the example reaches its target length.
    while length(instruction, inp, output) < target:
        output = (output + " " + rng.choice(WORDS)).strip()
    n = length(instruction, inp, output)
    if not (a.min <= n <= a.max):
        continue
    lines.append(json.dumps({"prompt": prompt(instruction, inp), "completion": " " + output}))
    lengths.append(n)
with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
lengths.sort()
print(json.dumps({"examples": len(lines), "min": lengths[0], "median": lengths[len(lengths) // 2],
                  "p90": lengths[int(0.9 * len(lengths))], "max": lengths[-1], "mean": round(sum(lengths) / len(lengths), 1)}))
