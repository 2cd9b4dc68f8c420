"""Next-token pretraining of a causal LM on packed sequences: a small plain-PyTorch loop.

AdamW, linear warmup then cosine (or linear) decay to 10% of the peak rate, gradient clipping, bf16/fp16 autocast
on GPU and fp32 on CPU (see device.py), fixed seeds, an eval loss on the held-out chunks every `eval_every` steps
with optional early stopping, and a resumable checkpoint every `checkpoint_every` steps. Used for training from
scratch and for continued pretraining of a pretrained model (domain chunks, or domain mixed with general chunks).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_pipeline.training import checkpoints
from llm_pipeline.training.device import DevicePlan, seed_everything
from llm_pipeline.training.packing import MixedChunks, PackedChunks, eval_batches
from llm_pipeline.training.tracking import Tracker

EVAL_MAX_CHUNKS = 64  # held-out chunks per evaluation: a stable figure at a few seconds' cost on CPU
MIN_LR_RATIO = 0.1  # the decay ends at 10% of the peak rate, not zero: the last steps still learn
SCHEDULES = ("cosine", "linear")


@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    grad_clip: float
    eval_every: int
    checkpoint_every: int
    seed: int
    log_every: int = 10
    early_stopping_patience: int | None = None
    schedule: str = "cosine"


@dataclass
class LoopResult:
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    resume_note: str = ""
    tokens_trained: int = 0  # over the whole run, resumed part included
    session_tokens: int = 0  # in this process only: the honest numerator for tokens per second
    seconds: float = 0.0
    eval_loss: float | None = None
    steps_done: int = 0
    stopped_early: bool = False
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0


def lr_lambda(steps: int, warmup_ratio: float, schedule: str = "cosine"):
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}")
    warmup = max(1, int(round(steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * decay

    return factor


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # No decay on norms and biases (1-D tensors): decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def autocast(plan: DevicePlan):
    if plan.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device, dtype=plan.dtype)


@torch.no_grad()
def evaluate(model, chunks: PackedChunks | None, batch_size: int, plan: DevicePlan) -> float | None:
    """Mean next-token loss per predicted token over the held-out chunks."""
    if chunks is None or len(chunks) == 0:
        return None
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(chunks, batch_size, EVAL_MAX_CHUNKS):
        batch = {k: v.to(plan.device) for k, v in batch.items()}
        with autocast(plan):
            out = model(**batch)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    model.train()
    return total / count if count else None


def _should_stop(result: LoopResult, eval_loss: float, patience: int | None) -> bool:
    """Track the best held-out loss; True once `patience` evaluations in a row failed to improve on it."""
    if result.best_eval_loss is None or eval_loss < result.best_eval_loss:
        result.best_eval_loss, result.evals_without_improvement = eval_loss, 0
        return False
    result.evals_without_improvement += 1
    return patience is not None and result.evals_without_improvement >= patience


def train(
    model,
    train_chunks: PackedChunks | MixedChunks,
    eval_chunks: PackedChunks | None,
    settings: LoopSettings,
    plan: DevicePlan,
    checkpoint_dir: Path,
    fingerprint: str,
    tracker: Tracker,
) -> LoopResult:
    seed_everything(settings.seed)
    model.to(plan.device)
    model.train()
    optimizer = make_optimizer(model, settings.learning_rate, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings.steps, settings.warmup_ratio, settings.schedule))
    scaler = torch.amp.GradScaler("cuda") if plan.precision == "fp16" else None
    result = LoopResult()

    state, result.resume_note = checkpoints.latest_checkpoint(checkpoint_dir, fingerprint)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.set_rng_state(state["rng"])
        result.log = list(state.get("log", []))
        result.tokens_trained = int(state.get("tokens_trained", 0))
        start = result.resumed_from = int(state["step"])
        result.best_eval_loss = state.get("best_eval_loss")
        result.evals_without_improvement = int(state.get("evals_without_improvement", 0))

    session_start_tokens = result.tokens_trained
    started = time.perf_counter()
    for step in range(start, settings.steps):
        batch = train_chunks.batch_for_step(step, settings.batch_size, settings.seed)
        batch = {k: v.to(plan.device) for k, v in batch.items()}
        with autocast(plan):
            loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} at step {step + 1}; lower base_checkpoint.learning_rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        result.tokens_trained += int(batch["attention_mask"].sum())
        done = step + 1
        entry: dict[str, Any] = {"step": done, "loss": round(float(loss.detach()), 5), "lr": lr}
        if done % settings.eval_every == 0 or done == settings.steps:
            entry["eval_loss"] = evaluate(model, eval_chunks, settings.batch_size, plan)
        if done % settings.log_every == 0 or "eval_loss" in entry or done == 1:
            result.log.append(entry)
            tracker.log({f"pretrain/{k}": v for k, v in entry.items() if v is not None and k != "step"}, step=done)
        result.steps_done = done
        if entry.get("eval_loss") is not None and _should_stop(result, entry["eval_loss"], settings.early_stopping_patience):
            result.stopped_early = done < settings.steps
            break
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            checkpoints.save_checkpoint(
                checkpoint_dir, done, fingerprint, model, optimizer, scheduler,
                {"log": result.log, "tokens_trained": result.tokens_trained, "best_eval_loss": result.best_eval_loss,
                 "evals_without_improvement": result.evals_without_improvement},
            )
    result.steps_done = max(result.steps_done, start)
    result.seconds = time.perf_counter() - started
    result.session_tokens = result.tokens_trained - session_start_tokens
    logged = [e["eval_loss"] for e in result.log if e.get("eval_loss") is not None]
    result.eval_loss = logged[-1] if logged and settings.steps > 0 else evaluate(model, eval_chunks, settings.batch_size, plan)
    return result
