"""Cleaning: extraction per format, unicode repair, URL removal, whitespace normalization."""

import pytest

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.cleaning import (
    clean_document,
    extract_html,
    normalize_whitespace,
    remove_urls,
    strip_markdown,
    strip_rst,
    strip_xml,
)

ARTICLE = " ".join(
    f"The court held in paragraph {i} that the contract between the parties was valid and binding on both of them."
    for i in range(12)
)
PAGE = f"""<html><head><title>Ruling</title><script>var tracking = 1;</script><style>p {{color: red}}</style></head>
<body><nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/login">Log in</a></nav>
<article><h1>The ruling</h1><p>{ARTICLE}</p><p>{ARTICLE}</p></article>
<footer>Copyright 2024. All rights reserved. Cookie settings.</footer></body></html>"""


def test_trafilatura_keeps_the_article_and_drops_boilerplate():
    text, extractor = extract_html(PAGE)
    assert extractor == "trafilatura"
    assert "contract between the parties" in text
    assert "tracking" not in text and "color: red" not in text
    assert "Log in" not in text


def test_tiny_page_falls_back_to_selectolax():
    text, extractor = extract_html("<div><span>Open 9 to 5 daily</span><script>x()</script></div>")
    assert extractor == "selectolax"
    assert text == "Open 9 to 5 daily"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("# Title\n\nSome **bold** and *italic* text.", "Title\n\nSome bold and italic text."),
        ("See [the docs](https://example.com/docs) now.", "See the docs now."),
        ("![a diagram](img.png)", "a diagram"),
        ("> quoted line", "quoted line"),
        ("Use `pip install x` here.", "Use pip install x here."),
        ("```python\nprint(1)\n```", "\nprint(1)\n"),
        ("Heading\n=======\nbody", "Heading\n\nbody"),
    ],
)
def test_strip_markdown(raw, expected):
    assert strip_markdown(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Title\n=====\n\nText.", "Title\n\n\nText."),
        (".. note::\n\nA ``literal`` and **strong**.", "\n\nA literal and strong."),
        ("See :ref:`the guide <guide>` and `Python <https://python.org>`_.", "See the guide and Python."),
    ],
)
def test_strip_rst(raw, expected):
    assert strip_rst(raw) == expected


@pytest.mark.parametrize(
    "raw, expected_words",
    [
        ('<?xml version="1.0"?><doc><title>Act</title><p>Section &amp; clause</p></doc>', ["Act", "Section & clause"]),
        ("<a><!-- hidden --><b><![CDATA[raw <text>]]></b></a>", ["raw <text>"]),
    ],
)
def test_strip_xml(raw, expected_words):
    lines = [line for line in normalize_whitespace(strip_xml(raw)).split("\n") if line]
    assert lines == expected_words


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("visit https://example.com/a?b=1 today", "visit  today"),
        ("see www.example.org.", "see "),
        ("no links here", "no links here"),
    ],
)
def test_remove_urls(raw, expected):
    assert remove_urls(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a  b\t\tc", "a b c"),
        ("  line one  \r\n\r\n\r\n\r\nline two ", "line one\n\nline two"),
        ("x\u00a0\u00a0y", "x y"),
    ],
)
def test_normalize_whitespace(raw, expected):
    assert normalize_whitespace(raw) == expected


def test_clean_document_repairs_mojibake_and_reports_extractor():
    cfg = CleanedCorpusConfig()
    text, extractor = clean_document("The caf\u00c3\u00a9 opened   at https://cafe.example.com today.", "txt", cfg)
    assert text == "The café opened at today."
    assert extractor == "plain"


@pytest.mark.parametrize("body", ["caf\u00c3\u00a9", "caf&Atilde;&copy;"])
def test_html_mojibake_is_repaired_after_extraction(body):
    para = "The " + body + " on the corner opened its doors to the whole street on a bright Monday morning. " * 3
    html = f"<html><body><nav>Home | Menu</nav><article><p>{para}</p></article></body></html>"
    text, _ = clean_document(html, "html", CleanedCorpusConfig())
    assert "The café on the corner" in text and "\u00c3" not in text


def test_clean_document_switches_off():
    cfg = CleanedCorpusConfig(remove_urls=False, fix_unicode=False)
    text, _ = clean_document("caf\u00c3\u00a9 https://x.org", "txt", cfg)
    assert text == "caf\u00c3\u00a9 https://x.org"


def test_clean_document_rejects_non_text():
    with pytest.raises(TypeError, match="not a string"):
        clean_document(None, "txt", CleanedCorpusConfig())


# ---------------------------------------------------------------- hostile text: invisible characters, time
def test_bidi_controls_and_zero_width_characters_are_removed():
    from llm_pipeline.config import CleanedCorpusConfig

    cfg = CleanedCorpusConfig(remove_urls=False)
    text = ("Pay the\u202e 0001 \u202c invoice\u200b now\u2060 or\ufeff never\u2066 x\u2069 \u200dagain\u200c. "
            "Tagged\U000e0041\U000e0042 text and a soft\u00adhyphen.")
    out, _ = clean_document(text, "txt", cfg)
    assert out == "Pay the 0001 invoice now or never x again. Tagged text and a softhyphen."
    # Joiners that shape a script or an emoji sequence stay.
    kept, _ = clean_document("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 and \U0001f468\u200d\U0001f469", "txt", cfg)
    assert "\u200c" in kept and "\u200d" in kept
    # A joiner alone between Latin letters (no other invisible character to find first) still goes.
    assert clean_document("Pay\u200cPal and pass\u200dword", "txt", cfg)[0] == "PayPal and password"


def _cpu(fn, repeat: int = 3) -> float:
    """Best-of-N CPU time of fn(): what the work costs, not how busy the machine is."""
    import time

    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


ADVERSARIAL = {  # unclosed openers that made lazy regexes rescan the rest of the line or text from each one
    "md": ["*a ", "_a ", "[a", "![a](", "<a ", "[a\n"],
    "xml": ["<!--a", "<?a", "<![CDATA[a", "<a", "<!DOCTYPE a"],
    "rst": [":a", ":r:`a <", "`a <", ": a b c\n"],
    "html": ["<div>", "<!--a"],
}


@pytest.mark.parametrize("fmt", sorted(ADVERSARIAL))
def test_cleaning_is_linear_on_adversarial_text(fmt):
    from llm_pipeline.config import CleanedCorpusConfig

    cfg = CleanedCorpusConfig()
    size = 1_000_000
    prose = "The tenant asked the landlord to repair the heating before winter arrived, and he agreed. " * 20 + "\n\n"
    ordinary = (prose * (size // len(prose) + 1))[:size]
    baseline = _cpu(lambda: clean_document(ordinary, fmt, cfg), repeat=2)
    for unit in ADVERSARIAL[fmt]:
        hostile = (unit * (size // len(unit) + 1))[:size]
        cost = _cpu(lambda: clean_document(hostile, fmt, cfg), repeat=1)
        for _ in range(2):  # best of three, but only paid when a first measure looks slow (a busy machine)
            if cost <= 3 * baseline:
                break
            cost = min(cost, _cpu(lambda: clean_document(hostile, fmt, cfg), repeat=1))
            baseline = min(baseline, _cpu(lambda: clean_document(ordinary, fmt, cfg), repeat=1))
        ratio = cost / max(baseline, 0.05)
        assert ratio <= 3, f"{unit!r} x {size:,}: {ratio:.1f}x an ordinary document of the same size"


def test_a_document_over_the_time_cap_raises_and_the_cap_is_lifted_after():
    import signal

    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.cleaning import DocumentTimeout

    slow = "\u00e9\n" * 400_000  # every line goes through ftfy: seconds of work
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(DocumentTimeout, match="max_clean_seconds"):
        clean_document(slow, "txt", CleanedCorpusConfig(max_clean_seconds=0.2))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == before
    out, _ = clean_document("A short page of text.", "txt", CleanedCorpusConfig(max_clean_seconds=0.2))
    assert out == "A short page of text."
