"""PII: recall and precision per entity, and documents/s, for our batched analyzer vs Presidio one document at a time.

Both sides use the same recognizers, spaCy model, entity list and score threshold (cleaned_corpus defaults). The
reference is Presidio's stock ``AnalyzerEngine.analyze(text)`` called per document (full spaCy pipeline); ours is
``PiiRedactor.analyze_batch`` (NER-only ``nlp.pipe`` with precomputed artifacts, worker processes).

A finding counts as a true positive when it overlaps a labelled span of the same entity type; a labelled span is
recalled when some finding of its type overlaps it. Findings on unlabelled text are false positives.

    .venv/bin/python benchmarks/pii_recall.py --docs 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import pii_documents  # noqa: E402

from llm_pipeline.config import CleanedCorpusConfig  # noqa: E402
from llm_pipeline.curation.pii import PiiRedactor, analyzer_engine  # noqa: E402


def score(docs, findings, entities) -> dict[str, dict[str, float]]:
    """Per entity: labelled, recalled, predicted, correct, recall, precision."""
    c = {e: Counter() for e in entities}
    for doc, found in zip(docs, findings):
        for s, e, t in doc.spans:
            c[t]["labelled"] += 1
            if any(f.entity_type == t and f.start < e and s < f.end for f in found):
                c[t]["recalled"] += 1
        for f in found:
            if f.entity_type not in c:
                continue
            c[f.entity_type]["predicted"] += 1
            if any(t == f.entity_type and f.start < e and s < f.end for s, e, t in doc.spans):
                c[f.entity_type]["correct"] += 1
    out = {}
    for e, k in c.items():
        out[e] = {**k, "recall": k["recalled"] / k["labelled"] if k["labelled"] else float("nan"),
                  "precision": k["correct"] / k["predicted"] if k["predicted"] else float("nan")}
    total = sum(c.values(), Counter())
    out["ALL"] = {**total, "recall": total["recalled"] / max(1, total["labelled"]),
                  "precision": total["correct"] / max(1, total["predicted"])}
    return out


def reference(cfg: CleanedCorpusConfig, texts: list[str]) -> list[list]:
    engine = analyzer_engine(cfg.spacy_model)
    return [engine.analyze(t, language="en", entities=cfg.pii_entities, score_threshold=cfg.pii_score_threshold) for t in texts]


def ours(cfg: CleanedCorpusConfig, texts: list[str], batch: int) -> list[list]:
    with PiiRedactor(cfg) as r:
        r.analyze_batch(texts[: min(len(texts), 2 * batch)])  # start the workers outside the timed run
        t0 = time.perf_counter()
        out = [s for i in range(0, len(texts), batch) for s in r.analyze_batch(texts[i : i + batch])]
        return out, time.perf_counter() - t0


def agreement(a: list[list], b: list[list]) -> float:
    """Share of documents whose (start, end, entity) findings are identical on both sides."""
    same = sum({(r.start, r.end, r.entity_type) for r in x} == {(r.start, r.end, r.entity_type) for r in y} for x, y in zip(a, b))
    return same / max(1, len(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--reference-docs", type=int, default=None, help="score Presidio per document on the first N only")
    ap.add_argument("--batch", type=int, default=256, help="documents per analyze_batch call (cleaned_corpus.batch_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "pii_recall.json")
    args = ap.parse_args()

    cfg = CleanedCorpusConfig()
    docs = pii_documents(args.docs, seed=args.seed)
    texts = [d.text for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    n_ref = args.reference_docs or args.docs

    analyzer_engine(cfg.spacy_model).analyze(texts[0], language="en")  # load outside the timing
    t0 = time.perf_counter()
    ref = reference(cfg, texts[:n_ref])
    ref_s = time.perf_counter() - t0
    results = {"documents": args.docs, "mb": round(mb, 3), "reference_documents": n_ref}
    runs = {"presidio_per_doc": (ref, ref_s, n_ref)}
    for label, procs in (("ours_1_process", 1), ("ours_default_processes", None)):
        c = cfg.model_copy(update={"pii_processes": procs})
        found, secs = ours(c, texts, args.batch)
        runs[label] = (found, secs, len(texts))

    print(f"{args.docs} labelled documents, {mb:.2f} MB (Presidio per document on {n_ref})")
    print(f"{'run':<24}{'docs/s':>10}{'MB/s':>8}{'x ref':>8}{'agree':>8}")
    ref_rate = n_ref / ref_s
    for label, (found, secs, n) in runs.items():
        rate = n / secs
        agree = agreement(found[:n_ref], ref)
        results[label] = {"docs_per_s": round(rate, 2), "mb_per_s": round(mb * n / args.docs / secs, 4),
                          "speedup": round(rate / ref_rate, 2), "identical_findings": round(agree, 4),
                          "scores": score(docs[:n], found[:n], cfg.pii_entities)}
        print(f"{label:<24}{rate:>10.1f}{mb * n / args.docs / secs:>8.3f}{rate / ref_rate:>8.1f}{agree:>8.3f}")
    print(f"\n{'entity':<15}" + "".join(f"{k[:22]:>24}" for k in runs) + "   (recall / precision)")
    for e in [*cfg.pii_entities, "ALL"]:
        cells = []
        for label in runs:
            s = results[label]["scores"][e]
            cells.append(f"{s['recall']:.3f} / {s['precision']:.3f} (n={s.get('labelled', 0)})")
        print(f"{e:<15}" + "".join(f"{c:>24}" for c in cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
