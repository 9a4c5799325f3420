"""QLoRA fixtures from bitsandbytes (NF4) on transformers 5 + peft, for moe-tune's tests.

    ~/peer-venv/bin/python scripts/make_qlora_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Writes Tests/MoETuneTests/Fixtures/nf4/:
  quant.safetensors  for a few weights (the llama fixture's q_proj and down_proj, and an odd
      [37, 50] matrix whose last block is partial): the input (w.NAME), bitsandbytes' packed
      4-bit codes (codes.NAME) and fp32 absmax (absmax.NAME) without double quantization,
      and with it the dequantized absmax (dq_absmax.NAME); nf4_code [16] and the signed
      dynamic 8-bit map [256] (dynamic_map).
  llama-4bit/        the llama fixture loaded with BitsAndBytesConfig(nf4, double quant,
      fp32 compute) and saved by transformers: a pre-quantized checkpoint.
  reference.json     the 4-bit model's loss on the llama fixture's reference batch.
  lora/              peft LoRA (r=4, alpha=8, q/k/v/o/gate/up/down, B random) on the 4-bit
      model: adapter files, batch.safetensors (input_ids, attention_mask, labels, loss) and
      grads.safetensors.
"""
import argparse, json, os, shutil

import bitsandbytes.functional as F
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

p = argparse.ArgumentParser()
p.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
a = p.parse_args()
out = os.path.join(a.fixtures, "nf4")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
torch.manual_seed(0)
base = os.path.join(a.fixtures, "llama")

# 1. Quantization of single tensors.
state = {}
for f in sorted(os.listdir(base)):
    if f.endswith(".safetensors") and f.startswith("model"):
        state.update(load_file(os.path.join(base, f)))
weights = {"q_proj": state["model.layers.0.self_attn.q_proj.weight"],
           "down_proj": state["model.layers.0.mlp.down_proj.weight"],
           "odd": torch.randn(37, 50) * 0.05}
tensors = {}
for name, w in weights.items():
    w = w.float().contiguous()
    q, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    tensors["w." + name] = w
    tensors["codes." + name] = q.reshape(-1).contiguous()
    tensors["absmax." + name] = st.absmax.float().contiguous()
    q2, st2 = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(q2, q)
    deq_absmax = F.dequantize_blockwise(st2.absmax, st2.state2) + st2.offset
    tensors["dq_absmax." + name] = deq_absmax.float().contiguous()
    tensors["nf4_code"] = st.code.float().contiguous()
    tensors["dynamic_map"] = st2.state2.code.float().contiguous()
save_file(tensors, os.path.join(out, "quant.safetensors"))

# 2. A pre-quantized checkpoint saved by transformers, and its loss.
bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
# Train mode on purpose: in eval mode without gradients, bitsandbytes on an AVX512-BF16 CPU
# repacks the weights for a bf16 GEMV kernel (activations rounded to bf16); in train mode
# it dequantizes to fp32 and multiplies in fp32, the exact NF4 computation. Dropout is 0.
model = AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb, dtype=torch.float32)
model.train()
model.save_pretrained(os.path.join(out, "llama-4bit"))
shutil.copy(os.path.join(base, "tokenizer.model"), os.path.join(out, "llama-4bit", "tokenizer.model"))
for extra in ["generation_config.json"]:
    path = os.path.join(out, "llama-4bit", extra)
    if os.path.exists(path):
        os.remove(path)
ref = load_file(os.path.join(base, "reference.safetensors"))
ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
labels = ids.clone()
labels[mask == 0] = -100
with torch.no_grad():
    loss4 = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()

# 3. LoRA gradients on the 4-bit model.
lora_dir = os.path.join(out, "lora")
cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
torch.manual_seed(0)
peft_model = get_peft_model(model, cfg)
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, prm in peft_model.named_parameters():
        if "lora_B" in n:
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
peft_model.save_pretrained(lora_dir)
if os.path.exists(os.path.join(lora_dir, "README.md")):
    os.remove(os.path.join(lora_dir, "README.md"))
g = torch.Generator().manual_seed(2)
bids = torch.randint(3, model.config.vocab_size, (2, 16), generator=g)
bids[:, 0] = 1
bmask = torch.ones_like(bids)
bmask[1, -3:] = 0
blabels = bids.clone()
blabels[0, :4] = -100
blabels[1, -3:] = -100
peft_model.train()
loss = peft_model(input_ids=bids, attention_mask=bmask, labels=blabels).loss
loss.backward()
grads = {n.replace(".default", ""): prm.grad.float().contiguous() for n, prm in peft_model.named_parameters() if prm.requires_grad}
save_file(grads, os.path.join(lora_dir, "grads.safetensors"))
save_file({"input_ids": bids.int(), "attention_mask": bmask.int(), "labels": blabels.int(), "loss": loss.detach().reshape(1)},
          os.path.join(lora_dir, "batch.safetensors"))
import bitsandbytes, peft, transformers
info = {"loss_4bit": loss4, "lora_loss_4bit": loss.item(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "bitsandbytes": bitsandbytes.__version__}}
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps(info))
