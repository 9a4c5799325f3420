#!/usr/bin/env python3
"""ESFT expert-score fixtures: an independent count of each expert's gate_score and
token_share on the Mixtral-, Qwen2-MoE-, OLMoE-, DeepSeek-V2- and GPT-OSS-layout fixture
models over Fixtures/eval.jsonl, and the experts selected at several coverages.

Each example runs alone through transformers (no padding); a hook takes every decoder
layer's post-attention RMSNorm output (the MoE block's input), and numpy (float64) does
the routing from the router weight (and GPT-OSS's bias): softmax over all experts, the top
k (DeepSeek-V2: among the experts of the topk_group groups with the highest best
probability), renormalised where the family does (Mixtral and GPT-OSS always; the others by
norm_topk_prob), times DeepSeek-V2's routed_scaling_factor.
  gate_score[l, e]  = sum over tokens of e's weight (0 where not chosen) / tokens
  token_share[l, e] = slots e fills / (tokens * k)
Selection per layer: experts by descending score (ties: lower id), taken while the running
sum is below coverage * total (the total summed in that order); listed in ascending id.

Writes Fixtures/esft/<family>.json. Needs torch, transformers 5, numpy, sentencepiece.
Usage: python scripts/make_esft_fixtures.py [--fixtures Tests/MoETuneTests/Fixtures]
"""
import argparse
import json
import os

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import AutoModelForCausalLM

FAMILIES = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v2", "gpt_oss"]
COVERAGES = ["0.2", "0.5", "0.8", "1.0"]


def examples(sp, path):
    """moe-tune's tokens per line: text -> BOS + text + EOS; prompt/completion -> BOS + prompt + completion + EOS."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "text" in r:
                out.append([1] + sp.encode(r["text"]) + [2])
            else:
                out.append([1] + sp.encode(r["prompt"]) + sp.encode(r["completion"]) + [2])
    return out


def route(x, w, bias, k, normalize, scale=1.0, groups=None):
    """x [T, H], w [E, H], bias [E] or None (float64) -> (top indices [T, k], weights [T, k]).
    groups: (n_group, topk_group) for group-limited greedy."""
    logits = x @ w.T + (0 if bias is None else bias)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    masked = p
    if groups is not None:
        n_group, topk_group = groups
        T, E = p.shape
        best = p.reshape(T, n_group, E // n_group).max(axis=2)
        keep = np.argsort(-best, axis=1, kind="stable")[:, :topk_group]
        allowed = np.zeros((T, n_group), dtype=bool)
        np.put_along_axis(allowed, keep, True, axis=1)
        masked = np.where(np.repeat(allowed, E // n_group, axis=1), p, -1.0)
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    wt = np.take_along_axis(p, idx, axis=1)
    if normalize:
        wt = wt / wt.sum(axis=1, keepdims=True)
    return idx, wt * scale


def select(scores, coverage):
    order = sorted(range(len(scores)), key=lambda e: (-scores[e], e))
    total = 0.0
    for e in order:
        total += scores[e]
    target = coverage * total
    s, chosen, margin = 0.0, [], float("inf")
    for e in order:
        margin = min(margin, abs(s - target) / max(total, 1e-300))
        if s >= target:
            break
        chosen.append(e)
        s += scores[e]
    return sorted(chosen), margin


def family_fixture(folder, seqs):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = model.config
    E = next(getattr(cfg, a) for a in ("num_local_experts", "num_experts", "n_routed_experts") if getattr(cfg, a, None))
    k = cfg.num_experts_per_tok
    normalize = True if cfg.model_type in ("mixtral", "gpt_oss") else bool(cfg.norm_topk_prob)
    scale = float(getattr(cfg, "routed_scaling_factor", None) or 1.0)
    groups = (cfg.n_group, cfg.topk_group) if getattr(cfg, "topk_method", None) == "group_limited_greedy" else None
    sd = model.state_dict()
    routers = {}
    for l in range(cfg.num_hidden_layers):
        for name in (f"model.layers.{l}.mlp.gate.weight", f"model.layers.{l}.mlp.router.weight"):
            if name in sd and sd[name].shape[0] == E:
                b = sd.get(name[:-len("weight")] + "bias")
                routers[l] = (sd[name].double().numpy(), None if b is None else b.double().numpy())
    captured = {}
    hooks = [model.model.layers[l].post_attention_layernorm.register_forward_hook(
        lambda m, i, o, l=l: captured.__setitem__(l, o[0].double().numpy())) for l in routers]
    gate = {l: np.zeros(E) for l in routers}
    count = {l: np.zeros(E, dtype=np.int64) for l in routers}
    tokens = 0
    with torch.no_grad():
        for ids in seqs:
            model(input_ids=torch.tensor([ids]))
            tokens += len(ids)
            for l, (w, b) in routers.items():
                idx, wt = route(captured[l], w, b, k, normalize, scale, groups)
                np.add.at(gate[l], idx.ravel(), wt.ravel())
                np.add.at(count[l], idx.ravel(), 1)
    for h in hooks:
        h.remove()
    layers, worst = [], float("inf")
    for l in sorted(routers):
        g = [float(v) / tokens for v in gate[l]]
        t = [int(c) / (tokens * k) for c in count[l]]
        sel = {}
        for kind, scores in (("gate_score", g), ("token_share", t)):
            sel[kind] = {}
            for c in COVERAGES:
                chosen, margin = select(scores, float(c))
                sel[kind][c] = chosen
                if kind == "gate_score" and c != "1.0":
                    worst = min(worst, margin)
        layers.append({"layer": l, "gate_score": g, "token_share": t, "selected": sel})
    return {"family": cfg.model_type, "experts": E, "k": k, "normalize": normalize, "scale": scale,
            "groups": groups, "tokens": tokens,
            "examples": len(seqs), "layers": layers, "min_gate_margin": worst}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.fixtures, "llama", "tokenizer.model"))
    seqs = examples(sp, os.path.join(a.fixtures, "eval.jsonl"))
    out_dir = os.path.join(a.fixtures, "esft")
    os.makedirs(out_dir, exist_ok=True)
    for name in FAMILIES:
        fx = family_fixture(os.path.join(a.fixtures, name), seqs)
        fx["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(fx, f, indent=1)
            f.write("\n")
        print(name, fx["tokens"], "tokens; layers", [x["layer"] for x in fx["layers"]],
              "; smallest gate_score selection margin (relative)", f"{fx['min_gate_margin']:.2e}")


if __name__ == "__main__":
    main()
