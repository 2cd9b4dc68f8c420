"""Presidio's phone recognizer with the work that cannot yield a match skipped: the same matches, several times faster.

Presidio's ``PhoneRecognizer`` runs python-phonenumbers' ``PhoneNumberMatcher`` over the whole text once per region
(eight by default), and the matcher parses every digit group it finds (a year, a card number and each of its
four-digit blocks, an IP address) with that region's metadata. ``DigitWindowPhoneRecognizer`` keeps the matcher and
its verdicts, and skips only what provably cannot match:

- it reads only **windows around digits** (a phone number is digits with a little punctuation);
- a window or candidate with **fewer digits than any valid number of the region could have** is not parsed. The
  floor comes from the library's own metadata (shortest national number, the digits a national-prefix rule may
  add, the shortest international prefix; see ``digit_floor``): two- and three-digit numbers never reach the
  parser, and a four-digit group only in Germany, whose shortest numbers have four digits;
- a candidate without a plus, letters or extension marks, whose digits start with none of the region's
  international prefix, country code or national prefix, parses as a national number made of all its digits; when
  none of the number types of that country code's regions matches it (length and pattern, as is_valid_number
  checks), it cannot be valid and is not parsed (``cannot_be_valid``): no region parses a card number or most years;
- a candidate's verdict is **memoized**: it depends only on the candidate, its two neighbouring characters and
  the region, and not on the region at all when the candidate starts with ``+`` (the country code then comes from
  the number itself), so an international number is parsed once instead of eight times, and a number that recurs
  across documents once per corpus;
- the matcher extracts the same candidates from a window whatever the region, and differs only in which it accepts:
  after a region that matched nothing, the next regions **check that region's candidates** instead of extracting
  them again, and run the matcher only where one verifies (0.120 -> 0.078 CPU-s on presidio-research's 1,500
  documents, the same matches).

llm_pipeline_tests/curation/test_pii_phone.py checks the results against Presidio's recognizer on the whole text.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import product

from phonenumbers import PhoneMetadata, PhoneNumberMatcher
from phonenumbers.phonenumbermatcher import PhoneNumberMatch
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, COUNTRY_CODES_FOR_NON_GEO_REGIONS, SUPPORTED_REGIONS
from presidio_analyzer import EntityRecognizer
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")
# phonenumbers starts a number at the first plus sign or digit (its _VALID_START_CHAR_PATTERN).
_START_CHAR = re.compile(r"[+\uFF0B\d]")
PHONE_WINDOW = 40  # characters kept on each side of a digit run: a phone number with its prefix and separators fits
MEMO_SIZE = 100_000  # candidates remembered per recognizer (a few MB); the memo restarts when full
_MISSING = object()


def nsn_digits(text: str) -> int:
    """An upper bound on the digits a phone number parsed from `text` can have: its digits plus its ``x``/``X``.

    Letters enter a number only as the ``x`` phonenumbers accepts as punctuation (with three or more letters it
    reads them as keypad digits); other letters can only be an extension label, which the parser strips."""
    return len(_DIGIT.findall(text)) + text.count("x") + text.count("X")


def _min_length(md) -> int:
    """Shortest national significant number valid for a region: is_valid_number requires the length to be one of
    the general description's possible lengths (when it lists any)."""
    lengths = [n for n in md.general_desc.possible_length if n > 0] if md.general_desc else []
    return min(lengths) if lengths else 1


def _inserted(md) -> int:
    """Digits a national-prefix transform rule may add to the number (e.g. Guernsey's ``1481\\1``)."""
    rule = md.national_prefix_transform_rule or ""
    return len(re.findall(r"\d", re.sub(r"\\\d|\$\d", "", rule)))


@lru_cache(maxsize=1)
def plus_floor() -> int:
    """Fewest digits of any valid number written with a country code: country code + shortest number - inserted."""
    floors = []
    for region in SUPPORTED_REGIONS:
        md = PhoneMetadata.metadata_for_region(region)
        floors.append(len(str(md.country_code)) + _min_length(md) - _inserted(md))
    for code in COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        md = PhoneMetadata.metadata_for_nongeo_region(code)
        floors.append(len(str(code)) + _min_length(md) - _inserted(md))
    return max(1, min(floors))


@lru_cache(maxsize=64)
def digit_floor(region: str, plus: bool) -> int:
    """Fewest digits a candidate must have to parse as a valid number in `region`'s matcher.

    With a leading plus, the country code comes from the number (``plus_floor``). Without one, the number is
    national (at least the region's shortest number, less what its transform rule adds), or carries the region's
    international prefix (its shortest match) followed by a number with a country code."""
    if plus:
        return plus_floor()
    md = PhoneMetadata.metadata_for_region(region)
    if md is None:  # an unknown region parses only numbers with a plus sign
        return plus_floor()
    return max(1, min(_min_length(md) - _inserted(md), _shortest_match(md.international_prefix) + plus_floor()))


def _shortest_match(pattern: str | None, longest: int = 3) -> int:
    """Digits in the shortest digit string `pattern` matches (an international prefix such as ``00`` or ``011``),
    up to `longest`."""
    if not pattern:
        return 0
    compiled = re.compile(pattern)
    for n in range(longest):
        if any(compiled.fullmatch("".join(d)) for d in product("0123456789", repeat=n)):
            return n
    return longest


def digit_windows(text: str, margin: int = PHONE_WINDOW) -> list[tuple[int, int]]:
    """Disjoint (start, end) windows covering every digit with `margin` characters around it, cut at whitespace."""
    out: list[tuple[int, int]] = []
    for m in _DIGITS.finditer(text):
        lo, hi = max(0, m.start() - margin), min(len(text), m.end() + margin)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
            continue
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    # Widen each window's end to whitespace (its start was widened above), merging windows that then touch.
    merged: list[tuple[int, int]] = []
    for lo, hi in out:
        while hi < len(text) and not text[hi].isspace():
            hi += 1
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


# Characters that let phonenumbers read more than a national number from a candidate: a plus sign, extension marks
# (x, #, ~, ",,", ";ext=") and letters (read as keypad digits); also any other alphanumeric that is not a decimal
# digit, so that the digits read here are the ones phonenumbers reads.
_NOT_PLAIN = re.compile(r"[^\W\d_]|[+\uFF0B#\uFF03~\uFF5E,;]")
_NOT_ASCII_DIGIT = re.compile(r"[^0-9]")


# The number types is_valid_number tries (phonenumberutil._number_type_helper).
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
          "fixed_line", "mobile")


@lru_cache(maxsize=64)
def _national_route(region: str):
    """(country code, international prefix, national prefix pattern, {length: pattern}) for `region`; the pattern
    for a length is the alternation of every number type, in every region of the country code, that allows that
    length (None for a region the shortcut does not know)."""
    md = PhoneMetadata.metadata_for_region(region)
    if md is None:
        return None
    by_length: dict[int, list[str]] = {}
    any_length: list[str] = []
    for other in COUNTRY_CODE_TO_REGION_CODE.get(md.country_code, ()):
        omd = PhoneMetadata.metadata_for_region(other)
        if omd is None:
            return None
        for name in _TYPES:
            desc = getattr(omd, name)
            if desc is not None and desc.national_number_pattern:
                if not desc.possible_length:  # lengths not listed: the pattern alone decides
                    any_length.append(desc.national_number_pattern)
                for n in desc.possible_length:
                    by_length.setdefault(n, []).append(desc.national_number_pattern)
    patterns = {n: re.compile("|".join(f"(?:{p})" for p in ps + any_length)) for n, ps in by_length.items()}
    any_pattern = re.compile("|".join(f"(?:{p})" for p in any_length)) if any_length else None
    idd = re.compile(md.international_prefix) if md.international_prefix else None
    national = re.compile(md.national_prefix_for_parsing) if md.national_prefix_for_parsing else None
    return str(md.country_code), idd, national, patterns, any_pattern


def cannot_be_valid(candidate: str, region: str) -> bool:
    """True when parsing `candidate` for `region` can only give an invalid number.

    With no plus sign, letter or extension mark, phonenumbers reads the candidate's digits; unless they start with
    the region's international prefix, its country code or a national prefix (each of which it may strip), they
    are the national number, of the region's country code, and is_valid_number requires it to match (length and
    pattern) a number type of a region with that country code."""
    route = _national_route(region)
    if route is None or _NOT_PLAIN.search(candidate):
        return False
    if candidate.isascii():
        number = _NOT_ASCII_DIGIT.sub("", candidate)
    else:  # other scripts' digits, as phonenumbers normalizes them
        number = "".join(str(int(c)) for c in candidate if c.isdecimal())
    code, idd, national, patterns, any_pattern = route
    if number.startswith(code) or (idd is not None and idd.match(number)) or (national is not None and national.match(number)):
        return False
    pattern = patterns.get(len(number), any_pattern)
    return pattern is None or pattern.fullmatch(number) is None


class _GatedMatcher(PhoneNumberMatcher):
    """phonenumbers' matcher whose per-candidate parse is skipped where it cannot succeed, and memoized."""

    def __init__(self, text: str, region: str, leniency: int, memo: dict):
        super().__init__(text, region, leniency=leniency)
        self._memo = memo
        self.tried: list[tuple[str, int]] = []  # every (candidate, offset) the matcher asked about, in order

    def _parse_and_verify(self, candidate, offset):
        self.tried.append((candidate, offset))
        start = _START_CHAR.search(candidate)
        plus = start is not None and start.group() in "+\uFF0B"
        if nsn_digits(candidate) < digit_floor(self.preferred_region, plus):
            return None
        if not plus and cannot_be_valid(candidate, self.preferred_region):
            return None
        end = offset + len(candidate)
        # The verdict reads only the candidate, the characters on either side (a letter there rejects it) and the
        # region, which a leading plus makes irrelevant.
        key = (candidate, self.text[offset - 1] if offset else "", self.text[end : end + 1],
               "+" if plus else self.preferred_region)
        number = self._memo.get(key, _MISSING)
        if number is _MISSING:
            match = super()._parse_and_verify(candidate, offset)
            number = None if match is None else match.number
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = number
        return None if number is None else PhoneNumberMatch(offset, candidate, number)


class DigitWindowPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer (same regions, leniency, score and context words), run on the windows around
    digits with the gated, memoized matcher; offsets are shifted back into the text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._memo: dict = {}

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for lo, hi in digit_windows(text):
            window = text[lo:hi]
            digits = nsn_digits(window)
            # The candidates the matcher extracts from a window do not depend on the region, only on which of them
            # matched: once a region's matcher found nothing, the next region's would ask about the same candidates
            # in the same order. Those are checked directly; the matcher runs only when one of them verifies.
            tried: list[tuple[str, int]] | None = None
            for region in self.supported_regions:
                if digits < min(digit_floor(region, True), digit_floor(region, False)):
                    continue
                matcher = _GatedMatcher(window, region, self.leniency, self._memo)
                if tried is not None and not any(matcher._parse_and_verify(c, at) for c, at in tried):
                    continue
                matcher.tried = []
                matches = list(matcher)
                tried = matcher.tried if not matches else None
                for match in matches:
                    r = self._get_recognizer_result(match, text, region, nlp_artifacts)
                    r.start += lo
                    r.end += lo
                    results.append(r)
        return EntityRecognizer.remove_duplicates(results)
