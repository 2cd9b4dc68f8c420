"""Synthetic preference pairs and user preference files."""

import json
from collections import Counter

import pytest

from llm_pipeline.training import preference_data
from llm_pipeline_tests.training.fixtures import write_deduped_shards


def test_synthetic_pairs_never_use_a_document_as_its_own_negative(tmp_path):
    shards = write_deduped_shards(tmp_path, docs_per_domain=30)
    skipped = Counter()
    pairs = preference_data.synthetic_pairs(shards, "legal", "train", limit=10, seed=4, skipped=skipped)
    assert len(pairs) == 10
    for p in pairs:
        assert p["source_id"] != p["rejected_id"] and p["chosen"] != p["rejected"]
        assert p["prompt"].startswith("Continue this legal text:\n") and p["rejected_source"] == "other_document"


def test_user_pairs_need_all_three_fields(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "good"}) + "\n")
    with pytest.raises(preference_data.PreferenceDataError, match="lacks \\['rejected'\\]"):
        preference_data.read_user_pairs([path])


def test_conversational_shape():
    conv = preference_data.as_conversation({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert conv == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
