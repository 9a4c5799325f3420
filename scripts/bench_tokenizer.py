"""The Rust `tokenizers` side of `moe-tune bench-tokenizer`: MB/s on one thread over the
"text" fields of a JSONL file; `--make MB` first writes a synthetic JSONL of that size.

  ~/tok-venv/bin/python scripts/bench_tokenizer.py --make 30 --data /tmp/bench.jsonl
  ~/tok-venv/bin/python scripts/bench_tokenizer.py --tokenizer DIR --data /tmp/bench.jsonl
  .build/release/moe-tune bench-tokenizer --tokenizer DIR --data /tmp/bench.jsonl
"""
import argparse
import json
import os
import random
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

WORDS = ("the of and to in is was for that on with as by at from his her it an were are which this be "
         "model training data tokenizer language learning network layer expert router attention gradient "
         "Paris London Tokyo Berlin Madrid government university history science music river mountain "
         "running jumped quickly however although because therefore meanwhile can't won't it's they're").split()
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "if err != nil {\n    return err\n}\n", "SELECT id, name FROM users WHERE age > 30;\n"]
OTHER = ["Привет, как дела? Всё хорошо.", "这是一个测试句子，包含中文。", "Café naïve résumé — «quotes».",
         "مرحبا بالعالم", "東京は日本の首都です。", "😀 👍🏽 🇫🇷"]


def make(path, mb, seed=0):
    rng = random.Random(seed)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            parts = []
            for _ in range(rng.randint(3, 12)):
                r = rng.random()
                if r < 0.8:
                    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
                    parts.append(s[0].upper() + s[1:] + rng.choice([".", "!", "?", ","]) + " " + str(rng.randint(0, 10**rng.randint(1, 7))))
                elif r < 0.9:
                    parts.append(rng.choice(CODE))
                else:
                    parts.append(rng.choice(OTHER))
            text = rng.choice([" ", "\n", "\n\n"]).join(parts)
            line = json.dumps({"text": text}, ensure_ascii=False)
            f.write(line + "\n")
            size += len(text.encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--make", type=float, help="write a synthetic JSONL of this many MB to --data")
    args = ap.parse_args()
    if args.make:
        make(args.data, args.make)
    if not args.tokenizer:
        return
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    texts = [json.loads(l)["text"] for l in open(args.data, encoding="utf-8") if l.strip()]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} texts, {mb:.1f} MB")
    t0 = time.perf_counter()
    n = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    dt = time.perf_counter() - t0
    print(f"Rust tokenizers encode_batch, 1 thread: {n} tokens in {dt:.2f} s = {mb / dt:.1f} MB/s")
    t0 = time.perf_counter()
    n = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
    dt = time.perf_counter() - t0
    print(f"Rust tokenizers encode loop, 1 thread: {n} tokens in {dt:.2f} s = {mb / dt:.1f} MB/s")


if __name__ == "__main__":
    main()
