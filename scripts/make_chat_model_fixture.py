#!/usr/bin/env python3
"""Tests/MoETuneTests/Fixtures/chat-model: a tiny Llama-architecture model whose folder has
only tokenizer.json (Qwen2.5's real one, xz'd) and tokenizer_config.json (with Qwen2.5's real
chat template), no tokenizer.model; and the reference eval loss transformers gives on
data.jsonl with apply_chat_template ids and assistant-turn masks.

Run with /root/peer-venv/bin/python. Seeded. hidden_size 8, tied embeddings, bf16 (~2.4 MB).
Three embedding rows are set by hand so that greedy decoding after the assistant header
("\\n") says "Hi" and then "<|im_end|>": a = E["\\n"] = e1, b = E["Hi"] = 5e1 + 5e2,
c = E["<|im_end|>"] = 20e2 (tied: logits = E . norm(h); the layers add little).

Masks are found here from the ids alone: after each <|im_start|>assistant\\n up to and
including the next <|im_end|>.
"""
import json, lzma, os, shutil
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "Tests", "MoETuneTests", "Fixtures")
OUT = os.path.join(FIX, "chat-model")

CHATS = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Greet me"}, {"role": "assistant", "content": "Hi"}],
    [{"role": "user", "content": "Привет! 你好"}, {"role": "assistant", "content": "Hi"}],
    [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "```python\nprint(1)\n```"}],
]

def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tmp = os.path.join(OUT, "tokenizer.json")
    with lzma.open(os.path.join(FIX, "tokenizers", "qwen2.5", "tokenizer.json.xz")) as f, open(tmp, "wb") as g:
        g.write(f.read())
    shutil.copy(os.path.join(FIX, "chat", "qwen2.5", "tokenizer_config.json"), os.path.join(OUT, "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(OUT)
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=151936, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=4, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=im_end, pad_token_id=None)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        E = model.model.embed_tokens.weight
        nl, hi = tok.encode("\n")[0], tok.encode("Hi")[0]
        E[nl] = 0; E[nl, 0] = 1
        E[hi] = 0; E[hi, 0] = 5; E[hi, 1] = 5
        E[im_end] = 0; E[im_end, 1] = 20
    model.save_pretrained(OUT, safe_serialization=True)
    for extra in ["generation_config.json"]:
        p = os.path.join(OUT, extra)
        if os.path.exists(p): os.remove(p)
    with open(os.path.join(OUT, "tokenizer.json"), "rb") as f, lzma.open(os.path.join(OUT, "tokenizer.json.xz"), "wb", preset=9) as g:
        g.write(f.read())

    # Reference loss: float64 forward, mean cross-entropy over assistant-turn targets.
    model = LlamaForCausalLM.from_pretrained(OUT, dtype=torch.float64).eval()
    header = tok.encode("<|im_start|>assistant\n")
    lines, total, count = [], 0.0, 0
    for chat in CHATS:
        ids = tok.apply_chat_template(chat, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        mask = [0] * len(ids)
        i = 0
        while i < len(ids):
            if ids[i:i + len(header)] == header:
                j = i + len(header)
                while j < len(ids) and ids[j] != im_end: mask[j] = 1; j += 1
                if j < len(ids): mask[j] = 1
                i = j
            i += 1
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for j in range(1, len(ids)):
            if mask[j]:
                total -= logp[j - 1, ids[j]].item(); count += 1
        lines.append(json.dumps({"messages": chat}, ensure_ascii=False))
    os.remove(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "data.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"loss": total / count, "tokens": count, "hi_id": hi, "im_end_id": im_end}, f, indent=1)
        f.write("\n")
    print("loss", total / count, "tokens", count)

if __name__ == "__main__":
    main()
