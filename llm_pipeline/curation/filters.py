"""Document quality filters: each one keeps a document (``True``) or drops it with a named reason.

The rules follow the Gopher paper (repetition and quality heuristics, Rae et al. 2021) and C4 (Raffel et al. 2020)
as datatrove implements them. A filter is a small object with a ``name`` and ``filter(doc) -> True | (False, reason)``;
``build_filters(cfg)`` returns the list the config switches on, in order, and the first failing filter names the
drop. C4's line rules also *edit* the text (they remove lines), so ``C4Lines.apply`` returns the new text.

``cleaned_corpus.quality_profile`` picks the thresholds: "web" is Gopher and C4 as tuned on web crawl; "domain" (the
default) is measured on real professional corpora (benchmarks/real_curation.py): FineWeb's line-shape rules for
menus and listings, n-gram limits for documents that repeat by design, bullet sentences not counted as link lists.

    doc = Doc(text)
    for f in build_filters(cfg.cleaned_corpus):
        verdict = f.filter(doc)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.langid import detect_language, language_verdict

Verdict = bool | tuple[bool, str]

WORD_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]+")
# The Gopher stop-word rule: real prose uses at least two of these common English words.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "▪", "◦", "*", "-", "–", "‣")
ELLIPSES = ("...", "…")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":", ";", ")")
POLICY_PHRASES = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)


def _has_alnum(word: str) -> bool:
    """Whether a word has a letter or digit (the whole-word test first: most words are nothing else)."""
    return word.isalnum() or any(c.isalnum() for c in word)


def _has_alpha(word: str) -> bool:
    return word.isalpha() or any(c.isalpha() for c in word)


def _has_stop_words(words: list[str], at_least: int) -> bool:
    """Whether `words` hold at least `at_least` stop words (counting stops there: prose has two in its first line)."""
    if at_least <= 0:
        return True
    for w in words:
        if w.lower() in STOP_WORDS:
            at_least -= 1
            if not at_least:
                return True
    return False


@dataclass
class Doc:
    """A document's text with the views the filters share, each computed once."""

    text: str
    language: str = ""  # set by LanguageId; "" until then
    language_score: float = 0.0

    @cached_property
    def words(self) -> list[str]:
        return [w for w in WORD_RE.findall(self.text) if _has_alnum(w)]

    def has_more_words_than(self, limit: int) -> bool:
        """Whether the text has more than `limit` words, found without holding more than `limit` of them: an 8 MiB
        document of two-letter words is 2.8 million strings (~200 MB) that the word count would only drop. Two
        words always have a character between them, so a text shorter than 2 x `limit` cannot go over."""
        if "words" in self.__dict__ or len(self.text) < 2 * limit:
            return len(self.words) > limit
        words = []
        for match in WORD_RE.finditer(self.text):
            word = match.group()
            if _has_alnum(word):
                if len(words) == limit:
                    return True
                words.append(word)
        self.__dict__["words"] = words  # the whole list after all, for the rules that follow
        return False

    @cached_property
    def tokens(self) -> list[str]:  # words and punctuation runs, for the symbol ratio
        return WORD_RE.findall(self.text)

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p for p in re.split(r"\n\s*\n", self.text) if p.strip()]


class Filter:
    name = "filter"

    def filter(self, doc: Doc) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError


class WordCount(Filter):
    name = "word_count"

    def __init__(self, min_words: int, max_words: int):
        self.min_words, self.max_words = min_words, max_words

    def filter(self, doc: Doc) -> Verdict:
        if doc.has_more_words_than(self.max_words):
            return False, "too_many_words"
        if len(doc.words) < self.min_words:
            return False, "too_few_words"
        return True


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """Share of items that repeat an earlier one, by count and by characters."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for item in items:
        if item in seen:
            dup_n += 1
            dup_chars += len(item)
        seen.add(item)
    return dup_n / len(items), dup_chars / max(1, sum(len(i) for i in items))


class LanguageId(Filter):
    """Keeps documents in one of the domain's languages; records the language on the document for later rules."""

    name = "language_id"

    def __init__(self, allowed: list[str], min_score: float):
        self.allowed, self.min_score = list(allowed), min_score

    def filter(self, doc: Doc) -> Verdict:
        doc.language, doc.language_score = detect_language(doc.text)
        reason = language_verdict(doc.language, doc.language_score, self.allowed, self.min_score)
        return True if reason is None else (False, reason)


class GopherRepetition(Filter):
    """Repeated lines, paragraphs and n-grams: navigation residue, templated pages and generated spam.

    The n-gram limits and ``count_rules`` (the by-count line and paragraph rules) come from the profile: the "web"
    profile keeps Gopher's own. Formal documents repeat by design: a leaflet restates its key points as section
    headings and answers several questions with the same passage, minutes repeat the agenda, a policy its defined
    terms. On real domains Gopher's web-crawl limits dropped up to a third of clean leaflets
    (benchmarks/real_curation.py), which reached 50% duplicated 5-grams; the pages the limits exist for (menus,
    templated listings) are caught by LineShape and the character-share rules instead."""

    name = "gopher_repetition"
    # Thresholds from Gopher's table A1.
    TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
    DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __init__(self, top_ngrams=TOP_NGRAMS, dup_ngrams=DUP_NGRAMS, count_rules: bool = True):
        self.top_ngrams, self.dup_ngrams, self.count_rules = top_ngrams, dup_ngrams, count_rules

    def filter(self, doc: Doc) -> Verdict:
        para_frac, para_char_frac = _dup_fraction(doc.paragraphs)
        if self.count_rules and para_frac > 0.30:
            return False, "dup_para_frac"
        if para_char_frac > 0.20:
            return False, "dup_para_char_frac"
        line_frac, line_char_frac = _dup_fraction(doc.lines)
        if self.count_rules and line_frac > 0.30:
            return False, "dup_line_frac"
        if line_char_frac > 0.20:
            return False, "dup_line_char_frac"
        words = list(map(str.lower, doc.words))
        total_chars = sum(map(len, words)) or 1
        for n, limit in self.top_ngrams:
            if len(words) < n:
                break
            # n-grams as tuples of words: a word holds no space, so this counts what " ".join would, in the same
            # order of first occurrence (so the same gram wins a tie), without building a string per position
            gram, count = Counter(_ngrams(words, n)).most_common(1)[0]
            if count > 1 and sum(map(len, gram)) * count / total_chars > limit:
                return False, f"top_{n}_gram"
        prefix = list(accumulate(map(len, words), initial=0))
        for k, (n, limit) in enumerate(self.dup_ngrams):
            covered = self._dup_ngram_chars(words, n, prefix)
            if covered / total_chars > limit:
                return False, f"duplicated_{n}_n_grams"
            # A repeated m-gram (m > n) is made of repeated n-grams, so it covers no word they do not: the shares
            # only fall as n grows. Once this one is under every later limit, no later rule can fire.
            if all(m > n and covered / total_chars <= rest for m, rest in self.dup_ngrams[k + 1 :]):
                break
        return True

    @staticmethod
    def _dup_ngram_chars(words: list[str], n: int, prefix: list[int]) -> int:
        """Characters of words covered by an n-gram that occurred before (each word counted once); ``prefix[i]`` is
        the characters of the first i words."""
        seen: set[tuple[str, ...]] = set()
        covered = end = 0  # words before `end` are counted already
        for i, gram in enumerate(_ngrams(words, n)):
            if gram in seen:
                covered += prefix[i + n] - prefix[max(i, end)]
                end = i + n
            else:
                seen.add(gram)
        return covered


def _ngrams(words: list[str], n: int):
    """The n-grams of `words` as tuples, in order."""
    return zip(*(words[k:] for k in range(n)))


class LineShape(Filter):
    """Pages made of short unpunctuated lines: menus, footers, link lists, listings and table residue.

    FineWeb's line rules (Penedo et al. 2024): too large a share of lines of at most 30 characters, or too small a
    share of lines ending in punctuation. Prose, minutes, leaflets and documentation (headings, code and all) stay
    far from both limits on the real-data benchmark; what an extractor leaves of a news page without its article
    does not. Documents of fewer than ``MIN_LINES`` lines are left to the other rules: a short answer is one line."""

    name = "line_shape"
    SHORT_LINE_CHARS = 30
    MIN_LINES = 5

    def __init__(self, max_short_line_frac: float = 0.67, min_punctuated_line_frac: float = 0.12):
        self.max_short_line_frac = max_short_line_frac
        self.min_punctuated_line_frac = min_punctuated_line_frac

    def filter(self, doc: Doc) -> Verdict:
        lines = [line.strip() for line in doc.lines]
        if len(lines) < self.MIN_LINES:
            return True
        if sum(len(line) <= self.SHORT_LINE_CHARS for line in lines) / len(lines) > self.max_short_line_frac:
            return False, "short_lines"
        if sum(line.endswith(TERMINAL_PUNCT) for line in lines) / len(lines) < self.min_punctuated_line_frac:
            return False, "few_punctuated_lines"
        return True


class GopherQuality(Filter):
    """Word-shape heuristics that separate prose from tables of numbers, link lists and symbol soup."""

    name = "gopher_quality"

    def __init__(
        self,
        max_symbol_word_ratio: float = 0.1,
        min_alpha_word_ratio: float = 0.8,
        min_stop_words: int = 2,
        stop_words_min_words: int = 0,
        bullet_max_words: int | None = None,
    ):
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.min_alpha_word_ratio = min_alpha_word_ratio
        self.min_stop_words = min_stop_words
        self.stop_words_min_words = stop_words_min_words
        # Gopher's bullet rule is aimed at link lists; a bulleted line that carries a sentence (minutes, release
        # notes) is not one. With a limit, only bullet lines of fewer words count; None counts every bullet line.
        self.bullet_max_words = bullet_max_words

    def filter(self, doc: Doc) -> Verdict:
        words = doc.words
        if not words:
            return False, "gopher_no_words"
        mean_len = sum(map(len, words)) / len(words)
        if not 3 <= mean_len <= 10:
            return False, "gopher_mean_word_length"
        symbols = doc.text.count("#") + sum(doc.text.count(e) for e in ELLIPSES)
        if symbols / len(words) > self.max_symbol_word_ratio:
            return False, "gopher_symbol_word_ratio"
        lines = doc.lines
        if lines and sum(self._is_list_bullet(line) for line in lines) / len(lines) > 0.9:
            return False, "gopher_bullet_lines"
        if lines and sum(line.rstrip().endswith(ELLIPSES) for line in lines) / len(lines) > 0.3:
            return False, "gopher_ellipsis_lines"
        # Gopher counts whitespace-separated words here: "4.9.1," or "198.51.100.7" is one non-alphabetic word, not
        # four, which would otherwise sink technical prose full of versions and addresses. Pure punctuation ("|" of a
        # markdown table, a dash) is not a word at all.
        spaced = [w for w in doc.text.split() if _has_alnum(w)]
        if spaced and sum(map(_has_alpha, spaced)) / len(spaced) < self.min_alpha_word_ratio:
            return False, "gopher_alpha_words"
        # The stop-word list is English (other languages skip the rule), and short texts (an FAQ answer, a caption)
        # can be good prose without any of the eight words, so the rule applies from `stop_words_min_words` on.
        if (
            doc.language in ("", "en")
            and len(words) >= self.stop_words_min_words
            and not _has_stop_words(words, self.min_stop_words)
        ):
            return False, "gopher_stop_words"
        return True

    def _is_list_bullet(self, line: str) -> bool:
        if not line.lstrip().startswith(BULLETS):
            return False
        return self.bullet_max_words is None or len(line.split()) - 1 < self.bullet_max_words


class C4Lines(Filter):
    """C4's rules: drop pages with lorem ipsum (or code braces), remove javascript/policy lines (and optionally lines
    without terminal punctuation), then drop the page if nothing is left."""

    name = "c4"

    def __init__(self, terminal_punct: bool = False, curly_braces: bool = False):
        self.terminal_punct = terminal_punct
        self.curly_braces = curly_braces

    def apply(self, text: str) -> tuple[str, str | None]:
        """The text with C4's line removals applied, and a drop reason when the page goes as a whole."""
        lowered = text.lower()
        if "lorem ipsum" in lowered:
            return text, "lorem_ipsum"
        if self.curly_braces and "{" in text:
            return text, "curly_bracket"
        kept = []
        for line in text.split("\n"):
            low = line.lower()
            if "javascript" in low or any(p in low for p in POLICY_PHRASES):
                continue
            if self.terminal_punct and line.strip() and not line.rstrip().endswith(TERMINAL_PUNCT):
                continue
            kept.append(line)
        new_text = "\n".join(kept).strip()
        if not new_text:
            return new_text, "c4_no_lines_left"
        return new_text, None

    def filter(self, doc: Doc) -> Verdict:
        _, reason = self.apply(doc.text)
        return True if reason is None else (False, reason)


class BlockedWords(Filter):
    name = "blocked_words"

    def __init__(self, words: list[str]):
        self.pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def filter(self, doc: Doc) -> Verdict:
        return (False, "blocked_word") if self.pattern.search(doc.text) else True


# The "domain" profile (the default). One n-gram covering a fifth of the text is word spam anywhere, so the top
# n-gram limits only double. Duplicated n-grams go only when a document is mostly repeats of itself (a template
# pasted three times is 67%): clean leaflets on the real-data benchmark reached 50% duplicated 5-grams and 46%
# duplicated 10-grams. A bullet line of 8 or more words is a sentence, not a link.
DOMAIN_TOP_NGRAMS = ((2, 0.40), (3, 0.36), (4, 0.32))
DOMAIN_DUP_NGRAMS = ((5, 0.60), (6, 0.58), (7, 0.56), (8, 0.54), (9, 0.52), (10, 0.50))
DOMAIN_BULLET_MAX_WORDS = 8


def build_filters(cfg: CleanedCorpusConfig, languages: list[str] | None = None) -> list[Filter]:
    """The document filters the config enables, in order (C4 edits text, so it runs separately, before).

    Language id runs right after the word count: the Gopher rules assume the language is known (stop words are
    English), and a French page should be dropped as French, not as "too few stop words"."""
    filters: list[Filter] = [WordCount(cfg.min_words, cfg.max_words)]
    if cfg.language_id:
        filters.append(LanguageId(languages or [], cfg.min_language_score))
    if cfg.blocked_words:
        filters.append(BlockedWords(cfg.blocked_words))
    # Repetition before quality (as in FineWeb): a template repeated 25 times is named as repetition, not as
    # whatever word-shape rule it happens to fail.
    web = cfg.quality_profile == "web"
    if cfg.gopher_repetition:
        filters.append(GopherRepetition() if web else GopherRepetition(DOMAIN_TOP_NGRAMS, DOMAIN_DUP_NGRAMS, count_rules=False))
    if cfg.line_shape and not web:
        filters.append(LineShape(cfg.max_short_line_frac, cfg.min_punctuated_line_frac))
    if cfg.gopher_quality:
        filters.append(
            GopherQuality(cfg.max_symbol_word_ratio, cfg.min_alpha_word_ratio, cfg.min_stop_words, cfg.stop_words_min_words,
                          bullet_max_words=None if web else DOMAIN_BULLET_MAX_WORDS)
        )
    return filters


def first_failure(doc: Doc, filters: list[Filter]) -> str | None:
    """The drop reason of the first filter that rejects the document, or None when every filter keeps it."""
    for f in filters:
        verdict = f.filter(doc)
        if verdict is not True:
            return verdict[1] if isinstance(verdict, tuple) else f.name
    return None
