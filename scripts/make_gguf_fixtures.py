"""GGUF container and ggml type fixtures, written with llama.cpp's own `gguf` package (PyPI,
0.19), for Tests/MoETuneTests/GGUFTests.swift:

    ~/peer-venv/bin/python scripts/make_gguf_fixtures.py

- types.gguf: one tensor [3, 256] of every ggml type moe-tune reads (F32, F16, BF16, Q8_0,
  Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and metadata of every value type (arrays,
  nested arrays included). The legacy types are quantized from random values by
  gguf.quants.quantize; the K types (which gguf-py cannot quantize) are random bytes with
  finite f16 scales. types-expected.gguf holds each tensor dequantized by
  gguf.quants.dequantize (F32), and types-metadata.json the metadata as GGUFReader reads it.
- types-v2.gguf: the same file with version 2 in its header (v2 and v3 differ only there
  for little-endian files).
- quants.gguf: an F32 tensor "input" [6, 256] (random rows, a zero block, exact ties of
  the rounding, repeated maxima of either sign) and its encodings by gguf.quants.quantize
  as "out.F16", "out.BF16", "out.Q8_0", "out.Q4_0", which moe-tune's quantizers must equal
  byte for byte.
"""
import json, os, shutil, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = sys.argv[1] if len(sys.argv) > 1 else "Tests/MoETuneTests/Fixtures/gguf"
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(13)
ROWS, COLS = 3, 256

LEGACY = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
KTYPES = [T.Q4_K, T.Q5_K, T.Q6_K]


def k_blocks(t, n_blocks):
    """Random K-quant blocks whose f16 scale fields are finite, moderate values."""
    size = gguf.GGML_QUANT_SIZES[t][1]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    def f16(n):
        return rng.uniform(0.001, 0.05, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)
    if t in (T.Q4_K, T.Q5_K):
        b[:, 0:2] = f16(n_blocks)      # d
        b[:, 2:4] = f16(n_blocks)      # dmin
    else:                              # Q6_K: d is the last two bytes
        b[:, 208:210] = f16(n_blocks)
    return b


def types_files():
    w = gguf.GGUFWriter(os.path.join(OUT, "types.gguf"), arch="test")
    # Metadata of every value type.
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo, wörld ✓")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 2.0 / 3.0)
    w.add_array("test.array.i32", [1, -2, 3])
    w.add_array("test.array.str", ["a", "", "ç"])
    w.add_array("test.array.f32", [0.5, -1.25])
    w.add_array("test.array.nested", [[1, 2], [3]])
    w.add_array("test.array.empty", [])
    expected = w2 = gguf.GGUFWriter(os.path.join(OUT, "types-expected.gguf"), arch="test")
    for t in LEGACY + KTYPES:
        name = "t." + t.name
        if t in KTYPES:
            nb = ROWS * COLS // 256
            raw = k_blocks(t, nb).reshape(ROWS, -1)
        else:
            x = rng.normal(0, 1, size=(ROWS, COLS)).astype(np.float32)
            raw = gguf.quants.quantize(x, t)
        w.add_tensor(name, raw, raw_dtype=t)
        deq = gguf.quants.dequantize(raw, t).astype(np.float32)
        assert deq.shape == (ROWS, COLS), deq.shape
        w2.add_tensor(name, deq)
    for wr in (w, w2):
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
    r = gguf.GGUFReader(os.path.join(OUT, "types.gguf"))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("test."):
            v = f.contents()
            meta[k] = {"type": int(f.types[0]), "value": v}
    # GGUFReader flattens arrays of arrays; what the writer wrote is the expectation there.
    meta["test.array.nested"]["value"] = [[1, 2], [3]]
    with open(os.path.join(OUT, "types-metadata.json"), "w") as fh:
        json.dump(meta, fh, indent=1, ensure_ascii=False)
    # Version 2: the same bytes but the version field.
    data = bytearray(open(os.path.join(OUT, "types.gguf"), "rb").read())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")
    open(os.path.join(OUT, "types-v2.gguf"), "wb").write(bytes(data))


def quants_file():
    x = rng.normal(0, 1, size=(6, COLS)).astype(np.float32)
    x[1, 0:32] = 0                                   # a zero block
    x[1, 32:64] = np.linspace(-8, 8, 32, dtype=np.float32)  # q4_0 ties at x.5
    x[1, 64:96] = np.arange(-16, 16, dtype=np.float32) * np.float32(127 / 16) / 127 * 3  # q8_0 ties
    x[2, 0:32] = 1.0; x[2, 5] = -1.0                 # equal magnitudes: the first wins
    x[2, 32:64] = -2.0; x[2, 40] = 2.0
    x[3] *= 1e-3
    x[4] *= 1e3
    x[5, 0:32] = np.float32(65504 * 127)             # f16 scale at its limit
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), arch="test")
    w.add_tensor("input", x)
    for t in (T.F16, T.BF16, T.Q8_0, T.Q4_0):
        q = gguf.quants.quantize(x, t)
        w.add_tensor("out." + t.name, q, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


types_files()
quants_file()
print("wrote", sorted(os.listdir(OUT)))
