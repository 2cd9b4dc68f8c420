"""Experiment tracking with Weights & Biases, offline by default, skipped cleanly when disabled.

Runs are written under ``<data_dir>/.wandb`` as ``offline-run-*`` folders that ``wandb sync`` can upload later.
The run id and folder go into the stage's metadata so a Dagster materialization points at its run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_pipeline.config import PipelineConfig


class Tracker:
    """A thin handle: `log` is a no-op when tracking is off, so training code never branches on it."""

    def __init__(self, run: Any = None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def metadata(self) -> dict[str, Any]:
        if self.run is None:
            return {"wandb": "disabled"}
        return {"wandb_run_id": self.run.id, "wandb_dir": str(Path(self.run.dir).parent), "wandb_mode": os.environ.get("WANDB_MODE", "")}


def wandb_dir(cfg: PipelineConfig) -> Path:
    return cfg.data_path / ".wandb"


def wandb_mode(cfg: PipelineConfig) -> str:
    # The environment wins over the config, so CI or a user can force offline/disabled without editing YAML.
    return os.environ.get("WANDB_MODE") or cfg.tracking.wandb_mode


def report_to(cfg: PipelineConfig) -> str:
    """The `report_to` value for a transformers/TRL trainer."""
    return "wandb" if cfg.tracking.wandb and wandb_mode(cfg) != "disabled" else "none"


@contextmanager
def tracked_run(cfg: PipelineConfig, stage: str, config: dict[str, Any]) -> Iterator[Tracker]:
    """Open a wandb run for `stage` (or a disabled tracker) and finish it however the block exits."""
    if report_to(cfg) == "none":
        yield Tracker()
        return
    import wandb

    folder = wandb_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = wandb_mode(cfg)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(folder)
    run = wandb.init(
        project=cfg.tracking.wandb_project,
        name=f"{cfg.name}-{stage}",
        group=cfg.name,
        job_type=stage,
        dir=str(folder),
        config=config,
        mode=wandb_mode(cfg),
        reinit="finish_previous",
    )
    tracker = Tracker(run)
    try:
        yield tracker
    finally:
        run.finish()
