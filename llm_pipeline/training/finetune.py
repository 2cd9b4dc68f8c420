"""What the SFT and DPO stages share: the adapter per method, trainer arguments, checkpoints to resume from, and
figures read out of a trainer's log history.

TRL's own defaults are for full fine-tuning on GPUs (bf16 on, gradient checkpointing on, learning rates 2e-5 / 1e-6);
every such argument is set here from the settings `defaults.choose` picked, so the reasons reach the stage metadata.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from llm_pipeline.config import LoraAdapterConfig
from llm_pipeline.training.defaults import Settings
from llm_pipeline.training.device import DevicePlan

FINGERPRINT = "run_fingerprint.json"  # beside the checkpoints: a checkpoint of another run is never resumed


class FinetuneError(ValueError):
    """A fine-tuning setup that cannot run here (method unsupported on this device, missing files)."""


def resolve_method(lc: LoraAdapterConfig, plan: DevicePlan) -> tuple[str, str]:
    """The method that will run and why: qlora needs CUDA and bitsandbytes, else it stops or falls back to lora."""
    if lc.method != "qlora":
        return lc.method, "set in config"
    missing = "a CUDA GPU (4-bit bitsandbytes kernels)" if plan.use_cpu else None
    if missing is None and importlib.util.find_spec("bitsandbytes") is None:
        missing = "the bitsandbytes package, which this install does not include"
    if missing is None:
        return "qlora", "CUDA and bitsandbytes present: base weights in 4-bit NF4, LoRA on top"
    if lc.qlora_fallback == "lora":
        return "lora", f"qlora needs {missing}; fell back to plain lora (lora_adapter.qlora_fallback: lora)"
    raise FinetuneError(
        f"lora_adapter.method 'qlora' needs {missing}. Use method 'lora', or set lora_adapter.qlora_fallback: lora "
        "to train plain LoRA when QLoRA cannot run"
    )


def quantization_config(method: str):
    """The 4-bit loading config for qlora (None for every other method)."""
    if method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def peft_config(lc: LoraAdapterConfig, method: str):
    """The PEFT config for `method`, or None for full fine-tuning."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig

    if method == "full":
        return None
    if method == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=lc.num_virtual_tokens)
    if method == "ia3":
        # IA3 scales activations; PEFT's per-architecture default modules are the tested choice, unless listed.
        targets = None if lc.target_modules == "all-linear" else lc.target_modules
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=[] if targets else None)
    return LoraConfig(
        task_type="CAUSAL_LM", r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
        use_dora=method == "dora", bias="none",
    )


def trainer_args(settings: Settings, work: Path, *, max_steps: int, batch_size: int, seed: int, report_to: str,
                 run_name: str, eval_every: int | None, checkpoint_every: int | None, early_stopping: bool,
                 budgeted: bool = False) -> dict[str, Any]:
    """TrainingArguments fields shared by the SFT and DPO trainers. `budgeted`: a time budget lays the schedule,
    evaluations and checkpoints over seconds (`budget.py`); `max_steps` is then a cap (`budget.BUDGET_STEP_CAP`: none)."""
    from llm_pipeline.training.budget import BUDGET_STEP_CAP

    precision = settings.value("precision")
    if budgeted:  # evaluations at shares of the budget, unless set in steps
        eval_steps = eval_every or BUDGET_STEP_CAP
    else:
        eval_steps = eval_every or max(1, -(-max_steps // 3))  # three held-out evaluations, the last at the final step
    # Early stopping keeps the best checkpoint, which needs a save at every evaluation.
    save_steps = eval_steps if early_stopping else (checkpoint_every or eval_steps)
    checkpointing = bool(settings.value("gradient_checkpointing"))
    return {
        "output_dir": str(work),
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": settings.value("learning_rate"),
        "lr_scheduler_type": "cosine",
        # Under a budget the scheduler follows the clock (warmup as a share of it) and the step count is unknown:
        # every step is logged.
        "warmup_steps": 0 if budgeted else int(round(settings.value("warmup_ratio") * max_steps)),
        "logging_steps": 1 if budgeted and max_steps >= BUDGET_STEP_CAP else max(1, max_steps // 20),
        "eval_strategy": "steps",
        "eval_steps": eval_steps,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,  # the latest (to resume) and the best (early stopping) at most
        "save_only_model": False,  # optimizer and scheduler too: a resumed run continues exactly
        "load_best_model_at_end": early_stopping,
        "metric_for_best_model": "eval_loss" if early_stopping else None,
        "greater_is_better": False if early_stopping else None,
        "use_cpu": settings.value("device") == "cpu",
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",  # the Trainer adds a loss scaler with fp16
        # transformers 5 reads the new name and only warns about the old; both say the same.
        "activation_checkpointing": checkpointing,
        "gradient_checkpointing": checkpointing,
        "seed": seed,
        "data_seed": seed,
        "report_to": report_to,
        "run_name": run_name,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,  # our collators read extra columns (segment lengths, domains)
    }


def prepare_work_dir(work: Path, fingerprint: dict[str, Any]) -> str | None:
    """The checkpoint to resume from, if `work` holds one of the same run; otherwise `work` is emptied.

    The fingerprint names the config and input versions: a checkpoint from other data or settings must not be
    continued as if it were this run.
    """
    marker = work / FINGERPRINT
    if marker.exists() and json.loads(marker.read_text()) == fingerprint:
        done = sorted((p for p in work.glob("checkpoint-*") if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[1]))
        if done:
            return str(done[-1])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(fingerprint, sort_keys=True))
    return None


def parameter_counts(model) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_share": round(trainable / total, 5) if total else 0.0}


def final_eval(trainer) -> dict[str, float]:
    """Held-out metrics at the final step: reused from the log when the last scheduled evaluation ran there."""
    log = trainer.state.log_history
    evals = [e for e in log if "eval_loss" in e]
    if evals and evals[-1].get("step") == trainer.state.global_step and not trainer.args.load_best_model_at_end:
        return evals[-1]
    return trainer.evaluate()


def last_logged(log_history: list[dict], key: str) -> float | None:
    for entry in reversed(log_history):
        if key in entry:
            return round(float(entry[key]), 5)
    return None


def first_logged(log_history: list[dict], key: str) -> float | None:
    for entry in log_history:
        if key in entry:
            return round(float(entry[key]), 5)
    return None


def merge_export(model, tokenizer, folder: Path) -> None:
    """Base + adapter merged into plain weights (`merge_and_unload`), loadable without PEFT."""
    merged = model.merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def step_timer_callback():
    """A TrainerCallback that records each optimizer step's wall time in `.durations` (seconds, from the end of the
    previous step, so data loading counts). The first step carries the warm-up (allocator, kernel selection)."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []
            self._last: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._last is not None:
                self.durations.append(now - self._last)
            self._last = now

    return StepTimer()


def progress_callback(label: str):
    """A TrainerCallback that reports step/total, loss and tokens/s to llm_pipeline.progress after every step (the
    meter decides how often a line shows). Loss and tokens come from the Trainer's logs (every `logging_steps`)."""
    from transformers import TrainerCallback

    from llm_pipeline import progress

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.meter: progress.Meter | None = None
            self.loss: float | None = None
            self.tokens: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            total = args.max_steps if 0 < args.max_steps < 10**8 else None  # a time budget caps no step count
            self.meter = progress.meter(label, total=total, unit="step", rate_unit="tokens", start=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.loss = float(logs["loss"])
            if "num_tokens" in logs:
                self.tokens = int(logs["num_tokens"])

        def on_step_end(self, args, state, control, **kwargs):
            if self.meter is not None:
                self.meter.update(state.global_step, tokens=self.tokens, loss=self.loss)

        def on_train_end(self, args, state, control, **kwargs):
            if self.meter is not None:
                self.meter.close(loss=self.loss)

    return ProgressCallback()


def step_seconds(durations: list[float]) -> dict:
    """The first step's time and the median of the rest: what a step costs once warm, for planning a time budget."""
    if not durations:
        return {"first_step_seconds": None, "step_seconds": None}
    return {"first_step_seconds": round(durations[0], 3), "step_seconds": round(statistics.median(durations[1:] or durations[:1]), 3)}
