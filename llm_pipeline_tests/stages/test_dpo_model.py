"""The dpo_model stage through the runner: synthetic pairs from the right split, an adapter that loads with plain
PEFT, the serving manifest, and DPO's reward figures."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_pipeline.io import dvc_hash, file_md5
from llm_pipeline_tests.training.fixtures import built_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "dpo_model")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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
        assert p["rejected_source"] == "other_document" and p["prompt"].startswith("Continue this")
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
    assert "SFT adapter" in res.metadata["reference"]


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
