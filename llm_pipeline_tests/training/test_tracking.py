"""wandb tracking: offline runs under the data folder, online only with an API key, nothing at all when disabled."""

import json

import pytest

from llm_pipeline.io import dvc_hash
from llm_pipeline.training.tracking import input_hashes, report_to, resolve_mode, tracked_run
from llm_pipeline_tests.training.fixtures import tiny_config, write_deduped_shards


def test_disabled_tracking_is_a_no_op(tmp_path):
    cfg = tiny_config(tmp_path)  # tracking.wandb: false
    with tracked_run(cfg, "base_checkpoint", {"a": 1}) as tracker:
        tracker.log({"loss": 1.0}, step=1)
    assert report_to(cfg) == "none" and tracker.metadata()["wandb"] == "disabled"
    assert not (cfg.data_path / ".wandb").exists()


@pytest.mark.parametrize(
    "config_mode, env, expected",
    [
        ("offline", {}, "offline"),
        ("offline", {"WANDB_API_KEY": "k"}, "offline"),  # a key alone does not send anything
        ("online", {}, "offline"),  # asked for online but no key: stays offline, and says so
        ("online", {"WANDB_API_KEY": "k"}, "online"),
        ("online", {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled"),
        ("disabled", {"WANDB_API_KEY": "k"}, "disabled"),
    ],
)
def test_mode_follows_config_and_api_key(tmp_path, monkeypatch, config_mode, env, expected):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the package's own default must not override the config
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tiny_config(tmp_path, tracking={"wandb": True, "wandb_mode": config_mode})
    mode, reason = resolve_mode(cfg)
    assert mode == expected and reason


def test_offline_run_logs_config_metrics_and_input_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_config(tmp_path, tracking={"wandb": True})
    shards = write_deduped_shards(cfg.data_path, docs_per_domain=6)
    with tracked_run(cfg, "base_checkpoint", {"lr": 0.1}, {"deduped_shards": shards}) as tracker:
        tracker.log({"loss": 1.0}, step=1)
        config = dict(tracker.run.config)
    meta = tracker.metadata()
    assert meta["wandb_mode"] == "offline" and meta["wandb_run_id"]
    runs = list((cfg.data_path / ".wandb").rglob(f"offline-run-*-{meta['wandb_run_id']}"))
    assert runs and str(runs[0]) == meta["wandb_dir"]
    # The package list wandb keeps with each run is there, read once per process rather than once per run.
    assert "wandb==" in (runs[0] / "files" / "requirements.txt").read_text()
    assert config["stage"] == {"lr": 0.1} and config["pipeline"]["name"] == "tiny"
    assert config["input_dvc_hashes"] == {f"deduped_shards/{d}": dvc_hash(shards / d) for d in ("legal", "medicine")}
    assert all(h.endswith(".dir") for h in input_hashes(cfg, {"deduped_shards": shards}).values())
    json.dumps(meta)  # metadata must be plain values for Dagster
