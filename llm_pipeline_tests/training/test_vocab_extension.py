"""Mining domain terms for a pretrained tokenizer: redaction tags and numbers never become terms; dropping the
terms again maps every kept token to its row."""

import pytest
import torch

from llm_pipeline.training import vocab_extension
from llm_pipeline.training.embeddings import keep_rows
from llm_pipeline_tests.training.pretrained_fixture import build_pretrained


@pytest.fixture(scope="module")
def general():
    return build_pretrained()


def test_the_tag_pattern_is_the_one_redaction_writes():
    from llm_pipeline.curation.pii import TYPE_TAG

    assert vocab_extension.REDACTION_TAG.pattern == TYPE_TAG.pattern


@pytest.mark.parametrize(("word", "term"), [("hypertension", True), ("COVID-19", True), ("H1N1", True), ("2019", False),
                                             ("1,250", False), ("12-34", False), ("abc", False)])
def test_numbers_and_short_words_are_not_terms(word, term):
    assert vocab_extension.is_domain_term(word) is term


def test_redaction_tags_are_not_counted_as_words():
    texts = ["<PERSON> was admitted with hypertension in <LOCATION>.", "<PERSON:0123456789abcdef> and <EMAIL_ADDRESS> wrote"]
    counts = vocab_extension.count_words(texts)
    assert counts["hypertension"] == 1 and counts["wrote"] == 1
    assert not {"PERSON", "LOCATION", "EMAIL_ADDRESS", "0123456789abcdef"} & set(counts)


def test_mined_terms_skip_years_and_tags(general):
    _, tok = general
    texts = ["In 2019 the hypertension clinic saw <PERSON> about hypertension and bradycardia in 2019."] * 5
    terms = [t["term"] for t in vocab_extension.mine_terms(tok, vocab_extension.count_words(texts), 3, 20)]
    assert "hypertension" in terms and "bradycardia" in terms
    assert "2019" not in terms and "PERSON" not in terms


def test_dropping_the_terms_keeps_every_other_row(general, tmp_path):
    from transformers import AutoTokenizer

    model, tok = general
    tok.save_pretrained(tmp_path)
    extended, original = AutoTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    vocab_extension.add_terms(extended, [{"term": "hypertension"}, {"term": "bradycardia"}])
    vocab_extension.finish(extended)  # the chat markers come after the terms
    vocab_extension.finish(original)
    model.resize_token_embeddings(len(extended), mean_resizing=False)
    before = model.get_input_embeddings().weight.detach().clone()
    keep = vocab_extension.row_map(extended, original)
    assert keep[: len(tok)] == list(range(len(tok))) and len(keep) == len(original) == len(extended) - 2
    keep_rows(model, keep)
    after = model.get_input_embeddings().weight
    torch.testing.assert_close(after, before[keep])
    assert model.get_output_embeddings().weight.shape[0] == len(original)
