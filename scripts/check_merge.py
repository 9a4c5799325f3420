"""Checks a checkpoint written by `moe-tune merge` against transformers + peft running the
base and the adapter unmerged: prints the largest absolute logit difference.

    ~/peer-venv/bin/python scripts/check_merge.py --base DIR --adapter DIR --merged DIR
"""
import argparse, json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--adapter", required=True)
p.add_argument("--merged", required=True)
a = p.parse_args()
torch.manual_seed(0)
merged = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32).eval()
ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32), a.adapter).eval()
ids = torch.randint(3, merged.config.vocab_size, (2, 24))
ids[:, 0] = 1
with torch.no_grad():
    diff = (merged(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
print(json.dumps({"max_abs_logit_diff": diff}))
