"""The dpo_model stage through the runner: synthetic pairs from the right split, an adapter that loads with plain
PEFT, the serving manifest, DPO's reward figures, reference log-probs cached per pair, each reference and loss
type, user files in every preference format, and a default that actually moves the adapter."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_pipeline.io import dvc_hash, file_md5
from llm_pipeline.stages import dpo_model
from llm_pipeline_tests.training.fixtures import built_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "dpo_model")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(pipeline, tmp_path, **dpo):
    """The stage run directly with changed dpo_model settings, on the shared tiny SFT adapter."""
    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"dpo_model": cfg.dpo_model.model_copy(update=dpo), "allowed_roots": [str(tmp_path)]})
    inputs = {name: results[name].output_dir for name in ("lora_adapter", "base_checkpoint", "tokenizer")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    out = tmp_path / "out"
    out.mkdir(parents=True)
    return dpo_model.run(cfg2, inputs, out), out


def test_adapter_loads_with_plain_peft_and_holds_only_the_policy(pipeline):
    _, results = pipeline
    out = results["dpo_model"].output_dir
    base = AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir)
    model = PeftModel.from_pretrained(base, out)
    assert list(model.peft_config) == ["default"]
    assert not (out / "ref").exists()  # TRL's frozen reference copy is not saved


def test_pairs_come_from_the_right_split(pipeline):
    out = pipeline[1]["dpo_model"].output_dir
    train, held = _jsonl(out / "pairs_train.jsonl"), _jsonl(out / "pairs_eval.jsonl")
    assert train and held
    for p in train + held:
        assert p["chosen"] != p["rejected"] and p["source_id"] != p["rejected_id"]
        # By default the rejected side is the SFT model's own sampled continuation; a pair whose sample is no
        # negative is dropped with its reason, never given another document's text (trivially separable).
        assert p["rejected_source"] == "model_sample" and p["prompt"].startswith("Continue this")
    stats = pipeline[1]["dpo_model"].stats
    assert stats["rejected_sources"] == {"model_sample": len(train) + len(held)}
    assert stats["pairs_from_samples"] == len(train) + len(held) and stats["pairs_from_fallback"] == 0
    assert set(stats["pairs_dropped"]) <= {"sample_empty", "sample_equals_chosen", "sample_too_short"}
    assert all(int(p["source_id"].split("-")[1]) % 6 != 0 for p in train)
    assert all(int(p["source_id"].split("-")[1]) % 6 == 0 for p in held)


def test_serving_manifest_names_model_adapter_and_data_versions(pipeline):
    cfg, results = pipeline
    out = results["dpo_model"].output_dir
    m = json.loads((out / "serving_manifest.json").read_text())
    assert m["base_model"] == {"path": "base_checkpoint", "hash": dvc_hash(results["base_checkpoint"].output_dir)}
    assert m["adapters"][0]["path"] == "dpo_model"
    v = m["data_versions"]
    assert v["deduped_shards"] == dvc_hash(cfg.data_path / "deduped_shards")
    assert v["pairs_train.jsonl"] == file_md5(out / "pairs_train.jsonl")
    assert v["sft_train.jsonl"] == file_md5(results["lora_adapter"].output_dir / "sft_train.jsonl")


def test_stats(pipeline):
    res = pipeline[1]["dpo_model"]
    s = res.stats
    assert s["steps"] == 2 and s["pairs"] > 0
    for key in ("train_loss", "rewards_accuracies", "rewards_margins", "seconds", "peak_rss_mb"):
        assert s[key] is not None, key
    assert "no second model" in res.metadata["reference"]
    # DPO's log(2) (the reference is the SFT model itself) plus the chosen answers' NLL term (sft_weight 1.0)
    assert s["first_train_loss"] > 0.6931 + 1.0 and s["sft_weight"] == 1.0
    settings = res.metadata["settings"]
    for name in ("precision", "gradient_checkpointing", "cpu_threads", "learning_rate", "warmup_ratio", "reference"):
        assert settings[name]["reason"], name
    assert settings["learning_rate"]["value"] == 1e-3  # the LoRA DPO default, not TRL's full-fine-tuning 1e-6
    assert settings["reference_logps"]["value"] == "computed once"
    assert settings["engine"]["value"] == "loop" and "one process" in settings["engine"]["reason"]
    assert s["engine"] == "loop" and s["step_seconds"] is not None


def test_trls_trainer_still_runs_the_same_rows(pipeline, tmp_path):
    """engine trl (what a multi-process launch gets): the same pairs, loss and figures through DPOTrainer."""
    res, out = _run(pipeline, tmp_path, max_steps=2, engine="trl")
    assert res.stats["engine"] == "trl" and res.stats["steps"] == 2
    # The same first loss as the loop's, chosen-NLL term included: TRL's trainer carries our loss, not its own.
    assert res.stats["first_train_loss"] == pytest.approx(pipeline[1]["dpo_model"].stats["first_train_loss"], rel=0.05)
    assert res.stats["eval_rewards_accuracies"] is not None and (out / "adapter_model.safetensors").exists()


def test_engine_follows_the_launch(monkeypatch):
    from llm_pipeline.training.finetune import FinetuneError

    assert dpo_model.choose_engine("auto")[0] == "loop"
    monkeypatch.setenv("WORLD_SIZE", "4")
    engine, why = dpo_model.choose_engine("auto")
    assert engine == "trl" and "4 processes" in why
    with pytest.raises(FinetuneError, match="one process"):
        dpo_model.choose_engine("loop")


def test_reference_logps_are_cached_with_the_dataset_version(pipeline, tmp_path):
    res, _ = _run(pipeline, tmp_path, max_steps=1)
    assert res.metadata["settings"]["reference_logps"]["value"] == "cached"  # same pairs and model as the first run
    res2, _ = _run(pipeline, tmp_path / "fewer", max_steps=1, pairs_per_domain=3)
    assert res2.metadata["settings"]["reference_logps"]["value"] == "computed once"  # other pairs: another version


def test_the_default_learning_rate_moves_the_adapter(pipeline, tmp_path):
    # Plain DPO (no chosen-NLL term), so that the logged loss is DPO's own: 0.69 is where it starts.
    ours, out = _run(pipeline, tmp_path, max_steps=30, sft_weight=0.0)
    trl_rate, trl_out = _run(pipeline, tmp_path / "trl", max_steps=30, learning_rate=1e-6, sft_weight=0.0)  # TRL's DPOConfig default

    def late_loss(folder):  # the last ten steps' mean: one batch's loss is noisy on this tiny model
        losses = [e["loss"] for e in json.loads((folder / "training_log.json").read_text()) if "loss" in e]
        return sum(losses[-10:]) / 10

    assert late_loss(out) < 0.69 < late_loss(trl_out)
    assert ours.stats["rewards_margins"] > 50 * abs(trl_rate.stats["rewards_margins"])


def test_the_sft_term_keeps_the_chosen_text_likely(pipeline, tmp_path):
    """Trivially separable pairs (another document as rejected): plain DPO widens the margin by pushing both answers
    down; with the chosen answers' NLL term the chosen text stays at least as likely as under the SFT model."""
    def chosen_logps(folder):
        rows = [e["logps/chosen"] for e in json.loads((folder / "training_log.json").read_text()) if "logps/chosen" in e]
        return rows[0], rows[-1]

    plain, plain_out = _run(pipeline, tmp_path / "plain", max_steps=20, rejected="other_document", sft_weight=0.0)
    rpo, rpo_out = _run(pipeline, tmp_path / "rpo", max_steps=20, rejected="other_document", sft_weight=1.0)
    (p0, p1), (r0, r1) = chosen_logps(plain_out), chosen_logps(rpo_out)
    assert r1 - r0 > p1 - p0  # the chosen answers gained more likelihood (or lost less) with the term
    assert r1 > r0
    assert plain.stats["first_train_loss"] == pytest.approx(0.6931, abs=2e-3)  # plain DPO against the SFT model itself
    assert rpo.stats["sft_weight"] == 1.0 and plain.stats["sft_weight"] == 0.0


@pytest.mark.parametrize("reference, loss_type", [("base", "sigmoid"), ("sft", "ipo"), ("sft", "hinge")])
def test_reference_and_loss_types(pipeline, tmp_path, reference, loss_type):
    res, out = _run(pipeline, tmp_path, max_steps=1, reference=reference, loss_type=loss_type)
    assert res.stats["steps"] == 1 and res.stats["train_loss"] is not None and res.stats["loss_type"] == loss_type
    assert ("disabled" in res.metadata["reference"]) == (reference == "base")


@pytest.mark.parametrize("rows", [
    [{"prompt": f"Is clause {i} binding?", "chosen": f"Yes, clause {i} binds both parties.", "rejected": "No idea."} for i in range(12)],
    [{"chosen": f"\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is tort {i}?\n\nAssistant: A civil wrong.",
      "rejected": f"\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is tort {i}?\n\nAssistant: Pizza."} for i in range(12)],
    [{"conversations": [{"from": "human", "value": f"Define dosage {i}."}], "chosen": {"from": "gpt", "value": "The amount of a drug."},
      "rejected": {"from": "gpt", "value": "A kind of fruit."}} for i in range(12)],
], ids=["prompt_chosen_rejected", "hh_rlhf", "sharegpt"])
def test_user_preference_files_in_each_format(pipeline, tmp_path, rows):
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    res, out = _run(pipeline, tmp_path, max_steps=1, data=[str(data)])
    assert res.stats["derivation"] == "files" and res.stats["pairs"] + res.stats["eval_pairs"] == 12


def test_model_sample_rejections_come_from_the_sft_model(pipeline):
    """Sampled (the tiny SFT model's greedy continuation is only newlines), seeded, and a pair whose sample is no
    negative is dropped under a named reason; a stop asked for before a batch drops the pairs not sampled."""
    from collections import Counter

    from transformers import AutoTokenizer

    from llm_pipeline.training.preference_data import model_rejections

    _, results = pipeline
    lora = results["lora_adapter"].output_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir), lora)
    tok = AutoTokenizer.from_pretrained(lora)
    pairs = _jsonl(results["dpo_model"].output_dir / "pairs_train.jsonl")[:3]
    pairs.append({**pairs[0], "chosen": "x"})
    dropped = Counter()
    kept = model_rejections(pairs, model, tok, max_new_tokens=12, seed=3, dropped=dropped)
    assert len(kept) + sum(dropped.values()) == len(pairs) and set(dropped) <= {"sample_empty", "sample_equals_chosen", "sample_too_short"}
    for p in kept:
        assert p["rejected_source"] == "model_sample" and p["rejected_id"] is None
        assert len(p["rejected"].split()) >= 4 and p["rejected"].strip() != p["chosen"].strip()
    again = model_rejections(pairs, model, tok, max_new_tokens=12, seed=3)
    assert [p["rejected"] for p in again] == [p["rejected"] for p in kept]  # the seed alone decides the samples
    stopped = Counter()
    assert model_rejections(pairs, model, tok, max_new_tokens=12, dropped=stopped, should_stop=lambda: True) == []
    assert stopped == {"sampling_budget_spent": len(pairs)}


def test_too_few_pairs_skip_dpo_with_the_reason(pipeline, tmp_path):
    """Fewer usable pairs than min_pairs: no adapter, the reason in the stats, and the eval report's promotion then
    considers SFT alone (DPO is left out, not failed)."""
    res, out = _run(pipeline, tmp_path, max_steps=1, min_pairs=1000)
    assert res.stats["trained"] is False and "fewer than dpo_model.min_pairs 1000" in res.stats["skipped"]
    assert res.stats["steps"] == 0 and res.stats["pairs_from_samples"] >= res.stats["pairs"]
    assert not (out / "adapter_config.json").exists() and (out / "pairs_train.jsonl").exists()
    assert res.preview.startswith("DPO skipped:")


def test_separability_is_measured_from_the_reference_log_probs(pipeline):
    stats = pipeline[1]["dpo_model"].stats
    sep = stats["separability"]
    assert sep["pairs"] == stats["eval_pairs"] and 0 <= sep["reference_prefers_chosen"] <= 1
    assert dpo_model.separability([{"ref_chosen_logps": -2.0, "chosen_ids": [1, 2], "ref_rejected_logps": -9.0, "rejected_ids": [1, 2, 3]},
                                   {"ref_chosen_logps": -8.0, "chosen_ids": [1, 2], "ref_rejected_logps": -3.0, "rejected_ids": [1, 2, 3]}]) == {
        "pairs": 2, "reference_prefers_chosen": 0.5, "mean_per_token_margin": round(((-1 + 3) + (-4 + 1)) / 2, 4)}


def test_a_qlora_adapter_trains_on_the_full_precision_base_without_cuda(pipeline, tmp_path):
    """An SFT adapter trained with QLoRA (on a GPU) goes on the 4-bit base there; on a machine without CUDA or
    bitsandbytes it goes on the full-precision base, as it is served."""
    import shutil

    cfg, results = pipeline
    lora = tmp_path / "lora_adapter"
    shutil.copytree(results["lora_adapter"].output_dir, lora)
    stats = json.loads((lora / "stats.json").read_text())
    (lora / "stats.json").write_text(json.dumps({**stats, "method": "qlora"}))
    assert dpo_model._sft_method(lora) == "qlora"
    assert dpo_model._sft_method(tmp_path) is None
    model, method = dpo_model.load_policy(cfg, results["base_checkpoint"].output_dir, lora)
    assert dpo_model._can_quantize() or method == "lora"
    assert next(model.parameters()).dtype.is_floating_point


@pytest.fixture
def steady_clock(monkeypatch):
    """The budget's clock advanced a fixed 20 ms per reading: sampling, the reference pass and the steps then spend
    the same share of a budget on a quiet machine and a loaded one."""
    from llm_pipeline.training import budget

    ticks = iter(range(10**9))
    monkeypatch.setattr(budget, "now", lambda: 0.02 * next(ticks))


def test_a_time_budget_stops_the_loop(pipeline, tmp_path, steady_clock):
    res, _ = _run(pipeline, tmp_path, max_steps=100_000, max_train_seconds=1.0)
    assert 0 < res.stats["steps"] < 100_000
    assert res.stats["budget_spent_seconds"] <= 1.0 + 0.1  # a step's slack: a few clock readings
    sampling = res.metadata["data"]["sampling"]  # within its share, but for one batch's estimate
    assert sampling["spent_seconds"] <= sampling["allowance_seconds"] + sampling["item_seconds"] + 0.1
    budget = res.metadata["settings"]["budget"]
    assert budget["value"] == "1 s" and "dpo_model.max_train_seconds" in budget["reason"]


def test_sampling_and_the_reference_pass_count_against_the_budget(pipeline, tmp_path):
    """A budget spent before the first prompt is sampled: every pair is dropped as `sampling_budget_spent`, and
    DPO is skipped with the reason (a result, not a failure). Samples an earlier run kept cost nothing and are used."""
    import shutil

    cfg, results = pipeline
    cache = dpo_model.sample_cache(cfg, results["base_checkpoint"].output_dir, results["lora_adapter"].output_dir)
    shutil.rmtree(cache, ignore_errors=True)
    res, out = _run(pipeline, tmp_path / "cold", max_steps=2, max_train_seconds=1e-6)
    s = res.stats
    assert s["trained"] is False and s["pairs"] == 0 and s["pairs_dropped"]["sampling_budget_spent"] > 0
    assert s["budget_seconds"] == 1e-6 and s["budget_spent_seconds"] > 0
    assert res.metadata["data"]["sampling"]["items"] == 0 and res.metadata["data"]["sampling"]["items_cut"] == s["pairs_dropped"]["sampling_budget_spent"]
    # Sampled once without a budget, the same prompts are read back under the spent one: no pair is cut.
    full, _ = _run(pipeline, tmp_path / "full", max_steps=1)
    again, _ = _run(pipeline, tmp_path / "warm", max_steps=2, max_train_seconds=1e-6)
    assert "sampling_budget_spent" not in again.stats["pairs_dropped"] and again.metadata["data"]["sampling"]["items"] == 0
    assert again.stats["pairs"] == full.stats["pairs"] and again.stats["pairs_from_samples"] == full.stats["pairs_from_samples"]


def test_the_sampling_stops_where_its_share_would_be_passed(pipeline, monkeypatch):
    """A sample costs a second on the budget's clock: the first prompt is sampled alone to time it, the next batch
    is cut to what fits, and the sampling ends within its allowance (one sample's slack at most), the rest dropped
    under its reason."""
    from collections import Counter

    from transformers import AutoTokenizer

    from llm_pipeline.training import budget, preference_data

    _, results = pipeline
    t = [0.0]
    monkeypatch.setattr(budget, "now", lambda: t[0])
    real = preference_data._generate

    def costly(chunk, *args):
        t[0] += 1.0 * len(chunk)
        return real(chunk, *args)

    monkeypatch.setattr(preference_data, "_generate", costly)
    lora = results["lora_adapter"].output_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir), lora)
    tok = AutoTokenizer.from_pretrained(lora)
    pairs = (_jsonl(results["dpo_model"].output_dir / "pairs_train.jsonl") * 20)[:20]
    allowance, dropped = budget.Allowance(5.5), Counter()
    kept = preference_data.model_rejections(pairs, model, tok, max_new_tokens=8, seed=3, dropped=dropped, allowance=allowance)
    summary = allowance.summary()
    assert summary["items"] == 5 and summary["item_seconds"] == 1.0 and summary["spent_seconds"] <= 5.5
    assert dropped["sampling_budget_spent"] == 15 == summary["items_cut"]
    assert len(kept) + sum(dropped.values()) == len(pairs)
    # Nothing fits: nothing is sampled, every pair dropped with the reason.
    none, dropped = budget.Allowance(0.0), Counter()
    assert preference_data.model_rejections(pairs, model, tok, max_new_tokens=8, dropped=dropped, allowance=none) == []
    assert dropped == {"sampling_budget_spent": 20} and none.summary()["items"] == 0


def test_a_budgeted_run_accounts_for_all_its_parts(pipeline, tmp_path):
    res, out = _run(pipeline, tmp_path, max_steps=2, max_train_seconds=600)
    s = res.stats
    assert s["steps"] == 2 and s["budget_seconds"] == 600
    # The clock started before the sampling: what it counted holds the pairs, the reference pass and the steps.
    assert s["budget_spent_seconds"] >= s["pairs_seconds"] and 1 <= s["eval_pairs_scored"] <= s["eval_pairs"]
    assert "sampling the rejections, the reference pass" in res.metadata["settings"]["budget"]["reason"]


def test_the_held_out_guard_keeps_only_weights_within_its_ratio(pipeline):
    cfg, results = pipeline
    stats = results["dpo_model"].stats
    limit = cfg.dpo_model.max_heldout_perplexity_ratio
    if stats.get("skipped"):
        assert "max_heldout_perplexity_ratio" in stats["skipped"]
    else:
        g = stats["guard"]
        assert g["max_ratio"] == limit and g["documents"] > 0 and g["domains"] == sorted(cfg.domain_names)
        # An evaluation each step here (eight planned, two steps): a figure per evaluation, the kept one within it.
        assert len(g["evaluations"]) >= 2 and g["kept_step"] >= 1
        assert any(f["ratio"] <= limit for f in g["evaluations"])


def test_the_guard_scores_held_out_documents_against_the_sft_model(pipeline):
    import torch

    from llm_pipeline.training.dpo_guard import HeldOutGuard

    cfg, results = pipeline
    model, _ = dpo_model.load_policy(cfg, results["base_checkpoint"].output_dir, results["lora_adapter"].output_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(results["lora_adapter"].output_dir)
    guard = HeldOutGuard.build(model, tok, cfg.data_path / "deduped_shards", cfg.domain_names, max_ratio=1.03)
    assert {d for d, _ in guard.texts} == set(cfg.domain_names)
    assert all(abs(r - 1.0) < 1e-6 for r in guard.ratios().values())  # unchanged: the SFT model's own figure
    assert guard() and guard.figures[-1]["ratio"] == 1.0
    with torch.no_grad():  # an adapter pushed far off
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    assert not guard() and guard.figures[-1]["ratio"] > 1.03
    # No time: one document of each domain, still a figure for each (the gate judges every domain).
    assert guard.fit_budget(0.0) == len(cfg.domain_names) and guard.summary()["domains"] == sorted(cfg.domain_names)
    # Under a budget only the documents an evaluation can afford are scored at all, the SFT model's pass included.
    few = HeldOutGuard.build(model, tok, cfg.data_path / "deduped_shards", cfg.domain_names, 1.03, max_tokens=1)
    assert sorted(d for d, _ in few.texts) == sorted(cfg.domain_names) and len(few.reference) == len(cfg.domain_names)
    # Held-out general text (continued pretraining's general_data) is a domain of its own: one DPO never trains on.
    from llm_pipeline_tests.training.pretrained_fixture import general_texts

    mixed = HeldOutGuard.build(model, tok, cfg.data_path / "deduped_shards", cfg.domain_names, 1.03, general=iter(general_texts(30)))
    assert sum(d == "general" for d, _ in mixed.texts) == 12 and "general" in mixed.ratios()


def test_pairs_read_the_shards_tags_filled_with_surrogates(pipeline, tmp_path):
    from transformers import AutoTokenizer

    from llm_pipeline_tests.training.fixtures import write_tagged_shards

    cfg, results = pipeline
    shards = write_tagged_shards(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(results["tokenizer"].output_dir)
    cfg2 = cfg.model_copy(update={"dpo_model": cfg.dpo_model.model_copy(update={"rejected": "other_document"})})
    train, held, how = dpo_model.build_pairs(cfg2, shards, None, tokenizer)
    assert train and held
    assert not any("<" in p[k] for p in train + held for k in ("prompt", "chosen", "rejected"))
    assert how["redaction_tags_filled"]["filled_total"] > 0
