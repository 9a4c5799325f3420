"""A tiny llama-architecture GGUF model, written as llama.cpp's converter writes one (gguf-py's
GGUFWriter, llama.cpp's metadata keys and tensor names, q/k rows permuted), for the CI tests
of `--model FILE.gguf` (Tests/MoETuneTests/GGUFModelTests.swift):

    ~/peer-venv/bin/python scripts/make_gguf_model_fixture.py

Into Tests/MoETuneTests/Fixtures/gguf/tiny-llama/:
- model.gguf: hidden 256, 2 layers, 4 heads / 2 KV heads, intermediate 256, tied embeddings
  (no output.weight); a byte-level BPE of 300 tokens trained here with `tokenizers`
  (tokenizer.ggml.model gpt2, pre "llama-bpe", add_bos_token true), a ChatML chat template.
  Its linear weights use every ggml type moe-tune reads (Q4_K, Q5_K, Q6_K, Q4_0, Q4_1,
  Q5_0, Q5_1 in layer 0; Q8_0, F16, BF16, F32, Q6_K, Q4_K, Q5_K in layer 1; Q8_0
  embeddings): the legacy types quantized by gguf.quants.quantize from random values, the
  K types random blocks with small f16 scales. The model *is* its GGUF file.
- eval.jsonl, prompts.json and reference.json: transformers' loss, token ids and greedy
  generations on it (scripts/reference_gguf.py's rules), and each eval line's ids.
"""
import json, os, subprocess, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders

OUT = "Tests/MoETuneTests/Fixtures/gguf/tiny-llama"
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(7)
H, I, L, NH, NKV = 256, 256, 2, 4, 2
D = H // NH

corpus = [
    "The capital of Varnia is Oskel. The capital of Drune is Mirth.",
    "3 plus 4 is 7. 10 minus 2 is 8. Twelve times twelve is one hundred forty-four.",
    "def add(a, b):\n    return a + b\n",
    "Émile a mangé des croissants. Über alles, naïve café.",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\nHi, how can I help?<|im_end|>\n",
] * 20
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
state = json.loads(bpe.to_str())
vocab = state["model"]["vocab"]
tokens = [None] * len(vocab)
for t, i in vocab.items():
    tokens[i] = t
merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
V = len(tokens)
token_types = [3 if t in specials else 1 for t in tokens]

TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

w = gguf.GGUFWriter(os.path.join(OUT, "model.gguf"), arch="llama")
w.add_name("tiny-llama")
w.add_block_count(L)
w.add_context_length(256)
w.add_embedding_length(H)
w.add_feed_forward_length(I)
w.add_head_count(NH)
w.add_head_count_kv(NKV)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_vocab_size(V)
w.add_rope_dimension_count(D)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("llama-bpe")
w.add_token_list(tokens)
w.add_token_types(token_types)
w.add_token_merges(merges)
w.add_bos_token_id(tokens.index("<|im_start|>"))
w.add_eos_token_id(tokens.index("<|im_end|>"))
w.add_unk_token_id(tokens.index("<|endoftext|>"))
w.add_add_bos_token(True)
w.add_chat_template(TEMPLATE)

K_SCALE = {T.Q4_K: (1e-4, 4e-4), T.Q5_K: (5e-5, 2e-4), T.Q6_K: (5e-5, 2e-4)}


def k_blocks(t, rows, cols):
    size = gguf.GGML_QUANT_SIZES[t][1]
    n = rows * cols // 256
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    lo, hi = K_SCALE[t]
    f16 = lambda: rng.uniform(lo, hi, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)
    if t == T.Q6_K:
        b[:, 208:210] = f16()
    else:
        b[:, 0:2] = f16(); b[:, 2:4] = f16()
    return b.reshape(rows, -1)


def permute(x, heads):
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute."""
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def add(name, t, rows, cols, std=0.08, heads=None):
    if t in K_SCALE:
        w.add_tensor(name, k_blocks(t, rows, cols), raw_dtype=t)   # already "GGUF order"
        return
    x = rng.normal(0, std, size=(rows, cols)).astype(np.float32)
    if heads:
        x = permute(x, heads)
    if t == T.F32:
        w.add_tensor(name, x)
    else:
        w.add_tensor(name, gguf.quants.quantize(x, t), raw_dtype=t)


add("token_embd.weight", T.Q8_0, V, H, std=0.5)
w.add_tensor("output_norm.weight", rng.uniform(0.8, 1.2, size=H).astype(np.float32))
types = [
    [T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1],
    [T.Q8_0, T.F16, T.BF16, T.F32, T.Q6_K, T.Q4_K, T.Q5_K],
]
for l in range(L):
    q, k, v, o, g, u, dn = types[l]
    b = f"blk.{l}."
    w.add_tensor(b + "attn_norm.weight", rng.uniform(0.8, 1.2, size=H).astype(np.float32))
    w.add_tensor(b + "ffn_norm.weight", rng.uniform(0.8, 1.2, size=H).astype(np.float32))
    add(b + "attn_q.weight", q, NH * D, H, heads=NH)
    add(b + "attn_k.weight", k, NKV * D, H, heads=NKV)
    add(b + "attn_v.weight", v, NKV * D, H)
    add(b + "attn_output.weight", o, H, NH * D)
    add(b + "ffn_gate.weight", g, I, H)
    add(b + "ffn_up.weight", u, I, H)
    add(b + "ffn_down.weight", dn, H, I)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

with open(os.path.join(OUT, "eval.jsonl"), "w") as fh:
    for r in [{"text": "The capital of Varnia is Oskel."},
              {"text": "def add(a, b):\n    return a + b"},
              {"text": "Émile: 12 croissants, naïve café!"},
              {"prompt": "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n", "completion": "Hi, how can I help?"},
              {"prompt": "3 plus 4 is", "completion": " 7."}]:
        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
json.dump(["Hello there!", "What is the capital of Varnia?"], open(os.path.join(OUT, "prompts.json"), "w"))
subprocess.run([sys.executable, "scripts/reference_gguf.py", "--gguf", os.path.join(OUT, "model.gguf"),
                "--data", os.path.join(OUT, "eval.jsonl"), "--prompts", os.path.join(OUT, "prompts.json"),
                "--max-new-tokens", "16", "--out", os.path.join(OUT, "reference.json")], check=True,
               stderr=subprocess.DEVNULL)
# Each eval line's ids as transformers' tokenizer gives them (the tokenizer-from-GGUF check).
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(OUT, gguf_file="model.gguf")
ref = json.load(open(os.path.join(OUT, "reference.json")))
ref["text_ids"] = [tok(json.loads(l).get("text") or json.loads(l)["prompt"]).input_ids for l in open(os.path.join(OUT, "eval.jsonl"))]
json.dump(ref, open(os.path.join(OUT, "reference.json"), "w"), indent=1, ensure_ascii=False)
print("wrote", OUT, os.path.getsize(os.path.join(OUT, "model.gguf")), "bytes;", ref["loss"], ref["tokens"])
