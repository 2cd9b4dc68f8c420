"""Readers: every format (plain and gzipped), encodings, the HF streaming path offline, and bad input -> reason."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.curation.readers import Quarantined, glob_regex, read_domain

DOC_A = "The supplier shall deliver the goods within thirty days of the order."
DOC_B = "Invoices are payable within fourteen days; late payment bears interest."


def make_cfg(tmp_path: Path, *sources: dict, licence: str = "CC-BY-4.0"):
    cfg_file = tmp_path / "pipeline.yaml"
    data = {"data_dir": str(tmp_path / "data"), "domains": {"legal": {"licence": licence, "sources": list(sources)}}}
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config(cfg_file, root=tmp_path)


def read(tmp_path: Path, *sources: dict, **kw) -> tuple[list[dict], list[Quarantined]]:
    items = list(read_domain(make_cfg(tmp_path, *sources, **kw), "legal"))
    return [i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)]


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def csv_bytes(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


HTML = f"<html><head><script>var x=1;</script></head><body><nav>Home</nav><p>{DOC_A}</p></body></html>"
# name, bytes, text field, expected (locator, text) pairs, format
FORMATS = [
    ("a.txt", DOC_A.encode(), "text", [("", DOC_A)], "txt"),
    ("a.md", f"# Title\n\n{DOC_A}".encode(), "text", [("", f"# Title\n\n{DOC_A}")], "md"),
    ("a.rst", f"Title\n=====\n\n{DOC_A}".encode(), "text", [("", f"Title\n=====\n\n{DOC_A}")], "rst"),
    ("a.html", HTML.encode(), "text", [("", HTML)], "html"),  # raw markup kept: cleaning extracts the main text
    ("a.htm", HTML.encode(), "text", [("", HTML)], "html"),
    ("a.xml", f"<doc><p>{DOC_A}</p></doc>".encode(), "text", [("", f"<doc><p>{DOC_A}</p></doc>")], "xml"),
    ("a.json", json.dumps([{"body": DOC_A}, {"body": DOC_B}]).encode(), "body", [("#0", DOC_A), ("#1", DOC_B)], "json"),
    ("one.json", json.dumps({"body": DOC_A, "title": "t"}).encode(), "body", [("", DOC_A)], "json"),
    ("a.jsonl", (json.dumps({"body": DOC_A}) + "\n\n" + json.dumps({"body": DOC_B}) + "\n").encode(), "body",
     [("#L1", DOC_A), ("#L3", DOC_B)], "jsonl"),
    ("a.csv", csv_bytes([["id", "body"], ["1", DOC_A], ["2", "two\nlines"], ["3", DOC_B]]), "body",
     [("#L2", DOC_A), ("#L3", "two\nlines"), ("#L5", DOC_B)], "csv"),
    ("a.parquet", parquet_bytes(pa.table({"body": [DOC_A, DOC_B], "n": [1, 2]})), "body", [("#0", DOC_A), ("#1", DOC_B)], "parquet"),
]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name,data,field,expected,fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format(tmp_path, name, data, field, expected, fmt, gzipped):
    folder = tmp_path / "corpus"
    folder.mkdir()
    if gzipped:
        name, data = name + ".gz", gz(data)
    (folder / name).write_bytes(data)
    docs, bad = read(tmp_path, {"path": "corpus", "text_field": field})
    assert bad == []
    assert [(d["source"], d["text"]) for d in docs] == [(f"corpus/{name}{loc}", text) for loc, text in expected]
    for d in docs:
        assert d["id"] == xxhash.xxh3_128_hexdigest(d["text"].encode("utf-8"))
        assert (d["domain"], d["licence"], d["language"], d["format"]) == ("legal", "CC-BY-4.0", "", fmt)
        assert d["bytes"] == len(d["text"].encode("utf-8"))


@pytest.mark.parametrize(
    "data,text",
    [
        (b"\xef\xbb\xbf" + "caf\u00e9 cr\u00e8me".encode(), "caf\u00e9 cr\u00e8me"),  # UTF-8 with BOM: BOM not in text
        ("caf\u00e9 \u00fcber".encode("utf-16"), "caf\u00e9 \u00fcber"),  # UTF-16 found by its BOM
        ("na\u00efve r\u00e9sum\u00e9 \u20ac5".encode("cp1252"), "na\u00efve r\u00e9sum\u00e9 \u20ac5"),  # legacy fallback
    ],
    ids=["utf8-bom", "utf16", "cp1252"],
)
def test_encodings(tmp_path, data, text):
    (tmp_path / "doc.txt").write_bytes(data)
    docs, bad = read(tmp_path, {"path": "doc.txt"})
    assert bad == [] and [d["text"] for d in docs] == [text]


def test_utf16_jsonl_streams(tmp_path):
    (tmp_path / "rows.jsonl").write_bytes((json.dumps({"text": DOC_A}) + "\n" + json.dumps({"text": DOC_B}) + "\n").encode("utf-16"))
    docs, bad = read(tmp_path, {"path": "rows.jsonl"})
    assert bad == [] and [d["text"] for d in docs] == [DOC_A, DOC_B]


def test_glob_licence_cap_and_order(tmp_path):
    folder = tmp_path / "c"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.md", "a.md", "sub/c.md", "skip.txt"]:
        (folder / name).write_text(f"{name} {DOC_A}")
    docs, bad = read(tmp_path, {"path": "c", "glob": "**/*.md", "licence": "MIT"})
    assert bad == []
    assert [d["source"] for d in docs] == ["c/a.md", "c/b.md", "c/sub/c.md"]
    assert {d["licence"] for d in docs} == {"MIT"}
    docs, _ = read(tmp_path, {"path": "c", "max_documents": 2})
    assert len(docs) == 2


@pytest.mark.parametrize(
    "pattern,path,hit",
    [("**/*", "a.txt", True), ("**/*", "x/y/a.txt", True), ("*.md", "x/a.md", False), ("**/*.md", "x/a.md", True),
     ("docs/?.txt", "docs/a.txt", True), ("[!a]*.txt", "b.txt", True), ("[!a]*.txt", "a.txt", False)],
)
def test_glob_regex(pattern, path, hit):
    assert bool(glob_regex(pattern).match(path)) is hit


def test_same_text_same_id_across_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text(DOC_A)
    (tmp_path / "c" / "y.jsonl").write_text(json.dumps({"text": DOC_A}) + "\n")
    docs, _ = read(tmp_path, {"path": "c"})
    assert len(docs) == 2 and docs[0]["id"] == docs[1]["id"]


# ---------------------------------------------------------------- bad input: each gives a named reason, never a crash
def _write(name: str, data: bytes):
    def setup(folder: Path) -> None:
        (folder / name).write_bytes(data)
    return setup


def _symlink(name: str, target: str):
    def setup(folder: Path) -> None:
        os.symlink(target, folder / name)
    return setup


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.txt")


BAD = [
    ("binary", _write("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"), "binary", "c/image.txt"),
    ("decode_error", _write("garbled.txt", bytes(range(128, 256)) * 3), "decode_error", "c/garbled.txt"),
    ("empty", _write("empty.md", b""), "empty_file", "c/empty.md"),
    ("whitespace", _write("blank.txt", b"  \n\t\n"), "empty_file", "c/blank.txt"),
    ("empty_jsonl", _write("none.jsonl", b"\n\n"), "empty_file", "c/none.jsonl"),
    ("header_only_csv", _write("h.csv", b"id,text\n"), "empty_file", "c/h.csv"),
    ("malformed_json", _write("bad.json", b'{"text": "unterminated'), "malformed_json", "c/bad.json"),
    ("malformed_jsonl_row", _write("rows.jsonl", b'{"text": "ok row here"}\n{not json}\n'), "malformed_json", "c/rows.jsonl#L2"),
    ("json_scalar", _write("n.json", b"42"), "malformed_json", "c/n.json"),
    ("missing_field", _write("m.jsonl", b'{"title": "no text"}\n'), "missing_text_field", "c/m.jsonl#L1"),
    ("non_text_field", _write("i.jsonl", b'{"text": 5}\n'), "non_text_field", "c/i.jsonl#L1"),
    ("empty_text", _write("e.jsonl", b'{"text": "   "}\n'), "empty_text", "c/e.jsonl#L1"),
    ("lone_surrogate", _write("s.jsonl", b'{"text": "bad \\ud800 char"}\n'), "decode_error", "c/s.jsonl#L1"),
    ("csv_no_column", _write("nc.csv", b"id,body\n1,hello\n"), "missing_text_field", "c/nc.csv"),
    ("csv_ragged_row", _write("r.csv", b"id,text\n1,hello there\n2,x,extra\n"), "bad_csv", "c/r.csv#L3"),
    ("csv_bad_quote", _write("q.csv", b'id,text\n1,"fine"\n2,"broken"quote\n'), "bad_csv", "c/q.csv#L3"),
    ("truncated_gzip", _write("t.txt.gz", gz(DOC_A.encode() * 20)[:40]), "truncated_gzip", "c/t.txt.gz"),
    ("bad_gzip", _write("g.jsonl.gz", b"this is not gzip at all"), "bad_gzip", "c/g.jsonl.gz"),
    ("parquet_no_column", _write("p.parquet", parquet_bytes(pa.table({"body": ["x"]}))), "wrong_parquet_schema", "c/p.parquet"),
    ("parquet_int_column", _write("p.parquet", parquet_bytes(pa.table({"text": [1, 2]}))), "wrong_parquet_schema", "c/p.parquet"),
    ("parquet_garbage", _write("p.parquet", b"PAR1 not really"), "bad_parquet", "c/p.parquet"),
    ("unsupported", _write("scan.pdf", b"%PDF-1.4"), "unsupported_format", "c/scan.pdf"),
    ("broken_symlink", _symlink("gone.txt", "/nonexistent/file.txt"), "broken_symlink", "c/gone.txt"),
    ("self_symlink", _symlink("self.txt", "self.txt"), "broken_symlink", "c/self.txt"),
    ("symlink_loop", _symlink("loop", "."), "symlink_loop", "c/loop"),
    ("fifo", _fifo, "not_a_file", "c/pipe.txt"),
]


@pytest.mark.parametrize("setup,reason,source", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_quarantined(tmp_path, setup, reason, source):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "good.txt").write_text(DOC_B)  # the good file beside the bad one is still read
    setup(folder)
    docs, bad = read(tmp_path, {"path": "c"})
    assert (source, reason) in [(q.source, q.reason) for q in bad], bad
    assert DOC_B in [d["text"] for d in docs]
    assert all(q.detail for q in bad)


def test_missing_source_and_empty_glob(tmp_path):
    _, bad = read(tmp_path, {"path": "nowhere"})
    assert [(q.source, q.reason) for q in bad] == [("nowhere", "path_not_found")]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(DOC_A)
    _, bad = read(tmp_path, {"path": "c", "glob": "**/*.xml"})
    assert [q.reason for q in bad] == ["no_files"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    (tmp_path / "c").mkdir()
    locked = tmp_path / "c" / "locked.txt"
    locked.write_text(DOC_A)
    locked.chmod(0)
    try:
        _, bad = read(tmp_path, {"path": "c"})
    finally:
        locked.chmod(0o644)
    assert [(q.source, q.reason) for q in bad] == [("c/locked.txt", "unreadable")]


# ---------------------------------------------------------------- Hugging Face datasets, streamed, offline
@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_hf_dataset_from_local_files(tmp_path, hf_home):
    (tmp_path / "ds").mkdir()
    rows = [{"content": DOC_A}, {"content": DOC_B}, {"content": None}]
    (tmp_path / "ds" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"content": [DOC_B, DOC_A]}), tmp_path / "ds" / "part.parquet")
    docs, bad = read(tmp_path, {"hf_dataset": "ds/train.jsonl", "text_field": "content"})
    assert [(d["source"], d["format"], d["text"]) for d in docs] == [
        ("hf://ds/train.jsonl/train#0", "hf", DOC_A), ("hf://ds/train.jsonl/train#1", "hf", DOC_B)]
    assert [(q.source, q.reason) for q in bad] == [("hf://ds/train.jsonl/train#2", "missing_text_field")]
    docs, bad = read(tmp_path, {"hf_dataset": "ds/part.parquet", "text_field": "content", "max_documents": 1})
    assert bad == [] and [d["text"] for d in docs] == [DOC_B]


def test_hf_dataset_saved_to_disk_and_offline_hub(tmp_path, hf_home):
    import datasets

    datasets.Dataset.from_dict({"text": [DOC_A, DOC_B]}).save_to_disk(str(tmp_path / "saved"))
    docs, bad = read(tmp_path, {"hf_dataset": "saved"})
    assert bad == [] and [d["text"] for d in docs] == [DOC_A, DOC_B]
    docs, bad = read(tmp_path, {"hf_dataset": "no-such-org/no-such-dataset", "split": "train"})
    assert docs == [] and [(q.source, q.reason) for q in bad] == [("hf://no-such-org/no-such-dataset/train", "hf_load_error")]


def test_unreadable_when_open_fails(tmp_path):
    # A folder where a file was listed: open() fails as it would for a permission error or a vanished file.
    from llm_pipeline.curation.readers import read_file

    (tmp_path / "x.txt").mkdir()
    items = list(read_file(tmp_path / "x.txt", "c/x.txt", "text"))
    assert [(q.source, q.reason) for q in items] == [("c/x.txt", "unreadable")]


# ---------------------------------------------------------------- size cap: refused before being read whole
BIG = "A sentence that is far longer than the tiny cap this test sets for one document. " * 3
TOO_LARGE = [
    ("txt", _write("big.txt", BIG.encode()), "c/big.txt"),
    ("txt_gz", _write("big.txt.gz", gz(BIG.encode())), "c/big.txt.gz"),
    ("json_file", _write("big.json", json.dumps([{"text": BIG}]).encode()), "c/big.json"),
    ("jsonl_line", _write("big.jsonl", json.dumps({"text": BIG}).encode() + b"\n"), "c/big.jsonl#L1"),
    ("csv_field", _write("big.csv", csv_bytes([["text"], [BIG]])), "c/big.csv#L2"),
    ("parquet_cell", _write("big.parquet", parquet_bytes(pa.table({"text": [BIG]}))), "c/big.parquet#0"),
]


@pytest.mark.parametrize("setup,source", [t[1:] for t in TOO_LARGE], ids=[t[0] for t in TOO_LARGE])
def test_document_over_the_cap_is_quarantined(tmp_path, setup, source):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "good.txt").write_text(DOC_B)
    setup(folder)
    docs, bad = read(tmp_path, {"path": "c", "max_document_bytes": 100})
    assert [(q.source, q.reason) for q in bad] == [(source, "document_too_large")]
    assert [d["text"] for d in docs] == [DOC_B]


def test_jsonl_rows_after_a_too_long_line_are_still_read(tmp_path):
    (tmp_path / "c").mkdir()
    rows = [{"text": DOC_A}, {"text": BIG}, {"text": DOC_B}]
    (tmp_path / "c" / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, bad = read(tmp_path, {"path": "c", "max_document_bytes": 100})
    assert [(d["source"], d["text"]) for d in docs] == [("c/r.jsonl#L1", DOC_A), ("c/r.jsonl#L3", DOC_B)]
    assert [(q.source, q.reason) for q in bad] == [("c/r.jsonl#L2", "document_too_large")]


def test_source_outside_the_root_is_quarantined(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(DOC_A)
    os.symlink("/etc/passwd", tmp_path / "c" / "passwd.txt")
    docs, bad = read(tmp_path, {"path": "c"})
    assert [(q.source, q.reason) for q in bad] == [("c/passwd.txt", "path_outside_root")]
    _, bad = read(tmp_path, {"path": "../../etc"})
    assert [q.reason for q in bad] == ["path_outside_root"]


def _rows(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"text": f"{DOC_A} Clause {i}."}).encode() for i in range(start, start + n)]


@pytest.mark.parametrize("bad, reason", [
    (b'{"text": "\x81\x8d\x8f never a character"}', "decode_error"),  # invalid UTF-8 and undefined in Windows-1252
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
    (b'{"text": "a number too long to convert", "n": ' + b"9" * 5000 + b"}", "malformed_json"),
    (b'{"text": "never closed', "malformed_json"),
], ids=["bad_bytes", "nested_100k", "int_5000_digits", "unclosed"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_one_bad_jsonl_line_costs_that_line_only(tmp_path, bad, reason, gzipped):
    # 700 rows before the bad one put it well past the 64 KiB the encoding is guessed from, and past any read-ahead.
    lines = _rows(700) + [bad] + _rows(30, 700)
    data = b"\n".join(lines) + b"\n"
    name = "rows.jsonl.gz" if gzipped else "rows.jsonl"
    (tmp_path / name).write_bytes(gz(data) if gzipped else data)
    docs, bad_items = read(tmp_path, {"path": name})
    assert [(q.source, q.reason) for q in bad_items] == [(f"{name}#L701", reason)]
    assert len(docs) == 730 and docs[-1]["source"] == f"{name}#L731"


def test_a_stray_legacy_byte_in_a_utf8_jsonl_line_decodes_that_line(tmp_path):
    lines = _rows(700) + [b'{"text": "The caf\xe9 on the corner signed the lease for another ten years."}'] + _rows(5, 700)
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines))
    docs, bad = read(tmp_path, {"path": "rows.jsonl"})
    assert not bad and len(docs) == 706 and "café" in docs[700]["text"]


def test_a_truncated_jsonl_gz_keeps_every_record_before_the_cut(tmp_path):
    data = gz(b"\n".join(_rows(100)) + b"\n")
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    docs, bad = read(tmp_path, {"path": "cut.jsonl.gz"})
    assert len(bad) == 1 and bad[0].reason == "truncated_gzip"
    cut_line = int(bad[0].source.rsplit("#L", 1)[1])
    assert len(docs) == cut_line - 1 > 10  # every complete line before the cut; the cut line is the one named
    assert f"ends inside line {cut_line}" in bad[0].detail
