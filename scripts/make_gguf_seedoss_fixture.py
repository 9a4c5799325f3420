"""The seed_oss GGUF fixture, written with gguf-py the way llama.cpp's convert_hf_to_gguf.py
converts a SeedOssForCausalLM (SeedOssModel: a plain TextModel, so no q/k row permutation,
llama.cpp's rope type for seed_oss being NEOX), for GGUFArchTests:

    /tmp/ref-venv/bin/python scripts/make_gguf_seedoss_fixture.py   # torch, transformers 5, gguf, sentencepiece

Tensor names come from gguf-py's own TensorNameMap for MODEL_ARCH.SEED_OSS (post_attention_layernorm
is blk.N.post_attention_norm there, not ffn_norm); the metadata keys are the ones TextModel
writes (block_count, context_length, embedding_length, feed_forward_length, head_count(_kv),
key/value_length, rope.freq_base, layer_norm_rms_epsilon); the vocabulary is the fixture's
SentencePiece tokenizer.model as _set_vocab_sentencepiece writes it.

llama.cpp's seed_oss loads q/k/v biases but no attn_output.bias, so the fixture is the seed_oss
fixture with attention_out_bias false (o_proj.bias dropped), and its reference logits/loss are
recomputed by transformers on that folder (same input ids). Into
Tests/MoETuneTests/Fixtures/gguf/arch/: seed_oss.gguf (f32), seed_oss.reference.safetensors.
`--o-bias FILE` writes, instead, a GGUF that keeps attn_output.bias (to see whether a llama.cpp
loads it).
"""
import argparse, json, os, shutil, sys, tempfile

import gguf
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import logits_reference  # noqa: E402

FIX = "Tests/MoETuneTests/Fixtures"
SRC = os.path.join(FIX, "seed_oss")
OUT = os.path.join(FIX, "gguf", "arch")

ap = argparse.ArgumentParser()
ap.add_argument("--o-bias", help="write a GGUF keeping attn_output.bias to this path, and nothing else")
a = ap.parse_args()


def vocabulary(w, folder):
    """tokens, scores and token types of tokenizer.model, as _set_vocab_sentencepiece writes them."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(sp.unk_id())
    return sp


def write_gguf(folder, out):
    """folder's config.json and model.safetensors as an f32 seed_oss GGUF at out."""
    cfg = json.load(open(os.path.join(folder, "config.json")))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    arch = gguf.MODEL_ARCH.SEED_OSS
    w = gguf.GGUFWriter(out, arch=gguf.MODEL_ARCH_NAMES[arch])
    w.add_name("seed_oss fixture")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocabulary(w, folder)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    names = gguf.TensorNameMap(arch, cfg["num_hidden_layers"])
    for hf, t in weights.items():
        base, suffix = hf.rsplit(".", 1)
        name = names.get_name(base)
        assert name is not None, hf
        w.add_tensor(name + "." + suffix, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", out, os.path.getsize(out), "bytes")


if a.o_bias:
    write_gguf(SRC, a.o_bias)
    raise SystemExit

with tempfile.TemporaryDirectory() as tmp:
    for f in os.listdir(SRC):
        if not f.startswith("reference.") and f != "model.safetensors":
            shutil.copy(os.path.join(SRC, f), tmp)
    cfg = json.load(open(os.path.join(tmp, "config.json")))
    cfg["attention_out_bias"] = False
    json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
    weights = load_file(os.path.join(SRC, "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.endswith("o_proj.bias")}, os.path.join(tmp, "model.safetensors"))
    write_gguf(tmp, os.path.join(OUT, "seed_oss.gguf"))
    m = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    assert not m.config.attention_out_bias
    logits_reference(m, os.path.join(SRC, "reference.safetensors"), os.path.join(OUT, "seed_oss.reference.safetensors"))
