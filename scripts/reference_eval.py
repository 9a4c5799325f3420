"""The transformers side of `moe-tune eval`: same tokenization and scoring rule.

    /root/peer-venv/bin/python scripts/reference_eval.py --model DIR --data FILE.jsonl

{"text"} lines: [BOS] + encode(text) + [EOS], every next-token prediction counts.
{"prompt","completion"} lines: [BOS] + encode(prompt) + encode(completion) + [EOS], only
the completion tokens and EOS count. Examples longer than --max-seq-len keep their first
tokens, as in moe-tune. --adapter applies a PEFT LoRA adapter.

Prints one JSON line: loss (sum of per-token cross-entropy over the counted tokens, summed
in float64, / tokens), perplexity, tokens, examples, and seconds, the wall time of the
forward passes (fp32, torch.no_grad, --threads 2). Examples are sorted by length and run in
right-padded batches of --batch-size (4, moe-tune eval's default, so the timings compare);
padding is masked, so the loss equals running each example on its own (--batch-size 1).
"""
import argparse, json, math, time

import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--max-seq-len", type=int, default=2048)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--adapter", help="PEFT adapter folder, loaded with PeftModel.from_pretrained")
a = p.parse_args()
torch.set_num_threads(a.threads)
sp = spm.SentencePieceProcessor(model_file=a.model + "/tokenizer.model")
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
if a.adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, a.adapter).eval()
bos, eos = model.config.bos_token_id, model.config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos

examples = []
for n, line in enumerate(open(a.data), 1):
    if not line.strip():
        continue
    r = json.loads(line)
    if isinstance(r.get("text"), str):
        toks, start = [bos] + sp.encode(r["text"]) + [eos], 1
    elif isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str):
        pr = [bos] + sp.encode(r["prompt"])
        toks, start = pr + sp.encode(r["completion"]) + [eos], len(pr)
    else:
        raise SystemExit(f"{a.data}:{n}: only {{\"text\"}} and {{\"prompt\", \"completion\"}} lines are supported")
    examples.append((toks[: a.max_seq_len], start))

# Batches of similar length, right-padded, labels -100 where not counted.
order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
total, count = 0.0, 0
t0 = time.perf_counter()
with torch.no_grad():
    for b in range(0, len(order), a.batch_size):
        idx = order[b : b + a.batch_size]
        T = max(len(examples[i][0]) for i in idx)
        ids = torch.zeros(len(idx), T, dtype=torch.long)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        labels = torch.full((len(idx), T), -100)
        for r, i in enumerate(idx):
            toks, start = examples[i]
            ids[r, : len(toks)] = torch.tensor(toks)
            mask[r, : len(toks)] = 1
            labels[r, start : len(toks)] = torch.tensor(toks[start:])
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
        lp = torch.log_softmax(logits[:, :-1], -1)
        tgt = labels[:, 1:]
        valid = tgt != -100
        total -= lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[valid].sum().item()
        count += int(valid.sum())
seconds = time.perf_counter() - t0
loss = total / count
print(json.dumps({"loss": loss, "perplexity": math.exp(loss), "tokens": count, "examples": len(examples),
                  "seconds": round(seconds, 3)}))
