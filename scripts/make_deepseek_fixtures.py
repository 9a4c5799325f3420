"""DeepSeek-V2 fixtures from transformers 5 (fp32), with a per-expert LoRA in plain torch.

    ~/peer-venv/bin/python scripts/make_deepseek_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Needs llama/tokenizer.model and eval.jsonl from make_fixtures.py. Writes, as
make_moe_fixtures.py does, NAME/ (config.json, model.safetensors as transformers 5 saves
it, tokenizer.model, reference.safetensors, reference.json with nf4_loss / nf4_loss_single)
and for `deepseek_v2` train-deepseek_v2/ (adapter with LoRA on every linear module:
q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, the dense MLP, the shared experts, every
expert's gate/up/down, the router mlp.gate and lm_head; batch.safetensors, grads.safetensors).
transformers 5 computes no auxiliary loss for DeepSeek-V2, so there is no aux fixture.

  deepseek_v2       3 layers (layer 0 dense: first_k_dense_replace 1), hidden 64, 4 heads,
                    q_lora_rank null, kv_lora_rank 24, qk_nope 12, qk_rope 8, v_head 16 (so
                    q/k heads are 20 wide, values 16), 8 experts top-3 of 32 in 4 groups
                    (group_limited_greedy, topk_group 2), routed_scaling_factor 1.7, 2 shared
                    experts (one SwiGLU of 64), default RoPE
  deepseek_v2-yarn  the same shape, greedy top-3, routed_scaling_factor 1, RoPE yarn (factor 4,
                    original 64, mscale 0.9, mscale_all_dim 1.0: the softmax scale gets mscale^2)
  deepseek_v2-qlora the same shape with q_lora_rank 16 (q_a_proj, q_a_layernorm, q_b_proj), greedy
                    top-3, routed_scaling_factor 2.5; its adapter leaves q_a_proj frozen (moe-tune's
                    `query` is q_b_proj)
Router seeds are drawn until every routing decision (the topk_group-th group against the
next, and the k-th allowed expert against the next) has a margin of at least 1e-4.
"""
import argparse, json, math, os, shutil, sys

import torch
import torch.nn.functional as F
import sentencepiece as spm
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import eval_examples, references, fixture_inputs  # noqa: E402
from make_moe_fixtures import LoRALinear, write_adapter, nf4_loss, grads_of, R, ALPHA  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, DeepseekV2Config  # noqa: E402

MIN_GAP = 1e-4
SHAPE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, rms_norm_eps=1e-6,
             max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=None, initializer_range=0.1,
             q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16,
             n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2, moe_intermediate_size=32,
             first_k_dense_replace=1, tie_word_embeddings=False, norm_topk_prob=False)


def configs(V):
    yield "deepseek_v2", DeepseekV2Config(vocab_size=V, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                          routed_scaling_factor=1.7, **SHAPE), True
    yield "deepseek_v2-yarn", DeepseekV2Config(
        vocab_size=V, topk_method="greedy", routed_scaling_factor=1.0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                         "mscale": 0.9, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}, **SHAPE), False
    yield "deepseek_v2-qlora", DeepseekV2Config(vocab_size=V, topk_method="greedy", routed_scaling_factor=2.5,
                                                **{**SHAPE, "q_lora_rank": 16}), True


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def route(router, logits):
    """DeepSeek-V2's routing as transformers 5 does it, plus the margins of its decisions."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    k, gap = router.top_k, float("inf")
    if router.topk_method == "group_limited_greedy":
        G = router.num_group
        group_scores = scores.view(-1, G, router.num_experts // G).max(dim=-1).values
        s = group_scores.sort(-1, descending=True).values
        gap = min(gap, (s[:, router.topk_group - 1] - s[:, router.topk_group]).min().item())
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        mask = mask.unsqueeze(-1).expand(-1, G, router.num_experts // G).reshape(-1, router.num_experts)
        scores = scores.masked_fill(~mask.bool(), 0.0)
    s = scores.sort(-1, descending=True).values
    gap = min(gap, (s[:, k - 1] - s[:, k]).min().item())
    w, idx = torch.topk(scores, k=k, dim=-1, sorted=False)
    return w * router.routed_scaling_factor, idx, gap


def router_gaps(model, inputs):
    gaps = []

    def hook(mod, _i, out):
        gaps.append(route(mod, out[0].float())[2])
    hooks = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    assert hooks
    with torch.no_grad():
        for ids, mask in inputs:
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return min(gaps)


def add_lora(model, gen):
    params = {}
    s = ALPHA / R

    def pair(key, out_f, in_f):
        bound = 1 / math.sqrt(in_f)
        A = torch.nn.Parameter((torch.rand(R, in_f, generator=gen) * 2 - 1) * bound)
        B = torch.nn.Parameter(torch.randn(out_f, R, generator=gen) * 0.05)
        params[f"base_model.model.{key}.lora_A.weight"] = A
        params[f"base_model.model.{key}.lora_B.weight"] = B
        return A, B

    for name, mod in [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]:
        if name.endswith("q_a_proj"):
            continue  # frozen: moe-tune's query target is q_b_proj
        A, B = pair(name, mod.out_features, mod.in_features)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(mod, A, B))
    for li, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if not hasattr(mlp, "experts"):
            continue
        router, experts = mlp.gate, mlp.experts
        p = f"model.layers.{li}.mlp"
        rA, rB = pair(p + ".gate", router.weight.shape[0], router.weight.shape[1])
        E, I = experts.gate_up_proj.shape[0], experts.gate_up_proj.shape[1] // 2
        H = experts.gate_up_proj.shape[2]
        ex = [{part: pair(f"{p}.experts.{e}.{part}", *shape) for part, shape in
               [("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))]} for e in range(E)]

        def router_forward(hidden_states, router=router, rA=rA, rB=rB):
            hs = hidden_states.reshape(-1, router.weight.shape[1]).float()
            logits = F.linear(hs, router.weight.float()) + s * F.linear(F.linear(hs, rA), rB)
            w, idx, _ = route(router, logits)
            return logits, w, idx
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


def train_fixture(folder, out, V):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (2, 16), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    for lora_seed in range(1, 100):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        for p in model.parameters():
            p.requires_grad_(False)
        params = add_lora(model, torch.Generator().manual_seed(lora_seed))
        pg = router_gaps(model, [(ids, mask)])
        if pg >= MIN_GAP:
            break
    else:
        raise SystemExit("no adapter seed gives router gaps of at least MIN_GAP")
    shutil.rmtree(out, ignore_errors=True)
    write_adapter(out, params, os.path.basename(folder))
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    save_file(grads_of(params), os.path.join(out, "grads.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float().contiguous()
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int(),
               "loss": loss.detach().reshape(1), "logits": logits}, os.path.join(out, "batch.safetensors"))
    return {"loss": loss.item(), "router_gap": pg, "lora_seed": lora_seed}


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
    for name, cfg, train in configs(V):
        if a.only and name not in a.only:
            continue
        for seed in range(200):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg).float().eval()
            randomize(model, 1000 + seed)
            gap = router_gaps(model, fixture_inputs(model, ids, mask, examples))
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
        if train:
            summary[name]["train"] = train_fixture(folder, os.path.join(a.fixtures, "train-" + name), V)
        summary[name].pop("greedy_prompt")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
