"""GGUF files of the tiny Hugging Face family fixtures, converted by llama.cpp's own
convert_hf_to_gguf.py (vendored in llama-cpp-python's source distribution), for the tests of
`--model FILE.gguf` beyond the dense llama architecture (Tests/MoETuneTests/GGUFArchTests.swift):

    ~/peer-venv/bin/python scripts/make_gguf_arch_fixtures.py [--llama-cpp DIR]

DIR (default ~/lcpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp) is llama.cpp's source: its
convert_hf_to_gguf.py and gguf-py. The fixtures' vocabulary is the SentencePiece
tokenizer.model every family fixture has; the converter's own _set_vocab_sentencepiece
writes it (tokenizer.ggml.model "llama") for every family, since the qwen/olmoe converters
would otherwise ask for a BPE tokenizer.json.

Into Tests/MoETuneTests/Fixtures/gguf/arch/:
- NAME.gguf (f32) for NAME in mixtral (llama with experts), qwen2, qwen3, qwen3_moe,
  granitemoe, llama3-rope (rope_freqs.weight), llama-yarn, llama-linear (rope.scaling.*): the test
  compares their logits and loss with the HF folder's reference.safetensors.
- qwen2_moe.gguf (f32) with qwen2_moe.reference.safetensors: llama.cpp cannot convert a
  qwen2_moe with dense layers (mlp_only_layers) nor carry a sliding window, so this is the
  qwen2_moe-sw fixture's weights with use_sliding_window false, its reference logits/loss
  recomputed by transformers on that folder (same input ids).
- olmoe.gguf (f32) with olmoe.reference.safetensors: llama.cpp's OLMoE converter drops
  clip_qkv (it writes no attention.clamp_kqv) and writes rms eps 1e-5 whatever the config
  says, so the reference is the olmoe fixture without clip_qkv and with rms_norm_eps 1e-5,
  recomputed the same way.
- qwen2-f16.gguf (f16), qwen2-q8_0.gguf and qwen3_moe-q8_0.gguf (q8_0, the 3-D expert tensors
  quantized too), each with NAME.reference.safetensors: logits and loss of transformers' own
  GGUF reader (from_pretrained(gguf_file=...), which dequantizes with gguf-py) on the same input
  ids. transformers 5.23's GGUF config mapping leaves out qwen3moe's expert_feed_forward_length,
  so that one is read with config= the HF folder's configuration.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import logits_reference  # noqa: E402

FIX = "Tests/MoETuneTests/Fixtures"
OUT = os.path.join(FIX, "gguf", "arch")

ap = argparse.ArgumentParser()
ap.add_argument("--llama-cpp", default=os.path.expanduser("~/lcpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp"))
a = ap.parse_args()
os.makedirs(OUT, exist_ok=True)

CONVERT = """
import sys
sys.path[:0] = [{lcpp!r}, {lcpp!r} + "/gguf-py"]
import conversion.base as base, conversion.qwen as qwen
sp = lambda self: self._set_vocab_sentencepiece()
for cls in (base.TextModel, qwen.Qwen2Model, qwen.Qwen3Model, qwen.Qwen3MoeModel):
    cls.set_vocab = sp
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[1:]
convert_hf_to_gguf.main()
"""


def convert(folder, out, outtype):
    subprocess.run([sys.executable, "-c", CONVERT.format(lcpp=a.llama_cpp), folder, "--outtype", outtype,
                    "--outfile", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("wrote", out, os.path.getsize(out), "bytes")


from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

for name in ["mixtral", "qwen2", "qwen3", "qwen3_moe", "granitemoe", "llama3-rope", "llama-yarn", "llama-linear"]:
    convert(os.path.join(FIX, name), os.path.join(OUT, name + ".gguf"), "f32")


def variant(src_name, out_name, edit):
    """The fixture src_name with its config.json edited, converted, and its reference recomputed."""
    src = os.path.join(FIX, src_name)
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(src):
            if not f.startswith("reference."):
                shutil.copy(os.path.join(src, f), tmp)
        cfg = json.load(open(os.path.join(tmp, "config.json")))
        edit(cfg)
        json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
        convert(tmp, os.path.join(OUT, out_name + ".gguf"), "f32")
        m = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        logits_reference(m, os.path.join(src, "reference.safetensors"), os.path.join(OUT, out_name + ".reference.safetensors"))
        return m


def no_sliding_window(cfg):
    cfg["use_sliding_window"] = False
    cfg.pop("layer_types", None)


m = variant("qwen2_moe-sw", "qwen2_moe", no_sliding_window)
assert "sliding_attention" not in m.config.layer_types


def olmoe_as_converted(cfg):
    """OlmoeModel's converter writes no attention.clamp_kqv and always rms eps 1e-5."""
    cfg.pop("clip_qkv")
    cfg["rms_norm_eps"] = 1e-5


m = variant("olmoe", "olmoe", olmoe_as_converted)
assert m.config.clip_qkv is None

for name, outtype in [("qwen2", "f16"), ("qwen2", "q8_0"), ("qwen3_moe", "q8_0")]:
    out = os.path.join(OUT, f"{name}-{outtype}.gguf")
    convert(os.path.join(FIX, name), out, outtype)
    # qwen3moe: the configuration from the HF folder, since transformers' GGUF config mapping
    # leaves out expert_feed_forward_length (the weights still come from the GGUF).
    config = AutoConfig.from_pretrained(os.path.join(FIX, name)) if name == "qwen3_moe" else None
    m = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=os.path.basename(out), config=config, dtype=torch.float32)
    logits_reference(m, os.path.join(FIX, name, "reference.safetensors"), out.replace(".gguf", ".reference.safetensors"))
