"""The peft side of the packing measurement: LoRA training with transformers + peft on the
same tokenized examples and the same batches as `moe-tune train`, with and without packing.

Input: the output of `moe-tune tokenize --model MODEL --data FILE --json` (one {"ids", "mask"}
per line, mask[j]: predicting token j counts), so both tools train on identical token ids.
Unpacked: batches of --batch examples grouped by similar length (a seeded shuffle, sorted by
length within windows of 32 batches, as moe-tune does), right-padded, attention_mask, labels
-100 on padding and masked tokens. Packed (--packing): first-fit decreasing into rows of
--max-seq-len tokens, --batch-tokens / --max-seq-len rows a batch; position_ids restart at 0 per
example and no attention_mask is passed, so transformers' masking_utils
(find_packed_sequence_indices) makes the attention block-diagonal, as its padding-free
collators rely on; an example's first label is -100 so no prediction crosses examples.
Targets: q,k,v,o (+ every expert with --experts, peft's target_parameters). One epoch (or
--max-steps; the first --warmup steps untimed), AdamW; prints one JSON line with wall time, trained (counted) tokens/s, real
tokens/s and the padding share.

  ~/peer-venv/bin/python scripts/peft_packing_bench.py --model data/demo-model \
      --tokens /tmp/demo.ids.jsonl --batch 8 --max-seq-len 64 --experts [--packing --batch-tokens 512]
"""
import argparse, json, random, resource, time
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--tokens", required=True, help="moe-tune tokenize --json output")
p.add_argument("--batch", type=int, default=8, help="examples a batch (unpacked); rows a batch when packing without --batch-tokens")
p.add_argument("--max-seq-len", type=int, default=512)
p.add_argument("--packing", action="store_true")
p.add_argument("--batch-tokens", type=int, default=None)
p.add_argument("--max-steps", type=int, default=None)
p.add_argument("--warmup", type=int, default=1, help="first steps run but not timed (torch's lazy start-up)")
p.add_argument("--rank", type=int, default=8)
p.add_argument("--experts", action="store_true")
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
examples = []
for line in open(a.tokens):
    line = line.strip()
    if line:
        o = json.loads(line)
        examples.append((o["ids"][: a.max_seq_len], o["mask"][: a.max_seq_len]))
rng = random.Random(a.seed)

def unpacked_batches():
    order = list(range(len(examples)))
    rng.shuffle(order)
    window, out = a.batch * 32, []
    for s in range(0, len(order), window):
        chunk = sorted(order[s:s + window], key=lambda i: (len(examples[i][0]), i))
        out += [[[i] for i in chunk[b:b + a.batch]] for b in range(0, len(chunk), a.batch)]
    rng.shuffle(out)
    return out

def packed_batches():
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: -len(examples[i][0]))   # stable: ties keep the shuffled order
    rows, room = [], []
    for i in order:   # first-fit decreasing (linear scan: fine for a few thousand rows)
        n = len(examples[i][0])
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i); room[r] -= n; break
        else:
            rows.append([i]); room.append(a.max_seq_len - n)
    rows.sort(key=lambda r: -sum(len(examples[i][0]) for i in r))
    per = max(1, a.batch_tokens // a.max_seq_len) if a.batch_tokens else a.batch
    out = [rows[s:s + per] for s in range(0, len(rows), per)]
    rng.shuffle(out)
    return out

def tensors(batch):
    """batch: rows of example indices -> input_ids, labels, position_ids, attention_mask (or None)."""
    lens = [sum(len(examples[i][0]) for i in row) for row in batch]
    t = max(lens)
    ids = torch.zeros(len(batch), t, dtype=torch.long)
    labels = torch.full((len(batch), t), -100, dtype=torch.long)
    pos = torch.zeros(len(batch), t, dtype=torch.long)
    att = torch.zeros(len(batch), t, dtype=torch.long)
    for r, row in enumerate(batch):
        at = 0
        for i in row:
            x, m = examples[i]
            n = len(x)
            ids[r, at:at + n] = torch.tensor(x)
            # HF shifts labels: labels[j] is predicted from position j - 1; mask[j] says it counts.
            labels[r, at:at + n] = torch.tensor([x[j] if (j > 0 and m[j]) else -100 for j in range(n)])
            pos[r, at:at + n] = torch.arange(n)
            att[r, at:at + n] = 1
            at += n
        pos[r, at:] = torch.arange(t - at)
    return ids, labels, pos, (None if a.packing else att), t * len(batch), sum(lens)

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
model.config.use_cache = False
kw = dict(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
if a.experts:
    kw["target_parameters"] = ["experts.gate_up_proj", "experts.down_proj"]
model = get_peft_model(model, LoraConfig(**kw))
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr)
model.train()
batches = packed_batches() if a.packing else unpacked_batches()
if a.max_steps:
    batches = batches[: a.max_steps]
counted = computed = real = 0
for k, batch in enumerate(batches):
    if k == a.warmup:
        start = time.perf_counter()
    ids, labels, pos, att, c, r = tensors(batch)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, labels=labels, use_cache=False)
    out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if k >= a.warmup:
        counted += int((labels != -100).sum())
        computed += c; real += r
dt = time.perf_counter() - start
print(json.dumps({"peer": "transformers+peft", "packing": a.packing, "steps": len(batches), "timed_steps": len(batches) - a.warmup, "seconds": round(dt, 2),
                  "trained_tokens": counted, "trained_tokens_per_s": round(counted / dt, 1), "real_tokens_per_s": round(real / dt, 1),
                  "padding_share": round((computed - real) / computed, 4), "loss": round(out.loss.item(), 4),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
