"""SFT examples: derived templates, user file formats, and fitting into max_length."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from llm_pipeline.training import sft_data
from transformers import PreTrainedTokenizerFast

DOC = "# Termination notice\n\nEither party may end this agreement with thirty days notice. The notice must be in writing and signed by both parties."


@pytest.mark.parametrize(
    "template, prompt_start, completion_start",
    [
        ("continue", "Continue this legal text:\n# Termination", "notice. The notice must"),
        ("summarise", "Summarise this legal text in one sentence:\nThe notice must", "Either party may end this agreement"),
        ("heading", "Write the legal section titled: Termination notice", "Either party may"),
    ],
)
def test_templates(template, prompt_start, completion_start):
    ex, reason = sft_data.make_example(DOC, "legal", template)
    assert reason == "" and ex["prompt"].startswith(prompt_start)
    assert " ".join(ex["completion"].split()).startswith(completion_start)


def test_short_documents_are_skipped_with_a_reason():
    assert sft_data.make_example("Too short to use.", "legal", "continue") == (None, "too_short")


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"}),
        ({"instruction": "Do it", "input": "x", "output": "done"}, {"prompt": "Do it\n\nx", "completion": "done"}),
        ({"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "user", "content": "hi"}]}),
        ({"text": "plain"}, {"text": "plain"}),
    ],
)
def test_user_formats(row, expected):
    assert sft_data.normalise(row, sft_data.detect_format(row), "f:1") == expected


def test_bad_user_rows_fail_with_the_location(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "only"}) + "\n")
    with pytest.raises(sft_data.SftDataError, match="bad.jsonl:2"):
        sft_data.read_user_examples([path], "prompt_completion")


def _word_tokenizer():
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_fit_example_keeps_instruction_and_text_nearest_the_answer():
    tok = _word_tokenizer()  # one token per word
    rec = {"prompt": "Continue:\n" + " ".join(f"w{i}" for i in range(100)), "completion": " ".join(f"c{i}" for i in range(100))}
    out = sft_data.fit_example(rec, tok, max_length=48)
    head, body = out["prompt"].split("\n")
    assert head == "Continue:" and body.split()[-1] == "w99"
    assert len(body.split()) + 1 + len(out["completion"].split()) <= 48 - 8
    assert out["completion"].startswith("c0 c1")
