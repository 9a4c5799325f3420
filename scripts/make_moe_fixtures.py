"""Fixtures of the MoE families beyond Mixtral (Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE), from transformers 5
(fp32), seeded and reproducible.

    /root/peer-venv/bin/python scripts/make_moe_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Needs the fixtures of make_fixtures.py (llama/tokenizer.model, eval.jsonl and the reference
helpers). For every NAME it writes NAME/ (config.json, model.safetensors as transformers 5
saves it, tokenizer.model, reference.safetensors/json as make_fixtures.py does) and
train-NAME/ with a LoRA adapter on every module kind, written in plain torch on top of
transformers 5's model (peft puts expert LoRA on the fused expert tensors, a different
parametrisation): per-expert gate/up/down LoRA, router LoRA, shared-expert LoRA, attention,
the dense MLP of the mlp_only layer and lm_head; y = x W^T + (alpha / r) (x A^T) B^T with A
kaiming-uniform and B random (so A's gradients are not zero). Files: adapter_config.json,
adapter_model.safetensors (peft's key names), batch.safetensors (input_ids, attention_mask,
labels, loss, loss_aux, aux_loss, logits) and grads.safetensors / grads_aux.safetensors
(d loss / d every LoRA tensor without / with router_aux_loss_coef * aux loss); NAME/reference.json
also gets nf4_loss and nf4_loss_single (with / without double quantization, see nf4_loss).

Routers are drawn with std ROUTER_STD and the seed is the first whose every routing decision
on every input the fixtures run has a gap of at least MIN_GAP between the k-th and (k+1)-th
router probability (asserted). No pad_token_id; norm weights 1 + 0.3 N(0,1); biases N(0, 0.3^2).

  qwen2_moe  3 layers (layer 1 dense: mlp_only_layers [1]), 8 experts top-2 of 32, shared
             expert of 48 with its gate, norm_topk_prob false, q/k/v biases, one KV head
  qwen3_moe  2 layers, 8 experts top-3 of 32, norm_topk_prob true, q/k norms, head_dim 24
  olmoe      2 layers, 8 experts top-2 of 32, norm_topk_prob false, q/k norms over the whole
             projection, clip_qkv 1.5 (some values are clamped)
  qwen2_moe-sw  qwen2_moe with 3 layers (none dense), use_sliding_window, sliding_window 5 and
             max_window_layers 2: transformers 5's Qwen2-MoE rule makes layer 0 (even, < 2) slide
             only
  granitemoe 2 layers, 8 experts top-2 of 32, one KV head, tied embeddings, embedding_multiplier
             12, attention_multiplier 0.15625, residual_multiplier 0.22, logits_scaling 8;
             router softmax over the top-k logits (add_lora follows it); transformers 5 saves
             Granite's own names (block_sparse_moe.input_linear / output_linear / router.layer)
"""
import argparse, json, math, os, shutil, sys

import torch
import torch.nn.functional as F
import sentencepiece as spm
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import eval_examples, references, router_gaps, fixture_inputs  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, GraniteMoeConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig  # noqa: E402

ROUTER_STD = {"qwen2_moe": 0.5, "qwen3_moe": 0.08, "olmoe": 0.08, "granitemoe": 0.08}
MIN_GAP = 1e-4
R, ALPHA = 4, 8
COMMON = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
              rms_norm_eps=1e-6, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=None,
              initializer_range=0.1, num_experts=8, moe_intermediate_size=32, router_aux_loss_coef=0.02)


def configs(V):
    yield "qwen2_moe", Qwen2MoeConfig(vocab_size=V, num_hidden_layers=3, mlp_only_layers=[1], num_experts_per_tok=2,
                                      shared_expert_intermediate_size=48, norm_topk_prob=False, qkv_bias=True,
                                      use_sliding_window=False, **{**COMMON, "num_key_value_heads": 1})
    yield "qwen3_moe", Qwen3MoeConfig(vocab_size=V, num_hidden_layers=2, num_experts_per_tok=3, norm_topk_prob=True,
                                      use_sliding_window=False, **{**COMMON, "head_dim": 24})
    olmoe = {k: v for k, v in COMMON.items() if k not in ("moe_intermediate_size", "head_dim")}
    yield "olmoe", OlmoeConfig(vocab_size=V, num_hidden_layers=2, num_experts_per_tok=2, norm_topk_prob=False,
                               clip_qkv=1.5, **{**olmoe, "intermediate_size": 32})
    granite = {k: v for k, v in COMMON.items() if k not in ("moe_intermediate_size", "head_dim", "num_experts")}
    yield "granitemoe", GraniteMoeConfig(vocab_size=V, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2,
                                         embedding_multiplier=12.0, attention_multiplier=0.015625 * 10,
                                         residual_multiplier=0.22, logits_scaling=8.0, tie_word_embeddings=True,
                                         **{**granite, "intermediate_size": 32, "num_key_value_heads": 1})
    yield "qwen2_moe-sw", Qwen2MoeConfig(vocab_size=V, num_hidden_layers=3, num_experts_per_tok=2,
                                         shared_expert_intermediate_size=48, norm_topk_prob=False, qkv_bias=True,
                                         use_sliding_window=True, sliding_window=5, max_window_layers=2,
                                         **{**COMMON, "num_key_value_heads": 1})


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.router.weight"):
                p.copy_(ROUTER_STD[model.config.model_type] * torch.randn(p.shape, generator=g))


class LoRALinear(torch.nn.Module):
    def __init__(self, base, A, B):
        super().__init__()
        self.base, self.A, self.B = base, A, B

    def forward(self, x):
        return self.base(x) + (ALPHA / R) * F.linear(F.linear(x, self.A), self.B)


def add_lora(model, gen):
    """LoRA everywhere, in plain torch. Returns {peft key: parameter}."""
    params = {}
    s = ALPHA / R

    def pair(key, out_f, in_f):
        bound = 1 / math.sqrt(in_f)
        A = torch.nn.Parameter((torch.rand(R, in_f, generator=gen) * 2 - 1) * bound)
        B = torch.nn.Parameter(torch.randn(out_f, R, generator=gen) * 0.05)
        params[f"base_model.model.{key}.lora_A.weight"] = A
        params[f"base_model.model.{key}.lora_B.weight"] = B
        return A, B

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for name, mod in linears:
        if name.endswith("shared_expert_gate"):
            continue  # frozen (moe-tune's shared_expert target is its three projections)
        A, B = pair(name, mod.out_features, mod.in_features)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(mod, A, B))
    for li, layer in enumerate(model.model.layers):
        granite = hasattr(layer, "block_sparse_moe")
        mlp = layer.block_sparse_moe if granite else layer.mlp
        if not hasattr(mlp, "experts"):
            continue
        router, experts = (mlp.router if granite else mlp.gate), mlp.experts
        p = f"model.layers.{li}." + ("block_sparse_moe" if granite else "mlp")
        rA, rB = pair(p + (".router" if granite else ".gate"), router.weight.shape[0], router.weight.shape[1])
        E, I = experts.gate_up_proj.shape[0], experts.gate_up_proj.shape[1] // 2
        H = experts.gate_up_proj.shape[2]
        ex = [{part: pair(f"{p}.experts.{e}.{part}", *(shape)) for part, shape in
               [("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))]} for e in range(E)]

        def router_forward(hidden_states, router=router, rA=rA, rB=rB, granite=granite):
            hs = hidden_states.reshape(-1, router.weight.shape[1])
            logits = F.linear(hs, router.weight) + s * F.linear(F.linear(hs, rA), rB)
            if granite:  # top-k of the logits, softmax over the k selected
                top_l, top_i = logits.float().topk(router.top_k, dim=-1)
                return logits, torch.softmax(top_l, dim=-1).to(logits.dtype), top_i
            probs = torch.softmax(logits, dtype=torch.float, dim=-1)
            top_v, top_i = torch.topk(probs, router.top_k, dim=-1)
            if router.norm_topk_prob:
                top_v = top_v / top_v.sum(dim=-1, keepdim=True)
            return logits, top_v.to(logits.dtype), top_i
        router.forward = router_forward

        def experts_forward(hidden_states, top_k_index, top_k_weights, experts=experts, ex=ex, I=I):
            out = torch.zeros_like(hidden_states)
            for e in range(experts.gate_up_proj.shape[0]):
                tok, pos = torch.where(top_k_index == e)
                if tok.numel() == 0:
                    continue
                x = hidden_states[tok]
                (gA, gB), (uA, uB), (dA, dB) = ex[e]["gate_proj"], ex[e]["up_proj"], ex[e]["down_proj"]
                g = F.linear(x, experts.gate_up_proj[e, :I]) + s * F.linear(F.linear(x, gA), gB)
                u = F.linear(x, experts.gate_up_proj[e, I:]) + s * F.linear(F.linear(x, uA), uB)
                a = F.silu(g) * u
                y = F.linear(a, experts.down_proj[e]) + s * F.linear(F.linear(a, dA), dB)
                out.index_add_(0, tok, y * top_k_weights[tok, pos, None])
            return out
        experts.forward = experts_forward
    return params


def write_adapter(out, params, base_name):
    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in params.items()}, os.path.join(out, "adapter_model.safetensors"))
    targets = sorted({k.split(".")[-3] for k in params})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name, "r": R,
           "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": targets, "bias": "none",
           "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
           "modules_to_save": None, "layers_to_transform": None, "init_lora_weights": True, "inference_mode": True}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def nf4_loss(model, ids, mask, folder, double_quant=True, key="nf4_loss"):
    """The loss with every decoder-layer linear weight (attention, dense MLP, shared expert,
    every expert's gate/up/down) replaced by bitsandbytes' NF4 quantize-dequantize (blocks of
    64, double quantization), as moe-tune stores them; routers, the shared-expert gate,
    norms, biases, embeddings and lm_head stay fp32."""
    import copy
    import bitsandbytes.functional as BF

    def nf4(w):
        w = w.float().contiguous()
        packed, st = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        return BF.dequantize_4bit(packed, st).reshape(w.shape)

    q = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in q.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name and not name.endswith("shared_expert_gate"):
                mod.weight.copy_(nf4(mod.weight.data))
            if hasattr(mod, "gate_up_proj") and hasattr(mod, "down_proj") and not isinstance(mod.down_proj, torch.nn.Module):
                I = mod.gate_up_proj.shape[1] // 2
                for e in range(mod.gate_up_proj.shape[0]):
                    mod.gate_up_proj[e, :I] = nf4(mod.gate_up_proj[e, :I])
                    mod.gate_up_proj[e, I:] = nf4(mod.gate_up_proj[e, I:])
                    mod.down_proj[e] = nf4(mod.down_proj[e])
        labels = ids.clone()
        labels[mask == 0] = -100
        loss = q(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    path = os.path.join(folder, "reference.json")
    with open(path) as f:
        ref = json.load(f)
    ref[key] = loss
    with open(path, "w") as f:
        json.dump(ref, f, indent=2)
    return loss


def grads_of(params):
    """Gradients by key; an expert no token of the batch was routed to has exactly zero."""
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).float().contiguous() for k, p in params.items()}


def train_fixture(folder, out, V):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (2, 16), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    # The first adapter seed whose adapted model routes the batch with margins >= MIN_GAP.
    for lora_seed in range(1, 100):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        for p in model.parameters():
            p.requires_grad_(False)
        params = add_lora(model, torch.Generator().manual_seed(lora_seed))
        pg, _ = router_gaps(model, [(ids, mask)])
        if pg >= MIN_GAP:
            break
    else:
        raise SystemExit("no adapter seed gives router gaps of at least MIN_GAP")
    shutil.rmtree(out, ignore_errors=True)
    write_adapter(out, params, os.path.basename(folder))
    model.train()
    tensors = {"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int()}
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    save_file(grads_of(params), os.path.join(out, "grads.safetensors"))
    for p in params.values():
        p.grad = None
    res = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
    assert abs(model.config.router_aux_loss_coef - 0.02) < 1e-12
    res.loss.backward()
    save_file(grads_of(params), os.path.join(out, "grads_aux.safetensors"))
    tensors.update(loss=loss.detach().reshape(1), loss_aux=res.loss.detach().reshape(1),
                   aux_loss=res.aux_loss.detach().reshape(1))
    with torch.no_grad():
        tensors["logits"] = model(input_ids=ids, attention_mask=mask).logits.float().contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "batch.safetensors"))
    return {"loss": loss.item(), "loss_aux": res.loss.item(), "aux_loss": res.aux_loss.item(), "router_gap": pg, "lora_seed": lora_seed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    tok = os.path.join(a.fixtures, "llama", "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=tok)
    V = sp.get_piece_size()
    with open(os.path.join(a.fixtures, "eval.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    examples = eval_examples(sp, rows)
    g = torch.Generator().manual_seed(3)
    B, T = 2, 24
    ids = torch.randint(3, V, (B, T), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 6:] = 0
    summary = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    for name, cfg in configs(V):
        if a.only and name not in a.only:
            continue
        for seed in range(200):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg).float().eval()
            randomize(model, 1000 + seed)
            gap, _ = router_gaps(model, fixture_inputs(model, ids, mask, examples))
            if gap >= MIN_GAP:
                break
        else:
            raise SystemExit(f"{name}: no seed below 200 gives router gaps of at least {MIN_GAP}")
        folder = os.path.join(a.fixtures, name)
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder, safe_serialization=True)
        if os.path.exists(os.path.join(folder, "generation_config.json")):
            os.remove(os.path.join(folder, "generation_config.json"))
        shutil.copy(tok, os.path.join(folder, "tokenizer.model"))
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits), name
        summary[name] = references(reloaded, sp, ids, mask, examples, folder)
        summary[name]["router_seed"], summary[name]["router_gap"] = seed, gap
        summary[name]["nf4_loss"] = nf4_loss(reloaded, ids, mask, folder)
        summary[name]["nf4_loss_single"] = nf4_loss(reloaded, ids, mask, folder, double_quant=False, key="nf4_loss_single")
        summary[name]["train"] = train_fixture(folder, os.path.join(a.fixtures, "train-" + name), V)
        summary[name].pop("greedy_prompt")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
