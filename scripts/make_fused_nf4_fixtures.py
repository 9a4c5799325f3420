"""bitsandbytes' NF4 quantization of fused expert tensors, for `moe-tune quantize` on
Granite-MoE (whose checkpoints only have fused experts).

    ~/peer-venv/bin/python scripts/make_fused_nf4_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Needs the granitemoe fixture of make_moe_fixtures.py. Writes nf4-fused/:
  granitemoe.safetensors  for layer 0's block_sparse_moe.input_linear.weight [8, 64, 64] and
      output_linear.weight [8, 64, 32] (NAME), bitsandbytes' quantize_4bit of the whole
      tensor (flattened, blocks of 64): without double quantization packed codes
      (codes.NAME) and fp32 absmax (absmax.NAME); with it packed codes (dq_codes.NAME), the
      8-bit absmax codes (dq_absmax.NAME), nested absmax (dq_nested.NAME) and the offset
      (dq_offset.NAME).
  reference.json  the loss on the granitemoe reference batch with every decoder-layer
      linear weight and every fused expert tensor replaced by bitsandbytes' quantize-dequantize
      of it, each tensor quantized whole (loss_single without, loss_double with double
      quantization); routers, norms, embeddings stay fp32.
"""
import argparse, json, os

import bitsandbytes.functional as BF
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
a = p.parse_args()
src = os.path.join(a.fixtures, "granitemoe")
out = os.path.join(a.fixtures, "nf4-fused")
os.makedirs(out, exist_ok=True)
state = load_file(os.path.join(src, "model.safetensors"))
tensors = {}
for part in ["input_linear", "output_linear"]:
    name = f"model.layers.0.block_sparse_moe.{part}.weight"
    w = state[name].float().contiguous()
    packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    tensors["codes." + name] = packed.contiguous()
    tensors["absmax." + name] = st.absmax.float().contiguous()
    packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    tensors["dq_codes." + name] = packed.contiguous()
    tensors["dq_absmax." + name] = st.absmax.contiguous()
    tensors["dq_nested." + name] = st.state2.absmax.float().contiguous()
    tensors["dq_offset." + name] = st.offset.float().reshape(1).contiguous()
save_file(tensors, os.path.join(out, "granitemoe.safetensors"))

ref = load_file(os.path.join(src, "reference.safetensors"))
ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
labels = ids.clone()
labels[mask == 0] = -100
result = {}
for key, dq in [("loss_single", False), ("loss_double", True)]:
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if ".layers." in name and (name.endswith("proj.weight") or "experts." in name) and prm.dim() >= 2:
                w = prm.data.float().contiguous()
                packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
                prm.copy_(BF.dequantize_4bit(packed, st).reshape(w.shape))
        result[key] = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
