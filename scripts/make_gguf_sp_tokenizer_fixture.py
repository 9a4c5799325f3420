"""A tokenizer-only GGUF of a real SentencePiece model (Mistral 7B v0.1's tokenizer.model.v1
from the mistral-common wheel on PyPI, 32,000 pieces, byte fallback), written with gguf-py as
llama.cpp's convert_hf_to_gguf.py (_set_vocab_sentencepiece) writes a vocabulary: tokens,
scores, token types (NORMAL 1, UNKNOWN 2, CONTROL 3, UNUSED 5, BYTE 6), bos/eos/unk ids,
add_bos_token true, add_eos_token false; no tensors. For GGUFTokenizerTests:

    ~/peer-venv/bin/python scripts/make_gguf_sp_tokenizer_fixture.py [--model tokenizer.model.v1]

Into Tests/MoETuneTests/Fixtures/gguf/sp-tokenizer/: tokenizer.gguf.xz and expected.json, the
ids of transformers' GGUF reader (AutoTokenizer.from_pretrained(dir, gguf_file=...)) for
tokenizers/corpus.json's strings plus some of spaces, digits, unicode and bytes outside the
vocabulary, and for each whether sentencepiece itself (SentencePieceProcessor.encode with BOS)
gives the same ids.
"""
import argparse, json, lzma, os, shutil, tempfile

import gguf
import sentencepiece as spm
from transformers import AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="/root/realtok/mistral_common/mistral_common/data/tokenizer.model.v1")
a = ap.parse_args()
OUT = "Tests/MoETuneTests/Fixtures/gguf/sp-tokenizer"
os.makedirs(OUT, exist_ok=True)

sp = spm.SentencePieceProcessor(model_file=a.model)
tokens, scores, types = [], [], []
for i in range(sp.get_piece_size()):
    tokens.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1)

tmp = tempfile.mkdtemp()
path = os.path.join(tmp, "tokenizer.gguf")
w = gguf.GGUFWriter(path, arch="llama")
w.add_name("mistral-7b-v0.1-tokenizer")
w.add_tokenizer_model("llama")
w.add_tokenizer_pre("default")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(sp.bos_id())
w.add_eos_token_id(sp.eos_id())
w.add_unk_token_id(sp.unk_id())
w.add_add_bos_token(True)
w.add_add_eos_token(False)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

corpus = json.load(open("Tests/MoETuneTests/Fixtures/tokenizers/corpus.json", encoding="utf-8"))
extra = ["", " ", "  ", "   leading", "trailing   ", "Hello world", "Hello  world", " Hello", "\n", "a\nb\n\nc", "\ttab\t",
         "1234567890", "3.14159 + 2,718 = 5.86", "Ünïcödé façade naïve", "日本語のテキスト", "한국어", "Привет, мир!",
         "emoji 😀🎉👍🏽", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u200b zero width", "<s> not special in text </s>", "a<unk>b",
         "▁already▁metaspace", "mixed 日本 and ascii 123", "\x00\x01 control", "�", "x" * 40]
strings = [s for s in corpus if isinstance(s, str)] + extra
tok = AutoTokenizer.from_pretrained(tmp, gguf_file="tokenizer.gguf")
expected = []
for s in strings:
    ids = tok(s).input_ids
    expected.append({"text": s, "ids": ids, "sentencepiece_agrees": [sp.bos_id()] + sp.encode(s) == ids})
with lzma.open(os.path.join(OUT, "tokenizer.gguf.xz"), "wb", preset=9) as f:
    f.write(open(path, "rb").read())
json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"), indent=0)  # ASCII escapes: Foundation drops a raw U+FEFF
shutil.rmtree(tmp)
agree = sum(e["sentencepiece_agrees"] for e in expected)
print(f"wrote {OUT}: {len(expected)} strings, sentencepiece agrees on {agree}",
      os.path.getsize(os.path.join(OUT, "tokenizer.gguf.xz")), "bytes xz")
for e in expected:
    if not e["sentencepiece_agrees"]:
        print("differs from sentencepiece:", repr(e["text"][:60]))
