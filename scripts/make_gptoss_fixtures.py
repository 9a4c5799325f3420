"""GPT-OSS model fixture from transformers 5 (fp32), forward only (logits, loss, eval loss,
greedy tokens through transformers' KV cache).

    ~/peer-venv/bin/python scripts/make_gptoss_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Needs llama/tokenizer.model and eval.jsonl from make_fixtures.py. Writes gpt_oss/ as
make_moe_fixtures.py writes its folders (config.json, model.safetensors as transformers 5
saves it, tokenizer.model, reference.safetensors, reference.json).

  gpt_oss  3 layers (sliding 3, full, sliding 3: a window shorter than the sequence), hidden 40,
           4 heads of head_dim 12 (not 40 / 4) over 1 KV head, q/k/v/o biases, sinks,
           4 experts top-2 of intermediate 24 with biases, router bias, default RoPE
           (theta 10000), every bias, sink and norm weight random.
The router seed is drawn until every token's k-th and (k+1)-th router logit differ by at
least 1e-4 (the softmax runs over the selected logits, so the logits are the decision).
"""
import argparse, json, os, shutil, sys

import torch
import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import eval_examples, references, fixture_inputs  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, GptOssConfig  # noqa: E402

MIN_GAP = 1e-4


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


def router_gap(model, inputs):
    k = model.config.num_experts_per_tok
    gaps = []
    hooks = [m.register_forward_hook(lambda mod, i, o: gaps.append(
        (lambda s: (s[:, k - 1] - s[:, k]).min().item())(o[0].sort(-1, descending=True).values)))
        for m in model.modules() if type(m).__name__ == "GptOssTopKRouter"]
    with torch.no_grad():
        for ids, mask in inputs:
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return min(gaps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
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
    cfg = GptOssConfig(vocab_size=V, hidden_size=40, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                       head_dim=12, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, sliding_window=3,
                       layer_types=["sliding_attention", "full_attention", "sliding_attention"], rms_norm_eps=1e-5,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                       attn_implementation="eager")
    for seed in range(200):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        randomize(model, 1000 + seed)
        gap = router_gap(model, fixture_inputs(model, ids, mask, examples))
        if gap >= MIN_GAP:
            break
    else:
        raise SystemExit(f"no seed below 200 gives router gaps of at least {MIN_GAP}")
    folder = os.path.join(a.fixtures, "gpt_oss")
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    if os.path.exists(os.path.join(folder, "generation_config.json")):
        os.remove(os.path.join(folder, "generation_config.json"))
    shutil.copy(tok, os.path.join(folder, "tokenizer.model"))
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    summary = references(reloaded, sp, ids, mask, examples, folder)
    summary.update(router_seed=seed, router_gap=gap,
                   versions={"torch": torch.__version__, "transformers": transformers.__version__})
    summary.pop("greedy_prompt")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
