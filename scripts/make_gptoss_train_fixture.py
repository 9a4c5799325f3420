"""GPT-OSS training fixture: peft 0.21's LoRA on transformers 5.23's GptOss (fp32), gradients of
every target kind, with and without the aux loss.

    ~/peer-venv/bin/python scripts/make_gptoss_train_fixture.py --fixtures Tests/MoETuneTests/Fixtures

Writes
  gpt_oss-clamp/  the base model, as gpt_oss/ of make_gptoss_fixtures.py (3 layers, sliding /
                  full / sliding with window 3, hidden 40, 4 heads of head_dim 12 over 1 KV head,
                  4 experts top-2 of intermediate 24) but with swiglu_limit 0.6 so that all three
                  clamps of the SwiGLU are hit (gate > limit, up > limit, up < -limit; asserted),
                  router_aux_loss_coef 0.02; every bias, sink and norm weight random, non-zero;
                  reference.json: nf4_loss / nf4_loss_single on the train batch (see nf4_losses).
  train-gpt_oss/  peft's own adapter (adapter_config.json, adapter_model.safetensors):
                  target_modules q_proj, k_proj, v_proj, o_proj, lm_head (peft LoRA on Linear
                  with bias), target_parameters mlp.router.weight (GptOssTopKRouter is not a
                  Linear, so peft cannot target it as a module; its weight as a parameter it
                  can), experts.gate_up_proj and experts.down_proj (peft's fused layout; the
                  gate_up rank and alpha doubled by peft through rank_pattern/alpha_pattern);
                  B drawn random, so A's gradients are not zero.
                  batch.safetensors: input_ids, attention_mask, labels, loss, loss_aux, aux_loss,
                  logits (base + adapter, unmerged); grads.safetensors / grads_aux.safetensors:
                  d loss / d every LoRA tensor (peft's key names, ".default" dropped) without /
                  with router_aux_loss_coef * aux loss (output_router_logits=True);
                  merged.safetensors: peft's merge_and_unload of the experts' gate_up_proj /
                  down_proj and the router weight of every layer; grads_nf4.safetensors: the
                  loss and LoRA gradients on the NF4-quantized base (see qlora_grads).
  train-gpt_oss-experts/  the per-expert equivalent in plain torch (see per_expert_fixture):
                  moe-tune's own per-expert module names, gate and up with their own A.
The base seed is the first whose every routing decision on the batch, with the adapter, has a
gap of at least MIN_GAP between the k-th and (k+1)-th router logit (asserted).
"""
import argparse, json, os, shutil

import torch
from safetensors.torch import save_file

import transformers
from transformers import AutoModelForCausalLM, GptOssConfig
from peft import LoraConfig, get_peft_model

MIN_GAP = 1e-4
LIMIT = 0.6


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def hooks(model, k, gaps, clamps):
    hs = []
    for name, m in model.named_modules():
        cls = type(m).__name__
        if cls == "GptOssTopKRouter":
            def h(mod, i, o):
                s = o[0].float().sort(-1, descending=True).values
                gaps.append((s[:, k - 1] - s[:, k]).min().item())
            hs.append(m.register_forward_hook(h))
        if cls == "GptOssExperts":
            orig = m._apply_gate

            def gate(gu, orig=orig, m=m):
                g, u = gu[..., ::2], gu[..., 1::2]
                clamps[0] += int((g > m.limit).sum()); clamps[1] += int((u > m.limit).sum())
                clamps[2] += int((u < -m.limit).sum()); clamps[3] += g.numel()
                return orig(gu)
            m._apply_gate = gate
    return hs


def nf4_losses(base, ids, mask):
    """The loss on (ids, mask) with q/k/v/o_proj's weights and the fused experts (gate_up_proj
    [E, H, 2I] and down_proj [E, I, H], each tensor quantized whole, flattened as stored) replaced
    by bitsandbytes' NF4 quantize-dequantize (blocks of 64), with and without double
    quantization; router, biases, sinks, norms, embeddings and lm_head stay fp32."""
    import bitsandbytes.functional as BF
    labels = ids.clone()
    labels[mask == 0] = -100
    out = {}
    for key, dq in [("nf4_loss_single", False), ("nf4_loss", True)]:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            for name, prm in model.named_parameters():
                if ".layers." in name and (name.endswith("proj.weight") or name.endswith(("experts.gate_up_proj", "experts.down_proj"))):
                    w = prm.data.float().contiguous()
                    packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
                    prm.copy_(BF.dequantize_4bit(packed, st).reshape(w.shape))
            out[key] = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    path = os.path.join(base, "reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
    return out


def qlora_grads(base, out, ids, mask, labels):
    """QLoRA: peft's adapter (out) on the model whose q/k/v/o and fused experts are replaced by
    bitsandbytes' NF4 quantize-dequantize with double quantization (as nf4_losses): the loss
    and the LoRA gradients, to out/grads_nf4.safetensors (key "loss" holds the loss)."""
    import bitsandbytes.functional as BF
    from peft import PeftModel
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if ".layers." in name and (name.endswith("proj.weight") or name.endswith(("experts.gate_up_proj", "experts.down_proj"))):
                w = prm.data.float().contiguous()
                packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
                prm.copy_(BF.dequantize_4bit(packed, st).reshape(w.shape))
    model = PeftModel.from_pretrained(model, out, is_trainable=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    g = {n.replace(".default", ""): p.grad.float().contiguous() for n, p in params.items()}
    g["loss"] = loss.detach().reshape(1)
    save_file(g, os.path.join(out, "grads_nf4.safetensors"))
    return loss.item()


def per_expert_fixture(base, out, ids, mask, labels, r=4, alpha=8):
    """The per-expert equivalent, in plain torch on transformers' GptOss (as
    make_moe_fixtures.py does for the other MoE families): LoRA on every expert's gate, up and
    down with their own A and B (moe-tune's per-expert modules mlp.experts.E.gate_proj /
    up_proj / down_proj; gate = columns 0::2 of gate_up_proj, up = 1::2), on the router's
    weight (bias added after), q/k/v/o_proj and lm_head; y += (alpha / r) (x A^T) B^T, A
    kaiming-uniform, B random. Writes adapter_config.json, adapter_model.safetensors,
    grads.safetensors / grads_aux.safetensors (aux coefficient 0.02) and batch.safetensors."""
    import math
    import torch.nn.functional as F
    s = alpha / r
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    params = {}

    def pair(key, out_f, in_f):
        bound = 1 / math.sqrt(in_f)
        A = torch.nn.Parameter((torch.rand(r, in_f, generator=gen) * 2 - 1) * bound)
        B = torch.nn.Parameter(torch.randn(out_f, r, generator=gen) * 0.05)
        params[f"base_model.model.{key}.lora_A.weight"] = A
        params[f"base_model.model.{key}.lora_B.weight"] = B
        return A, B

    class LoRALinear(torch.nn.Module):
        def __init__(self, base, A, B):
            super().__init__()
            self.base, self.A, self.B = base, A, B

        def forward(self, x):
            return self.base(x) + s * F.linear(F.linear(x, self.A), self.B)

    for name, mod in [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]:
        A, B = pair(name, mod.out_features, mod.in_features)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(mod, A, B))
    for li, layer in enumerate(model.model.layers):
        router, experts = layer.mlp.router, layer.mlp.experts
        p = f"model.layers.{li}.mlp"
        rA, rB = pair(p + ".router", router.weight.shape[0], router.weight.shape[1])
        E, H, I = experts.num_experts, experts.hidden_size, experts.intermediate_size
        ex = [{part: pair(f"{p}.experts.{e}.{part}", *shape) for part, shape in
               [("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))]} for e in range(E)]

        def router_forward(hs, router=router, rA=rA, rB=rB):
            logits = F.linear(hs, router.weight, router.bias) + s * F.linear(F.linear(hs, rA), rB)
            top_v, top_i = torch.topk(logits, router.top_k, dim=-1)
            return logits, torch.softmax(top_v, dim=1), top_i
        router.forward = router_forward

        def experts_forward(hs, router_indices=None, routing_weights=None, experts=experts, ex=ex):
            out = torch.zeros_like(hs)
            for e in range(experts.num_experts):
                tok, pos = torch.where(router_indices == e)
                if tok.numel() == 0:
                    continue
                x = hs[tok]
                (gA, gB), (uA, uB), (dA, dB) = ex[e]["gate_proj"], ex[e]["up_proj"], ex[e]["down_proj"]
                W, b = experts.gate_up_proj[e], experts.gate_up_proj_bias[e]
                g = x @ W[:, ::2] + b[::2] + s * F.linear(F.linear(x, gA), gB)
                u = x @ W[:, 1::2] + b[1::2] + s * F.linear(F.linear(x, uA), uB)
                g = g.clamp(max=experts.limit)
                u = u.clamp(min=-experts.limit, max=experts.limit)
                a = (u + 1) * g * torch.sigmoid(g * experts.alpha)
                y = a @ experts.down_proj[e] + experts.down_proj_bias[e] + s * F.linear(F.linear(a, dA), dB)
                out.index_add_(0, tok, y * routing_weights[tok, pos, None])
            return out
        experts.forward = experts_forward
    gaps = []
    k = model.config.num_experts_per_tok
    hs = [m.register_forward_hook(lambda mod, i, o: gaps.append(
        (lambda v: (v[:, k - 1] - v[:, k]).min().item())(o[0].sort(-1, descending=True).values)))
        for m in model.modules() if type(m).__name__ == "GptOssTopKRouter"]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hs:
        h.remove()
    assert min(gaps) >= MIN_GAP, min(gaps)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    save_file({k: v.detach().contiguous() for k, v in params.items()}, os.path.join(out, "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt_oss-clamp", "r": r,
           "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": sorted({k.split(".")[-3] for k in params}),
           "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {},
           "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None, "init_lora_weights": True,
           "inference_mode": True}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)

    def grads():
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).float().contiguous() for k, p in params.items()}
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    save_file(grads(), os.path.join(out, "grads.safetensors"))
    for p in params.values():
        p.grad = None
    res = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
    res.loss.backward()
    save_file(grads(), os.path.join(out, "grads_aux.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int(),
               "loss": loss.detach().reshape(1), "loss_aux": res.loss.detach().reshape(1),
               "aux_loss": res.aux_loss.detach().reshape(1).float(), "logits": logits.contiguous()},
              os.path.join(out, "batch.safetensors"))
    return {"loss": loss.item(), "loss_aux": res.loss.item(), "router_gap": min(gaps)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    V = 384
    cfg = GptOssConfig(vocab_size=V, hidden_size=40, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                       head_dim=12, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, sliding_window=3,
                       layer_types=["sliding_attention", "full_attention", "sliding_attention"], rms_norm_eps=1e-5,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                       swiglu_limit=LIMIT, router_aux_loss_coef=0.02, attn_implementation="eager")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (2, 16), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    base = os.path.join(a.fixtures, "gpt_oss-clamp")
    out = os.path.join(a.fixtures, "train-gpt_oss")
    lcfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
                target_parameters=["mlp.router.weight", "experts.gate_up_proj", "experts.down_proj"])
    for seed in range(200):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        randomize(model, 1000 + seed)
        shutil.rmtree(base, ignore_errors=True)
        model.save_pretrained(base, safe_serialization=True)
        if os.path.exists(os.path.join(base, "generation_config.json")):
            os.remove(os.path.join(base, "generation_config.json"))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
        model = get_peft_model(model, LoraConfig(**lcfg))
        gb = torch.Generator().manual_seed(1)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, p in params.items():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gb) * 0.05)
        gaps, clamps = [], [0, 0, 0, 0]
        hs = hooks(model, cfg.num_experts_per_tok, gaps, clamps)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        for h in hs:
            h.remove()
        if min(gaps) >= MIN_GAP:
            break
    else:
        raise SystemExit("no seed gives router gaps of at least MIN_GAP")
    assert clamps[0] > 0 and clamps[1] > 0 and clamps[2] > 0, clamps
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    for junk in ("README.md",):
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))
    path = os.path.join(out, "adapter_config.json")
    with open(path) as f:
        acfg = json.load(f)
    for k in ("target_modules", "target_parameters"):
        acfg[k] = sorted(acfg[k])
    acfg["base_model_name_or_path"] = "gpt_oss-clamp"
    with open(path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)

    def grads():
        return {n.replace(".default", ""): (p.grad if p.grad is not None else torch.zeros_like(p)).float().contiguous()
                for n, p in params.items()}
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    save_file(grads(), os.path.join(out, "grads.safetensors"))
    for p in params.values():
        p.grad = None
    res = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
    res.loss.backward()
    save_file(grads(), os.path.join(out, "grads_aux.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int(),
               "loss": loss.detach().reshape(1), "loss_aux": res.loss.detach().reshape(1),
               "aux_loss": res.aux_loss.detach().reshape(1).float(), "logits": logits.contiguous()},
              os.path.join(out, "batch.safetensors"))
    # peft's own merge (merge_and_unload) of the experts and router of every layer: what
    # moe-tune's merge must write in transformers 5's layout.
    merged = model.merge_and_unload()
    sd = merged.state_dict()
    save_file({k: sd[k].float().contiguous() for k in sorted(sd) if k.endswith(("experts.gate_up_proj", "experts.down_proj", "router.weight"))},
              os.path.join(out, "merged.safetensors"))
    nf4 = nf4_losses(base, ids, mask)
    nf4["qlora_loss"] = qlora_grads(base, out, ids, mask, labels)
    nf4["per_expert"] = per_expert_fixture(base, os.path.join(a.fixtures, "train-gpt_oss-experts"), ids, mask, labels)
    print(json.dumps({"seed": seed, **nf4, "router_gap": min(gaps), "clamps(gate>L, up>L, up<-L, of)": clamps,
                      "loss": loss.item(), "loss_aux": res.loss.item(), "aux_loss": res.aux_loss.item(),
                      "keys": sorted(grads().keys()),
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}, indent=1))


if __name__ == "__main__":
    main()
