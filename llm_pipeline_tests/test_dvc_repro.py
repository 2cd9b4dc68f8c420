"""A real `dvc repro` of the generated dvc.yaml in a temporary git repository, then a no-op repro, status, push."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dvc_repro_runs_the_stages_then_nothing(tmp_path, make_fast_config):
    work = tmp_path / "project"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    # The project's files as a user's clone would have them: code (for DVC's code dependencies), sample, config.
    shutil.copytree(REPO / "llm_pipeline", work / "llm_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("legal", "software"):
        shutil.copytree(REPO / "data/sample" / d, work / "data/sample" / d)
    fast = yaml.safe_load(make_fast_config(tmp_path, domains=["legal", "software"]).read_text())
    fast["data_dir"] = "data"
    for name, dom in fast["domains"].items():
        dom["sources"][0]["path"] = f"data/sample/{name}"
    (work / "configs").mkdir()
    (work / "configs/default.yaml").write_text(yaml.safe_dump(fast, sort_keys=False))
    (work / ".gitignore").write_text("/data/*\n!/data/sample/\n/.dvc_remote/\n__pycache__/\n")

    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh([str(BIN / "dvc"), "init", "-q"], work, env)
    sh([str(BIN / "dvc"), "remote", "add", "-d", "local", "../.dvc_remote"], work, env)
    sh([str(BIN / "llm-pipeline"), "dvc-yaml"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "init"], work, env)

    # An output made through Dagster (`llm-pipeline run`) is recorded in dvc.lock, so DVC agrees it is up to date
    # and `dvc repro` does not redo it.
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run = sh([str(BIN / "llm-pipeline"), "run", "--select", "raw_corpus", "--partition", "legal"], work, {**env, "DAGSTER_HOME": str(home)})
    assert "recorded 1 outputs in dvc.lock" in run.stdout, run.stdout
    assert "up to date" in sh([str(BIN / "dvc"), "status", "raw_corpus-legal"], work, env).stdout.lower()

    first = sh([str(BIN / "dvc"), "repro"], work, env)
    ran = first.stdout.count("Running stage")
    assert ran == 2 * 3 + 7 - 1, first.stdout[-2000:]
    assert (work / "data/eval_report/report.html").exists()
    assert (work / "dvc.lock").exists()

    second = sh([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage" not in second.stdout, second.stdout

    status = sh([str(BIN / "dvc"), "status"], work, env)
    assert "up to date" in status.stdout.lower(), status.stdout

    sh([str(BIN / "dvc"), "push"], work, env)
    cloud = sh([str(BIN / "dvc"), "status", "--cloud"], work, env)
    assert "in sync" in cloud.stdout.lower() or "up to date" in cloud.stdout.lower(), cloud.stdout
    assert any((work.parent / ".dvc_remote").rglob("*")), "nothing was pushed to the local remote"

    # The DVC hash recorded in dvc.lock is the one the runner computes (and Dagster uses as data version).
    from llm_pipeline.io import dvc_hash

    lock = yaml.safe_load((work / "dvc.lock").read_text())
    out = lock["stages"]["raw_corpus-legal"]["outs"][0]
    assert out["md5"] == dvc_hash(work / out["path"])
