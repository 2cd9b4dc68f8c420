"""Reward-model training as a plain loop: a Bradley-Terry loss on preference pairs, resumable from checkpoints.

Each step scores both answers of a batch of shared-prompt rows (`reward_scoring.pair_rewards`) and minimises
-log sigmoid(r_chosen - r_rejected), plus `center_coefficient * (r_chosen + r_rejected)^2` (as TRL's
`center_rewards_coefficient`): the loss only sees differences, and without that term the rewards drift to any
offset, which makes them hard to mix with rule rewards in RL. It shares the DPO loop's machinery: length-grouped
batches whose order is a function of the seed (`dpo_loop.batch_order`), the Trainer's warmup-then-cosine schedule,
AdamW, gradients clipped at norm 1, a CPU batch backpropagated a few rows at a time, and checkpoints of the trainable
parameters with optimizer, schedule and RNG state (`checkpoints.py`), so a killed run resumes where it stopped.

Why not TRL's RewardTrainer: it runs each answer as its own padded sequence (the prompt computed twice) and imports
`datasets` and TRL. From the same initial model, steps, batch, learning rate and thread (the sample's 90 pairs, tiny
default model, fp32, one thread; `benchmarks/rlhf_bench.py --compare-trl`): 40 steps took 1.6 s here and 5.2 s in
RewardTrainer, 120 steps 4.7-6.1 s and 8.6 s, with peak RSS 536 MB against 624-629 MB.

    result = train(model, train_pairs, held_pairs, collator, settings, plan, checkpoint_dir, fingerprint)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_pipeline.training import checkpoints, dpo_pairs
from llm_pipeline.training.device import DevicePlan, autocast
from llm_pipeline.training.dpo_loop import LoopResult, _to, batch_order, evaluate_pairs, optimizer_and_resume
from llm_pipeline.training.dpo_train import rows_per_pass
from llm_pipeline.training.reward_scoring import pair_rewards

METRICS = ("accuracy", "margin", "rewards/chosen", "rewards/rejected")


@dataclass
class RewardLoopSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    seed: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    center_coefficient: float = 0.01
    max_grad_norm: float = 1.0


@dataclass
class RewardLoopResult(LoopResult):
    eval_seconds: float = 0.0  # held-out evaluations, the final one included
    evals_skipped: int = 0  # intermediate evaluations left out to keep within a budget's evaluation share


def _terms(model, part: dict, settings: RewardLoopSettings, plan: DevicePlan) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast(plan):
        chosen, rejected = pair_rewards(model, part)
    losses = -F.logsigmoid(chosen - rejected) + settings.center_coefficient * (chosen + rejected) ** 2
    c, r = chosen.detach(), rejected.detach()
    return losses, torch.stack([(c > r).float(), c - r, c, r])


def evaluate(model, pairs: list[dict], collator, settings: RewardLoopSettings, plan: DevicePlan) -> dict[str, float]:
    """Held-out loss, pairwise accuracy (chosen scored above rejected) and mean margin over every pair."""
    return evaluate_pairs(model, pairs, collator, settings, plan, _terms, METRICS)


def train(model, train_pairs: list[dict], held_pairs: list[dict], collator, settings: RewardLoopSettings,
          plan: DevicePlan, checkpoint_dir: Path, fingerprint: str, tracker=None, on_step=None, eval_allowed=None) -> LoopResult:
    """Train the reward model's trainable parameters (adapter and head) on tokenized pairs; evaluates every
    `eval_every` steps and at the end. `on_step(step)` may return True to stop (a time budget; tests use it to stop a
    run). `eval_allowed(seconds_so_far)` may return False to skip an intermediate evaluation (the final one stays):
    evaluations then keep within their share of a budget. The result's `eval_seconds` is what they took."""
    if not train_pairs:
        raise ValueError("no training pairs")
    device = next(model.parameters()).device
    params, optimizer, scheduler, trainable, state, note = optimizer_and_resume(model, settings, checkpoint_dir, fingerprint)
    result = RewardLoopResult()
    result.resume_note = note
    if state is not None:
        result.log, result.tokens_trained = list(state["log"]), int(state["tokens_trained"])
        result.start_step = int(state["step"])

    lengths = [p["length"] for p in train_pairs]
    per_epoch = -(-len(train_pairs) // settings.batch_size)
    epoch_batches: tuple[int, list[list[int]]] | None = None
    window: list[tuple] = []
    model.train()
    last = time.perf_counter()
    step = result.start_step
    while step < settings.steps:
        epoch, index = divmod(step, per_epoch)
        if epoch_batches is None or epoch_batches[0] != epoch:
            epoch_batches = (epoch, batch_order(lengths, settings.batch_size, settings.seed, epoch))
        idx = epoch_batches[1][index]
        batch = collator([train_pairs[i] for i in idx])
        result.tokens_trained += int((batch["segment"] != dpo_pairs.PAD).sum())
        batch = _to(batch, device)
        rows = rows_per_pass(model.config, batch["input_ids"].shape[1], device.type) or len(idx)
        step_loss, step_terms = 0.0, []
        for part in dpo_pairs.split_rows(batch, rows):
            losses, terms = _terms(model, part, settings, plan)
            loss = losses.sum() / len(idx)
            loss.backward()
            step_loss += float(loss.detach())
            step_terms.append(terms.float())
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"reward model loss became {step_loss} at step {step + 1}; lower reward_model.learning_rate")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append((step_loss, grad_norm, torch.cat(step_terms, dim=1).mean(dim=1).cpu(), lr))
        now = time.perf_counter()
        result.step_durations.append(now - last)
        last = now
        stop = bool(on_step(step)) if on_step is not None else False
        if step % settings.log_every == 0 or step == settings.steps or stop:
            terms = torch.stack([w[2] for w in window]).mean(dim=0).tolist()
            entry = {"loss": round(sum(w[0] for w in window) / len(window), 6),
                     "grad_norm": round(sum(w[1] for w in window) / len(window), 6), "learning_rate": window[-1][3],
                     **{k: round(v, 6) for k, v in zip(METRICS, terms)}, "num_tokens": result.tokens_trained,
                     "epoch": round(step / per_epoch, 4), "step": step}
            result.log.append(entry)
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)
            window = []
        if held_pairs and step % settings.eval_every == 0 and step < settings.steps and not stop:
            if eval_allowed is not None and not eval_allowed(result.eval_seconds):
                result.evals_skipped += 1
            else:
                t_eval = time.perf_counter()
                metrics = evaluate(model, held_pairs, collator, settings, plan)
                result.eval_seconds += time.perf_counter() - t_eval
                result.log.append({**{k: round(v, 6) for k, v in metrics.items()}, "step": step})
                if tracker is not None:
                    tracker.log({k.replace("eval_", "eval/", 1): v for k, v in metrics.items()}, step=step)
        if stop:
            break
        if step % settings.checkpoint_every == 0 and step < settings.steps:
            checkpoints.save_checkpoint(checkpoint_dir, step, fingerprint, trainable, optimizer, scheduler,
                                        {"log": result.log, "tokens_trained": result.tokens_trained})
            last = time.perf_counter()
    result.global_step = step
    if held_pairs:
        t_eval = time.perf_counter()
        result.eval_metrics = evaluate(model, held_pairs, collator, settings, plan)
        result.eval_seconds += time.perf_counter() - t_eval
        result.log.append({**{k: round(v, 6) for k, v in result.eval_metrics.items()}, "step": step})
    return result
