#!/usr/bin/env python3
"""Fixtures for GGUF output from a Hugging Face folder's tokenizer (GGUFVocabularyTests):
what llama.cpp's own converter writes.
- gguf/vocab/smollm2/: config.json and tokenizer_config.json (with a ChatML chat template)
  beside the SmolLM2 tokenizer.json of tokenizers/smollm2; converter.gguf.xz: the
  vocabulary-only GGUF that `convert_hf_to_gguf.py --vocab-only` writes for that folder.
- gguf/vocab/pre-names.json: the converter's tokenizer.ggml.pre for the tokenizer fixtures
  llama3, qwen2.5, qwen3, deepseek-v3, gpt2-style (null: the converter refuses it).
    ~/peer-venv/bin/python scripts/make_gguf_vocab_fixture.py LLAMA_CPP_DIR
LLAMA_CPP_DIR: vendor/llama.cpp of the llama-cpp-python 0.3.36 source distribution."""
import json, lzma, shutil, subprocess, sys, tempfile
from pathlib import Path

llama = Path(sys.argv[1]).resolve()
root = Path(__file__).resolve().parent.parent
fx = root / "Tests/MoETuneTests/Fixtures"
out = fx / "gguf/vocab/smollm2"
out.mkdir(parents=True, exist_ok=True)
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "bos_token_id": 1,
          "eos_token_id": 2, "tie_word_embeddings": True, "torch_dtype": "float32"}
(out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
tc = json.loads((fx / "tokenizers/smollm2/tokenizer_config.json").read_text())
tc["chat_template"] = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                       "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
(out / "tokenizer_config.json").write_text(json.dumps(tc, indent=1) + "\n")

def folder(tmp, name, cfg):
    d = Path(tmp) / name
    d.mkdir()
    (d / "tokenizer.json").write_bytes(lzma.decompress((fx / f"tokenizers/{name}/tokenizer.json.xz").read_bytes()))
    (d / "config.json").write_text(json.dumps(cfg))
    src = fx / f"tokenizers/{name}/tokenizer_config.json"
    if src.exists(): shutil.copy(src, d / "tokenizer_config.json")
    return d

with tempfile.TemporaryDirectory() as tmp:
    d = folder(tmp, "smollm2", config)
    shutil.copy(out / "tokenizer_config.json", d / "tokenizer_config.json")
    subprocess.run([sys.executable, str(llama / "convert_hf_to_gguf.py"), "--vocab-only", "--outfile", str(Path(tmp) / "v.gguf"), str(d)], check=True)
    (out / "converter.gguf.xz").write_bytes(lzma.compress((Path(tmp) / "v.gguf").read_bytes(), preset=9 | lzma.PRESET_EXTREME))

    # The converter's pre-tokenizer names, through its own get_vocab_base_pre.
    sys.path.insert(0, str(llama / "gguf-py")); sys.path.insert(0, str(llama))
    from conversion.base import TextModel
    from transformers import AutoTokenizer
    names = {}
    for name in ["llama3", "qwen2.5", "qwen3", "deepseek-v3", "gpt2-style"]:
        d = folder(tmp, name, {})
        tok = AutoTokenizer.from_pretrained(d)
        try:
            names[name] = TextModel.get_vocab_base_pre(None, tok)
        except NotImplementedError:
            names[name] = None
        print(name, names[name])
    (fx / "gguf/vocab/pre-names.json").write_text(json.dumps(names, indent=1) + "\n")
