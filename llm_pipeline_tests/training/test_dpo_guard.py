"""The DPO guard reads held-out documents as training reads them and scores only what a model was taught to predict."""

import pytest

from evaluation.fixtures import make_model, make_tokenizer
from llm_pipeline.evaluation.heldout import HeldOut
from llm_pipeline.evaluation.perplexity import score_texts
from llm_pipeline.training.dpo_guard import HeldOutGuard
from llm_pipeline.training.tag_fill import TAG, TagFiller
from llm_pipeline_tests.training.fixtures import TAGGED, VOCAB, write_tagged_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    shards = write_tagged_shards(tmp_path_factory.mktemp("guard"))
    tok = make_tokenizer([" ".join(words) for words in VOCAB.values()] + [TAGGED] * 3)
    return shards, tok, make_model(len(tok), max_positions=128)


def test_surrogates_are_read_but_not_scored(setup):
    shards, tok, model = setup
    guards = [HeldOutGuard.build(model, tok, shards, list(VOCAB), 1.03, view=HeldOut("surrogates", TagFiller(seed=s))) for s in (0, 9)]
    for g in guards:
        assert g.texts and not any(TAG.search(t) for _, t in g.texts)  # every tag filled
        assert all(len(sp) == 5 for sp in g.skip)  # the five surrogates of each document, left out
        assert g.summary()["left_out_of_score"]["mode"] == "surrogates" and g.left_out["spans"] == 5 * len(g.texts)
        assert all(abs(r - 1.0) < 1e-9 for r in g.ratios().values())
    a, b = guards
    assert [t for _, t in a.texts] != [t for _, t in b.texts]  # other surrogates drawn...
    # ... and the same tokens and bytes scored: the text outside the surrogates, whatever they are.
    assert [(s.tokens, s.bytes) for s in a.reference] == [(s.tokens, s.bytes) for s in b.reference]
    whole = score_texts(a.lm, [t for _, t in a.texts])
    assert all(w.tokens > s.tokens and w.bytes > s.bytes for w, s in zip(whole, a.reference))


def test_with_filling_off_the_tags_are_left_out(setup):
    shards, tok, model = setup
    g = HeldOutGuard.build(model, tok, shards, list(VOCAB), 1.03)
    assert all("<PERSON>" in t for _, t in g.texts)
    assert all([t[a:b] for a, b in sp][0] == " <PERSON>" for (_, t), sp in zip(g.texts, g.skip))
    tag_chars = sum(len(m.group()) + 1 for m in TAG.finditer(TAGGED))  # each with the space before it
    assert g.left_out == {"mode": "tags", "spans": 5 * len(g.texts), "chars": tag_chars * len(g.texts)}
    # Under a token budget the spans follow the documents kept.
    few = HeldOutGuard.build(model, tok, shards, list(VOCAB), 1.03, max_tokens=1)
    assert len(few.texts) == len(VOCAB) == len(few.skip) and all(len(sp) == 5 for sp in few.skip)
