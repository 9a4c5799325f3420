"""llama.cpp's logits on the tiny-llama GGUF fixture (every ggml block type), for
FastProductsTests.testTinyLlamaFastPathDiffersFromExactAsLlamaCppDoes:

    /tmp/llama-venv/bin/python scripts/make_gguf_llamacpp_logits.py

llama-cpp-python (built from its source distribution, CPU backend, 2 threads, its default f16
KV cache) decodes 16 tokens greedily from each of the 3 prompts FastProductsTests uses
([1] + 6 tokens from the seed); each step's logits go to
Tests/MoETuneTests/Fixtures/gguf/tiny-llama/llamacpp-logits.json as
{"llama_cpp_python": version, "cases": [{"ids": prompt + 16 tokens, "prompt": 7, "logits": [16 x V]}]}
(rounded to 6 significant digits). llama.cpp quantizes each activation to 8 bits before its
block products, as moe-tune's fast path does, so the test holds moe-tune's fast path to
llama.cpp's own distance from the exact (fp32) products.
"""
import json, os
import llama_cpp
import numpy as np
from llama_cpp import Llama

FIX = "Tests/MoETuneTests/Fixtures/gguf/tiny-llama"
llm = Llama(model_path=os.path.join(FIX, "model.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
V = llm.n_vocab()
cases = []
for seed in range(3):
    ids = [1] + [5 + (j * 17 + seed * 31) % (V - 5) for j in range(6)]
    prompt = len(ids)
    llm.reset()
    llm.eval(ids)
    logits = []
    for _ in range(16):
        row = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
        logits.append([float(f"{x:.6g}") for x in row])
        ids.append(int(np.argmax(row)))
        llm.eval([ids[-1]])
    cases.append({"ids": ids[:prompt + 16], "prompt": prompt, "logits": logits})
with open(os.path.join(FIX, "llamacpp-logits.json"), "w") as f:
    json.dump({"llama_cpp_python": llama_cpp.__version__, "cases": cases}, f, separators=(",", ":"))
print("wrote", os.path.join(FIX, "llamacpp-logits.json"), [c["ids"][c["prompt"]:] for c in cases])
