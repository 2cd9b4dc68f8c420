"""DPO as a plain PyTorch loop for one process: what `dpo_model` runs unless it is launched on several processes.

It trains what `dpo_train.PackedDPOTrainer` trains (shared-prompt rows, cached reference log-probs, length-grouped
batches, a CPU batch backpropagated a few rows at a time) with the Trainer's defaults for what it leaves out: AdamW
(betas 0.9/0.999, no weight decay), linear warmup then cosine decay to zero, gradients clipped at norm 1, the
device's autocast precision (fp16 with a loss scaler). The log entries carry the Trainer's and DPOTrainer's names
(`loss`, `rewards/accuracies`, `eval_loss`, ...), so everything that reads a training log reads this one.

Why a loop of our own: the Trainer imports `datasets` and TRL imports much more; in one process they cost ~100 MB of
RSS and a few seconds before the first step, which on a small model is a large share of both. Under `accelerate
launch` / DeepSpeed the stage uses the Trainer (`dpo_train.make_trainer`), which handles the processes.

Checkpoints hold the trainable parameters only (the adapter, or every weight for a full fine-tune), the optimizer,
the schedule, the RNG state, the log and the early-stopping state, written atomically by `checkpoints.py`; a run
resumes from the newest one whose fingerprint matches, and the batch order of every epoch is a function of the
seed alone, so a resumed run trains the same batches as an uninterrupted one.

    result = train(model, train_pairs, held_pairs, collator, settings, plan, checkpoint_dir, fingerprint, tracker)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_pipeline import progress
from llm_pipeline.training import checkpoints, dpo_pairs
from llm_pipeline.training.device import DevicePlan, autocast
from llm_pipeline.training.dpo_train import dpo_loss, rows_per_pass, with_sft_term

# An evaluation the guard rejects sends training back to the weights it last accepted at half the learning rate, this
# many times; the next rejection ends training.
GUARD_BACKTRACKS = 2
MEGABATCH = 50  # length grouping as the Trainer's sampler: sort by length within runs of up to 50 batches of a shuffled order
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    beta: float
    loss_type: str
    seed: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    early_stopping_patience: int | None = None
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    sft_weight: float = 0.0  # the chosen answers' NLL term (dpo_model.sft_weight)


@dataclass
class LoopResult:
    log: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    start_step: int = 0
    tokens_trained: int = 0
    step_durations: list[float] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resume_note: str = ""
    stopped_early: bool = False
    best_step: int | None = None
    # The held-out guard (`train(..., guard=)`): the step whose weights were kept (the latest evaluated within it;
    # the start when none was), and whether an evaluation outside it ended training.
    guard_step: int | None = None
    guard_stopped: bool = False
    guard_backtracks: int = 0


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: a seeded shuffle, sorted by length within megabatches so that a batch holds rows of
    similar length (little padding), then the batches in a seeded order; the batch holding the longest row goes
    first, so a step that does not fit in memory fails at once, not hours in."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    # A small set gets small megabatches (a quarter of its batches' worth at most): sorting all of it would make
    # every batch a run of neighbours in length, often one domain or source, and the steps noisier.
    mega = batch_size * max(1, min(len(lengths) // (batch_size * 4), MEGABATCH))
    batches: list[list[int]] = []
    for s in range(0, len(perm), mega):
        group = sorted(perm[s : s + mega], key=lambda i: -lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]  # not shortest-to-longest
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def cosine_with_warmup(steps: int, warmup: int):
    """The Trainer's `cosine` schedule: linear warmup from 0, then half a cosine down to 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class _Trainable:
    """The trainable parameters as a state dict, for checkpoints: an adapter's few MB, not the frozen base."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        unknown = [n for n in state if n not in params]
        if unknown:
            raise RuntimeError(f"checkpoint names parameters this model does not have: {unknown[:3]}")
        with torch.no_grad():
            for n, value in state.items():
                params[n].copy_(value.to(params[n].device, params[n].dtype))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _pair_terms(model, part: dict, settings: LoopSettings, plan: DevicePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses and the detached [6, B] terms the metrics are made of (as METRICS)."""
    with autocast(plan):
        chosen, rejected, n_c, n_r = dpo_pairs.answer_logps(model, part)
    c_ratio = chosen - part["ref_chosen_logps"].to(chosen)
    r_ratio = rejected - part["ref_rejected_logps"].to(rejected)
    losses = with_sft_term(dpo_loss(settings.loss_type, settings.beta, c_ratio, r_ratio, n_c, n_r), chosen, n_c, settings.sft_weight)
    cr, rr = settings.beta * c_ratio.detach(), settings.beta * r_ratio.detach()
    terms = torch.stack([cr, rr, (cr > rr).float(), cr - rr, chosen.detach(), rejected.detach()])
    return losses, terms


def optimizer_and_resume(model, settings, checkpoint_dir: Path, fingerprint: str, weight_decay: float = 0.0):
    """AdamW and a cosine-with-warmup schedule over the trainable parameters, with the latest checkpoint of this
    `fingerprint` loaded into model, optimizer, schedule and RNG. Returns (params, optimizer, scheduler, trainable,
    state, resume_note); `state` (None without a checkpoint) holds the loop's own counters."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(settings.steps, settings.warmup_steps))
    trainable = _Trainable(model)
    state, note = checkpoints.latest_checkpoint(checkpoint_dir, fingerprint)
    if state is not None:
        trainable.load(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.set_rng_state(state["rng"])
    return params, optimizer, scheduler, trainable, state, note


@torch.no_grad()
def evaluate(model, pairs: list[dict], collator, settings: LoopSettings, plan: DevicePlan) -> dict[str, float]:
    """Held-out DPO loss and reward metrics over every pair, named as the Trainer names them (`eval_...`)."""
    return evaluate_pairs(model, pairs, collator, settings, plan, _pair_terms, METRICS)


@torch.no_grad()
def evaluate_pairs(model, pairs: list[dict], collator, settings, plan: DevicePlan, terms_fn, metrics) -> dict[str, float]:
    """Mean loss and per-pair terms (`terms_fn(model, batch, settings, plan) -> (losses, terms)`) over every held-out
    pair, in length order, named `eval_loss` and `eval_<metric>`; the model's train/eval mode is restored."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: pairs[i]["length"])
    losses, terms = [], []
    for s in range(0, len(order), settings.batch_size):
        batch = _to(collator([pairs[i] for i in order[s : s + settings.batch_size]]), device)
        lo, te = terms_fn(model, batch, settings, plan)
        losses.append(lo.float().cpu())
        terms.append(te.float().cpu())
    model.train(was_training)
    t = torch.cat(terms, dim=1).mean(dim=1).tolist()
    return {"eval_loss": float(torch.cat(losses).mean()), **{f"eval_{k}": v for k, v in zip(metrics, t)}}


def _enable_gradient_checkpointing(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # with frozen embeddings, checkpointed blocks still need a grad path


def train(model, train_pairs: list[dict], held_pairs: list[dict], collator, settings: LoopSettings, plan: DevicePlan,
          checkpoint_dir: Path, fingerprint: str, tracker=None, on_step=None, guard=None) -> LoopResult:
    """Train `model` (its trainable parameters) on tokenized pairs that carry their reference log-probs.

    `on_step(step)` is called after each optimizer step and may return True to stop (e.g. at a time budget).
    `guard(metrics)` judges each held-out evaluation: one it rejects sends training back to the weights of the latest
    evaluation it accepted (the starting weights when none) at half the learning rate, up to GUARD_BACKTRACKS times;
    the next one ends training. The model leaves with weights the guard accepted (`result.guard_step` says whose).
    With held-out pairs, the model is evaluated every `eval_every` steps and at the end; with early stopping, training
    stops after `early_stopping_patience` evaluations without a lower held-out loss and the best weights are restored.
    """
    if not train_pairs:
        raise ValueError("no training pairs")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if settings.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(settings.steps, settings.warmup_steps))
    scaler = torch.amp.GradScaler(device.type) if plan.precision == "fp16" else None
    trainable = _Trainable(model)
    early = settings.early_stopping_patience is not None and bool(held_pairs)
    best: dict[str, Any] = {"loss": None, "step": None, "state": None, "bad_evals": 0}

    result = LoopResult()
    state, result.resume_note = checkpoints.latest_checkpoint(checkpoint_dir, fingerprint)
    if state is not None:
        trainable.load(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.set_rng_state(state["rng"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        result.log, result.tokens_trained = list(state["log"]), int(state["tokens_trained"])
        best = dict(state["best"])
        result.start_step = int(state["step"])

    guarded = guard is not None and bool(held_pairs)
    accepted = {"step": result.start_step, "state": trainable.state_dict() if guarded else None}
    lengths = [p["length"] for p in train_pairs]
    per_epoch = -(-len(train_pairs) // settings.batch_size)
    epoch_batches: tuple[int, list[list[int]]] | None = None
    window: list[tuple] = []  # (loss, grad norm, mean terms, learning rate) of each step since the last log
    model.train()
    last = time.perf_counter()
    step = result.start_step
    meter = progress.meter("dpo_model", total=settings.steps, unit="step", rate_unit="tokens", start=step)
    start_tokens = result.tokens_trained
    while step < settings.steps:
        epoch, index = divmod(step, per_epoch)
        if epoch_batches is None or epoch_batches[0] != epoch:
            epoch_batches = (epoch, batch_order(lengths, settings.batch_size, settings.seed, epoch))
        idx = epoch_batches[1][index]
        batch = collator([train_pairs[i] for i in idx])
        n = len(idx)
        result.tokens_trained += int((batch["segment"] != dpo_pairs.PAD).sum())
        batch = _to(batch, device)
        rows = rows_per_pass(model.config, batch["input_ids"].shape[1], device.type) or n
        step_loss, step_terms = 0.0, []
        for part in dpo_pairs.split_rows(batch, rows):
            losses, terms = _pair_terms(model, part, settings, plan)
            loss = losses.sum() / n
            (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += float(loss.detach())
            step_terms.append(terms.float())
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"DPO loss became {step_loss} at step {step + 1}; lower dpo_model.learning_rate or beta")
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)) if settings.max_grad_norm else None
        lr = scheduler.get_last_lr()[0]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append((step_loss, grad_norm, torch.cat(step_terms, dim=1).mean(dim=1).cpu(), lr))
        now = time.perf_counter()
        result.step_durations.append(now - last)
        last = now

        meter.update(step, tokens=result.tokens_trained - start_tokens, loss=step_loss)
        stop = bool(on_step(step)) if on_step is not None else False
        if step % settings.log_every == 0 or step == settings.steps or stop:
            entry = _log_entry(window, step, per_epoch, result.tokens_trained)
            result.log.append(entry)
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in entry.items() if k != "step" and v is not None}, step=step)
            window = []
        if held_pairs and step % settings.eval_every == 0 and step < settings.steps and not stop:
            metrics = evaluate(model, held_pairs, collator, settings, plan)
            result.log.append({**{k: round(v, 6) for k, v in metrics.items()}, "epoch": round(step / per_epoch, 4), "step": step})
            if tracker is not None:
                tracker.log({k.replace("eval_", "eval/", 1): v for k, v in metrics.items()}, step=step)
            if guarded:
                if guard(metrics):
                    accepted = {"step": step, "state": trainable.state_dict()}
                elif result.guard_backtracks < GUARD_BACKTRACKS:
                    # Back to the weights it accepted, at half the learning rate (fresh AdamW moments: the old ones
                    # point where it just went too far); the step count goes on.
                    result.guard_backtracks += 1
                    trainable.load(accepted["state"])
                    optimizer.state.clear()
                    scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]
                    result.log.append({"guard": f"held-out evaluation outside the guard: back to the weights of step "
                                                f"{accepted['step']} at half the learning rate", "step": step})
                else:
                    result.guard_stopped = stop = True
            if early:
                if best["loss"] is None or metrics["eval_loss"] < best["loss"]:
                    best = {"loss": metrics["eval_loss"], "step": step, "state": trainable.state_dict(), "bad_evals": 0}
                else:
                    best["bad_evals"] += 1
                    if best["bad_evals"] >= settings.early_stopping_patience:
                        result.stopped_early = stop = True
        if stop:
            break
        if step % settings.checkpoint_every == 0 and step < settings.steps:
            extra = {"log": result.log, "tokens_trained": result.tokens_trained, "best": best,
                     "scaler": scaler.state_dict() if scaler is not None else None}
            checkpoints.save_checkpoint(checkpoint_dir, step, fingerprint, trainable, optimizer, scheduler, extra)
            last = time.perf_counter()  # the write is not a training step's time

    result.global_step = step
    meter.close()
    if held_pairs:
        final = evaluate(model, held_pairs, collator, settings, plan)
        if early and best["state"] is not None and best["loss"] < final["eval_loss"]:
            trainable.load(best["state"])  # the best evaluated weights, as load_best_model_at_end
            final = evaluate(model, held_pairs, collator, settings, plan)
            result.best_step = best["step"]
        if guarded:
            if guard(final):
                accepted = {"step": step, "state": None}
            else:  # back to the latest weights the guard accepted
                trainable.load(accepted["state"])
                final = evaluate(model, held_pairs, collator, settings, plan)
            result.guard_step = accepted["step"]
        result.eval_metrics = final
        result.log.append({**{k: round(v, 6) for k, v in final.items()}, "epoch": round(step / per_epoch, 4), "step": step})
        if tracker is not None:
            tracker.log({k.replace("eval_", "eval/", 1): v for k, v in final.items()}, step=step)
    if settings.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    return result


def _log_entry(window: list, step: int, per_epoch: int, tokens: int) -> dict[str, Any]:
    losses = [w[0] for w in window]
    norms = [w[1] for w in window if w[1] is not None]
    terms = torch.stack([w[2] for w in window]).mean(dim=0).tolist()
    return {
        "loss": round(sum(losses) / len(losses), 6),
        "grad_norm": round(sum(norms) / len(norms), 6) if norms else None,
        "learning_rate": window[-1][3],
        **{k: round(v, 6) for k, v in zip(METRICS, terms)},
        "num_tokens": tokens,
        "epoch": round(step / per_epoch, 4),
        "step": step,
    }
