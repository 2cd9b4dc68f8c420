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


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn():
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is a tort?\n\nAssistant: A civil wrong.",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is a tort?\n\nAssistant: No idea."}
    pair = preference_data.normalise_pair(row, "auto")
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"] and pair["prompt"][-1]["content"] == "what is a tort?"
    assert (pair["chosen"], pair["rejected"]) == ("A civil wrong.", "No idea.")


def test_hh_rlhf_transcripts_that_differ_before_the_answer_are_refused():
    row = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
    with pytest.raises(preference_data.PreferenceDataError, match="differ before"):
        preference_data.normalise_pair(row, "hh_rlhf")


def test_sharegpt_conversations():
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Define dosage."}],
           "chosen": {"from": "gpt", "value": "The amount of a drug."}, "rejected": {"from": "gpt", "value": "A fruit."}}
    pair = preference_data.normalise_pair(row, "auto")
    assert pair["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define dosage."}]
    assert (pair["chosen"], pair["rejected"]) == ("The amount of a drug.", "A fruit.")


def test_pairs_without_a_preference_are_counted_not_trained(tmp_path):
    from collections import Counter

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": "same" if i == 0 else f"a{i}", "rejected": "same" if i == 0 else "b"}) for i in range(8)))
    skipped = Counter()
    train, held = preference_data.read_user_pairs([path], "auto", skipped)
    assert len(train) + len(held) == 7 and skipped == Counter({"identical_answers": 1})


def test_hh_rows_whose_prompts_differ_are_counted_not_fatal(tmp_path):
    from collections import Counter

    good = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, bad, good)))
    skipped = Counter()
    train, held = preference_data.read_user_pairs([path], "hh_rlhf", skipped)
    assert len(train) + len(held) == 2 and skipped == Counter({"prompts_differ": 1})


def test_pairs_sharing_a_prompt_are_held_out_together(tmp_path):
    rows = [{"prompt": f"q{i % 40}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(400)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, held = preference_data.read_user_pairs([path])
    assert held and train
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
