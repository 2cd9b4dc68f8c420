"""The reward_model stage through the runner: held-out accuracy beside its baselines, an adapter that loads with plain
transformers + PEFT and scores as the stage does, the serving manifest, user preference files, and a run that
resumes from its checkpoint after a crash."""

import json

import pytest
import torch

from llm_pipeline.io import dvc_hash, file_md5
from llm_pipeline.stages import reward_model
from llm_pipeline.training import dpo_pairs, reward_loop, reward_scoring
from llm_pipeline.training.device import plan_device
from llm_pipeline_tests.training.rlhf_fixture import rlhf_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return rlhf_pipeline(tmp_path_factory, "reward_model")


def _run(pipeline, tmp_path, **rm):
    cfg, results = pipeline
    update = {"reward_model": cfg.reward_model.model_copy(update=rm), "allowed_roots": [str(tmp_path)]}
    cfg2 = cfg.model_copy(update=update)
    inputs = {name: results[name].output_dir for name in ("lora_adapter", "base_checkpoint", "tokenizer")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    out = tmp_path / "out"
    out.mkdir(parents=True)
    return reward_model.run(cfg2, inputs, out), out


def test_stats_put_accuracy_beside_its_baselines(pipeline):
    res = pipeline[1]["reward_model"]
    s = res.stats
    assert s["steps"] == 12 and s["pairs"] > 0 and s["eval_pairs"] > 0
    for key in ("eval_accuracy", "length_baseline_accuracy", "sft_loglik_accuracy", "sft_loglik_per_token_accuracy"):
        assert 0 <= s[key] <= 1, key
    assert s["accuracy_over_length_baseline"] == pytest.approx(s["eval_accuracy"] - s["length_baseline_accuracy"], abs=1e-4)
    assert s["train_loss"] < s["first_train_loss"]
    assert "seconds" not in s  # wall-clock figures stay out of stats (they would change the DVC metrics each run)
    settings = res.metadata["settings"]
    for name in ("learning_rate", "warmup_ratio", "cpu_threads", "precision", "init"):
        assert settings[name]["reason"], name
    assert "SFT adapter" in settings["init"]["value"]
    assert "longer answer wins" in res.preview


def test_loads_with_plain_transformers_and_peft_and_scores_as_the_stage_does(pipeline):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, results = pipeline
    out = results["reward_model"].output_dir
    manifest = json.loads((out / "serving_manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(results["base_checkpoint"].output_dir, num_labels=1,
                                                              pad_token_id=manifest["pad_token_id"])
    rm = PeftModel.from_pretrained(base, out).eval()
    pairs = [json.loads(line) for line in (out / "pairs_eval.jsonl").read_text().splitlines()][:3]
    texts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
                                     tokenize=False) for p in pairs]
    with torch.no_grad():
        plain = [float(rm(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0]) for t in texts]
    ours = reward_scoring.score(rm, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], max_length=64)
    assert ours == pytest.approx(plain, abs=1e-5)
    # The shared-prompt rows used in training give each answer the score of its own sequence.
    tokenized = [dpo_pairs.tokenize_pair(p, tok, 64, {}) for p in pairs]
    with torch.no_grad():
        chosen, rejected = reward_scoring.pair_rewards(rm, dpo_pairs.PairCollator(tok.pad_token_id)(tokenized))
    alone = reward_scoring.score(rm, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs], max_length=64)
    assert chosen.tolist() == pytest.approx(ours, abs=1e-4) and rejected.tolist() == pytest.approx(alone, abs=1e-4)


def test_serving_manifest(pipeline):
    cfg, results = pipeline
    out = results["reward_model"].output_dir
    m = json.loads((out / "serving_manifest.json").read_text())
    assert m["base_model"] == {"path": "base_checkpoint", "hash": dvc_hash(results["base_checkpoint"].output_dir)}
    assert m["adapters"][0]["path"] == "reward_model" and "AutoModelForSequenceClassification" in m["load"]
    assert m["data_versions"]["pairs_train.jsonl"] == file_md5(out / "pairs_train.jsonl")
    assert m["sft_adapter"]["hash"] == dvc_hash(results["lora_adapter"].output_dir)


def test_user_preference_file(pipeline, tmp_path):
    rows = [{"prompt": f"Is clause {i} binding?", "chosen": f"Yes, clause {i} binds both parties.", "rejected": "No idea."} for i in range(12)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"dpo_model": cfg.dpo_model.model_copy(update={"data": [str(data)]}),
                                  "reward_model": cfg.reward_model.model_copy(update={"max_steps": 2}), "allowed_roots": [str(tmp_path)]})
    inputs = {name: results[name].output_dir for name in ("lora_adapter", "base_checkpoint", "tokenizer")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    (tmp_path / "out").mkdir()
    res = reward_model.run(cfg2, inputs, tmp_path / "out")
    s = res.stats
    assert s["derivation"] == "files" and s["pairs"] + s.get("judge_pairs", 0) + s["eval_pairs"] == 12
    assert res.stats["length_baseline_accuracy"] is None or res.stats["length_baseline_accuracy"] == 1.0  # chosen is longer


def test_a_crashed_run_resumes_where_it_stopped(pipeline, tmp_path):
    cfg, results = pipeline
    tok_dir = results["lora_adapter"].output_dir
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    pairs = [json.loads(line) for line in (results["reward_model"].output_dir / "pairs_train.jsonl").read_text().splitlines()]
    tokenized = [t for t in (dpo_pairs.tokenize_pair(p, tok, 64, {}) for p in pairs) if t]
    collator = dpo_pairs.PairCollator(tok.pad_token_id)
    settings = reward_loop.RewardLoopSettings(steps=5, batch_size=4, learning_rate=1e-3, warmup_steps=0, seed=3,
                                              eval_every=100, checkpoint_every=2, log_every=1)
    plan = plan_device("fp32")

    def fresh():
        torch.manual_seed(0)
        model, _ = reward_scoring.build_reward_model(results["base_checkpoint"].output_dir, tok_dir, tok.pad_token_id)
        return model

    whole_model = fresh()
    whole = reward_loop.train(whole_model, tokenized, [], collator, settings, plan, tmp_path / "whole", "fp")

    class Crash(Exception):
        pass

    def crash_at_3(step):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        reward_loop.train(fresh(), tokenized, [], collator, settings, plan, tmp_path / "cut", "fp", on_step=crash_at_3)
    again = fresh()
    resumed = reward_loop.train(again, tokenized, [], collator, settings, plan, tmp_path / "cut", "fp")
    assert resumed.start_step == 2 and resumed.resume_note == "resumed from step-0000002.pt"
    trained = lambda m: {n: p for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    for name, value in trained(whole_model).items():
        assert torch.allclose(value, trained(again)[name], atol=1e-6), name
    assert [e["loss"] for e in resumed.log] == pytest.approx([e["loss"] for e in whole.log], rel=1e-5)
