"""Reference data for LoRA training tests, from peft on transformers 4.x (where Mixtral
experts are per-expert nn.Linear modules, so per-expert LoRA gradients compare one to one).

    python3 -m venv /root/tf4-venv && /root/tf4-venv/bin/pip install "transformers<5" peft torch safetensors sentencepiece
    /root/tf4-venv/bin/python scripts/make_train_fixtures.py --fixtures Tests/MoETuneTests/Fixtures

For the llama and mixtral fixtures it writes train-NAME/ with:
  adapter_config.json, adapter_model.safetensors  peft LoRA r=4, alpha=8 on every module kind
      (attention q/k/v/o, the MLP or every expert's w1/w2/w3, the router, lm_head), B random
  batch.safetensors   input_ids, attention_mask, labels (I32) and loss (+ loss_aux, aux_loss)
  grads.safetensors   d loss / d every LoRA tensor, under the adapter's keys
  grads_aux.safetensors  (mixtral) the same for loss + 0.02 * load-balancing loss
  trajectories.json   10 AdamW (clip 1.0) and 10 SGD-momentum steps under warm-up + cosine
"""
import argparse, json, math, os, shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate", "lm_head"],
}


def lr_at(step, peak, warmup=3, total=10, min_ratio=0.1):
    """moe-tune's schedule: step counts from 1; linear warm-up, then half-cycle cosine."""
    lo = peak * min_ratio
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def lora_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def key_of(param_name):
    return param_name.replace(".default", "")


def build(base_dir, name, seed=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS[name], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1 + seed)
    with torch.no_grad():
        for n, p in lora_params(model).items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.train()  # dropout is 0; train mode matches how moe-tune trains
    return model


def batch(vocab):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (2, 16), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    return ids, mask, labels


def trajectory(base_dir, name, ids, mask, labels, kind):
    model = build(base_dir, name)
    params = list(lora_params(model).values())
    if kind == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        peak, clip = 1e-2, 1.0
    else:
        opt = torch.optim.SGD(params, lr=5e-2, momentum=0.9, nesterov=False, weight_decay=0.0)
        peak, clip = 5e-2, None
    out = {"loss": [], "grad_norm": [], "lr": []}
    for step in range(1, 11):
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        lr = lr_at(step, peak)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        out["loss"].append(loss.item())
        out["grad_norm"].append(norm)
        out["lr"].append(lr)
    with torch.no_grad():
        out["final_loss"] = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="Tests/MoETuneTests/Fixtures")
    a = ap.parse_args()
    import peft, transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    summary = {"versions": versions}
    for name in ["llama", "mixtral"]:
        base = os.path.join(a.fixtures, name)
        out = os.path.join(a.fixtures, "train-" + name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        model = build(base, name)
        model.save_pretrained(out)
        for extra in ["README.md"]:
            if os.path.exists(os.path.join(out, extra)):
                os.remove(os.path.join(out, extra))
        V = model.config.vocab_size
        ids, mask, labels = batch(V)
        tensors = {"input_ids": ids.int(), "attention_mask": mask.int(), "labels": labels.int()}

        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        save_file({key_of(n): p.grad.float().contiguous() for n, p in lora_params(model).items()},
                  os.path.join(out, "grads.safetensors"))
        tensors["loss"] = loss.detach().reshape(1)
        info = {"loss": loss.item()}

        if name == "mixtral":
            model.zero_grad()
            res = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
            assert abs(model.config.router_aux_loss_coef - 0.02) < 1e-12
            res.loss.backward()
            save_file({key_of(n): p.grad.float().contiguous() for n, p in lora_params(model).items()},
                      os.path.join(out, "grads_aux.safetensors"))
            tensors["loss_aux"] = res.loss.detach().reshape(1)
            tensors["aux_loss"] = res.aux_loss.detach().reshape(1)
            info.update(loss_aux=res.loss.item(), aux_loss=res.aux_loss.item())

            # Router z-loss (ST-MoE), written out in torch: the mean over (layer, valid
            # token) rows of logsumexp(router logits)^2; objective CE + 0.01 * z.
            model.zero_grad()
            res = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
            keep = mask.reshape(-1).bool()
            lse = torch.cat([torch.logsumexp(r.float(), dim=-1)[keep] for r in res.router_logits])
            z = (lse ** 2).mean()
            ce = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (ce + 0.01 * z).backward()
            save_file({key_of(n): p.grad.float().contiguous() for n, p in lora_params(model).items()},
                      os.path.join(out, "grads_z.safetensors"))
            tensors["z_loss"] = z.detach().reshape(1)
            info.update(z_loss=z.item())

        # Logits of base + adapter unmerged (peft), the reference for merged checkpoints.
        with torch.no_grad():
            tensors["logits"] = model(input_ids=ids, attention_mask=mask).logits.float().contiguous()
        if name == "mixtral":
            # A second adapter, and the weighted merge 0.7 * first + 0.3 * second computed
            # in torch on the base weights: W += sum_i w_i * (alpha / r) * B_i @ A_i.
            second = build(base, name, seed=5)
            second.save_pretrained(os.path.join(out, "adapter2"))
            readme = os.path.join(out, "adapter2", "README.md")
            if os.path.exists(readme):
                os.remove(readme)
            merged = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
            sd = merged.state_dict()
            scale = 8 / 4
            with torch.no_grad():
                for w, m in [(0.7, model), (0.3, second)]:
                    lp = {key_of(n): p for n, p in m.named_parameters() if "lora_" in n}
                    for k, A in lp.items():
                        if not k.endswith("lora_A.weight"):
                            continue
                        B = lp[k.replace("lora_A", "lora_B")]
                        target = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
                        sd[target] += w * scale * (B @ A)
                merged.load_state_dict(sd)
                tensors["logits_mix"] = merged(input_ids=ids, attention_mask=mask).logits.float().contiguous()
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "batch.safetensors"))
        traj = {k: trajectory(base, name, ids, mask, labels, k) for k in ["adamw", "sgd"]}
        traj["settings"] = {
            "adamw": {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "grad_clip": 1.0},
            "sgd": {"lr": 5e-2, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "grad_clip": None},
            "schedule": {"warmup_steps": 3, "total_steps": 10, "min_lr": "0.1 * lr", "kind": "cosine"},
            "versions": versions,
        }
        with open(os.path.join(out, "trajectories.json"), "w") as f:
            json.dump(traj, f, indent=2)
        info["adamw_final"] = traj["adamw"]["final_loss"]
        info["sgd_final"] = traj["sgd"]["final_loss"]
        summary[name] = info
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
