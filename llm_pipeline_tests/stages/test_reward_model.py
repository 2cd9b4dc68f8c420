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


def _pairs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_judge_learns_from_the_other_half_of_the_pairs(pipeline):
    """The reward model and its judge train on disjoint prompts, are held out on the same pairs, and both load."""
    from llm_pipeline.training.reward_split import prompt_key

    cfg, results = pipeline
    res = results["reward_model"]
    out = res.output_dir
    mine, theirs, held = _pairs(out / "pairs_train.jsonl"), _pairs(out / "judge" / "pairs_train.jsonl"), _pairs(out / "pairs_eval.jsonl")
    prompts = lambda rows: {prompt_key(p["prompt"]) for p in rows}  # noqa: E731
    assert mine and theirs and not prompts(mine) & prompts(theirs)  # no prompt on both sides
    assert not (prompts(mine) | prompts(theirs)) & prompts(held)
    s = res.stats
    assert s["pairs"] == len(mine) and s["judge_pairs"] == len(theirs) and s["judge_shared_prompts"] == 0
    assert s["judge_steps"] == 12 and 0 <= s["judge_eval_accuracy"] <= 1
    judge = res.metadata["judge"]
    assert judge["trained"] and judge["split"].startswith("by prompt") and judge["eval_pairs"] == s["eval_pairs"]
    assert judge["settings"]["learning_rate"]["reason"] and "judge (other half of the pairs" in res.preview
    manifest = json.loads((out / "serving_manifest.json").read_text())
    assert [a["path"] for a in manifest["adapters"]] == ["reward_model", "reward_model/judge"]
    assert manifest["data_versions"]["judge/pairs_train.jsonl"] == file_md5(out / "judge" / "pairs_train.jsonl")

    # Both load as a user would and score the same held-out answers differently: two models, not one saved twice.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    base = results["base_checkpoint"].output_dir
    scores = [reward_scoring.score(reward_scoring.load_reward_model(base, d, tok.pad_token_id), tok,
                                   [p["prompt"] for p in held[:4]], [p["chosen"] for p in held[:4]], max_length=64)
              for d in (out, out / "judge")]
    assert scores[0] != scores[1]
    # rl_model trains on the prompts of both halves (it never sees the judge's scores).
    from llm_pipeline.stages.rl_model import _prompts

    train, _, _ = _prompts(cfg, out)
    assert {prompt_key(p) for p in train} == prompts(mine) | prompts(theirs)


def test_without_the_judge_the_reward_model_trains_on_every_pair(pipeline, tmp_path):
    res, out = _run(pipeline, tmp_path, judge=False, max_steps=2)
    cfg, results = pipeline
    full = results["reward_model"].stats
    assert res.stats["pairs"] == full["pairs"] + full["judge_pairs"] and "judge_pairs" not in res.stats
    assert not (out / "judge").exists() and res.metadata["judge"] == {"trained": False, "split": res.metadata["judge"]["split"],
                                                                      "why": "reward_model.judge is off"}
    assert [a["path"] for a in json.loads((out / "serving_manifest.json").read_text())["adapters"]] == ["reward_model"]


JUDGE_KILL_HOOK = """
import os, sys, threading
from llm_pipeline.training import checkpoints

fd = int(os.environ["KILL_FD"])
save = checkpoints.save_checkpoint

def announced(directory, *args, **kwargs):
    save(directory, *args, **kwargs)
    if str(directory).endswith("reward_model-judge"):
        os.write(fd, b"judge\\n")
        threading.Event().wait()  # until the SIGKILL

checkpoints.save_checkpoint = announced
from llm_pipeline.cli import main
sys.argv = ["llm-pipeline", *sys.argv[1:]]
sys.exit(main())
"""


def test_a_run_killed_while_training_the_judge_resumes_it_from_its_checkpoint(pipeline, tmp_path):
    """SIGKILL the real CLI right after the judge's first checkpoint; the re-run continues both models from their
    checkpoints and ends with the weights of the uninterrupted run."""
    import os
    import select
    import shutil
    import signal
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    from llm_pipeline.config import load_config
    from llm_pipeline.runner import run_stage

    cfg, results = pipeline
    project = tmp_path / "project"
    for name in ("deduped_shards", "tokenizer", "base_checkpoint", "lora_adapter"):
        shutil.copytree(cfg.data_path / name, project / "data" / name)
    dumped = cfg.model_dump(mode="json")
    dumped.update(data_dir="data", allowed_roots=[])
    (project / "pipeline.yaml").write_text(yaml.safe_dump(dumped))
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", JUDGE_KILL_HOOK, "stage", "reward_model", "--config", "pipeline.yaml"],
                            cwd=project, env={**os.environ, "KILL_FD": str(write_end)}, pass_fds=(write_end,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 300)
        said = os.read(read_end, 16).decode().strip() if ready else ""
        if said != "judge":
            proc.kill()
            pytest.fail(f"the stage exited ({proc.wait()}) without a judge checkpoint: {proc.stderr.read().decode()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        os.close(read_end)
    saved = sorted((project / "data" / ".checkpoints" / "reward_model-judge").glob("step-*.pt"))
    assert saved and not (project / "data" / "reward_model").exists()

    res = run_stage(load_config(project / "pipeline.yaml", root=project), "reward_model")
    assert res.metadata["judge"]["settings"]["resumed"]["value"] == f"resumed from {saved[-1].name}"
    assert "resumed" in res.metadata["settings"]  # the reward model continued from its own checkpoints too
    assert not (project / "data" / ".checkpoints" / "reward_model-judge").exists()
    whole = results["reward_model"].output_dir
    for folder in ("", "judge"):
        a = load_file(str(whole / folder / "adapter_model.safetensors"))
        b = load_file(str(res.output_dir / folder / "adapter_model.safetensors"))
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), folder or "reward_model"


def test_a_budget_bounds_both_models_and_their_evaluations(pipeline, tmp_path):
    """A budget far below one step: the reward model and the judge each take the one step a run always takes and stop,
    each evaluation scores one held-out pair, and the stage records its budget and what its clock counted."""
    res, _ = _run(pipeline, tmp_path, max_train_seconds=0.001)
    s, md = res.stats, res.metadata["budget"]
    assert s["budget_seconds"] == 0.001 and s["budget_spent_seconds"] > 0
    assert s["steps"] == 1 and s["stopped_by_budget"] and s["judge_steps"] == 1 and s["judge_stopped_by_budget"]
    assert s["eval_pairs_scored"] == 1 < s["eval_pairs"] and md["eval_pairs"].startswith(f"1 of {s['eval_pairs']} ")
    assert "reward_model.max_train_seconds set in config" in md["why"]
    assert md["parts"]["reward_model"] is not None and md["parts"]["judge"] is not None


def test_the_stage_takes_its_share_of_the_runs_budget(pipeline, tmp_path):
    cfg, results = pipeline
    training = cfg.training.model_copy(update={"max_train_seconds": 10_000.0})
    res, _ = _run(pipeline.__class__((cfg.model_copy(update={"training": training}), results)), tmp_path)
    # What SFT and the base model recorded is taken off first; the reward model's part is 0.05 of what is left over
    # the shares of itself, DPO and RL (0.25).
    assert res.stats["budget_seconds"] < 10_000 * 0.05 / 0.25 and "of training.max_train_seconds" in res.metadata["budget"]["why"]
    assert res.stats["steps"] == 12  # the step cap ends a run the budget does not


def test_a_budget_spent_on_sampling_falls_back_to_other_documents_as_the_rejected_side(pipeline, tmp_path):
    """Model-sampled rejections under a budget that ends the sampling at once: instead of failing for want of pairs
    (rl_model needs a reward model), the stage takes other documents' text as the rejected side and says why."""
    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"reward_model": cfg.reward_model.model_copy(update={"max_train_seconds": 0.001}),
                                  "dpo_model": cfg.dpo_model.model_copy(update={"rejected": "model_sample"}),
                                  "allowed_roots": [str(tmp_path)]})
    inputs = {name: results[name].output_dir for name in ("lora_adapter", "base_checkpoint", "tokenizer")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    (tmp_path / "out").mkdir()
    res = reward_model.run(cfg2, inputs, tmp_path / "out")
    data = res.metadata["data"]
    assert "budget ended sampling" in data["fallback"] and data["sampled"]["skipped"]["sampling_budget_spent"] > 0
    assert res.stats["pairs"] > 0 and res.stats["steps"] == 1


def test_the_samples_dpo_model_drew_are_read_not_drawn_again(pipeline, tmp_path):
    """dpo_model and reward_model build the same pairs from the same SFT model: the rejections dpo_model sampled are
    read back by reward_model (none sampled again), so even a budget that allows no sampling keeps every pair."""
    from llm_pipeline.stages import dpo_model

    cfg, results = pipeline
    cfg2 = cfg.model_copy(update={"reward_model": cfg.reward_model.model_copy(update={"max_train_seconds": 0.001}),
                                  "dpo_model": cfg.dpo_model.model_copy(update={"rejected": "model_sample", "max_steps": 1}),
                                  "allowed_roots": [str(tmp_path)]})
    inputs = {name: results[name].output_dir for name in ("lora_adapter", "base_checkpoint", "tokenizer")}
    inputs["deduped_shards"] = cfg.data_path / "deduped_shards"
    for name in ("dpo", "rm"):
        (tmp_path / name).mkdir()
    dpo = dpo_model.run(cfg2, inputs, tmp_path / "dpo")
    assert dpo.metadata["data"]["sampling"]["items"] > 0 and dpo.stats["pairs_from_samples"] > 0
    res = reward_model.run(cfg2, inputs, tmp_path / "rm")
    sampling = res.metadata["data"]["sampling"]
    assert sampling["items"] == 0 and sampling["items_reused"] == dpo.metadata["data"]["sampling"]["items"] + dpo.metadata["data"]["sampling"]["items_reused"]
    assert "fallback" not in res.metadata["data"] and "sampling_budget_spent" not in res.metadata["data"]["skipped"]
    assert (tmp_path / "rm" / "pairs_eval.jsonl").read_text() == (tmp_path / "dpo" / "pairs_eval.jsonl").read_text()
