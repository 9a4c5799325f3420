"""Fixtures of the model families beyond the original Llama/Mixtral ones, from transformers 5
(fp32) and peft, seeded and reproducible.

    /root/peer-venv/bin/python scripts/make_family_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Needs the fixtures of make_fixtures.py (it reuses llama/tokenizer.model, eval.jsonl and the
reference helpers). For every NAME below it writes NAME/ (config.json, model.safetensors as
transformers 5 saves it, tokenizer.model, reference.safetensors with input_ids,
attention_mask, logits, loss, and reference.json with the eval loss and greedy tokens of
transformers' generate) and, for the families marked `train`, train-NAME/ with a peft LoRA
adapter on every linear module kind (B drawn random, so the gradients of A are not zero),
batch.safetensors (input_ids, attention_mask, labels, loss, logits of base + adapter
unmerged) and grads.safetensors (d loss / d every LoRA tensor).

  llama3-rope  Llama, rope_type llama3 (factor 8, low/high 1/4, original 64): the three
               frequency bands all occur at head_dim 16; tied embeddings (Llama 3.2 style)
  llama-yarn   Llama, rope_type yarn (factor 4, original 64: attention factor 1.1386)
  llama-linear Llama, rope_type linear (factor 2)
  qwen2        Qwen2: random non-zero q/k/v biases, one KV head, norm weights not ones
  qwen3        Qwen3: q/k RMSNorm per head (weights not ones), head_dim 24 with hidden 64 / 4 heads
  mistral-sw   Mistral with sliding_window 7, shorter than the 24- and 16-token sequences
  qwen2-sw     Qwen2, 3 layers, use_sliding_window with sliding_window 5 and max_window_layers 1:
               layers 1 and 2 slide, layer 0 attends to everything (transformers 5 saves
               layer_types)
  qwen3-sw     Qwen3, 3 layers, sliding_window 6, max_window_layers 2: layer 2 slides
  seed_oss     Seed-OSS: random q/k/v and o_proj biases (attention_bias, attention_out_bias), two KV
               heads; attention_dropout and residual_dropout 0 (the released 0.1 would make
               transformers' training-mode loss and gradients random)
For the `train` families NAME/reference.json also gets nf4_loss (double quantization) and
nf4_loss_single (without): the loss with every
decoder-layer linear weight replaced by bitsandbytes' NF4 (blocks of 64, double
quantization) quantize-dequantize of it, biases and norms unchanged (bitsandbytes' CPU
4-bit matmul needs in_features % 64 == 0, which the 96-wide down_proj is not, so the
reference runs the dequantized weights in fp32).
Every model draws its weights with initializer_range 0.1 (so that greedy decoding is not a
single repeated token), its RMSNorm weights as 1 + 0.3 N(0, 1), and has no pad_token_id.
"""
import argparse, json, os, shutil, sys

import torch
import sentencepiece as spm
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import eval_examples, references  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, SeedOssConfig  # noqa: E402

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=96, rms_norm_eps=1e-6, max_position_embeddings=256, bos_token_id=1,
              eos_token_id=2, pad_token_id=None, initializer_range=0.1)

DENSE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def configs(V):
    yield "llama3-rope", LlamaConfig(vocab_size=V, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **COMMON), False
    yield "llama-yarn", LlamaConfig(vocab_size=V, tie_word_embeddings=False, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
        **COMMON), False
    yield "llama-linear", LlamaConfig(vocab_size=V, tie_word_embeddings=False, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, **COMMON), False
    yield "qwen2", Qwen2Config(vocab_size=V, tie_word_embeddings=False, use_sliding_window=False,
                               **{**COMMON, "num_key_value_heads": 1}), True
    yield "qwen3", Qwen3Config(vocab_size=V, tie_word_embeddings=False, use_sliding_window=False,
                               **{**COMMON, "head_dim": 24}), True
    yield "mistral-sw", MistralConfig(vocab_size=V, tie_word_embeddings=False, sliding_window=7,
                                      **{**COMMON, "num_key_value_heads": 1}), True
    yield "qwen2-sw", Qwen2Config(vocab_size=V, tie_word_embeddings=False, use_sliding_window=True, sliding_window=5,
                                  max_window_layers=1, **{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 1}), True
    yield "qwen3-sw", Qwen3Config(vocab_size=V, tie_word_embeddings=False, use_sliding_window=True, sliding_window=6,
                                  max_window_layers=2, **{**COMMON, "num_hidden_layers": 3, "head_dim": 24}), False
    yield "seed_oss", SeedOssConfig(vocab_size=V, tie_word_embeddings=False, attention_bias=True, attention_out_bias=True,
                                    attention_dropout=0.0, residual_dropout=0.0, **COMMON), True


def randomize(model, seed):
    """Norm weights 1 + 0.3 N(0,1); biases N(0, 0.3^2) (transformers initialises them to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def train_fixture(folder, out, V):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=DENSE_TARGETS,
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in params.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    # peft writes target_modules from a set: sort them so that the file is reproducible.
    path = os.path.join(out, "adapter_config.json")
    with open(path) as f:
        acfg = json.load(f)
    acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (2, 16), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    save_file({n.replace(".default", ""): p.grad.float().contiguous() for n, p in params.items()},
              os.path.join(out, "grads.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int(),
               "loss": loss.detach().reshape(1), "logits": logits.contiguous()}, os.path.join(out, "batch.safetensors"))
    return loss.item()


def nf4_loss(model, ids, mask, folder, double_quant=True, key="nf4_loss"):
    import copy
    import bitsandbytes.functional as F
    q = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in q.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                w = mod.weight.data.float().contiguous()
                packed, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
                mod.weight.copy_(F.dequantize_4bit(packed, st).reshape(w.shape))
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
    # The reference batch of make_fixtures.py's models, drawn the same way.
    g = torch.Generator().manual_seed(3)
    B, T = 2, 24
    ids = torch.randint(3, V, (B, T), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 6:] = 0
    summary = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    for i, (name, cfg, train) in enumerate(configs(V)):
        if a.only and name not in a.only:
            continue
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        randomize(model, 200 + i)
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
        if train:
            summary[name]["nf4_loss"] = nf4_loss(reloaded, ids, mask, folder)
            summary[name]["nf4_loss_single"] = nf4_loss(reloaded, ids, mask, folder, double_quant=False, key="nf4_loss_single")
            summary[name]["train_loss"] = train_fixture(folder, os.path.join(a.fixtures, "train-" + name), V)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
