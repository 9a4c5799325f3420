"""Builds the demo shipped in data/: a small Mixtral-layout model (data/demo-model) and
an instruction set with exactly checkable answers (data/{train,valid,test}.jsonl).

    /root/peer-venv/bin/python scripts/make_demo.py --out data

The model is first pretrained here, in torch, as a plain language model on statements
of facts ("The capital of Varnia is Oskel.", "Stone backwards is enots.", "3 plus 4 is
7."), so it knows the facts but not the instruction format. The instruction set asks for
the same facts as questions ({"prompt": "What is the capital of Varnia?", "completion":
" Oskel"}): before fine-tuning the model continues the prompt with other text; after LoRA
fine-tuning it answers. Seeded and deterministic; stored in BF16 with the classic
per-expert Mixtral tensor names, so it loads in transformers and moe-tune.
"""
import argparse, json, os, random, tempfile

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM

COUNTRIES = ("Varnia Oskelund Brevia Tamsor Quellan Durovia Minsk Pelagon Rostavia Kelmar Zandor Ilvania "
             "Morvath Sulenia Tarvok Ebrania Golmar Fennick").split()
CITIES = ("Oskel Brandt Lumen Caddis Porvo Teska Alder Vantis Ormund Selby Kestrel Dunmore "
          "Halvard Ristov Quarry Emberly Solace Nyrk").split()
WORDS = ("stone river cloud green silver orange window garden candle rocket marble piano forest "
         "tiger lemon yellow button castle").split()


def facts():
    """(statement for pretraining, question, answer, task) for every fact."""
    out = []
    for c, city in zip(COUNTRIES, CITIES):
        out.append((f"The capital of {c} is {city}.", f"What is the capital of {c}?", city, "capital"))
    for w in WORDS:
        out.append((f"{w.capitalize()} backwards is {w[::-1]}.", f"Reverse the word {w}.", w[::-1], "reverse"))
    for x in range(10):
        for y in range(10):
            out.append((f"{x} plus {y} is {x + y}.", f"Add {x} and {y}.", str(x + y), "add"))
    return out


def per_expert_state(model, cfg):
    """The state dict under the classic Mixtral checkpoint names."""
    out, inter, hidden = {}, cfg.intermediate_size, cfg.hidden_size
    for name, t in model.state_dict().items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            layer = name.split(".")[2]
            for e in range(t.shape[0]):
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w1.weight"] = t[e, :inter].clone()
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w3.weight"] = t[e, inter:].clone()
        elif name.endswith(".mlp.experts.down_proj"):
            layer = name.split(".")[2]
            for e in range(t.shape[0]):
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w2.weight"] = t[e].clone()
        elif name.endswith(".mlp.gate.weight"):
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t.clone()
        else:
            out[name] = t.clone()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    a = p.parse_args()
    rnd = random.Random(a.seed)
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    os.makedirs(a.out, exist_ok=True)
    all_facts = facts()

    # Instruction set: train, valid and test drawn from the same facts.
    def example():
        _, q, ans, task = rnd.choice(all_facts)
        return {"task": task, "prompt": q, "completion": " " + ans}
    for split, n in [("train", 2000), ("valid", 200), ("test", 200)]:
        with open(os.path.join(a.out, f"{split}.jsonl"), "w") as f:
            for _ in range(n):
                f.write(json.dumps(example()) + "\n")

    model_dir = os.path.join(a.out, "demo-model")
    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            for s, q, ans, _ in all_facts:
                f.write(f"{s}\n{q} {ans}\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(model_dir, "tokenizer"), vocab_size=400,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2,
            unk_id=0, pad_id=-1, split_digits=True, minloglevel=2)
    os.remove(os.path.join(model_dir, "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))

    cfg = MixtralConfig(vocab_size=sp.get_piece_size(), hidden_size=128, intermediate_size=256,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02,
                        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=1e6,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = MixtralForCausalLM(cfg)

    # Pretraining on the statements (each a [BOS] ... [EOS] sequence), full weights.
    seqs = [[1] + sp.encode(s) + [2] for s, _, _, _ in all_facts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(a.pretrain_steps):
        batch = [rnd.choice(seqs) for _ in range(32)]
        T = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        labels = torch.full((len(batch), T), -100)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, :len(s)] = torch.tensor(s)
            labels[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / a.pretrain_steps))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == a.pretrain_steps - 1:
            print(f"pretrain step {step} loss {loss.item():.4f}", flush=True)
    model.eval()

    state = {k: v.to(torch.bfloat16).contiguous() for k, v in per_expert_state(model, cfg).items()}
    save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg_dict = cfg.to_dict()
    cfg_dict["architectures"] = ["MixtralForCausalLM"]
    cfg_dict["torch_dtype"] = "bfloat16"
    cfg_dict["dtype"] = "bfloat16"
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
    n = sum(t.numel() for t in state.values())
    print(json.dumps({"model": model_dir, "params": n, "vocab": sp.get_piece_size(), "final_pretrain_loss": loss.item()}))


if __name__ == "__main__":
    main()
