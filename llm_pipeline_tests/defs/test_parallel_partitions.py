"""Two domains' partitions materialize at the same time, each step in a process of its own (multiprocess executor).

Dagster gives a run one partition key (or one range, executed as a single step), so the domains of a backfill are
separate runs; what runs them side by side is the run queue (`max_concurrent_runs` in dagster.yaml) and, inside each
run, the multiprocess executor starting every step as a child process. This test launches the runs of two domains at
once, each from a process of its own as Dagster's run launcher does (two runs in threads of one process deadlock in
Dagster's log manager), on one persistent instance with the multiprocess executor, and reads from the event log that
both step processes were alive at the same time. So that this never depends on how fast a loaded machine starts
processes, each step process waits at resource set-up until the other has reached it too (RendezvousConfig). It uses raw_corpus: the same asset factory as the other partitioned stages, without
their minutes of spaCy start-up per step process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from llm_pipeline.config import load_config
from llm_pipeline.defs.assets import build_assets
from llm_pipeline.defs.resources import PipelineConfigResource
from llm_pipeline.io import MANIFEST

CONFIG_ENV = "LLM_PIPELINE_PARALLEL_TEST_CONFIG"
RENDEZVOUS_ENV = "LLM_PIPELINE_PARALLEL_TEST_RENDEZVOUS"
DOMAINS = ["legal", "medicine"]
# Only a bound on a hung process: the assertions depend on the order of events, never on how long they took.
HANG_S = 300


class RendezvousConfig(PipelineConfigResource):
    """The pipeline resource, set up in each step process; it returns only once every domain's step process has
    set it up, so the steps provably overlap however slowly the processes started."""

    def setup_for_execution(self, context) -> None:
        folder = Path(os.environ[RENDEZVOUS_ENV])
        (folder / f"step-{os.getpid()}").touch()
        deadline = time.monotonic() + HANG_S
        while len(list(folder.glob("step-*"))) < len(DOMAINS):
            assert time.monotonic() < deadline, "the other domain's step process never started"
            time.sleep(0.05)


def raw_corpus_job() -> dg.JobDefinition:
    """The raw_corpus job over the domain partitions, with the multiprocess executor. Module level, so that each step
    process can rebuild it (`dg.reconstructable`); the config comes from the environment both processes share."""
    resource = RendezvousConfig(config_path=os.environ[CONFIG_ENV])
    cfg = resource.load()
    # An AssetSelection, not the string "raw_corpus": string selections go through an ANTLR grammar that the
    # installed antlr4 runtime cannot load.
    job = dg.define_asset_job("raw_corpus_job", selection=dg.AssetSelection.assets("raw_corpus"), executor_def=dg.multiprocess_executor)
    defs = dg.Definitions(assets=build_assets(cfg), jobs=[job], resources={"pipeline": resource})
    return defs.resolve_job_def("raw_corpus_job")


def _step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float, int]:
    """(the step process's launch, its success, its pid) from the run's event log."""
    launched = succeeded = None
    pid = -1
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key != "raw_corpus":
            continue
        if event.event_type_value == "STEP_WORKER_STARTING":
            launched = entry.timestamp
        elif event.event_type_value == "STEP_START":
            pid = event.pid
        elif event.event_type_value == "STEP_SUCCESS":
            succeeded = entry.timestamp
    assert launched is not None and succeeded is not None, f"run {run_id} has no complete raw_corpus step"
    return launched, succeeded, pid


def run_partition(home: str, domain: str, barrier: str, parties: int) -> None:
    """Run raw_corpus for one domain on the instance in `home`; called in a process of its own. Waits for the other
    launchers first (a file per launcher in `barrier`), so the runs start together however long imports took."""
    Path(barrier, domain).touch()
    deadline = time.monotonic() + HANG_S
    while len(list(Path(barrier).iterdir())) < parties:
        assert time.monotonic() < deadline, "the other launcher never started"
        time.sleep(0.05)
    with dg.DagsterInstance.local_temp(home) as instance:
        with dg.execute_job(dg.reconstructable(raw_corpus_job), instance, tags={"dagster/partition": domain}) as result:
            print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)


def test_two_domains_materialize_in_parallel_step_processes(tmp_path, make_fast_config):
    config = make_fast_config(tmp_path, domains=DOMAINS)
    cfg = load_config(config)
    home, barrier, rendezvous = tmp_path / "dagster_home", tmp_path / "barrier", tmp_path / "rendezvous"
    for folder in (home, barrier, rendezvous):
        folder.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(str(home)):
        pass  # create the instance's SQLite schemas once, before two processes open it at the same moment
    # The launchers and the step processes they start import this module by name to rebuild the job.
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, CONFIG_ENV: str(config), RENDEZVOUS_ENV: str(rendezvous), "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    launchers = [subprocess.Popen(
        [sys.executable, "-c", f"from test_parallel_partitions import run_partition; "
                               f"run_partition({str(home)!r}, {d!r}, {str(barrier)!r}, {len(DOMAINS)})"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in DOMAINS]
    results = {}
    for d, p in zip(DOMAINS, launchers):
        out, err = p.communicate(timeout=2 * HANG_S)
        assert p.returncode == 0, err[-3000:]
        results[d] = json.loads(out.strip().splitlines()[-1])
        assert results[d]["success"], err[-3000:]

    with dg.DagsterInstance.local_temp(str(home)) as instance:
        windows = {d: _step_window(instance, r["run_id"]) for d, r in results.items()}
        tags = {d: instance.get_run_by_id(r["run_id"]).tags["dagster/partition"] for d, r in results.items()}

    (a_start, a_end, a_pid), (b_start, b_end, b_pid) = windows.values()
    # Both step processes were running at once: each was launched before the other finished.
    assert a_start < b_end and b_start < a_end, windows
    # ... as processes of their own, apart from the launchers and the test.
    assert len({a_pid, b_pid, os.getpid(), *(p.pid for p in launchers)}) == 5
    assert tags == {d: d for d in DOMAINS}
    for d in DOMAINS:
        assert (cfg.data_path / "raw_corpus" / d / MANIFEST).exists()
