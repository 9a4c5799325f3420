"""Builds the demo shipped in data/: a small Mixtral-layout model (data/demo-model) and
a synthetic instruction set with exactly checkable answers (data/{train,valid,test}.jsonl).

    /root/peer-venv/bin/python scripts/make_demo.py --out data

Seeded and deterministic. The model is stored in BF16 with the classic per-expert
Mixtral tensor names, so the folder stays small and loads in transformers and moe-tune.
"""
import argparse, json, os, random, tempfile

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

WORDS = ("apple river stone cloud green silver orange window garden candle rocket marble "
         "piano forest tiger lemon yellow button castle dragon").split()


def example(rnd):
    kind = rnd.randrange(3)
    if kind == 0:
        x, y = rnd.randrange(50), rnd.randrange(50)
        return {"task": "add", "prompt": f"Add {x} and {y}.", "completion": f" {x + y}"}
    if kind == 1:
        w = rnd.choice(WORDS)
        return {"task": "reverse", "prompt": f"Reverse the word {w}.", "completion": " " + w[::-1]}
    ws = rnd.sample(WORDS, 3)
    return {"task": "sort", "prompt": "Sort: " + " ".join(ws), "completion": " " + " ".join(sorted(ws))}


def per_expert_state(model, cfg):
    """State dict under the classic Mixtral checkpoint names, whatever layout the
    installed transformers keeps in memory."""
    out = {}
    for name, t in model.state_dict().items():
        if ".mlp.experts.gate_up_proj" in name:
            layer = name.split(".")[2]
            inter = cfg.intermediate_size
            for e in range(t.shape[0]):
                w = t[e] if t.shape[1] == 2 * inter else t[e].T
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w1.weight"] = w[:inter].contiguous()
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w3.weight"] = w[inter:].contiguous()
        elif ".mlp.experts.down_proj" in name:
            layer = name.split(".")[2]
            for e in range(t.shape[0]):
                w = t[e] if t.shape[1] == cfg.hidden_size else t[e].T
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w2.weight"] = w.contiguous()
        elif ".mlp.gate.weight" in name:
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t
        else:
            out[name] = t
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="data")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rnd = random.Random(a.seed)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    splits = {"train": 2000, "valid": 200, "test": 200}
    rows = {s: [example(rnd) for _ in range(n)] for s, n in splits.items()}
    for s, items in rows.items():
        with open(os.path.join(a.out, f"{s}.jsonl"), "w") as f:
            for r in items:
                f.write(json.dumps(r) + "\n")

    model_dir = os.path.join(a.out, "demo-model")
    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            for r in rows["train"]:
                f.write(r["prompt"] + r["completion"] + "\n")
            f.write(" ".join(str(i) for i in range(200)) + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(model_dir, "tokenizer"), vocab_size=512,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2,
            unk_id=0, pad_id=-1, split_digits=True)
    os.remove(os.path.join(model_dir, "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))

    cfg = MixtralConfig(vocab_size=sp.get_piece_size(), hidden_size=128, intermediate_size=256,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02,
                        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=1e6,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = MixtralForCausalLM(cfg).eval()
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in per_expert_state(model, cfg).items()}
    save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg_dict = cfg.to_dict()
    cfg_dict["architectures"] = ["MixtralForCausalLM"]
    cfg_dict["torch_dtype"] = "bfloat16"
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
    n = sum(t.numel() for t in state.values())
    print(json.dumps({"model": model_dir, "params": n, "vocab": sp.get_piece_size()}))


if __name__ == "__main__":
    main()
