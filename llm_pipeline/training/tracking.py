"""Experiment tracking with Weights & Biases: offline by default, online on request, skipped cleanly when disabled.

Runs are written under ``<data_dir>/.wandb``; offline ones as ``offline-run-*`` folders that ``wandb sync`` uploads
later. A run logs the stage's config, per-step metrics and the DVC hashes of the input shards (so a curve can be
tied to the exact data that made it). The run id and local folder go into the stage's metadata, so a Dagster
materialization points at its run.

Mode, decided by `resolve_mode`: ``tracking.wandb: false`` or ``WANDB_MODE=disabled`` in the environment turns it
off; ``tracking.wandb_mode: online`` is online only when ``WANDB_API_KEY`` is set (else offline, with the reason in
the metadata); anything else is offline.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import dvc_hash


class Tracker:
    """A thin handle: `log` is a no-op when tracking is off, so training code never branches on it."""

    def __init__(self, run: Any = None, mode: str = "disabled", reason: str = ""):
        self.run = run
        self.mode = mode
        self.reason = reason

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
            return {"wandb": "disabled", "wandb_mode_reason": self.reason}
        return {
            "wandb_run_id": self.run.id,
            "wandb_dir": str(Path(self.run.dir).parent),  # the run's own folder (offline-run-<time>-<id>)
            "wandb_mode": self.mode,
            "wandb_mode_reason": self.reason,
        }


@functools.lru_cache(maxsize=1)
def installed_packages() -> str:
    """`name==version` of every installed distribution, one a line, as wandb's requirements.txt lists them."""
    from importlib.metadata import distributions

    names = set()
    for d in distributions():
        try:
            if d.metadata["Name"]:
                names.add(f"{d.metadata['Name']}=={d.version}")
        except (KeyError, UnicodeDecodeError, TypeError):  # a distribution with broken metadata is left out, as wandb does
            continue
    return "\n".join(sorted(names, key=str.lower)) + "\n"


def wandb_dir(cfg: PipelineConfig) -> Path:
    return cfg.data_path / ".wandb"


def resolve_mode(cfg: PipelineConfig) -> tuple[str, str]:
    """("online" | "offline" | "disabled", why)."""
    tc = cfg.tracking
    if not tc.wandb or tc.wandb_mode == "disabled":
        return "disabled", "tracking.wandb is off in the config"
    if os.environ.get("WANDB_MODE") == "disabled":
        return "disabled", "WANDB_MODE=disabled in the environment"
    if tc.wandb_mode == "online":
        if os.environ.get("WANDB_API_KEY"):
            return "online", "tracking.wandb_mode is online and WANDB_API_KEY is set"
        return "offline", "tracking.wandb_mode is online but WANDB_API_KEY is not set: logged offline (wandb sync later)"
    return "offline", "tracking.wandb_mode is offline (the default): wandb sync uploads the run later"


def wandb_mode(cfg: PipelineConfig) -> str:
    return resolve_mode(cfg)[0]


def report_to(cfg: PipelineConfig) -> str:
    """The `report_to` value for a transformers/TRL trainer."""
    return "wandb" if wandb_mode(cfg) != "disabled" else "none"


def input_hashes(cfg: PipelineConfig, inputs: dict[str, Path]) -> dict[str, str]:
    """DVC hashes of a stage's inputs, per domain for partitioned ones (the same values the runner's manifest holds)."""
    hashes: dict[str, str] = {}
    for name, folder in inputs.items():
        folder = Path(folder)
        domains = [d for d in cfg.domain_names if (folder / d).is_dir()]
        if domains:
            for d in domains:
                hashes[f"{name}/{d}"] = dvc_hash(folder / d)
        elif folder.exists():
            hashes[name] = dvc_hash(folder)
    return hashes


@contextmanager
def tracked_run(cfg: PipelineConfig, stage: str, config: dict[str, Any], inputs: dict[str, Path] | None = None) -> Iterator[Tracker]:
    """Open a wandb run for `stage` (or a disabled tracker) and finish it however the block exits.

    The run's config holds the pipeline config (all sections), the stage's own settings and the input hashes.
    """
    mode, reason = resolve_mode(cfg)
    if mode == "disabled":
        yield Tracker(None, mode, reason)
        return
    import wandb

    folder = wandb_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    # Trainers (TRL/transformers) started inside the block read these, so they log to the same place and mode.
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(folder)
    hashes = input_hashes(cfg, inputs or {})
    run = wandb.init(
        # wandb would list the installed packages again for every run (~0.7 s of package metadata each time, four
        # times a pipeline); the same list, read once per process, goes where wandb puts it.
        settings=wandb.Settings(x_save_requirements=False),
        project=cfg.tracking.wandb_project,
        entity=cfg.tracking.wandb_entity,
        name=f"{cfg.name}-{stage}",
        group=cfg.name,
        job_type=stage,
        dir=str(folder),
        config={"stage": config, "pipeline": cfg.model_dump(mode="json"), "input_dvc_hashes": hashes,
                "config_fingerprint": cfg.fingerprint()},
        mode=mode,
        reinit="finish_previous",
    )
    (Path(run.dir) / "requirements.txt").write_text(installed_packages(), encoding="utf-8")
    tracker = Tracker(run, mode, reason)
    try:
        yield tracker
    finally:
        run.finish()
