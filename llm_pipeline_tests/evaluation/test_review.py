"""The review loop: export hard examples as an Argilla dataset, answer as reviewers would, import preference pairs."""

import json
from collections import Counter

import pytest

from llm_pipeline.evaluation.review import export_review, import_reviews, main, write_pairs
from llm_pipeline.training.preference_data import read_user_pairs


def _items(n=4):
    return [
        {"doc_id": f"legal-{i}", "domain": "legal" if i % 2 else "medicine", "nll": 5.0 + i,
         "prompt": f"Continue this legal text:\nThe tenant {i} shall", "response_a": f"pay rent monthly {i}.",
         "response_b": f"the the the {i}", "margin": 0.4 - 0.3 * i}
        for i in range(n)
    ]


@pytest.fixture
def exported(tmp_path):
    summary = export_review(tmp_path / "review", _items(), ["legal", "medicine"])
    return tmp_path / "review", summary


def test_export_writes_argilla_settings_and_records(exported):
    folder, summary = exported
    settings = json.loads((folder / "settings.json").read_text())
    assert [f["name"] for f in settings["fields"]] == ["prompt", "response_a", "response_b"]
    questions = {q["name"]: q for q in settings["questions"]}
    assert questions["preference"]["settings"]["type"] == "label_selection"
    assert [o["value"] for o in questions["preference"]["settings"]["options"]] == ["response_a", "response_b"]
    assert questions["ranking"]["settings"]["type"] == "ranking" and questions["better_response"]["settings"]["type"] == "text"
    assert {m["name"]: m["settings"]["type"] for m in settings["metadata"]} == {"domain": "terms", "doc_id": "terms", "nll": "float", "reward_margin": "float"}

    records = json.loads((folder / "records.json").read_text())
    assert summary["records"] == len(records) == 4 and summary["by_domain"] == {"medicine": 2, "legal": 2}
    r0 = records[0]
    assert set(r0) == {"id", "fields", "metadata", "suggestions", "responses", "vectors", "_server_id"}
    assert r0["metadata"] == {"domain": "medicine", "doc_id": "legal-0", "nll": 5.0, "reward_margin": 0.4}
    # positive margin: the model prefers the true continuation; negative: its own text
    assert r0["suggestions"]["preference"]["value"] == "response_a" and records[3]["suggestions"]["preference"]["value"] == "response_b"
    assert 0.5 < r0["suggestions"]["preference"]["score"] < 1 and r0["responses"] == {}


def _review(records):
    """What reviewers send back: a preference, a ranking, a written answer, a split vote, a discard, no answer."""
    records[0]["responses"] = {"preference": [{"value": "response_a", "user_id": "u1"}]}
    records[1]["responses"] = {"ranking": [{"value": [{"value": "response_b", "rank": 1}, {"value": "response_a", "rank": 2}], "user_id": "u1"}]}
    records[2]["responses"] = {"better_response": [{"value": "pay the agreed rent each month.", "user_id": "u2"}]}
    records[3]["responses"] = {"preference": [{"value": "response_a", "user_id": "u1"}, {"value": "response_b", "user_id": "u2"}]}
    extra = [dict(records[0], id="x1", responses=[{"question_name": "preference", "value": "response_b", "status": "discarded"}]),
             dict(records[0], id="x2", responses={})]
    return records + extra


def test_round_trip_export_review_import(exported, tmp_path):
    folder, _ = exported
    records = _review(json.loads((folder / "records.json").read_text()))
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(records))

    skipped = Counter()
    pairs = import_reviews(reviewed, skipped)
    assert skipped == {"reviewers_disagree": 1, "not_reviewed": 2}  # the discarded answer leaves nothing
    a, b, c = pairs
    assert (a["chosen"], a["rejected"]) == ("pay rent monthly 0.", "the the the 0")
    assert (b["chosen"], b["rejected"]) == ("the the the 1", "pay rent monthly 1.")  # ranked first wins
    assert (c["chosen"], c["rejected"]) == ("pay the agreed rent each month.", "the the the 2")  # the model's text loses
    assert all(p["prompt"].startswith("Continue this legal text:") and p["domain"] in ("legal", "medicine") for p in pairs)

    # The written file is what dpo_model.data reads: the DPO stage's own reader accepts every pair.
    out = write_pairs(pairs, tmp_path / "next" / "pairs.jsonl")
    train, held = read_user_pairs([out])
    assert len(train) + len(held) == 3
    assert {p["chosen"] for p in train + held} == {a["chosen"], b["chosen"], c["chosen"]}


def test_jsonl_records_and_the_command_line_entry(exported, tmp_path, capsys):
    folder, _ = exported
    records = json.loads((folder / "records.json").read_text())
    records[0]["responses"] = {"preference": [{"value": "response_b", "user_id": "u1"}]}
    src = tmp_path / "reviewed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main([str(src), str(tmp_path / "pairs.jsonl")]) == 0
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["chosen"] == "the the the 0"
    assert "skipped" in capsys.readouterr().out
