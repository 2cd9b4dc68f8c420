"""Promotion gates: each threshold on, off, passed, failed, and not measured."""

import pytest

from llm_pipeline.config import EvalReportConfig
from llm_pipeline.evaluation.gates import evaluate_gates, promotion


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
    cfg = EvalReportConfig(max_dpo_vs_sft_perplexity_ratio=None, no_canary_leak=False)
    assert evaluate_gates(cfg, _metrics(dpo_ppl=99.0, leaked=2)) == []
    verdict = promotion(evaluate_gates(EvalReportConfig(), _metrics(dpo_ppl=20.0)))
    assert verdict["promoted"] is False and [g["name"] for g in verdict["failed_gates"]] == ["dpo_vs_sft_perplexity"]
    assert promotion(evaluate_gates(EvalReportConfig(), _metrics()))["promoted"] is True
