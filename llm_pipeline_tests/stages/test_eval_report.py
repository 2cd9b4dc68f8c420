"""The eval_report stage end to end through the runner, on tiny inline upstream outputs."""

import json
import shutil
from pathlib import Path

import pytest

from evaluation.fixtures import CANARY, DOMAINS, build_upstream, tiny_config
from llm_pipeline.defs.checks import check_results
from llm_pipeline.evaluation.review import import_reviews
from llm_pipeline.io import dvc_hash
from llm_pipeline.runner import run_stage


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-report")
    build_upstream(root / "data", plant_canary=True)
    canaries = {"canaries": [{"text": CANARY, "entity": "PERSON"}, {"text": "c.ostrowski-fenn@quayside-legal.net", "entity": "EMAIL_ADDRESS"}]}
    (root / "canaries.json").write_text(json.dumps(canaries))
    return root


def _config(upstream, **extra):
    return tiny_config(upstream, canaries_file=str(upstream / "canaries.json"), **extra)


@pytest.fixture(scope="module")
def result(upstream):
    return run_stage(_config(upstream), "eval_report")


def test_writes_the_report_files(result):
    out = result.output_dir
    for name in ("report.md", "report.html", "metrics.json", "stats.json", "_manifest.json"):
        assert (out / name).is_file(), name
    assert result.metadata["plots"] == ["training_loss.png", "perplexity_by_domain.png", "dpo_rewards.png", "training_compute.png", "policy_rewards.png"]
    for name in result.metadata["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert result.preview == (out / "report.md").read_text()


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
    assert set(lineage["inputs"]) == {"deduped_shards/legal", "deduped_shards/medicine", "tokenizer", "base_checkpoint", "lora_adapter", "dpo_model", "canaries_file"}
    assert lineage["config_md5"] and lineage["code_version"].startswith("0.")
    assert lineage["config_fingerprint"] and "`" + lineage["code_version"] + "`" in (result.output_dir / "report.md").read_text()


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
    assert page.count("data:image/png;base64,") == 5 and "<style>" in page and "src=\"http" not in page


def test_missing_optional_files_become_notes(upstream, tmp_path):
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    (tmp_path / "data" / "dpo_model" / "pairs_eval.jsonl").unlink()
    (tmp_path / "data" / "lora_adapter" / "training_log.json").unlink()
    res = run_stage(tiny_config(tmp_path, samples=0, prompts=[]), "eval_report")
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["preference"] is None and "preference_accuracy" not in res.stats
    assert any("pairs_eval.jsonl" in n for n in m["notes"]) and any("training_log.json" in n for n in m["notes"])
    assert "pairs_eval.jsonl" in (res.output_dir / "report.md").read_text()


def test_probes_and_adversarial_answers_for_every_model(result):
    m = json.loads((result.output_dir / "metrics.json").read_text())
    probes = m["probes"]
    assert probes["probes"] == 3 and probes["shots"] == 2 and set(probes["accuracy"]) == {"base", "sft", "dpo"}
    assert all(set(item["answers"]) == {"base", "sft", "dpo"} for item in probes["items"])
    adv = m["adversarial"]
    assert adv["prompts"] == 6 and all(set(item["answers"]) == {"base", "sft", "dpo"} for item in adv["items"])
    md = (result.output_dir / "report.md").read_text()
    assert "## Few-shot probes" in md and "## Safety: adversarial prompts" in md and adv["items"][0]["prompt"] in md


def test_a_leaked_canary_fails_its_gate_without_failing_the_stage(result):
    m = json.loads((result.output_dir / "metrics.json").read_text())
    name, email = m["canaries"]["items"]
    assert name["leaked"] and name["found_in"] == {"deduped_shards/medicine": 1} and not email["leaked"]
    assert CANARY not in (result.output_dir / "report.md").read_text()  # the report names canaries masked
    gates = {g["name"]: g for g in m["gates"]}
    assert set(gates) == {"dpo_vs_sft_perplexity", "vs_original_bits_per_byte", "vs_base_bits_per_byte", "no_canary_leak"}
    assert not gates["no_canary_leak"]["passed"] and gates["no_canary_leak"]["observed"] == 1
    assert gates["vs_original_bits_per_byte"]["passed"] and "trained from scratch" in gates["vs_original_bits_per_byte"]["why"]
    assert m["promoted"] is False and result.stats["promoted"] is False and result.stats["canaries_leaked"] == 1
    # A leak blocks every candidate: neither DPO nor SFT ships, and the summary says so. There is no rl_model here:
    # RL is the first candidate in the order, recorded as not run with the reason.
    assert [(c["model"], c["ran"]) for c in m["candidates"]] == [("rl", False), ("dpo", True), ("sft", True)]
    assert not any(c["promoted"] for c in m["candidates"])
    assert result.stats["verdict"].startswith("RL not run (rl_model is not materialized")
    assert result.stats["verdict"].endswith("no model promoted") and "PII canary leaked" in result.stats["verdict"]

    manifest = json.loads((result.output_dir / "serving_manifest.json").read_text())
    assert manifest["adapter"] == "dpo_model"  # the first candidate's own manifest, carried over
    assert manifest["promoted"] is False and manifest["model"] is None and "no_canary_leak" in [g["name"] for g in manifest["failed_gates"]]
    assert set(manifest["not_chosen"]) == {"rl", "dpo", "sft"} and manifest["not_chosen"]["rl"].startswith("not run: rl_model")

    (check,) = check_results("eval_report", _config(result.output_dir.parent.parent), result)
    assert check.check_name == "promotion_gates" and check.passed is False
    assert "no_canary_leak" in check.description


def test_gates_and_plots_reach_the_dagster_metadata(result):
    assert "not promoted" in result.metadata["gates_md"].lower() and "no_canary_leak" in result.metadata["gates_md"]
    assert result.metadata["plots_md"].count("data:image/png;base64,") == 5
    assert "## Promotion gates" in result.preview


def test_hardest_documents_exported_for_review(result):
    m = json.loads((result.output_dir / "metrics.json").read_text())
    rv = m["review"]
    assert rv["model"] == "dpo" and rv["records"] == 6 and rv["by_domain"] == {"legal": 3, "medicine": 3}
    # the exported documents are the highest mean-NLL held-out documents of their domain
    records = json.loads((result.output_dir / "review" / "records.json").read_text())
    for domain in DOMAINS:
        nlls = [r["metadata"]["nll"] for r in records if r["metadata"]["domain"] == domain]
        assert nlls == sorted(nlls, reverse=True)
    assert all(r["fields"]["prompt"].startswith(f"Continue this {r['metadata']['domain']} text:") for r in records)
    assert (result.output_dir / "review" / "settings.json").is_file()
    assert import_reviews(result.output_dir / "review" / "records.json") == []  # nothing reviewed yet


def test_all_gates_passing_promotes(upstream, tmp_path):
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    res = run_stage(tiny_config(tmp_path, samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0,
                                max_dpo_vs_sft_perplexity_ratio=1000.0, max_vs_base_bits_per_byte_ratio=None), "eval_report")
    manifest = json.loads((res.output_dir / "serving_manifest.json").read_text())
    assert manifest["promoted"] is True and manifest["failed_gates"] == [] and manifest["model"] == "dpo"
    (check,) = check_results("eval_report", tiny_config(tmp_path), res)
    assert check.passed is True


def _with_original(tmp_path) -> Path:
    """A copy of the upstream outputs whose base_checkpoint started from a pretrained model ("original") that reads
    the held-out text with a tokenizer of its own (other tokens, as an unextended one would give)."""
    from evaluation.fixtures import document, make_model, make_tokenizer
    import random

    rng = random.Random(3)
    tok = make_tokenizer([document(rng, d) for d in DOMAINS for _ in range(20)], vocab_size=400)
    original = tmp_path / "original"
    make_model(len(tok), seed=7).save_pretrained(str(original))
    tok.save_pretrained(str(original))
    return original


def test_a_failed_dpo_gate_ships_the_sft_adapter_and_compares_with_the_original(upstream, tmp_path):
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    original = _with_original(tmp_path)
    (tmp_path / "data" / "lora_adapter" / "serving_manifest.json").write_text(json.dumps({"adapters": [{"name": "lora_adapter"}]}))
    cfg = tiny_config(tmp_path, samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0,
                      max_dpo_vs_sft_perplexity_ratio=1e-3, max_vs_original_bits_per_byte_ratio=1e3, max_vs_base_bits_per_byte_ratio=1e3)
    cfg.base_checkpoint.source, cfg.base_checkpoint.model, cfg.tokenizer.mode = "pretrained", str(original), "extend"
    res = run_stage(cfg, "eval_report")
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["promoted"] is True and m["promoted_model"] == "sft"
    assert res.stats["verdict"].startswith("RL not run (rl_model is not materialized")
    assert "; DPO not promoted: perplexity " in res.stats["verdict"] and res.stats["verdict"].endswith("; SFT adapter promoted")
    manifest = json.loads((res.output_dir / "serving_manifest.json").read_text())
    assert manifest["model"] == "sft" and manifest["adapter_folder"] == "lora_adapter" and manifest["adapters"] == [{"name": "lora_adapter"}]
    assert manifest["not_chosen"]["dpo"].startswith("not chosen: perplexity")
    (check,) = check_results("eval_report", cfg, res)
    assert check.passed is True  # a model ships: the blocking check does not stop the run

    # The original model, scored with its own tokenizer, in bits per byte beside every model.
    assert "original" in m["perplexity"] and "original" not in m["models"] and m["original"]["origin"].startswith("pretrained:")
    orig, sft = m["perplexity"]["original"]["overall"], m["perplexity"]["sft"]["overall"]
    assert orig["bytes"] == sft["bytes"] and orig["tokens"] != sft["tokens"]
    gate = {g["name"]: g for g in m["gates"]}["vs_original_bits_per_byte"]
    assert gate["observed"] >= round(sft["bits_per_byte"] / orig["bits_per_byte"], 4) - 1e-4
    assert res.stats["sft_vs_original_bits_per_byte"] == pytest.approx(sft["bits_per_byte"] / orig["bits_per_byte"], abs=1e-4)
    md = (res.output_dir / "report.md").read_text()
    assert "## Against the original model and base_checkpoint" in md and "bits/byte vs Original" in md
    assert "DPO not promoted" in md.split("## Summary")[0]  # the verdict opens the report


def test_training_compute_section_shows_settings_data_and_time(result):
    m = json.loads((result.output_dir / "metrics.json").read_text())
    comp = m["compute"]["models"]
    assert set(comp) == {"base", "sft", "dpo"} and m["compute"]["total_seconds"] == pytest.approx(7.0)
    assert [comp[x]["cumulative_seconds"] for x in ("base", "sft", "dpo")] == pytest.approx([2.5, 5.5, 7.0])
    assert comp["base"]["data"] == {"unit": "tokens", "used": 3840, "available": 1920, "passes": 2.0}
    assert comp["sft"]["data"]["used"] == 2 * (600 + 240) and comp["sft"]["data"]["available"] == 2 * (900 + 120)
    assert comp["dpo"]["data"]["passes"] == pytest.approx(8 * 8 / 24, abs=1e-3) and "dropped" in comp["dpo"]["data"]["note"]
    assert {r["domain"] for r in comp["dpo"]["by_domain"]} == {"legal", "medicine"}
    # every chosen setting keeps the reason its stage recorded; the base model's come from its stats and config
    assert comp["sft"]["settings"]["learning_rate"]["reason"].startswith("default for adapter SFT")
    assert comp["base"]["settings"]["precision"]["value"] == "fp32" and comp["base"]["settings"]["learning_rate"]["value"] == 3e-3
    md = (result.output_dir / "report.md").read_text()
    for title in ("## Training compute: what each model cost and bought", "## Training settings and why", "## Training data used vs available"):
        assert title in md
    assert "`gradient_checkpointing`" in md and "legal · documents" in md and "training_compute.png" in md
    assert "### Training settings and why" in result.metadata["compute_md"] and result.metadata["training_seconds"] == pytest.approx(7.0)


def test_unchanged_models_and_domains_are_read_from_the_result_cache(result, upstream, tmp_path):
    """A second report after one domain's shard changed scores only that domain again; the numbers stay the same."""
    first = json.loads((result.output_dir / "metrics.json").read_text())
    # The cache's hits are a fact of this run, not of the report: in the stats, kept out of the hashed output.
    assert result.stats["perplexity_cache"] == {"hits": 0, "misses": 6}  # 3 models x 2 domains, all computed
    # The report's output folder stays behind; its result cache (.cache/eval_report) comes along.
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=lambda folder, names: ["eval_report"] if Path(folder) == upstream / "data" else [])
    (tmp_path / "data" / "deduped_shards" / "medicine" / "README").write_text("a new file: a new shard version\n")
    res = run_stage(_config(tmp_path), "eval_report")
    again = json.loads((res.output_dir / "metrics.json").read_text())
    assert res.stats["perplexity_cache"] == {"hits": 3, "misses": 3}  # legal from the cache, medicine scored again
    for model in ("base", "sft", "dpo"):
        for d in DOMAINS:
            assert again["perplexity"][model]["by_domain"][d] == pytest.approx(first["perplexity"][model]["by_domain"][d])


def test_models_scored_in_parallel_threads_give_the_same_numbers(upstream, tmp_path, monkeypatch):
    from llm_pipeline.evaluation import cache as cache_mod
    from llm_pipeline.evaluation import data, models
    from llm_pipeline.stages import eval_report

    monkeypatch.setattr(cache_mod.ResultCache, "get", lambda self, kind, key: None)  # score every time
    cfg = _config(upstream)
    dp = cfg.data_path
    notes = data.Notes()
    domains = data.domain_folders(dp / "deduped_shards", cfg.domain_names, notes)
    docs = {d: data.eval_documents(p, d, cfg.eval_fraction, 50, 4000) for d, p in domains.items()}
    loaded = models.load_models(dp / "base_checkpoint", {"sft": dp / "lora_adapter", "dpo": dp / "dpo_model"}, notes,
                                tokenizer_dir=dp / "tokenizer")
    folders = {"base": [dp / "base_checkpoint"], "sft": [dp / "base_checkpoint", dp / "lora_adapter"],
               "dpo": [dp / "base_checkpoint", dp / "dpo_model"]}
    with models.cpu_threads_for(loaded) as threads:
        assert models.parallel_workers(loaded, threads) >= 1
        one, scores_one, _ = eval_report._perplexities(cfg, loaded, docs, domains, folders, workers=1)
        three, scores_three, _ = eval_report._perplexities(cfg, loaded, docs, domains, folders, workers=3)
    assert one == three
    assert {m: {d: [s.nll for s in v] for d, v in by.items()} for m, by in scores_one.items()} == \
           {m: {d: [s.nll for s in v] for d, v in by.items()} for m, by in scores_three.items()}


def test_a_gate_failure_through_the_cli_is_a_result_not_a_failure(upstream, tmp_path):
    """`llm-pipeline run` in a subprocess: DPO fails its gate, the SFT adapter ships, the run exits 0 and prints the
    one-line verdict, with no traceback."""
    import os
    import subprocess
    import sys

    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: tiny\n"
        "domains:\n" + "".join(f"  {d}:\n    sources:\n      - path: in/{d}\n" for d in DOMAINS) +
        "eval_report:\n  samples: 0\n  probes: []\n  adversarial_prompts: []\n  review_per_domain: 0\n  canaries_file: null\n"
        "  max_dpo_vs_sft_perplexity_ratio: 0.001\n  max_vs_base_bits_per_byte_ratio: null\n"
        "tracking:\n  wandb: false\n", encoding="utf-8")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env = {**os.environ, "DAGSTER_HOME": str(home), "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "llm_pipeline", "run", "--config", str(config), "--select", "eval_report",
                           "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "DPO not promoted: perplexity" in out and "SFT adapter promoted" in out
    assert "Traceback" not in out
    manifest = json.loads((tmp_path / "data" / "eval_report" / "serving_manifest.json").read_text())
    assert manifest["model"] == "sft" and manifest["promoted"] is True


@pytest.fixture(scope="module")
def with_rl(upstream, tmp_path_factory):
    """The same upstream outputs plus a reward model with its judge and an RL adapter; RL's gates set so it ships."""
    from evaluation.fixtures import add_rlhf_outputs

    root = tmp_path_factory.mktemp("eval-report-rl")
    shutil.copytree(upstream / "data", root / "data", ignore=shutil.ignore_patterns("eval_report", ".*"))
    add_rlhf_outputs(root / "data")
    cfg = tiny_config(root, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0, reward_prompts=4,
                      reward_samples=2, reward_max_new_tokens=8, min_reward_gain=None, max_kl=1e6,
                      max_rl_vs_sft_perplexity_ratio=1e3, max_dpo_vs_sft_perplexity_ratio=1e3, max_vs_base_bits_per_byte_ratio=None)
    return cfg, run_stage(cfg, "eval_report")


def test_sft_dpo_and_rl_compared_on_the_same_held_out_prompts(with_rl):
    cfg, res = with_rl
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["models"] == ["base", "sft", "dpo", "rl"]
    p = m["policies"]
    assert p["prompts"] == 4 and p["samples"] == 2 and p["max_new_tokens"] == 8 and p["prompt_source"] == "dpo_model/pairs_eval.jsonl"
    assert set(p["models"]) == {"base", "sft", "dpo", "rl"} and p["not_run"] == {}
    for name, r in p["models"].items():
        assert set(r["reward"]) == {"reward_model", "judge"} and all(isinstance(v, float) for v in r["reward"].values()), name
        assert 0 <= r["preference_accuracy"] <= 1 and r["answer_tokens"] > 0
    assert p["models"]["sft"]["kl_to_sft"] == 0.0 and p["models"]["rl"]["kl_to_sft"] != 0.0
    # Two reward models with other heads: they disagree, so the judge is a second opinion, not a copy.
    assert p["models"]["rl"]["reward"]["judge"] != p["models"]["rl"]["reward"]["reward_model"]
    assert p["gains"]["rl"]["judge"] == pytest.approx(p["models"]["rl"]["reward"]["judge"] - p["models"]["sft"]["reward"]["judge"], abs=1e-5)
    assert p["scorers"]["reward_model"]["eval_accuracy"] == 0.625 and p["scorers"]["judge"]["eval_accuracy"] == 0.5
    assert len(p["side_by_side"]) == 4 and all(set(s["answers"]) == {"base", "sft", "dpo", "rl"} for s in p["side_by_side"])
    # RL is scored like the other models everywhere else too: perplexity per domain, bits per byte, task metrics.
    assert set(m["perplexity"]["rl"]["by_domain"]) == set(DOMAINS) and m["perplexity"]["rl"]["overall"]["bits_per_byte"] > 0
    assert "rl" in m["tasks"] and res.stats["reward_judge"]["rl"] == p["models"]["rl"]["reward"]["judge"]
    assert set(m["lineage"]["inputs"]) >= {"reward_model", "rl_model"}

    md = (res.output_dir / "report.md").read_text()
    section = md.split("## SFT vs DPO vs RL on the same held-out prompts")[1].split("\n## ")[0]
    assert all(f"| {label} |" in section for label in ("Base", "SFT", "DPO", "RL")) and "KL to SFT (nats/answer)" in section
    assert "Perplexity legal" in section and "Bits/byte all" in section and "sampled-token estimate" in section
    assert "## Sampled answers side by side, with their rewards" in md and "judge " in md.split("side by side, with their rewards")[1]
    assert "RL vs SFT on 4 held-out prompts: mean reward judge " in md.split("## Summary")[0]
    assert "| RL |" in res.metadata["policies_md"] and "Samples side by side" in res.metadata["policies_md"]
    assert (res.output_dir / "policy_rewards.png").read_bytes().startswith(b"\x89PNG")


def test_an_rl_model_that_passes_its_gates_ships(with_rl):
    cfg, res = with_rl
    m = json.loads((res.output_dir / "metrics.json").read_text())
    manifest = json.loads((res.output_dir / "serving_manifest.json").read_text())
    assert m["promoted_model"] == "rl" and res.stats["verdict"] == "RL adapter promoted"
    assert manifest["model"] == "rl" and manifest["adapter_folder"] == "rl_model" and manifest["adapter"] == "rl_model"
    assert manifest["not_chosen"] == {"dpo": "passed its gates, but RL comes first", "sft": "passed its gates, but RL comes first"}
    assert {g["name"] for g in manifest["gates"]} >= {"rl_vs_sft_perplexity", "rl_kl_to_sft"}
    (check,) = check_results("eval_report", cfg, res)
    assert check.passed is True

    # The same measurements under a reward gain RL did not reach: RL is not promoted, the next candidate ships, and
    # the summary says by how much RL fell short (a result, not a failure).
    from llm_pipeline.evaluation.gates import choose

    verdict = choose(cfg.eval_report.model_copy(update={"min_reward_gain": 1e3}), m)
    gain = m["policies"]["gains"]["rl"]["judge"]
    assert verdict["summary"] == f"RL not promoted: judge reward {gain:+.4f} ≤ 1000.0000 over SFT; DPO adapter promoted"


def test_a_stale_or_missing_rl_model_is_not_run_with_the_reason(upstream, tmp_path):
    from evaluation.fixtures import add_rlhf_outputs
    from llm_pipeline.evaluation.policy_rewards import stale_reason

    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report", ".*"))
    data = tmp_path / "data"
    out = add_rlhf_outputs(data, judge=False)
    current = {"lora_adapter": data / "lora_adapter", "base_checkpoint": data / "base_checkpoint"}
    assert stale_reason(out["rl_model"], "rl_model", current) is None
    assert stale_reason(data / "nothing", "rl_model", current).startswith("rl_model is not materialized")
    (data / "lora_adapter" / "sft_eval.jsonl").write_text("")  # SFT changed since RL trained on it
    assert stale_reason(out["rl_model"], "rl_model", current) == ("rl_model was built from another lora_adapter than the one "
                                                                 "evaluated here (re-run rl_model)")

    # Through the stage: the stale RL model and a DPO adapter that does not load are rows that say why, and neither
    # is a candidate; SFT is still compared under the reward model.
    (data / "dpo_model" / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    from evaluation.fixtures import _built_from
    from llm_pipeline.io import MANIFEST, write_json

    write_json(data / "reward_model" / MANIFEST, {"stage": "reward_model", **_built_from(data, "base_checkpoint", "lora_adapter")})  # re-run on the new SFT
    res = run_stage(tiny_config(tmp_path, samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0,
                                reward_prompts=2, reward_max_new_tokens=4), "eval_report")
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["models"] == ["base", "sft"]
    assert m["policies"]["not_run"]["rl"].startswith("rl_model was built from another lora_adapter")
    assert m["policies"]["not_run"]["dpo"] == "dpo_model did not load (see notes)"
    assert m["policies"]["scorers"]["judge"] == {"why": "reward_model.judge is off"}
    assert m["policies"]["models"]["sft"]["reward"]["reward_model"] is not None
    md = (res.output_dir / "report.md").read_text()
    assert "| RL | not run: rl_model was built from another lora_adapter" in md and "| DPO | not run: dpo_model did not load" in md
    assert res.stats["verdict"].startswith("RL not run (rl_model was built from another lora_adapter")
    assert "DPO not run (dpo_model did not load" in res.stats["verdict"] and res.stats["verdict"].endswith("SFT adapter promoted")


def test_a_time_cap_lowers_the_rows_scored_and_says_so(upstream, tmp_path):
    """eval_report.max_seconds far below what the configured caps cost at the training throughput the upstream
    stages recorded: one document per domain, its first 256 characters, one task example, the fewest pairs; the caps
    and why are in the metadata and metrics.json, and the report still ranks the models."""
    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    shutil.copy(upstream / "canaries.json", tmp_path / "canaries.json")
    res = run_stage(_config(tmp_path, max_seconds=0.05), "eval_report")
    caps = res.metadata["evaluation_caps"]
    assert caps["capped"] and caps["measured_by"] == "base_checkpoint" and "eval_report.max_seconds" in caps["why"]
    assert (caps["max_eval_documents"], caps["max_document_chars"], caps["max_task_examples"], caps["max_eval_pairs"]) == (1, 256, 1, 2)
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["evaluation_caps"] == caps and all(n <= 1 for n in m["eval_documents"].values())
    assert m["perplexity"] and res.stats
    # Generation sized from a timed batch: 0.05 s affords no prompt, so the task examples and the fixed lists are cut.
    gen = m["generation_cap"]
    assert gen["prompts_affordable"] == 0 and gen["kept"]["task"] == 0 and gen["cut"].get("task") == 1
    assert m["probes"]["probes"] == gen["kept"]["probes"] and m["adversarial"]["prompts"] == gen["kept"]["adversarial"]
    # The policy rewards too: a timed sampling batch says no prompt fits, and the section says why instead of running.
    pol = m["policies"]
    assert pol["cap"]["prompts"] == 0 and pol["cap"]["prompts_cut"] == pol["cap"]["prompts_available"] > 0
    assert pol["why"].startswith("the time cap leaves")
    # Loading alone spent the 0.05 s: no section timed a batch it could not afford, and the error analysis says why.
    assert gen["probe_prompts"] == 0 and pol["cap"]["probe_prompts"] == 0
    assert m["review"]["why"].startswith("not run: the time cap (0 s) was spent") and m["review"]["records"] == 0


def test_without_a_budget_or_a_time_cap_the_configured_caps_hold(upstream):
    from llm_pipeline.stages.eval_report import budget_caps

    cfg = _config(upstream)
    ec, caps = budget_caps(cfg, {}, 4)
    assert ec == cfg.eval_report and not caps["capped"] and "configured row caps hold" in caps["why"]
    budgeted = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_train_seconds": 10_000.0})})
    base = upstream / "data" / "base_checkpoint"
    ec, caps = budget_caps(budgeted, {"base_checkpoint": base}, 4)
    assert caps["seconds"] == 2_000 and "20% of training.max_train_seconds" in caps["why"]


def test_a_stage_that_skipped_training_is_not_run_with_its_own_reason(tmp_path):
    """dpo_model skipping DPO (too few pairs) leaves no adapter: the report and the verdict say why, not 'did not load'."""
    from llm_pipeline.stages.eval_report import _skip_reason

    folder = tmp_path / "dpo_model"
    folder.mkdir()
    assert _skip_reason(folder) is None  # no stats: the caller falls back to "did not load"
    (folder / "stats.json").write_text(json.dumps({"skipped": "3 training pairs, fewer than dpo_model.min_pairs 8", "trained": False}))
    assert _skip_reason(folder) == "dpo_model skipped training: 3 training pairs, fewer than dpo_model.min_pairs 8"
    (folder / "stats.json").write_text(json.dumps({"steps": 4}))
    assert _skip_reason(folder) is None
    (folder / "stats.json").write_text("{not json")
    assert _skip_reason(folder) is None


class _Clock:
    """budget.now replaced: every reading advances `step` seconds, so that loading 'takes' a known time whatever the
    machine's load."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("tick", [20.0, 60.0])
def test_the_time_cap_covers_loading_the_models(upstream, tmp_path, monkeypatch, tick):
    """eval_report.max_seconds 100: the models load first, on the budget's clock, and the rows are sized from what is
    left. At 20 s per reading the trained models take 20 s, the original 20 s more: 60 s are left. At 60 s loading the
    trained models already took 60% of the cap: the original model is not loaded, the report says why, and the gates
    compare with base_checkpoint only."""
    from llm_pipeline.training import budget

    shutil.copytree(upstream / "data", tmp_path / "data", ignore=shutil.ignore_patterns("eval_report"))
    original = _with_original(tmp_path)
    cfg = tiny_config(tmp_path, samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0, max_seconds=100)
    cfg.base_checkpoint.source, cfg.base_checkpoint.model, cfg.tokenizer.mode = "pretrained", str(original), "extend"
    monkeypatch.setattr(budget, "now", _Clock(tick))
    res = run_stage(cfg, "eval_report")
    caps = res.metadata["evaluation_caps"]
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert caps["cap_seconds"] == 100 and "left of the 100 s cap (eval_report.max_seconds) after loading the models" in caps["why"]
    if tick == 20.0:
        assert caps["load_seconds"] == 40 and caps["seconds"] == 60 and caps["models_loaded"] == 4
        assert "original" in m["perplexity"]
    else:
        assert caps["load_seconds"] == 120 and caps["seconds"] == 0 and caps["models_loaded"] == 3
        assert "original" not in m["perplexity"] and "not loaded: the time cap (100 s) was 60% spent" in m["original"]["why"]
        assert any("original pretrained model is not loaded" in n for n in m["notes"])
        # The fewest rows: one document per domain, its first 256 characters.
        assert (caps["max_eval_documents"], caps["max_document_chars"]) == (1, 256)
