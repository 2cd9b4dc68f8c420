"""Surrogates for the PII replacement tags in the text the training stages read.

cleaned_corpus replaces personal data with a tag of its type (``<PERSON>``, ``<ORGANIZATION>``, ``<DATE_TIME>``,
or ``<PERSON:1f3a9c0b2d4e5f60>`` in hash mode), and the curated shards keep it that way: they are what is stored and
audited. A model trained on those tags learns to put probability on ``<PERSON>`` where real text has a name, and
every text it is later used on has names, organisations and dates, not tags (on real documents a LoRA run on the
tagged text lowered held-out perplexity about half as much as the same run on the original text: benchmarks/README.md,
"Training on redacted text"). So the training stages read each tag filled with a surrogate of its type, the usual
pseudonymisation practice for training on redacted text: a made-up name, organisation, place, date, e-mail address,
phone number, ... drawn from the small lists and patterns below. `fill_with_spans` also says where each surrogate
stands: continued pretraining reads the surrogates but does not learn to predict them (training.packing), because
predicting made-up values cost an untrained domain 6-9% perplexity where reading them cost about 1%.

The surrogates are:
  - **never the original value**: the shard no longer holds it, and nothing here reads anything else;
  - **deterministic**: a tag's surrogate depends on the seed, its type and the text just before it (so a passage
    repeated in two documents is filled the same way in both, and the contamination check still sees it repeated);
    a hash-mode tag depends on its digest instead, so the same person keeps the same surrogate across documents;
  - **safe by construction where a format allows it**: e-mail addresses and URLs under the reserved example
    domains (RFC 2606), IP and MAC addresses from the documentation ranges (RFC 5737, RFC 7042), phone numbers in
    the 555-01xx fiction range, identity numbers in ranges that are never issued;
  - **clear of the canaries**: a surrogate holding a distinctive part of a configured canary is drawn again, so the
    canary leak check never mistakes a surrogate for a leak.

A tag of a type without surrogates here is left as it is (and counted); text without tags is returned unchanged.
The tokenizer stage reads the tags, not surrogates: a few hundred surrogate names repeated over a corpus would look
like domain terms to the vocabulary extension.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable

from llm_pipeline.evaluation.canaries import RUN, distinctive_parts, load_canaries
from llm_pipeline.evaluation.data import Notes

# A replacement tag as cleaned_corpus writes it: <PERSON> (type_tag mode) or <PERSON:1f3a9c0b2d4e5f60> (hash mode).
TAG = re.compile(r"<([A-Z][A-Z_]*[A-Z])(?::([0-9a-f]{16}))?>")
CONTEXT_CHARS = 48  # characters before a tag that pick its surrogate
MAX_DRAWS = 20  # draws before a tag whose every surrogate collides with a canary is left as it is

FIRST = """Aaron Abigail Adele Alan Alice Amara Andrea Anton Ava Beatrice Ben Bianca Bruno Carla Caleb Celia Chen Clara
Daniel Dario Dev Diana Elena Eli Emil Erin Farah Felix Fiona Gabriel Grace Hana Hugo Ian Ines Isaac Ivy Jade Jonas
Julia Kai Karin Kenji Lara Leo Lena Liam Lucia Malik Maren Mateo Maya Milo Mina Nadia Nathan Nina Noah Olga Omar
Paula Pedro Priya Quinn Rafael Rosa Ruth Sam Sara Simon Sofia Tariq Tess Theo Una Victor Vera Wendy Xavier Yara
Yusuf Zoe""".split()
LAST = """Abbott Adeyemi Alvarez Baker Banerjee Bauer Bennett Brooks Castillo Chandra Clarke Costa Dalton Delgado Dunn
Ellison Evans Farrow Fischer Fleming Garcia Gill Gordon Hale Hansen Hayes Holm Ibrahim Ito Jensen Joshi Kaur Keller
Kim Kowalski Larsen Lee Lopez Mahler Marsh Mendes Moreno Murphy Nakamura Nash Novak Okafor Olsen Ortega Park Patel
Perez Quinn Ramos Reed Rossi Saito Santos Schmidt Shah Silva Stone Sullivan Tan Torres Turner Varga Vogel Walsh
Weber Wong Yilmaz Young Zhang""".split()
ORG_STEMS = """Alder Amberly Bluefield Brightwater Cedarline Clearpath Copperleaf Crestmoor Driftwood Eastbrook Fairhaven
Fernhill Foxglove Glenrock Granite Greenway Harborview Highgate Ironbridge Juniper Kestrel Lakeshore Larkspur Meadowgate
Millbrook Northwind Oakridge Pinecrest Redstone Riverbend Silverline Southport Stonebridge Summit Thornfield Westbury
Willowdale""".split()
ORG_KINDS = """Systems Group Labs Partners Holdings Foundation Institute Council Association Technologies Consulting Media
Software Capital Industries Health Trust Collective""".split()
ORG_FORMS = ["{stem} {kind}", "{stem} {kind}", "{stem} {kind}, Inc.", "{stem} {kind} Ltd.", "{stem}", "{stem} & {last} LLP",
             "the {stem} {kind}", "University of {city}", "{city} City Council"]
# City -> its country: a "City, Country" surrogate must not teach a wrong fact.
CITY_COUNTRY = {
    "Aberdeen": "Scotland", "Adelaide": "Australia", "Antwerp": "Belgium", "Bergen": "Norway", "Bologna": "Italy",
    "Bordeaux": "France", "Brno": "Czechia", "Calgary": "Canada", "Cork": "Ireland", "Curitiba": "Brazil",
    "Dresden": "Germany", "Dunedin": "New Zealand", "Eindhoven": "the Netherlands", "Gdansk": "Poland",
    "Geneva": "Switzerland", "Graz": "Austria", "Halifax": "Canada", "Leeds": "England", "Lille": "France",
    "Lyon": "France", "Malmo": "Sweden", "Nagoya": "Japan", "Nantes": "France", "Osaka": "Japan", "Perth": "Australia",
    "Porto": "Portugal", "Salzburg": "Austria", "Seville": "Spain", "Tampere": "Finland", "Tucson": "Arizona",
    "Turku": "Finland", "Utrecht": "the Netherlands", "Valencia": "Spain", "Winnipeg": "Canada", "Zaragoza": "Spain",
}
CITIES = list(CITY_COUNTRY)
COUNTRIES = """Austria Belgium Canada Chile Denmark Estonia Finland Ghana Iceland Ireland Kenya Mexico Norway Portugal
Slovenia Sweden Uruguay""".split()
STREETS = """Maple Oak Cedar Birch Elm Willow Chestnut Hawthorn Orchard Mill River Station Church Market Harbor""".split()
STREET_KINDS = ["Street", "Road", "Avenue", "Lane", "Way", "Drive"]
NRP = """Austrian Belgian Canadian Chilean Danish Estonian Finnish Ghanaian Icelandic Irish Kenyan Mexican Norwegian
Portuguese Slovenian Swedish Uruguayan""".split()
MONTHS = "January February March April May June July August September October November December".split()
EXAMPLE_DOMAINS = ["example.com", "example.org", "example.net"]  # reserved for documentation (RFC 2606)
URL_WORDS = """about docs guide help news policy reports team terms updates blog support events people projects""".split()


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    """A German-format IBAN with correct check digits and a bank code no bank has (000 000 00)."""
    bban = "00000000" + _digits(rng, 10)
    numeric = "".join(str(int(c, 36)) for c in bban + "DE00")
    check = 98 - int(numeric) % 97
    raw = f"DE{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _nhs(rng: random.Random) -> str:
    """A 999-prefixed NHS number (the range kept for testing) with a valid mod-11 check digit."""
    while True:
        body = "999" + _digits(rng, 6)
        check = 11 - sum(int(d) * (10 - i) for i, d in enumerate(body)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return f"{body[:3]} {body[3:6]} {body[6:]}{check}"


def _person(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.55:
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    return rng.choice(FIRST) if roll < 0.85 else rng.choice(LAST)


def _organization(rng: random.Random) -> str:
    return rng.choice(ORG_FORMS).format(stem=rng.choice(ORG_STEMS), kind=rng.choice(ORG_KINDS), last=rng.choice(LAST),
                                        city=rng.choice(CITIES))


def _location(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(CITIES)
    if roll < 0.7:
        return rng.choice(COUNTRIES)
    if roll < 0.85:
        city = rng.choice(CITIES)
        return f"{city}, {CITY_COUNTRY[city]}"
    return f"{rng.randrange(1, 240)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}"


def _date(rng: random.Random) -> str:
    y, m, d = rng.randrange(1998, 2026), rng.randrange(1, 13), rng.randrange(1, 29)
    return rng.choice([f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1]} {y}", f"{y}-{m:02d}-{d:02d}",
                       f"{m:02d}/{d:02d}/{y}", f"{MONTHS[m - 1][:3]} {d}, {y}"])


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", first, f"{first}_{last}"])
    return f"{local}@{rng.choice(EXAMPLE_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    area, line = rng.randrange(201, 990), f"01{_digits(rng, 2)}"
    return rng.choice([f"({area}) 555-{line}", f"{area}-555-{line}", f"+1 {area} 555 {line}", f"555-{line}"])


def _url(rng: random.Random) -> str:
    path = "/".join(rng.sample(URL_WORDS, rng.randrange(0, 3)))
    return f"https://{rng.choice(['', 'www.', 'docs.'])}{rng.choice(EXAMPLE_DOMAINS)}/{path}".rstrip("/")


def _credit_card(rng: random.Random) -> str:
    body = "400000" + _digits(rng, 9)
    raw = body + _luhn_digit(body)
    return " ".join(raw[i : i + 4] for i in range(0, 16, 4))


SURROGATES = {
    "PERSON": _person,
    "ORGANIZATION": _organization,
    "LOCATION": _location,
    "NRP": lambda rng: rng.choice(NRP),
    "DATE_TIME": _date,
    "AGE": lambda rng: str(rng.randrange(19, 90)),
    "EMAIL_ADDRESS": _email,
    "PHONE_NUMBER": _phone,
    "URL": _url,
    "IP_ADDRESS": lambda rng: f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randrange(1, 255)}",
    "MAC_ADDRESS": lambda rng: f"00:00:5e:00:53:{rng.randrange(256):02x}",
    "CREDIT_CARD": _credit_card,
    "IBAN_CODE": _iban,
    "US_BANK_NUMBER": lambda rng: "00" + _digits(rng, rng.randrange(6, 10)),
    "CRYPTO": lambda rng: "bc1q" + "".join(rng.choice("023456789acdefghjklmnpqrstuvwxyz") for _ in range(38)),
    # Area numbers 900-999 with group 01-69 are neither an SSN nor an ITIN; ITINs have group 70-88.
    "US_SSN": lambda rng: f"9{_digits(rng, 2)}-{rng.randrange(1, 70):02d}-{_digits(rng, 4)}",
    "US_ITIN": lambda rng: f"9{_digits(rng, 2)}-{rng.randrange(70, 89)}-{_digits(rng, 4)}",
    "US_PASSPORT": lambda rng: "X" + _digits(rng, 8),
    "US_DRIVER_LICENSE": lambda rng: "X" + _digits(rng, 7),
    "UK_NHS": _nhs,
    "MEDICAL_LICENSE": lambda rng: "XX" + _digits(rng, 7),
}

class TagFiller:
    """Fills replacement tags with surrogates; `filled` and `unfilled` count tags per type over every call."""

    def __init__(self, seed: int = 0, avoid: Iterable[str] = (), min_part_chars: int = 6):
        self.seed = seed
        # What the canary check looks for in a text (evaluation.canaries.distinctive_parts).
        self.avoid = {p for a in avoid for p in distinctive_parts(a, min_part_chars)}
        self.filled: Counter[str] = Counter()
        self.unfilled: Counter[str] = Counter()  # tags of a type without surrogates, or no clear surrogate found
        self.documents = 0  # texts that had a tag filled

    def _clear(self, value: str) -> bool:
        if not self.avoid:
            return True
        low = value.lower()
        joined = "".join(RUN.findall(low))
        return not any(p in low or p in joined for p in self.avoid)

    def surrogate(self, entity: str, key: str) -> str | None:
        """The surrogate for a tag of `entity` picked by `key`; None when the type has none (or every draw collided
        with a canary)."""
        make = SURROGATES.get(entity)
        if make is None:
            return None
        digest = hashlib.blake2b(f"{self.seed}\x00{entity}\x00{key}".encode("utf-8"), digest_size=8).digest()
        rng = random.Random(int.from_bytes(digest, "big"))
        for _ in range(MAX_DRAWS):
            value = make(rng)
            if self._clear(value):
                return value
        return None

    def fill(self, text: str) -> str:
        """`text` with every tag of a known type replaced by a surrogate; a text without tags comes back as is."""
        return self.fill_with_spans(text)[0]

    def fill_with_spans(self, text: str) -> tuple[str, list[tuple[int, int]]]:
        """`fill`, and where each surrogate stands in the filled text ((start, end) character offsets)."""
        if "<" not in text:
            return text, []
        parts, spans, last, at = [], [], 0, 0
        for m in TAG.finditer(text):
            entity, digest = m.group(1), m.group(2)
            key = f"#{digest}" if digest else text[max(0, m.start() - CONTEXT_CHARS) : m.start()]
            value = self.surrogate(entity, key)
            if value is None:
                self.unfilled[entity] += 1
                continue
            at += m.start() - last
            parts += [text[last : m.start()], value]
            spans.append((at, at + len(value)))
            at += len(value)
            last = m.end()
            self.filled[entity] += 1
        if not spans:
            return text, []
        self.documents += 1
        parts.append(text[last:])
        return "".join(parts), spans

    def stats(self) -> dict:
        """For a stage's stats: tags filled per type, tags left per type, documents changed."""
        return {"filled": dict(sorted(self.filled.items())), "filled_total": sum(self.filled.values()),
                "unfilled": dict(sorted(self.unfilled.items())), "documents": self.documents}


def for_config(cfg) -> TagFiller | None:
    """The filler for a run's config, or None when the shards hold no tags to fill: PII redaction off, a mode
    that writes no tags (``redact`` removes the span, ``mask`` writes asterisks of no type), or
    ``training.fill_redaction_tags`` off. Surrogates avoid the parts of the configured canaries."""
    cc = cfg.cleaned_corpus
    if not cfg.training.fill_redaction_tags or not cc.pii or cc.pii_mode not in ("type_tag", "hash"):
        return None
    return TagFiller(seed=cfg.seed, avoid=canary_texts(cfg), min_part_chars=cfg.eval_report.canary_min_part_chars)


def canary_texts(cfg) -> list[str]:
    """The texts of the configured canaries ([] when there is no file or it cannot be read: the canary check itself
    reports that)."""
    name = cfg.eval_report.canaries_file
    canaries = load_canaries(cfg.resolve(name), Notes(), cfg.eval_report.canary_min_part_chars) if name else None
    return [c.text for c in canaries or []]
