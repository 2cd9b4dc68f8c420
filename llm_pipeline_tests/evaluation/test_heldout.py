import pytest

from llm_pipeline.evaluation.heldout import HeldOut
from llm_pipeline.training.tag_fill import TagFiller

TEXT = "Signed by <PERSON> for <ORGANIZATION> on <DATE_TIME>; see <SECRET_CODE> and <URL:0123456789abcdef>."


def _spans_text(text, spans):
    return [text[a:b] for a, b in spans]


def test_surrogates_are_the_spans_left_out_and_unfillable_tags_too():
    view = HeldOut("surrogates", TagFiller(seed=3))
    text, spans = view.prepare_one(TEXT)
    assert "<PERSON>" not in text and "<SECRET_CODE>" in text  # a type without surrogates stays a tag
    parts = _spans_text(text, spans)
    assert len(parts) == 5 and " <SECRET_CODE>" in parts  # each with the space before it
    outside = "".join(c for i, c in enumerate(text) if not any(a <= i < b for a, b in spans))
    assert outside == "Signed by for on; see and."  # everything but the surrogates and the tag
    assert view.prepare_one(TEXT) == (text, spans)  # deterministic
    assert HeldOut("surrogates", TagFiller(seed=4)).prepare_one(TEXT)[0] != text


def test_with_filling_off_the_tags_are_the_spans():
    text, spans = HeldOut("tags").prepare_one(TEXT)
    assert text == TEXT
    assert _spans_text(text, spans) == [" <PERSON>", " <ORGANIZATION>", " <DATE_TIME>", " <SECRET_CODE>", " <URL:0123456789abcdef>"]


@pytest.mark.parametrize("mode", ["tags", "surrogates"])
def test_a_cap_clips_spans_and_leaves_out_a_tag_it_cut(mode):
    view = HeldOut(mode, TagFiller(seed=0) if mode == "surrogates" else None)
    full, _ = view.prepare_one("Paid to <PERSON> in full.")
    text, spans = view.prepare_one("Paid to <PERSON> in full.", max_chars=12)
    assert text == full[:12] and spans == [(7, 12)]  # "<PER" or the surrogate's start: left out either way


def test_no_tags_in_the_shards_means_every_character_scored():
    text, spans = HeldOut("none").prepare_one(TEXT, max_chars=20)
    assert text == TEXT[:20] and spans == []


def test_counts_per_domain_and_one_line():
    view = HeldOut("tags")
    view.prepare([TEXT, "no tags"], group="legal")
    view.prepare(["<PERSON> wrote."], group="medicine")
    s = view.summary()
    assert s["spans_left_out"] == 6 and s["by_domain"] == {"legal": {"spans": 5, "chars": 73}, "medicine": {"spans": 1, "chars": 8}}
    assert view.line().startswith("Held-out scores leave out 6 PII tags (81 characters) — legal: 5 (73 characters); medicine: 1 (8 characters)")


def test_the_mode_follows_the_config(tmp_path):
    from llm_pipeline.config import PipelineConfig

    cfg = PipelineConfig.model_validate({"name": "t", "data_dir": str(tmp_path), "domains": {"a": {"sources": [{"path": "in/a"}]}}})
    cfg.root = tmp_path
    assert HeldOut.for_config(cfg).mode == "surrogates"
    cfg.training.fill_redaction_tags = False
    assert HeldOut.for_config(cfg).mode == "tags"
    cfg.cleaned_corpus.pii_mode = "mask"
    assert HeldOut.for_config(cfg).mode == "none"
