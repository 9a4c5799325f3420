"""llama.cpp (llama-cpp-python) on the architecture fixtures of make_gguf_arch_fixtures.py and on
the same models written back by moe-tune (`merge --format gguf`, f32, no adapter): the logits of
the first reference sequence against transformers' (the reference the Swift tests use).
seed_oss's source file is the gguf-py fixture of make_gguf_seedoss_fixture.py.

    ~/llama-venv/bin/python scripts/check_gguf_arch.py [--bin .build/debug/moe-tune]

Prints, per file, llama.cpp's max |logit difference| to transformers on the llama.cpp-converted
file and on moe-tune's file, and whether moe-tune's file gives llama.cpp the same logits as the
converter's (max |diff|). Then, for the MoE files (mixtral, qwen2_moe, qwen3_moe, granitemoe): a
LoRA on every linear kind, experts included, trained 6 steps on the GGUF base with moe-tune,
merged into an f16 GGUF (`merge --format gguf --gguf-type f16`), and llama.cpp's mean loss on
the {"text"} lines of Fixtures/eval.jsonl (its own tokenizer, BOS + text + EOS, every next
token) against `moe-tune eval --adapter` on the same lines.
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
         "llama-linear": "llama-linear", "seed_oss": None}

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


MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "granitemoe"]


def llama_cpp_loss(path, texts):
    llm = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    total, count = 0.0, 0
    for t in texts:
        ids = llm.tokenize(t.encode(), add_bos=True, special=False) + [llm.token_eos()]
        llm.reset()
        llm.eval(ids)
        z = np.array(llm.scores[:len(ids)], dtype=np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= sum(logp[j - 1, ids[j]] for j in range(1, len(ids)))
        count += len(ids) - 1
    return total / count


with tempfile.TemporaryDirectory() as tmp:
    import json
    lines = [json.loads(l) for l in open(os.path.join(FIX, "eval.jsonl"))]
    texts = [l["text"] for l in lines if "text" in l]
    data = os.path.join(tmp, "text.jsonl")
    with open(data, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    for name in MOE:
        base = os.path.join(ARCH, name + ".gguf")
        lora, merged = os.path.join(tmp, name + "-lora"), os.path.join(tmp, name + "-f16.gguf")
        subprocess.run([a.bin, "train", "--config", "configs/demo.yaml", "--set", f"model={base}", "--set", f"data.train={data}",
                        "--set", "data.valid=null", "--set", "data.test=null", "--set", "training.max_steps=6",
                        "--set", "training.eval_every=0", "--set", "optimizer.lr=0.02", "--set", "schedule.warmup_steps=0",
                        "--set", f"training.out_dir={lora}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ev = lambda *extra: json.loads(subprocess.run([a.bin, "eval", "--model", base, "--data", data, "--json", *extra],
                                                      check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])["loss"]
        ours, plain = ev("--adapter", lora), ev()
        subprocess.run([a.bin, "merge", "--model", base, "--adapter", lora, "--format", "gguf", "--gguf-type", "f16", "--out", merged],
                       check=True, stdout=subprocess.DEVNULL)
        try:
            theirs = llama_cpp_loss(merged, texts)
        except Exception as e:  # noqa: BLE001
            print(f"{name:12s} llama.cpp failed on the merged f16 file: {e}")
            continue
        print(f"{name:12s} merged f16 in llama.cpp {theirs:.6f} vs moe-tune eval --adapter {ours:.6f} "
              f"(relative {abs(theirs - ours) / ours:.2e}; base without adapter {plain:.6f})")
