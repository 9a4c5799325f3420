"""A gpt_oss checkpoint with MXFP4 experts, as the released GPT-OSS models store them
(mlp.experts.{gate_up_proj,down_proj}_blocks / _scales, quantization_config mxfp4), and the
logits of the same model in fp32 (transformers 5, eager) with the experts dequantized by
transformers' own convert_moe_packed_tensors.

    ~/peer-venv/bin/python scripts/make_gptoss_mxfp4_fixture.py --fixtures Tests/MoETuneTests/Fixtures

  gpt_oss-mxfp4  2 layers (sliding 4, full), hidden 64, 4 heads of head_dim 16 over 2 KV heads,
                 4 experts top-2 of intermediate 32 (blocks of 32 need H and I multiples of 32).
Each expert row's blocks of 32 get a power-of-two scale (max |x| / 6 rounded up) and the
nearest FP4 code; the fp32 reference runs on transformers' dequantization of those blocks.
"""
import argparse, json, os, shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GptOssConfig
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

ap = argparse.ArgumentParser()
ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
a = ap.parse_args()
torch.manual_seed(5)
cfg = GptOssConfig(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                   layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128, bos_token_id=1,
                   eos_token_id=2, pad_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                   attn_implementation="eager")
model = AutoModelForCausalLM.from_config(cfg).float().eval()
g = torch.Generator().manual_seed(6)
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_((1 + 0.2 * torch.randn(p.shape, generator=g)) if name.endswith("norm.weight") else 0.15 * torch.randn(p.shape, generator=g))
lut = torch.tensor(FP4_VALUES)


def quantize(w):
    """w [E, A, B] as transformers holds it -> blocks [E, B, A/32, 16], scales [E, B, A/32]."""
    x = w.transpose(1, 2).contiguous()  # [E, B, A]: the checkpoint's rows
    E, R, A = x.shape
    x = x.reshape(E, R, A // 32, 32)
    amax = x.abs().amax(-1).clamp_min(1e-30)
    exp = torch.ceil(torch.log2(amax / 6)).to(torch.int32)
    scaled = x / torch.pow(2.0, exp.float())[..., None]
    codes = (scaled[..., None] - lut).abs().argmin(-1).to(torch.uint8)  # [E, R, G, 32]
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exp + 127).to(torch.uint8).contiguous()


folder = os.path.join(a.fixtures, "gpt_oss-mxfp4")
shutil.rmtree(folder, ignore_errors=True)
model.save_pretrained(folder, safe_serialization=True)
for f in ["generation_config.json"]:
    if os.path.exists(os.path.join(folder, f)):
        os.remove(os.path.join(folder, f))
st = load_file(os.path.join(folder, "model.safetensors"))
for l in range(cfg.num_hidden_layers):
    for part in ["gate_up_proj", "down_proj"]:
        key = f"model.layers.{l}.mlp.experts.{part}"
        blocks, scales = quantize(st.pop(key))
        st[key + "_blocks"], st[key + "_scales"] = blocks, scales
        deq = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
        with torch.no_grad():
            getattr(model.model.layers[l].mlp.experts, part).copy_(deq)
save_file(st, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(folder, "config.json")) as f:
    c = json.load(f)
c["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(c, f, indent=2)
ids = torch.randint(3, 384, (2, 11), generator=g)
ids[:, 0] = 1
with torch.no_grad():
    logits = model(input_ids=ids).logits
save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.float().contiguous()}, os.path.join(folder, "reference.safetensors"))
print("wrote", folder, sorted(k for k in st if "layers.0.mlp" in k))
