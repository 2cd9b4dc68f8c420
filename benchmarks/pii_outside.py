"""PII on outside labelled data: recall, precision and leak rate per entity type, ours against Presidio's defaults.

Two public sets, kept outside this repository:

- **main**: Microsoft presidio-research's ``data/synth_dataset_v2.json`` (1,500 short documents from sentence
  templates, 17 entity types with character spans: names, street addresses, cities and countries, organisations,
  cards, phones, e-mails, IBANs, SSNs, IPs, dates, ages, titles, ...). It is not held out: several of our patterns
  (honorifics, house numbers and postal codes next to a place, military addresses, age phrasings) were written
  while reading what leaked on it, so its figures flatter us on those shapes.
- **held-out**: Nannigalaxy/PII-synthetic_dataset's ``dataset/pii_syn_nano_en.json`` (MIT; 149 short documents,
  values and labels without offsets: names, e-mails, SSNs, organisations, passwords, account and ID numbers of
  several countries, ...). Nothing here was written or tuned while reading it.

    git clone --depth 1 https://github.com/microsoft/presidio-research /tmp/presidio-research
    git clone --depth 1 https://github.com/Nannigalaxy/PII-synthetic_dataset /tmp/pii-synthetic
    .venv/bin/python benchmarks/pii_outside.py /tmp/presidio-research/data/synth_dataset_v2.json
    .venv/bin/python benchmarks/pii_outside.py /tmp/pii-synthetic/dataset/pii_syn_nano_en.json --out benchmarks/out/pii_heldout.json

Two sides on the same documents in the same run, taking turns batch by batch so a change in the machine's load
falls on both:

- **ours**: ``PiiRedactor`` with the ``cleaned_corpus`` defaults (entity list, threshold, passes, type tags), in one
  process (``pii_processes: 1``), batches of 256;
- **presidio**: ``AnalyzerEngine().analyze(text, language="en")`` with its defaults (every entity it supports,
  score threshold 0) and ``AnonymizerEngine().anonymize`` with its defaults (``<ENTITY_TYPE>``), one document at a
  time, on the spaCy model we ship (a bare ``AnalyzerEngine()`` would download ``en_core_web_lg``).

Scores, per labelled entity type:

- **recall**: share of labelled spans that some finding (of any type: a redaction is a redaction) overlaps, from
  the first analysis pass;
- **leak**: share of labelled spans whose text survives verbatim in the redacted output (the figure a user cares
  about: what a model trained on the output can learn);
- **precision**, per found entity type: share of findings that overlap some labelled span.

Types the set labels but nobody claims to find (TITLE, AGE, ZIP_CODE, ...) count in the totals: they are personal
data a user would expect gone. "structured" is cards, phones, e-mails, IBANs, SSNs and IPs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # tldextract's built-in list, no download

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_pipeline.config import CleanedCorpusConfig  # noqa: E402
from llm_pipeline.curation.pii import PiiRedactor, _resolve_overlaps  # noqa: E402

STRUCTURED = ("CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


# Labels of the held-out set (Nannigalaxy/PII-synthetic_dataset) written the way the main set writes them.
LABELS = {"EMAIL": "EMAIL_ADDRESS", "PHONE": "PHONE_NUMBER", "SSN": "US_SSN", "IBAN": "IBAN_CODE", "ORG": "ORGANIZATION"}


def load(path: Path, limit: int | None) -> list[dict]:
    """[{text, spans: [(start, end, type, value)]}] from presidio-research's JSON format (``full_text`` and
    ``spans``), or from the held-out set's (``text`` and ``NER``: values and labels without offsets; a value's
    first occurrence in its text is its span, and a value that is not in its text is left out)."""
    rows = json.loads(path.read_text(encoding="utf-8"))[:limit]
    if rows and "full_text" in rows[0]:
        return [{"text": r["full_text"],
                 "spans": [(s["start_position"], s["end_position"], s["entity_type"], s["entity_value"]) for s in r["spans"]]}
                for r in rows]
    docs = []
    for r in rows:
        spans = []
        for e in r.get("NER") or []:
            value, label = e.get("entity"), e.get("label")
            if value and label and (at := r["text"].find(value)) >= 0:
                spans.append((at, at + len(value), LABELS.get(label, label), value))
        docs.append({"text": r["text"], "spans": spans})
    return docs


def presidio_engines(spacy_model: str):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]})
    return AnalyzerEngine(nlp_engine=provider.create_engine()), AnonymizerEngine()


def score(docs: list[dict], findings: list[list], outputs: list[str]) -> dict:
    """Per labelled type: n, recalled, leaked; per found type: predicted, correct."""
    gold: dict[str, Counter] = defaultdict(Counter)
    found: dict[str, Counter] = defaultdict(Counter)
    for doc, fs, out in zip(docs, findings, outputs):
        for s, e, t, value in doc["spans"]:
            gold[t]["n"] += 1
            gold[t]["recalled"] += any(f.start < e and s < f.end for f in fs)
            gold[t]["leaked"] += value.strip() in out
        for f in fs:
            found[f.entity_type]["predicted"] += 1
            found[f.entity_type]["correct"] += any(f.start < e and s < f.end for s, e, _, _ in doc["spans"])
    return {"gold": {t: dict(c) for t, c in gold.items()}, "found": {t: dict(c) for t, c in found.items()}}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(result: dict) -> str:
    ours, ref = result["ours"]["score"], result["presidio"]["score"]
    types = sorted(ref["gold"], key=lambda t: -ref["gold"][t]["n"])
    lines = ["| type | spans | recall ours | recall Presidio | leak ours | leak Presidio |", "|---|---:|---:|---:|---:|---:|"]

    def row(name: str, keys: list[str]) -> str:
        n = sum(ref["gold"][t]["n"] for t in keys)
        cells = [sum(side["gold"].get(t, {}).get(k, 0) for t in keys) / n for side in (ours, ref) for k in ("recalled", "leaked")]
        return f"| {name} | {n} | {cells[0]:.2f} | {cells[2]:.2f} | {cells[1]:.2f} | {cells[3]:.2f} |"

    lines += [row(t, [t]) for t in types]
    lines.append(row("**structured**", [t for t in STRUCTURED if t in ref["gold"]]))
    lines.append(row("**all**", types))
    lines += ["", "| found type | precision ours (n) | precision Presidio (n) |", "|---|---:|---:|"]
    for t in sorted(set(ours["found"]) | set(ref["found"])):
        cells = []
        for side in (ours, ref):
            c = side["found"].get(t)
            cells.append(f"{c['correct'] / c['predicted']:.2f} ({c['predicted']})" if c else "-")
        lines.append(f"| {t} | {cells[0]} | {cells[1]} |")
    o, p = result["ours"], result["presidio"]
    lines += ["", f"documents: {result['documents']}; docs/s ours (one process) {o['docs_per_s']:.1f}, "
              f"Presidio {p['docs_per_s']:.1f}: {_ratio(o['docs_per_s'], p['docs_per_s'])}x; CPU-time ratio "
              f"{_ratio(p['cpu_s'], o['cpu_s'])}x; load average {result['load_before']} -> {result['load_after']}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="presidio-research's data/synth_dataset_v2.json, or the held-out set's "
                    "dataset/pii_syn_nano_en.json")
    ap.add_argument("--docs", type=int, default=None, help="first N documents only (default: all 1,500)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--entities", default=None, help="comma-separated entity list for ours (default: the config's)")
    ap.add_argument("--leaks", type=Path, default=None, help="also write the spans each side leaked (JSON lines)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "pii_outside.json")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: clone the set first (see this script's docstring)")
    docs = load(args.data, args.docs)
    cfg = CleanedCorpusConfig(pii_processes=1, **({"pii_entities": args.entities.split(",")} if args.entities else {}))
    analyzer, anonymizer = presidio_engines(cfg.spacy_model)
    warm = "Call Dana Reyes at 555-0100 or dana@example.org; card 4111 1111 1111 1111, Oslo."
    analyzer.analyze(warm, language="en")
    sides = {name: {"wall_s": 0.0, "cpu_s": 0.0, "findings": [], "outputs": []} for name in ("ours", "presidio")}
    load_before = os.getloadavg()[0]
    with PiiRedactor(cfg) as redactor:
        redactor.redact_batch([warm])
        for b in range(0, len(docs), args.batch):
            texts = [d["text"] for d in docs[b : b + args.batch]]
            t0, c0 = time.perf_counter(), time.process_time()
            for text in texts:
                found = analyzer.analyze(text, language="en")
                sides["presidio"]["outputs"].append(anonymizer.anonymize(text, found).text)
                sides["presidio"]["findings"].append(found)
            sides["presidio"]["wall_s"] += time.perf_counter() - t0
            sides["presidio"]["cpu_s"] += time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            sides["ours"]["outputs"] += [text for text, _ in redactor.redact_batch(texts)]
            sides["ours"]["wall_s"] += time.perf_counter() - t0
            sides["ours"]["cpu_s"] += time.process_time() - c0
            # The first pass's findings, for recall and precision (not timed: redact_batch already analyzed them).
            sides["ours"]["findings"] += [_resolve_overlaps(fs) for fs in redactor.analyze_batch(texts)]
    result = {"documents": len(docs), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    for name, side in sides.items():
        result[name] = {"docs_per_s": len(docs) / side["wall_s"], "wall_s": round(side["wall_s"], 2),
                        "cpu_s": round(side["cpu_s"], 2), "score": score(docs, side["findings"], side["outputs"])}
    if args.leaks is not None:
        with args.leaks.open("w", encoding="utf-8") as f:
            for k, doc in enumerate(docs):
                for s, e, t, value in doc["spans"]:
                    leaked = [name for name, side in sides.items() if value.strip() in side["outputs"][k]]
                    if leaked:
                        f.write(json.dumps({"doc": k, "type": t, "value": value, "leaked_by": leaked}) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(report(result))


if __name__ == "__main__":
    main()
