"""A user's own config in a DVC project: `llm-pipeline run --config X` records its outputs, and a source outside the
allowed roots stops with the key to set. Real git, dvc and llm-pipeline in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def project(tmp_path: Path, make_fast_config) -> tuple[Path, dict]:
    """A DVC project as a clone has it: code, the sample's legal folder, the default config, a generated dvc.yaml."""
    work = tmp_path / "project"
    shutil.copytree(REPO / "llm_pipeline", work / "llm_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data/sample/legal", work / "data/sample/legal")
    fast = yaml.safe_load(make_fast_config(tmp_path, domains=["legal"]).read_text())
    fast["data_dir"] = "data"
    fast["allowed_roots"] = []
    fast["domains"]["legal"]["sources"][0]["path"] = "data/sample/legal"
    (work / "configs").mkdir()
    (work / "configs/default.yaml").write_text(yaml.safe_dump(fast, sort_keys=False))
    (work / ".gitignore").write_text("/data/*\n!/data/sample/\n/.dvc_remote/\n__pycache__/\n")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "DAGSTER_HOME": str(home),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    run(["git", "init", "-q", "-b", "main"], work, env)
    run([str(BIN / "dvc"), "init", "-q"], work, env)
    run([str(BIN / "llm-pipeline"), "dvc-yaml"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "init"], work, env)
    return work, fast


def test_a_users_config_is_recorded_in_dvc(tmp_path, make_fast_config):
    work, fast = project(tmp_path, make_fast_config)
    # The user's config: another domain name (the default's dvc.yaml knows nothing of it) and no canaries key.
    mine = {k: v for k, v in fast.items() if k != "domains"}
    mine["domains"] = {"contracts": {"sources": [{"path": "data/sample/legal"}]}}
    mine["eval_report"] = {k: v for k, v in fast.get("eval_report", {}).items() if k != "canaries_file"}
    (work / "configs/mine.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))

    out = run([str(BIN / "llm-pipeline"), "run", "--config", "configs/mine.yaml", "--select", "raw_corpus",
               "--partition", "contracts"], work, env_of(work, tmp_path)).stdout
    out = " ".join(out.split())  # the progress console wraps lines at the terminal width
    assert "dvc.yaml regenerated for configs/mine.yaml" in out and "recorded 1 outputs in dvc.lock" in out, out
    spec = yaml.safe_load((work / "dvc.yaml").read_text())
    assert spec["stages"]["raw_corpus-contracts"]["cmd"].endswith("--config configs/mine.yaml")
    assert "raw_corpus-legal" not in spec["stages"]
    status = run([str(BIN / "dvc"), "status", "raw_corpus-contracts"], work, env_of(work, tmp_path)).stdout
    assert "up to date" in status.lower(), status
    # The user's config inherits no canaries file from the sample.
    from llm_pipeline.config import load_config

    assert load_config(work / "configs/mine.yaml", root=work).eval_report.canaries_file is None


def test_a_source_outside_the_roots_names_allowed_roots(tmp_path, make_fast_config):
    work, fast = project(tmp_path, make_fast_config)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "data/sample/legal", elsewhere)
    bad = {**fast, "domains": {"contracts": {"sources": [{"path": str(elsewhere)}]}}}
    (work / "configs/bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    proc = run([str(BIN / "llm-pipeline"), "stage", "raw_corpus", "--domain", "contracts", "--config", "configs/bad.yaml"],
               work, env_of(work, tmp_path), ok=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "allowed_roots" in lines[0] and str(elsewhere) in lines[0], proc.stderr
    assert not (work / "data/raw_corpus/contracts").exists()
    # Listing the folder, as the line says, lets the same source in.
    bad["allowed_roots"] = [str(elsewhere)]
    (work / "configs/bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    run([str(BIN / "llm-pipeline"), "stage", "raw_corpus", "--domain", "contracts", "--config", "configs/bad.yaml"],
        work, env_of(work, tmp_path))


def env_of(work: Path, tmp_path: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
