"""Concurrent stage processes: different domains of one stage, and the same output twice, run side by side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llm_pipeline.config import load_config
from llm_pipeline.runner import run_stage

REPO = Path(__file__).resolve().parents[2]
CODE_VERSION = "concurrency-test"


def test_parallel_partitions_and_duplicate_runs_do_not_disturb_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_PIPELINE_CODE_VERSION", CODE_VERSION)
    sample = REPO / "data" / "sample"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "data", "allowed_roots": [str(sample)],
        "domains": {d: {"sources": [{"path": str(sample / d)}]} for d in ("legal", "medicine", "software")},
    }))
    cfg = load_config(config, root=tmp_path)
    serial = {d: run_stage(cfg, "raw_corpus", d).dvc_hash for d in cfg.domain_names}
    shutil.rmtree(cfg.data_path)

    # Each domain twice, all six at once: before per-output locks, one domain's start-up cleaning removed the
    # temp folder another domain was writing into.
    env = {**os.environ, "LLM_PIPELINE_CODE_VERSION": CODE_VERSION}
    procs = [subprocess.Popen([sys.executable, "-m", "llm_pipeline", "stage", "raw_corpus", "--domain", d,
                               "--config", str(config)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2) for d in cfg.domain_names]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    from llm_pipeline.io import dvc_hash

    assert {d: dvc_hash(cfg.data_path / "raw_corpus" / d) for d in cfg.domain_names} == serial
    assert not [p.name for p in (cfg.data_path / "raw_corpus").iterdir() if p.name.startswith((".tmp-", ".old-"))]
