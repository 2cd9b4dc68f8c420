"""Build the real-data curation corpora (benchmarks/real_curation.py) from public repository snapshots.

The data is not in this repository. Clone (or mirror) each source below into one folder, named ``owner+name``
(a bare mirror or a working tree both work), then run:

    .venv/bin/python benchmarks/real_corpora.py SNAPSHOTS_DIR /work/data/real

It writes one folder per domain, ``good/<domain>/`` (documents a reader would keep) and ``junk/<kind>/`` (text a
filter should catch), one file per document, in the formats a user would hand the pipeline (.txt, .md, .rst).
Selections are deterministic (sorted paths, a fixed stride), so the same snapshots give the same corpora.

  good/medical_qa       abachaa/MedQuAD: NIH leaflets as question-and-answer pairs (the collections whose answers
                        are in the release; MedlinePlus answers were removed for copyright and are skipped)
  good/tech_docs        python/peps: Python Enhancement Proposals (reStructuredText)
  good/meeting_minutes  rust-lang/leadership-council: minutes of the council's sync meetings (Markdown)
  good/legal_policies   github/site-policy: terms of service, privacy, acceptable-use and takedown policies (Markdown)
  good/financial_reports dgunning/edgartools: the prose items of real 10-K and 10-Q filings (business, risk factors,
                        MD&A with its tables, controls), one document per item, text as the pipeline extracts it
  junk/boilerplate      scrapinghub/article-extraction-benchmark: news pages with the article removed, what is
                        left is menus, footers, teasers and cookie notices
  junk/listing_pages    freelawproject/juriscraper: court websites' opinion listing pages (tables of case names,
                        dates and docket numbers), text as a naive extractor leaves it
  junk/data_tables      datasets/covid-19 and scrapinghub's ground truth: machine-generated CSV/JSON records
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


class Snapshot:
    """Read files from a bare git mirror (``git show HEAD:path``) or a plain working tree."""

    def __init__(self, root: Path):
        self.root = root
        if (root / "repo").is_dir():
            self.root = root / "repo"
        self.bare = (self.root / "HEAD").is_file() and (self.root / "objects").is_dir()

    def paths(self) -> list[str]:
        if self.bare:
            out = subprocess.run(["git", "--git-dir", str(self.root), "ls-tree", "-r", "--name-only", "HEAD"],
                                 check=True, capture_output=True, text=True).stdout
            return sorted(out.splitlines())
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file() and ".git" not in p.parts)

    def read(self, path: str) -> bytes:
        if self.bare:
            return subprocess.run(["git", "--git-dir", str(self.root), "show", f"HEAD:{path}"], check=True,
                                  capture_output=True).stdout
        return (self.root / path).read_bytes()


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def _stride(items: list, limit: int) -> list:
    step = max(1, len(items) // limit)
    return items[::step][:limit]


def medquad(snap: Snapshot, out: Path, limit: int) -> int:
    collections = ("1_CancerGov", "2_GARD", "3_GHR", "5_NIDDK", "6_NINDS", "7_SeniorHealth", "8_NHLBI", "9_CDC")
    n = 0
    per = max(1, limit // len(collections))
    for coll in collections:
        paths = [p for p in snap.paths() if p.startswith(coll) and p.endswith(".xml")]
        taken = 0
        for path in paths:
            root = ET.fromstring(snap.read(path))
            pairs = []
            for qa in root.iter("QAPair"):
                q, a = (qa.findtext("Question") or "").strip(), (qa.findtext("Answer") or "").strip()
                if q and a:
                    pairs.append(f"{q}\n{a}")
            if not pairs:
                continue
            _write(out, Path(path).stem + f"_{coll.split('_')[1]}.txt", "\n\n".join(pairs) + "\n")
            n += 1
            taken += 1
            if taken >= per:
                break
    return n


def by_suffix(snap: Snapshot, out: Path, prefix: str, suffix: str, limit: int, min_bytes: int = 0) -> int:
    paths = [p for p in snap.paths() if p.startswith(prefix) and p.endswith(suffix)]
    n = 0
    for path in _stride(paths, limit):
        text = snap.read(path).decode("utf-8", "replace")
        if len(text) < min_bytes:
            continue
        _write(out, path.replace("/", "__"), text)
        n += 1
    return n


# The narrative items of annual (10-K) and quarterly (10-Q) reports; the others are financial statements, exhibit
# lists, or a line saying "None".
FILING_ITEMS = {"10k": {"1", "1a", "1c", "7", "7a", "9a"}, "10q": {"2", "1a"}}
ITEM_RE = re.compile(r"^\s*item\s+(\d+[a-c]?)\s*[.:\-\u2014\u2013]", re.IGNORECASE)


def sec_filings(snap: Snapshot, out: Path, limit: int, min_words: int = 300) -> int:
    """Each filing's text (extracted as the pipeline extracts HTML), cut at its "Item N." headings; the longest
    section per item is the item (the table of contents repeats the headings)."""
    from llm_pipeline.curation.cleaning import extract_text

    paths = [p for p in snap.paths() if re.search(r"tests/fixtures/html/[^/]+/10[kq]/[^/]+\.html?$", p)]
    n = 0
    for path in paths:
        form = path.split("/")[-2]
        try:
            html = snap.read(path).decode("utf-8", "replace")
        except subprocess.CalledProcessError:  # a large file the snapshot stores without content
            continue
        lines = extract_text(html, "html")[0].split("\n")
        heads = [(i, m.group(1).lower()) for i, line in enumerate(lines) if len(line) < 160 and (m := ITEM_RE.match(line))]
        best: dict[str, str] = {}
        for (start, item), (end, _) in zip(heads, heads[1:] + [(len(lines), "")]):
            text = "\n".join(lines[start:end]).strip()
            if item in FILING_ITEMS[form] and len(text) > len(best.get(item, "")):
                best[item] = text
        for item, text in sorted(best.items()):
            if len(text.split()) < min_words:
                continue
            _write(out, f"{Path(path).stem}_item{item}.txt", text + "\n")
            n += 1
            if n >= limit:
                return n
    return n


def _page_text(html: str) -> list[str]:
    """Visible text of a page, one line per block, as a tag-stripping extractor leaves it."""
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    body = tree.body or tree.root
    text = body.text(separator="\n") if body is not None else ""
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def boilerplate(snap: Snapshot, out: Path, limit: int) -> int:
    """Each page's text minus every line that belongs to its article: the part of a page a failed extractor keeps."""
    truth = json.loads(snap.read("ground-truth.json"))
    norm = lambda s: re.sub(r"\W+", " ", s).lower().strip()  # noqa: E731
    n = 0
    for key in sorted(truth)[: limit * 2]:
        body = norm(truth[key].get("articleBody") or "") + " " + norm(truth[key].get("headline") or "")
        html = gzip.decompress(snap.read(f"html/{key}.html.gz")).decode("utf-8", "replace")
        lines = [line for line in _page_text(html) if norm(line) and norm(line) not in body]
        text = "\n".join(lines)
        if len(text.split()) < 50:
            continue
        _write(out, f"{key[:16]}.txt", text + "\n")
        n += 1
        if n >= limit:
            break
    return n


def listing_pages(snap: Snapshot, out: Path, limit: int) -> int:
    paths = [p for p in snap.paths() if "examples/opinions/" in p and p.endswith("_example.html")]
    n = 0
    for path in _stride(paths, limit * 2):
        lines = _page_text(snap.read(path).decode("utf-8", "replace"))
        if len(" ".join(lines).split()) < 50:
            continue
        _write(out, path.replace("/", "__").removesuffix(".html") + ".txt", "\n".join(lines) + "\n")
        n += 1
        if n >= limit:
            break
    return n


def data_tables(covid: Snapshot, juriscraper: Snapshot, out: Path, limit: int, rows: int = 60) -> int:
    """CSV files cut into pieces of `rows` lines, and juriscraper's machine-written .compare.json case records."""
    n = 0
    for path in ("data/key-countries-pivoted.csv", "data/worldwide-aggregate.csv", "data/reference.csv"):
        try:
            data = covid.read(path).decode("utf-8", "replace")
        except subprocess.CalledProcessError:
            continue
        records = list(csv.reader(io.StringIO(data)))
        header, body = records[0], records[1:]
        for start in range(0, min(len(body), rows * limit // 4), rows * 3):
            buf = io.StringIO()
            csv.writer(buf).writerows([header, *body[start : start + rows]])
            _write(out, f"{Path(path).stem}_{start}.csv.txt", buf.getvalue())
            n += 1
            if n >= limit // 2:
                break
        if n >= limit // 2:
            break
    compares = [p for p in juriscraper.paths() if "examples/opinions/" in p and p.endswith(".compare.json")]
    for path in _stride(compares, max(0, limit - n)):
        _write(out, path.replace("/", "__") + ".txt", snap_text(juriscraper, path))
        n += 1
    return n


def snap_text(snap: Snapshot, path: str) -> str:
    return snap.read(path).decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", type=Path, help="folder holding owner+name snapshots of the sources")
    ap.add_argument("out", type=Path, help="where good/<domain>/ and junk/<kind>/ are written")
    ap.add_argument("--per-domain", type=int, default=120, help="documents per good domain at most")
    ap.add_argument("--per-junk", type=int, default=60, help="documents per junk kind at most")
    args = ap.parse_args(argv)
    snap = lambda name: Snapshot(args.snapshots / name)  # noqa: E731
    good, junk = args.out / "good", args.out / "junk"
    counts = {
        "good/medical_qa": medquad(snap("abachaa+MedQuAD"), good / "medical_qa", args.per_domain),
        "good/tech_docs": by_suffix(snap("python+peps"), good / "tech_docs", "peps/pep-", ".rst", args.per_domain),
        "good/meeting_minutes": by_suffix(snap("rust-lang+leadership-council"), good / "meeting_minutes", "minutes/",
                                          ".md", args.per_domain),
        "good/legal_policies": by_suffix(snap("github+site-policy"), good / "legal_policies", "Policies/", ".md",
                                         args.per_domain, min_bytes=400),
        "good/financial_reports": sec_filings(snap("dgunning+edgartools"), good / "financial_reports", args.per_domain),
        "junk/boilerplate": boilerplate(snap("scrapinghub+article-extraction-benchmark"), junk / "boilerplate",
                                        args.per_junk),
        "junk/listing_pages": listing_pages(snap("freelawproject+juriscraper"), junk / "listing_pages", args.per_junk),
        "junk/data_tables": data_tables(snap("datasets+covid-19"), snap("freelawproject+juriscraper"),
                                        junk / "data_tables", args.per_junk),
    }
    for name, count in counts.items():
        print(f"{name:24} {count:5d} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
