"""llama.cpp (llama-cpp-python) on GGUF files pruned by `moe-tune prune`: each MoE
architecture fixture of Fixtures/gguf/arch pruned by REAP to half its experts (keep 0.5, the
calibration data Fixtures/eval.jsonl), loaded by llama.cpp, and its logits on the sequence of
Fixtures/reap/<family>-pruned.safetensors compared with transformers' logits of the same
model pruned in torch (scripts/make_reap_fixtures.py), which moe-tune's own logits on the
pruned file equal within 1e-4 (ReapTests).

    /tmp/venv/bin/python scripts/check_reap_gguf.py [--bin .build/debug/moe-tune]

Prints, per file: whether llama.cpp loaded it, the expert count it reports, whether every
logit is finite, and the max |logit difference| to transformers (unpruned file beside it,
for llama.cpp's own numerics on these tiny models).
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile

import numpy as np
from llama_cpp import Llama

FIX = "Tests/MoETuneTests/Fixtures"
CASES = ["mixtral", "qwen3_moe"]


def load_file(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dt).reshape(v["shape"])
    return out


def logits(path, ids):
    llm = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    experts = llm.metadata.get(llm.metadata.get("general.architecture", "") + ".expert_count")
    return np.array(llm.scores[:len(ids)], dtype=np.float32), experts


ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=".build/debug/moe-tune")
a = ap.parse_args()
worst = 0.0
with tempfile.TemporaryDirectory() as tmp:
    for name in CASES:
        src = os.path.join(FIX, "gguf", "arch", name + ".gguf")
        out = os.path.join(tmp, name + "-pruned.gguf")
        subprocess.run([a.bin, "prune", "--model", src, "--data", os.path.join(FIX, "eval.jsonl"), "--keep", "0.5",
                        "--out", out], check=True, capture_output=True)
        ref = load_file(os.path.join(FIX, "reap", name + "-pruned.safetensors"))
        ids = [int(x) for x in ref["input_ids"][0]]
        want = ref["logits"][0]
        got, experts = logits(out, ids)
        base, base_experts = logits(src, ids)
        diff = float(np.abs(got - want).max())
        worst = max(worst, diff)
        print(f"{name}: llama.cpp loaded the pruned file (expert_count {experts}, was {base_experts}); "
              f"finite {bool(np.isfinite(got).all())}; logits max |diff| to transformers on the pruned model {diff:.3g}; "
              f"unpruned file vs pruned logits max |diff| {float(np.abs(base - got).max()):.3g}")
print(f"largest difference {worst:.3g}")
# llama.cpp's own numerics: its files converted from these fixtures are 1.2e-5..3e-3 from
# transformers (docs/gguf-and-llama-cpp.md); the pruned files are held to the same bound.
if worst > 3e-3:
    raise SystemExit(f"llama.cpp's logits on a pruned file differ from transformers by {worst:.3g} > 3e-3")
