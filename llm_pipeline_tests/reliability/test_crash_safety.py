"""SIGKILL real `python -m llm_pipeline stage ...` processes at chosen moments, re-run, and compare with an
uninterrupted run: identical content hashes, and never a half-written folder at a finished output's path.

Each kill lands at a point the stage process announces and then waits at (see KILL_HOOK), never after a sleep: on a
loaded machine a timed kill may find the process not yet started or already finished, and then it proves nothing.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.io import MANIFEST, read_json
from llm_pipeline.runner import run_stage

REPO = Path(__file__).resolve().parents[2]
CURATION = ["raw_corpus", "cleaned_corpus", "deduped_shards"]
# Where each kill lands: "start" - the stage begins (imports and config done, nothing written); "shard" - a first
# Parquet shard has been written into the stage's temporary folder; "swap" - rebuilding over a finished output, the
# old output has been renamed away and the new one is not yet in place (the one moment the final path is empty).
KILL_POINTS = ["start", "shard", "swap"]
# Runs the real CLI with three hooks; the chosen one writes its name to the pipe the test reads, then waits to be
# killed. Nothing else about the process changes.
KILL_HOOK = """
import os, sys, threading
import pyarrow.parquet as pq
import llm_pipeline.runner as runner

point, fd = os.environ["KILL_POINT"], int(os.environ["KILL_FD"])

def reached(name):
    if name == point:
        os.write(fd, name.encode() + b"\\n")
        threading.Event().wait()  # until the SIGKILL

run_stage, write_table, replace = runner.run_stage, pq.write_table, os.replace

def hooked_run_stage(*args, **kwargs):
    reached("start")
    return run_stage(*args, **kwargs)

def hooked_write_table(table, where, *args, **kwargs):
    write_table(table, where, *args, **kwargs)
    if ".tmp-" in str(where):
        reached("shard")

def hooked_replace(src, dst, *args, **kwargs):
    src, dst = os.fspath(src), os.fspath(dst)
    moved_away = [p for p in os.listdir(os.path.dirname(dst)) if p.startswith(".old-" + os.path.basename(dst) + "-")]
    if os.path.basename(src).startswith(".tmp-") and os.path.isdir(src) and moved_away:
        reached("swap")
    return replace(src, dst, *args, **kwargs)

runner.run_stage, pq.write_table, os.replace = hooked_run_stage, hooked_write_table, hooked_replace
from llm_pipeline.cli import main
sys.argv = ["llm-pipeline", *sys.argv[1:]]
sys.exit(main())
"""
CODE_VERSION = "crash-test"  # the manifest records it; fixed so in-process and CLI runs write the same bytes
ENV = {**os.environ, "LLM_PIPELINE_CODE_VERSION": CODE_VERSION, "PYTHONUNBUFFERED": "1"}
# Only a bound on a hung process; no assertion depends on how long anything takes.
REACH_TIMEOUT_S = 300


def stage_cmd(config: Path, stage: str, domain: str | None) -> list[str]:
    return [sys.executable, "-m", "llm_pipeline", "stage", stage, "--config", str(config)] + (["--domain", domain] if domain else [])


class FinishedOutputWatch(threading.Thread):
    """Polls the data folder: every non-hidden folder at an output's path must hold its manifest."""

    def __init__(self, data: Path, stages: list[str], partitioned: bool):
        super().__init__(daemon=True)
        self.data, self.stages, self.partitioned = data, stages, partitioned
        self.violations: list[str] = []
        self.polls = 0
        self.stop = threading.Event()

    def outputs(self) -> list[Path]:
        found = []
        for stage in self.stages:
            base = self.data / stage
            if not self.partitioned:
                found.append(base)
            elif base.is_dir():
                found += [p for p in base.iterdir() if not p.name.startswith(".")]
        return found

    def run(self) -> None:
        while not self.stop.is_set():
            for out in self.outputs():
                try:
                    if out.is_dir() and not (out / MANIFEST).exists() and out.is_dir():
                        self.violations.append(str(out))
                except OSError:  # renamed away between the two checks: that is the atomic swap, not a violation
                    pass
            self.polls += 1
            time.sleep(0.005)


def kill_at(point: str, config: Path, stage: str, domain: str, cwd: Path) -> None:
    """Run the stage's CLI command, wait until it reports reaching `point`, SIGKILL it there."""
    read_end, write_end = os.pipe()
    stderr = cwd / f"stderr-{stage}-{point}.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", KILL_HOOK, *stage_cmd(config, stage, domain)[3:]], cwd=cwd,
                                env={**ENV, "KILL_POINT": point, "KILL_FD": str(write_end)}, pass_fds=(write_end,),
                                stdout=subprocess.DEVNULL, stderr=err)
    os.close(write_end)  # the child holds the only write end: end of file means it exited
    try:
        ready, _, _ = select.select([read_end], [], [], REACH_TIMEOUT_S)
        said = os.read(read_end, 64).decode().strip() if ready else ""
        if said != point:
            proc.kill()
            proc.wait()
            pytest.fail(f"{stage} exited ({proc.returncode}) or hung without reaching {point!r}: {stderr.read_text()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        os.close(read_end)


def test_sigkill_during_curation_then_rerun_is_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_PIPELINE_CODE_VERSION", CODE_VERSION)
    project = tmp_path / "project"
    project.mkdir()
    sample = REPO / "data" / "sample"
    config = project / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "data",
        "allowed_roots": [str(sample)],
        # One domain, a slice of it: each stage runs in seconds.
        "domains": {"legal": {"sources": [{"path": str(sample / "legal"), "glob": "c*/*_00*"}]}},
    }))
    cfg = load_config(config, root=project)
    data = cfg.data_path
    # The uninterrupted run (in this process: the CLI calls the same run_stage, and the kills below are real).
    baseline = {stage: run_stage(cfg, stage, "legal").dvc_hash for stage in CURATION}
    shutil.rmtree(data)

    watch = FinishedOutputWatch(data, CURATION, partitioned=True)
    watch.start()
    trials = []
    try:
        for stage in CURATION:
            final = data / stage / "legal"
            for point in KILL_POINTS:
                if point == "swap":  # a rebuild over a finished output
                    run_stage(cfg, stage, "legal")
                kill_at(point, config, stage, "legal", project)
                assert not final.exists() or (final / MANIFEST).exists(), (stage, point)
                trials.append((stage, point, final.exists()))
            assert run_stage(cfg, stage, "legal").dvc_hash == baseline[stage], stage
            assert not [p.name for p in (data / stage).iterdir() if p.name.startswith((".tmp-", ".old-"))]
    finally:
        watch.stop.set()
        watch.join()
    print(f"kill trials (stage, point, output present after): {trials}; watcher polls: {watch.polls}")
    assert watch.violations == []
    # A kill between the two renames leaves no output at the final path; the re-run above restored it.
    assert [t for t in trials if t[1] == "swap"] == [(s, "swap", False) for s in CURATION]


def test_sigkill_during_pretraining_resumes_from_the_checkpoint(tmp_path):
    from training.fixtures import write_deduped_shards

    project = tmp_path / "project"
    project.mkdir()
    config = project / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "data", "seed": 7,
        "domains": {d: {"sources": [{"path": f"in/{d}"}]} for d in ("legal", "medicine")},
        "tokenizer": {"vocab_size": 300, "min_frequency": 2},
        "base_checkpoint": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
                            "max_positions": 64, "train_steps": 200, "seq_len": 32, "batch_size": 4,
                            "eval_every": 200, "checkpoint_every": 10},
        "tracking": {"wandb": False},
    }))
    cfg = load_config(config, root=project)
    write_deduped_shards(cfg.data_path)
    run_stage(cfg, "tokenizer")
    checkpoints = cfg.data_path / ".checkpoints" / "base_checkpoint"

    proc = subprocess.Popen(stage_cmd(config, "base_checkpoint", None), cwd=project, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(checkpoints.glob("step-*.pt"))
    assert saved, proc.stderr.read().decode()[-2000:]
    assert not (cfg.data_path / "base_checkpoint").exists()  # killed mid-training: no output at the final path

    result = run_stage(cfg, "base_checkpoint")
    resumed = result.stats["resumed_from_step"]
    print(f"killed with {saved[-1].name} on disk; the re-run resumed from step {resumed}")
    assert resumed >= 10 and resumed % 10 == 0
    assert result.stats["steps"] == 200
    assert read_json(result.output_dir / MANIFEST)["stage"] == "base_checkpoint"
