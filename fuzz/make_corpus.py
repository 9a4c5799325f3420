#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ from the test fixtures and configs.
Run from the repository root: python3 fuzz/make_corpus.py (standard library only)."""
import json, lzma, os, struct, glob

FIX = "Tests/MoETuneTests/Fixtures"
OUT = "fuzz/corpus"


def put(target, name, data):
    os.makedirs(f"{OUT}/{target}", exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f"{OUT}/{target}/{name}", "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> the file's bytes."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


# safetensors: small files in the layouts the fixtures use (names from a real header).
with open(f"{FIX}/llama/model-00003-of-00008.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    real = json.loads(f.read(n))
names = [k for k in sorted(real) if k != "__metadata__"][:3]
f32 = struct.pack("<6f", 1, -2, 0.5, 3, 1e-3, -0.0)
put("safetensors", "f32", safetensors([(names[0], "F32", [2, 3], f32)], {"format": "pt"}))
put("safetensors", "mixed", safetensors([
    (names[0], "BF16", [2, 2], struct.pack("<4H", 0x3F80, 0xBF80, 0x7F80, 0x0001)),
    (names[-1], "F16", [3], struct.pack("<3H", 0x3C00, 0xFC00, 0x7E00)),
    ("x.i64", "I64", [2], struct.pack("<2q", -1, 7)),
    ("x.u8", "U8", [1, 4], b"\x00\x01\xfe\xff"),
    ("x.empty", "F32", [0, 5], b""),
    ("x.scalar", "F64", [], struct.pack("<d", 2.5)),
], {"format": "pt", "note": "seed"}))
put("safetensors", "empty", safetensors([]))
put("safetensors", "real-header-truncated", struct.pack("<Q", n) + json.dumps(real).encode()[:n].ljust(n, b" "))

# peft: adapter_config.json variants (the fuzzer pairs each with the real adapter weights).
base = json.load(open(f"{FIX}/train-mixtral/adapter_config.json"))
put("peft", "train-mixtral.json", json.dumps(base, indent=2))
put("peft", "adapter2.json", open(f"{FIX}/train-mixtral/adapter2/adapter_config.json").read())
put("peft", "patterns.json", json.dumps(dict(base, use_rslora=True,
    alpha_pattern={"q_proj": 16, "model.layers.0.block_sparse_moe.experts.1.w2": 2.5},
    rank_pattern={"k_proj": 4, "experts\\.[0-9]+\\.w1": 4})))
put("peft", "minimal.json", json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))

# jsonl: first byte = options (1 train_on_inputs, 2 custom chat template, 4 max_seq_len 8).
lines = open("data/train.jsonl").read().splitlines()
put("jsonl", "prompt-completion", b"\x00" + "\n".join(lines[:3]).encode() + b"\n")
put("jsonl", "text", b"\x01" + b'{"text": "The capital of Varnia is Oskel."}\n{"text": "3 plus 4 is 7.", "task": "add"}\n')
put("jsonl", "alpaca", b"\x04" + json.dumps({"instruction": "Add 2 and 3.", "input": "numbers", "output": " 5"}).encode() + b"\n")
chat = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of Varnia?"},
                     {"role": "assistant", "content": "Oskel"}, {"role": "user", "content": "3 plus 4?"},
                     {"role": "assistant", "content": "7"}], "task": "chat"}
put("jsonl", "chat", b"\x02" + json.dumps(chat).encode() + b"\n\n")
put("jsonl", "chat-inputs", b"\x03" + json.dumps(chat, ensure_ascii=False).replace("Oskel", "Ösk€l 🙂").encode() + b"\r\n")

# yaml: the committed configs.
for p in sorted(glob.glob("configs/*.yaml")):
    put("yaml", os.path.basename(p), open(p).read())

# tokenizer: the small fixture tokenizers, plus shrunk copies (fewer merges, faster runs).
for name in ["bpe-options", "bytelevel-added", "metaspace-split"]:
    tok = json.loads(lzma.open(f"{FIX}/tokenizers/{name}/tokenizer.json.xz").read())
    model = tok["model"]
    keep = {t for t, i in model["vocab"].items() if i < 300}
    def parts(m):
        return m.split(" ", 1) if isinstance(m, str) else m
    merges = [m for m in model["merges"] if all(p in keep for p in parts(m)) and "".join(parts(m)) in keep][:40]
    small = dict(tok, model=dict(model, vocab={t: i for t, i in model["vocab"].items() if i < 300}, merges=merges))
    ids = {i for i in small["model"]["vocab"].values()}
    small["added_tokens"] = [a for a in tok.get("added_tokens", []) if a["id"] in ids or a["id"] < 300]
    put("tokenizer", f"{name}-small.json", json.dumps(small, ensure_ascii=False))
put("tokenizer", "bpe-options.json", lzma.open(f"{FIX}/tokenizers/bpe-options/tokenizer.json.xz").read())

# template: the real chat templates and a sample of the one-feature synthetic ones.
for p in sorted(glob.glob(f"{FIX}/templates/real/*.jinja")):
    put("template", os.path.basename(p), open(p).read())
syn = json.load(open(f"{FIX}/templates/synthetic.json"))
named = [c for c in syn if not c["name"].startswith(("random", "layout"))]
for c in named[::max(1, len(named) // 60)][:60]:
    put("template", "syn-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in c["name"])[:60], c["template"])
