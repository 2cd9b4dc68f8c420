"""Keeping outputs fresh, the way a user runs it: `dagster-daemon run` against the project's instance settings.

The daemon runs as a subprocess in its own process session; editing one legal source file must make the source
sensor request a backfill that the daemon's backfill loop executes: legal's partitions and every unpartitioned asset
downstream, all successful, while medicine's partitions stay as they were. The daemon is stopped by its PID.
The cron refresh is checked through one iteration of the daemon's own sensor loop, against a real code server.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.sensor import execute_sensor_iteration
from rich.console import Console

from llm_pipeline.config import load_config
from llm_pipeline.defs.local_run import materialize_steps, plan
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.io import MANIFEST, write_json
from llm_pipeline.sources import built_from, domain_fingerprint
from llm_pipeline.stages import ORDER, STAGES

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOMAINS = ["legal", "medicine"]
PARTITIONED = [n for n in ORDER if STAGES[n].partitioned]
UNPARTITIONED = [n for n in ORDER if not STAGES[n].partitioned]
# The smallest work that still runs every stage: this test is about what the daemon runs, not about curation or model
# quality (PII redaction and validation have tests of their own; without redaction the sample's planted canaries
# reach the model, so that gate is off too).
TINY = {
    "cleaned_corpus": {"pii": False},
    "validation": {"enabled": False},
    "base_checkpoint": {"train_steps": 4, "checkpoint_every": 2, "eval_every": 2},
    "lora_adapter": {"max_steps": 2},
    "dpo_model": {"max_steps": 2},
    "eval_report": {"max_eval_documents": 8, "max_eval_pairs": 8, "max_task_examples": 2, "samples": 0,
                    "max_dpo_vs_sft_perplexity_ratio": None, "no_canary_leak": False},
    "tracking": {"wandb": False},
}
# Generous: the daemon's backfill loop wakes every 30 s and the runs train small models on a shared 2-core machine.
DEADLINE_S = 900


def project_config(tmp_path: Path, make_fast_config, **overrides) -> Path:
    """The fast config over a private copy of two domains' sample sources, so the test may edit them."""
    sample = tmp_path / "sources"
    for d in DOMAINS:
        shutil.copytree(REPO / "data/sample" / d, sample / d)
    path = make_fast_config(tmp_path, domains=DOMAINS, **{**TINY, **overrides})
    data = yaml.safe_load(path.read_text())
    data["allowed_roots"] = [*data.get("allowed_roots", []), str(sample)]
    for d in DOMAINS:
        for src in data["domains"][d]["sources"]:
            src["path"] = str(sample / d / Path(src["path"]).relative_to(REPO / "data/sample" / d))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def project_instance(home: Path) -> dg.DagsterInstance:
    """A DAGSTER_HOME with the repository's own dagster.yaml (run queue, concurrency), its folders moved into home."""
    home.mkdir(parents=True)
    text = (REPO / "dagster.yaml").read_text().replace("base_dir: .dagster", f"base_dir: {home}/.dagster")
    (home / "dagster.yaml").write_text(text)
    return dg.DagsterInstance.from_config(str(home))


def start_daemon(home: Path, config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home), "LLM_PIPELINE_CONFIG": str(config),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    # The daemon's session also holds its code server and any run workers: signal the whole group.
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(what: str, probe, proc: subprocess.Popen, log: Path, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def edit(path: Path, added: str) -> None:
    """Append to a source file in one rename, so no sensor tick can fingerprint a half-written file."""
    tmp = path.with_name(f".{path.name}.edit")
    tmp.write_text(path.read_text() + added)
    os.replace(tmp, path)


def sensor_ticks(instance: dg.DagsterInstance, name: str):
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == name:
            return instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return []


def finished_backfill(instance: dg.DagsterInstance, trigger: str):
    done = {BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED,
            BulkActionStatus.CANCELED, BulkActionStatus.COMPLETED}
    ours = [b for b in instance.get_backfills() if b.tags.get("llm_pipeline/trigger") == trigger]
    return ours if ours and all(b.status in done for b in ours) else None


def materialized(instance: dg.DagsterInstance, run_ids: list[str]) -> set[tuple[str, str | None]]:
    out = set()
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
            event = entry.dagster_event
            out.add((event.asset_key.to_user_string(), event.partition))
    return out


def test_editing_a_source_file_refreshes_that_domain_under_the_daemon(tmp_path, make_fast_config):
    config = project_config(tmp_path, make_fast_config, orchestration={"sensor": True, "sensor_interval_seconds": 5})
    cfg = load_config(config)
    home = tmp_path / "dagster_home"
    instance = project_instance(home)
    # Both domains' curated partitions exist before the daemon starts, as after a first `llm-pipeline run`.
    steps = plan(cfg, select=PARTITIONED)
    assert materialize_steps(cfg, PipelineConfigResource(config_path=str(config)), steps, instance, Console(quiet=True))
    medicine_before = {n: (cfg.data_path / n / "medicine" / MANIFEST).stat().st_mtime_ns for n in PARTITIONED}

    log = tmp_path / "daemon.log"
    proc = start_daemon(home, config, log)
    try:
        # Sources unchanged: the sensor's ticks skip and request nothing.
        # A tick is stored as STARTED and then updated: wait for one the sensor has finished evaluating.
        finished = lambda: [t for t in sensor_ticks(instance, "source_change_sensor") if t.status != TickStatus.STARTED]  # noqa: E731
        first = wait_for("a finished sensor tick", finished, proc, log, 300)
        assert [t.status for t in first] == [TickStatus.SKIPPED] * len(first), first
        assert not instance.get_backfills()

        victim = cfg.resolve(cfg.domains["legal"].sources[0].path) / "articles" / "article_01.html"
        edit(victim, "\n<p>An amendment adds a notice period of thirty days.</p>\n")
        backfills = wait_for("a finished source-change backfill", lambda: finished_backfill(instance, "source_change"), proc, log)
    finally:
        stop(proc)

    assert len(backfills) == 1, [b.backfill_id for b in backfills]
    backfill = backfills[0]
    runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill.backfill_id))
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (backfill.status, [(r.run_id, r.status) for r in runs], log.read_text()[-4000:])
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
    assert backfill.tags.get("llm_pipeline/domains") == "legal"
    expected = {(n, "legal") for n in PARTITIONED} | {(n, None) for n in UNPARTITIONED}
    assert materialized(instance, [r.run_id for r in runs]) == expected
    # legal was rebuilt from the edited sources; medicine's outputs were not touched.
    assert built_from(cfg, "legal") == domain_fingerprint(cfg, "legal")
    assert {n: (cfg.data_path / n / "medicine" / MANIFEST).stat().st_mtime_ns for n in PARTITIONED} == medicine_before
    for n in UNPARTITIONED:
        assert (cfg.data_path / n / MANIFEST).exists(), n


def test_a_cron_tick_requests_the_stale_domains_through_the_daemons_evaluation(tmp_path, make_fast_config, monkeypatch):
    """`orchestration.schedule_cron`: one iteration of the daemon's own sensor loop, against a code server started from
    workspace.yaml, submits the same backfill (run above by the daemon) for the stale domain only. An every-minute cron
    is due at its first evaluation, so the test does not wait for the clock."""
    config = project_config(tmp_path, make_fast_config, orchestration={"sensor": False, "schedule_cron": "* * * * *"})
    cfg = load_config(config)
    for d in DOMAINS:  # both domains built from their current sources
        folder = cfg.data_path / "raw_corpus" / d
        folder.mkdir(parents=True)
        write_json(folder / MANIFEST, {"stage": "raw_corpus", "domain": d, "inputs": {"sources": domain_fingerprint(cfg, d)}})
    victim = cfg.resolve(cfg.domains["legal"].sources[0].path) / "articles" / "article_02.html"
    edit(victim, "\n<p>A later ruling narrows the exception.</p>\n")

    monkeypatch.setenv("LLM_PIPELINE_CONFIG", str(config))
    instance = project_instance(tmp_path / "dagster_home")
    with create_test_daemon_workspace_context(WorkspaceFileTarget([str(REPO / "workspace.yaml")]), instance) as context:
        list(execute_sensor_iteration(context, logging.getLogger("test_daemon_refresh"), None, None))

    assert not sensor_ticks(instance, "source_change_sensor"), "orchestration.sensor is false: that sensor is stopped"
    (tick,) = sensor_ticks(instance, "source_refresh_schedule")
    assert tick.status == TickStatus.SUCCESS, tick.error
    (backfill,) = instance.get_backfills()
    assert backfill.tags["llm_pipeline/trigger"] == "schedule" and backfill.tags["llm_pipeline/domains"] == "legal"
    requested = {(k.asset_key.to_user_string(), k.partition_key) for k in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()}
    assert requested == {(n, "legal") for n in PARTITIONED} | {(n, None) for n in UNPARTITIONED}
