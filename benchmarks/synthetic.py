"""Synthetic corpora for the curation benchmarks: labelled PII documents and a corpus with planted near duplicates.

Everything is generated from our own templates and word lists with a seeded RNG, so a run is reproducible and
needs no download.

``pii_documents(n, seed)`` returns documents of ~1.2 KB: domain-flavoured prose with PII sentences mixed in, each
PII value recorded with its entity type and exact character span (``text[start:end] == value``). Formats vary the
way real data does: phones as ``(212) 555-0147``, ``212-555-0147``, ``212.555.0147``, ``+1 415 555 2671``,
``+44 20 7946 0958``; cards with spaces, dashes or none (Luhn-valid Visa, Mastercard, Amex); IBANs compact or in
groups of four (valid check digits, several countries); IPv4 and IPv6; SSNs with dashes; names common and rare,
in prose and in form lines; cities and countries.

``dedup_corpus(n, seed, dup_fraction)`` returns documents of ~200 words drawn from a Zipf-like vocabulary, a share
of them near copies of an earlier document (a few words changed, a sentence added or removed), and the set of
planted duplicate pairs for scoring.

    python benchmarks/synthetic.py pii 3        # print three labelled documents
"""

from __future__ import annotations

import random
import string
import sys
from dataclasses import dataclass, field

FIRST = ["James", "Maria", "Robert", "Linda", "Michael", "Sarah", "David", "Emily", "Daniel", "Laura", "Thomas",
         "Anna", "Kevin", "Rachel", "Brian", "Olivia", "Ahmed", "Priya", "Wei", "Fatima", "Carlos", "Ingrid",
         "Kwame", "Yuki", "Siobhan", "Dmitri", "Leontyne", "Odalys", "Thaddeus", "Marisol"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Martinez", "Anderson", "Taylor",
        "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Nguyen", "Patel", "Kowalski", "O'Brien",
        "Okafor", "Tanaka", "Lindqvist", "Harrowgate", "Quennell", "Abernathy", "Castellanos", "Fitzgerald"]
CITIES = ["Chicago", "Boston", "Seattle", "Denver", "London", "Paris", "Berlin", "Madrid", "Toronto", "Sydney",
          "Houston", "Atlanta", "Dublin", "Vienna", "Munich", "Phoenix", "Portland", "Miami", "Rome", "Tokyo"]
COUNTRIES = ["Germany", "Canada", "France", "Spain", "Italy", "Japan", "Brazil", "Mexico", "India", "Ireland",
             "Australia", "Sweden", "Norway", "Poland", "Kenya", "Egypt"]
DOMAINS = ["example.com", "example.org", "acme-corp.co.uk", "mail.example.net", "clinic.example.com", "lawfirm.io"]
FILLER = [
    "The parties agreed to review the terms of the agreement at the next quarterly meeting.",
    "All invoices must be settled within thirty days of the date on which they are issued.",
    "The committee noted that the revised procedure had reduced waiting times considerably.",
    "Further details about the schedule will be circulated to every member of the team.",
    "The report concludes that the current approach is sound but needs better monitoring.",
    "Staff should record each change in the shared log before the end of the working day.",
    "The tenant is responsible for minor repairs and for keeping the property in good order.",
    "Dosage should be adjusted gradually, and any side effects should be reported promptly.",
    "The software update fixes several known issues and improves the speed of the importer.",
    "No further action is required unless the situation changes in the coming weeks.",
    "The board approved the budget after a short discussion of the projected costs.",
    "Please keep this notice for your records and bring it with you to the appointment.",
]


@dataclass
class LabelledDoc:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, entity)


# ---------------------------------------------------------------- value generators
def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit to the right, so doubling starts at i=0
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


def credit_card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "amex"])
    if kind == "amex":
        num = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
        groups = [num[:4], num[4:10], num[10:]]
    else:
        num = _luhn_complete("4" if kind == "visa" else rng.choice(["51", "52", "53", "54", "55"]), 16, rng)
        groups = [num[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


_IBAN_LAYOUT = {"DE": 18, "GB": None, "FR": 23, "NL": None, "ES": 20, "IT": None}


def iban(rng: random.Random) -> str:
    country = rng.choice(list(_IBAN_LAYOUT))
    if country == "GB":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(10))
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(22))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(_IBAN_LAYOUT[country]))
    # ISO 13616 check digits: move country + "00" to the end, letters to numbers, 98 - (n mod 97).
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def phone(rng: random.Random) -> str:
    a, x, n = rng.randint(201, 989), rng.randint(200, 989), rng.randint(0, 9999)
    style = rng.randrange(5)
    if style == 0:
        return f"({a}) {x}-{n:04d}"
    if style == 1:
        return f"{a}-{x}-{n:04d}"
    if style == 2:
        return f"{a}.{x}.{n:04d}"
    if style == 3:
        return f"+1 {a} {x} {n:04d}"
    return f"+44 20 {rng.randint(7000, 8999)} {n:04d}"


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8))


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def email(rng: random.Random, name: str | None = None) -> str:
    first, last = (name or person(rng)).lower().replace("'", "").split()
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}"])
    return f"{local}@{rng.choice(DOMAINS)}"


# ---------------------------------------------------------------- templates: "{X}" slots name an entity
TEMPLATES = [
    ("The contract was signed by {PERSON} on behalf of the company.", ),
    ("{PERSON} reviewed the file and approved the request.", ),
    ("Patient: {PERSON}", ),
    ("Dr. {PERSON} will see the patient again next week.", ),
    ("For questions, contact {PERSON} at {EMAIL_ADDRESS}.", ),
    ("Please write to {EMAIL_ADDRESS} to request the forms.", ),
    ("Call the office on {PHONE_NUMBER} during business hours.", ),
    ("Her mobile number is {PHONE_NUMBER} and she answers it in the evening.", ),
    ("The card {CREDIT_CARD} was charged twice for the same order.", ),
    ("Refund the amount to card number {CREDIT_CARD} please.", ),
    ("Transfer the deposit to IBAN {IBAN_CODE} before Friday.", ),
    ("The account {IBAN_CODE} received the payment yesterday.", ),
    ("The server at {IP_ADDRESS} refused the connection.", ),
    ("Requests from {IP_ADDRESS} were blocked by the firewall.", ),
    ("His social security number is {US_SSN} according to the form.", ),
    ("Employee SSN: {US_SSN} must stay private.", ),
    ("The hearing took place in {CITY} last spring.", ),
    ("She moved from {COUNTRY} to {CITY} in 2019.", ),
    ("Our new branch in {CITY} opens in March.", ),
]
SLOT_ENTITY = {"CITY": "LOCATION", "COUNTRY": "LOCATION"}


def _fill(slot: str, rng: random.Random) -> str:
    return {
        "PERSON": person, "EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "CREDIT_CARD": credit_card,
        "IBAN_CODE": iban, "IP_ADDRESS": ip_address, "US_SSN": ssn,
        "CITY": lambda r: r.choice(CITIES), "COUNTRY": lambda r: r.choice(COUNTRIES),
    }[slot](rng)


def pii_document(rng: random.Random, target_chars: int = 1200, pii_sentences: int = 4) -> LabelledDoc:
    """One labelled document: filler paragraphs with `pii_sentences` templated PII sentences at random places."""
    sentences: list[str | tuple] = []
    while sum(len(s) + 1 for s in sentences if isinstance(s, str)) < target_chars - 90 * pii_sentences:
        sentences.append(rng.choice(FILLER))
    for _ in range(pii_sentences):
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(TEMPLATES))
    doc = LabelledDoc("")
    parts: list[str] = []
    pos = 0
    for k, s in enumerate(sentences):
        sep = "\n" if (k % 4 == 3 or (isinstance(s, tuple) and s[0].startswith("Patient:"))) else " "
        if isinstance(s, tuple):
            template = s[0]
            chunks = template.replace("}", "{").split("{")  # even: literal text, odd: slot names
            for j, chunk in enumerate(chunks):
                if j % 2 == 0:
                    parts.append(chunk)
                    pos += len(chunk)
                else:
                    value = _fill(chunk, rng)
                    doc.spans.append((pos, pos + len(value), SLOT_ENTITY.get(chunk, chunk)))
                    parts.append(value)
                    pos += len(value)
        else:
            parts.append(s)
            pos += len(s)
        parts.append(sep)
        pos += len(sep)
    doc.text = "".join(parts)
    return doc


def pii_documents(n: int, seed: int = 0, target_chars: int = 1200) -> list[LabelledDoc]:
    rng = random.Random(seed)
    return [pii_document(rng, target_chars) for _ in range(n)]


# ---------------------------------------------------------------- near-duplicate corpus
def _vocab(rng: random.Random, size: int) -> list[str]:
    letters = string.ascii_lowercase
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def dedup_corpus(n: int, seed: int = 0, dup_fraction: float = 0.2, words: int = 200, edits: int = 6) -> tuple[list[str], set[tuple[int, int]]]:
    """`n` documents, about `dup_fraction` of them near copies of an earlier one; the planted (i, j) pairs, i < j."""
    rng = random.Random(seed)
    vocab = _vocab(rng, 30_000)
    weights = [1.0 / (r + 1) ** 1.05 for r in range(len(vocab))]  # Zipf-like: common words recur across documents
    docs: list[str] = []
    pairs: set[tuple[int, int]] = set()
    originals: list[int] = []
    for i in range(n):
        if originals and rng.random() < dup_fraction:
            src = rng.choice(originals)
            w = docs[src].split()
            for _ in range(edits):  # substitutions, an insertion and a deletion: the edits of a re-posted page
                w[rng.randrange(len(w))] = rng.choice(vocab)
            w.insert(rng.randrange(len(w)), rng.choice(vocab))
            del w[rng.randrange(len(w))]
            docs.append(" ".join(w))
            pairs.add((src, i))
        else:
            docs.append(" ".join(rng.choices(vocab, weights=weights, k=words)))
            originals.append(i)
    return docs, pairs


def cluster_pairs(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """All pairs within the clusters the planted pairs form (copies of one original are duplicates of each other)."""
    groups: dict[int, set[int]] = {}
    for a, b in pairs:
        groups.setdefault(a, {a}).add(b)
    out = set()
    for members in groups.values():
        m = sorted(members)
        out.update((m[x], m[y]) for x in range(len(m)) for y in range(x + 1, len(m)))
    return out


# ---------------------------------------------------------------- a mixed corpus for the end-to-end benchmark
_NOUNS = ("tenant landlord contract court judge patient doctor dose treatment clinic software release module user "
          "server report committee budget invoice payment notice appeal hearing record schedule policy update team "
          "office manager request decision result study trial symptom device network file system order").split()
_VERBS = ("reviews signs approves rejects updates records sends receives checks explains requires changes delays "
          "improves reports confirms describes measures supports replaces").split()
_ADJS = ("new final signed late formal annual revised clinical stable secure minor major careful detailed short "
         "written shared local monthly previous").split()
_PREPS = ("before after during within under about for with against").split()


def _sentence(rng: random.Random) -> str:
    shape = rng.randrange(3)
    n1, n2, n3 = rng.choice(_NOUNS), rng.choice(_NOUNS), rng.choice(_NOUNS)
    if shape == 0:
        s = f"the {rng.choice(_ADJS)} {n1} {rng.choice(_VERBS)} the {n2} {rng.choice(_PREPS)} the {rng.choice(_ADJS)} {n3}"
    elif shape == 1:
        s = f"every {n1} {rng.choice(_VERBS)} a {rng.choice(_ADJS)} {n2}, and the {n3} {rng.choice(_VERBS)} it"
    else:
        s = f"a {n1} that {rng.choice(_VERBS)} the {n2} also {rng.choice(_VERBS)} the {rng.choice(_ADJS)} {n3} {rng.choice(_PREPS)} {rng.randint(2, 90)} days"
    return s[0].upper() + s[1:] + "."


def curation_corpus(n: int, seed: int = 0, dup_fraction: float = 0.15, pii_fraction: float = 0.3, target_chars: int = 1200) -> list[str]:
    """Prose documents of ~`target_chars`: paragraphs of varied sentences, a share with PII sentences, a share near
    copies of earlier documents (one sentence changed), and a few fragments the filters should drop."""
    rng = random.Random(seed)
    docs: list[str] = []
    for i in range(n):
        if docs and rng.random() < dup_fraction:
            sents = docs[rng.randrange(len(docs))].split(". ")
            sents[rng.randrange(len(sents))] = _sentence(rng).rstrip(".")
            docs.append(". ".join(sents))
            continue
        if rng.random() < 0.03:
            docs.append(rng.choice(["Click here.", "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8, "Menu | Home | About"]))
            continue
        paras, size = [], 0
        while size < target_chars:
            para = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
            paras.append(para)
            size += len(para) + 2
        if rng.random() < pii_fraction:
            paras.insert(rng.randrange(len(paras) + 1), pii_document(rng, target_chars=0, pii_sentences=2).text.strip())
        docs.append("\n\n".join(paras))
    return docs


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    if kind == "pii":
        for d in pii_documents(count):
            print(d.text, "\n", [(d.text[s:e], t) for s, e, t in d.spans], "\n")
    else:
        docs, planted = dedup_corpus(count)
        print(len(docs), "documents,", len(planted), "planted pairs")
