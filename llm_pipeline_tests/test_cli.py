"""The CLI's small commands: config errors without tracebacks, dvc.yaml in sync, launch files."""

from __future__ import annotations

from pathlib import Path

import yaml

from llm_pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_check_config_error_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  legal:\n    sources: [{path: x}]\ntokenizer:\n  vocab_sise: 10\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: tokenizer.vocab_sise: unknown key" in err and "Traceback" not in err


def test_committed_dvc_yaml_matches_the_default_config(monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["dvc-yaml", "--check"]) == 0


def test_launch_writes_a_valid_accelerate_config(tmp_path, capsys):
    out = tmp_path / "launch"
    assert main(["launch", "--config", str(REPO / "configs/default.yaml"), "lora_adapter", "--num-processes", "4",
                 "--deepspeed", "zero3", "--out", str(out)]) == 0
    acc = yaml.safe_load((out / "accelerate.yaml").read_text())
    assert acc["num_processes"] == 4 and acc["distributed_type"] == "DEEPSPEED"
    assert "accelerate launch" in capsys.readouterr().out
