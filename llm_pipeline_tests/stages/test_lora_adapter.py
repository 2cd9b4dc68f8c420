"""The lora_adapter stage through the runner: derived SFT data, a PEFT adapter that loads with plain PEFT, user
files in other formats, and methods this machine cannot run."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_pipeline.runner import run_stage
from llm_pipeline.training.finetune import FinetuneError
from llm_pipeline_tests.training.fixtures import built_pipeline, tiny_config, write_deduped_shards


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return built_pipeline(tmp_path_factory, "lora_adapter")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_adapter_loads_with_plain_peft(pipeline):
    _, results = pipeline
    out = results["lora_adapter"].output_dir
    base = AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir)
    model = PeftModel.from_pretrained(base, out)
    assert model.peft_config["default"].r == 4
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_log.json"} <= {p.name for p in out.iterdir()}


def test_sft_data_is_derived_from_the_right_split(pipeline):
    cfg, results = pipeline
    out = results["lora_adapter"].output_dir
    train, held = _jsonl(out / "sft_train.jsonl"), _jsonl(out / "sft_eval.jsonl")
    assert train and held
    for rec in train + held:
        assert {"prompt", "completion", "domain", "template"} <= set(rec) and rec["completion"].strip()
    # Document ids in the fixture: every 6th is held out (see fixtures.write_deduped_shards).
    assert all(int(r["source_id"].split("-")[1]) % 6 != 0 for r in train)
    assert all(int(r["source_id"].split("-")[1]) % 6 == 0 for r in held)
    assert {r["template"] for r in train} == {"continue", "summarise", "heading"}
    assert len(train) <= cfg.lora_adapter.examples_per_domain * 2


def test_stats(pipeline):
    s = pipeline[1]["lora_adapter"].stats
    assert s["steps"] == 3 and s["examples"] > 0
    assert 0 < s["trainable_share"] < 1 and s["trainable_params"] < s["total_params"]
    assert s["train_loss"] > 0 and s["eval_loss"] > 0 and s["peak_rss_mb"] > 0 and s["tokens_per_second"] > 0
    assert s["learning_rate"] == 1e-3  # the LoRA default, not TRL's full-fine-tuning 2e-5


def test_user_files_in_alpaca_format(pipeline, tmp_path):
    cfg0, _ = pipeline
    rows = [{"instruction": f"Define term {i}", "input": "", "output": f"Term {i} is a legal concept."} for i in range(20)]
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_config(tmp_path, lora_adapter={"data": [str(data)], "max_steps": 1})
    write_deduped_shards(cfg.data_path)
    for stage in ("tokenizer", "base_checkpoint"):
        run_stage(cfg, stage)
    res = run_stage(cfg, "lora_adapter")
    train = _jsonl(res.output_dir / "sft_train.jsonl") + _jsonl(res.output_dir / "sft_eval.jsonl")
    assert len(train) == 20 and res.stats["derivation"] == "files"
    assert train[0]["prompt"].startswith("Define term") and train[0]["template"] == "file:sft.jsonl"


@pytest.mark.parametrize("method, message", [("qlora", "needs a CUDA GPU"), ("prefix", "not supported")])
def test_methods_that_cannot_run_here_fail_clearly(pipeline, method, message):
    cfg, _ = pipeline
    from llm_pipeline.training.device import plan_device
    from llm_pipeline.training.finetune import peft_config

    bad = cfg.lora_adapter.model_copy(update={"method": method})
    if method == "qlora" and not plan_device().use_cpu:
        pytest.skip("the CPU message applies on machines without CUDA")
    with pytest.raises(FinetuneError, match=message):
        peft_config(bad, plan_device())
