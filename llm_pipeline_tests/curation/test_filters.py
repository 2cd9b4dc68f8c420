"""Quality filters: each rule as a table of (document, expected verdict)."""

import pytest

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.filters import (
    BlockedWords,
    C4Lines,
    Doc,
    GopherQuality,
    GopherRepetition,
    LanguageId,
    LineShape,
    WordCount,
    build_filters,
    first_failure,
)

PROSE = (
    "The agreement sets out the duties of the tenant and the landlord.\n"
    "Rent is due on the first day of each month and is paid to the landlord by bank transfer.\n"
    "Either party may end the lease with two months of written notice to the other party.\n"
    "Repairs to the structure of the building remain the responsibility of the landlord."
)

SENTENCE = (
    "Judges review every appeal carefully before deciding whether lower courts applied statutes correctly under "
    "existing precedent rules today."
)


def verdict(f, text):
    out = f.filter(Doc(text))
    return out if out is True else out[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("one two three", "too_few_words"),
        ("one two three four five", True),
        ("word " * 11, "too_many_words"),
        ("   ", "too_few_words"),
    ],
)
def test_word_count(text, expected):
    assert verdict(WordCount(min_words=4, max_words=10), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (PROSE, True),
        ("\n\n".join(["Click here to subscribe to our newsletter today."] * 5 + [PROSE]), "dup_para_frac"),
        ("\n".join(["Home", "About", "Home", "About", "Home", PROSE]), "dup_line_frac"),
        ("\n\n".join([PROSE, PROSE] + [f"Short note {n}." for n in ("one", "two", "three", "four")]), "dup_para_char_frac"),
        (PROSE + " " + "the tenant the tenant the tenant the tenant the tenant the tenant the tenant", "top_2_gram"),
        (PROSE + " " + SENTENCE + " " + SENTENCE, "duplicated_5_n_grams"),
    ],
)
def test_gopher_repetition(text, expected):
    assert verdict(GopherRepetition(), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (PROSE, True),
        ("a b c d e f g h i j k l m n o p the and of to", "gopher_mean_word_length"),
        ("internationalization telecommunications the and" + " incomprehensibilities" * 10, "gopher_mean_word_length"),
        (PROSE + " #tag #law #rent #lease #home #flat #city #news #deal #money" * 3, "gopher_symbol_word_ratio"),
        ("\n".join(f"- item number {i} of the list and more" for i in range(10)), "gopher_bullet_lines"),
        ("\n".join([f"The story of the day continues {i}..." for i in range(5)] + [PROSE]), "gopher_ellipsis_lines"),
        ("2024 1999 3000 4500 1234 5678 9012 3456 7890 1111 the and of rent", "gopher_alpha_words"),
        ("Since upgrading to 4.9.1, the server at 198.51.100.214 fails with a timeout and the logs show it.", True),
        ("| name | type | the description |\n|---|---|---|\n| `dry_run` | `bool` | check but change nothing, with care |", True),
        ("Lorem cats sing loudly while dogs dance quickly around gardens nightly", "gopher_stop_words"),
    ],
)
def test_gopher_quality(text, expected):
    assert verdict(GopherQuality(), text) == expected


@pytest.mark.parametrize(
    "text, kwargs, expected_text, expected_reason",
    [
        (PROSE, {}, PROSE, None),
        ("Lorem ipsum dolor sit amet.", {}, "Lorem ipsum dolor sit amet.", "lorem_ipsum"),
        ("Real text here.\nPlease enable JavaScript to view.\nMore text.", {}, "Real text here.\nMore text.", None),
        ("Body text.\nRead our Privacy Policy.", {}, "Body text.", None),
        ("Please enable javascript.", {}, "", "c4_no_lines_left"),
        ("A heading\nA sentence.", {"terminal_punct": True}, "A sentence.", None),
        ("int f() { return 1; }", {}, "int f() { return 1; }", None),
        ("int f() { return 1; }", {"curly_braces": True}, "int f() { return 1; }", "curly_bracket"),
    ],
)
def test_c4_lines(text, kwargs, expected_text, expected_reason):
    new_text, reason = C4Lines(**kwargs).apply(text)
    assert reason == expected_reason
    if reason is None or reason == "c4_no_lines_left":
        assert new_text == expected_text


@pytest.mark.parametrize(
    "text, expected",
    [("This is a clean sentence.", True), ("This has BadWord inside.", "blocked_word"), ("badwords is different", True)],
)
def test_blocked_words(text, expected):
    assert verdict(BlockedWords(["badword"]), text) == expected


def test_build_filters_follows_switches():
    off = CleanedCorpusConfig(gopher_quality=False, gopher_repetition=False, language_id=False, line_shape=False)
    assert [f.name for f in build_filters(off)] == ["word_count"]
    names = [f.name for f in build_filters(CleanedCorpusConfig(blocked_words=["x"]), ["en"])]
    assert names == ["word_count", "language_id", "blocked_words", "gopher_repetition", "line_shape", "gopher_quality"]
    web = [f.name for f in build_filters(CleanedCorpusConfig(quality_profile="web"), ["en"])]
    assert web == ["word_count", "language_id", "gopher_repetition", "gopher_quality"]


MENU = "\n".join(["Home", "World", "Business", "Markets", "Opinion", "Sign In", "Subscribe", "Contact us", "Careers", "Help", PROSE])
LISTING = "\n".join(f"Smith v. Jones Holdings Corporation, No. 23-{i}" for i in range(12))


@pytest.mark.parametrize(
    "text, expected",
    [
        (PROSE, True),
        (MENU, "short_lines"),  # 10 of 14 lines are menu entries
        (LISTING, "few_punctuated_lines"),  # long lines, none a sentence
        ("Home\nNews\nSports\nAbout", True),  # under MIN_LINES: left to the other rules
        # Documentation: headings and code lines among sentences stay.
        ("Installation\n" + PROSE + "\npip install tool\nUsage\n" + PROSE, True),
    ],
)
def test_line_shape(text, expected):
    assert verdict(LineShape(), text) == expected


# A leaflet that restates its key points as section headings: a third of its 5-grams repeat. Gopher drops it; the
# domain profile keeps it, and still drops a page that is mostly one passage pasted again and again.
LEAFLET = "Key points\n" + "\n".join(
    [SENTENCE, PROSE.split("\n")[1]] + [SENTENCE + " " + PROSE.split("\n")[0], PROSE.split("\n")[1] + " " + PROSE]
)
QA = "\n".join(line for answer in PROSE.split("\n")[:3] for line in ("What is (are) glaucoma ?", answer))
SPAM = "\n\n".join([SENTENCE + " Call now for a free quote today."] * 3)


@pytest.mark.parametrize(
    "profile, text, expected",
    [
        ("web", LEAFLET, "duplicated_5_n_grams"),
        ("domain", LEAFLET, True),
        ("domain", SPAM, "dup_para_char_frac"),
        ("domain", SPAM.replace("\n\n", " "), "duplicated_5_n_grams"),
        ("web", QA, "dup_line_frac"),
        ("domain", QA, True),  # the same question line over different answers
    ],
)
def test_repetition_by_profile(profile, text, expected):
    cfg = CleanedCorpusConfig(quality_profile=profile, language_id=False)
    assert first_failure(Doc(text), build_filters(cfg)) == (None if expected is True else expected)


def test_bullet_sentences_are_not_a_link_list():
    minutes = "\n".join(f"- Mara: we agree to review the proposal {i} with the team before the next meeting." for i in range(10))
    links = "\n".join(f"- item number {i} of the list" for i in range(10))
    assert verdict(GopherQuality(), minutes) == "gopher_bullet_lines"  # Gopher counts every bullet
    assert verdict(GopherQuality(bullet_max_words=8), minutes) is True
    assert verdict(GopherQuality(bullet_max_words=8), links) == "gopher_bullet_lines"


FRENCH = "Le locataire paie le loyer le premier jour de chaque mois par virement bancaire au propriétaire."


@pytest.mark.parametrize(
    "text, allowed, expected, language",
    [
        (PROSE, ["en"], True, "en"),
        (FRENCH, ["en"], "language_not_allowed", "fr"),
        (FRENCH, ["en", "fr"], True, "fr"),
    ],
)
def test_language_id_filter_records_the_language(text, allowed, expected, language):
    doc = Doc(text)
    out = LanguageId(allowed, min_score=0.5).filter(doc)
    assert (out if out is True else out[1]) == expected
    assert doc.language == language


def test_stop_word_rule_skips_short_texts():
    faq = "Can I drink alcohol while taking amoxicillin? Small amounts are usually fine, but ask your pharmacist."
    assert GopherQuality(stop_words_min_words=50).filter(Doc(faq)) is True
    assert verdict(GopherQuality(stop_words_min_words=0), faq) == "gopher_stop_words"


def test_stop_word_rule_applies_to_english_only():
    assert verdict(GopherQuality(), FRENCH) == "gopher_stop_words"  # language unknown: treated as English
    doc = Doc(FRENCH, language="fr")
    assert GopherQuality().filter(doc) is True


def test_first_failure_names_the_first_rule():
    filters = build_filters(CleanedCorpusConfig(min_words=8))
    assert first_failure(Doc(PROSE), filters) is None
    assert first_failure(Doc("too short"), filters) == "too_few_words"


def _reference_ngram_rules(words, top_ngrams, dup_ngrams):
    """The n-gram rules written out plainly, string by string and n by n, to check the fast path against."""
    from collections import Counter

    total = sum(len(w) for w in words) or 1
    for n, limit in top_ngrams:
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            break
        gram, count = Counter(grams).most_common(1)[0]
        if count > 1 and len(gram.replace(" ", "")) * count / total > limit:
            return f"top_{n}_gram"
    for n, limit in dup_ngrams:
        seen, covered = set(), [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen:
                covered[i : i + n] = [True] * n
            seen.add(gram)
        if sum(len(w) for w, c in zip(words, covered) if c) / total > limit:
            return f"duplicated_{n}_n_grams"
    return True


@pytest.mark.parametrize("profile", ["web", "domain", "unordered"])
def test_ngram_rules_give_the_plain_rules_verdicts(profile):
    """Tuples for strings, covered characters from prefix sums and the early stop (a repeated m-gram is made of
    repeated n-grams for n < m) change no verdict: random texts with pasted runs of every length, at every share."""
    import random

    from llm_pipeline.curation.filters import DOMAIN_DUP_NGRAMS, DOMAIN_TOP_NGRAMS

    rules = {"web": (GopherRepetition.TOP_NGRAMS, GopherRepetition.DUP_NGRAMS),
             "domain": (DOMAIN_TOP_NGRAMS, DOMAIN_DUP_NGRAMS),
             # a later rule with a shorter n may not be skipped
             "unordered": (((3, 0.5),), ((8, 0.30), (5, 0.35), (6, 0.05)))}[profile]
    rng = random.Random(7)
    vocab = [f"w{i}" + "x" * (i % 7) for i in range(60)]
    seen_verdicts = set()
    for _ in range(600):
        words = [rng.choice(vocab[: rng.randint(3, 60)]) for _ in range(rng.randint(0, 120))]
        for _ in range(rng.randint(0, 4)):  # paste an earlier run of words later on
            if len(words) > 2:
                i = rng.randrange(len(words) - 1)
                run = words[i : i + rng.randint(2, 14)]
                j = rng.randrange(len(words) + 1)
                words[j:j] = run * rng.randint(1, 3)
        text = " ".join(words)
        expected = _reference_ngram_rules([w.lower() for w in Doc(text).words], *rules)
        got = GopherRepetition(*rules, count_rules=False).filter(Doc(text))
        assert (got if got is True else got[1]) == expected, text
        seen_verdicts.add(expected)
    assert len(seen_verdicts) >= 4  # the texts reach several rules, not only "keep"
