"""GPT-OSS layer fixtures from transformers 5 (modeling_gpt_oss): attention with sinks
(eager_attention_forward, full causal, sliding window, packed rows) and the experts'
clamped SwiGLU on interleaved gate/up (GptOssExperts._apply_gate), with gradients from
torch autograd. Writes Tests/MoETuneTests/Fixtures/gpt_oss-layers/reference.safetensors.
Run with ~/peer-venv/bin/python scripts/make_gptoss_layer_fixtures.py
"""
import os
import types

import torch
from safetensors.torch import save_file
from transformers.models.gpt_oss import modeling_gpt_oss as m
from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig

torch.manual_seed(7)
B, T, NH, NKV, D = 2, 7, 4, 2, 6
out_dir = os.path.join(os.path.dirname(__file__), "..", "Tests", "MoETuneTests", "Fixtures", "gpt_oss-layers")
os.makedirs(out_dir, exist_ok=True)

q = torch.randn(B, NH, T, D, dtype=torch.float64)
k = torch.randn(B, NKV, T, D, dtype=torch.float64)
v = torch.randn(B, NKV, T, D, dtype=torch.float64)
sinks = torch.randn(NH, dtype=torch.float64) * 1.5
dout = torch.randn(B, T, NH, D, dtype=torch.float64)
module = types.SimpleNamespace(sinks=sinks, num_key_value_groups=NH // NKV, training=False)


def mask(length, window):
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    ok = j <= i
    if window is not None:
        ok &= j > i - window  # transformers' sliding_window_overlay
    return torch.where(ok, 0.0, float("-inf")).to(torch.float64)[None, None]


def attention(segments, window):
    """segments[b]: the example lengths of row b (block-diagonal attention)."""
    qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
    rows = []
    for b in range(B):
        parts, start = [], 0
        for length in segments[b]:
            sl = slice(start, start + length)
            o, _ = m.eager_attention_forward(module, qq[b:b+1, :, sl], kk[b:b+1, :, sl], vv[b:b+1, :, sl],
                                             mask(length, window), scaling=D ** -0.5)
            parts.append(o)  # [1, L, nH, D]
            start += length
        rows.append(torch.cat(parts, dim=1))
    out = torch.cat(rows, dim=0)  # [B, T, nH, D]
    (out * dout).sum().backward()
    return out, qq.grad, kk.grad, vv.grad


def rows_heads(t):  # [B, h, T, D] -> [B*T, h*D]
    return t.permute(0, 2, 1, 3).reshape(B * T, -1).float().contiguous()


tensors = {"q": rows_heads(q), "k": rows_heads(k), "v": rows_heads(v), "sinks": sinks.float(),
           "dout": dout.reshape(B * T, NH * D).float().contiguous()}
packed = [[3, 4], [2, 2, 3]]
positions = torch.tensor([i for row in packed for n in row for i in range(n)], dtype=torch.int32).reshape(B, T)
tensors["positions"] = positions.reshape(-1).contiguous()
for name, segments, window in [("full", [[T], [T]], None), ("window", [[T], [T]], 3), ("packed", packed, 3)]:
    out, dq, dk, dv = attention(segments, window)
    tensors[f"{name}.out"] = out.reshape(B * T, NH * D).float().contiguous()
    tensors[f"{name}.dq"] = rows_heads(dq)
    tensors[f"{name}.dk"] = rows_heads(dk)
    tensors[f"{name}.dv"] = rows_heads(dv)

# Clamped SwiGLU of the experts: gate_up [N, 2I] interleaved (gate at even columns).
config = GptOssConfig(hidden_size=8, intermediate_size=5, num_local_experts=2)
experts = m.GptOssExperts(config)
assert experts.alpha == 1.702 and experts.limit == 7.0
N, I = 9, 5
gate_up = (torch.rand(N, 2 * I, dtype=torch.float64) * 24 - 12)
# Keep clear of the clamp's kinks (|x| = 7) so the gradient is well defined.
gate_up = torch.where((gate_up.abs() - 7).abs() < 0.05, gate_up + 0.2, gate_up).requires_grad_(True)
act = experts._apply_gate(gate_up)
dact = torch.randn(N, I, dtype=torch.float64)
(act * dact).sum().backward()
tensors["swiglu.gate_up"] = gate_up.detach().float()
tensors["swiglu.out"] = act.detach().float()
tensors["swiglu.dout"] = dact.float()
tensors["swiglu.dgate_up"] = gate_up.grad.float()
save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "reference.safetensors"))
print("wrote", out_dir, {k: list(v.shape) for k, v in tensors.items()})
