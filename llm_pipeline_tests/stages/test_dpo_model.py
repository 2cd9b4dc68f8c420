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
        # By default the rejected side is the SFT model's own continuation, another document's where it gave a blank
        # one (this tiny SFT model writes only newlines yet); the stats count which.
        assert p["rejected_source"] in ("model_sample", "other_document") and p["prompt"].startswith("Continue this")
    sources = pipeline[1]["dpo_model"].stats["rejected_sources"]
    assert sum(sources.values()) >= len(train) and set(sources) <= {"model_sample", "other_document"}
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
    from transformers import AutoTokenizer

    from llm_pipeline.training.preference_data import model_rejections

    _, results = pipeline
    lora = results["lora_adapter"].output_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir), lora)
    pairs = _jsonl(results["dpo_model"].output_dir / "pairs_train.jsonl")[:3]
    before = [p["rejected"] for p in pairs]
    replaced = model_rejections(pairs, model, AutoTokenizer.from_pretrained(lora), max_new_tokens=8)
    sampled = [p for p in pairs if p["rejected_source"] == "model_sample"]
    assert len(sampled) == replaced
    for p, old in zip(pairs, before):
        assert p["rejected"] != p["chosen"] and p["rejected"].strip()
        if p["rejected_source"] == "model_sample":
            assert p["rejected_id"] is None and p["rejected"] != old
        else:  # an empty sample keeps the other-document rejection
            assert p["rejected"] == old


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


def test_a_time_budget_stops_the_loop(pipeline, tmp_path):
    res, _ = _run(pipeline, tmp_path, max_steps=100_000, max_train_seconds=1.0)
    assert 0 < res.stats["steps"] < 100_000
    budget = res.metadata["settings"]["budget"]
    assert budget["value"] == "1 s" and "dpo_model.max_train_seconds" in budget["reason"]
