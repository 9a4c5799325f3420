"""Fixtures for writing adapters that peft 0.21 loads on transformers 5 (PEFTOutTests).

    ~/peer-venv/bin/python scripts/make_peft_out_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

For each MoE family fixture F (mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, deepseek_v2)
writes peft-out-F/:
- legacy/: a LoRA adapter in the per-expert naming moe-tune wrote before (every target kind
  the family has: attention, every expert's gate/up/down, router with rank 1 / alpha 3 through
  rank_pattern, shared expert, dense MLP, lm_head unless tied), A and B random;
- adapter_config.json + adapter_model.safetensors: the same adapter as peft's save_pretrained
  writes it for transformers 5: attention and lm_head in target_modules; experts as
  target_parameters on mlp.experts.gate_up_proj (gate and up block-diagonal, built with peft's
  own _block_diag_3d as its PeftConcatenate does, rank and alpha doubled through
  rank_pattern/alpha_pattern) and mlp.experts.down_proj; router, shared-expert and dense-MLP
  adapters as target_parameters on their 2-D weights;
- batch.safetensors: input_ids, attention_mask, and the loss and logits of peft's model.
The script asserts that peft's model equals the base model with every per-expert delta
s * B @ A added to its weights (logits 1e-4), that PeftModel.from_pretrained of the saved folder gives
the same logits (0), and, where peft converts per-expert adapters itself (mixtral, qwen3_moe,
olmoe, deepseek_v2), that peft's conversion of the legacy experts gives the same fused tensors.
"""
import argparse, copy, json, os, re, shutil, tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.transformers_weight_conversion import _block_diag_3d
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM

R, ALPHA, ROUTER_R, ROUTER_ALPHA = 2, 4, 1, 3
FAMILIES = {
    # block (moe-tune's per-expert names), expert parts, router module in block, its transformers 5 block,
    # shared expert module in block, attention modules
    "mixtral": ("block_sparse_moe", ["w1", "w3", "w2"], "gate", "mlp", None, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "qwen2_moe": ("mlp", ["gate_proj", "up_proj", "down_proj"], "gate", "mlp", "shared_expert", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "qwen3_moe": ("mlp", ["gate_proj", "up_proj", "down_proj"], "gate", "mlp", None, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "olmoe": ("mlp", ["gate_proj", "up_proj", "down_proj"], "gate", "mlp", None, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "granitemoe": ("block_sparse_moe", ["gate_proj", "up_proj", "down_proj"], "router", "block_sparse_moe", None, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "deepseek_v2": ("mlp", ["gate_proj", "up_proj", "down_proj"], "gate", "mlp", "shared_experts", ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]),
}
DENSE = ["gate_proj", "up_proj", "down_proj"]


def build(fixtures, fam):
    block, parts, router, block5, shared, attn = FAMILIES[fam]
    src = os.path.join(fixtures, fam)
    out = os.path.join(fixtures, "peft-out-" + fam)
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = base.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    g = torch.Generator().manual_seed(sum(map(ord, fam)))

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    legacy = {}        # moe-tune's per-expert module -> (A, B, scale)
    fused = {}         # peft module -> (A, B)
    target_parameters, rank_pattern, alpha_pattern = [], {}, {}
    merged = copy.deepcopy(base)
    msd = dict(merged.named_parameters())

    def lora(module, w_name, out_f, in_f, r=R, alpha=ALPHA):
        a, b = rnd(r, in_f), rnd(out_f, r)
        legacy[module] = (a, b)
        with torch.no_grad():
            msd[w_name].add_(alpha / r * b @ a)
        return a, b

    for l, layer in enumerate(base.model.layers):
        p = f"model.layers.{l}."
        for name in attn:
            w = getattr(layer.self_attn, name).weight
            a, b = lora(p + "self_attn." + name, p + "self_attn." + name + ".weight", *w.shape)
            fused[p + "self_attn." + name] = (a, b)
        mlp = getattr(layer, block5)
        experts = getattr(mlp, "experts", None)
        if experts is None:  # a dense layer
            for part in DENSE:
                w = getattr(mlp, part).weight
                a, b = lora(p + "mlp." + part, p + "mlp." + part + ".weight", *w.shape)
                fused[p + "mlp." + part] = (a, b)
                target_parameters.append(f"mlp.{part}.weight")
            continue
        rw = getattr(mlp, router).weight
        a, b = lora(p + block + "." + router, p + block5 + "." + router + ".weight", *rw.shape, r=ROUTER_R, alpha=ROUTER_ALPHA)
        fused[p + block5 + "." + router] = (a, b)
        key = f"{block5}.{router}.weight"
        target_parameters.append(key)
        rank_pattern[re.escape(key)], alpha_pattern[re.escape(key)] = ROUTER_R, ROUTER_ALPHA
        if shared is not None:
            for part in DENSE:
                w = getattr(getattr(mlp, shared), part).weight
                m = f"{block5}.{shared}.{part}"
                a, b = lora(p + m, p + m + ".weight", *w.shape)
                fused[p + m] = (a, b)
                target_parameters.append(m + ".weight")
        gu, dn = experts.gate_up_proj, experts.down_proj   # [E, 2I, H], [E, H, I]
        E, I2, H = gu.shape
        I = I2 // 2
        ga, gb, ua, ub, da, db = [], [], [], [], [], []
        for e in range(E):
            em = f"{p}{block}.experts.{e}."
            ga.append(rnd(R, H)); gb.append(rnd(I, R)); ua.append(rnd(R, H)); ub.append(rnd(I, R))
            da.append(rnd(R, I)); db.append(rnd(H, R))
            legacy[em + parts[0]] = (ga[-1], gb[-1])
            legacy[em + parts[1]] = (ua[-1], ub[-1])
            legacy[em + parts[2]] = (da[-1], db[-1])
            with torch.no_grad():
                s = ALPHA / R
                msd[p + block5 + ".experts.gate_up_proj"][e, :I] += s * gb[-1] @ ga[-1]
                msd[p + block5 + ".experts.gate_up_proj"][e, I:] += s * ub[-1] @ ua[-1]
                msd[p + block5 + ".experts.down_proj"][e] += s * db[-1] @ da[-1]
        # peft's PeftConcatenate / MergeModulelist of the per-expert adapters
        a_gu = torch.cat([torch.stack(ga), torch.stack(ua)], dim=1).flatten(0, 1)            # [E*2r, H]
        b_gu = _block_diag_3d([torch.stack(gb), torch.stack(ub)]).permute(2, 0, 1).flatten(0, 1).T  # [2I, 2r*E]
        a_dn = torch.stack(da).flatten(0, 1)                                                 # [E*r, I]
        b_dn = torch.stack(db).permute(2, 0, 1).flatten(0, 1).T                              # [H, r*E]
        fused[p + block5 + ".experts.base_layer"] = (a_gu, b_gu.contiguous())
        fused[p + block5 + ".experts"] = (a_dn, b_dn.contiguous())
        for k in (f"{block5}.experts.gate_up_proj", f"{block5}.experts.down_proj"):
            target_parameters.append(k)
        rank_pattern[re.escape(f"{block5}.experts.gate_up_proj")] = 2 * R
        alpha_pattern[re.escape(f"{block5}.experts.gate_up_proj")] = 2 * ALPHA
    target_modules = sorted(set(attn))
    if not tied:
        w = base.lm_head.weight
        a, b = lora("lm_head", "lm_head.weight", *w.shape)
        fused["lm_head"] = (a, b)
        target_modules.append("lm_head")
    target_parameters = sorted(set(target_parameters))

    # peft's model in the fused layout, filled with the same numbers.
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                                          target_modules=sorted(target_modules), target_parameters=target_parameters,
                                          rank_pattern=rank_pattern, alpha_pattern=alpha_pattern))
    inner = pm.base_model.model
    with torch.no_grad():
        n_set = 0
        for module, (a, b) in fused.items():
            m = inner.get_submodule(module)
            assert m.lora_A["default"].weight.shape == a.shape, (module, m.lora_A["default"].weight.shape, a.shape)
            assert m.lora_B["default"].weight.shape == b.shape, (module, m.lora_B["default"].weight.shape, b.shape)
            m.lora_A["default"].weight.copy_(a)
            m.lora_B["default"].weight.copy_(b)
            n_set += 1
        n_lora = sum(1 for n, _ in pm.named_parameters() if "lora_A" in n)
        assert n_set == n_lora, (n_set, n_lora)

    g2 = torch.Generator().manual_seed(2)
    ids = torch.randint(3, cfg.vocab_size, (2, 16), generator=g2)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    pm.eval(); merged.eval(); base.eval()
    with torch.no_grad():
        res = pm(input_ids=ids, attention_mask=mask, labels=labels)
        ref = merged(input_ids=ids, attention_mask=mask, labels=labels)
        plain = base(input_ids=ids, attention_mask=mask, labels=labels)
    d_ref = (res.logits - ref.logits).abs().max().item()
    d_base = (res.logits - plain.logits).abs().max().item()
    assert d_ref < 1e-4, (fam, d_ref)
    assert d_base > 1e-2, (fam, d_base)

    shutil.rmtree(out, ignore_errors=True)
    pm.save_pretrained(out)
    for extra in ("README.md",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    path = os.path.join(out, "adapter_config.json")
    with open(path) as f:
        c = json.load(f)
    for k in ("target_modules", "target_parameters"):
        c[k] = sorted(c[k])
    c["base_model_name_or_path"] = fam
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    with torch.no_grad():
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), out)
        again.eval()
        d_reload = (again(input_ids=ids, attention_mask=mask).logits - res.logits).abs().max().item()
    assert d_reload == 0, (fam, d_reload)
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "loss": res.loss.reshape(1).float(),
               "logits": res.logits.float().contiguous()}, os.path.join(out, "batch.safetensors"))

    # The legacy (per-expert) adapter, as moe-tune wrote it before.
    lg = os.path.join(out, "legacy")
    os.makedirs(lg)
    save_file({f"base_model.model.{m}.lora_{x}.weight": t.contiguous() for m, (a, b) in legacy.items() for x, t in (("A", a), ("B", b))},
              os.path.join(lg, "adapter_model.safetensors"))
    suffixes = set()
    for m in legacy:
        parts_ = m.split(".")
        suffixes.add(".".join(parts_[-2:]) if shared is not None and len(parts_) > 1 and parts_[-2] == shared else parts_[-1])
    with open(os.path.join(lg, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": fam, "r": R,
                   "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": sorted(suffixes), "bias": "none",
                   "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                   "rank_pattern": {router: ROUTER_R, router + ".weight": ROUTER_R},
                   "alpha_pattern": {router: ROUTER_ALPHA, router + ".weight": ROUTER_ALPHA},
                   "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
                   "init_lora_weights": True, "inference_mode": True, "revision": None}, f, indent=2, sort_keys=True)

    # Cross-check with peft's own conversion of per-expert adapters, where it has one.
    conv = "n/a"
    if fam in ("mixtral", "qwen3_moe", "olmoe", "deepseek_v2"):
        tmp = tempfile.mkdtemp()
        save_file({f"base_model.model.{m}.lora_{x}.weight": t.contiguous() for m, (a, b) in legacy.items()
                   if ".experts." in m for x, t in (("A", a), ("B", b))}, os.path.join(tmp, "adapter_model.safetensors"))
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA,
                       "target_modules": parts, "lora_dropout": 0.0}, f)
        pc = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), tmp)
        worst = 0.0
        for module, (a, b) in fused.items():
            if ".experts" not in module:
                continue
            m = pc.base_model.model.get_submodule(module)
            worst = max(worst, (m.lora_A["default"].weight - a).abs().max().item(),
                        (m.lora_B["default"].weight - b).abs().max().item())
        conv = worst
        shutil.rmtree(tmp)
    sizes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    print(f"{fam}: peft vs merged reference {d_ref:.2e}, vs base {d_base:.2f}, reload {d_reload}, "
          f"peft's per-expert conversion vs ours {conv}, loss {res.loss.item():.6f}, {sizes} bytes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    torch.manual_seed(0)
    for fam in args.families:
        build(args.fixtures, fam)
