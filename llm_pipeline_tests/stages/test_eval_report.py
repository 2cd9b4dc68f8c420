"""The eval_report stage end to end through the runner, on tiny inline upstream outputs."""

import json
import shutil
import time

import pytest

from evaluation.fixtures import DOMAINS, build_upstream, tiny_config
from llm_pipeline.io import dvc_hash
from llm_pipeline.runner import run_stage


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-report")
    build_upstream(root / "data")
    return root


@pytest.fixture(scope="module")
def result(upstream):
    started = time.perf_counter()
    res = run_stage(tiny_config(upstream), "eval_report")
    res.metadata["wall_s"] = time.perf_counter() - started
    return res


def test_writes_the_report_files(result):
    out = result.output_dir
    for name in ("report.md", "report.html", "metrics.json", "stats.json", "_manifest.json"):
        assert (out / name).is_file(), name
    assert result.metadata["plots"] == ["training_loss.png", "perplexity_by_domain.png", "dpo_rewards.png"]
    for name in result.metadata["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert result.preview == (out / "report.md").read_text()
    assert result.metadata["wall_s"] < 30


def test_metrics_cover_three_models_per_domain(result):
    m = json.loads((result.output_dir / "metrics.json").read_text())
    assert m["models"] == ["base", "sft", "dpo"]
    for model in m["models"]:
        by_domain = m["perplexity"][model]["by_domain"]
        assert set(by_domain) == set(DOMAINS)
        for d in DOMAINS:
            assert by_domain[d]["perplexity"] > 1 and by_domain[d]["bits_per_byte"] > 0 and by_domain[d]["documents"] == 4
    # randomly initialised adapters: the three models must really be different models
    assert len({round(m["perplexity"][x]["overall"]["perplexity"], 6) for x in m["models"]}) == 3
    assert m["preference"]["pairs"] == 8 and m["preference"]["length_baseline_accuracy"] == 1.0
    assert set(m["tasks"]) == {"base", "sft", "dpo"} and m["tasks"]["sft"]["examples"] == 8
    assert [s["source"] for s in m["samples"]] == ["sft_eval", "sft_eval", "config"]
    assert all(set(s["outputs"]) == {"base", "sft", "dpo"} for s in m["samples"])
    assert m["training"]["base"]["final_eval_loss"] == pytest.approx(3.1)


def test_lineage_hashes_every_input(result, upstream):
    lineage = json.loads((result.output_dir / "metrics.json").read_text())["lineage"]
    data = upstream / "data"
    assert lineage["inputs"]["deduped_shards/legal"] == dvc_hash(data / "deduped_shards" / "legal")
    assert lineage["inputs"]["dpo_model"] == dvc_hash(data / "dpo_model")
    assert set(lineage["inputs"]) == {"deduped_shards/legal", "deduped_shards/medicine", "tokenizer", "base_checkpoint", "lora_adapter", "dpo_model"}
    assert lineage["config_md5"] and lineage["code_version"].startswith("0.")


def test_contamination_flags_the_planted_overlap(result):
    c = json.loads((result.output_dir / "metrics.json").read_text())["contamination"]
    docs = c["sets"]["eval documents"]
    assert docs["flagged"] and docs["contaminated"] == 1 and docs["examples"][0]["id"] == "legal-0"
    assert not c["sets"]["sft_eval"]["flagged"] and result.stats["contamination_flagged"] == 1


def test_stats_hold_the_headline_numbers(result):
    s = result.stats
    assert set(s["perplexity"]) == {"base", "sft", "dpo"} and set(s["bits_per_byte"]) == {"base", "sft", "dpo"}
    assert 0 <= s["preference_accuracy"] <= 1 and s["eval_documents"] == 8


def test_html_embeds_its_plots(result):
    page = (result.output_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<style>" in page and "src=\"http" not in page


def test_missing_optional_files_become_notes(upstream, tmp_path):
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    (tmp_path / "data" / "dpo_model" / "pairs_eval.jsonl").unlink()
    (tmp_path / "data" / "lora_adapter" / "training_log.json").unlink()
    res = run_stage(tiny_config(tmp_path, samples=0, prompts=[]), "eval_report")
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["preference"] is None and "preference_accuracy" not in res.stats
    assert any("pairs_eval.jsonl" in n for n in m["notes"]) and any("training_log.json" in n for n in m["notes"])
    assert "pairs_eval.jsonl" in (res.output_dir / "report.md").read_text()
