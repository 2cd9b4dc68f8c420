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

import html
import re

import ftfy
import trafilatura
from selectolax.lexbor import LexborHTMLParser

from llm_pipeline.config import CleanedCorpusConfig

HTML_FORMATS = {"html", "htm", "xhtml"}
MARKDOWN_FORMATS = {"md", "markdown"}
RST_FORMATS = {"rst"}
XML_FORMATS = {"xml"}

URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u3000]+")
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


def _selectolax_text(raw: str) -> str:
    tree = LexborHTMLParser(raw)
    for tag in ("script", "style", "noscript", "nav", "header", "footer", "template", "svg"):
        for node in tree.css(tag):
            node.decompose()
    root = tree.body or tree.root
    return root.text(separator="\n", strip=True) if root is not None else ""


# ---------------------------------------------------------------- lightweight markup
_MD_RULES = [
    (re.compile(r"^```.*?$|^~~~.*?$", re.MULTILINE), ""),  # code fences: keep the code, drop the fence lines
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> link text
    (re.compile(r"^[ \t]{0,3}\[[^\]]+\]:[ \t]*\S+.*$", re.MULTILINE), ""),  # reference link definitions
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*", re.MULTILINE), ""),  # ATX headings
    (re.compile(r"^[ \t]{0,3}(?:[-*_][ \t]*){3,}$", re.MULTILINE), ""),  # horizontal rules
    (re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$", re.MULTILINE), ""),  # setext heading underlines
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*:?-*:?[ \t]*$", re.MULTILINE), ""),  # table separator rows
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])([*_])(?!\s)(.+?)(?<!\s)\1(?![\w*])"), r"\2"),  # italics
    (re.compile(r"`([^`]+)`"), r"\1"),  # inline code
    (re.compile(r"<[^>\n]+>"), ""),  # inline HTML tags
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
    (re.compile(r":[\w:-]+:`([^`<]*?)(?:\s*<[^>]*>)?`"), r"\1"),  # roles (:ref:`text <target>`)
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`_{1,2}"), r"\1"),  # inline hyperlinks
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


_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)


def strip_xml(text: str) -> str:
    """Text content of an XML document, one element per line (tags, comments and processing instructions go).

    CDATA sections are kept verbatim: their "<" and ">" are text, not markup."""
    parts = _CDATA.split(text)  # even indices: markup; odd: CDATA content
    for i in range(0, len(parts), 2):
        markup = re.sub(r"<!--.*?-->|<\?.*?\?>|<!DOCTYPE[^>]*>", " ", parts[i], flags=re.DOTALL | re.IGNORECASE)
        parts[i] = html.unescape(re.sub(r"<[^>]+>", "\n", markup))
    return "".join(parts)


# ---------------------------------------------------------------- normalization
def remove_urls(text: str) -> str:
    return URL_RE.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces, strip every line, and keep at most one blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
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


def clean_document(raw: str, fmt: str, cfg: CleanedCorpusConfig) -> tuple[str, str]:
    """Readable, repaired, normalized text of one raw document, and the extractor used."""
    if not isinstance(raw, str):
        raise TypeError(f"text is {type(raw).__name__}, not a string")
    # HTML: ftfy repairs the extracted text, not the page. Menus, scripts and attributes are most of a page's bytes,
    # and ftfy over whole pages took ~70% of cleaning time (benchmarks/extraction_f1.py); the extractor has decoded
    # the entities by then, so mojibake such as "Ã©" is still there to repair. Lightweight markup is repaired
    # first, so mojibake inside it (e.g. "&amp;acirc;") is fixed before the regex rules read it.
    is_html = (fmt or "").lower().lstrip(".") in HTML_FORMATS
    if cfg.fix_unicode and not is_html:
        raw = ftfy.fix_text(raw)
    text, extractor = extract_text(raw, fmt)
    if cfg.fix_unicode and is_html:
        text = ftfy.fix_text(text)
    if cfg.remove_urls:
        text = remove_urls(text)
    return _settle(normalize_whitespace(text), cfg), extractor


def _settle(text: str, cfg: CleanedCorpusConfig, rounds: int = 4) -> str:
    """Re-apply the plain-text steps until nothing changes, so cleaning is idempotent: normalizing whitespace can
    expose mojibake that ftfy left alone beside a no-break space (``"x \u00a0Â\x80 y"``), and removing a URL can
    join two spaces. Almost always one cheap round that changes nothing."""
    for _ in range(rounds):
        again = ftfy.fix_text(text) if cfg.fix_unicode else text
        if cfg.remove_urls:
            again = remove_urls(again)
        again = normalize_whitespace(again)
        if again == text:
            break
        text = again
    return text
