"""Wall-clock figures kept out of hashed outputs, the key metrics and plots' data, and the dvc.yaml that declares them."""

from __future__ import annotations

import json

import pytest
import yaml

from llm_pipeline import metrics
from llm_pipeline.config import EvalReportConfig, load_config
from llm_pipeline.dvcgen import build, ensure_dvcignore
from llm_pipeline.io import TIMINGS, dvc_hash, move_measured, read_timed, split_measured, write_json


@pytest.mark.parametrize("key, measured", [
    ("seconds", True), ("train_seconds", True), ("tokens_per_second", True), ("peak_rss_mb", True),
    ("eval_runtime", True), ("timings_s", True), ("budget_seconds", False), ("max_train_seconds", False),
    ("steps", False), ("eval_loss", False),
])
def test_which_keys_are_wall_clock(key, measured):
    kept, moved = split_measured({key: 1.5})
    assert (key in moved) is measured and (key in kept) is not measured


def test_timings_leave_the_hashed_files_and_come_back(tmp_path):
    out = tmp_path / "lora_adapter"
    out.mkdir()
    write_json(out / "stats.json", {"steps": 3, "seconds": 2.5, "nested": {"tokens_per_second": 9.0, "loss": 1.0}})
    write_json(out / "training_log.json", [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.9, "eval_runtime": 0.3}])
    before = dvc_hash(out)
    move_measured(out)
    assert json.loads((out / "stats.json").read_text()) == {"steps": 3, "nested": {"loss": 1.0}}
    assert json.loads((out / "training_log.json").read_text())[1] == {"step": 2, "eval_loss": 1.9}
    assert read_timed(out) == {"steps": 3, "seconds": 2.5, "nested": {"tokens_per_second": 9.0, "loss": 1.0}}
    assert read_timed(out, "training_log.json")[1]["eval_runtime"] == 0.3
    # Another run's seconds change only the timings file, which the hash skips.
    hashed = dvc_hash(out)
    assert hashed != before
    write_json(out / TIMINGS, {"stats.json": {"seconds": 99.0}})
    assert dvc_hash(out) == hashed


def test_key_metrics_and_plots_data():
    stats = {"steps": 10, "train_loss": 1.5, "eval_loss": 1.7, "eval_perplexity": 5.5, "row_fill": 0.9, "precision": "fp32"}
    assert metrics.key_metrics("lora_adapter", stats) == {"steps": 10, "train_loss": 1.5, "eval_loss": 1.7, "eval_perplexity": 5.5}
    curated = metrics.key_metrics("cleaned_corpus", {"documents_in": 9, "documents_kept": 6, "quarantined": 1,
                                                     "dropped": {"too_few_words": 2}, "languages": {"en": 6}})
    assert curated == {"documents_in": 9, "documents_kept": 6, "quarantined": 1, "documents_dropped": 2}
    log = [{"step": 1, "loss": 3.0, "lr": 0.1}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.7}, {"train_runtime": 1.0}]
    assert metrics.loss_curve(log) == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]
    assert metrics.loss_curve(log, "eval_loss") == [{"step": 2, "eval_loss": 2.7}]
    report = {"perplexity": {"base": {"by_domain": {"legal": {"perplexity": 9.0}}},
                             "sft": {"by_domain": {"legal": {"perplexity": 7.0}}}}}
    assert [r["series"] for r in metrics.perplexity_table(report)] == ["legal · base", "legal · sft"]


def test_dvc_yaml_declares_cached_metrics_and_plots(tmp_path, make_fast_config):
    cfg = load_config(make_fast_config(tmp_path, domains=["legal"]), root=tmp_path)
    spec = build(cfg, "fast.yaml")
    lora = spec["stages"]["lora_adapter"]
    assert lora["metrics"] == ["data/metrics/lora_adapter.json"]  # cached: `dvc pull` brings it to a clone
    assert lora["outs"] == ["data/lora_adapter", "data/metrics/plots/lora_adapter-loss.json", "data/metrics/plots/lora_adapter-eval_loss.json"]
    assert spec["stages"]["eval_report"]["outs"][1:] == ["data/metrics/plots/perplexity.json"]
    titles = [next(iter(p.values()))["title"] for p in spec["plots"]]
    assert len(titles) == 4 and "held-out perplexity per domain and model (lower is better)" in titles
    yaml.safe_dump(spec)
    (tmp_path / ".dvcignore").write_text("# dvc's own\n")
    assert ensure_dvcignore(tmp_path) and not ensure_dvcignore(tmp_path)
    assert TIMINGS in (tmp_path / ".dvcignore").read_text().splitlines()


def test_a_config_without_canaries_checks_none(repo):
    # The sample corpus's planted canaries belong to the default config only, never to a user's config by default.
    assert EvalReportConfig().canaries_file is None
    assert load_config(repo / "configs/default.yaml", root=repo).eval_report.canaries_file == "data/sample/canaries.json"


def test_dvc_yaml_reruns_the_budgeted_stages_when_the_budget_changes(tmp_path, make_fast_config):
    budgeted = ("base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model", "eval_report")
    cfg = load_config(make_fast_config(tmp_path, domains=["legal"], training={"max_train_seconds": 60}), root=tmp_path)
    stages = build(cfg, "fast.yaml")["stages"]
    for name in budgeted:
        assert "training" in stages[name]["params"][0]["fast.yaml"], name
    assert "training" not in stages["tokenizer"]["params"][0]["fast.yaml"]
    # A config without the section names no `training` param: DVC fails a stage whose params the file lacks.
    bare = load_config(make_fast_config(tmp_path / "bare", domains=["legal"]), root=tmp_path)
    assert all("training" not in s["params"][0]["fast.yaml"] for s in build(bare, "fast.yaml")["stages"].values())
