"""Build the quality benchmark's corpus folder from three public text collections that this repository does not ship.

    git clone --depth 1 https://github.com/python/peps /tmp/src/peps
    git clone --depth 1 https://github.com/rust-lang/book /tmp/src/rust-book
    # Project Gutenberg eBook #3261, William Morris, "News from Nowhere" (1890), plain text:
    git clone --depth 1 https://github.com/GITenberg/News-from-Nowhere--Or-An-Epoch-of-Rest--13-Being-Some-Chapters-from-a-Utopian-Romance_3261 /tmp/src/nowhere
    .venv/bin/python benchmarks/quality_corpus.py --peps /tmp/src/peps --rust-book /tmp/src/rust-book \\
        --gutenberg /tmp/src/nowhere/3261.txt --out /tmp/quality-corpus

Writes one folder per domain, in formats the raw_corpus stage reads as they are:

- `peps/`: Python Enhancement Proposals (reStructuredText; placed in the public domain or under CC0-1.0 by their
  authors), one file per PEP, at most `--max-peps` of them chosen by a hash of the file name (not by number, so old
  and new PEPs mix);
- `rust_book/`: "The Rust Programming Language" book's chapters (Markdown; MIT or Apache-2.0), one file per section;
- `untrained/`: a 19th-century novel (public domain in the US), one file per chapter, Project Gutenberg's header
  and licence text removed. No arm trains on it: it measures what domain training costs on unrelated text.

Only text goes into the corpus; nothing here is committed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from pathlib import Path

CHAPTER = re.compile(r"^CHAPTER [IVXLC]+[:.]", re.MULTILINE)


def pick_peps(root: Path, limit: int) -> list[Path]:
    files = sorted(p for p in (root / "peps").glob("pep-*.rst") if p.is_file())
    if not files:
        raise SystemExit(f"no peps/pep-*.rst under {root}: is it a clone of github.com/python/peps?")
    return sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())[:limit]


def rust_sections(root: Path) -> list[Path]:
    files = sorted((root / "src").glob("ch[0-9][0-9]-[0-9][0-9]-*.md"))
    if not files:
        raise SystemExit(f"no src/chNN-NN-*.md under {root}: is it a clone of github.com/rust-lang/book?")
    return files


def gutenberg_chapters(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*?\*\*\*", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK", text)
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    starts = [m.start() for m in CHAPTER.finditer(body)]
    if not starts:
        raise SystemExit(f"no 'CHAPTER <roman numeral>:' headings in {path}")
    return [body[a:b].strip() for a, b in zip(starts, starts[1:] + [len(body)]) if body[a:b].strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peps", type=Path, required=True, help="a clone of github.com/python/peps")
    ap.add_argument("--rust-book", type=Path, required=True, help="a clone of github.com/rust-lang/book")
    ap.add_argument("--gutenberg", type=Path, required=True, help="a Project Gutenberg plain-text book (chapters headed 'CHAPTER I:')")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-peps", type=int, default=240)
    a = ap.parse_args()

    if a.out.exists():
        shutil.rmtree(a.out)
    counts = {}
    (a.out / "peps").mkdir(parents=True)
    for p in pick_peps(a.peps, a.max_peps):
        shutil.copyfile(p, a.out / "peps" / p.name)
    counts["peps"] = len(list((a.out / "peps").iterdir()))
    (a.out / "rust_book").mkdir()
    for p in rust_sections(a.rust_book):
        shutil.copyfile(p, a.out / "rust_book" / p.name)
    counts["rust_book"] = len(list((a.out / "rust_book").iterdir()))
    (a.out / "untrained").mkdir()
    for i, chapter in enumerate(gutenberg_chapters(a.gutenberg), 1):
        (a.out / "untrained" / f"chapter-{i:02d}.txt").write_text(chapter + "\n", encoding="utf-8")
    counts["untrained"] = len(list((a.out / "untrained").iterdir()))
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v} files" for k, v in counts.items()) + f", {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
