"""A chat's second turn through `moe-tune serve`, with and without the finished first turn's
cache (BatchGenerator.reuseFinished, llama.cpp's cache_prompt): prompt and cached tokens
(usage.prompt_tokens_details.cached_tokens) and the seconds of each request. Standard
library only.

    python3 scripts/bench_serve_turns.py --model SMOL.gguf [--bin .build/release/moe-tune]

Server A answers turn 1, then turn 2 (the conversation so far plus a new question); server B,
started fresh, answers turn 2 alone. Greedy: with --exact both turn-2 answers should be equal;
with the default fast products the cached tokens of turn 1's reply were computed by decoding
steps (8-bit activations) and the fresh server's by a prefill, so a near-tie may go another way.
"""
import argparse, json, re, subprocess, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=".build/release/moe-tune")
ap.add_argument("--model", required=True)
ap.add_argument("--max-tokens", type=int, default=48)
ap.add_argument("--exact", action="store_true", help="serve --exact (products as training computes them)")
a = ap.parse_args()

SYSTEM = ("You are a careful assistant for a shipping company. Answer in one short paragraph. "
          "Our warehouses are in Rotterdam, Hamburg and Antwerp; orders ship within two days; "
          "returns are accepted for thirty days with the original receipt. ") * 3


def start():
    p = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", "0", "--parallel", "4"] + (["--exact"] if a.exact else []),
                         stderr=subprocess.PIPE, text=True)
    while True:
        line = p.stderr.readline()
        m = re.search(r"http://([0-9.]+):([0-9]+)", line)
        if m:
            return p, f"http://{m.group(1)}:{m.group(2)}"
        if not line and p.poll() is not None:
            raise SystemExit("serve did not start")


def chat(url, messages):
    body = json.dumps({"messages": messages, "max_tokens": a.max_tokens, "temperature": 0}).encode()
    t0 = time.perf_counter()
    r = json.load(urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", body,
                                                                {"Content-Type": "application/json"})))
    return r, time.perf_counter() - t0


turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are your warehouses?"}]
pa, url = start()
r1, s1 = chat(url, turn1)
turn2 = turn1 + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And how long do I have to return an order?"}]
r2, s2 = chat(url, turn2)
pa.terminate(); pa.wait()
pb, url = start()
r3, s3 = chat(url, turn2)
pb.terminate(); pb.wait()
for name, r, s in (("turn 1", r1, s1), ("turn 2 after turn 1", r2, s2), ("turn 2 on a fresh server", r3, s3)):
    u = r["usage"]
    print(f"{name}: prompt {u['prompt_tokens']} tokens, cached {u['prompt_tokens_details']['cached_tokens']}, "
          f"completion {u['completion_tokens']}, {s:.2f} s")
same = r2["choices"][0]["message"]["content"] == r3["choices"][0]["message"]["content"]
print("turn 2 answers equal:", same)
