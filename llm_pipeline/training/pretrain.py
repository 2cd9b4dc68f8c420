"""Next-token pretraining of a causal LM on packed sequences: a small PyTorch loop driven by Hugging Face Accelerate.

AdamW, linear warmup then cosine (or linear) decay to 10% of the peak rate, gradient clipping, bf16/fp16 autocast
on GPU and fp32 on CPU (see device.py), fixed seeds, an eval loss on the held-out chunks every `eval_every` steps
with optional early stopping, and a resumable checkpoint every `checkpoint_every` steps. Used for training from
scratch and for continued pretraining of a pretrained model (domain chunks, or domain mixed with general chunks).

One process (Dagster, the CLI, tests) trains exactly as a plain loop would. Under `accelerate launch`, `torchrun` or
`deepspeed` (see launch.py) the same stage entry runs in every process and `Accelerator` picks the setup up from the
environment: DDP, or DeepSpeed ZeRO with the JSON the launcher names. Each step's global batch is then
`batch_size x processes` rows of the seeded chunk order, rank r taking the r-th `batch_size` of them; gradients are
averaged across processes, train and eval losses are averaged over all ranks, and only rank 0 tracks, writes
checkpoints (all ranks write their shards under DeepSpeed) and saves the model.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_pipeline import progress
from llm_pipeline.training import budget, checkpoints
from llm_pipeline.training.device import DevicePlan, autocast, seed_everything
from llm_pipeline.training.packing import MixedChunks, PackedChunks, eval_batches
from llm_pipeline.training.tracking import Tracker

EVAL_MAX_CHUNKS = 64  # held-out chunks per evaluation: a stable figure at a few seconds' cost on CPU
MIN_LR_RATIO = 0.1  # the decay ends at 10% of the peak rate, not zero: the last steps still learn
SCHEDULES = ("cosine", "linear")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # device plan -> Accelerate's name
DS_PATTERN = "step-*.ds"  # DeepSpeed checkpoints are folders (one shard per rank), beside checkpoints.PATTERN files
DS_LOOP_STATE = "loop_state.pt"  # step, fingerprint, schedule, RNG and log: what DeepSpeed's own files do not hold


@dataclass
class LoopSettings:
    steps: int
    batch_size: int  # per process: the global batch is batch_size x processes
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
    # A budget in seconds of training (budget.py): the schedule follows the share of it spent (or of `steps`, when
    # further along), the run stops before a step that would end past it, and intermediate evaluations are skipped
    # once they would take more than budget.MAX_EVAL_SHARE of it.
    max_seconds: float | None = None
    # The share of max_seconds the evaluations may take (None = budget.MAX_EVAL_SHARE): less when the stage has other
    # held-out work to fit in the same share.
    eval_share: float | None = None


@dataclass
class LoopResult:
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    resume_note: str = ""
    tokens_trained: int = 0  # over the whole run and all processes, resumed part included
    session_tokens: int = 0  # in this run only: the honest numerator for tokens per second
    seconds: float = 0.0
    eval_loss: float | None = None
    steps_done: int = 0
    stopped_early: bool = False
    stopped_by_budget: bool = False
    eval_seconds: float = 0.0  # spent in held-out evaluations during the run
    evals_skipped: int = 0  # intermediate evaluations left out to keep them within the budget's share
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    world_size: int = 1
    accelerator: Any = field(default=None, repr=False)
    prepared: Any = field(default=None, repr=False)  # the model as Accelerate wrapped it (itself, DDP or a DeepSpeed engine)

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def deepspeed(self) -> bool:
        return self.accelerator is not None and self.accelerator.distributed_type.value == "DEEPSPEED"


def lr_lambda(steps: int, warmup_ratio: float, schedule: str = "cosine", clock=None):
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}")
    warmup = max(1, int(round(steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def by_time(step: int) -> float:
        # Under a budget: warmup and decay over the share of it spent (or of the step cap, when further along).
        progress = clock.progress(step, steps)
        if warmup_ratio > 0 and progress < warmup_ratio:
            return max(progress, 1 / max(1, steps)) / warmup_ratio
        progress = min(1.0, (progress - warmup_ratio) / max(1e-9, 1 - warmup_ratio))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * decay

    if clock is not None:
        return by_time

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


@torch.no_grad()
def evaluate(model, chunks: PackedChunks | None, batch_size: int, plan: DevicePlan, accelerator=None) -> float | None:
    """Mean next-token loss per predicted token over the held-out chunks.

    With several processes each rank scores every world-th batch and the sums are added up, so the figure is the one
    a single process computes. `model` is the unwrapped module (no DDP forward, which would sync buffers); every rank
    must call this, as it is a collective.
    """
    if chunks is None or len(chunks) == 0:
        return None
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    device = accelerator.device if accelerator is not None else plan.device
    batches = list(eval_batches(chunks, batch_size, EVAL_MAX_CHUNKS))
    mine = batches[rank::world]
    # ZeRO-3 gathers parameters collectively inside forward: every rank must run as many forwards as the busiest one.
    rounds = -(-len(batches) // world) if world > 1 and _zero3(accelerator) else len(mine)
    model.eval()
    total, count = 0.0, 0
    for i in range(rounds):
        batch = {k: v.to(device) for k, v in (mine[i] if i < len(mine) else batches[0]).items()}
        with autocast(plan):
            out = model(**batch)
        if i < len(mine):
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(out.loss) * n
            count += n
    model.train()
    if world > 1:
        summed = accelerator.reduce(torch.tensor([total, count], dtype=torch.float64, device=device), "sum")
        total, count = float(summed[0]), int(summed[1])
    return total / count if count else None


def _zero3(accelerator) -> bool:
    if accelerator is None or accelerator.distributed_type.value != "DEEPSPEED":
        return False
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) == 3


def _should_stop(result: LoopResult, eval_loss: float, patience: int | None) -> bool:
    """Track the best held-out loss; True once `patience` evaluations in a row failed to improve on it."""
    if result.best_eval_loss is None or eval_loss < result.best_eval_loss:
        result.best_eval_loss, result.evals_without_improvement = eval_loss, 0
        return False
    result.evals_without_improvement += 1
    return patience is not None and result.evals_without_improvement >= patience


def make_accelerator(plan: DevicePlan):
    """An `Accelerator` for this process: plain in a single process, DDP or DeepSpeed as a launcher set it up."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps one state per process; one left by an earlier stage (the HF Trainer of lora_adapter in a
    # Dagster process) would pin its own precision. The Trainer resets it the same way.
    AcceleratorState._reset_state(reset_partial_state=True)
    # cpu=True is what makes Accelerate join a torchrun/mpirun group over gloo on CPU (DDP); Accelerate ignores a
    # DeepSpeed launch under cpu=True, so that one (usable on CPU in a single process, e.g. to test it) goes without.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(mixed_precision=MIXED_PRECISION[plan.precision], cpu=plan.use_cpu and not deepspeed)
    if accelerator.device.type != plan.device:
        raise RuntimeError(f"Accelerate placed this process on {accelerator.device.type} but the device plan says {plan.device} "
                           "(ACCELERATE_USE_CPU set on a GPU machine?): launch without --cpu, or run where the plan's device is")
    if accelerator.gradient_accumulation_steps != 1:
        raise RuntimeError("the base_checkpoint loop takes one optimizer step per batch: drop gradient accumulation from "
                           "the launch (raise base_checkpoint.batch_size or the number of processes instead)")
    return accelerator


def _fill_deepspeed(accelerator, settings: LoopSettings, plan: DevicePlan, hidden_size: int) -> None:
    """Replace the "auto" values of the launch's DeepSpeed JSON in place, before `prepare` hands it to DeepSpeed."""
    from llm_pipeline.training.launch import pretrain_deepspeed_config

    config = accelerator.state.deepspeed_plugin.deepspeed_config
    filled = pretrain_deepspeed_config(config, batch_size=settings.batch_size, grad_clip=settings.grad_clip,
                                       precision=plan.precision, hidden_size=hidden_size, num_processes=accelerator.num_processes)
    config.clear()
    config.update(filled)


def _restore(result: LoopResult, state: dict[str, Any], optimizer, scheduler) -> int:
    scheduler.load_state_dict(state["scheduler"])
    # The rate the next step uses, whatever the optimizer's own state held (DeepSpeed restores its own copy).
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
    checkpoints.set_rng_state(state["rng"])
    result.log = list(state.get("log", []))
    result.tokens_trained = int(state.get("tokens_trained", 0))
    result.best_eval_loss = state.get("best_eval_loss")
    result.evals_without_improvement = int(state.get("evals_without_improvement", 0))
    return int(state["step"])


def latest_deepspeed_checkpoint(folder: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str, Path | None]:
    """The newest DeepSpeed checkpoint folder whose loop state matches `fingerprint` (cf. checkpoints.latest_checkpoint)."""
    paths = sorted(p for p in Path(folder).glob(DS_PATTERN) if p.is_dir()) if Path(folder).is_dir() else []
    if not paths:
        return None, "no checkpoint: starting from step 0", None
    path = paths[-1]
    try:
        state = torch.load(path / DS_LOOP_STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # cut short by a crash: unusable, not fatal
        return None, f"checkpoint {path.name} unreadable ({type(exc).__name__}): starting from step 0", None
    if state.get("fingerprint") != fingerprint:
        return None, f"checkpoint {path.name} is from a different config or data: starting from step 0", None
    return state, f"resumed from {path.name}", path


def save_deepspeed_checkpoint(accelerator, folder: Path, step: int, fingerprint: str, scheduler, extra: dict[str, Any]) -> Path:
    """Every rank writes its ZeRO shards (accelerator.save_state) into a temp folder; rank 0 adds the loop state,
    renames it to step-<n>.ds and drops older ones. A collective: all ranks call it."""
    folder = Path(folder)
    final, tmp = folder / f"step-{step:07d}.ds", folder / f".step-{step:07d}.ds.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save({"step": step, "fingerprint": fingerprint, "scheduler": scheduler.state_dict(),
                    "rng": checkpoints.rng_state(), **extra}, tmp / DS_LOOP_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in folder.glob(DS_PATTERN):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _unwrap(accelerator, prepared):
    """The bare module. `accelerator.unwrap_model` would import DeepSpeed (over a second) just to check for it."""
    if accelerator.distributed_type.value == "DEEPSPEED":
        return accelerator.unwrap_model(prepared)
    return prepared.module if isinstance(prepared, torch.nn.parallel.DistributedDataParallel) else prepared


def _same_start_everywhere(accelerator, start: int) -> None:
    """Each rank read the checkpoint folder itself; one that saw another step (no shared file system) would train
    different weights or hang, so stop at once instead."""
    if accelerator.num_processes == 1:
        return
    starts = accelerator.gather(torch.tensor([start], device=accelerator.device)).tolist()
    if len(set(starts)) > 1:
        raise RuntimeError(f"ranks found different checkpoints to resume from (steps {starts}): the checkpoint folder "
                           "must be on a file system every process sees")


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
    accelerator = make_accelerator(plan)
    world, rank = accelerator.num_processes, accelerator.process_index
    result = LoopResult(world_size=world, accelerator=accelerator)
    model.to(accelerator.device)
    model.train()
    optimizer = make_optimizer(model, settings.learning_rate, settings.weight_decay)
    # The schedule counts optimizer steps and is never given to `prepare` (Accelerate would step it once per process).
    clock = budget.Clock(settings.max_seconds) if settings.max_seconds else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings.steps, settings.warmup_ratio, settings.schedule, clock))
    start = 0
    if result.deepspeed:
        _fill_deepspeed(accelerator, settings, plan, model.config.hidden_size)
        prepared, prepared_optimizer = accelerator.prepare(model, optimizer)
        state, result.resume_note, path = latest_deepspeed_checkpoint(checkpoint_dir, fingerprint)
        if state is not None:
            accelerator.load_state(str(path))
            start = _restore(result, state, optimizer, scheduler)
    else:
        state, result.resume_note = checkpoints.latest_checkpoint(checkpoint_dir, fingerprint)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = _restore(result, state, optimizer, scheduler)
        prepared, prepared_optimizer = accelerator.prepare(model, optimizer)
    _same_start_everywhere(accelerator, start)
    result.resumed_from = start
    result.prepared = prepared
    module = _unwrap(accelerator, prepared)  # for evaluation and plain state dicts
    # Without DeepSpeed or a loss scaler, Accelerate's clip and optimizer wrappers end in torch's own calls, after a
    # version check, a DTensor scan and two disk probes for the optional `lomo` package per step (~1 ms: 7-10% of a
    # tiny model's step on CPU). Call torch directly then; the wrappers where they do something (fp16, DeepSpeed).
    direct = not result.deepspeed and accelerator.scaler is None
    stepper = optimizer if direct else prepared_optimizer
    clip = torch.nn.utils.clip_grad_norm_ if direct else accelerator.clip_grad_norm_

    session_start_tokens = result.tokens_trained
    started = time.perf_counter()
    meter = progress.meter("base_checkpoint", total=settings.steps, unit="step", rate_unit="tokens", start=start)
    if clock is not None:
        clock.start()
    evals = 0
    for step in range(start, settings.steps):
        # The global batch of `step` is rows [step*B*W, (step+1)*B*W) of the seeded order; rank r takes the r-th B.
        batch = train_chunks.batch_for_step(step * world + rank, settings.batch_size, settings.seed)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss = prepared(**batch).loss  # prepare() wrapped forward in the plan's autocast (DeepSpeed casts the weights)
        if world > 1:  # one all-reduce carries both figures
            summed = accelerator.reduce(torch.stack([loss.detach().double(), batch["attention_mask"].sum().double()]), "sum")
            step_loss, step_tokens = float(summed[0]) / world, int(summed[1])
        else:
            step_loss, step_tokens = float(loss.detach()), int(batch["attention_mask"].sum())
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at step {step + 1}; lower base_checkpoint.learning_rate")
        stepper.zero_grad(set_to_none=True)
        accelerator.backward(loss)  # DDP all-reduces gradients here; a DeepSpeed engine also steps its optimizer
        clip(prepared.parameters(), settings.grad_clip)  # unscales fp16 gradients first; DeepSpeed clips by its config
        stepper.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        result.tokens_trained += step_tokens
        done = step + 1
        entry: dict[str, Any] = {"step": done, "loss": round(step_loss, 5), "lr": lr}
        if clock is not None:
            # Room must stay for the final evaluation: reserve what the longest one took.
            clock.step_done(reserve=max((e.get("eval_seconds", 0.0) for e in result.log), default=0.0))
            result.stopped_by_budget = clock.must_stop and done < settings.steps
        last = done == settings.steps or result.stopped_by_budget
        if done % settings.eval_every == 0 or last:
            share = budget.MAX_EVAL_SHARE if settings.eval_share is None else settings.eval_share
            if last or clock is None or (evals + 1) * _longest_eval(result) <= share * clock.budget:
                t_eval = time.perf_counter()
                entry["eval_loss"] = evaluate(module, eval_chunks, settings.batch_size, plan, accelerator)
                entry["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
                result.eval_seconds += entry["eval_seconds"]
                evals += 1
            else:
                result.evals_skipped += 1
        if done % settings.log_every == 0 or "eval_loss" in entry or done == 1:
            result.log.append(entry)
            if result.is_main:
                tracker.log({f"pretrain/{k}": v for k, v in entry.items() if v is not None and k != "step"}, step=done)
        result.steps_done = done
        meter.update(done, tokens=result.tokens_trained - session_start_tokens, loss=step_loss,
                     eval_loss=entry.get("eval_loss"))
        if result.stopped_by_budget:
            break
        if entry.get("eval_loss") is not None and _should_stop(result, entry["eval_loss"], settings.early_stopping_patience):
            result.stopped_early = done < settings.steps
            break
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            extra = {"log": result.log, "tokens_trained": result.tokens_trained, "best_eval_loss": result.best_eval_loss,
                     "evals_without_improvement": result.evals_without_improvement}
            if result.deepspeed:
                save_deepspeed_checkpoint(accelerator, checkpoint_dir, done, fingerprint, scheduler, extra)
            else:
                if result.is_main:  # DDP keeps every rank's weights and optimizer identical: rank 0's copy is the run's
                    checkpoints.save_checkpoint(checkpoint_dir, done, fingerprint, module, optimizer, scheduler, extra)
                if world > 1:
                    accelerator.wait_for_everyone()
    result.steps_done = max(result.steps_done, start)
    result.seconds = time.perf_counter() - started
    meter.close()
    result.session_tokens = result.tokens_trained - session_start_tokens
    logged = [e["eval_loss"] for e in result.log if e.get("eval_loss") is not None]
    result.eval_loss = logged[-1] if logged and settings.steps > 0 else evaluate(module, eval_chunks, settings.batch_size, plan, accelerator)
    return result


def _longest_eval(result: LoopResult) -> float:
    return max((e.get("eval_seconds", 0.0) for e in result.log), default=0.0)


def save_trained_model(result: LoopResult, model, output_dir: Path) -> None:
    """`save_pretrained` the trained weights into `output_dir` from rank 0, the others waiting at a barrier.

    Under DeepSpeed every rank must call this: the fp32 master weights are gathered from the ZeRO partitions (a
    collective), so the saved model is the same fp32 model a single process writes.
    """
    accelerator = result.accelerator
    if result.deepspeed:
        state = _gather_fp32_state(accelerator, result.prepared)
        if result.is_main:
            module = accelerator.unwrap_model(result.prepared)
            module.config.use_cache = True
            module.save_pretrained(output_dir, state_dict=state)
            module.config.dtype = "float32"  # DeepSpeed cast the live module to 16 bits; the weights written are fp32
            module.config.save_pretrained(output_dir)
    elif result.is_main:
        model.to("cpu")
        model.config.use_cache = True
        # transformers 5 always writes safetensors (the safe_serialization switch is gone).
        model.save_pretrained(output_dir)
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def _gather_fp32_state(accelerator, engine) -> dict[str, torch.Tensor]:
    """Full fp32 parameters (DeepSpeed's master copies) plus persistent buffers, on CPU; a collective under ZeRO."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(engine)
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:  # no optimizer partition holds it (a frozen parameter): its own value is the full one
            full = param.detach().float()
        state[name] = full.detach().cpu().contiguous()
    for prefix, sub in module.named_modules():
        for name, buf in sub.named_buffers(recurse=False):
            if name not in sub._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu()
    return state
