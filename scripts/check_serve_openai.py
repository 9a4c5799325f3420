"""`moe-tune serve` against the `openai` Python client (not part of the default tests).

Starts the server on a model (default the demo model) with an adapter, then with the
client: lists the models; streams a chat completion from the base and from the adapter and
checks each equals the same request unstreamed; answers 8 clients at once (threads), each
equal to its request alone; checks that bad requests raise the client's errors
(BadRequestError, NotFoundError) and that the server answers afterwards.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install openai
    /tmp/venv/bin/python scripts/check_serve_openai.py --adapter out/demo
    /tmp/venv/bin/python scripts/check_serve_openai.py --model SMOL.gguf --adapter DIR --prompt "..." --exact
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import threading
import time

import openai


def start(args):
    cmd = [args.bin, "serve", "--model", args.model, "--port", "0", "--parallel", "8"] + (["--exact"] if args.exact else [])
    if args.adapter:
        cmd += ["--adapter", f"tuned={args.adapter}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line and proc.poll() is not None:
            sys.exit(f"serve exited ({proc.returncode}): {''.join(lines[-5:]).strip()}")
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # Keep reading its per-request lines, so a full pipe never blocks the server.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    sys.exit("serve did not start")


def chat(client, model, prompt, stream, max_tokens):
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
    pieces, finish, chunks = [], None, 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True):
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    return "".join(pieces), finish, chunks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("MOE_TUNE", ".build/debug/moe-tune"))
    ap.add_argument("--model", default="data/demo-model")
    ap.add_argument("--adapter", help="PEFT adapter folder, served as model 'tuned'")
    ap.add_argument("--prompt", default="What is the capital of Brevia?")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--exact", action="store_true",
                    help="serve --exact: on a quantized model the default products round the activation of a "
                         "call of up to 16 rows to 8 bits, so an answer may change at a near-tie with what is "
                         "batched or cached beside it")
    args = ap.parse_args()
    proc, url = start(args)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        names = sorted(m.id for m in client.models.list().data)
        print("models:", names)
        for model in names:
            whole, finish, n = chat(client, model, args.prompt, False, args.max_tokens)
            streamed, sfinish, chunks = chat(client, model, args.prompt, True, args.max_tokens)
            assert streamed == whole and sfinish == finish, (model, streamed, whole, sfinish, finish)
            print(f"{model}: streamed {chunks} chunks = unstreamed ({n} tokens, {finish}): {whole!r}")

        prompts = [f"{args.prompt} ({i})" if i % 2 else args.prompt for i in range(8)]
        jobs = [(names[i % len(names)], p) for i, p in enumerate(prompts)]
        alone = [chat(client, m, p, False, args.max_tokens)[0] for m, p in jobs]
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda j: chat(client, j[0], j[1], j[0] == names[0], args.max_tokens)[0], jobs))
        assert together == alone, list(zip(together, alone))
        print(f"8 concurrent clients (half streaming): answers equal their requests alone ({time.time() - t0:.2f} s)")

        bad = [
            (openai.NotFoundError, dict(model="nope", messages=[{"role": "user", "content": "x"}])),
            (openai.BadRequestError, dict(model=names[0], messages=[])),
            (openai.BadRequestError, dict(model=names[0], messages=[{"role": "user", "content": "x"}], n=2)),
            (openai.BadRequestError, dict(model=names[0], messages=[{"role": "user", "content": "word " * 9000}])),
        ]
        for error, kwargs in bad:
            try:
                client.chat.completions.create(**kwargs)
            except error as e:
                print(f"{error.__name__}: {e.message[:90]}")
            else:
                sys.exit(f"no {error.__name__} for {str(kwargs)[:80]}")
        assert chat(client, names[0], args.prompt, False, args.max_tokens)[0] == alone[0]
        print("the server answers after the bad requests: OK")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
