import json

from llm_pipeline.evaluation.data import Notes, preference_pairs, read_training_log, sft_examples


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_sft_records_in_every_shape_the_trainers_accept(tmp_path):
    notes = Notes()
    path = _write(tmp_path / "sft_eval.jsonl", [
        {"prompt": "p1", "completion": "c1", "domain": "legal"},
        {"prompt": [{"role": "user", "content": "p2"}], "completion": [{"role": "assistant", "content": "c2"}]},
        {"messages": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "c3"}]},
        {"text": "no prompt here"},
        "not json",
    ])
    rows = sft_examples(path, notes)
    assert [r["completion"] for r in rows] == ["c1", "c2", "c3"]
    assert rows[2]["prompt"] == [{"role": "user", "content": "p3"}]
    assert len(notes.items) == 2  # the bad JSON line and the record without a prompt, each named


def test_missing_files_are_notes_not_errors(tmp_path):
    notes = Notes()
    assert preference_pairs(tmp_path / "pairs_eval.jsonl", notes) == []
    assert read_training_log(tmp_path / "training_log.json", notes) == []
    assert len(notes.items) == 2 and "pairs_eval.jsonl" in notes.items[0]


def test_training_log_accepts_a_trainer_state(tmp_path):
    (tmp_path / "training_log.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0}]}))
    assert read_training_log(tmp_path / "training_log.json", Notes()) == [{"step": 1, "loss": 2.0}]
