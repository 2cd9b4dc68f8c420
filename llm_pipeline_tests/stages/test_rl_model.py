"""The rl_model stage through the runner: the held-out comparison of SFT and RL (reward, gain, KL, samples side by
side), an adapter that loads with plain PEFT, per-device settings with reasons, GRPO with rule rewards beside the
reward model, a prompt file, and clear errors for settings that cannot work."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_pipeline.config import ConfigError, load_config
from llm_pipeline.stages import rl_model
from llm_pipeline.training.preference_data import PreferenceDataError
from llm_pipeline_tests.training.rlhf_fixture import rlhf_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return rlhf_pipeline(tmp_path_factory, "rl_model")


def _run(pipeline, tmp_path, **rl):
    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"rl_model": cfg.rl_model.model_copy(update=rl), "allowed_roots": [str(tmp_path)]})
    inputs = {name: results[name].output_dir for name in ("reward_model", "lora_adapter", "base_checkpoint")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    out = tmp_path / "out"
    out.mkdir(parents=True)
    return rl_model.run(cfg2, inputs, out), out


def test_stats_compare_sft_and_rl_on_held_out_prompts(pipeline):
    res = pipeline[1]["rl_model"]
    s = res.stats
    assert s["algorithm"] == "rloo" and s["steps"] == 4 and s["completions"] == 4 * 4 * 4
    assert s["eval_reward_gain"] == pytest.approx(s["eval_reward_rl"] - s["eval_reward_sft"], abs=1e-4)
    assert s["eval_kl_to_sft"] is not None and s["eval_reward_reward_model_sft"] == s["eval_reward_sft"]
    assert "seconds" not in s and "train_seconds" in res.metadata
    settings = res.metadata["settings"]
    for name in ("generations_per_prompt", "prompts_per_step", "learning_rate", "kl_coef", "reference", "cpu_threads", "precision"):
        assert settings[name]["reason"], name
    assert settings["generations_per_prompt"]["value"] == 4 and "CPU" in settings["generations_per_prompt"]["reason"]
    assert res.metadata["prompts"] == "preference pairs"
    samples = [json.loads(line) for line in (res.output_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == s["eval_prompts"] and {"prompt", "sft", "rl"} <= set(samples[0])
    assert "| prompt | SFT | RL |" in res.preview


def test_a_budget_stops_training_and_caps_the_evaluations(pipeline, tmp_path):
    """A budget far below one step: the one step a run always takes, then the evaluations score one held-out prompt
    each (the least that gives a figure), and the stage records its budget and what its clock counted."""
    res, out = _run(pipeline, tmp_path, max_train_seconds=0.001)
    s = res.stats
    assert s["steps"] == 1 and s["stopped_by_budget"] and s["budget_seconds"] == 0.001 and s["budget_spent_seconds"] > 0
    assert s["eval_prompts"] == 1 < s["eval_prompts_held_out"]
    assert res.metadata["budget"]["eval_prompts"].startswith(f"1 of {s['eval_prompts_held_out']} held-out prompts")
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1
    assert res.metadata["settings"]["budget"]["value"] == "0.001 s"


def test_adapter_loads_with_plain_peft(pipeline):
    _, results = pipeline
    base = AutoModelForCausalLM.from_pretrained(results["base_checkpoint"].output_dir)
    model = PeftModel.from_pretrained(base, results["rl_model"].output_dir)
    assert list(model.peft_config) == ["default"]
    manifest = json.loads((results["rl_model"].output_dir / "serving_manifest.json").read_text())
    assert manifest["adapters"][0]["path"] == "rl_model" and manifest["reward_model"]["path"] == "reward_model"


def test_grpo_with_rule_rewards_and_a_prompt_file(pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Explain clause {i} of the tenancy agreement." for i in range(12)))
    res, out = _run(pipeline, tmp_path, algorithm="grpo", max_steps=2, rule_rewards={"ends_with_period": 0.5},
                    prompts_file=str(prompts), generations_per_prompt=2, prompts_per_step=2)
    s = res.stats
    assert s["algorithm"] == "grpo" and s["steps"] == 2 and s["completions"] == 8
    assert "eval_reward_ends_with_period_rl" in s and "eval_reward_reward_model_rl" in s
    assert res.metadata["prompts"] == "file:prompts.txt" and res.metadata["reward"]["rule_rewards"] == {"ends_with_period": 0.5}
    assert res.metadata["settings"]["generations_per_prompt"]["reason"] == "set in config"


def test_no_room_for_a_prompt_is_one_clear_error(pipeline, tmp_path):
    with pytest.raises(PreferenceDataError, match="leaves no room"):
        _run(pipeline, tmp_path, max_new_tokens=64)


@pytest.mark.parametrize("section, message", [
    ({"rule_rewards": {"polite": 1.0}}, "unknown rule reward polite"),
    ({"reward_model_weight": 0}, "nothing to reward"),
    ({"generations_per_prompt": 1}, "greater than or equal to 2"),
])
def test_bad_settings_stop_the_load(tmp_path, section, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"domains": {"a": {"sources": [{"path": "x"}]}}, "rl_model": section}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
