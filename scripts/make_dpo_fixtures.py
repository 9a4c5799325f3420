"""DPO and ORPO fixtures from TRL's own loss code, with peft LoRA gradients (fp32, seeded).

    python scripts/make_dpo_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Made with TRL 1.16.0, transformers 5.25.0, peft 0.21.2, torch 2.13.0+cpu (the versions are
recorded in each meta.json). On the tiny llama (dense) and qwen2_moe (MoE) fixtures, peft puts a
LoRA (r 4, alpha 8) on q/k/v/o and (llama) gate/up/down; A and B are then drawn at random
(B non-zero, so the policy differs from the reference, the base with the adapter off). A fixed
batch of 3 pairs of random token ids (prompt, chosen and rejected of different lengths; the ids
are given, TRL's tokenization is not used) goes through:

  DPO:  DPOTrainer._compute_loss (TRL 1.16: the reference forward with the adapter disabled,
        log-probs summed over the completion tokens, the loss by loss_type, the metrics
        rewards/*, logps/*) for loss_type sigmoid, ipo (TRL divides the summed log-ratios by the
        completion lengths), hinge and robust (label_smoothing 0.1);
  cdpo: the conservative-DPO form of sigmoid with label smoothing that TRL <= 0.x used,
        -(1 - e) logsigmoid(b d) - e logsigmoid(-b d), on the log-probs of the same forward
        (TRL 1.16's sigmoid no longer takes label_smoothing; this one is plain torch);
  ORPO: trl.experimental.orpo's ORPOTrainer.get_batch_loss_metrics (concatenated_forward:
        the NLL over the whole chosen sequence, prompt included, as TRL takes it; log-probs
        averaged over the completion tokens; odds_ratio_loss), unbound methods on a stand-in
        for the trainer (no dataset pipeline).

Each case NAME writes dpo-FAMILY/NAME.safetensors: loss, the metrics (TRL's names with "/"
kept), and d loss / d every LoRA tensor (peft's key names). On qwen2_moe TRL 1.16's DPO adds
the model's router_aux_loss_coef (0.02) x the MoE load-balancing loss of the policy forward to
the loss (aux_loss and aux_coef are stored beside it); the plain-torch cdpo and the ORPO
stand-in (aux_loss_enabled false) do not. dpo-FAMILY/ holds the adapter
(adapter_config.json, adapter_model.safetensors, peft's save), batch.json (the pairs' ids) and
meta.json (versions, beta per case). dpo-chat/ holds string and conversational preference lines
and the prompt/chosen/rejected ids TRL's DPOTrainer tokenizes them into with the chat-model
fixture's tokenizer (Qwen2.5's, with its chat template). Tests: Tests/MoETuneTests/PreferenceTests.swift.
"""
import argparse, json, os, shutil, tempfile, types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import peft, transformers, trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

R, ALPHA = 4, 8
FAMILIES = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "qwen2_moe": ["q_proj", "k_proj", "v_proj", "o_proj"]}
DPO_CASES = [("sigmoid", "sigmoid", 0.1, 0.0), ("ipo", "ipo", 0.5, 0.0), ("hinge", "hinge", 0.1, 0.0),
             ("robust", "robust", 0.1, 0.1)]
CDPO = ("cdpo", 0.1, 0.1)
ORPO_BETA = 0.1


def pairs(vocab, seed):
    """3 pairs: prompt, chosen and rejected ids of different lengths (ids 3.. vocab-1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p, c, r in [(5, 4, 6), (3, 7, 2), (6, 3, 3)]:
        ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"prompt": [1] + ids(p - 1), "chosen": ids(c - 1) + [2], "rejected": ids(r - 1) + [2]})
    return out


def dpo_inputs(batch):
    """TRL 1.16's DPO collator layout: rows chosen then rejected, prompt + completion, right-padded."""
    rows = [(b["prompt"], b["chosen"]) for b in batch] + [(b["prompt"], b["rejected"]) for b in batch]
    t = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    att = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        att[i, :n] = 1
        comp[i, len(p):n] = 1
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


def orpo_batch(batch):
    """ORPOTrainer's padded batch: chosen/rejected input_ids, attention_mask and labels (prompt -100)."""
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [b["prompt"] + b[side] for b in batch]
        t = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), t, dtype=torch.long)
        att = torch.zeros_like(ids)
        lab = torch.full_like(ids, -100)
        for i, (b, s) in enumerate(zip(batch, seqs)):
            ids[i, :len(s)] = torch.tensor(s)
            att[i, :len(s)] = 1
            lab[i, len(b["prompt"]):len(s)] = torch.tensor(b[side])
        out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": att, f"{side}_labels": lab})
    return out


def tokenizer(vocab):
    words = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", pad_token="t0", unk_token="t0")


def randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def lora_grads(model):
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            key = name.replace(".default", "")
            if not key.startswith("base_model.model."):
                key = "base_model.model." + key.split("base_model.model.", 1)[-1]
            out[key] = p.grad.detach().clone().contiguous()
            p.grad = None
    return out


def dpo_case(model_dir, targets, batch, vocab, loss_type, beta, smoothing, tmp):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.output_router_logits = False
    args = DPOConfig(output_dir=tmp, loss_type=[loss_type], beta=beta, label_smoothing=smoothing, report_to=[],
                     use_cpu=True, per_device_train_batch_size=len(batch), bf16=False, fp16=False)
    data = Dataset.from_dict({"prompt": ["t5"], "chosen": ["t6"], "rejected": ["t7"]})
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer(vocab),
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0))
    randomize_lora(trainer.model, 1234)
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, dpo_inputs(batch), False)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if k.startswith("rewards/") or k.startswith("logps/")}
    # MoE: TRL 1.16 adds router_aux_loss_coef (the model's, 0.02) x the policy forward's aux loss.
    aux = {"aux_loss": trainer._metrics["train"]["aux_loss"][-1], "aux_coef": trainer.router_aux_loss_coef} \
        if trainer.aux_loss_enabled else {}
    return trainer.model, loss.item(), metrics, lora_grads(trainer.model), aux


def cdpo_case(model, batch, beta, eps):
    """Conservative DPO (TRL <= 0.x's sigmoid with label_smoothing), in plain torch on peft's model."""
    inp = dpo_inputs(batch)
    logits = model(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).logits[:, :-1]
    labels, mask = inp["input_ids"][:, 1:], inp["completion_mask"][:, 1:].bool()
    lp = (torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0] * mask).sum(1)
    with torch.no_grad(), model.disable_adapter():
        rl = model(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).logits[:, :-1]
        ref = (torch.log_softmax(rl.float(), -1).gather(-1, labels[..., None])[..., 0] * mask).sum(1)
    c, r = lp.chunk(2)
    rc, rr = ref.chunk(2)
    d = (c - rc) - (r - rr)
    loss = (-(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)).mean()
    loss.backward()
    cr, rj = beta * (c - rc).detach(), beta * (r - rr).detach()
    metrics = {"rewards/chosen": cr.mean().item(), "rewards/rejected": rj.mean().item(),
               "rewards/accuracies": (cr > rj).float().mean().item(), "rewards/margins": (cr - rj).mean().item(),
               "logps/chosen": c.mean().item(), "logps/rejected": r.mean().item()}
    return loss.item(), metrics, lora_grads(model)


def orpo_case(model, batch, beta):
    """ORPOTrainer.get_batch_loss_metrics of trl.experimental.orpo, its methods bound to a stand-in."""
    fake = types.SimpleNamespace(is_encoder_decoder=False, padding_value=0, aux_loss_enabled=False, beta=beta,
                                 accelerator=types.SimpleNamespace(device=torch.device("cpu"),
                                                                   gather_for_metrics=lambda x: x))
    fake.concatenated_inputs = ORPOTrainer.concatenated_inputs
    fake.get_batch_logps = ORPOTrainer.get_batch_logps
    fake.concatenated_forward = lambda m, b: ORPOTrainer.concatenated_forward(fake, m, b)
    fake.odds_ratio_loss = lambda c, r: ORPOTrainer.odds_ratio_loss(fake, c, r)
    loss, metrics = ORPOTrainer.get_batch_loss_metrics(fake, model, orpo_batch(batch))
    loss.backward()
    keep = ("rewards/", "logps/", "nll_loss", "log_odds_ratio", "log_odds_chosen")
    return loss.item(), {k: v for k, v in metrics.items() if k.startswith(keep)}, lora_grads(model)


def write_case(out, name, loss, metrics, grads, aux=None):
    t = {"loss": torch.tensor([loss], dtype=torch.float64)}
    t.update({k: torch.tensor([float(v)], dtype=torch.float64) for k, v in (aux or {}).items()})
    t.update({"metric:" + k: torch.tensor([float(v)], dtype=torch.float64) for k, v in metrics.items()})
    t.update(grads)
    save_file(t, os.path.join(out, name + ".safetensors"))
    print(f"  {name}: loss {loss:.8f}, " + ", ".join(f"{k} {v:.6f}" for k, v in sorted(metrics.items())))


STRING_LINES = [{"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5, I think"},
                {"prompt": "Name a colour:", "chosen": "blue", "rejected": " a dog"}]
CHAT_LINES = [{"prompt": [{"role": "user", "content": "What is 2+2?"}],
               "chosen": [{"role": "assistant", "content": "4"}],
               "rejected": [{"role": "assistant", "content": "5, I think"}]},
              {"prompt": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}],
               "chosen": [{"role": "assistant", "content": "Hi"}],
               "rejected": [{"role": "assistant", "content": "Good day to you, dear friend."}]}]


def tokenized_lines(fx, tmp):
    """TRL 1.16's tokenization of string and conversational lines with the chat-model fixture's
    tokenizer (Qwen2.5's tokenizer.json and chat template): dpo-chat/{data.jsonl, tokenized.json}."""
    import lzma
    from transformers import AutoTokenizer
    src, tok_dir = os.path.join(fx, "chat-model"), os.path.join(tmp, "chat-tok")
    os.makedirs(tok_dir)
    shutil.copy(os.path.join(src, "tokenizer_config.json"), tok_dir)
    open(os.path.join(tok_dir, "tokenizer.json"), "wb").write(lzma.open(os.path.join(src, "tokenizer.json.xz")).read())
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(fx, "llama"), dtype=torch.float32)
    out = []
    for lines in (STRING_LINES, CHAT_LINES):
        args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, max_length=None)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(lines), processing_class=tok,
                             peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj"]))
        for row in trainer.train_dataset:
            out.append({k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
        model = trainer.model.unload()
    d = os.path.join(fx, "dpo-chat")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for line in STRING_LINES + CHAT_LINES:
            f.write(json.dumps(line) + "\n")
    json.dump({"trl": trl.__version__, "transformers": transformers.__version__, "lines": out},
              open(os.path.join(d, "tokenized.json"), "w"), indent=1)
    print("dpo-chat: " + "; ".join(f"{len(o['prompt_ids'])}+{len(o['chosen_ids'])}/{len(o['rejected_ids'])}" for o in out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    fx = ap.parse_args().fixtures
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenized_lines(fx, tmp)
    for fam, targets in FAMILIES.items():
        model_dir = os.path.join(fx, fam)
        vocab = json.load(open(os.path.join(model_dir, "config.json")))["vocab_size"]
        out = os.path.join(fx, "dpo-" + fam)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        batch = pairs(vocab, 7)
        json.dump(batch, open(os.path.join(out, "batch.json"), "w"))
        meta = {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "torch": torch.__version__, "r": R, "alpha": ALPHA, "targets": targets, "cases": {}}
        print(fam)
        with tempfile.TemporaryDirectory() as tmp:
            for name, lt, beta, eps in DPO_CASES:
                model, loss, metrics, grads, aux = dpo_case(model_dir, targets, batch, vocab, lt, beta, eps, tmp)
                write_case(out, name, loss, metrics, grads, aux)
                meta["cases"][name] = {"method": "dpo", "loss": lt, "beta": beta, "label_smoothing": eps}
            # The same randomized adapter for every case (seeded); saved once, peft's format.
            model.save_pretrained(os.path.join(tmp, "adapter"))
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(os.path.join(tmp, "adapter", f), out)
            name, beta, eps = CDPO
            write_case(out, name, *cdpo_case(model, batch, beta, eps))
            meta["cases"][name] = {"method": "dpo", "loss": "sigmoid", "beta": beta, "label_smoothing": eps}
            write_case(out, "orpo", *orpo_case(model, batch, ORPO_BETA))
            meta["cases"]["orpo"] = {"method": "orpo", "beta": ORPO_BETA}
        json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
