"""What the SFT and DPO stages share: adapter construction per method, learning-rate and precision defaults for
TRL trainers, and reading figures out of a trainer's log history.

TRL's own defaults are for full fine-tuning on GPUs (bf16 on, gradient checkpointing on, learning rates 2e-5 / 1e-6);
on a CPU without bf16 and with adapters those make training slow and leave the model where it was, so every
such argument is set here explicitly, with the reason recorded in the stage metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_pipeline.config import LoraAdapterConfig
from llm_pipeline.training.device import DevicePlan

# Adapter methods train few parameters from a zero/identity start and need far larger steps than full fine-tuning.
SFT_LEARNING_RATES = {"lora": 1e-3, "dora": 1e-3, "ia3": 5e-3, "full": 1e-4}
DPO_LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "ia3": 1e-3, "full": 5e-6}


class FinetuneError(ValueError):
    """A fine-tuning setup that cannot run here (method unsupported on this device, missing files)."""


def learning_rate(configured: float | None, method: str, table: dict[str, float]) -> tuple[float, str]:
    if configured is not None:
        return configured, "set in config"
    return table[method], f"default for method {method!r} (adapter methods need larger steps than full fine-tuning)"


def trainer_precision(plan: DevicePlan) -> dict[str, Any]:
    """TrainingArguments fields for the planned device/precision (TRL would otherwise force bf16, even on CPU)."""
    return {"use_cpu": plan.use_cpu, "bf16": plan.precision == "bf16", "fp16": plan.precision == "fp16"}


def common_args(output_dir: Path, max_steps: int, batch_size: int, lr: float, seed: int, report_to: str, run_name: str) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, max_steps // 20),
        "logging_steps": max(1, max_steps // 20),
        "eval_strategy": "steps",
        "eval_steps": max(1, -(-max_steps // 3)),  # three held-out evaluations per run, the last at the final step
        "save_strategy": "no",  # the stage saves the adapter itself, into its output folder
        # TRL defaults this to on: an extra forward per step that buys nothing on small models. Both names, because
        # transformers 5 reads the new one and only warns about the old.
        "activation_checkpointing": False,
        "gradient_checkpointing": False,
        "seed": seed,
        "data_seed": seed,
        "report_to": report_to,
        "run_name": run_name,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",
    }


def peft_config(lc: LoraAdapterConfig, plan: DevicePlan):
    """The PEFT config for the configured method, or None for full fine-tuning."""
    from peft import IA3Config, LoraConfig

    if lc.method == "qlora":
        if plan.use_cpu:
            raise FinetuneError("lora_adapter.method 'qlora' needs a CUDA GPU (4-bit bitsandbytes kernels); on CPU use 'lora'")
        raise FinetuneError("lora_adapter.method 'qlora' needs the bitsandbytes package, which this install does not include; use 'lora'")
    if lc.method == "prefix":
        raise FinetuneError("lora_adapter.method 'prefix' is not supported by this pipeline; use 'lora', 'dora', 'ia3' or 'full'")
    if lc.method == "full":
        return None
    if lc.method == "ia3":
        # IA3 scales activations; PEFT's per-architecture default modules are the tested choice, unless listed.
        targets = None if lc.target_modules == "all-linear" else lc.target_modules
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=[] if targets else None)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.target_modules,
        use_dora=lc.method == "dora",
        bias="none",
    )


def parameter_counts(model) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_share": round(trainable / total, 5) if total else 0.0}


def final_eval(trainer) -> dict[str, float]:
    """Held-out metrics at the final step: reused from the log when the last scheduled evaluation ran there."""
    log = trainer.state.log_history
    evals = [e for e in log if "eval_loss" in e]
    if evals and evals[-1].get("step") == trainer.state.global_step:
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


def tokens_per_second(log_history: list[dict]) -> float | None:
    tokens = last_logged(log_history, "num_input_tokens_seen")
    runtime = last_logged(log_history, "train_runtime")
    return round(tokens / runtime, 1) if tokens and runtime else None
