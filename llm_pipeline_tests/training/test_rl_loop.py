"""The online RL loop: a policy trained against a rule reward raises it, a crashed run resumes where it stopped and
ends as an uninterrupted one does, the reference is the policy before training, and the advantage arithmetic."""

from collections import Counter

import pytest
import torch

from llm_pipeline.stages.dpo_model import load_policy
from llm_pipeline.training import rl_loop, rl_prompts
from llm_pipeline.training.device import plan_device, torch_threads
from llm_pipeline.training.preference_data import synthetic_pairs
from llm_pipeline.training.rl_rewards import RULES, Reward
from llm_pipeline_tests.training.rlhf_fixture import rlhf_pipeline

FP32 = plan_device("fp32")


@pytest.fixture(autouse=True)
def one_thread():
    """The stage runs a model this small on one thread (training.defaults); two threads only spin on a busy machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from transformers import AutoTokenizer

    cfg, results = rlhf_pipeline(tmp_path_factory, "lora_adapter")
    tok = AutoTokenizer.from_pretrained(results["lora_adapter"].output_dir)
    pairs = synthetic_pairs(cfg.data_path / "deduped_shards", "legal", "train", 16, 7, Counter())
    prompts = rl_prompts.fit_prompts([p["prompt"] for p in pairs], tok, 56, Counter())
    policy = lambda: load_policy(cfg, results["base_checkpoint"].output_dir, results["lora_adapter"].output_dir)[0]  # noqa: E731
    return policy, tok, prompts


def _settings(**kw):
    base = dict(steps=4, prompts_per_step=4, generations=4, max_new_tokens=6, temperature=1.0, kl_coef=0.05,
                learning_rate=1e-2, algorithm="rloo", seed=5, checkpoint_every=2)
    return rl_loop.RlSettings(**{**base, **kw})


def test_a_rule_reward_is_raised(sft, tmp_path):
    """One-token answers rewarded for being a period: the sample model starts at about 0.7% and rises several-fold."""
    policy_fn, tok, prompts = sft
    torch.manual_seed(0)
    policy = policy_fn()
    reference = rl_loop.Reference(policy)
    reward = Reward({"ends_with_period": 1.0})
    settings = _settings(steps=40, prompts_per_step=8, generations=8, max_new_tokens=1, kl_coef=0.0, learning_rate=0.05,
                         checkpoint_every=100)
    dot = [i for i in range(len(tok)) if tok.decode([i]).rstrip().endswith(".")]

    def expected_reward():  # exact for one-token answers: the probability of a period
        with torch.no_grad():
            return sum(float(policy(input_ids=torch.tensor([p["prompt_ids"]])).logits[0, -1].softmax(-1)[dot].sum()) for p in prompts) / len(prompts)

    before = expected_reward()
    with torch.no_grad(), reference.active():
        assert expected_reward() == pytest.approx(before)
    result = rl_loop.train(policy, tok, prompts, reward, settings, FP32, tmp_path, "fp", reference)
    after = expected_reward()
    assert after > 4 * before and after > 0.03, (before, after)
    with reference.active():  # the reference is still the policy as it was
        assert expected_reward() == pytest.approx(before)
    assert result.global_step == 40 and result.completions == 40 * 64
    assert {"reward", "reward/ends_with_period", "kl", "loss", "grad_norm"} <= set(result.log[-1])


def test_a_crashed_run_resumes_and_ends_as_an_uninterrupted_one(sft, tmp_path):
    policy_fn, tok, prompts = sft
    reward = Reward({"distinct_words": 1.0, "length": 0.5}, target_words=3)

    def fresh():
        torch.manual_seed(0)
        p = policy_fn()
        return p, rl_loop.Reference(p)

    whole, ref = fresh()
    torch.manual_seed(11)
    full = rl_loop.train(whole, tok, prompts, reward, _settings(steps=5), FP32, tmp_path / "whole", "fp", ref)

    class Crash(Exception):
        pass

    def crash_at_3(step):
        if step == 3:
            raise Crash

    first, ref1 = fresh()
    torch.manual_seed(11)
    with pytest.raises(Crash):
        rl_loop.train(first, tok, prompts, reward, _settings(steps=5), FP32, tmp_path / "cut", "fp", ref1, on_step=crash_at_3)
    again, ref2 = fresh()
    torch.manual_seed(99)  # the checkpoint's RNG state, not this one, decides the samples after step 2
    resumed = rl_loop.train(again, tok, prompts, reward, _settings(steps=5), FP32, tmp_path / "cut", "fp", ref2)
    assert resumed.start_step == 2 and resumed.resume_note == "resumed from step-0000002.pt"
    trained = lambda m: {n: p for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    for name, value in trained(whole).items():
        assert torch.allclose(value, trained(again)[name], atol=1e-5), name
    assert [e["reward"] for e in resumed.log] == pytest.approx([e["reward"] for e in full.log])
    assert resumed.completions == full.completions


def test_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    kl = torch.zeros(8)
    rloo = rl_loop.advantages("rloo", rewards, kl, 0.1, 4)
    assert rloo[:4].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3]) and rloo[4:].abs().max() == 0
    assert rl_loop.advantages("rloo", rewards, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]), 0.5, 4)[0] == pytest.approx(0.5)
    grpo = rl_loop.advantages("grpo", rewards, kl, 0.1, 4)
    assert grpo[:4].sum() == pytest.approx(0, abs=1e-6) and grpo[0] > 1 and grpo[4:].abs().max() == 0
    with pytest.raises(ValueError, match="algorithm"):
        rl_loop.advantages("ppo", rewards, kl, 0.1, 4)


@pytest.mark.parametrize("rule, text, value", [
    ("ends_with_period", "It binds.", 1.0), ("ends_with_period", "It binds", 0.0), ("ends_with_punctuation", "Does it?", 1.0),
    ("length", "one two three", 0.15), ("length", " ".join(["w"] * 20), 1.0), ("length", " ".join(["w"] * 45), 0.0),
    ("distinct_words", "a a a a", 0.25), ("distinct_words", "", 0.0),
])
def test_rules(rule, text, value):
    assert RULES[rule](text, target_words=20) == pytest.approx(value)


def test_rule_rewards_are_weighted_and_named():
    totals, parts = Reward({"ends_with_period": 2.0, "distinct_words": 1.0})(["p", "p"], ["a b.", "a a"])
    assert totals == pytest.approx([3.0, 0.5]) and set(parts) == {"ends_with_period", "distinct_words"}
    with pytest.raises(ValueError, match="unknown rule"):
        Reward({"sounds_nice": 1.0})
