"""What each model's training cost: read from the training stages' files, tolerant of what they did not record."""

from __future__ import annotations

from llm_pipeline.evaluation.compute import collect, compute_table, data_table, outcomes, settings_table
from llm_pipeline.evaluation.data import Notes
from llm_pipeline.io import write_json

from evaluation.fixtures import tiny_config


def _folders(tmp_path):
    dirs = {name: tmp_path / "data" / name for name in ("base_checkpoint", "lora_adapter", "dpo_model")}
    for d in dirs.values():
        d.mkdir(parents=True)
    return dirs


def test_base_settings_come_from_stats_and_config_when_it_writes_no_summary(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.base_checkpoint.learning_rate = 1e-3  # set in config from here on: its reason says so
    dirs = _folders(tmp_path)
    write_json(dirs["base_checkpoint"] / "stats.json", {"steps": 10, "train_tokens": 500, "corpus_train_tokens": 1000, "epochs": 0.5,
                                                       "seconds": 4.0, "precision": "fp32", "device": "cpu"})
    notes = Notes()
    comp = collect(cfg, dirs["base_checkpoint"], dirs["lora_adapter"], dirs["dpo_model"], notes)
    base = comp["models"]["base"]
    assert base["data"] == {"unit": "tokens", "used": 500, "available": 1000, "passes": 0.5}
    assert base["settings"]["learning_rate"] == {"value": 1e-3, "reason": "set in config"}
    assert base["settings"]["seq_len"]["reason"].startswith("config default")
    assert base["settings"]["device"]["value"] == "cpu" and base["settings_source"].startswith("stats.json")
    # SFT and DPO recorded nothing: they are left out, each with a note naming the missing file.
    assert set(comp["models"]) == {"base"} and comp["total_seconds"] == 4.0
    assert sum("training_summary.json" in n for n in notes.items) == 2


def test_sft_without_summary_shows_time_but_not_tokens(tmp_path):
    cfg = tiny_config(tmp_path)
    dirs = _folders(tmp_path)
    write_json(dirs["lora_adapter"] / "stats.json", {"steps": 5, "seconds": 2.0, "train_seconds": 1.5, "tokens_per_second": 100.0})
    comp = collect(cfg, dirs["base_checkpoint"], dirs["lora_adapter"], dirs["dpo_model"], Notes())
    sft = comp["models"]["sft"]
    assert sft["data"]["used"] is None and sft["by_domain"] == [] and sft["cumulative_seconds"] == 2.0
    metrics = {"compute": comp, "perplexity": {"base": {"overall": {"perplexity": 20.0}}, "sft": {"overall": {"perplexity": 15.0}}}}
    assert outcomes(metrics)["sft"]["perplexity_change"] == -0.25
    row = compute_table(metrics).rows[0]
    assert row[0] == "SFT" and "not recorded" in row[5] and row[7].cls == "better" and "(-25.0% vs Base)" in row[7].text
    assert [r[2] for r in settings_table(metrics).rows][:2] == ["lora", "16"]  # method and r from the config
    assert data_table(metrics).rows[0][3:5] == ["—", "—"]
