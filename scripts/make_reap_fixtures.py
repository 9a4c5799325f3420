#!/usr/bin/env python3
"""REAP expert-pruning fixtures: an independent computation of each expert's saliency on the
Mixtral-, Qwen3-MoE-, Qwen2-MoE- and OLMoE-layout fixture models over Fixtures/eval.jsonl, the
experts each method keeps, and transformers' logits of the pruned models.

Each example runs alone through transformers (no padding). A hook takes each MoE block's
input (the post-attention RMSNorm output) and another the router's output; float64 does the
rest from the checkpoint's weights: router logits (checked against the router module's
output), softmax over all experts, the top k (ties: lower id), the weight renormalised over
the top k where the family does (Mixtral always; the others by norm_topk_prob), and every
expert's SwiGLU output down(silu(gate x) * up x) from the fused weights.
  reap[l, e]      = sum over the tokens routed to e of weight x ||expert_e(x)||_2 / their count
                    (0 when no token reached e)
  frequency[l, e] = slots e fills / (tokens * k)
  reap_code[l, e] = REAP as CerebrasResearch/reap's code computes it: the weight renormalised
                    only when config.norm_topk_prob is true (MixtralConfig has no such field,
                    so on Mixtral the plain softmax probability)
Kept per layer at keep = 0.25, 0.5, 0.75 (as moe-tune counts: E - floor(E * (1 - keep))): the
highest saliencies, ties to the lower id, listed ascending.

The pruned model (reap, keep 0.5) is built here by slicing the state dict (router rows, fused
expert tensors) and setting the expert count; its logits on example 2 of eval.jsonl and its
eval loss over the file are written. With --bin, `moe-tune prune` writes the same model and
transformers loads that folder: the logits must equal the slice's, and `moe-tune eval --json`
the loss (printed; written to the fixture as "check").

Writes Fixtures/reap/<family>.json and <family>-pruned.safetensors (input_ids, logits).
Needs torch, transformers 5, numpy, sentencepiece, safetensors.
Usage: python scripts/make_reap_fixtures.py [--fixtures Tests/MoETuneTests/Fixtures] [--bin .build/debug/moe-tune]
"""
import argparse
import copy
import json
import os
import subprocess
import tempfile

import numpy as np
import sentencepiece as spm
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

FAMILIES = ["mixtral", "qwen3_moe", "qwen2_moe", "olmoe"]
KEEPS = ["0.25", "0.5", "0.75"]
LOGITS_EXAMPLE = 2


def examples(sp, path):
    """moe-tune's tokens per line and the first scored position: text -> BOS + text + EOS (from 1);
    prompt/completion -> BOS + prompt + completion + EOS (from the completion)."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "text" in r:
                out.append(([1] + sp.encode(r["text"]) + [2], 1))
            else:
                prompt = [1] + sp.encode(r["prompt"])
                out.append((prompt + sp.encode(r["completion"]) + [2], len(prompt)))
    return out


def keep_count(keep, experts):
    return experts - int(np.floor(experts * (1 - keep) + 1e-9))


def keep_highest(scores, count):
    order = sorted(range(len(scores)), key=lambda e: (-scores[e], e))
    return sorted(order[:count])


def experts_count(cfg):
    return next(getattr(cfg, a) for a in ("num_local_experts", "num_experts") if getattr(cfg, a, None))


def moe_layers(model, E):
    """Layer -> (router weight [E, H], gate_up [E, 2I, H], down [E, H, I]) in float64."""
    sd = model.state_dict()
    out = {}
    for l in range(model.config.num_hidden_layers):
        p = f"model.layers.{l}.mlp."
        if p + "gate.weight" in sd and sd[p + "gate.weight"].shape[0] == E:
            out[l] = tuple(sd[p + n].double() for n in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"))
    return out


def saliencies(model, seqs):
    cfg = model.config
    E, k = experts_count(cfg), cfg.num_experts_per_tok
    normalize = True if cfg.model_type == "mixtral" else bool(cfg.norm_topk_prob)
    code_normalize = bool(getattr(cfg, "norm_topk_prob", False))
    layers = moe_layers(model, E)
    x_in, router_out = {}, {}
    hooks = []
    for l in layers:
        layer = model.model.layers[l]
        hooks.append(layer.post_attention_layernorm.register_forward_hook(
            lambda m, i, o, l=l: x_in.__setitem__(l, o[0].double())))
        hooks.append(layer.mlp.gate.register_forward_hook(
            lambda m, i, o, l=l: router_out.__setitem__(l, (o[0] if isinstance(o, tuple) else o).double())))
    sums = {l: {n: torch.zeros(E, dtype=torch.float64) for n in ("reap", "reap_code")} for l in layers}
    count = {l: torch.zeros(E, dtype=torch.float64) for l in layers}
    tokens, worst_router = 0, 0.0
    with torch.no_grad():
        for ids, _ in seqs:
            model(input_ids=torch.tensor([ids]))
            tokens += len(ids)
            for l, (wr, gu, dn) in layers.items():
                x = x_in[l].reshape(-1, wr.shape[1])
                logits = x @ wr.T
                worst_router = max(worst_router, (logits - router_out[l].reshape(logits.shape)).abs().max().item())
                p = torch.softmax(logits, dim=-1)
                top = torch.tensor(np.argsort(-p.numpy(), axis=1, kind="stable")[:, :k])
                topsum = p.gather(1, top).sum(1, keepdim=True)
                inter = dn.shape[2]
                for e in range(E):
                    routed = (top == e).any(1)
                    if not routed.any():
                        continue
                    xe = x[routed]
                    h = xe @ gu[e].T
                    y = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]) @ dn[e].T
                    norm = y.norm(dim=1)
                    w = p[routed, e]
                    sums[l]["reap"][e] += ((w / topsum[routed, 0] if normalize else w) * norm).sum()
                    sums[l]["reap_code"][e] += ((w / topsum[routed, 0] if code_normalize else w) * norm).sum()
                    count[l][e] += routed.sum()
    for h in hooks:
        h.remove()
    out = []
    for l in sorted(layers):
        c = count[l]
        row = {"layer": l}
        for n in ("reap", "reap_code"):
            row[n] = [float(s / n_) if n_ > 0 else 0.0 for s, n_ in zip(sums[l][n], c)]
        row["frequency"] = [float(n_) / (tokens * k) for n_ in c]
        row["kept"] = {m: {kp: keep_highest(row[m], keep_count(float(kp), E)) for kp in KEEPS}
                       for m in ("reap", "reap_code", "frequency")}
        out.append(row)
    return {"experts": E, "k": k, "normalize": normalize, "tokens": tokens, "layers": out,
            "router_check_max_diff": worst_router}


def pruned_model(model, kept):
    """The model with only `kept[l]` experts in each routed layer, sliced from its state dict."""
    cfg = copy.deepcopy(model.config)
    n = len(next(iter(kept.values())))
    for a in ("num_local_experts", "num_experts"):
        if getattr(cfg, a, None):
            setattr(cfg, a, n)
    sd = model.state_dict()
    for l, ids in kept.items():
        for name in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"):
            key = f"model.layers.{l}.mlp.{name}"
            sd[key] = sd[key][ids].clone()
    out = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    out.load_state_dict(sd)
    return out


def eval_loss(model, seqs):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, start in seqs:
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            for j in range(start, len(ids)):
                total -= logp[j - 1, ids[j]].item()
                count += 1
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    ap.add_argument("--bin", default=None)
    a = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.fixtures, "llama", "tokenizer.model"))
    data = os.path.join(a.fixtures, "eval.jsonl")
    seqs = examples(sp, data)
    out_dir = os.path.join(a.fixtures, "reap")
    os.makedirs(out_dir, exist_ok=True)
    for name in FAMILIES:
        folder = os.path.join(a.fixtures, name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        fx = saliencies(model, seqs)
        kept = {row["layer"]: row["kept"]["reap"]["0.5"] for row in fx["layers"]}
        pm = pruned_model(model, kept)
        ids = torch.tensor([seqs[LOGITS_EXAMPLE][0]])
        with torch.no_grad():
            logits = pm(input_ids=ids).logits.float()
        fx["pruned"] = {"method": "reap", "keep": "0.5", "example": LOGITS_EXAMPLE, "eval_loss": eval_loss(pm, seqs)}
        if a.bin:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "pruned")
                subprocess.run([a.bin, "prune", "--model", folder, "--data", data, "--keep", "0.5", "--out", out],
                               check=True, capture_output=True)
                loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
                with torch.no_grad():
                    theirs = loaded(input_ids=ids).logits.float()
                ev = json.loads(subprocess.run([a.bin, "eval", "--model", out, "--data", data, "--json"], check=True,
                                               capture_output=True, text=True).stdout)
            fx["pruned"]["check"] = {
                "moe_tune_folder_in_transformers_logits_max_diff": (theirs - logits).abs().max().item(),
                "moe_tune_eval_loss": ev["loss"],
                "eval_loss_rel_diff": abs(ev["loss"] - fx["pruned"]["eval_loss"]) / fx["pruned"]["eval_loss"]}
        save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous()},
                  os.path.join(out_dir, name + "-pruned.safetensors"))
        fx["family"] = name
        fx["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(fx, f, indent=1)
            f.write("\n")
        same = all(r["kept"]["reap"][kp] == r["kept"]["reap_code"][kp] for r in fx["layers"] for kp in KEEPS)
        print(name, fx["tokens"], "tokens; router check", f"{fx['router_check_max_diff']:.1e};",
              "kept reap == reap_code:", same, "; pruned", json.dumps(fx["pruned"]))


if __name__ == "__main__":
    main()
