"""What a Dagster user sees: previews show redaction tags as text, and check results name their partition."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from llm_pipeline.defs.metadata import markdown, result_metadata
from llm_pipeline.definitions import build_definitions
from llm_pipeline.runner import StageResult


@pytest.mark.parametrize(("text", "shown"), [
    ("> Call <PERSON> at <PHONE_NUMBER>.", "> Call &lt;PERSON> at &lt;PHONE_NUMBER>."),
    ("| `<PERSON>` | 3 |", "| `<PERSON>` | 3 |"),  # a code span shows its text literally already
    ("```\n<EMAIL_ADDRESS> & more\n```\nR&D <b>", "```\n<EMAIL_ADDRESS> & more\n```\nR&amp;D &lt;b>"),
    ("**a** > b", "**a** > b"),
])
def test_markdown_escapes_html_outside_code(text, shown):
    assert markdown(text).value == shown


def test_previews_and_markdown_metadata_are_escaped(tmp_path: Path):
    result = StageResult("cleaned_corpus", "legal", tmp_path, {"documents_in": 1}, "> Dear <PERSON>, see you.", "h", 0.1,
                         {"notes_md": "<LOCATION>", "table": dg.MetadataValue.md("<NRP>")})
    md = result_metadata(result)
    assert md["preview"].value == "> Dear &lt;PERSON>, see you."
    assert md["notes_md"].value == "&lt;LOCATION>" and md["table"].value == "&lt;NRP>"


def test_check_results_are_recorded_against_their_partition(tmp_path, make_fast_config):
    defs = build_definitions(str(make_fast_config(tmp_path, domains=["legal", "medicine"])))
    raw = defs.resolve_assets_def("raw_corpus")
    with dg.instance_for_test() as instance:
        out = dg.materialize([raw], partition_key="medicine", instance=instance)
        assert out.success
        key = dg.AssetCheckKey(dg.AssetKey("raw_corpus"), "accounting")
        (record,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert record.partition == "medicine"
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.passed and evaluation.partition == "medicine"
        assert evaluation.metadata["partition"].value == "medicine"
