"""Online RL of a policy against a reward, as a plain loop: RLOO or GRPO, with a KL penalty to the SFT reference.

Each step takes `prompts_per_step` prompts, samples `generations` completions of each from the policy (plain
sampling at `temperature`: no top-k or top-p, so the samples are the policy's own distribution and the KL estimate
is unbiased), scores them (`rl_rewards.Reward`), and takes one gradient step:

- rloo (Ahmadian et al. 2024): each completion's return is its reward minus `kl_coef` times its sequence KL to the
  reference (sum over tokens of log pi - log pi_ref); its baseline is the mean return of the prompt's other
  completions; loss = -advantage x the completion's summed log-prob.
- grpo (Shao et al. 2024): advantages are rewards standardised within the prompt's group; the KL enters the loss per
  token as the k3 estimator exp(r) - r - 1 with r = log pi_ref - log pi, weighted by `kl_coef`; token-level mean.

One update per batch of samples, so the importance ratio of PPO-style clipping is always 1 and is left out.

The reference is the SFT model: the policy's trainable parameters as they were before the first step, swapped in
for a no-grad pass (an adapter's few MB; no second model in memory). Log-probs come from the decoder's hidden
states through `dpo_pairs.token_logps` (vocabulary chunks, never a batch's full logits). Checkpoints hold the
trainable parameters, optimizer, schedule, RNG state and log (`checkpoints.py`); the sampling RNG is restored with
them, so a resumed run draws the same completions as an uninterrupted one.

Why not TRL's RLOOTrainer/GRPOTrainer: they import `datasets` and TRL (for DPO that import alone cost ~100 MB of
RSS and seconds before the first step, see dpo_loop.py) and keep a reference model beside the policy; this loop keeps
one policy in memory. TRL's trainers were not timed against it here.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_pipeline.training import checkpoints, dpo_pairs
from llm_pipeline.training.device import DevicePlan, autocast
from llm_pipeline.training.dpo_loop import _Trainable, optimizer_and_resume

ALGORITHMS = ("rloo", "grpo")


@dataclass
class RlSettings:
    steps: int
    prompts_per_step: int
    generations: int
    max_new_tokens: int
    temperature: float
    kl_coef: float
    learning_rate: float
    algorithm: str
    seed: int
    checkpoint_every: int
    log_every: int = 1
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass
class RlResult:
    log: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    start_step: int = 0
    step_durations: list[float] = field(default_factory=list)
    resume_note: str = ""
    completions: int = 0


class Reference:
    """The policy's trainable parameters as they were at construction: the reference, swapped in when asked."""

    def __init__(self, model):
        self.trainable = _Trainable(model)
        self.state = self.trainable.state_dict()

    @contextmanager
    def active(self):
        current = self.trainable.state_dict()
        self.trainable.load(self.state)
        try:
            yield
        finally:
            self.trainable.load(current)


def _left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], settings: RlSettings, plan: DevicePlan) -> dict[str, Any]:
    """Completions of each prompt (already repeated as needed): ids, attention mask, completion mask and texts."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    ids, mask = _left_pad(prompt_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    with autocast(plan):
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=settings.temperature,
                             top_k=0, top_p=1.0, max_new_tokens=settings.max_new_tokens, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, use_cache=True)
    model.train(was_training)
    completion = out[:, ids.shape[1] :]
    # A completion runs to its first end-of-sequence token, which counts (stopping is a choice the policy makes).
    is_eos = completion == tokenizer.eos_token_id
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    comp_mask = (~after).long()
    texts = [tokenizer.decode(c[m.bool()], skip_special_tokens=True).strip() for c, m in zip(completion.cpu(), comp_mask.cpu())]
    return {"input_ids": torch.cat([ids, completion], dim=1), "attention_mask": torch.cat([mask, comp_mask], dim=1),
            "prompt_width": ids.shape[1], "completion_mask": comp_mask, "texts": texts}


def completion_logps(model, batch: dict[str, Any], plan: DevicePlan) -> torch.Tensor:
    """[N, C] log-probs of each completion token under `model` (0 where the completion mask is 0)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with autocast(plan):
        hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids,
                                     use_cache=False).last_hidden_state
    P = batch["prompt_width"]
    comp_mask = batch["completion_mask"].bool()
    states = hidden[:, P - 1 : -1][comp_mask]  # position t predicts token t + 1
    targets = batch["input_ids"][:, P:][comp_mask]
    cap = getattr(inner.config, "final_logit_softcapping", None)
    lp = dpo_pairs.token_logps(inner.get_output_embeddings(), states, targets, cap)
    out = torch.zeros(comp_mask.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(comp_mask, lp)


def advantages(algorithm: str, rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float, generations: int) -> torch.Tensor:
    """Per-completion advantages for [N] rewards and sequence KLs, N = prompts x generations (grouped by prompt)."""
    if algorithm == "rloo":
        returns = (rewards - kl_coef * kl).view(-1, generations)
        baseline = (returns.sum(dim=1, keepdim=True) - returns) / (generations - 1)
        return (returns - baseline).view(-1)
    if algorithm == "grpo":
        g = rewards.view(-1, generations)
        return ((g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + 1e-4)).view(-1)
    raise ValueError(f"rl_model.algorithm must be one of {ALGORITHMS}, not {algorithm!r}")


def policy_loss(algorithm: str, adv: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                kl_coef: float) -> torch.Tensor:
    if algorithm == "rloo":
        return -(adv * (logps * mask).sum(dim=1)).mean()
    log_ratio = ref_logps - logps
    k3 = torch.exp(log_ratio) - log_ratio - 1
    per_token = -adv[:, None] * logps + kl_coef * k3
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def evaluate(model, tokenizer, prompts: list[dict], reward_fn, reference: Reference, settings: RlSettings,
             plan: DevicePlan, seed: int) -> dict[str, Any]:
    """One seeded sample per held-out prompt: mean reward (and each part) and mean sequence KL to the reference.
    The RNG is forked, so evaluating does not change what training samples next."""
    if not prompts:
        return {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = sample(model, tokenizer, [p["prompt_ids"] for p in prompts], settings, plan)
    with torch.no_grad():
        mask = batch["completion_mask"].float()
        logps = completion_logps(model, batch, plan)
        with reference.active():
            ref = completion_logps(model, batch, plan)
        kl = ((logps - ref) * mask).sum(dim=1)
    totals, parts = reward_fn([p["prompt"] for p in prompts], batch["texts"])
    mean = lambda xs: round(sum(xs) / len(xs), 5)  # noqa: E731
    return {"reward": mean(totals), **{f"reward/{k}": mean(v) for k, v in parts.items()}, "kl": round(float(kl.mean()), 5),
            "completion_tokens": round(float(mask.sum(dim=1).mean()), 2), "texts": batch["texts"]}


def train(model, tokenizer, prompts: list[dict], reward_fn, settings: RlSettings, plan: DevicePlan, checkpoint_dir: Path,
          fingerprint: str, reference: Reference, tracker=None, on_step=None) -> RlResult:
    """Train the policy's trainable parameters on `prompts` ({prompt, prompt_ids}); `reward_fn(prompts, texts)`
    returns (totals, parts). `on_step(step)` may return True to stop."""
    if not prompts:
        raise ValueError("no prompts to train on")
    if settings.generations < 2:
        raise ValueError("rl_model.generations_per_prompt must be at least 2: each completion's baseline is the others")
    device = next(model.parameters()).device
    params, optimizer, scheduler, trainable, state, note = optimizer_and_resume(model, settings, checkpoint_dir, fingerprint)
    result = RlResult()
    result.resume_note = note
    if state is not None:
        result.log, result.completions = list(state["log"]), int(state["completions"])
        result.start_step = int(state["step"])

    per_epoch = -(-len(prompts) // settings.prompts_per_step)
    step = result.start_step
    last = time.perf_counter()
    while step < settings.steps:
        epoch, index = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = torch.randperm(len(prompts), generator=g).tolist()
        chosen = [prompts[i] for i in order[index * settings.prompts_per_step : (index + 1) * settings.prompts_per_step]]
        repeated = [p for p in chosen for _ in range(settings.generations)]
        batch = sample(model, tokenizer, [p["prompt_ids"] for p in repeated], settings, plan)
        totals, parts = reward_fn([p["prompt"] for p in repeated], batch["texts"])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        mask = batch["completion_mask"].float()
        with torch.no_grad(), reference.active():
            ref = completion_logps(model, batch, plan)
        model.train()
        logps = completion_logps(model, batch, plan)
        kl = ((logps.detach() - ref) * mask).sum(dim=1)
        rewards = torch.tensor(totals, dtype=torch.float32, device=device)
        adv = advantages(settings.algorithm, rewards, kl, settings.kl_coef, settings.generations)
        loss = policy_loss(settings.algorithm, adv, logps, ref, mask, settings.kl_coef)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"RL loss became {loss.item()} at step {step + 1}; lower rl_model.learning_rate")
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        result.completions += len(repeated)
        now = time.perf_counter()
        result.step_durations.append(now - last)
        last = now
        if step % settings.log_every == 0 or step == settings.steps:
            mean = lambda xs: round(sum(xs) / len(xs), 5)  # noqa: E731
            entry = {"loss": round(loss.item(), 6), "reward": mean(totals), **{f"reward/{k}": mean(v) for k, v in parts.items()},
                     "kl": round(float(kl.mean()), 5), "completion_tokens": round(float(mask.sum(dim=1).mean()), 2),
                     "grad_norm": round(grad_norm, 6), "learning_rate": lr, "step": step}
            result.log.append(entry)
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)
        if on_step is not None and on_step(step):
            break
        if step % settings.checkpoint_every == 0 and step < settings.steps:
            checkpoints.save_checkpoint(checkpoint_dir, step, fingerprint, trainable, optimizer, scheduler,
                                        {"log": result.log, "completions": result.completions})
            last = time.perf_counter()
    result.global_step = step
    return result
