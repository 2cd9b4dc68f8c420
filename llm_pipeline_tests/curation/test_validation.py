"""Great Expectations suite over deduped shards: passes on good shards, names the failing expectation on bad ones."""

import pytest

from llm_pipeline.config import PipelineConfig
from llm_pipeline.curation.validation import validate_shards
from llm_pipeline.io import ShardWriter

GOOD = "The tenant pays the rent on the first day of each month by bank transfer."


def make_cfg(tmp_path, **validation):
    return PipelineConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "domains": {"legal": {"languages": ["en"], "sources": [{"path": "x"}]}},
            "validation": validation,
        }
    )


def write(folder, rows, max_rows=10_000):
    with ShardWriter(folder, max_rows=max_rows) as w:
        for i, row in enumerate(rows):
            w.write({"id": row.get("id", f"id{i:04d}"), "domain": "legal", "source": "s", "text": row["text"],
                     "licence": "CC-BY-4.0", "language": row.get("language", "en"), "split": "train"})


def by_name(outcome):
    return {r["name"]: r for r in outcome.results}


def test_good_shards_pass(tmp_path):
    folder = tmp_path / "legal"
    write(folder, [{"text": f"{GOOD} Clause {i} applies; contact <EMAIL_ADDRESS>."} for i in range(30)], max_rows=7)
    outcome = validate_shards(folder, make_cfg(tmp_path), "legal")
    assert outcome.passed, outcome.summary
    names = by_name(outcome)
    assert names["expect_table_row_count_to_be_between"]["observed"] == 30
    assert names["expect_column_values_to_be_unique[id]"]["success"]
    assert "passed" in outcome.summary and "| expectation |" in outcome.summary


@pytest.mark.parametrize(
    "rows, failing",
    [
        ([{"text": GOOD, "id": "a"}, {"text": GOOD + " again", "id": "a"}], "expect_column_values_to_be_unique[id]"),
        ([{"text": "too short"}], "expect_column_value_lengths_to_be_between[text]"),
        ([{"text": GOOD, "language": "fr"}], "expect_column_values_to_be_in_set[language]"),
        ([{"text": GOOD + " Write to jane.doe@example.com."}], "expect_column_values_to_not_match_regex[text][email]"),
        ([{"text": GOOD + " SSN 536-22-8790."}], "expect_column_values_to_not_match_regex[text][us_ssn]"),
        ([{"text": GOOD + " Card 4111 1111 1111 1111."}], "expect_column_values_to_not_match_regex[text][credit_card]"),
        ([{"text": GOOD + " IBAN GB82 WEST 1234 5698 7654 32."}], "expect_column_values_to_not_match_regex[text][iban]"),
        ([{"text": None}], "expect_column_values_to_not_be_null[text]"),
    ],
)
def test_bad_shards_fail_with_a_named_expectation(tmp_path, rows, failing):
    folder = tmp_path / "legal"
    write(folder, rows)
    outcome = validate_shards(folder, make_cfg(tmp_path), "legal")
    assert not outcome.passed
    failed = [r["name"] for r in outcome.results if not r["success"]]
    assert failing in failed, outcome.summary
    assert f"`{failing}` | **fail**" in outcome.summary


def test_too_few_documents_fails(tmp_path):
    folder = tmp_path / "legal"
    write(folder, [{"text": GOOD}])
    outcome = validate_shards(folder, make_cfg(tmp_path, min_documents=5), "legal")
    assert not outcome.passed
    assert by_name(outcome)["expect_table_row_count_to_be_between"]["observed"] == 1


def test_empty_folder_fails_on_row_count(tmp_path):
    (tmp_path / "legal").mkdir()
    outcome = validate_shards(tmp_path / "legal", make_cfg(tmp_path), "legal")
    assert not outcome.passed
    assert [r["name"] for r in outcome.results if not r["success"]] == ["expect_table_row_count_to_be_between"]


def test_repeated_calls_reuse_one_context_and_suite(tmp_path):
    """What keeps a call cheap is structural, so that is what is checked (a wall-clock bound fails on a busy machine):
    after the first call, further calls build no new GX context and add no expectation suite to it."""
    from llm_pipeline.curation import validation

    folder = tmp_path / "legal"
    write(folder, [{"text": GOOD + f" {i}"} for i in range(50)])
    cfg = make_cfg(tmp_path)
    validate_shards(folder, cfg, "legal")
    contexts, suites = validation._context.cache_info().misses, validation._suites.cache_info().misses
    _, ctx, _ = validation._context()
    registered = len(ctx.suites.all())
    for _ in range(3):
        assert validate_shards(folder, cfg, "legal").passed
    assert validation._context.cache_info().misses == contexts and validation._suites.cache_info().misses == suites
    assert len(ctx.suites.all()) == registered
