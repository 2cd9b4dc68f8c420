"""wandb tracking: offline runs under the data folder, or nothing at all when disabled."""

from llm_pipeline.training.tracking import report_to, tracked_run
from llm_pipeline_tests.training.fixtures import tiny_config


def test_disabled_tracking_is_a_no_op(tmp_path):
    cfg = tiny_config(tmp_path)  # tracking.wandb: false
    with tracked_run(cfg, "base_checkpoint", {"a": 1}) as tracker:
        tracker.log({"loss": 1.0}, step=1)
    assert report_to(cfg) == "none" and tracker.metadata() == {"wandb": "disabled"}
    assert not (cfg.data_path / ".wandb").exists()


def test_offline_run_is_written_under_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_config(tmp_path, tracking={"wandb": True})
    with tracked_run(cfg, "base_checkpoint", {"lr": 0.1}) as tracker:
        tracker.log({"loss": 1.0}, step=1)
    meta = tracker.metadata()
    assert meta["wandb_mode"] == "offline" and meta["wandb_run_id"]
    runs = list((cfg.data_path / ".wandb").rglob(f"offline-run-*-{meta['wandb_run_id']}"))
    assert runs and str(runs[0]) == meta["wandb_dir"]
