"""A peft 0.21 adapter on transformers 5's DeepSeek-V2 (the deepseek_v2 fixture of
make_deepseek_fixtures.py), for reading peft's adapters in moe-tune.

    ~/peer-venv/bin/python scripts/make_deepseek_peft_fixture.py --fixtures Tests/MoETuneTests/Fixtures

Writes peft-deepseek_v2/: peft's own adapter files (target_modules q_proj,
kv_a_proj_with_mqa, kv_b_proj, o_proj, lm_head — peft 0.21 drops the gate_proj / up_proj /
down_proj it is also given, next to target_parameters — and target_parameters
experts.gate_up_proj and experts.down_proj, the fused expert layout: one A shared by gate and
up; it also stores lm_head.base_layer.weight), B drawn random, and
batch.safetensors with input_ids, attention_mask, the loss and logits of peft's model.
"""
import argparse, json, os, shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
a = p.parse_args()
src = os.path.join(a.fixtures, "deepseek_v2")
out = os.path.join(a.fixtures, "peft-deepseek_v2")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(
    r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
    target_modules=["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
    target_parameters=["experts.gate_up_proj", "experts.down_proj"]))
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, prm in model.named_parameters():
        if "lora_B" in n:
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.05)
shutil.rmtree(out, ignore_errors=True)
model.save_pretrained(out)
if os.path.exists(os.path.join(out, "README.md")):
    os.remove(os.path.join(out, "README.md"))
path = os.path.join(out, "adapter_config.json")
with open(path) as f:
    cfg = json.load(f)
for k in ("target_modules", "target_parameters"):
    cfg[k] = sorted(cfg[k])
with open(path, "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
g = torch.Generator().manual_seed(2)
V = model.config.vocab_size
ids = torch.randint(3, V, (2, 16), generator=g)
ids[:, 0] = 1
mask = torch.ones_like(ids)
mask[1, -3:] = 0
labels = ids.clone()
labels[mask == 0] = -100
model.eval()
with torch.no_grad():
    res = model(input_ids=ids, attention_mask=mask, labels=labels)
save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "loss": res.loss.reshape(1).float(),
           "logits": res.logits.float().contiguous()}, os.path.join(out, "batch.safetensors"))
print(res.loss.item(), sorted(k for k in __import__("safetensors.torch").torch.load_file(os.path.join(out, "adapter_model.safetensors")) if "layers.1." in k))
