"""HTML -> main text quality on a public labelled benchmark we did not tune on (article-extraction-benchmark).

DATA_DIR is a copy of https://github.com/scrapinghub/article-extraction-benchmark: ``ground-truth.json`` (page id ->
``{"articleBody": ...}``) and ``html/<id>.html.gz`` (181 news and blog pages). Get it with
``git clone --depth 1 https://github.com/scrapinghub/article-extraction-benchmark /tmp/aeb`` and keep it out of
this repository.

Scored per page, then averaged over pages as the benchmark's own ``evaluate.py`` does (mean precision, mean
recall, F1 of the two means):
  - ``bow``: bag of words (``\\w+`` tokens as multisets);
  - ``shingle4``: the benchmark's metric, multisets of 4-word shingles.

Extractors, all on the same decoded HTML:
  - ``ours``: ``curation.cleaning.clean_document(html, "html", CleanedCorpusConfig())``: trafilatura with our
    settings, selectolax fallback, ftfy, URL removal, whitespace normalization;
  - ``trafilatura_default``: ``trafilatura.extract(html)`` with its defaults;
  - ``selectolax_body``: all text of ``<body>`` minus script/style (no boilerplate removal).

    .venv/bin/python benchmarks/extraction_f1.py /tmp/aeb
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR  # noqa: E402

_TOKEN = re.compile(r"\w+")


def prf(true: Counter, pred: Counter) -> tuple[float | None, float | None]:
    """Precision and recall of multisets, with the benchmark's conventions for empty sides (None = not counted)."""
    tp = sum((true & pred).values())
    fp, fn = sum(pred.values()) - tp, sum(true.values()) - tp
    if fp == fn == 0:
        return 1.0, 1.0
    precision = (0.0 if tp == fp == 0 else tp / (tp + fp)) if tp + fp > 0 else None
    recall = (0.0 if tp == fn == 0 else tp / (tp + fn)) if tp + fn > 0 else None
    return precision, recall


def bags(text: str) -> tuple[Counter, Counter]:
    tokens = _TOKEN.findall(text or "")
    shingles = [tuple(tokens[i : i + 4]) for i in range(max(1, len(tokens) - 3))] if tokens else []
    return Counter(tokens), Counter(s for s in shingles if s)


def extractors():
    import trafilatura
    from selectolax.lexbor import LexborHTMLParser

    from llm_pipeline.config import CleanedCorpusConfig
    from llm_pipeline.curation.cleaning import clean_document

    cfg = CleanedCorpusConfig()

    def selectolax_body(html: str) -> str:
        tree = LexborHTMLParser(html)
        for node in tree.css("script, style, noscript"):
            node.decompose()
        root = tree.body or tree.root
        return root.text(separator="\n", strip=True) if root is not None else ""

    return {
        "ours": lambda html: clean_document(html, "html", cfg)[0],
        "trafilatura_default": lambda html: trafilatura.extract(html) or "",
        "selectolax_body": selectolax_body,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    args = ap.parse_args()
    truth = json.loads((args.data_dir / "ground-truth.json").read_text(encoding="utf-8"))
    pages = {}
    for key in truth:
        raw = gzip.decompress((args.data_dir / "html" / f"{key}.html.gz").read_bytes())
        pages[key] = raw.decode("utf-8", errors="replace")
    results = {}
    for name, extract in extractors().items():
        scores = {"bow": ([], []), "shingle4": ([], [])}
        t0 = time.perf_counter()
        for key, html in pages.items():
            pred = extract(html)
            for metric, t_bag, p_bag in zip(("bow", "shingle4"), bags(truth[key].get("articleBody", "")), bags(pred)):
                p, r = prf(t_bag, p_bag)
                if p is not None:
                    scores[metric][0].append(p)
                if r is not None:
                    scores[metric][1].append(r)
        secs = time.perf_counter() - t0
        row = {"pages": len(pages), "pages_per_s": len(pages) / secs}
        for metric, (ps, rs) in scores.items():
            p, r = statistics.mean(ps), statistics.mean(rs)
            row[metric] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
        results[name] = row
    print(f"article-extraction-benchmark: {len(pages)} pages")
    print(f"{'extractor':<22}{'bow P':>8}{'bow R':>8}{'bow F1':>8}{'sh4 P':>8}{'sh4 R':>8}{'sh4 F1':>8}{'pages/s':>9}")
    for name, row in results.items():
        b, s = row["bow"], row["shingle4"]
        print(f"{name:<22}{b['precision']:>8.3f}{b['recall']:>8.3f}{b['f1']:>8.3f}"
              f"{s['precision']:>8.3f}{s['recall']:>8.3f}{s['f1']:>8.3f}{row['pages_per_s']:>9.1f}")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "extraction_f1.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
