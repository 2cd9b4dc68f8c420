"""Curation on real domain corpora: per domain, documents in, kept, dropped by reason; junk caught per kind.

Runs the cleaned_corpus stage's own per-document step (extraction, C4 lines, quality filters, language id; PII is
left out: it never drops a document) over the folders benchmarks/real_corpora.py builds:

    CORPORA/good/<domain>/*   documents a reader would keep: the target is >= 95% kept per domain
    CORPORA/junk/<kind>/*     text a filter should catch: the target is >= 90% caught per kind

    .venv/bin/python benchmarks/real_curation.py /work/data/real
    .venv/bin/python benchmarks/real_curation.py /work/data/real --set quality_profile=web     # the web-crawl rules

For hand-checking, up to ``--samples`` dropped documents per (domain, reason) are written to
``benchmarks/out/real_curation/<folder>__<domain>.md`` (the first 1,200 characters of each, as the filters saw
them); the results table goes to ``benchmarks/out/real_curation/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import OUT_DIR  # noqa: E402

from llm_pipeline.config import CleanedCorpusConfig  # noqa: E402
from llm_pipeline.curation.filters import C4Lines, build_filters  # noqa: E402
from llm_pipeline.stages.cleaned_corpus import _prepare  # noqa: E402

FORMATS = {".md": "md", ".rst": "rst", ".html": "html", ".xml": "xml"}


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_folder(folder: Path, ccfg: CleanedCorpusConfig, samples: int) -> tuple[dict, dict[str, list[dict]]]:
    cfg = SimpleNamespace(cleaned_corpus=ccfg)
    c4 = C4Lines(ccfg.c4_terminal_punct, ccfg.c4_curly_braces) if ccfg.c4_rules else None
    filters = build_filters(ccfg, ["en"])
    dropped: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    kept = 0
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        rec = {"id": path.name, "text": raw, "format": FORMATS.get(path.suffix, "txt")}
        out, reason = _prepare(rec, cfg, c4, filters)
        if reason is None:
            kept += 1
            continue
        dropped[reason] += 1
        if len(examples.setdefault(reason, [])) < samples:
            examples[reason].append({"file": path.name, "words": len(raw.split()), "text": raw[:1200]})
    return {"documents": len(files), "kept": kept, "dropped": dict(dropped.most_common())}, examples


def _write_examples(out_dir: Path, name: str, examples: dict[str, list[dict]]) -> None:
    lines = [f"# Dropped documents: {name}", ""]
    for reason, docs in examples.items():
        lines += [f"## `{reason}` ({len(docs)} shown)", ""]
        for d in docs:
            body = d["text"].replace("\n", "\n> ")
            lines += [f"### {d['file']} ({d['words']} words)", "", f"> {body}", ""]
    (out_dir / f"{name.replace('/', '__')}.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpora", type=Path, help="folder with good/<domain>/ and junk/<kind>/ (benchmarks/real_corpora.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a cleaned_corpus setting to override (JSON value), e.g. quality_profile=web")
    ap.add_argument("--samples", type=int, default=20, help="dropped documents kept per reason for reading")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "real_curation")
    args = ap.parse_args(argv)
    if not (args.corpora / "good").is_dir():
        print(f"error: {args.corpora}/good not found; build the corpora with benchmarks/real_corpora.py", file=sys.stderr)
        return 2
    overrides = dict(kv.split("=", 1) for kv in args.set)
    ccfg = CleanedCorpusConfig(pii=False, **{k: _value(v) for k, v in overrides.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    t0 = time.perf_counter()
    print(f"{'folder':28} {'docs':>5} {'kept':>5} {'rate':>7}  drops by reason")
    for group in ("good", "junk"):
        for folder in sorted(p for p in (args.corpora / group).iterdir() if p.is_dir()):
            name = f"{group}/{folder.name}"
            row, examples = run_folder(folder, ccfg, args.samples)
            # Good folders are scored by what is kept, junk folders by what is caught.
            row["rate"] = (row["kept"] if group == "good" else row["documents"] - row["kept"]) / max(1, row["documents"])
            row["target"] = 0.95 if group == "good" else 0.90
            results[name] = row
            _write_examples(args.out, name, examples)
            label = "kept" if group == "good" else "caught"
            drops = ", ".join(f"{r} {c}" for r, c in row["dropped"].items()) or "-"
            flag = "" if row["rate"] >= row["target"] else "  < target"
            print(f"{name:28} {row['documents']:5d} {row['kept']:5d} {row['rate']:6.1%} {label}{flag}  {drops}")
    print(f"({time.perf_counter() - t0:.1f} s; settings: {overrides or 'defaults'}; dropped samples in {args.out})")
    (args.out / "results.json").write_text(json.dumps({"settings": overrides, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
