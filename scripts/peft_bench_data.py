"""Peer throughput on instruction data: transformers + peft LoRA training on exactly the
micro-batches moe-tune trains on. moe-tune writes them:

    moe-tune bench-train --model M --data FILE.jsonl --dump-batches batches.json [--experts]
    ~/peer-venv/bin/python scripts/peft_bench_data.py --model M --batches batches.json [--experts]

batches.json holds, per step in order, input_ids [B, T] (right-padded), labels (-100 where no
prediction counts: prompt tokens, padding, the first position; transformers shifts them) and
attention_mask. Same settings as ../shared/peer/peft_bench.py: LoRA r 8, alpha 16, dropout 0 on
q,k,v,o (and with --experts every expert's gate_up/down), AdamW lr 1e-4, 2 threads; the
warm-up batches untimed, then the timed ones. Prints one JSON line: tokens_per_s (computed:
rows x row length, padding included), scored_tokens_per_s, real_tokens_per_s, peak_rss_mb,
first_loss (the base model's loss on the first batch: moe-tune's first_loss must equal it)."""
import argparse, json, resource, time
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--batches", required=True, help="JSON written by moe-tune bench-train --dump-batches")
p.add_argument("--rank", type=int, default=8)
p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
p.add_argument("--experts", action="store_true", help="also LoRA on expert weights (target_parameters)")
p.add_argument("--qlora", action="store_true", help="bitsandbytes NF4 base weights")
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
d = json.load(open(a.batches))
warmup, steps = d["warmup"], d["steps"]
batches = [{k: torch.tensor(b[k], dtype=torch.long) for k in ("input_ids", "labels", "attention_mask")} for b in d["batches"]]
assert len(batches) >= warmup + steps, "fewer batches than warm-up + timed steps"
qkw = {}
if a.qlora:
    from transformers import BitsAndBytesConfig
    qkw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, **qkw)
kw = dict(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=a.targets.split(","))
if a.experts:
    kw["target_parameters"] = ["experts.gate_up_proj", "experts.down_proj"]
model = get_peft_model(model, LoraConfig(**kw))
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
model.train()

def step(b):
    out = model(**b)
    out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return out.loss.item()

first = None
for i in range(warmup):
    loss = step(batches[i])
    if first is None: first = loss
t = time.perf_counter()
for i in range(warmup, warmup + steps):
    loss = step(batches[i])
    if first is None: first = loss
dt = time.perf_counter() - t
timed = batches[warmup:warmup + steps]
computed = sum(b["input_ids"].numel() for b in timed)
real = sum(int(b["attention_mask"].sum()) for b in timed)
scored = sum(int((b["labels"] != -100).sum()) for b in timed)
print(json.dumps({"peer": "transformers+peft", "threads": a.threads, "qlora": a.qlora, "experts": a.experts,
                  "tokens_per_s": round(computed / dt, 1), "scored_tokens_per_s": round(scored / dt, 1),
                  "real_tokens_per_s": round(real / dt, 1), "step_s": round(dt / steps, 4), "trainable": trainable,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "first_loss": round(first, 6), "loss": round(loss, 4)}))
