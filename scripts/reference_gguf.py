"""transformers' side of moe-tune on a GGUF model (transformers reads GGUF through the `gguf`
package and dequantizes every weight to fp32):

    ~/peer-venv/bin/python scripts/reference_gguf.py --gguf FILE.gguf --data FILE.jsonl \
        [--adapter DIR] [--prompts FILE.json] [--max-new-tokens 16] [--out reference.json]

Loss: the rules of `moe-tune eval` with a tokenizer.json tokenizer: {"text"} lines are
tokenizer(text).input_ids + [EOS] (unless already last), every next-token prediction counts;
{"prompt","completion"} lines are tokenizer(prompt).input_ids + tokenizer(completion,
add_special_tokens=False).input_ids + [EOS], only the completion and EOS count. Summed in
float64 over the counted tokens, one example at a time, fp32.

Generation (--prompts, a JSON list of user messages): the chat template with
add_generation_prompt, then greedy decoding of --max-new-tokens tokens (stopping at EOS),
the new ids and their text (special tokens skipped).

Prints (and with --out writes) one JSON object: loss, tokens, examples, generations.
"""
import argparse, json, os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--data")
p.add_argument("--prompts")
p.add_argument("--max-new-tokens", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out")
p.add_argument("--adapter", help="PEFT adapter folder, applied with PeftModel.from_pretrained")
a = p.parse_args()
torch.set_num_threads(a.threads)
d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
if a.adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, a.adapter).eval()
eos = tok.eos_token_id
out = {}
if a.data:
    total, count, n = 0.0, 0, 0
    with torch.no_grad():
        for line in open(a.data):
            if not line.strip():
                continue
            r = json.loads(line)
            if isinstance(r.get("text"), str):
                ids = tok(r["text"]).input_ids
                if ids[-1] != eos:
                    ids = ids + [eos]
                start = 1
            else:
                pr = tok(r["prompt"]).input_ids
                ids = pr + tok(r["completion"], add_special_tokens=False).input_ids + [eos]
                start = len(pr)
            x = torch.tensor([ids])
            logits = model(x).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            for t in range(start, len(ids)):
                total -= lp[t - 1, ids[t]].item()
                count += 1
            n += 1
    out.update(loss=total / count, tokens=count, examples=n)
if a.prompts:
    gens = []
    with torch.no_grad():
        for prompt in json.load(open(a.prompts)):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            g = model.generate(torch.tensor([ids]), max_new_tokens=a.max_new_tokens, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
            new = g[0, len(ids):].tolist()
            gens.append({"prompt": prompt, "prompt_ids": ids, "ids": new, "text": tok.decode(new, skip_special_tokens=True)})
    out["generations"] = gens
print(json.dumps(out))
if a.out:
    with open(a.out, "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
