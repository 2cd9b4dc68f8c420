"""SIGKILL real `python -m llm_pipeline stage ...` processes at random moments, re-run, and compare with an
uninterrupted run: identical content hashes, and never a half-written folder at a finished output's path."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from llm_pipeline.config import load_config
from llm_pipeline.io import MANIFEST, dvc_hash, read_json
from llm_pipeline.runner import run_stage

REPO = Path(__file__).resolve().parents[2]
CURATION = ["raw_corpus", "cleaned_corpus", "deduped_shards"]
# Seconds after start at which each kill lands, drawn at random from these windows. A stage process spends its
# first seconds importing and loading models, then reads, writes shards, and renames; cleaned_corpus (spaCy,
# Presidio) takes ~10 s here, the other two ~1 s. The last kill of each stage hits a rebuild over a finished output.
KILL_WINDOWS = {
    "raw_corpus": [(0.2, 0.6), (0.6, 1.2), (0.3, 1.2)],
    "cleaned_corpus": [(1.0, 5.0), (5.0, 11.0)],
    "deduped_shards": [(0.3, 0.8), (0.5, 1.3)],
}
CODE_VERSION = "crash-test"  # the manifest records it; fixed so in-process and CLI runs write the same bytes
ENV = {**os.environ, "LLM_PIPELINE_CODE_VERSION": CODE_VERSION, "PYTHONUNBUFFERED": "1"}


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


def kill_after(cmd: list[str], cwd: Path, delay: float) -> bool:
    """Start the command, SIGKILL it after `delay` seconds; True if it was still running (a real kill)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def test_sigkill_during_curation_then_rerun_is_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_PIPELINE_CODE_VERSION", CODE_VERSION)
    project = tmp_path / "project"
    project.mkdir()
    sample = REPO / "data" / "sample"
    config = project / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "data",
        "allowed_roots": [str(sample)],
        # One domain, a slice of it: each stage runs in seconds, so kills land in its setup, its work and its rename.
        "domains": {"legal": {"sources": [{"path": str(sample / "legal"), "glob": "c*/*_00*"}]}},
    }))
    cfg = load_config(config, root=project)
    data = cfg.data_path
    # The uninterrupted run (in this process: the CLI calls the same run_stage, and the kills below are real).
    baseline = {stage: run_stage(cfg, stage, "legal").dvc_hash for stage in CURATION}
    shutil.rmtree(data)

    rng = random.Random(8)
    watch = FinishedOutputWatch(data, CURATION, partitioned=True)
    watch.start()
    trials = []
    try:
        for stage in CURATION:
            windows = KILL_WINDOWS[stage]
            for k, (low, high) in enumerate(windows):
                if k == len(windows) - 1:
                    run_stage(cfg, stage, "legal")
                delay = rng.uniform(low, high)
                killed = kill_after(stage_cmd(config, stage, "legal"), project, delay)
                final = data / stage / "legal"
                assert not final.exists() or (final / MANIFEST).exists()
                trials.append((stage, round(delay, 2), killed, final.exists()))
            assert run_stage(cfg, stage, "legal").dvc_hash == baseline[stage], stage
            assert not [p.name for p in (data / stage).iterdir() if p.name.startswith((".tmp-", ".old-"))]
    finally:
        watch.stop.set()
        watch.join()
    print(f"kill trials (stage, delay s, killed, output present after): {trials}; watcher polls: {watch.polls}")
    assert watch.violations == []
    assert sum(1 for t in trials if t[2]) >= len(trials) - 2  # nearly all landed while the process still ran


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
