"""What the PII redactor does to the spans the analyzer found, before it replaces them: our own tags are never found
again, names grow over their other parts and their honorific, places over their house number and postal code, and
findings that are not personal data (headings in capitals, NRP that names no group, capitalised common nouns the
document also writes in lower case) are dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What the type_tag and hash modes write, and what a later pass or the audit must not count as PII again.
TYPE_TAG = re.compile(r"<[A-Z_]+(?::[0-9a-f]{16})?>")
# What may continue a name past the span NER gave: a hyphenated part ("-Vromm") or particles and a capitalized
# part (" van der Berg", " de la Cruz"); and what may precede it: a hyphenated first part ("Jean-" of "Jean-Luc").
_PART = r"[A-Z][\w'’]*[a-z][\w'’]*"
_NAME_TAIL = re.compile(r"(?:-" + _PART + r"|(?: (?:van|von|der|den|de|da|di|del|della|du|la|le|ter|ten|dos|das|bin|ibn|al|el))+ "
                        + _PART + r"(?:-" + _PART + r")?)")
_NAME_HEAD = re.compile(_PART + r"-$")
# A word, with its inner apostrophes and hyphens ("Terms", "Children's", "Co-operative").
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Honorifics before a name, as written ("Mr.", "mr.", "MRS", "Dr", "Prof."); "miss" only capitalized ("I miss").
_HONORIFIC = re.compile(r"\b(?:[Mm]rs?|[Mm]s|[Mm]x|[Dd]r|[Pp]rof|MRS?|MS|DR|Miss|Sir|Dame|Mme|Mlle)\.?[ \t]+$")
# A house number before a place, at a line's start (after quote marks or bullets) or after "at", "to", "is", ":".
_HOUSE_NUMBER = re.compile(r"(?:^[^\w\n]*|\b(?:at|to|is|address)[ \t]+|:[ \t]*)(\d{1,6}[A-Za-z]?),?[ \t]+$", re.MULTILINE)
# A postal code after a place ("Oslo 0150", "Springfield, IL 62704"), at the end of a line or before punctuation.
_POSTCODE_AFTER = re.compile(r",?[ \t]+(?:[A-Z]{2,3}[ \t]+)?\d{4,6}(?![\w-])(?=[ \t]*(?:$|[.,;)]))", re.MULTILINE)


@dataclass
class Span:
    """One PII finding: what the redactor needs from Presidio's RecognizerResult, small enough to send between processes."""

    start: int
    end: int
    entity_type: str
    score: float


def only_tags(span: str) -> bool:
    """True when a found span is nothing but replacement tags (and punctuation or masks around them)."""
    return not re.sub(r"\W", "", TYPE_TAG.sub("", span))


def outside_tags(text: str, spans: list) -> list:
    """`spans` with the parts that lie inside replacement tags cut away: a span only in a tag is dropped, one that
    runs into a tag keeps its part (or parts) with a word character outside it."""
    tags = [m.span() for m in TYPE_TAG.finditer(text)]
    if not tags:
        return spans
    out = []
    for r in spans:
        inside = [(a, b) for a, b in tags if a < r.end and r.start < b]
        if not inside:
            out.append(r)
            continue
        cuts, lo = [], r.start
        for a, b in inside:
            cuts.append((lo, max(lo, a)))
            lo = max(lo, b)
        cuts.append((lo, r.end))
        for a, b in cuts:
            while a < b and not text[a].isalnum():
                a += 1
            while b > a and not text[b - 1].isalnum():
                b -= 1
            if b > a:
                out.append(Span(a, b, r.entity_type, r.score))
    return out


def extend_names(text: str, spans: list) -> list:
    """PERSON spans grown over the hyphenated or particle-joined parts of the same name that lie next to them, and
    over the honorific before them ("Mr.", "Dr", "Mrs."): it gives the person's gender or profession, and "Mr.
    <PERSON>" keeps a trace of who was there that "<PERSON>" does not."""
    for r in spans:
        if r.entity_type != "PERSON":
            continue
        while (m := _NAME_TAIL.match(text, r.end)) is not None:
            r.end = m.end()
        while r.start > 0 and (m := _NAME_HEAD.search(text, 0, r.start)) is not None and m.end() == r.start:
            r.start = m.start()
        if r.start > 0 and (m := _HONORIFIC.search(text, max(0, r.start - 8), r.start)) is not None:
            r.start = m.start()
    return spans


def extend_addresses(text: str, spans: list) -> list:
    """LOCATION spans grown over the house number before them and the postal code after them, as addresses write
    them ("20789 <street>", "<city> 62488", "<city>, NY 12345"): alone, neither number is found, and with the
    place gone they are what is left of the address. The number before counts only at the start of a line or
    after "at", "to", "is" or a colon, the code after only at the end of a line or before punctuation, so "in 1989
    Berlin" or "Paris 2024 Olympics" keep their years."""
    for r in spans:
        if r.entity_type != "LOCATION":
            continue
        if (m := _POSTCODE_AFTER.match(text, r.end)) is not None:
            r.end = m.end()
        if r.start > 0 and (m := _HOUSE_NUMBER.search(text, max(0, r.start - 24), r.start)) is not None:
            r.start = m.start(1)
    return spans


def _heading(text: str, r) -> bool:
    """An ORGANIZATION finding in capitals only ("BACKGROUND", "NOTICES", "FORCE MAJEURE", "IBM"): spaCy's small
    model reads headings in capitals as organisations, and an acronym names an organisation, not a person. (A city
    written in capitals, "flew to LEPPEN", stays too: keeping such words when they stand in a sentence also kept
    "in ASCII", "NINDS", "HTTPS" and drug names in the domain corpora, far more often.)"""
    return r.entity_type == "ORGANIZATION" and not any(c.islower() for c in text[r.start : r.end])


# What a nationality, religion or political group looks like (the NRP spaCy's small model finds is otherwise
# noisy: "Alzheimers", "Windows", "Funding", "DMCA" were NRP in the domain corpora). The last word must end like a
# demonym or adherent ("-an", "-ese", "-ish", "-i", "-ist", "-lander", "-man") or be one of the others.
_NRP_SUFFIX = re.compile(r"(?i)(?:[^e]an|ean|ians?|[^e]ans|eans|eses?|ish|[aeiouydlnq]is?|lander|landers|m[ae]n|mans|ists?|ites?)$")
_NRP_WORDS = frozenset("""
    argentine argentines catholic catholics hispanic arabic islamic slavic nordic baltic icelandic celtic germanic hellenic semitic
    dutch french czech czechs welsh irish swiss thai maori inuit basque sami roma chechen
    greek greeks turk turks dane danes finn finns scot scots arab arabs pole poles slovak slovaks serb serbs croat
    croats kurd kurds uzbek uzbeks kazakh kazakhs tajik tajiks jew jews muslim muslims hindu hindus sikh sikhs
    protestant protestants democrat democrats conservative conservatives liberal liberals labour tory tories
    """.split())


def _not_a_group(text: str, r) -> bool:
    """An NRP finding whose last word looks like no nationality, religion or political group (``_NRP_SUFFIX``)."""
    if r.entity_type != "NRP":
        return False
    words = re.findall(r"[^\W\d_]+", text[r.start : r.end])
    if not words:
        return True
    last = words[-1]
    return not (last.lower() in _NRP_WORDS or _NRP_SUFFIX.search(last))


def _outside_findings(text: str, found: list) -> str:
    """`text` with every finding and every tag cut out (a space in their place). The evidence is read outside them so
    that it is the same in the first pass, the later passes and the no_pii_left audit, which read the text with the
    findings replaced: a "council" that is only part of a redacted URL (".../council/issues") would otherwise let
    "Council" stay in the first pass and be found by the audit."""
    cuts = sorted([(r.start, r.end) for r in found] + [m.span() for m in TYPE_TAG.finditer(text)])
    parts, last = [], 0
    for a, b in cuts:
        if a > last:
            parts.append(text[last:a])
        if b > last:
            parts.append(" ")
            last = b
    parts.append(text[last:])
    return "".join(parts)


def _written_lower(word: str, outside: str, seen: dict[str, bool]) -> bool:
    """Whether `word` in lower case stands as a word of its own in `outside` (not inside "leadership-council")."""
    low = word.lower()
    if low not in seen:
        seen[low] = False
        at = outside.find(low)
        while at >= 0:  # str.find, not a regex per word: a pattern per word would fill re's compile cache
            end = at + len(low)
            if (at == 0 or not _joins(outside[at - 1])) and (end == len(outside) or not _joins(outside[end])):
                seen[low] = True
                break
            at = outside.find(low, at + 1)
    return seen[low]


def _joins(c: str) -> bool:
    return c.isalnum() or c in "_'’-"


def common_nouns(text: str, found: list) -> list:
    """`found` without the ORGANIZATION findings made only of capitalised words that the same text also writes in
    lower case ("the Project", "Council", "Customer", "Personal Data", "Terms of Service"). spaCy's small model reads
    a capitalised common noun (a defined term of a contract, a committee or project named by its role) as an
    organisation: in two real domain corpora (public policies and meeting minutes) 1,366 of 3,687 ORGANIZATION
    findings were such words, and replacing them took the domain's own vocabulary out of the training text. A name
    keeps its case ("GitHub", "Microsoft", "Moreno, Davis and Wallace"), and a name made of common words is written
    in lower case in the same text rarely: on both labelled PII sets of the benchmark no gold span was dropped.
    Lower-case words inside the finding ("of", "the") are allowed; at least one capitalised word is needed. Only
    organisations: a person called Mark in a text that says "mark" is still a person."""
    if not any(r.entity_type == "ORGANIZATION" for r in found):
        return found
    outside, seen = None, {}
    out = []
    for r in found:
        if r.entity_type == "ORGANIZATION":
            capitalised = [w for w in _WORD.findall(text[r.start : r.end]) if not w.islower()]
            if capitalised and all(w[0].isupper() and (len(w) == 1 or w[1:].islower()) for w in capitalised):
                outside = _outside_findings(text, found) if outside is None else outside
                if all(_written_lower(w, outside, seen) for w in capitalised):
                    continue
        out.append(r)
    return out
