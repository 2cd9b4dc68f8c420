"""Materialize the asset graph (or part of it) in-process through Dagster, with a progress display.

Used by `llm-pipeline run` and `llm-pipeline backfill` without a webserver. Each domain's partitioned assets are one
Dagster run in the instance of DAGSTER_HOME (raw -> cleaned -> deduped), domains in config order (cross-domain dedup
keeps the representative of the earlier domain); the unpartitioned assets follow as one more run. The runs show in
the UI like runs launched there, with one step (and one materialization) per asset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dagster as dg
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llm_pipeline import progress as stage_progress
from llm_pipeline.config import PipelineConfig
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.stages import ORDER, STAGES

# Dagster's console logger would print each failure again with its stack trace; the run's event log (the UI) keeps
# everything, and this display prints the one line a person needs.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


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
            ("eval_loss", "eval loss"), ("train_loss", "loss"), ("eval_reward_gain", "held-out reward gain"), ("eval_kl_to_sft", "KL to SFT")]
    if isinstance(stats.get("skipped"), str) and stats["skipped"]:  # a training stage that did not train, and why
        why = stats["skipped"]
        return f"skipped: {why if len(why) <= 90 else why[:89] + '…'}"
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
    if err is None:
        return "(no error message)"
    # An unexpected error: its type and first line; the whole stack trace is in the run's event log.
    lines = [ln.strip() for ln in err.message.splitlines() if ln.strip()]
    return lines[0] if lines else err.cls_name or "(no error message)"


def _print_failed_checks(console: Console, failed_checks: list, partition: str | None) -> None:
    """One line per failed blocking check: the asset, the check and its own description of what failed."""
    names_failed = ", ".join(f"{e.asset_key.to_user_string()}: {e.check_name}" for e in failed_checks)
    console.print(f"[red]✗ blocking check failed ({escape(names_failed)}); downstream assets not run[/red]", soft_wrap=True)
    for e in failed_checks:
        where = e.asset_key.to_user_string() + (f"[{partition}]" if partition else "")
        console.print(f"[red]  {escape(where)}: {escape(e.check_name)}: {escape(e.description or 'failed')}[/red]", soft_wrap=True)


def group_runs(steps: list[Step]) -> list[tuple[str | None, list[str]]]:
    """The steps as Dagster runs: one run per domain holding its partitioned stages in dependency order, domains in
    the order given, then one run for the unpartitioned stages (they read every domain, so they come last).

    A run costs Dagster about a second of its own (creating the run, its event log, the planned and start/end events)
    whatever its steps do; one run per (asset, partition) paid that eight times for a one-domain refresh. Domain by
    domain gives the same outputs as stage by stage: cross-domain dedup only looks at domains earlier in config order,
    and those have finished before."""
    by_run: dict[str | None, list[str]] = {}
    for step in steps:
        by_run.setdefault(step.partition, [])
        if step.asset not in by_run[step.partition]:
            by_run[step.partition].append(step.asset)
    keys = [k for k in by_run if k is not None] + ([None] if None in by_run else [])
    return [(k, sorted(by_run[k], key=ORDER.index)) for k in keys]


def materialize_steps(cfg: PipelineConfig, resource: PipelineConfigResource, steps: list[Step], instance: dg.DagsterInstance,
                      console: Console | None = None, instance_note: str | None = None) -> bool:
    # soft_wrap: a line longer than the terminal stays one line (an error message must survive a copy or a grep).
    console = console or Console(soft_wrap=True)
    assets = build_assets(cfg)
    ok = True
    done: list[tuple[str, str | None]] = []
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("materializing", total=len(steps))

        def show(update: stage_progress.Update) -> None:
            progress.console.print(f"  [dim]{escape(update.line())}[/dim]", soft_wrap=True)

        for partition, names in group_runs(steps):
            labels = {n: escape(n + (f"[{partition}]" if partition else "")) for n in names}
            progress.update(task, description=f"materializing {', '.join(labels.values())}")
            t0 = time.perf_counter()
            with stage_progress.sink(show):
                result = dg.materialize(
                    assets, selection=dg.AssetSelection.assets(*names), partition_key=partition, instance=instance,
                    resources={"pipeline": resource}, raise_on_error=False, run_config=QUIET,
                    tags={"llm_pipeline/launched_by": "cli"},
                )
            seconds = time.perf_counter() - t0
            step_seconds = {ev.step_key: ev.event_specific_data.duration_ms / 1000 for ev in result.all_events
                            if ev.event_type_value == "STEP_SUCCESS" and ev.step_key}
            failed_checks = [e for e in result.get_asset_check_evaluations()
                             if not e.passed and e.severity != dg.AssetCheckSeverity.WARN]
            warned_checks = [e for e in result.get_asset_check_evaluations()
                             if not e.passed and e.severity == dg.AssetCheckSeverity.WARN]
            for name in names:
                mats = result.asset_materializations_for_node(name)
                if name not in step_seconds or not mats:
                    continue
                stats = {k: v.value for k, v in mats[-1].metadata.items() if hasattr(v, "value")}
                progress.console.print(f"[green]✓[/green] {labels[name]:33s} {step_seconds[name]:6.1f}s  {_headline(stats)}", soft_wrap=True)
                if isinstance(stats.get("verdict"), str):  # eval_report: which model ships, and why not the others
                    progress.console.print(f"  {escape(stats['verdict'])}")
                progress.advance(task)
                done.append((name, partition))
            if not result.success:
                ok = False
                if failed_checks:  # Dagster's step error names no check ("1 blocking asset check failed ..."): say which
                    _print_failed_checks(progress.console, failed_checks, partition)
                    break
                errors = [_failure_message(ev.event_specific_data) for ev in result.all_events
                          if ev.event_type_value == "STEP_FAILURE" and ev.event_specific_data]
                failed = [labels[n] for n in names if (n, partition) not in done]
                # One line per failure: the step that failed and why (the first failed step; the rest did not run).
                for error in dict.fromkeys(errors or ["(no error message)"]):
                    progress.console.print(f"[red]✗ {failed[0] if failed else 'run'} failed after {seconds:.1f}s: {escape(error)}[/red]", soft_wrap=True)
                break
            for e in warned_checks:  # a warning stops nothing, but must be seen before training
                where = e.asset_key.to_user_string() + (f"[{partition}]" if partition else "")
                message = f"! {where}: {e.check_name}: {e.description or 'check failed (warning)'}"
                progress.console.print(f"[yellow]{escape(message)}[/yellow]")
                examples = e.metadata.get("examples")
                if examples is not None:
                    progress.console.print(escape("  " + str(examples.value).replace("\n", "\n  ")), highlight=False)
            if failed_checks:
                ok = False
                _print_failed_checks(progress.console, failed_checks, partition)
                break
    if done:
        from llm_pipeline.dvc_record import record

        console.print(record(cfg, done))
    verdict = "done" if ok else "stopped"
    where = instance_note or f"the Dagster instance at {instance.root_directory}"
    console.print(f"{verdict} in {time.perf_counter() - started:.1f}s; runs are in {where}", soft_wrap=True)
    return ok
