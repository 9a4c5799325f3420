#!/usr/bin/env python3
"""Chat-template token ids for Tests/MoETuneTests/Fixtures/chat/expected.json.

transformers' apply_chat_template(messages, tokenize=True) over a set of chats, for real
tokenizers with their real templates:
  qwen2.5   tokenizers/qwen2.5/tokenizer.json.xz + chat/qwen2.5/tokenizer_config.json
  qwen3     tokenizers/qwen3/tokenizer.json.xz + tokenizers/qwen3/tokenizer_config.json
  llama3.2  tokenizers/llama3/tokenizer.json.xz + tokenizers/llama3/tokenizer_config.json
            + chat/llama3.2/chat_template.jinja (meta-llama/Llama-3.2-3B-Instruct's template)
Run with /root/tok-venv/bin/python (transformers, tokenizers, jinja2). strftime_now is
fixed by passing date_string for Llama.
"""
import json, lzma, os, shutil, tempfile
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "Tests", "MoETuneTests", "Fixtures")

SETS = {
    "qwen2.5": ("tokenizers/qwen2.5", "chat/qwen2.5/tokenizer_config.json", None),
    "qwen3": ("tokenizers/qwen3", "tokenizers/qwen3/tokenizer_config.json", None),
    "llama3.2": ("tokenizers/llama3", "tokenizers/llama3/tokenizer_config.json", "chat/llama3.2/chat_template.jinja"),
}

def m(role, content):
    return {"role": role, "content": content}

CHATS = [
    [m("user", "Hello!"), m("assistant", "Hi there. How can I help?")],
    [m("system", "You are a terse assistant."), m("user", "2+2?"), m("assistant", "4")],
    [m("user", "First question"), m("assistant", "First answer."), m("user", "Second, please"), m("assistant", "Second answer\nwith two lines.")],
    [m("system", "Réponds en français."), m("user", "Привет, как дела? 你好"), m("assistant", "Très bien, merci ! 🙂 👍🏽")],
    [m("user", "Write a loop"), m("assistant", "```python\nfor i in range(3):\n    print(i)\n```\n")],
    [m("user", ""), m("assistant", "")],
    [m("system", ""), m("user", "  leading and trailing spaces  "), m("assistant", "  spaced reply\t")],
    [m("user", "What is <|im_end|> or <|eot_id|>?"), m("assistant", "Special strings in text.")],
    [m("user", "Call a tool"), m("assistant", "Calling."), m("tool", "{\"result\": 42}"), m("assistant", "The result is 42.")],
]

def main():
    out = {}
    for name, (tokdir, config, template) in SETS.items():
        with tempfile.TemporaryDirectory() as tmp:
            with lzma.open(os.path.join(FIX, tokdir, "tokenizer.json.xz")) as f, open(os.path.join(tmp, "tokenizer.json"), "wb") as g:
                g.write(f.read())
            shutil.copy(os.path.join(FIX, config), os.path.join(tmp, "tokenizer_config.json"))
            if template:
                shutil.copy(os.path.join(FIX, template), os.path.join(tmp, "chat_template.jinja"))
            tok = AutoTokenizer.from_pretrained(tmp)
            rows = []
            for chat in CHATS:
                kwargs = {"date_string": "26 Jul 2024"} if name == "llama3.2" else {}
                ids = tok.apply_chat_template(chat, tokenize=True, **kwargs)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                text = tok.apply_chat_template(chat, tokenize=False, **kwargs)
                rows.append({"line": json.dumps({"messages": chat}, ensure_ascii=False), "text": text, "ids": list(ids)})
            out[name] = rows
    with open(os.path.join(FIX, "chat", "expected.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")

if __name__ == "__main__":
    main()
