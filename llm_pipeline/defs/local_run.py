"""Materialize the asset graph (or part of it) in-process through Dagster, with a progress display.

Used by `llm-pipeline run`. Each (asset, partition) is one Dagster run in the instance of DAGSTER_HOME, so the runs
show in the UI like runs launched there. Partitioned assets run stage by stage over the domains in config order
(cross-domain dedup keeps the representative of the earlier domain); unpartitioned assets follow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dagster as dg
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llm_pipeline.config import PipelineConfig
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.stages import ORDER, STAGES

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class Step:
    asset: str
    partition: str | None


def plan(cfg: PipelineConfig, select: list[str] | None = None, partition: str | None = None) -> list[Step]:
    names = select or ORDER
    for n in names:
        if n not in STAGES:
            raise SystemExit(f"unknown asset {n!r}; assets are: {', '.join(ORDER)}")
    if partition is not None and partition not in cfg.domains:
        raise SystemExit(f"unknown partition {partition!r}; the config declares: {', '.join(cfg.domain_names)}")
    steps = []
    for name in ORDER:
        if name not in names:
            continue
        if STAGES[name].partitioned:
            for d in [partition] if partition else cfg.domain_names:
                steps.append(Step(name, d))
        elif partition is None or select:
            steps.append(Step(name, None))
    return steps


def _headline(stats: dict) -> str:
    keys = [("documents_kept", "kept"), ("documents_in", "in"), ("vocab_size", "vocab"), ("parameters", "params"),
            ("eval_loss", "eval loss"), ("train_loss", "loss")]
    parts = []
    for k, label in keys:
        v = stats.get(k)
        if v is not None:
            parts.append(f"{label} {v:.4g}" if isinstance(v, float) else f"{label} {v}")
    return ", ".join(parts[:3])


def _failure_message(data) -> str:
    """The message a person needs: a Failure's description, else the innermost error, without the traceback."""
    ufd = getattr(data, "user_failure_data", None)
    if ufd is not None and ufd.description:
        return ufd.description
    err = getattr(data, "error", None)
    while err is not None and err.cause is not None:
        err = err.cause
    return err.message.strip() if err is not None else "(no error message)"


def materialize_steps(cfg: PipelineConfig, resource: PipelineConfigResource, steps: list[Step], instance: dg.DagsterInstance,
                      console: Console | None = None) -> bool:
    console = console or Console()
    assets = build_assets(cfg)
    ok = True
    completed = 0
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("materializing", total=len(steps))
        for step in steps:
            label = escape(step.asset + (f"[{step.partition}]" if step.partition else ""))
            progress.update(task, description=f"materializing {label}")
            t0 = time.perf_counter()
            result = dg.materialize(
                assets, selection=dg.AssetSelection.assets(step.asset), partition_key=step.partition, instance=instance,
                resources={"pipeline": resource}, raise_on_error=False, run_config=QUIET,
                tags={"llm_pipeline/launched_by": "cli"},
            )
            seconds = time.perf_counter() - t0
            failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
            if not result.success:
                ok = False
                errors = [_failure_message(ev.event_specific_data) for ev in result.all_events
                          if ev.event_type_value == "STEP_FAILURE" and ev.event_specific_data]
                progress.console.print(f"[red]✗ {label} failed after {seconds:.1f}s[/red]\n  " + "\n  ".join(errors or ["(no error message)"]))
                break
            mats = result.asset_materializations_for_node(step.asset)
            stats = {k: v.value for k, v in mats[-1].metadata.items() if hasattr(v, "value")} if mats else {}
            progress.console.print(f"[green]✓[/green] {label:33s} {seconds:6.1f}s  {_headline(stats)}")
            if failed_checks:
                ok = False
                names = ", ".join(e.check_name for e in failed_checks)
                progress.console.print(f"[red]✗ blocking check failed on {label}: {names}; downstream assets not run[/red]")
                break
            progress.advance(task)
            completed += 1
    done = [(st.asset, st.partition) for st in steps[:completed]]
    if done:
        from llm_pipeline.dvc_record import record

        console.print(record(cfg, done))
    verdict = "done" if ok else "stopped"
    console.print(f"{verdict} in {time.perf_counter() - started:.1f}s; runs are in the Dagster instance ({instance.root_directory})")
    return ok
