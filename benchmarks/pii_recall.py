"""PII: recall and precision per entity, and documents/s, for our batched analyzer vs Presidio one document at a time.

Both sides use the same recognizers, spaCy model, entity list and score threshold (cleaned_corpus defaults). The
reference is Presidio's stock ``AnalyzerEngine.analyze(text)`` called per document (full spaCy pipeline, blis); ours
is ``PiiRedactor.analyze_batch`` (curation.pii_engine: windowed NER, gated and joined recognizer passes), in one
process and with the default worker processes.

A finding counts as a true positive when it overlaps a labelled span of the same entity type; a labelled span is
recalled when some finding of its type overlaps it. Findings on unlabelled text are false positives.
"identical" is the share of documents whose (start, end, entity) findings equal Presidio's.

Timing is fair to both sides on a shared machine: the runs take turns batch by batch (Presidio on the batch's
documents, then ours in one process, then ours with workers), so a change in load falls on all of them alike; each
side warms up on other documents than the measured ones (caches of tokens and phone numbers would otherwise flatter
a second pass); CPU seconds are reported next to wall seconds for the two single-process runs, and the load average
before and after.

    .venv/bin/python benchmarks/pii_recall.py --docs 400
"""

from __future__ import annotations

import argparse
import json
import os
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


def agreement(a: list[list], b: list[list]) -> float:
    """Share of documents whose (start, end, entity) findings are identical on both sides."""
    same = sum({(r.start, r.end, r.entity_type) for r in x} == {(r.start, r.end, r.entity_type) for r in y} for x, y in zip(a, b))
    return same / max(1, len(a))


class Run:
    """One side of the comparison: its findings, wall and CPU seconds, and documents analyzed."""

    def __init__(self, label: str, analyze):
        self.label, self.analyze = label, analyze
        self.found: list[list] = []
        self.wall = self.cpu = 0.0
        self.n = 0

    def take(self, texts: list[str]) -> None:
        if not texts:
            return
        w, c = time.perf_counter(), time.process_time()
        self.found.extend(self.analyze(texts))
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        self.n += len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--reference-docs", type=int, default=None, help="score Presidio per document on the first N only")
    ap.add_argument("--batch", type=int, default=256, help="documents per analyze_batch call (cleaned_corpus.batch_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "pii_recall.json")
    args = ap.parse_args()

    cfg = CleanedCorpusConfig()
    docs = pii_documents(args.docs, seed=args.seed)
    texts = [d.text for d in docs]
    warm = [d.text for d in pii_documents(2 * args.batch, seed=args.seed + 1)]  # never measured
    mb = sum(len(t.encode()) for t in texts) / 1e6
    n_ref = min(args.reference_docs or args.docs, args.docs)

    engine = analyzer_engine(cfg.spacy_model)
    for t in warm[:20]:
        engine.analyze(t, language="en", entities=cfg.pii_entities, score_threshold=cfg.pii_score_threshold)
    one = PiiRedactor(cfg.model_copy(update={"pii_processes": 1}))
    pooled = PiiRedactor(cfg.model_copy(update={"pii_processes": None}))
    pooled.start_workers()
    for r in (one, pooled):
        r.analyze_batch(warm)
    runs = [
        Run("presidio_per_doc", lambda ts: [engine.analyze(t, language="en", entities=cfg.pii_entities,
                                                           score_threshold=cfg.pii_score_threshold) for t in ts]),
        Run("ours_1_process", one.analyze_batch),
        Run(f"ours_{pooled.processes}_processes", pooled.analyze_batch),
    ]
    load_before = os.getloadavg()
    for i in range(0, len(texts), args.batch):
        runs[0].take(texts[i : min(i + args.batch, n_ref)])
        for run in runs[1:]:
            run.take(texts[i : i + args.batch])
    load_after = os.getloadavg()
    pooled.close()

    ref = runs[0]
    results = {"documents": args.docs, "mb": round(mb, 3), "reference_documents": n_ref, "cpu_count": os.cpu_count(),
               "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after]}
    print(f"{args.docs} labelled documents, {mb:.2f} MB (Presidio per document on {n_ref}); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    print(f"{'run':<24}{'docs/s':>10}{'MB/s':>8}{'x ref':>8}{'x ref cpu':>11}{'identical':>11}")
    for run in runs:
        rate = run.n / run.wall
        speedup = rate / (ref.n / ref.wall)
        # CPU seconds compare single processes only (worker processes' CPU is not this process's).
        cpu_speedup = (ref.cpu / ref.n) / (run.cpu / run.n) if run is not runs[2] else None
        agree = agreement(run.found[:n_ref], ref.found)
        results[run.label] = {"docs_per_s": round(rate, 2), "mb_per_s": round(mb * run.n / args.docs / run.wall, 4),
                              "speedup": round(speedup, 2), "cpu_ms_per_doc": round(1000 * run.cpu / run.n, 2),
                              "cpu_speedup": None if cpu_speedup is None else round(cpu_speedup, 2),
                              "identical_findings": round(agree, 4), "scores": score(docs[: run.n], run.found, cfg.pii_entities)}
        cpu_cell = f"{cpu_speedup:>11.1f}" if cpu_speedup is not None else f"{'-':>11}"
        print(f"{run.label:<24}{rate:>10.1f}{mb * run.n / args.docs / run.wall:>8.3f}{speedup:>8.1f}{cpu_cell}{agree:>11.3f}")
    print(f"\n{'entity':<15}" + "".join(f"{run.label[:22]:>24}" for run in runs) + "   (recall / precision)")
    for e in [*cfg.pii_entities, "ALL"]:
        cells = []
        for run in runs:
            s = results[run.label]["scores"][e]
            cells.append(f"{s['recall']:.3f} / {s['precision']:.3f} (n={s.get('labelled', 0)})")
        print(f"{e:<15}" + "".join(f"{c:>24}" for c in cells))
    # Compared on the documents both sides analyzed.
    ref_scores = score(docs[:n_ref], ref.found, cfg.pii_entities)
    worse = [e for e in cfg.pii_entities for run in runs[1:]
             if score(docs[:n_ref], run.found[:n_ref], cfg.pii_entities)[e]["recall"] < ref_scores[e]["recall"]]
    results["recall_at_least_presidio"] = not worse
    print("\nper-entity recall >= Presidio's:", "yes" if not worse else f"NO ({', '.join(sorted(set(worse)))})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
