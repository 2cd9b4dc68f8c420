"""Training settings chosen per device and method, each with the reason it was chosen.

The libraries we build on default to what suits full fine-tuning on a large GPU: TRL 1.16 turns bf16 autocast on even
on a CPU without native bf16 (over 7x slower than fp32 on such CPUs), turns gradient checkpointing on (an extra
forward per step), and uses full-fine-tuning learning rates (SFT 2e-5, DPO 1e-6) that barely move a LoRA adapter in a
short run. Here every such setting is decided explicitly:

    settings = choose(stage="sft", method="lora", plan=plan, n_params=..., activation_bytes=..., overrides={...})
    settings.value("learning_rate"), settings.as_metadata()  # {setting: {"value": ..., "reason": ...}}

A value set in the config always wins, with the reason "set in config".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.training import device
from llm_pipeline.training.device import DevicePlan

# Adapter methods train few parameters from a zero (LoRA B) or identity (IA3) start: they need steps 10-50x larger
# than full fine-tuning to move within a short run. DPO on an adapter: on the sample (40 steps, beta 0.1) 5e-4 took
# the loss from 0.691 to 0.659, 1e-3 to 0.631 and 2e-3 to 0.603, with held-out loss best at 1e-3 (TRL's 1e-6 left it
# at 0.6931). Full fine-tuning DPO keeps small steps: every weight moves, and drifts from the reference quickly.
LEARNING_RATES = {
    "sft": {"lora": 1e-3, "dora": 1e-3, "qlora": 1e-3, "ia3": 5e-3, "prefix": 1e-2, "full": 1e-4},
    "dpo": {"lora": 1e-3, "dora": 1e-3, "qlora": 1e-3, "ia3": 5e-3, "prefix": 1e-2, "full": 5e-6},
}
# Warmup: a full fine-tune starts from a good model that large early steps can damage, so it warms up longer; an
# adapter starts at zero change and a short warmup only delays learning. DPO starts at loss log 2 with zero margin
# and needs none beyond a couple of steps.
WARMUP = {"sft": {"adapter": 0.03, "full": 0.1}, "dpo": {"adapter": 0.0, "full": 0.1}}
# Threads on a CPU follow the size of one step's matrix products, not the parameter count: a hidden x hidden
# projection over the tokens of one forward pass, in multiply-accumulates. Measured on 2 cores (fp32 Llama, forward +
# backward): 0.5M MACs ran no faster on two threads; 4.2M (hidden 64, 8 x 128 tokens) 1.37x faster, 17M 1.56x, 84M
# (hidden 256, 8 x 160 tokens) 1.58x. Small ops stay on one thread because a busy machine punishes split tiny ops
# hardest (a 240K-parameter Llama step: 0.05-0.08 s on one thread, 0.5-0.7 s on two, the threads spin-waiting on each
# other); from SMALL_OP_MACS up every core is used. Without a pass size, SMALL_MODEL_PARAMS decides.
SMALL_OP_MACS, SMALL_MODEL_PARAMS = device.SMALL_OP_MACS, device.SMALL_MODEL_PARAMS
projection_macs = device.projection_macs
# Gradient checkpointing trades an extra forward per step for activation memory: worth it only when the estimated
# training memory would take more than this share of what the device has free.
CHECKPOINTING_MEMORY_SHARE = 0.5


@dataclass
class Settings:
    """Chosen values with reasons, in the order they were decided."""

    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set(self, name: str, value: Any, reason: str) -> Any:
        self.chosen[name] = {"value": value, "reason": reason}
        return value

    def value(self, name: str) -> Any:
        return self.chosen[name]["value"]

    def as_metadata(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.chosen.items()}

    def values(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.chosen.items()}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory_bytes(plan: DevicePlan) -> int:
    """Free memory of the training device: the GPU's free memory, or the host's MemAvailable."""
    if plan.device == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info()[0])
        except (RuntimeError, AssertionError):  # a CUDA plan without a usable device: judge by host memory
            pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # unknown: assume a small laptop


def training_memory_bytes(model_config: Any, n_params: int, trainable: int, batch_size: int, seq_len: int, precision: str) -> int:
    """A rough upper estimate of training memory: weights, optimizer state and the activations kept for backward.

    Activations per layer and token follow Korthikanti et al. (2022): about 34*h bytes in 16-bit plus 5*heads*seq for
    the attention scores (doubled for fp32); the fp32 logits of the vocabulary are kept three times (logits, softmax,
    gradient).
    """
    width = 2 if precision in ("bf16", "fp16") else 4
    h = int(getattr(model_config, "hidden_size", 0) or 0)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(model_config, "num_attention_heads", 1) or 1)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    tokens = batch_size * seq_len
    per_layer = tokens * (34 * h + 5 * heads * seq_len) * width / 2
    logits = 3 * tokens * vocab * 4
    return int(n_params * width + trainable * 12 + layers * per_layer + logits)


def choose(
    stage: str,
    method: str,
    plan: DevicePlan,
    n_params: int,
    memory_needed: int,
    *,
    learning_rate: float | None = None,
    warmup_ratio: float | None = None,
    gradient_checkpointing: bool | None = None,
    cpu_threads: int | None = None,
    op_macs: int | None = None,
) -> Settings:
    """The settings for one training run of `stage` ("sft" or "dpo") with adapter `method` on `plan`'s device.
    `op_macs` (`projection_macs`) sizes the CPU thread count; without it the parameter count does."""
    s = Settings()
    s.set("precision", plan.precision, plan.reason)
    s.set("device", plan.device, "CUDA GPU found" if plan.device == "cuda" else "no CUDA GPU")
    adapter = method != "full"

    if learning_rate is not None:
        s.set("learning_rate", learning_rate, "set in config")
    else:
        kind = f"{'adapter' if adapter else 'full fine-tuning'} {stage.upper()}"
        why = ("adapters start at zero change and train few weights: they need far larger steps than full fine-tuning"
               if adapter else "full fine-tuning moves every weight: small steps keep the pretrained model intact")
        s.set("learning_rate", LEARNING_RATES[stage][method], f"default for {kind} ({method}): {why}")

    if warmup_ratio is not None:
        s.set("warmup_ratio", warmup_ratio, "set in config")
    else:
        s.set("warmup_ratio", WARMUP[stage]["adapter" if adapter else "full"],
              "adapter training starts from no change: little warmup needed" if adapter
              else "full fine-tuning: warm up so early large steps do not damage the pretrained weights")

    free = available_memory_bytes(plan)
    if gradient_checkpointing is not None:
        s.set("gradient_checkpointing", gradient_checkpointing, "set in config")
    else:
        need = memory_needed > CHECKPOINTING_MEMORY_SHARE * free
        s.set("gradient_checkpointing", need,
              f"estimated training memory {memory_needed / 2**20:,.0f} MiB "
              # The free memory itself changes from run to run; the reason is part of the hashed output, so it
              # names the verdict against it, not the figure.
              f"{'exceeds' if need else 'is within'} {CHECKPOINTING_MEMORY_SHARE:.0%} of the memory free at the start"
              + ("" if need else ": no extra forward per step"))

    cores = available_cores()
    if cpu_threads is not None:
        s.set("cpu_threads", cpu_threads, "set in config")
    elif plan.device != "cpu":
        s.set("cpu_threads", min(cores, 4), "GPU training: CPU threads only feed the data loader")
    elif op_macs is not None and op_macs < SMALL_OP_MACS:
        s.set("cpu_threads", 1, f"one projection of a pass is {op_macs / 1e6:.1f}M multiply-accumulates: too small to gain "
              f"from more threads (below {SMALL_OP_MACS / 1e6:.0f}M)")
    elif op_macs is not None:
        s.set("cpu_threads", cores, f"every core this process may use ({cores}): one projection of a pass is "
              f"{op_macs / 1e6:.0f}M multiply-accumulates, large enough to split")
    elif n_params < SMALL_MODEL_PARAMS:
        s.set("cpu_threads", 1, f"{n_params:,} parameters: ops too small to gain from more threads (measured slower on 2)")
    else:
        s.set("cpu_threads", cores, f"every core this process may use ({cores})")
    return s
