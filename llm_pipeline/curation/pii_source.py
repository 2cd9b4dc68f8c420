"""Personal data in source paths: folder and file names such as ``notes/jane_doe_discharge.txt``.

A path is not prose: its words are joined by ``_``, ``.`` or ``-``, usually in lower case, where neither spaCy's NER
nor the name patterns see a name. Reading every part as capitalized words makes NER find names everywhere
("jsonl_bad_bytes_after_64k.jsonl" read as "Jsonl Bad Bytes After 64k" gave ``<PERSON>_after_64k.jsonl``), so:

- the **pattern recognizers** (e-mail, phone, card, ...) read each part as written;
- **NER** reads only runs of two or more *name-like segments* (letters only, not a stop word, not a word that file
  names are made of: formats, data and code vocabulary, ``FILE_WORDS``), capitalized, and only a PERSON of two
  words or more found there counts ("jane_doe" and "thaddeus_quillfeather-vromm_discharge" yes; "bad_bytes",
  "train_split_final" never reach NER).

An extension and a record suffix ("report.pdf", "rows.jsonl#12", "notes.txt:40") stay as they are.
"""

from __future__ import annotations

import re

from spacy.lang.en.stop_words import STOP_WORDS

# A source's extension and record suffix ("report.pdf", "rows.jsonl#12", "notes.txt:40"), kept as they are.
SOURCE_SUFFIX = re.compile(r"(?:\.[A-Za-z0-9]{1,5})?(?:[#:]L?\d+)?$")
# A segment of a file or folder name: a letter run (with inner apostrophes: "o'brien") or anything else between
# separators (a hyphen separates too: "dana-reyes", and a double-barrelled name is two segments).
_SEGMENT = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*(?![\w@])|[^\s_.+~,()\[\]-]+")
_NAME_LIKE = re.compile(r"[^\W\d_]{2,}(?:['’][^\W\d_]+)*")
# What file and folder names are made of besides names: formats, and the words of data, code and office files.
# A segment among these is never read as part of a name.
FILE_WORDS = frozenset("""
    json jsonl csv tsv txt md rst pdf doc docx xls xlsx ppt pptx html htm xml yaml yml toml ini cfg conf log logs
    parquet arrow feather gz zip tar bz zst xz eml msg png jpg jpeg gif svg mp mov wav py ipynb sh js ts
    data dataset datasets file files folder dir tmp temp cache raw clean cleaned processed out output outputs input
    inputs test tests testing fixture fixtures sample samples example examples demo spec specs bench benchmark
    train training eval evaluation valid validation dev split splits shard shards part parts chunk chunks batch
    batches row rows record records line lines page pages item items entry entries index idx
    bad good broken invalid valid empty null none missing corrupt truncated large small big tiny huge long short
    bytes byte bits unicode utf ascii latin encoding encoded decoded binary text texts
    first last final draft copy backup old new latest current prev previous next version rev update updated
    report reports summary notes note minutes memo letter invoice invoices receipt statement contract contracts
    agreement policy policies form forms scan scans export exports import imports dump dumps archive archives
    model models weights checkpoint checkpoints adapter tokenizer vocab embeddings features labels results metrics
    config settings readme changelog license notice docs documentation manual guide guides tutorial tutorials
    getting started intro introduction overview quickstart setup install installation usage reference api faq
    howto chapter section appendix table figure meeting agenda board annual quarterly monthly weekly daily
    user users client clients customer customers patient patients employee employees staff team admin
    public private internal shared personal misc other others all any each
    after before with without from into over under between within per
    """.split())


def name_runs(stem: str) -> list[tuple[int, int]]:
    """(start, end) of each run of two or more name-like segments in `stem` (a file or folder name, no extension),
    with only separators between them."""
    runs: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []
    last_end = 0
    for m in _SEGMENT.finditer(stem):
        word = m.group()
        name_like = (_NAME_LIKE.fullmatch(word) is not None and word.lower() not in STOP_WORDS
                     and word.lower() not in FILE_WORDS and any(c in "aeiouyAEIOUY" or ord(c) > 127 for c in word))
        if name_like and (not current or _only_separators(stem[last_end : m.start()])):
            current.append(m.span())
        else:
            if len(current) >= 2:
                runs.append((current[0][0], current[-1][1]))
            current = [m.span()] if name_like else []
        last_end = m.end()
    if len(current) >= 2:
        runs.append((current[0][0], current[-1][1]))
    return runs


def _only_separators(between: str) -> bool:
    # A name's parts are joined by one kind of separator, not by " - " (a title's parts) nor ", " ("smith, j").
    return bool(between) and all(c in " _.+~-" for c in between) and " - " not in between


def titled(text: str, hyphens: bool) -> str:
    """`text` with separators as spaces and each word capitalized ("jane_doe" -> "Jane Doe", "DANA_REYES" -> "Dana
    Reyes"), the same length (offsets hold); with `hyphens`, a hyphen stays one ("Quillfeather-Vromm"), else it is a
    space too ("dana-reyes" -> "Dana Reyes"). NER finds some names only one way, so both are read."""
    spaced = re.sub(r"[_.+~-]" if not hyphens else r"[_.+~]", " ", text)
    out = re.sub(r"[^\W\d_]+", lambda m: m.group()[:1].upper() + m.group()[1:].lower(), spaced)
    return out if len(out) == len(text) else spaced


def redact_source(redactor, source: str) -> str:
    """`source` with the personal data in its folder and file names replaced (see the module docstring)."""
    from llm_pipeline.curation.pii import Span

    parts = re.split(r"([/\\])", source)
    names = [i for i, part in enumerate(parts) if part not in ("/", "\\") and part]
    stems = [SOURCE_SUFFIX.sub("", parts[i]) for i in names]
    runs = [(k, a, b, hyphens) for k, stem in enumerate(stems) for a, b in name_runs(stem) for hyphens in (True, False)]
    found = redactor.analyze_batch(stems, ner=False) if stems else []
    readings = [titled(stems[k][a:b], hyphens) for k, a, b, hyphens in runs]
    for (k, a, _, _), run, spans in zip(runs, readings, redactor.analyze_batch(readings) if runs else []):
        found[k] += [Span(a + r.start, a + r.end, r.entity_type, r.score) for r in spans
                     if r.entity_type == "PERSON" and re.search(r"\w[ -]+\w", run[r.start : r.end])]
    for k, i in enumerate(names):
        if found[k]:
            new_stem, _ = redactor.redact_text(stems[k], found[k])
            parts[i] = new_stem + parts[i][len(stems[k]) :]
    return "".join(parts)
