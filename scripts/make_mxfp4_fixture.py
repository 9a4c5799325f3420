"""MXFP4 fixture: random GPT-OSS-style expert blocks/scales and their dequantization by
transformers 5 (integrations/mxfp4.py, convert_moe_packed_tensors, fp32).
Writes Tests/MoETuneTests/Fixtures/mxfp4/reference.safetensors.
Run with ~/peer-venv/bin/python scripts/make_mxfp4_fixture.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

torch.manual_seed(11)
E, R, G = 2, 6, 3  # experts, rows (2I or H), blocks of 32 per row
blocks = torch.randint(0, 256, (E, R, G, 16), dtype=torch.uint8)
scales = torch.randint(117, 137, (E, R, G), dtype=torch.uint8)  # 2^-10 ... 2^9
ref = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
assert ref.shape == (E, G * 32, R), ref.shape
out_dir = os.path.join(os.path.dirname(__file__), "..", "Tests", "MoETuneTests", "Fixtures", "mxfp4")
os.makedirs(out_dir, exist_ok=True)
save_file({"model.layers.0.mlp.experts.gate_up_proj_blocks": blocks,
           "model.layers.0.mlp.experts.gate_up_proj_scales": scales,
           "dequantized": ref.contiguous()}, os.path.join(out_dir, "reference.safetensors"))
print("wrote", out_dir, list(ref.shape))
