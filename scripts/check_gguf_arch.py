"""llama.cpp (llama-cpp-python) on the architecture fixtures of make_gguf_arch_fixtures.py and on
the same models written back by moe-tune (`merge --format gguf`, f32, no adapter): the logits of
the first reference sequence against transformers' (the reference the Swift tests use).

    ~/llama-venv/bin/python scripts/check_gguf_arch.py [--bin .build/debug/moe-tune]

Prints, per file, llama.cpp's max |logit difference| to transformers on the llama.cpp-converted
file and on moe-tune's file, and whether moe-tune's file gives llama.cpp the same logits as the
converter's (max |diff|).
"""
import argparse, os, subprocess, tempfile

import numpy as np
from llama_cpp import Llama


def load_file(path):
    """A safetensors file's F32 / I32 tensors (safetensors is not installed beside llama-cpp-python)."""
    import json, struct
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

FIX = "Tests/MoETuneTests/Fixtures"
ARCH = os.path.join(FIX, "gguf", "arch")
CASES = {"mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2_moe": None, "qwen3_moe": "qwen3_moe",
         "olmoe": None, "granitemoe": "granitemoe", "llama3-rope": "llama3-rope", "llama-yarn": "llama-yarn",
         "llama-linear": "llama-linear"}

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=".build/debug/moe-tune")
a = ap.parse_args()


def logits(path, ids):
    llm = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


with tempfile.TemporaryDirectory() as tmp:
    for name, folder in CASES.items():
        ref_path = os.path.join(FIX, folder, "reference.safetensors") if folder else os.path.join(ARCH, name + ".reference.safetensors")
        ref = load_file(ref_path)
        ids = [int(x) for x in ref["input_ids"][0]]
        want = ref["logits"][0]
        src = os.path.join(ARCH, name + ".gguf")
        out = os.path.join(tmp, name + ".gguf")
        subprocess.run([a.bin, "merge", "--model", src, "--format", "gguf", "--gguf-type", "f32", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        try:
            conv = logits(src, ids)
            ours = logits(out, ids)
        except Exception as e:  # noqa: BLE001
            print(f"{name:12s} llama.cpp failed: {e}")
            continue
        print(f"{name:12s} llama.cpp vs transformers: converter's file {np.abs(conv - want).max():.2e}, "
              f"moe-tune's file {np.abs(ours - want).max():.2e}; moe-tune's vs converter's file {np.abs(ours - conv).max():.2e}")
