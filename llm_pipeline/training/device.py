"""Which device and precision a training stage uses, and the reason, so the choice shows up in stage metadata.

On CPUs without native bf16 (no AVX512-BF16 / AMX) bf16 autocast ran over 7x slower than fp32 on our machines, so
"auto" means fp32 there; bf16 where the hardware has it (CUDA with bf16 support, or a CPU with AMX/AVX512-BF16).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch

from llm_pipeline.memory import peak_rss_mb  # noqa: F401  (re-exported: the stages read it from here)


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" or "cpu"
    precision: str  # "fp32", "bf16" or "fp16"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"

    def as_metadata(self) -> dict[str, str]:
        return {"device": self.device, "precision": self.precision, "precision_reason": self.reason}


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def plan_device(requested: str = "auto", varying_shapes: bool = False) -> DevicePlan:
    """Pick device and precision; an explicit request the hardware cannot honour is an error, not a silent change.

    `varying_shapes`: the run's batches change width from step to step (DPO rows are not packed to one length). On a
    CPU, bf16 kernels keep memory for every new shape: over 20 DPO steps of a small Llama the RSS of a bf16 run
    grew ~20 MB a step (to 940 MB, and on with every new width), while fp32 stayed flat at ~580 MB and took 1.15x
    the time. So auto picks fp32 there."""
    if torch.cuda.is_available():
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            if bf16_ok:
                return DevicePlan("cuda", "bf16", "CUDA device supports bf16: half the memory, same range as fp32")
            return DevicePlan("cuda", "fp16", "CUDA device without bf16 support: fp16 with loss scaling")
        if requested == "bf16" and not bf16_ok:
            raise ValueError("precision bf16 was requested but this CUDA device does not support it; use fp16 or auto")
        return DevicePlan("cuda", requested, f"precision {requested} set in config")
    if requested == "fp16":
        raise ValueError("precision fp16 needs a CUDA device; on CPU use fp32 (or bf16 on CPUs with AMX/AVX512-BF16)")
    if requested == "auto":
        if cpu_has_native_bf16() and varying_shapes:
            return DevicePlan("cpu", "fp32", "CPU has native bf16, but batch widths vary from step to step and CPU bf16 "
                                             "kernels keep memory for every new shape (RSS grew each step); fp32 stays flat")
        if cpu_has_native_bf16():
            return DevicePlan("cpu", "bf16", "CPU has native bf16 (AMX/AVX512-BF16)")
        return DevicePlan("cpu", "fp32", "no CUDA and no native CPU bf16: bf16 autocast is >7x slower than fp32 here")
    return DevicePlan("cpu", requested, f"precision {requested} set in config")


SMALL_MODEL_PARAMS = 20_000_000  # without a pass size: below this many parameters a CPU op is too small to split
SMALL_OP_MACS = 8_000_000  # one hidden x hidden projection of a pass below this: one thread (see training.defaults)


def projection_macs(model_config: Any, tokens_per_pass: int) -> int:
    """Multiply-accumulates of one hidden x hidden projection over a forward pass's tokens (the thread rule's measure)."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)
    return int(tokens_per_pass) * hidden * hidden


@contextlib.contextmanager
def cpu_threads_for(n_params: int, plan: DevicePlan, op_macs: int | None = None) -> Iterator[dict[str, Any]]:
    """Run CPU training whose ops are too small to split on one intra-op thread, restoring the setting afterwards.

    Judged by `op_macs`, the multiply-accumulates of one hidden x hidden projection over a pass's tokens
    (`projection_macs`; the measurements are in `training.defaults`), or else by the parameter count: a
    240K-parameter Llama step measured 0.05-0.08 s on one thread and 0.5-0.7 s on two when the machine had other work
    (threads spin-waiting on each other). Larger ops keep torch's default. Yields what was chosen and why, for stage
    metadata.
    """
    before = torch.get_num_threads()
    small = op_macs < SMALL_OP_MACS if op_macs is not None else n_params < SMALL_MODEL_PARAMS
    if plan.use_cpu and small:
        torch.set_num_threads(1)
        why = (f"one projection of a pass is {op_macs / 1e6:.1f}M multiply-accumulates" if op_macs is not None
               else f"{n_params:,} parameters")
        info = {"cpu_threads": 1, "cpu_threads_reason": f"{why}: ops too small to gain from more threads"}
    else:
        info = {"cpu_threads": before, "cpu_threads_reason": "torch default"}
    try:
        yield info
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads, restoring the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def autocast(plan: DevicePlan):
    """The plan's mixed-precision context for a forward pass (nothing for fp32)."""
    if plan.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device, dtype=plan.dtype)
