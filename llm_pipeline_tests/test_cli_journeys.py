"""The CLI as a user meets it, each journey in a process of its own: errors stop early in one line without a
traceback, runs on another data dir keep to their own Dagster instance, two first runs at once both work, and a
short real run shows progress lines and no library warning."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from llm_pipeline.io import MANIFEST

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    full_env.pop("DAGSTER_HOME", None)
    if "DAGSTER_HOME" in env:
        full_env["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    return subprocess.run([str(BIN / "llm-pipeline"), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if all(n in ln for n in needles)]
    assert lines, f"no line holds all of {needles}:\n{out[-3000:]}"
    return lines[0]


def write_config(path: Path, data_dir: Path, sources: dict[str, list[dict]], **sections) -> Path:
    """A one-or-two-domain config on the shipped sample (or the given sources), with short training."""
    data = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    data["data_dir"] = str(data_dir)
    data["allowed_roots"] = [str(REPO / "data/sample"), str(path.parent)]
    data["domains"] = {name: {"licence": "CC0-1.0", "sources": srcs} for name, srcs in sources.items()}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


SAMPLE_LEGAL = {"legal": [{"path": str(REPO / "data/sample/legal")}]}


# ---------------------------------------------------------------- errors: early, once, one line
def test_missing_source_path_fails_raw_corpus_once_with_the_path(tmp_path):
    missing = tmp_path / "no-such-folder"
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", {"legal": [{"path": str(missing)}]},
                       orchestration={"retries": 2, "retry_delay_seconds": 30})
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = cli(["run", "--config", str(cfg), "--select", "raw_corpus", "--partition", "legal"], tmp_path, DAGSTER_HOME=str(home))
    line = assert_one_line_error(proc, 1, "raw_corpus[legal]", str(missing), "does not exist")
    assert "failed after" in line
    # Not retried: a retry could not find the folder either (and would wait out 30 s of backoff first).
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            (run,) = instance.get_runs()
            kinds = [e.dagster_event.event_type_value for e in instance.all_logs(run.run_id) if e.dagster_event]
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    assert kinds.count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in kinds and "STEP_RESTARTED" not in kinds
    # check-config sees it too, before any run.
    assert_one_line_error(cli(["check-config", "--config", str(cfg)], tmp_path), 2, str(missing), "does not exist")


def test_domain_whose_sources_hold_no_document_fails_raw_corpus(tmp_path):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "notes.pdf").write_bytes(b"%PDF-1.4 nothing we read")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", {"legal": [{"path": str(empty)}]})
    proc = cli(["run", "--config", str(cfg), "--select", "raw_corpus"], tmp_path)
    assert_one_line_error(proc, 1, "raw_corpus[legal]", "hold no document", str(empty), "unsupported_format")


@pytest.mark.parametrize("case, sections, needles", [
    ("unknown key", {"tokenizer": {"vocab_sise": 10}}, ["tokenizer.vocab_sise: unknown key"]),
    ("tokenizer/model mismatch", {"base_checkpoint": {"source": "pretrained", "model": "some-org/some-model"}},
     ["tokenizer.mode is 'train' but base_checkpoint.source is 'pretrained'"]),
    ("scratch shape", {"base_checkpoint": {"hidden_size": 30, "num_heads": 4}}, ["must be a multiple of num_heads"]),
    ("model not found offline", {"tokenizer": {"mode": "extend"},
                                 "base_checkpoint": {"source": "pretrained", "model": "some-org/never-downloaded"}},
     ["'some-org/never-downloaded' is a hub id", "HF_HUB_OFFLINE"]),
])
def test_config_and_model_errors_stop_before_any_work(tmp_path, case, sections, needles):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", SAMPLE_LEGAL, **sections)
    assert_one_line_error(cli(["check-config", "--config", str(cfg)], tmp_path), 2, *needles)
    # `run` stops the same way, at load or before curation: nothing is materialized, no instance is created.
    assert_one_line_error(cli(["run", "--config", str(cfg)], tmp_path), 2, *needles)
    assert not (tmp_path / "data" / "raw_corpus").exists(), case


def test_bad_yaml_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("domains:\n  legal:\n    sources: [{path: x}\n")
    assert_one_line_error(cli(["check-config", "--config", str(cfg)], tmp_path), 2, str(cfg), "not valid YAML at line")


def test_unreachable_postgres_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nstorage:\n  postgres:\n    postgres_url: "
        f"postgresql+psycopg2://dagster:secret@127.0.0.1:{port}/dagster\n")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", SAMPLE_LEGAL)
    proc = cli(["run", "--config", str(cfg), "--select", "raw_corpus"], tmp_path, DAGSTER_HOME=str(home))
    line = assert_one_line_error(proc, 2, "cannot open the Dagster instance", "PostgreSQL")
    assert "secret" not in proc.stdout + proc.stderr, line


# ---------------------------------------------------------------- one instance per data dir
def make_project(root: Path) -> Path:
    """A project folder as a checkout has it: dagster.yaml and configs/default.yaml writing to ./data."""
    (root / "configs").mkdir(parents=True)
    (root / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    write_config(root / "configs/default.yaml", Path("data"), SAMPLE_LEGAL)
    return root


def open_instance(home: Path) -> dg.DagsterInstance:
    """The instance of `home`, opened from that folder: the project's dagster.yaml names its storage relative to it."""
    old_cwd = os.getcwd()
    os.environ["DAGSTER_HOME"] = str(home)
    os.chdir(home)
    try:
        return dg.DagsterInstance.get()
    finally:
        os.chdir(old_cwd)
        os.environ.pop("DAGSTER_HOME", None)


def latest_raw_path(home: Path) -> str:
    with open_instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus"))
        return event.asset_materialization.metadata["path"].value


def test_another_data_dir_never_changes_the_project_instance(tmp_path):
    project = make_project(tmp_path / "project")
    select = ["--select", "raw_corpus", "--partition", "legal"]
    assert cli(["run", *select], project).returncode == 0
    other = tmp_path / "elsewhere"
    proc = cli(["run", *select, "--data-dir", str(other)], project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"the instance of {other}" in proc.stdout
    assert (other / "raw_corpus/legal" / MANIFEST).exists() and (other / ".dagster/dagster.yaml").exists()

    # The project's instance holds the project's run only, and its asset still points at the project's data.
    assert latest_raw_path(project).startswith(str(project / "data"))
    assert latest_raw_path(other / ".dagster").startswith(str(other))
    with open_instance(project) as instance:
        assert instance.get_runs_count() == 1

    # DAGSTER_HOME pointed at the project's instance for another data dir: refused, not mixed.
    proc = cli(["run", *select, "--data-dir", str(tmp_path / "third")], project, DAGSTER_HOME=str(project))
    assert_one_line_error(proc, 2, "records the runs of data dir", str((project / "data").resolve()))
    assert not (tmp_path / "third" / "raw_corpus").exists()


def test_two_first_runs_started_together_both_work(tmp_path):
    project = make_project(tmp_path / "project")
    cmd = [str(BIN / "llm-pipeline"), "run", "--select", "raw_corpus", "--partition", "legal"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    procs = [subprocess.Popen(cmd + (["--data-dir", str(tmp_path / "other")] if i else []), cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    # And a third into the same (project) instance as the first, at the same time.
    procs.append(subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]


# ---------------------------------------------------------------- progress, without library noise
def test_short_real_run_shows_progress_and_no_library_warnings(tmp_path):
    from training.fixtures import tiny_config, write_deduped_shards

    cfg = tiny_config(tmp_path, tracking={"wandb": True, "wandb_mode": "offline"})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    write_deduped_shards(cfg.data_path)
    proc = cli(["run", "--config", str(path), "--select", "tokenizer,base_checkpoint,lora_adapter,dpo_model"], tmp_path,
               LLM_PIPELINE_PROGRESS_SECONDS="0")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for stage in ("base_checkpoint", "lora_adapter", "dpo_model"):
        lines = [ln for ln in out.splitlines() if ln.strip().startswith(f"{stage}: step ")]
        assert lines, out[-3000:]
        assert any("loss" in ln and "tokens/s" in ln for ln in lines), lines
        assert any(" left" in ln for ln in lines) and "done in" in lines[-1], lines
    for noise in ("Setting accelerator to CPU", "FutureWarning", "DeprecationWarning", "Running in WANDB offline", "Traceback"):
        assert noise not in out, noise

    # The same lines are in the Dagster run's log (what the UI shows).
    os.environ["DAGSTER_HOME"] = str(cfg.data_path / ".dagster")
    try:
        with dg.DagsterInstance.get() as instance:
            (run,) = instance.get_runs()
            messages = [e.user_message for e in instance.all_logs(run.run_id)]
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    assert any(m.startswith("base_checkpoint: step ") and "tokens/s" in m for m in messages)
