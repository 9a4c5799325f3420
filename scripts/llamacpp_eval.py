"""llama.cpp's side of the GGUF checks (scripts/check_llamacpp.sh), through llama-cpp-python:

    python scripts/llamacpp_eval.py --run NAME=FILE.gguf[+ADAPTER.gguf] ... [--tokens TOKENS.jsonl]
        [--prompts REFERENCE.json] [--max-new-tokens 16] [--vocab]

Each --run loads FILE.gguf in llama.cpp (with ADAPTER.gguf as its LoRA, llama.cpp's --lora,
scale 1) and evaluates it; one Python process for all, llama_cpp is slow to import.

--tokens: `moe-tune tokenize --json` output, one {"ids", "mask"} a line; the loss is what
`moe-tune eval` computes from them: -log softmax(logits[j-1])[ids[j]] summed in float64 over
the positions j with mask[j] = 1 and divided by their count, every example evaluated alone
with every position's logits (llama.cpp's logits_all).
--prompts: a JSON object whose "generations" hold "prompt_ids" (reference_gguf.py's output,
the chat template already applied): greedy decoding of --max-new-tokens tokens from those
ids, stopping at an end-of-generation token; the new ids and their text, special tokens
skipped.
--vocab: the file's vocabulary as llama.cpp reads it (every token's text) and its
tokenization of a few strings, to compare with another file's.
Prints one JSON object: for each NAME, its loss, tokens, generations, vocab.
"""
import argparse, json, math, sys

import numpy as np
import llama_cpp

p = argparse.ArgumentParser()
p.add_argument("--run", action="append", required=True, help="NAME=FILE.gguf[+ADAPTER.gguf]")
p.add_argument("--tokens")
p.add_argument("--prompts")
p.add_argument("--max-new-tokens", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--vocab", action="store_true")
a = p.parse_args()


def evaluate(gguf, lora):
    kw = dict(model_path=gguf, n_ctx=2048, n_batch=2048, n_ubatch=2048, logits_all=True, verbose=False,
              n_threads=a.threads, n_threads_batch=a.threads)
    if lora:
        kw["lora_path"] = lora
    llm = llama_cpp.Llama(**kw)
    out = {}

    def logits_of(ids):
        llm.reset()
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)], dtype=np.float64)

    if a.tokens:
        total, count = 0.0, 0
        for line in open(a.tokens):
            if not line.strip():
                continue
            r = json.loads(line)
            ids, mask = r["ids"], r["mask"]
            z = logits_of(ids)
            for j in range(1, len(ids)):
                if mask[j]:
                    row = z[j - 1]
                    m = row.max()
                    total += m + math.log(np.exp(row - m).sum()) - row[ids[j]]
                    count += 1
        out["loss"], out["tokens"] = total / count, count

    if a.prompts:
        gens = []
        vocab = llm._model.vocab
        for g in json.load(open(a.prompts))["generations"]:
            ids = list(g["prompt_ids"])
            new = []
            llm.reset()
            llm.eval(ids)
            for _ in range(a.max_new_tokens):
                t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if llama_cpp.llama_vocab_is_eog(vocab, t):
                    break
                new.append(t)
                llm.eval([t])
            gens.append({"ids": new, "text": llm.detokenize(new, special=False).decode("utf-8", errors="replace")})
        out["generations"] = gens

    if a.vocab:
        n = llm.n_vocab()
        texts = ["Hello world! 12345 It's   spaced\n\ttabs", "<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n", "naïve café 東京 🚀"]
        out["vocab"] = {"n": n, "pieces": [llm._model.token_get_text(i) for i in range(n)],
                        "bos": llm.token_bos(), "eos": llm.token_eos(),
                        "tokenized": [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts]}
    llm.close()
    return out


results = {}
for run in a.run:
    name, spec = run.split("=", 1)
    gguf, _, lora = spec.partition("+")
    results[name] = evaluate(gguf, lora or None)
json.dump(results, sys.stdout)
print()
