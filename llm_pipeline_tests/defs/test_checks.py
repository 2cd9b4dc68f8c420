"""The blocking `promotion_gates` check on eval_report: its verdict from metrics.json, and that it blocks."""

import json
from pathlib import Path

import dagster as dg
import pytest

from llm_pipeline.config import PipelineConfig
from llm_pipeline.defs.checks import CHECKS, check_results
from llm_pipeline.runner import StageResult


def _cfg(tmp_path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({"data_dir": str(tmp_path), "domains": {"legal": {"sources": [{"path": "in"}]}}})


def _result(tmp_path: Path, gates: list[dict] | None) -> StageResult:
    out = tmp_path / "eval_report"
    out.mkdir(parents=True, exist_ok=True)
    if gates is not None:
        (out / "metrics.json").write_text(json.dumps({"gates": gates}))
    return StageResult("eval_report", None, out, {}, "", "abc", 0.1)


PASS = {"name": "dpo_vs_sft_perplexity", "passed": True, "observed": 1.01, "threshold": 1.05, "why": "within | limit"}
FAIL = {"name": "no_canary_leak", "passed": False, "observed": 1, "threshold": True, "why": "1 of 8 canaries found in: deduped_shards/medicine"}


def test_promotion_gates_is_declared_on_eval_report():
    assert [name for name, _ in CHECKS["eval_report"]] == ["promotion_gates"]


@pytest.mark.parametrize(("gates", "passed"), [([PASS], True), ([PASS, FAIL], False), ([], True)])
def test_check_follows_the_gates(tmp_path, gates, passed):
    (check,) = check_results("eval_report", _cfg(tmp_path), _result(tmp_path, gates))
    assert check.check_name == "promotion_gates" and check.passed is passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["promoted"].value is passed
    if not passed:
        assert "no_canary_leak" in check.description and check.metadata["failed"].value == ["no_canary_leak"]
    if gates:
        assert "within \\| limit" in check.metadata["verdict"].value  # a pipe in a reason does not split the cell


def test_a_missing_verdict_fails_the_check(tmp_path):
    (check,) = check_results("eval_report", _cfg(tmp_path), _result(tmp_path, None))
    assert check.passed is False and "metrics.json" in check.description


def test_a_failed_gate_blocks_downstream_assets_in_a_real_run(tmp_path):
    result = _result(tmp_path, [PASS, FAIL])
    cfg = _cfg(tmp_path)
    specs = [dg.AssetCheckSpec(name, asset="eval_report", blocking=True, description=d) for name, d in CHECKS["eval_report"]]

    @dg.asset(name="eval_report", check_specs=specs)
    def eval_report() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=check_results("eval_report", cfg, result))

    @dg.asset(deps=["eval_report"])
    def serving() -> None:
        raise AssertionError("a model that failed its gates must not be served")

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        run = dg.materialize([eval_report, serving], instance=instance, raise_on_error=False)
        evaluations = run.get_asset_check_evaluations()
        assert [(e.check_name, e.passed) for e in evaluations] == [("promotion_gates", False)]
        materialized = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
        assert "eval_report" in materialized and "serving" not in materialized
        assert not run.success
