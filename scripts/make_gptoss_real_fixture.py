"""The REAL gpt-oss-20b config.json, and a tiny transformers GPT-OSS model with the same field
set (yarn RoPE with truncate false, layer_types, sinks, MXFP4 experts, bf16 weights), plus its
truncate-true twin and a peft adapter merged by peft on the dequantized model.

    ~/peer-venv/bin/python scripts/make_gptoss_real_fixture.py --fixtures Tests/MoETuneTests/Fixtures

Source of REAL: openai/gpt-oss-20b's config.json as published on the Hugging Face Hub
(https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json), reconstructed field for
field from copies of it quoted in public code (the `search` tool, 2026-11-23: two independent
repositories quote the whole file identically; transformers' GptOssConfig defaults and its
yarn `truncate` key agree). Nothing is downloaded here.

Writes
  gpt_oss-20b-config/config.json   REAL, byte for byte as json.dump(indent=2) writes it.
  gpt_oss-real/                    REAL with small dims (4 layers sliding/full, window 4, hidden 64,
                                   4 heads of head_dim 16 over 1 KV head, 4 experts top-2 of
                                   intermediate 32, vocab 384); rope_scaling yarn factor 32,
                                   beta 32/1, original 4096, truncate false, theta 150000 as
                                   the real one. model.safetensors: every tensor bf16 except the
                                   experts, which are MXFP4 blocks/scales as the released
                                   checkpoints store them. reference.safetensors: input_ids,
                                   attention_mask, logits, loss of transformers 5 (eager, fp32)
                                   on the model with those bf16 values and transformers' own
                                   dequantization of the blocks (convert_moe_packed_tensors).
  gpt_oss-real-truncate/           the same with rope_scaling.truncate true (its own reference;
                                   asserted to differ from the truncate-false logits).
  train-gpt_oss-real/              a peft 0.21 adapter on that dequantized model (q, k, v, o as
                                   modules; experts.gate_up_proj / experts.down_proj as
                                   target_parameters; B random) and merged.safetensors: the
                                   logits of peft's merge_and_unload on the same batch (fp32,
                                   and with every merged weight rounded to bf16), unmerged
                                   logits, and the merged layer-0 gate_up_proj.
Router margins: the seed is the first whose every routing decision has a gap of at least 1e-4
between the k-th and (k+1)-th router logit, with and without the adapter (asserted).
"""
import argparse, copy, json, os, shutil

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors
from peft import LoraConfig, get_peft_model

MIN_GAP = 1e-4

# openai/gpt-oss-20b config.json (see the module docstring for its source).
REAL = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}

LAYERS = 4
TINY = {"hidden_size": 64, "intermediate_size": 32, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 1,
        "num_hidden_layers": LAYERS, "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
        "num_local_experts": 4, "num_experts_per_tok": 2, "experts_per_token": 2, "vocab_size": 384,
        "sliding_window": 4, "eos_token_id": 2, "pad_token_id": 383}


def tiny_config(truncate):
    c = copy.deepcopy(REAL)
    c.update(copy.deepcopy(TINY))
    c["rope_scaling"]["truncate"] = truncate
    return c


def quantize(w, lut):
    """w [E, A, B] as transformers holds it -> blocks [E, B, A/32, 16], scales [E, B, A/32]."""
    x = w.transpose(1, 2).contiguous()
    E, R, A = x.shape
    x = x.reshape(E, R, A // 32, 32)
    amax = x.abs().amax(-1).clamp_min(1e-30)
    exp = torch.ceil(torch.log2(amax / 6)).to(torch.int32)
    scaled = x / torch.pow(2.0, exp.float())[..., None]
    codes = (scaled[..., None] - lut).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exp + 127).to(torch.uint8).contiguous()


def router_gaps(model, k, run):
    gaps = []
    hs = []
    for _, m in model.named_modules():
        if type(m).__name__ == "GptOssTopKRouter":
            def h(mod, i, o):
                s = o[0].float().sort(-1, descending=True).values
                gaps.append((s[:, k - 1] - s[:, k]).min().item())
            hs.append(m.register_forward_hook(h))
    with torch.no_grad():
        run()
    for h in hs:
        h.remove()
    return min(gaps)


def build(folder, cfg_dict, seed, ids, mask, labels):
    """The tiny model of cfg_dict as transformers reads the file, weights random (bf16-valued),
    experts MXFP4; returns (model on the dequantized experts, checkpoint tensors)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    cfg = AutoConfig.from_pretrained(folder)
    del cfg.quantization_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    g = torch.Generator().manual_seed(seed)
    lut = torch.tensor(FP4_VALUES)
    st = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("sinks"):
                v = torch.randn(p.shape, generator=g)
            elif "bias" in name:
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.15 * torch.randn(p.shape, generator=g)
            if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                blocks, scales = quantize(v, lut)
                st[name + "_blocks"], st[name + "_scales"] = blocks, scales
                p.copy_(convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32))
            else:
                st[name] = v.bfloat16().contiguous()
                p.copy_(st[name].float())
    return model, st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    real_dir = os.path.join(a.fixtures, "gpt_oss-20b-config")
    shutil.rmtree(real_dir, ignore_errors=True)
    os.makedirs(real_dir)
    with open(os.path.join(real_dir, "config.json"), "w") as f:
        json.dump(REAL, f, indent=2)
    # transformers reads the real file: yarn, truncate false, factor 32, 24 alternating layers.
    rc = AutoConfig.from_pretrained(real_dir)
    assert rc.rope_parameters["rope_type"] == "yarn" and rc.rope_parameters["truncate"] is False, rc.rope_parameters
    assert rc.num_local_experts == 32 and rc.num_experts_per_tok == 4 and rc.layer_types[0] == "sliding_attention"

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 384, (2, 20), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    lcfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    out = {}
    for seed in range(100, 400):
        models = {}
        for name, trunc in (("gpt_oss-real", False), ("gpt_oss-real-truncate", True)):
            folder = os.path.join(a.fixtures, name)
            shutil.rmtree(folder, ignore_errors=True)
            models[name] = build(folder, tiny_config(trunc), seed, ids, mask, labels)
        model = models["gpt_oss-real"][0]
        ok = all(router_gaps(m, 2, lambda m=m: m(input_ids=ids, attention_mask=mask)) >= MIN_GAP for m, _ in models.values())
        if not ok:
            continue
        torch.manual_seed(0)
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**lcfg))
        gb = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gb) * 0.05)
        if router_gaps(peft_model, 2, lambda: peft_model(input_ids=ids, attention_mask=mask)) >= MIN_GAP:
            break
    else:
        raise SystemExit("no seed gives router gaps of at least MIN_GAP")
    print("seed", seed)
    inv = {}
    for name, (m, st) in models.items():
        folder = os.path.join(a.fixtures, name)
        save_file(st, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        inv[name] = m.model.rotary_emb.inv_freq.clone()
        with torch.no_grad():
            res = m(input_ids=ids, attention_mask=mask, labels=labels)
        out[name] = res.logits.float()
        save_file({"input_ids": ids.int().contiguous(), "attention_mask": mask.int().contiguous(),
                   "logits": res.logits.float().contiguous(), "loss": res.loss.float().reshape(1)},
                  os.path.join(folder, "reference.safetensors"))
        print(name, "loss", res.loss.item(), "inv_freq", [round(x, 6) for x in inv[name].tolist()])
    assert not torch.equal(inv["gpt_oss-real"], inv["gpt_oss-real-truncate"]), "truncate changes nothing here"
    d = (out["gpt_oss-real"] - out["gpt_oss-real-truncate"]).abs().max().item()
    print("truncate false vs true: logits max |diff|", d)
    assert d > 1e-3

    # The adapter, and peft's merge of it into the dequantized model.
    tdir = os.path.join(a.fixtures, "train-gpt_oss-real")
    shutil.rmtree(tdir, ignore_errors=True)
    peft_model.save_pretrained(tdir)
    for junk in ("README.md",):
        if os.path.exists(os.path.join(tdir, junk)):
            os.remove(os.path.join(tdir, junk))
    path = os.path.join(tdir, "adapter_config.json")
    with open(path) as f:
        acfg = json.load(f)
    for k in ("target_modules", "target_parameters"):
        acfg[k] = sorted(acfg[k])
    acfg["base_model_name_or_path"] = "gpt_oss-real"
    with open(path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids, attention_mask=mask).logits.float()
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_ids=ids, attention_mask=mask).logits.float()
    gu = merged_model.model.layers[0].mlp.experts.gate_up_proj.detach().float().clone()
    # The same merge stored in bf16 (what save_pretrained writes from transformers' bf16 CPU
    # load): every weight rounded to bf16, run in fp32.
    with torch.no_grad():
        for p in merged_model.parameters():
            p.copy_(p.bfloat16().float())
        merged_bf16 = merged_model(input_ids=ids, attention_mask=mask).logits.float()
    print("peft merged, bf16-rounded vs fp32: logits max |diff|", (merged_bf16 - merged).abs().max().item())
    print("peft merged vs unmerged: logits max |diff|", (merged - unmerged).abs().max().item(),
          "adapter effect", (merged - out["gpt_oss-real"]).abs().max().item())
    save_file({"input_ids": ids.int().contiguous(), "attention_mask": mask.int().contiguous(),
               "logits": merged.contiguous(), "logits_unmerged": unmerged.contiguous(), "logits_bf16": merged_bf16.contiguous(),
               "layer0_gate_up_proj": gu.contiguous()},
              os.path.join(tdir, "merged.safetensors"))


main()
