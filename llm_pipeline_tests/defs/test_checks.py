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


# The drop_share check on cleaned_corpus, through real materializations of one partition of two.
FRAGMENTS = ["See clause 4.2.", "Obs as above.", "Signed for the landlord.", "Write to maria.lopez@example.com today."]
LEASE = ("The tenant pays the rent on the first day of each month by bank transfer to the landlord's account. "
         "Either party may end the lease with two months of written notice, and repairs to the structure of the "
         "building remain the duty of the landlord for as long as the lease runs. Note {}.")


def _drop_share_config(tmp_path: Path, **cleaned) -> Path:
    """Two domains, legal with 4 fragments in 10 documents. PII and Great Expectations are off to keep the runs short:
    redacting the examples is tested on the stage (stages/test_cleaned_corpus.py)."""
    import yaml

    src = tmp_path / "in" / "legal"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"lease_{i}.txt").write_text(LEASE.format(i))
    for i, text in enumerate(FRAGMENTS):  # 4 of 10 documents are fragments: too_few_words drops 40%
        (src / f"fragment_{i}.txt").write_text(text)
    (tmp_path / "in" / "medicine").mkdir()
    conf = {
        "data_dir": str(tmp_path / "data"),
        "allowed_roots": [str(tmp_path / "in")],
        "domains": {"legal": {"languages": ["en"], "sources": [{"path": str(src)}]},
                    "medicine": {"languages": ["en"], "sources": [{"path": str(tmp_path / "in" / "medicine")}]}},
        "cleaned_corpus": {"pii": False, **cleaned},
        "validation": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _materialize_legal(tmp_path: Path, **cleaned):
    from llm_pipeline.config import load_config
    from llm_pipeline.defs.assets import build_assets
    from llm_pipeline.defs.resources import PipelineConfigResource

    path = _drop_share_config(tmp_path, **cleaned)
    cfg = load_config(path, root=tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            build_assets(cfg), selection=dg.AssetSelection.assets("raw_corpus", "cleaned_corpus", "deduped_shards"),
            partition_key="legal", instance=instance, raise_on_error=False,
            resources={"pipeline": PipelineConfigResource(config_path=str(path))},
        )
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return result, evaluations


def test_drop_share_warns_per_partition_and_lets_the_run_go_on(tmp_path):
    """Through `llm-pipeline run`'s own materialization loop: the warning and its examples are printed, the run goes on."""
    from rich.console import Console

    from llm_pipeline.config import load_config
    from llm_pipeline.defs.local_run import materialize_steps, plan
    from llm_pipeline.defs.resources import PipelineConfigResource

    path = _drop_share_config(tmp_path)
    cfg = load_config(path, root=tmp_path)
    console = Console(record=True, width=200)
    with dg.instance_for_test() as instance:
        steps = plan(cfg, ["raw_corpus", "cleaned_corpus", "deduped_shards"], partition="legal")
        ok = materialize_steps(cfg, PipelineConfigResource(config_path=str(path)), steps, instance, console=console)
        (run,) = instance.get_runs()
        evaluations = [ev.dagster_event.event_specific_data for ev in instance.all_logs(run.run_id)
                       if ev.dagster_event and ev.dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
        mats = instance.fetch_materializations(dg.AssetKey("deduped_shards"), limit=10).records
    check = {e.check_name: e for e in evaluations}["drop_share"]
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    # Evaluated inside the legal partition's materialization; medicine was never materialized, and is not needed.
    assert "too_few_words dropped 40% of domain legal" in check.description
    examples = check.metadata["examples"].value
    assert examples.count("\n- ") == 3 and "See clause 4.2." in examples  # three dropped documents shown
    assert check.metadata["over_limit"].value == {"too_few_words": 0.4}
    assert ok and len(mats) == 1  # a warning stops nothing: deduped_shards[legal] was materialized
    out = console.export_text()
    assert "! cleaned_corpus[legal]: drop_share: too_few_words dropped 40%" in out and "See clause 4.2." in out
    assert "blocking check failed" not in out


def test_a_blocking_check_is_named_with_its_reason_in_the_run_summary(tmp_path):
    """Dagster's step error says only "1 blocking asset check failed ..."; the summary names the check and why."""
    from rich.console import Console

    from llm_pipeline.config import load_config
    from llm_pipeline.defs.local_run import materialize_steps, plan
    from llm_pipeline.defs.resources import PipelineConfigResource

    path = _drop_share_config(tmp_path, drop_share_blocking=True)
    cfg = load_config(path, root=tmp_path)
    console = Console(record=True, width=200)
    with dg.instance_for_test() as instance:
        steps = plan(cfg, ["raw_corpus", "cleaned_corpus", "deduped_shards"], partition="legal")
        ok = materialize_steps(cfg, PipelineConfigResource(config_path=str(path)), steps, instance, console=console)
    out = console.export_text()
    assert not ok
    assert "blocking check failed (cleaned_corpus: drop_share)" in out
    assert "cleaned_corpus[legal]: drop_share: too_few_words dropped 40% of domain legal" in out
    assert "1 blocking asset check failed" not in out


def test_drop_share_blocks_downstream_when_configured(tmp_path):
    result, checks = _materialize_legal(tmp_path, drop_share_blocking=True)
    check = checks["drop_share"]
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.ERROR
    assert result.asset_materializations_for_node("cleaned_corpus")
    assert not result.asset_materializations_for_node("deduped_shards")


def test_drop_share_passes_when_no_reason_is_over_the_limit(tmp_path):
    out = tmp_path / "cleaned_corpus"
    out.mkdir()
    (out / "drop_examples.json").write_text("{}")
    stats = {"documents_in": 10, "documents_kept": 9, "dropped": {"too_few_words": 1}, "quarantined": 0,
             "drop_share_over_limit": {}}
    cfg = PipelineConfig.model_validate({"data_dir": str(tmp_path), "domains": {"legal": {"sources": [{"path": "in"}]}},
                                         "cleaned_corpus": {"pii": False}})
    checks = {c.check_name: c for c in check_results("cleaned_corpus", cfg, StageResult("cleaned_corpus", "legal", out, stats, "", "h", 0.1))}
    assert checks["drop_share"].passed and checks["drop_share"].description is None
