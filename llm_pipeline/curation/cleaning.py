"""Turn one raw document into plain, readable training text.

HTML goes through a boilerplate extractor (trafilatura: main content only, no menus, footers or cookie banners);
when trafilatura finds nothing (tiny pages, unusual markup) we fall back to selectolax's text of the ``<body>`` so a
short but valid page is not lost. Markdown, reStructuredText and XML have their markup syntax stripped. Every
document then gets ftfy's unicode repair, optional URL removal and whitespace normalization.

    text, extractor = clean_document(raw_text, "html", cfg.cleaned_corpus)

``extractor`` names what produced the text (``trafilatura``, ``selectolax``, ``markdown``, ``rst``, ``xml``,
``plain``) and becomes a column, so a reviewer can see which documents took the fallback path.
"""

from __future__ import annotations

import contextlib
import html
import re
import signal
import threading
import time
from collections.abc import Iterator

import ftfy
import trafilatura
from selectolax.lexbor import LexborHTMLParser

from llm_pipeline.config import CleanedCorpusConfig

HTML_FORMATS = {"html", "htm", "xhtml"}
MARKDOWN_FORMATS = {"md", "markdown"}
RST_FORMATS = {"rst"}
XML_FORMATS = {"xml"}

URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
# A run of blanks becomes one space. The pattern matches only runs that change (two or more blanks, or one that is not
# a plain space): re.sub builds a piece per match, and matching every single space cost ~25 bytes of temporaries
# per byte of a one-line document (200 MB for an 8 MiB one).
_BLANKS = "\t\f\v\u00a0\u2000-\u200b\u3000"
_SPACES = re.compile(f"[ {_BLANKS}]{{2,}}|[{_BLANKS}]")
_MANY_NEWLINES = re.compile(r"\n{3,}")


# ---------------------------------------------------------------- HTML
def extract_html(raw: str) -> tuple[str, str]:
    """Main text of an HTML page and the extractor that produced it."""
    text = trafilatura.extract(
        raw,
        include_comments=False,  # comment threads are mostly short, repetitive and full of names
        include_tables=True,
        include_links=False,
        favor_precision=False,
        deduplicate=False,  # dedup is a stage of its own, with counts
    )
    if text and text.strip():
        return text, "trafilatura"
    return _selectolax_text(raw), "selectolax"


# Lexbor's parse time grows faster than quadratically with nesting depth (40,000 nested <div>s: 2.7 s, 80,000: 27 s
# here), and it runs in C where the per-document time cap cannot interrupt it. Pages with more tags than this take
# the linear tag stripper instead; 10,000 nested tags parse in well under a second.
SELECTOLAX_MAX_TAGS = 10_000
_HIDDEN_BLOCKS = ("script", "style", "noscript", "template", "svg")


def _selectolax_text(raw: str) -> str:
    if raw.count("<") > SELECTOLAX_MAX_TAGS:
        return _stripped_tags_text(raw)
    tree = LexborHTMLParser(raw)
    for tag in ("script", "style", "noscript", "nav", "header", "footer", "template", "svg"):
        for node in tree.css(tag):
            node.decompose()
    root = tree.body or tree.root
    return root.text(separator="\n", strip=True) if root is not None else ""


def _stripped_tags_text(raw: str) -> str:
    """The text of a page without a parser, in linear time: script/style-like blocks and comments dropped, every
    tag a line break, entities decoded."""
    text = _drop_spans(raw, "<!--", "-->")
    for tag in _HIDDEN_BLOCKS:
        text = _drop_spans(text, f"<{tag}", f"</{tag}>", fold=True)
    return html.unescape(_TAG.sub("\n", text))


# ---------------------------------------------------------------- lightweight markup
_MD_RULES = [
    (re.compile(r"^```.*?$|^~~~.*?$", re.MULTILINE), ""),  # code fences: keep the code, drop the fence lines
    (re.compile(r"!\[([^\[\]]*)\]\([^()]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\[\]]+)\]\([^()]*\)"), r"\1"),  # links -> link text
    (re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*\S+.*$", re.MULTILINE), ""),  # reference link definitions
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*", re.MULTILINE), ""),  # ATX headings
    (re.compile(r"^[ \t]{0,3}(?:[-*_][ \t]*){3,}$", re.MULTILINE), ""),  # horizontal rules
    (re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$", re.MULTILINE), ""),  # setext heading underlines
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*:?-*:?[ \t]*$", re.MULTILINE), ""),  # table separator rows
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])"), r"\1"),  # italics
    (re.compile(r"(?<![\w_])_(?!\s)([^_\n]+?)(?<!\s)_(?![\w_])"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),  # inline code
    (re.compile(r"<[^<>\n]+>"), ""),  # inline HTML tags
]


def strip_markdown(text: str) -> str:
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return html.unescape(text)


_RST_RULES = [
    (re.compile(r"^[ \t]*\.\.[ \t]+[\w-]+::.*$", re.MULTILINE), ""),  # directives (.. note::, .. code-block::)
    (re.compile(r"^[ \t]*\.\.[ \t]+_[^:\n]+:.*$", re.MULTILINE), ""),  # link targets
    (re.compile(r"^[ \t]*\.\.(?:[ \t].*)?$", re.MULTILINE), ""),  # comments
    (re.compile(r"^[ \t]*([=\-`:'\"~^_*+#<>])\1{2,}[ \t]*$", re.MULTILINE), ""),  # section adornments
    (re.compile(r"^[ \t]*:[\w -]+:[ \t]*", re.MULTILINE), ""),  # field lists (:param x:)
    (re.compile(r"(?<![\w:-]):[\w:-]+:`([^`<]*?)(?:\s*<[^>`]*>)?`"), r"\1"),  # roles (:ref:`text <target>`)
    (re.compile(r"`([^`<]+?)\s*<[^>`]+>`_{1,2}"), r"\1"),  # inline hyperlinks
    (re.compile(r"``([^`]+)``"), r"\1"),  # inline literals
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"\*([^*\s][^*]*)\*"), r"\1"),
    (re.compile(r"::\s*$", re.MULTILINE), ":"),  # literal-block markers
]


def strip_rst(text: str) -> str:
    for pattern, repl in _RST_RULES:
        text = pattern.sub(repl, text)
    return text


def _split_cdata(text: str) -> list[str]:
    """Markup and CDATA content alternating (even indices markup), found with plain searches: an opener without a
    closer ends the search, where a lazy regex would rescan the rest of the text from every such opener."""
    parts, pos = [], 0
    while (start := text.find("<![CDATA[", pos)) != -1:
        end = text.find("]]>", start + 9)
        if end == -1:
            break
        parts += [text[pos:start], text[start + 9 : end]]
        pos = end + 3
    parts.append(text[pos:])
    return parts


def _drop_spans(text: str, opener: str, closer: str, repl: str = " ", fold: bool = False) -> str:
    """`text` without each opener...closer span (the first closer after each opener), in one pass."""
    hay = text.lower() if fold else text
    out, pos = [], 0
    while (start := hay.find(opener, pos)) != -1:
        end = hay.find(closer, start + len(opener))
        if end == -1:
            break  # no later opener can close either
        out += [text[pos:start], repl]
        pos = end + len(closer)
    out.append(text[pos:])
    return "".join(out)


_DOCTYPE = re.compile(r"<!DOCTYPE[^<>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]+>")


def strip_xml(text: str) -> str:
    """Text content of an XML document, one element per line (tags, comments and processing instructions go).

    CDATA sections are kept verbatim: their "<" and ">" are text, not markup. Every step is linear in the text's
    length, also on unclosed comments, CDATA sections and tags (adversarial input)."""
    parts = _split_cdata(text)
    for i in range(0, len(parts), 2):
        markup = _drop_spans(_drop_spans(parts[i], "<!--", "-->"), "<?", "?>")
        markup = _DOCTYPE.sub(" ", markup)
        parts[i] = html.unescape(_TAG.sub("\n", markup))
    return "".join(parts)


# ---------------------------------------------------------------- invisible characters
# Bidirectional overrides and isolates reorder what a reader sees (the "Trojan Source" trick), and zero-width and
# tag characters hide text from reviewers while a tokenizer still reads it: neither belongs in training text.
_INVISIBLE_CHARS = ("\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u200b\u2060-\u2064\ufeff\u180e\u00ad"
                    "\U000e0000-\U000e007f")
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
# Zero-width (non-)joiners shape Persian, Indic scripts and emoji sequences: kept between two non-ASCII characters,
# removed elsewhere (between Latin letters they only hide a word from a search or a filter).
_STRAY_JOINER = re.compile("(?<![^\x00-\x7f])[\u200c\u200d]|[\u200c\u200d](?![^\x00-\x7f])")


# Either kind: one search finds that a text (almost every text) has nothing for the two substitutions to do.
_MAYBE_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}\u200c\u200d]")


def strip_invisible(text: str) -> str:
    if not _MAYBE_INVISIBLE.search(text):
        return text
    return _STRAY_JOINER.sub("", _INVISIBLE.sub("", text))


# ---------------------------------------------------------------- normalization
# A character that one of ftfy's fixes could act on: anything outside printable ASCII, tab and newline (mojibake,
# controls, terminal escapes, \r line breaks) and "&" (HTML entities). A line without one is returned unchanged by
# ftfy, which fixes text line by line.
_FTFY_MAY_CHANGE = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def fix_unicode(text: str) -> str:
    """ftfy.fix_text, with the same result, but without ftfy's per-line cost on lines it cannot change: a document
    of many short plain lines (a list, a log) otherwise costs ~20 us a line, 20x an ordinary document of its size."""
    if not _FTFY_MAY_CHANGE.search(text):
        return text
    out: list[str] = []
    pending: list[str] = []  # consecutive lines that may change: one ftfy call for the run
    lines = text.split("\n")  # ftfy's own line breaks: a line it sees is exactly a line here
    for i, line in enumerate(lines):
        if i < len(lines) - 1:
            line += "\n"
        if _FTFY_MAY_CHANGE.search(line):
            pending.append(line)
            continue
        if pending:
            out.append(ftfy.fix_text("".join(pending)))
            pending.clear()
        out.append(line)
    if pending:
        out.append(ftfy.fix_text("".join(pending)))
    return "".join(out)


def remove_urls(text: str) -> str:
    return URL_RE.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces, strip every line, and keep at most one blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # one pass over the text: a run of blanks never holds a line break, so none crosses a line
    lines = [line.strip() for line in _SPACES.sub(" ", text).split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def extract_text(raw: str, fmt: str) -> tuple[str, str]:
    fmt = (fmt or "").lower().lstrip(".")
    if fmt in HTML_FORMATS:
        return extract_html(raw)
    if fmt in MARKDOWN_FORMATS:
        return strip_markdown(raw), "markdown"
    if fmt in RST_FORMATS:
        return strip_rst(raw), "rst"
    if fmt in XML_FORMATS:
        return strip_xml(raw), "xml"
    return raw, "plain"


class DocumentTimeout(RuntimeError):
    """Cleaning one document took longer than cleaned_corpus.max_clean_seconds."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise DocumentTimeout in the block after `seconds` of wall-clock time.

    A SIGALRM timer: the regex engine and Python code check for signals as they run, so a runaway pattern is cut
    off mid-match. Signals reach the main thread only: elsewhere (a worker thread) the block runs without a cap.
    An outer timer, if any, is put back with the time it had left."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):  # noqa: ARG001
        raise DocumentTimeout(f"cleaning took longer than {seconds:g} s (cleaned_corpus.max_clean_seconds)")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


def clean_document(raw: str, fmt: str, cfg: CleanedCorpusConfig) -> tuple[str, str]:
    """Readable, repaired, normalized text of one raw document, and the extractor used; DocumentTimeout when it
    takes longer than `cfg.max_clean_seconds`."""
    if not isinstance(raw, str):
        raise TypeError(f"text is {type(raw).__name__}, not a string")
    with time_limit(cfg.max_clean_seconds):
        return _clean(raw, fmt, cfg)


def _clean(raw: str, fmt: str, cfg: CleanedCorpusConfig) -> tuple[str, str]:
    # HTML: ftfy repairs the extracted text, not the page. Menus, scripts and attributes are most of a page's bytes,
    # and ftfy over whole pages took ~70% of cleaning time (benchmarks/extraction_f1.py); the extractor has decoded
    # the entities by then, so mojibake such as "Ã©" is still there to repair. Lightweight markup is repaired
    # first, so mojibake inside it (e.g. "&amp;acirc;") is fixed before the regex rules read it.
    is_html = (fmt or "").lower().lstrip(".") in HTML_FORMATS
    if cfg.fix_unicode and not is_html:
        raw = fix_unicode(raw)
    text, extractor = extract_text(raw, fmt)
    if cfg.fix_unicode and is_html:
        text = fix_unicode(text)
    text = strip_invisible(text)
    if cfg.remove_urls:
        text = remove_urls(text)
    return _settle(normalize_whitespace(text), cfg), extractor


def _settle(text: str, cfg: CleanedCorpusConfig, rounds: int = 4) -> str:
    """Re-apply the plain-text steps until nothing changes, so cleaning is idempotent: normalizing whitespace can
    expose mojibake that ftfy left alone beside a no-break space (``"x \u00a0Â\x80 y"``), and removing a URL can
    join two spaces. Almost always one cheap round that changes nothing."""
    for _ in range(rounds):
        again = fix_unicode(text) if cfg.fix_unicode else text
        again = strip_invisible(again)
        if cfg.remove_urls:
            again = remove_urls(again)
        again = normalize_whitespace(again)
        if again == text:
            break
        text = again
    return text
