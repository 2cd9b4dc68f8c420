"""Resumable training checkpoints: model, optimizer, scheduler, step and every RNG state, in one file.

A checkpoint lives under ``<data_dir>/.checkpoints/<asset>/`` (never inside an output). It carries a fingerprint of
what was being trained (config sections, seed, data size); a checkpoint whose fingerprint differs belongs to another
run and is ignored. Only the newest checkpoint is kept; the stage deletes the folder once its output is complete.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_pipeline.io import OutputWriteError

PATTERN = "step-*.pt"


class CheckpointWriteError(OutputWriteError):
    """A checkpoint could not be written (full disk, quota, file-size limit); its one-line message says so."""


def _looks_like_write_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("write", "space", "file too large", "errno", "unexpected pos"))


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "the write failed (disk full, a quota or a file-size limit)"


def rng_state() -> dict[str, Any]:
    # Plain lists and tuples only (no numpy objects), so a checkpoint loads with torch.load(weights_only=True):
    # unpickling arbitrary objects from a writable folder would let whoever can write it run code.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, fingerprint: str, model, optimizer, scheduler, extra: dict[str, Any]) -> Path:
    """Write step-<n>.pt atomically (temp file, then rename), then drop older checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    tmp = folder / f".{path.name}.tmp"
    payload = {
        "step": step,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **extra,
    }
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError from its zip writer
        tmp.unlink(missing_ok=True)  # never a partial checkpoint left beside the good one
        if isinstance(exc, RuntimeError) and not _looks_like_write_error(exc):
            raise
        free = shutil.disk_usage(folder).free
        raise CheckpointWriteError(f"cannot write checkpoint {path.name} in {folder}: {_short(exc)} "
                                   f"({free / 2**20:,.0f} MiB free); the previous checkpoint is kept") from None
    for old in folder.glob(PATTERN):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """The newest usable checkpoint and a note on what was found (shown in stage metadata)."""
    folder = Path(folder)
    paths = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
    if not paths:
        return None, "no checkpoint: starting from step 0"
    path = paths[-1]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint cut short by a crash during write is unusable, not fatal
        return None, f"checkpoint {path.name} unreadable ({type(exc).__name__}): starting from step 0"
    if payload.get("fingerprint") != fingerprint:
        return None, f"checkpoint {path.name} is from a different config or data: starting from step 0"
    return payload, f"resumed from {path.name}"


def clear_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
