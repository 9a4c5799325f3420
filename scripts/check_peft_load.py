"""Does peft load a moe-tune adapter, and does it compute what moe-tune computes? Trains nothing.

    ~/peer-venv/bin/python scripts/check_peft_load.py --model MODEL_DIR --adapter ADAPTER_DIR \
        --merged MERGED_DIR [--json]

MERGED_DIR is `moe-tune merge --model MODEL_DIR --adapter ADAPTER_DIR --out MERGED_DIR`.
Loads MODEL_DIR in transformers, the adapter with PeftModel.from_pretrained (peft 0.21 on
transformers 5 converts per-expert adapters of some families itself), and reports:
- loaded: every LoRA tensor of adapter_model.safetensors reached a peft parameter with its
  values (unused tensors, e.g. targets peft dropped, are listed), and every LoRA parameter
  peft created was filled from the file;
- the largest |logit| difference between peft's model and transformers' load of moe-tune's
  merged folder on a fixed random batch, and the largest between peft's model and the base
  model (an adapter that applies no delta shows 0 there);
- both losses on that batch.
Exit status 1 if the adapter does not load fully or the logits differ by more than --tol.
"""
import argparse, json, sys, warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--adapter", required=True)
ap.add_argument("--merged", required=True)
ap.add_argument("--tol", type=float, default=1e-4)
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

torch.manual_seed(0)
warnings.filterwarnings("ignore")
base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
V = base.config.vocab_size
g = torch.Generator().manual_seed(3)
ids = torch.randint(3, V, (2, 24), generator=g)
mask = torch.ones_like(ids)
mask[1, -4:] = 0
labels = ids.clone()
labels[mask == 0] = -100
with torch.no_grad():
    base_out = base(input_ids=ids, attention_mask=mask, labels=labels)

error = None
try:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32), a.adapter).eval()
except Exception as e:  # peft refuses the adapter
    model, error = None, f"{type(e).__name__}: {e}"

report = {"model": a.model, "adapter": a.adapter}
ok = model is not None
if model is None:
    report["loaded"] = False
    report["error"] = error
else:
    state = load_file(a.adapter + "/adapter_model.safetensors")
    params = dict(model.named_parameters())
    unused, differ, filled = [], [], set()
    for k, t in state.items():
        if ".lora_" not in k:
            continue
        name = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        p = params.get(name)
        if p is None:
            unused.append(k)
        elif p.shape != t.shape or not torch.equal(p.detach(), t.to(p.dtype)):
            differ.append(k)
        else:
            filled.add(name)
    # peft converts per-expert tensors into fused ones: those parameters are not 1:1 with the
    # file, so a fused parameter counts as filled when the file had per-expert tensors for it.
    # A tensor peft renamed while loading (Mixtral's block_sparse_moe.gate -> mlp.gate) counts
    # as used when a LoRA parameter not matched by name holds exactly its values.
    for k in list(unused):
        t = state[k]
        for n, p in params.items():
            if ".lora_" in n and n not in filled and p.shape == t.shape and torch.equal(p.detach(), t.to(p.dtype)):
                filled.add(n)
                unused.remove(k)
                break
    converted = [n for n in params if ".lora_" in n and n not in filled]
    per_expert = any(".experts." in k and k.split(".experts.")[1].split(".")[0].isdigit() for k in state)
    not_from_file = [n for n in converted if not (per_expert and ".experts" in n)]
    report["lora_tensors"] = sum(1 for k in state if ".lora_" in k)
    report["peft_lora_parameters"] = sum(1 for n in params if ".lora_" in n)
    report["unused_tensors"] = unused if not per_expert else [u for u in unused if ".experts." not in u]
    report["differing_tensors"] = differ
    report["peft_parameters_not_from_file"] = not_from_file
    report["converted_by_peft"] = per_expert
    report["loaded"] = not report["unused_tensors"] and not differ and not not_from_file
    merged = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        ref = merged(input_ids=ids, attention_mask=mask, labels=labels)
    m = mask.bool()
    report["logits_max_abs_diff_vs_merged"] = (out.logits - ref.logits)[m].abs().max().item()
    report["logits_max_abs_diff_vs_base"] = (out.logits - base_out.logits)[m].abs().max().item()
    report["peft_loss"] = out.loss.item()
    report["merged_loss"] = ref.loss.item()
    report["base_loss"] = base_out.loss.item()
    ok = report["loaded"] and report["logits_max_abs_diff_vs_merged"] <= a.tol
report["ok"] = ok
if a.json:
    print(json.dumps(report))
else:
    for k, v in report.items():
        print(f"{k}: {v}")
sys.exit(0 if ok else 1)
