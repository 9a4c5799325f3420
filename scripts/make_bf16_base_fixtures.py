"""Reference data for the bf16 frozen base (`base_dtype: bf16-emulated`, BF16BaseTests).

    ~/peer-venv/bin/python scripts/make_bf16_base_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Starts from the fp32 Mixtral fixture (Fixtures/mixtral) on transformers 5 and rounds to
bfloat16 (torch `.to(torch.bfloat16).float()`, round to nearest even) exactly the weights
moe-tune holds in bf16: attention q/k/v/o and every expert's gate/up/down. Embeddings,
lm_head, routers and norms stay fp32, as in moe-tune. Writes bf16-base/:
  reference.safetensors  input_ids, attention_mask (those of Fixtures/mixtral), logits and loss
                         of the rounded model in fp32
  adapter_config.json, adapter_model.safetensors  peft LoRA r=4, alpha=8 on q/k/v/o, B random
  batch.safetensors      the batch of train-mixtral (input_ids, attention_mask, labels) and
                         peft's loss on the rounded model
  grads.safetensors      d loss / d every LoRA tensor (peft on the rounded model)
  conversion.safetensors fp32 edge cases (ties, carries into the exponent, overflow to inf,
                         subnormals, signed zeros, inf, NaN) and torch's bf16 bits for each
The script asserts that every routing decision keeps a gap of at least 1e-4 between the k-th
and (k+1)-th router probability on both batches, so that top-k picks the same experts in
moe-tune.
"""
import argparse, os, shutil

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROUNDED = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
           "experts.gate_up_proj", "experts.down_proj", "mlp.gate_proj.weight", "mlp.up_proj.weight",
           "mlp.down_proj.weight")
MIN_GAP = 1e-4


def rounded_model(base):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    done = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(ROUNDED):
                p.copy_(p.to(torch.bfloat16).float())
                done.append(name)
    assert any("experts" in n for n in done) and any("q_proj" in n for n in done), done
    return model


def router_gap(model, inputs):
    k = model.config.num_experts_per_tok
    gaps = []
    def hook(_m, _i, out):
        lo = (out[0] if isinstance(out, tuple) else out).float().reshape(-1, model.config.num_local_experts)
        ps = torch.softmax(lo, -1).sort(-1, descending=True).values
        gaps.append((ps[:, k - 1] - ps[:, k]).min().item())
    hooks = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    assert hooks
    with torch.no_grad():
        for ids, mask in inputs:
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return min(gaps)


def conversion_cases():
    bits = [0x3F800000, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF808000, 0xBF818000,
            0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x00000000,
            0x80000000, 0x00000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x80408000, 0x00800000,
            0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0x3EAAAAAB, 0x40490FDB]
    rng = np.random.default_rng(0)
    bits += [int(b) for b in rng.integers(0, 2**32, size=4096, dtype=np.uint64)]
    u = np.array(bits, dtype=np.uint32)
    x = torch.from_numpy(u.view(np.float32).copy())
    out = x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return {"input": x.contiguous(), "bf16_bits": out.to(torch.int32).contiguous()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    base = os.path.join(a.fixtures, "mixtral")
    out = os.path.join(a.fixtures, "bf16-base")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    ref = load_file(os.path.join(base, "reference.safetensors"))
    ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
    train = load_file(os.path.join(a.fixtures, "train-mixtral", "batch.safetensors"))
    tids, tmask, tlabels = train["input_ids"].long(), train["attention_mask"].long(), train["labels"].long()

    model = rounded_model(base)
    gap = router_gap(model, [(ids, mask), (tids, tmask)])
    assert gap >= MIN_GAP, gap
    labels = ids.clone()
    labels[mask == 0] = -100
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, labels=labels)
    save_file({"input_ids": ids.int().contiguous(), "attention_mask": mask.int().contiguous(),
               "logits": o.logits.float().contiguous(), "loss": o.loss.float().reshape(1)},
              os.path.join(out, "reference.safetensors"))
    diff = (o.logits - ref["logits"]).abs()[mask.bool()].max().item()
    print(f"logits: rounded base vs fp32 base max |diff| {diff:.3e}, loss {o.loss.item():.7f} vs {ref['loss'].item():.7f}")

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    peft_model.train()
    peft_model.save_pretrained(out)
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    loss = peft_model(input_ids=tids, attention_mask=tmask, labels=tlabels).loss
    loss.backward()
    grads = {n.replace(".default", ""): p.grad.float().contiguous()
             for n, p in peft_model.named_parameters() if p.requires_grad}
    save_file(grads, os.path.join(out, "grads.safetensors"))
    save_file({"input_ids": tids.int().contiguous(), "attention_mask": tmask.int().contiguous(),
               "labels": tlabels.int().contiguous(), "loss": loss.detach().float().reshape(1)},
              os.path.join(out, "batch.safetensors"))
    save_file(conversion_cases(), os.path.join(out, "conversion.safetensors"))
    print(f"router gap {gap:.2e}; peft loss {loss.item():.7f}; {len(grads)} LoRA gradient tensors")


if __name__ == "__main__":
    main()
