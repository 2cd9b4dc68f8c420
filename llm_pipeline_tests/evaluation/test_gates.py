"""Promotion gates: each threshold on, off, passed, failed, and not measured; the choice of the model that ships."""

import pytest

from llm_pipeline.config import EvalReportConfig
from llm_pipeline.evaluation.gates import choose, evaluate_gates, promotion


def _metrics(dpo_ppl=10.0, sft_ppl=10.0, accuracy=0.7, leaked=0, canaries_checked=True) -> dict:
    ppl = lambda p: {"overall": {"perplexity": p}, "by_domain": {}}  # noqa: E731
    items = [{"canary": "Le…te", "leaked": i < leaked, "found_in": {"deduped_shards/medicine": 1} if i < leaked else {}} for i in range(3)]
    return {
        "perplexity": {"sft": ppl(sft_ppl), "dpo": ppl(dpo_ppl)},
        "preference": {"pairs": 10, "accuracy": accuracy, "length_baseline_accuracy": 0.5},
        "canaries": {"checked": True, "canaries": 3, "leaked": leaked, "items": items} if canaries_checked else {"checked": False, "why": "no file"},
    }


def _by_name(gates):
    return {g.name: g for g in gates}


@pytest.mark.parametrize(("dpo", "passed"), [(10.0, True), (10.49, True), (10.51, False), (None, False)])
def test_perplexity_ratio_gate(dpo, passed):
    gates = _by_name(evaluate_gates(EvalReportConfig(), _metrics(dpo_ppl=dpo)))
    g = gates["dpo_vs_sft_perplexity"]
    assert g.passed is passed and g.threshold == 1.05
    assert (g.observed is None) == (dpo is None)


def test_preference_gate_is_off_by_default_and_checks_its_floor_when_set():
    assert "preference_accuracy" not in _by_name(evaluate_gates(EvalReportConfig(), _metrics()))
    cfg = EvalReportConfig(min_preference_accuracy=0.6)
    assert _by_name(evaluate_gates(cfg, _metrics(accuracy=0.7)))["preference_accuracy"].passed
    low = _by_name(evaluate_gates(cfg, _metrics(accuracy=0.5)))["preference_accuracy"]
    assert not low.passed and "below" in low.why
    missing = {**_metrics(), "preference": None}
    assert not _by_name(evaluate_gates(cfg, missing))["preference_accuracy"].passed


def test_canary_gate_fails_on_any_leak_and_names_where():
    g = _by_name(evaluate_gates(EvalReportConfig(), _metrics(leaked=1)))["no_canary_leak"]
    assert not g.passed and g.observed == 1 and "deduped_shards/medicine" in g.why
    assert _by_name(evaluate_gates(EvalReportConfig(), _metrics(leaked=0)))["no_canary_leak"].passed


def test_unreadable_canaries_fail_only_when_the_file_was_named_on_purpose():
    unchecked = _metrics(canaries_checked=False)
    assert _by_name(evaluate_gates(EvalReportConfig(), unchecked))["no_canary_leak"].passed  # the default file may be absent
    named = EvalReportConfig(canaries_file="corpus/canaries.json")
    assert not _by_name(evaluate_gates(named, unchecked))["no_canary_leak"].passed


def test_gates_turned_off_are_not_evaluated_and_promotion_follows_the_failures():
    cfg = EvalReportConfig(max_dpo_vs_sft_perplexity_ratio=None, no_canary_leak=False, max_vs_original_bits_per_byte_ratio=None,
                           max_vs_base_bits_per_byte_ratio=None)
    assert evaluate_gates(cfg, _metrics(dpo_ppl=99.0, leaked=2)) == []
    only_ppl = EvalReportConfig(max_vs_base_bits_per_byte_ratio=None)
    verdict = promotion(evaluate_gates(only_ppl, _metrics(dpo_ppl=20.0)))
    assert verdict["promoted"] is False and [g["name"] for g in verdict["failed_gates"]] == ["dpo_vs_sft_perplexity"]
    assert promotion(evaluate_gates(only_ppl, _metrics()))["promoted"] is True


def _scores(overall: float, **domains: float) -> dict:
    """Perplexity and bits per byte that move together (same tokenizer), overall and per domain."""
    row = lambda v: {"perplexity": 2 ** (v * 4), "bits_per_byte": v, "tokens": 100}  # noqa: E731
    return {"overall": row(overall), "by_domain": {d: row(v) for d, v in domains.items()}}


def _run(original=True, **models) -> dict:
    ppl = {m: _scores(v[0], legal=v[1], medicine=v[2]) if isinstance(v, tuple) else _scores(v) for m, v in models.items()}
    if original:
        ppl["original"] = _scores(1.0, legal=1.0, medicine=1.0)
    return {"models": ["base", "sft", "dpo"], "perplexity": ppl, "canaries": {"checked": False}}


def test_a_failing_dpo_model_ships_the_sft_adapter_and_says_why():
    # The run: SFT better than the original on every domain, DPO undoing half of it.
    metrics = _run(base=(0.95, 0.95, 0.95), sft=(0.90, 0.89, 0.91), dpo=(0.97, 0.94, 0.99))
    verdict = choose(EvalReportConfig(), metrics)
    assert verdict["promoted"] is True and verdict["model"] == "sft" and verdict["folder"] == "lora_adapter"
    assert verdict["summary"].startswith("DPO not promoted: perplexity ") and "× SFT" in verdict["summary"]
    assert verdict["summary"].endswith("SFT adapter promoted")
    dpo, sft = verdict["candidates"]
    assert dpo["model"] == "dpo" and not dpo["chosen"] and dpo["why"].startswith("not chosen: perplexity")
    assert sft["chosen"] and all(g["passed"] for g in verdict["gates"])


def test_dpo_ships_when_it_passes_and_sft_is_recorded_as_second():
    verdict = choose(EvalReportConfig(), _run(base=0.95, sft=0.90, dpo=0.905))
    assert verdict["model"] == "dpo" and verdict["summary"] == "DPO adapter promoted"
    assert verdict["candidates"][1]["why"] == "passed its gates, but DPO comes first"


def test_worse_than_the_original_on_one_domain_fails_in_bits_per_byte():
    metrics = _run(base=(0.95, 0.95, 0.95), sft=(0.97, 0.93, 1.018), dpo=(0.97, 0.93, 1.018))
    verdict = choose(EvalReportConfig(), metrics)
    assert verdict["promoted"] is False and verdict["model"] is None
    gate = {g["name"]: g for g in verdict["gates"]}["vs_original_bits_per_byte"]
    assert not gate["passed"] and gate["observed"] == pytest.approx(1.018) and "on medicine" in gate["why"]
    assert verdict["summary"].endswith("no model promoted") and "bits per byte 1.018 × the original model on medicine" in verdict["summary"]


def test_no_original_model_skips_that_gate_with_the_reason():
    metrics = {**_run(original=False, base=0.95, sft=0.9, dpo=0.9), "original": {"why": "base_checkpoint was trained from scratch"}}
    gate = {g.name: g for g in evaluate_gates(EvalReportConfig(), metrics, "sft")}["vs_original_bits_per_byte"]
    assert gate.passed and gate.observed is None and "trained from scratch" in gate.why


def test_the_dpo_ratio_gate_looks_at_every_domain():
    # Overall within 5%, but one domain 8% worse: DPO is not shipped.
    metrics = _run(base=0.95, sft=(0.9, 0.9, 0.9), dpo=(0.905, 0.88, 0.9093))
    metrics["perplexity"]["sft"]["by_domain"]["medicine"]["perplexity"] = 10.0
    metrics["perplexity"]["dpo"]["by_domain"]["medicine"]["perplexity"] = 10.8
    gate = {g.name: g for g in evaluate_gates(EvalReportConfig(), metrics, "dpo")}["dpo_vs_sft_perplexity"]
    assert not gate.passed and gate.observed == pytest.approx(1.08) and "on medicine" in gate.why


def _with_rl(rl_reward=0.30, sft_reward=0.20, kl=0.5, judge=True, rl_bpb=0.90, not_run=None) -> dict:
    """A run with an RL model: held-out rewards under the reward model and the judge, its KL to SFT."""
    metrics = _run(base=(0.95, 0.95, 0.95), sft=(0.90, 0.89, 0.91), dpo=(0.90, 0.89, 0.91), rl=(rl_bpb, rl_bpb, rl_bpb))
    metrics["models"] = ["base", "sft", "dpo", "rl"]
    reward = lambda r: {"reward_model": r + 1.0, **({"judge": r} if judge else {})}  # noqa: E731
    metrics["policies"] = {
        "prompts": 16, "samples": 2,
        "models": {"sft": {"reward": reward(sft_reward), "kl_to_sft": 0.0}, "rl": {"reward": reward(rl_reward), "kl_to_sft": kl}},
        "scorers": {"reward_model": {"eval_accuracy": 0.6}, "judge": {"eval_accuracy": 0.6} if judge else {"why": "reward_model.judge is off"}},
        "not_run": not_run or {},
    }
    return metrics


def test_rl_is_promoted_first_when_it_beats_sft_under_the_judge_within_the_kl_budget():
    verdict = choose(EvalReportConfig(min_reward_gain=0.05, max_kl=1.0), _with_rl())
    assert verdict["model"] == "rl" and verdict["folder"] == "rl_model" and verdict["summary"] == "RL adapter promoted"
    gates = {g["name"]: g for g in verdict["gates"]}
    assert {"rl_vs_sft_perplexity", "rl_reward_gain", "rl_kl_to_sft", "vs_base_bits_per_byte"} <= set(gates)
    assert gates["rl_reward_gain"]["observed"] == pytest.approx(0.10) and "judge reward" in gates["rl_reward_gain"]["why"]
    assert [c["model"] for c in verdict["candidates"]] == ["rl", "dpo", "sft"]
    assert verdict["candidates"][1]["why"] == "passed its gates, but RL comes first"


@pytest.mark.parametrize(("kwargs", "config", "short"), [
    ({"rl_reward": 0.21}, {"min_reward_gain": 0.02}, "RL not promoted: judge reward +0.0100 ≤ 0.0200 over SFT"),
    ({"rl_reward": 0.10}, {}, "RL not promoted: judge reward -0.1000 ≤ 0.0000 over SFT"),
    ({"kl": 3.5}, {}, "RL not promoted: KL to SFT 3.500 > 2.000 nats"),
    ({"rl_bpb": 0.99}, {}, "RL not promoted: perplexity "),
    ({"judge": False}, {}, "RL not promoted: judge reward not measured"),
])
def test_rl_gate_failures_say_why_and_the_next_candidate_ships(kwargs, config, short):
    verdict = choose(EvalReportConfig(**config), _with_rl(**kwargs))
    assert verdict["summary"].startswith(short) and verdict["summary"].endswith("DPO adapter promoted")
    assert verdict["model"] == "dpo"
    rl = verdict["candidates"][0]
    assert rl["model"] == "rl" and not rl["chosen"] and rl["why"].startswith("not chosen: ")
    if kwargs == {"judge": False}:
        gate = {g["name"]: g for g in rl["gates"]}["rl_reward_gain"]
        assert gate["observed"] is None and "reward_model.judge is off" in gate["why"]


def test_the_reward_model_can_stand_in_for_the_judge_and_gates_can_be_turned_off():
    no_judge = _with_rl(judge=False)
    assert choose(EvalReportConfig(rl_gate_reward="reward_model"), no_judge)["model"] == "rl"
    cfg = EvalReportConfig(min_reward_gain=None, max_kl=None, max_rl_vs_sft_perplexity_ratio=None)
    names = {g["name"] for g in choose(cfg, _with_rl(rl_reward=0.0, kl=99.0))["gates"]}
    assert not names & {"rl_reward_gain", "rl_kl_to_sft", "rl_vs_sft_perplexity"}


def test_promotion_order_is_configurable_and_a_missing_rl_model_is_reported_not_failed():
    assert choose(EvalReportConfig(promotion_order=["dpo", "rl", "sft"]), _with_rl())["model"] == "dpo"
    assert choose(EvalReportConfig(promotion_order=["sft"]), _with_rl())["model"] == "sft"
    missing = _with_rl(not_run={"rl": "rl_model is not materialized"})
    missing["models"].remove("rl")
    verdict = choose(EvalReportConfig(), missing)
    assert verdict["summary"] == "RL not run (rl_model is not materialized); DPO adapter promoted"
    assert verdict["candidates"][0] == {"model": "rl", "folder": "rl_model", "promoted": False, "failed_gates": [], "gates": [],
                                        "ran": False, "why": "not run: rl_model is not materialized", "chosen": False}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("promotion_order", ["rl", "rl"], "names a model twice"),
    ("promotion_order", ["ppo"], "Input should be"),
    ("promotion_order", [], "at least 1"),
    ("max_kl", 0, "greater than 0"),
    ("min_reward_gain", -0.1, "greater than or equal to 0"),
    ("rl_gate_reward", "both", "Input should be"),
])
def test_rl_gate_settings_are_validated(field, value, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        EvalReportConfig(**{field: value})
