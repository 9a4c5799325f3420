"""Reference fixtures for moe-tune's tests, written by transformers (fp32).

    /root/peer-venv/bin/python scripts/make_fixtures.py --out Tests/MoETuneTests/Fixtures

Writes, deterministically (seeded):
  tokenizer: a tiny SentencePiece BPE model (byte fallback) trained on generated text
  llama/         LlamaForCausalLM, GQA, tied embeddings, saved SHARDED (index + shards)
  mixtral/       MixtralForCausalLM, 4 experts top-2, GQA, classic per-expert tensor names;
                 router weights drawn with std ROUTER_STD and the seed chosen so that every
                 routing decision the fixtures make has a gap of at least MIN_GAP
  mixtral-bf16/  the same Mixtral weights stored as BF16
  eval.jsonl     text and prompt/completion lines for the eval test
  tokenizer-large.model  a tokenizer with more pieces than the models' vocabularies
Each model folder also gets reference.safetensors (input_ids, attention_mask, logits,
loss) and reference.json (loss, eval_loss, eval_tokens, greedy_prompt, greedy_tokens) from
transformers. The output is byte-for-byte reproducible.
"""
import argparse, copy, io, json, os, random, shutil

import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

WORDS = ("the a of and to in is was he she it they we you for on with as at by from this that "
         "river stone cloud green silver orange window garden candle rocket marble piano forest "
         "tiger lemon yellow button castle dragon quick brown fox jumps over lazy dog number add "
         "sort reverse word answer question model expert router token layer").split()

ROUTER_STD = 0.25  # init std of the Mixtral router weights (see main)
MIN_GAP = 1e-4     # least gap between the k-th and (k+1)-th router probability of any token


def corpus(rnd, lines):
    out = []
    for _ in range(lines):
        n = rnd.randrange(4, 14)
        ws = [rnd.choice(WORDS) if rnd.random() < 0.85 else str(rnd.randrange(1000)) for _ in range(n)]
        out.append(" ".join(ws).capitalize() + rnd.choice([".", "?", "!", ","]))
    return out


def train_tokenizer(prefix, text_lines, vocab):
    """Trained from an in-memory iterator into memory, so that no file path (a temporary
    corpus, the output prefix) is recorded in the model's trainer_spec: the bytes of
    tokenizer.model depend only on the text and the options."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text_lines), model_writer=buf, vocab_size=vocab, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        num_threads=1, minloglevel=2)
    with open(prefix + ".model", "wb") as f:
        f.write(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def per_expert_state(model, cfg):
    """The state dict under the classic Mixtral checkpoint names (per-expert w1/w2/w3,
    block_sparse_moe.gate), whatever layout the installed transformers keeps in memory."""
    out = {}
    inter, hidden = cfg.intermediate_size, cfg.hidden_size
    for name, t in model.state_dict().items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            layer = name.split(".")[2]
            assert t.shape[1:] == (2 * inter, hidden), t.shape
            for e in range(t.shape[0]):
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w1.weight"] = t[e, :inter].clone()
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w3.weight"] = t[e, inter:].clone()
        elif name.endswith(".mlp.experts.down_proj"):
            layer = name.split(".")[2]
            assert t.shape[1:] == (hidden, inter), t.shape
            for e in range(t.shape[0]):
                out[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w2.weight"] = t[e].clone()
        elif name.endswith(".mlp.gate.weight") and cfg.model_type == "mixtral":
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t.clone()
        else:
            out[name] = t.clone()
    return out


def write_config(cfg, folder, dtype):
    d = cfg.to_dict()
    d["architectures"] = ["MixtralForCausalLM"]  # as in real checkpoints (to_dict leaves it null)
    d["torch_dtype"] = dtype
    d["dtype"] = dtype
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def eval_examples(sp, rows):
    """(tokens, first counted position) per eval.jsonl row, moe-tune's rule: text lines
    count every next-token prediction, prompt/completion lines only the completion + EOS."""
    out = []
    for r in rows:
        if "text" in r:
            out.append(([1] + sp.encode(r["text"]) + [2], 1))
        else:
            p = [1] + sp.encode(r["prompt"])
            out.append((p + sp.encode(r["completion"]) + [2], len(p)))
    return out


def greedy(model, prompt, n=16):
    """Greedy tokens from transformers' generate (KV cache), EOS disabled so the length is fixed."""
    with torch.no_grad():
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return gen[0, prompt.shape[1]:].tolist()


def router_gaps(model, inputs):
    """Smallest gap between the k-th and (k+1)-th router probability, and between the
    k-th and (k+1)-th router logit, over every token (every layer) of every input."""
    k = model.config.num_experts_per_tok
    probs, logits = [], []
    def hook(_m, _i, out):
        lo = (out[0] if isinstance(out, tuple) else out).float().reshape(-1, out[0].shape[-1])
        ps = torch.softmax(lo, -1).sort(-1, descending=True).values
        ls = lo.sort(-1, descending=True).values
        probs.append((ps[:, k - 1] - ps[:, k]).min().item())
        logits.append((ls[:, k - 1] - ls[:, k]).min().item())
    hooks = [m.register_forward_hook(hook) for name, m in model.named_modules()
             if name.endswith("mlp.gate") or name.endswith("block_sparse_moe.gate")
             or name.endswith("block_sparse_moe.router")]
    assert hooks, "no router modules found"
    with torch.no_grad():
        for ids, mask in inputs:
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return min(probs), min(logits)


def fixture_inputs(model, ids, mask, examples):
    """Everything a fixture runs through the model: the reference batch, each eval example
    and the greedy sequence (prompt + generated tokens)."""
    prompt = ids[:1, :8]
    seq = torch.cat([prompt, torch.tensor([greedy(model, prompt)])], 1)
    return [(ids, mask)] + [(torch.tensor([t]), None) for t, _ in examples] + [(seq, None)]


def greedy_margin(model, prompt, tokens):
    """Smallest gap between the best and second-best next-token logit along the greedy path."""
    seq = torch.tensor([prompt + tokens])
    with torch.no_grad():
        lo = model(input_ids=seq).logits[0, len(prompt) - 1 : -1].sort(-1, descending=True).values
    return (lo[:, 0] - lo[:, 1]).min().item()


def logits_reference(model, ref_path, out):
    """Logits and mean loss of `model` on the input ids / mask of an existing reference file."""
    ref = load_file(ref_path)
    ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
    labels = ids.clone()
    labels[mask == 0] = -100
    with torch.no_grad():
        o = model.eval()(input_ids=ids, attention_mask=mask, labels=labels)
    save_file({"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"],
               "logits": o.logits.float().contiguous(), "loss": o.loss.float().reshape(1)}, out)
    print("wrote", out, "loss", o.loss.item())


def references(model, sp, ids, mask, examples, folder):
    model.eval()
    labels = ids.clone()
    labels[mask == 0] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    save_file({"input_ids": ids.to(torch.int32).contiguous(), "attention_mask": mask.to(torch.int32).contiguous(),
               "logits": out.logits.float().contiguous(), "loss": out.loss.float().reshape(1)},
              os.path.join(folder, "reference.safetensors"))
    total, count = 0.0, 0
    for toks, start in examples:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0].double(), -1)
        for j in range(start, len(toks)):
            total -= logp[j - 1, toks[j]].item()
            count += 1
    prompt = ids[:1, :8]
    ref = {"loss": out.loss.item(), "eval_loss": total / count, "eval_tokens": count,
           "greedy_prompt": prompt[0].tolist(), "greedy_tokens": greedy(model, prompt)}
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
    ref["greedy_margin"] = greedy_margin(model, ref["greedy_prompt"], ref["greedy_tokens"])
    return ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rnd = random.Random(1234)
    torch.manual_seed(1234)

    text = corpus(rnd, 3000)
    tok_prefix = os.path.join(a.out, "tokenizer")
    sp = train_tokenizer(tok_prefix, text, 384)
    big = train_tokenizer(os.path.join(a.out, "tokenizer-large"), text, 600)
    V = sp.get_piece_size()
    assert big.get_piece_size() > V

    eval_rows = [{"text": " ".join(corpus(rnd, rnd.randrange(1, 4)))} for _ in range(8)]
    eval_rows += [{"prompt": f"Add {x} and {y}.", "completion": f" {x + y}"}
                  for x, y in [(3, 4), (12, 30), (7, 91), (250, 250)]]
    with open(os.path.join(a.out, "eval.jsonl"), "w") as f:
        for r in eval_rows:
            f.write(json.dumps(r) + "\n")
    examples = eval_examples(sp, eval_rows)

    B, T = 2, 24
    ids = torch.randint(3, V, (B, T))
    ids[:, 0] = 1
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 6:] = 0

    common = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2)
    summary = {}

    # Llama: tied embeddings, sharded checkpoint.
    llama_cfg = LlamaConfig(intermediate_size=128, rope_theta=10000.0, tie_word_embeddings=True, **common)
    llama = LlamaForCausalLM(llama_cfg).float().eval()
    folder = os.path.join(a.out, "llama")
    shutil.rmtree(folder, ignore_errors=True)
    llama.save_pretrained(folder, safe_serialization=True, max_shard_size="60KB")
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json")), "llama must be sharded"
    os.remove(os.path.join(folder, "generation_config.json"))  # not needed; the Mixtral folders have none either
    shutil.copy(tok_prefix + ".model", os.path.join(folder, "tokenizer.model"))
    summary["llama"] = references(llama, sp, ids, mask, examples, folder)

    # Mixtral: per-expert names, fp32. Routers get a larger init than the default 0.02
    # (logits spread about 2, like a trained router); at 0.02 the four probabilities are all
    # near 0.25 and about one routing decision in 200 has its k-th and (k+1)-th probability
    # within 1e-4. Then take the first seed whose every routing decision, on every input the
    # fixtures run (fp32 weights and their BF16 rounding), has a gap of at least MIN_GAP, so
    # that top-k picks the same experts on both sides.
    for seed in range(200):
        torch.manual_seed(seed)
        mcfg = MixtralConfig(intermediate_size=96, rope_theta=1e6, tie_word_embeddings=False,
                             num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02, **common)
        mixtral = MixtralForCausalLM(mcfg).float().eval()
        with torch.no_grad():
            for layer in mixtral.model.layers:
                layer.mlp.gate.weight.normal_(0.0, ROUTER_STD)
        twin = copy.deepcopy(mixtral)
        with torch.no_grad():
            for t in twin.parameters():
                t.copy_(t.to(torch.bfloat16).float())
        gaps = [router_gaps(m, fixture_inputs(m, ids, mask, examples)) for m in (mixtral, twin)]
        if min(g[0] for g in gaps) >= MIN_GAP:
            break
    else:
        raise SystemExit(f"no seed below 200 gives router gaps of at least {MIN_GAP}")
    summary["router_seed"] = seed
    state = per_expert_state(mixtral, mcfg)
    for name, dtype, conv in [("mixtral", "float32", lambda t: t.float()),
                              ("mixtral-bf16", "bfloat16", lambda t: t.to(torch.bfloat16))]:
        folder = os.path.join(a.out, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        save_file({k: conv(v).contiguous() for k, v in state.items()}, os.path.join(folder, "model.safetensors"),
                  metadata={"format": "pt"})
        write_config(mcfg, folder, dtype)
        shutil.copy(tok_prefix + ".model", os.path.join(folder, "tokenizer.model"))
        # The reference runs the stored weights (BF16 rounded for the bf16 copy) in fp32.
        model = MixtralForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            same = model(input_ids=ids).logits
            expect = (mixtral if name == "mixtral" else twin)(input_ids=ids).logits
            assert torch.equal(same, expect), f"{name}: reloading the per-expert file changed the logits"
        summary[name] = references(model, sp, ids, mask, examples, folder)
        # The check again, on the reloaded model: this is what the references were made with.
        pg, lg = router_gaps(model, fixture_inputs(model, ids, mask, examples))
        assert pg >= MIN_GAP, (name, pg)
        summary[name]["router_gap_prob"], summary[name]["router_gap_logit"] = pg, lg
    os.remove(tok_prefix + ".model")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
