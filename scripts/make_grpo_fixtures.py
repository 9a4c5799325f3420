"""GRPO fixtures from TRL's own loss code, with peft LoRA gradients (fp32, seeded).

    python scripts/make_grpo_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

Made with TRL 1.16.0, transformers 5.25.0, peft 0.21.2, torch (CPU) (the versions are recorded
in each meta.json). On the tiny llama (dense) and qwen2_moe (MoE) fixtures, a GRPOTrainer with a
peft LoRA (r 4, alpha 8; q/k/v/o and, llama, gate/up/down) whose A and B are then drawn at
random (B non-zero, so the policy differs from the reference, the base with the adapter off).
No sampling: a fixed generation batch of 2 prompts x 3 completions (random ids, different
lengths; some end with EOS, id 2, some are cut at max_completion_length 6), fixed rewards, and
fixed old log-probabilities (the policy's own, from TRL's _get_per_token_logps_and_entropies,
plus seeded noise so that some ratios leave [1 - epsilon, 1 + epsilon_high]). The batch goes in
TRL's layout (prompts left-padded, completions right-padded with their masks, advantages,
old_per_token_logps, ref_per_token_logps from the same function with the adapter disabled)
through GRPOTrainer._compute_loss, then loss.backward(). Advantages are TRL's
sum_then_normalize formula (group mean, unbiased std + 1e-4) of the rewards, written out here
for scale_rewards group / batch / none (TRL computes them inside generation, which needs a
sampler). The MoE load-balancing term is left out (aux_loss_enabled off). TRL 1.16's defaults
stand otherwise: importance_sampling_level token, use_bias_correction_kl on (the k3 KL times the
ratio), no entropy mask, no vLLM correction.

Each case NAME writes grpo-FAMILY/NAME.safetensors: loss, TRL's metrics ("metric:" + name:
kl, clip_ratio/*), the old and reference log-probs TRL used (old_logps, ref_logps: [6, 6], 0
past each completion),
and d loss / d every LoRA tensor (peft's key names). grpo-FAMILY/ also holds the adapter
(adapter_config.json, adapter_model.safetensors), batch.json (prompts, completions, rewards,
advantages per scale_rewards) and meta.json (versions, each case's settings).
Tests: Tests/MoETuneTests/GRPOTests.swift.
"""
import argparse, json, os, shutil, tempfile

import torch
from safetensors.torch import save_file

import peft, transformers, trl
from datasets import Dataset
from peft import LoraConfig
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

R, ALPHA = 4, 8
FAMILIES = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "qwen2_moe": ["q_proj", "k_proj", "v_proj", "o_proj"]}
G, MAX_LEN = 3, 6
REWARDS = [1.0, 0.0, 0.5, 0.2, 0.9, 0.0]
# name: (loss_type, epsilon, epsilon_high, beta, temperature, scale_rewards)
CASES = {"grpo": ("grpo", 0.2, 0.2, 0.0, 1.0, "group"),
         "bnpo": ("bnpo", 0.2, 0.2, 0.0, 1.0, "group"),
         "dr_grpo": ("dr_grpo", 0.2, 0.2, 0.0, 1.0, "none"),
         "grpo_eps_high": ("grpo", 0.2, 0.28, 0.0, 1.0, "batch"),
         "grpo_beta": ("grpo", 0.2, 0.2, 0.04, 0.7, "group"),
         "bnpo_beta": ("bnpo", 0.1, 0.3, 0.1, 1.0, "group")}


def batch(vocab, seed):
    """2 prompts (4 and 6 ids, BOS first) x 3 completions (EOS-ended or cut at MAX_LEN)."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()
    prompts = [[1] + ids(3), [1] + ids(5)]
    comps = []
    for n, eos in [(3, True), (6, False), (2, True), (5, True), (6, False), (1, True)]:
        comps.append(ids(n - 1) + [2] if eos else ids(n))
    return prompts, comps


def advantages(rewards, scale):
    r = torch.tensor(rewards, dtype=torch.float32)
    grouped = r.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    std = grouped.std(1).repeat_interleave(G) if scale == "group" else r.std().expand_as(r)
    a = r - mean
    return (a if scale == "none" else a / (std + 1e-4)).tolist()


def tensors(prompts, comps):
    """TRL's layout: prompt_ids left-padded, completion_ids right-padded (pad 0), with masks."""
    rows = [prompts[i // G] for i in range(len(comps))]
    tp, tc = max(map(len, rows)), MAX_LEN
    p_ids = torch.zeros(len(rows), tp, dtype=torch.long)
    p_mask = torch.zeros_like(p_ids)
    c_ids = torch.zeros(len(rows), tc, dtype=torch.long)
    c_mask = torch.zeros_like(c_ids)
    for i, (p, c) in enumerate(zip(rows, comps)):
        p_ids[i, tp - len(p):] = torch.tensor(p)
        p_mask[i, tp - len(p):] = 1
        c_ids[i, :len(c)] = torch.tensor(c)
        c_mask[i, :len(c)] = 1
    return p_ids, p_mask, c_ids, c_mask


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


def reward_zero(completions, **kw):
    return [0.0 for _ in completions]


def trainer_for(model_dir, targets, vocab, case, tmp):
    loss_type, eps, eps_high, beta, temp, scale = case
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.output_router_logits = False
    args = GRPOConfig(output_dir=tmp, loss_type=loss_type, epsilon=eps, epsilon_high=eps_high, beta=beta,
                      temperature=temp, scale_rewards=scale, num_generations=G, max_completion_length=MAX_LEN,
                      per_device_train_batch_size=2 * G, report_to=[], use_cpu=True, bf16=False, fp16=False)
    data = Dataset.from_dict({"prompt": ["t5 t6", "t7 t8"]})
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_zero], args=args, train_dataset=data,
                          processing_class=tokenizer(vocab),
                          peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0))
    randomize_lora(trainer.model, 1234)
    trainer.aux_loss_enabled = False
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def run_case(trainer, prompts, comps, adv, old_noise):
    p_ids, p_mask, c_ids, c_mask = tensors(prompts, comps)
    ids, att = torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, MAX_LEN)
        with trainer.model.disable_adapter():
            ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, MAX_LEN)
    old = (logps + old_noise) * c_mask
    inputs = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
              "advantages": torch.tensor(adv, dtype=torch.float32), "old_per_token_logps": old,
              "num_items_in_batch": c_mask.sum()}
    if trainer.beta != 0.0:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k == "kl" or k.startswith("clip_ratio/")}
    return loss.item(), metrics, lora_grads(trainer.model), old, (ref * c_mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    fx = ap.parse_args().fixtures
    torch.manual_seed(0)
    for fam, targets in FAMILIES.items():
        model_dir = os.path.join(fx, fam)
        vocab = json.load(open(os.path.join(model_dir, "config.json")))["vocab_size"]
        out = os.path.join(fx, "grpo-" + fam)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        prompts, comps = batch(vocab, 11)
        noise = torch.randn(len(comps), MAX_LEN, generator=torch.Generator().manual_seed(5)) * 0.15
        meta = {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "torch": torch.__version__, "r": R, "alpha": ALPHA, "targets": targets, "group_size": G,
                "max_completion_length": MAX_LEN, "cases": {}}
        advs = {s: advantages(REWARDS, s) for s in ("group", "batch", "none")}
        print(fam)
        with tempfile.TemporaryDirectory() as tmp:
            for name, case in CASES.items():
                trainer = trainer_for(model_dir, targets, vocab, case, tmp)
                loss, metrics, grads, old, ref = run_case(trainer, prompts, comps, advs[case[5]], noise)
                t = {"loss": torch.tensor([loss], dtype=torch.float64), "ref_logps": ref.contiguous(), "old_logps": old.contiguous()}
                t.update({"metric:" + k: torch.tensor([float(v)], dtype=torch.float64) for k, v in metrics.items()})
                t.update(grads)
                save_file(t, os.path.join(out, name + ".safetensors"))
                print(f"  {name}: loss {loss:.8f}, " + ", ".join(f"{k} {v:.6f}" for k, v in sorted(metrics.items())))
                meta["cases"][name] = dict(zip(["loss", "epsilon", "epsilon_high", "beta", "temperature", "scale_rewards"], case))
            # The same randomized adapter for every case (seeded); saved once, peft's format.
            trainer.model.save_pretrained(os.path.join(tmp, "adapter"))
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(os.path.join(tmp, "adapter", f), out)
        json.dump({"prompts": prompts, "completions": comps, "rewards": REWARDS, "advantages": advs},
                  open(os.path.join(out, "batch.json"), "w"))
        json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
