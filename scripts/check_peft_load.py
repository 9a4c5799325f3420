"""Loads an adapter written by moe-tune in peft (PeftModel.from_pretrained on transformers 5) and
compares its logits with a reference batch (input_ids, attention_mask, logits), e.g. peft's own
adapter's logits in a train-NAME fixture's batch.safetensors: prints the largest absolute
difference over the unmasked positions and whether every LoRA tensor of the file was loaded.

    ~/peer-venv/bin/python scripts/check_peft_load.py --base DIR --adapter DIR --batch FILE

For GPT-OSS: GPTOSS_ADAPTER_OUT=/tmp/a swift test --filter testGptOssAdapterWrittenInPeftLayout
writes peft's fixture adapter re-written by moe-tune to /tmp/a; then
    --base Tests/MoETuneTests/Fixtures/gpt_oss-clamp --adapter /tmp/a
    --batch Tests/MoETuneTests/Fixtures/train-gpt_oss/batch.safetensors
"""
import argparse, json

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--adapter", required=True)
p.add_argument("--batch", required=True)
a = p.parse_args()
ref = load_file(a.batch)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32), a.adapter).eval()
saved = load_file(a.adapter + "/adapter_model.safetensors")
names = {n.replace(".default", "") for n, _ in model.named_parameters() if "lora_" in n}
missing = sorted(k for k in saved if "lora_" in k and k not in names)
# Every loaded LoRA tensor equals the file's (peft's loader is not strict about names).
sd = {n.replace(".default", ""): t for n, t in model.state_dict().items()}
unequal = sorted(k for k in saved if "lora_" in k and k in sd and not torch.equal(sd[k].float(), saved[k].float()))
with torch.no_grad():
    logits = model(input_ids=ref["input_ids"].long(), attention_mask=ref["attention_mask"].long()).logits
mask = ref["attention_mask"].bool()
diff = (logits - ref["logits"]).abs()[mask].max().item()
print(json.dumps({"max_abs_logit_diff": diff, "lora_tensors_in_file": sum("lora_" in k for k in saved),
                  "not_loaded": missing, "loaded_but_different": unequal}))
