"""A generator of bad input: a small project (corpus folders + config) holding 80+ kinds of broken and hostile files.

    project = make_bad_project(tmp_path / "project")
    cfg = load_config(project.config, root=project.root)
    for kind in project.kinds: kind.name, kind.sources, kind.expected

Each `Kind` names the sources (as raw_corpus records them, relative to the project root; ``#L<n>`` etc. for rows)
and what must become of each of them by the end of deduped_shards: ``kept``, ``dropped:<reason>`` (in the stage
that drops it) or ``quarantined:<reason>``. Good prose documents sit beside the bad ones, so a bad file that stopped
a stage, or swallowed its neighbours, shows up as a missing or changed outcome.

Hostile kinds (bombs, adversarial markup, injected special tokens, lines that used to take their neighbours with
them) sit in ``corpus/hostile``, read with a small ``max_document_bytes`` (HOSTILE_MAX_BYTES) so that a bomb is a
few megabytes here and still exercises the same bounds. Their neighbours are short notes that cleaning drops as
``too_few_words``: each one reaching that drop proves it was read, not lost. Config-level kinds (a source inside an
output) are in ``project.refused``: config changes that load_config must refuse with the named reason.

Unreadable files: the tests run as root, and root reads a ``chmod 000`` file anyway (DAC permission bits do not
apply to it), so that kind is *kept* under root and *quarantined:unreadable* otherwise. For a read that fails for
root too, ``device.txt`` links to ``/proc/self/mem``: the kernel lists it as a regular file, but reading it from
offset 0 fails with EIO in whichever process reads it. /proc is listed under ``allowed_roots`` for that one purpose.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

# Distinct prose paragraphs (no two share a run of five words): each passes the quality and language filters.
PROSE = [
    "The tenant asked the landlord to repair the heating before winter arrived, and the landlord agreed to send "
    "a plumber within two weeks. When nobody came, the tenant wrote again and kept a copy of every letter sent.",
    "A contract is only as clear as the words chosen to write it. Courts read unclear terms against the party "
    "who drafted them, which is why careful lawyers define each important word at the start of the agreement.",
    "Nurses check the chart of each patient at the start of every shift. They compare the medicine list with the "
    "orders from the doctor and ask questions whenever a dose looks higher than the usual amount for that drug.",
    "The new release of the library changes how errors are reported to the caller. Instead of printing a warning, "
    "every function now raises an exception with a message that explains what went wrong and how to fix it.",
    "Before a software team ships a change, a second engineer reviews the code and runs the tests on a clean "
    "machine. This habit catches mistakes early, while they are still cheap to correct and easy to understand.",
    "Small farms in the valley grow apples, pears and plums on slopes that face the morning sun. In autumn the "
    "growers press the fallen fruit into cider, which they sell at the weekly market in the old town square.",
    "Our museum opens a new exhibition about the history of printing next month. Visitors can watch a restored "
    "press at work and set a short line of type by hand, then take the printed card home as a keepsake.",
    "The library extended its opening hours during the exam period so that students had a quiet place to study. "
    "Staff added more desks near the windows and lent out reading lamps for those who stayed late at night.",
    "Heavy rain closed the coastal road for three days while workers cleared mud and fallen trees from the lanes. "
    "Drivers were sent along the inland route, which added almost an hour to the trip between the two harbours.",
    "A good recipe lists every ingredient in the order it is used and gives the weight as well as the volume. "
    "That way a cook in any country can follow the steps without guessing how much flour a cup really holds.",
    "The village council voted to plant a row of oak trees along the river path. Volunteers dug the holes on a "
    "cold Saturday morning, and the school children painted small signs with the name of each young tree.",
    "Our train timetable changes twice a year, in spring and in autumn. Passengers should check the departure "
    "board before each journey, since a few early services now leave ten minutes sooner than they used to.",
    "The bakery on the corner starts work long before dawn. By six o'clock the shelves hold fresh loaves, rolls "
    "and buns, and a short queue of neighbours has formed outside the door waiting for the first batch.",
    "Astronomers at the observatory measured the brightness of a distant star every night for a whole year. "
    "The small regular dips in its light told them that a planet was passing in front of it again and again.",
]
HUGE_BYTES = 50 * 1024 * 1024
LONG_LINE_BYTES = 10 * 1024 * 1024


@dataclass
class Kind:
    name: str
    expected: dict[str, str]  # source -> "kept" | "dropped:<reason>" | "quarantined:<reason>"


@dataclass
class BadProject:
    root: Path
    config: Path
    domains: list[str]
    kinds: list[Kind] = field(default_factory=list)
    refused: dict[str, tuple[dict, str]] = field(default_factory=dict)  # kind -> (config overrides, reason)

    @property
    def n_kinds(self) -> int:
        return len({k.name for k in self.kinds}) + len(self.refused)


HOSTILE_MAX_BYTES = 64 * 1024
SHORT = "Short note {} here."  # four words: read, then dropped by cleaning as too_few_words


def _jsonl(*records: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def make_bad_project(root: Path) -> BadProject:
    root = Path(root)
    corpus = root / "corpus" / "bad"
    corpus.mkdir(parents=True)
    kinds: list[Kind] = []
    p = iter(PROSE)  # each kept document gets a paragraph of its own, so only the planted duplicates are duplicates

    def put(name: str, data: bytes, kind: str, expected: dict[str, str] | str) -> Path:
        path = corpus / name
        path.write_bytes(data)
        rel = f"corpus/bad/{name}"
        kinds.append(Kind(kind, expected if isinstance(expected, dict) else {rel: expected}))
        return path

    put("good_1.txt", next(p).encode(), "control_good_text", "kept")
    put("zero.txt", b"", "zero_byte_file", "quarantined:empty_file")
    put("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "binary_png", "quarantined:binary")
    put("tool.md", b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + bytes(300), "binary_elf", "quarantined:binary")
    put("noise.txt", bytes(range(0x80, 0x100)) * 4, "undecodable_bytes", "quarantined:decode_error")
    # Stray invalid UTF-8 in English text decodes as Windows-1252 (the legacy encoding such files come from).
    put("stray_bytes.txt", next(p).encode().replace(b" clear ", b" cl\xe9ar "), "invalid_utf8_in_text", "kept")
    put("utf16.txt", next(p).encode("utf-16"), "utf16_with_bom", "kept")
    put("latin1.txt", ("The menu lists crêpes and soufflés. " + next(p)).encode("latin-1"), "latin1", "kept")
    put("cut.txt.gz", gzip.compress(next(p).encode() * 40, mtime=0)[:60], "truncated_gzip", "quarantined:truncated_gzip")
    put("rows.jsonl", _jsonl({"text": next(p)}) + b'{"text": "never closed\n' + _jsonl([1, 2], {"text": next(p)}),
        "malformed_jsonl_mid_file", {"corpus/bad/rows.jsonl#L1": "kept", "corpus/bad/rows.jsonl#L2": "quarantined:malformed_json",
                                     "corpus/bad/rows.jsonl#L3": "quarantined:malformed_json", "corpus/bad/rows.jsonl#L4": "kept"})
    put("records.json", json.dumps([{"title": "no text here"}, {"text": 7}, {"text": "   "}]).encode(),
        "json_without_text_field", {"corpus/bad/records.json#0": "quarantined:missing_text_field",
                                    "corpus/bad/records.json#1": "quarantined:non_text_field",
                                    "corpus/bad/records.json#2": "quarantined:empty_text"})
    with open(corpus / "huge.txt", "wb") as f:  # 50 MB of prose: refused from its size, never read whole
        block = (PROSE[0] + "\n").encode() * 2000
        for _ in range(HUGE_BYTES // len(block) + 1):
            f.write(block)
    kinds.append(Kind("document_50mb", {"corpus/bad/huge.txt": "quarantined:document_too_large"}))
    long_line = b'{"text": "' + b"word " * (LONG_LINE_BYTES // 5) + b'"}\n'
    put("long_line.jsonl", long_line + _jsonl({"text": next(p)}), "single_line_10mb",
        {"corpus/bad/long_line.jsonl#L1": "quarantined:document_too_large", "corpus/bad/long_line.jsonl#L2": "kept"})
    put("nested.html", (b"<html><body>" + b"<div>" * 5000 + b"<p>deep</p>" + b"</div>" * 5000 + b"</body></html>"),
        "deeply_nested_html", "dropped:too_few_words")
    put("scripts.html", b"<html><head><script>var a = 1;</script></head><body><script>track('x')</script>"
        b"<style>p{}</style></body></html>", "html_only_scripts", "dropped:empty_after_extraction")
    put("nul_escape.jsonl", _jsonl({"text": next(p).replace(" the ", " the\u0000 ", 1)}), "nul_in_record",
        {"corpus/bad/nul_escape.jsonl#L1": "kept"})
    put("nul_raw.txt", b"Some text\x00with a NUL byte in the middle of it.", "nul_bytes_in_file", "quarantined:binary")
    locked = put("locked.txt", next(p).encode(), "unreadable_chmod_000",
                 "kept" if os.geteuid() == 0 else "quarantined:unreadable")
    locked.chmod(0)
    os.symlink("/proc/self/mem", corpus / "device.txt")
    kinds.append(Kind("unreadable_eio", {"corpus/bad/device.txt": "quarantined:unreadable"}))
    os.symlink(corpus / "gone.txt.orig", corpus / "gone.txt")
    kinds.append(Kind("broken_symlink", {"corpus/bad/gone.txt": "quarantined:broken_symlink"}))
    os.symlink(".", corpus / "loop")
    kinds.append(Kind("symlink_loop", {"corpus/bad/loop": "quarantined:symlink_loop"}))
    os.symlink("/etc/passwd", corpus / "escape.txt")
    kinds.append(Kind("symlink_out_of_root", {"corpus/bad/escape.txt": "quarantined:path_outside_root"}))
    put("table.csv", b'id,text\n1,"' + next(p).encode() + b'"\n2,"broken"quote,\n3,"after"\n', "csv_broken_quoting",
        {"corpus/bad/table.csv#L2": "kept", "corpus/bad/table.csv#L3": "quarantined:bad_csv"})
    buf = io.BytesIO()
    pq.write_table(pa.table({"body": ["text in the wrong column"], "n": [1]}), buf)
    put("wrong.parquet", buf.getvalue(), "parquet_wrong_schema", "quarantined:wrong_parquet_schema")
    # The same text in three files: one content id, and dedup keeps the first copy in stream (sorted path) order.
    # And two different texts under the same `id` field: ids are content hashes, so both are kept.
    dup = next(p).encode()
    put("dup_a.txt", dup, "duplicate_content_ids", {})
    put("dup_b.txt", dup, "duplicate_content_ids", {})
    put("dup_c.jsonl", _jsonl({"text": dup.decode()}), "duplicate_content_ids", {})
    kinds[-3:] = [Kind("duplicate_content_ids", {"corpus/bad/dup_a.txt": "kept", "corpus/bad/dup_b.txt": "dropped:exact_duplicate",
                                                 "corpus/bad/dup_c.jsonl#L1": "dropped:exact_duplicate"})]
    put("same_id.jsonl", _jsonl({"id": "7", "text": next(p)}, {"id": "7", "text": next(p)}), "duplicate_id_field",
        {"corpus/bad/same_id.jsonl#L1": "kept", "corpus/bad/same_id.jsonl#L2": "kept"})
    put("blank.md", b"  \n\t\n", "whitespace_only", "quarantined:empty_file")
    put("scan.pdf", b"%PDF-1.4 binary", "unsupported_format", "quarantined:unsupported_format")
    os.mkfifo(corpus / "pipe.txt")
    kinds.append(Kind("named_pipe", {"corpus/bad/pipe.txt": "quarantined:not_a_file"}))
    # A source path that does not exist and a domain with no document stop raw_corpus with the reason and the path
    # (llm_pipeline_tests/test_cli_errors.py), so they are not planted here.
    kinds.append(Kind("config_path_traversal", {"../../etc/passwd": "quarantined:path_outside_root"}))
    kinds.append(Kind("config_path_absolute", {"/etc/passwd": "quarantined:path_outside_root"}))

    _hostile(root, kinds)
    refused = {
        "source_inside_an_output": ({"path": "data/raw_corpus/bad/d"}, "source_inside_output"),
        "source_is_data_dir": ({"path": "data"}, "source_inside_output"),
        "source_inside_the_cache": ({"path": "data/.cache"}, "source_inside_output"),
    }

    config = {
        "data_dir": "data",
        "allowed_roots": ["/proc"],  # only for device.txt (see the module docstring)
        "domains": {
            "bad": {"sources": [{"path": "corpus/bad"},
                                {"path": "../../etc/passwd"}, {"path": "/etc/passwd"},
                                {"path": "corpus/hostile", "max_document_bytes": HOSTILE_MAX_BYTES},
                                {"path": "/etc"}, {"path": "../.."}]},
        },
        "deduped_shards": {"scope": "domain"},
        "cleaned_corpus": {"min_words": 8},
    }
    cfg_path = root / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    kinds.append(Kind("config_path_etc_folder", {"/etc": "quarantined:path_outside_root"}))
    kinds.append(Kind("config_path_above_project", {"../..": "quarantined:path_outside_root"}))
    return BadProject(root=root, config=cfg_path, domains=["bad"], kinds=kinds, refused=refused)


def _lines(texts: list[bytes]) -> bytes:
    return b"\n".join(texts) + b"\n"


def _short_rows(start: int, n: int, pad: int = 0) -> list[bytes]:
    """JSON Lines rows of short notes (dropped as too_few_words), padded so that n of them pass 64 KiB if asked."""
    return [json.dumps({"text": SHORT.format(i), "pad": "p" * pad}).encode() for i in range(start, start + n)]


def _gzip_of(unit: bytes, total: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:
        block = unit * (65536 // len(unit) + 1)
        for _ in range(total // len(block) + 1):
            f.write(block)
    return buf.getvalue()


def _hostile(root: Path, kinds: list[Kind]) -> None:
    """The kinds of the hostile-input issue: one file (or a few) per kind, in corpus/hostile."""
    folder = root / "corpus" / "hostile"
    folder.mkdir(parents=True)
    rel = "corpus/hostile"
    n = iter(range(10_000, 100_000))

    def put(name: str, data: bytes, kind: str, expected: dict[str, str] | str) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds.append(Kind(kind, expected if isinstance(expected, dict) else {f"{rel}/{name}": expected}))
        return path

    def rows_around(name: str, bad: bytes, outcome: str, before: int = 3, after: int = 3, pad: int = 0) -> tuple[bytes, dict]:
        """A JSON Lines file with `bad` as line before+1 between short notes; the expected outcome of every line."""
        first = next(n)
        for _ in range(before + after):
            next(n)
        lines = _short_rows(first, before, pad) + [bad] + _short_rows(first + before, after, pad)
        want = {f"{rel}/{name}#L{i}": "dropped:too_few_words" for i in range(1, len(lines) + 1)}
        want[f"{rel}/{name}#L{before + 1}"] = outcome
        return _lines(lines), want

    # -- one bad JSON Lines line costs that line only, at its own number (600 padded rows put it past 64 KiB)
    for kind, bad, outcome in [
        ("jsonl_bad_bytes_after_64k", b'{"text": "\x81\x8d\x8f\x90"}', "quarantined:decode_error"),
        ("jsonl_latin1_line_after_64k", b'{"text": "Caf\xe9 au lait."}', "dropped:too_few_words"),
        ("jsonl_nested_30k_deep", b"[" * 30_000 + b"]" * 30_000, "quarantined:malformed_json"),
        ("jsonl_integer_5000_digits", b'{"text": "n", "n": ' + b"7" * 5000 + b"}", "quarantined:malformed_json"),
    ]:
        data, want = rows_around(f"{kind}.jsonl", bad, outcome, before=600, after=5, pad=100)
        put(f"{kind}.jsonl", data, kind, want)
    for kind, bad, outcome in [
        ("jsonl_top_level_string", b'"just a string"', "quarantined:malformed_json"),
        ("jsonl_null_text", b'{"text": null}', "quarantined:missing_text_field"),
        ("jsonl_number_text", b'{"text": 12}', "quarantined:non_text_field"),
        ("jsonl_blank_text", b'{"text": " \\t "}', "quarantined:empty_text"),
        ("jsonl_lone_surrogate", b'{"text": "half a pair \\ud800 of surrogates"}', "quarantined:decode_error"),
        ("jsonl_nan_field", b'{"text": "Not a number.", "score": NaN}', "dropped:too_few_words"),
        ("jsonl_duplicate_keys", b'{"text": "first", "text": "Second wins."}', "dropped:too_few_words"),
        ("jsonl_trailing_garbage", b'{"text": "ok"} trailing', "quarantined:malformed_json"),
        ("jsonl_unicode_escapes", b'{"text": "\\u00e9t\\u00e9 \\ud83d\\ude00 ok"}', "dropped:too_few_words"),
    ]:
        data, want = rows_around(f"{kind}.jsonl", bad, outcome)
        put(f"{kind}.jsonl", data, kind, want)
    data, want = rows_around("crlf.jsonl", _short_rows(next(n), 1)[0], "dropped:too_few_words")
    put("crlf.jsonl", data.replace(b"\n", b"\r\n"), "jsonl_crlf_line_ends", want)
    first = next(n)
    blank = _short_rows(first, 1)[0] + b"\n\n\n" + _short_rows(first + 1, 1)[0] + b"\n"
    put("blank_lines.jsonl", blank, "jsonl_blank_lines_keep_numbers",
        {f"{rel}/blank_lines.jsonl#L1": "dropped:too_few_words", f"{rel}/blank_lines.jsonl#L4": "dropped:too_few_words"})
    first = next(n)
    members = gzip.compress(_lines(_short_rows(first, 2)), mtime=0) + gzip.compress(_lines(_short_rows(first + 2, 2)), mtime=0)
    put("members.jsonl.gz", members, "jsonl_gz_multiple_members",
        {f"{rel}/members.jsonl.gz#L{i}": "dropped:too_few_words" for i in range(1, 5)})
    # -- a truncated .jsonl.gz keeps every record before the cut and names the cut line
    first = next(n)
    for _ in range(200):
        next(n)
    full = gzip.compress(_lines(_short_rows(first, 200, pad=40)), mtime=0, compresslevel=1)
    cut = full[: len(full) * 2 // 3]
    got = zlib.decompressobj(31).decompress(cut)
    complete = got.count(b"\n")
    want = {f"{rel}/cut.jsonl.gz#L{i}": "dropped:too_few_words" for i in range(1, complete + 1)}
    want[f"{rel}/cut.jsonl.gz#L{complete + 1}"] = "quarantined:truncated_gzip"
    put("cut.jsonl.gz", cut, "jsonl_gz_truncated", want)
    put("not_gzip.jsonl.gz", _lines(_short_rows(next(n), 2)), "gz_suffix_not_gzip", "quarantined:bad_gzip")
    put("empty.txt.gz", gzip.compress(b"", mtime=0), "gz_of_nothing", "quarantined:empty_file")
    # -- whole JSON files
    put("deep.json", b"[" * 30_000 + b"]" * 30_000, "json_nested_30k_deep", "quarantined:malformed_json")
    put("bigint.json", b'{"text": "x", "n": ' + b"9" * 5000 + b"}", "json_integer_5000_digits", "quarantined:malformed_json")
    put("scalar.json", b"42", "json_top_level_number", "quarantined:malformed_json")
    put("empty_array.json", b"[]", "json_empty_array", "quarantined:empty_file")
    # -- bombs, with this source's 64 KiB cap: each unpacks or expands past it and is refused, never held whole
    put("zeros.txt.gz", _gzip_of(b"a", 4 << 20), "gzip_bomb_text", "quarantined:document_too_large")
    put("line.jsonl.gz", _gzip_of(b"a", 4 << 20), "gzip_bomb_jsonl_line",
        {f"{rel}/line.jsonl.gz#L1": "quarantined:document_too_large"})
    put("commas.csv.gz", gzip.compress(b"id,text\n" + b"," * (1 << 20) + b"\n", mtime=0), "gzip_bomb_csv_commas",
        {f"{rel}/commas.csv.gz#L2": "quarantined:document_too_large"})
    big = "word " * (HOSTILE_MAX_BYTES // 5 + 10)
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 40, pa.int32()), pa.array([big]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": column}), buf, compression="zstd")
    put("dictionary.parquet", buf.getvalue(), "parquet_dictionary_bomb",
        {f"{rel}/dictionary.parquet#{i}": "quarantined:document_too_large" for i in range(40)})
    buf = io.BytesIO()
    first = next(n)
    pq.write_table(pa.table({"text": [big + str(i) for i in range(10)] + [SHORT.format(first), None]}), buf,
                   compression="zstd", use_dictionary=False)
    want = {f"{rel}/rows.parquet.gz#{i}": "quarantined:document_too_large" for i in range(10)}
    want.update({f"{rel}/rows.parquet.gz#10": "dropped:too_few_words", f"{rel}/rows.parquet.gz#11": "quarantined:missing_text_field"})
    put("rows.parquet.gz", gzip.compress(buf.getvalue(), mtime=0), "parquet_gz_expansion_bomb", want)
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array([1, 2])}), buf)
    put("ints.parquet", buf.getvalue(), "parquet_integer_text_column", "quarantined:wrong_parquet_schema")
    put("cut.parquet", buf.getvalue()[: len(buf.getvalue()) // 2], "parquet_truncated", "quarantined:bad_parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), buf)
    put("no_rows.parquet", buf.getvalue(), "parquet_zero_rows", "quarantined:empty_file")
    # -- CSV
    put("no_text.csv", b"id,body\n1,hello\n", "csv_without_text_column", "quarantined:missing_text_field")
    put("header_only.csv", b"id,text\n", "csv_header_only", "quarantined:empty_file")
    first = next(n)
    put("ragged.csv", f"id,text\n1,{SHORT.format(first)}\n2,a,b,c\n3,{SHORT.format(first + 1)}\n".encode(), "csv_ragged_row",
        {f"{rel}/ragged.csv#L2": "dropped:too_few_words", f"{rel}/ragged.csv#L3": "quarantined:bad_csv",
         f"{rel}/ragged.csv#L4": "dropped:too_few_words"})
    # -- encodings and odd bytes
    put("utf16_no_bom.txt", "no byte order mark here".encode("utf-16-le"), "utf16_without_bom", "quarantined:binary")
    put("elf.jsonl", b"\x7fELF" + bytes(100), "binary_with_jsonl_suffix", "quarantined:binary")
    put("raw_nul.jsonl", _short_rows(next(n), 1)[0] + b"\x00\n", "raw_nul_in_jsonl", "quarantined:binary")
    put("only_newlines.jsonl", b"\n\n\n", "jsonl_only_blank_lines", "quarantined:empty_file")
    put("bom.txt", b"\xef\xbb\xbf" + SHORT.format(next(n)).encode(), "utf8_bom_short_text", "dropped:too_few_words")
    put("utf32.txt", SHORT.format(next(n)).encode("utf-32"), "utf32_with_bom", "dropped:too_few_words")
    put("cr_only.txt", SHORT.format(next(n)).replace(" ", "\r").encode(), "cr_only_line_ends", "dropped:too_few_words")
    put("escapes.txt", b"\x1b[31mRed\x1b[0m alert " + SHORT.format(next(n)).encode(), "terminal_escapes", "dropped:too_few_words")
    # -- unsupported and odd names
    put("archive.zip", b"PK\x03\x04" + bytes(60), "zip_archive", "quarantined:unsupported_format")
    put("bundle.tar.gz", gzip.compress(bytes(512), mtime=0), "tar_gz_archive", "quarantined:unsupported_format")
    put("README", b"no suffix at all", "file_without_suffix", "quarantined:unsupported_format")
    put("odd name \u00fc (1).txt", SHORT.format(next(n)).encode(), "odd_file_name", "dropped:too_few_words")
    put("x" * 200 + ".txt", SHORT.format(next(n)).encode(), "file_name_200_chars", "dropped:too_few_words")
    put("/".join(f"d{i}" for i in range(40)) + "/deep.txt", SHORT.format(next(n)).encode(), "folder_40_deep",
        "dropped:too_few_words")
    put(".hidden.txt", SHORT.format(next(n)).encode(), "dot_file_is_read", "dropped:too_few_words")
    # -- links out of the corpus
    outside = root.parent / "outside"  # beside the project: outside its root
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("outside the roots")
    os.symlink(outside, folder / "linked_dir")
    kinds.append(Kind("symlink_folder_out_of_root", {f"{rel}/linked_dir": "quarantined:path_outside_root"}))
    os.symlink("/etc/shadow", folder / "shadow.txt")
    kinds.append(Kind("symlink_to_etc_shadow", {f"{rel}/shadow.txt": "quarantined:path_outside_root"}))
    # -- special-token strings and invisible characters in otherwise good text: kept, and cleaned (see the test)
    for name, text in HOSTILE_PROSE.items():
        put(name, text.encode(), name.split(".")[0] + "_in_text", "kept")
    # -- adversarial markup (in corpus/bad, under the default 8 MiB cap): cleaned in linear time, then judged as text
    bad = root / "corpus" / "bad"
    for name, data, kind, outcome in MARKUP:
        (bad / name).write_bytes(data)
        kinds.append(Kind(kind, {f"corpus/bad/{name}": outcome}))


MARKUP = [  # (file, bytes, kind, outcome): each took seconds to minutes before the rules were bounded
    ("italics.md", b"*a " * 40_000, "md_unclosed_italics_120kb", "dropped:low_language_score"),
    ("underscores.md", b"_a " * 40_000, "md_unclosed_underscores_120kb", "dropped:low_language_score"),
    ("comments.xml", b"<!--a" * 24_000, "xml_unclosed_comments_120kb", "dropped:language_not_allowed"),
    ("cdata.xml", b"<![CDATA[a" * 12_000, "xml_unclosed_cdata_120kb", "dropped:language_not_allowed"),
    ("comments.html", b"<!--a" * 24_000, "html_unclosed_comments_120kb", "dropped:language_not_allowed"),
    ("divs.html", b"<div>" * 50_000 + b"<p>deep</p>", "html_50k_nested_divs", "dropped:too_few_words"),
    ("links.md", b"[a](" * 30_000, "md_unclosed_links_120kb", "dropped:language_not_allowed"),
    ("roles.rst", b":a" * 60_000, "rst_colon_run_120kb", "dropped:language_not_allowed"),
    ("refs.md", b"[a\n" * 40_000, "md_40k_unclosed_reference_lines", "dropped:language_not_allowed"),
    # Plain text whose shape used to cost memory per word or per blank (~25 bytes per byte of text): now counted
    # without building the word list past max_words, and only blanks that change are rewritten.
    ("two_letters.txt", b"ab " * 400_000, "txt_400k_two_letter_words", "dropped:too_many_words"),
    ("tabs.txt", b"ab\t" * 400_000, "txt_400k_tab_separated_words", "dropped:too_many_words"),
    ("letter_lines.txt", b"a\n" * 500_000, "txt_500k_one_letter_lines", "dropped:too_many_words"),
    ("url_only.txt", b"https://example.com/" + b"a" * 1_000_000, "txt_one_1mb_url", "dropped:empty_after_extraction"),
    ("zero_width.txt", "\u200b\u200d\ufeff".encode() * 100_000, "txt_900kb_zero_width_soup", "dropped:too_few_words"),
]


# Texts (kept) that carry special-token strings and invisible characters: the test checks what cleaning left.
HOSTILE_PROSE = {
    "special_tokens.txt": ("The clerk filed the lease at noon and <|endoftext|> the tenant signed <|user|> both copies "
                           "before <|assistant|> the office closed for the long weekend in early spring."),
    "invisible.txt": ("The inspector\u202e checked every\u200b smoke alarm in the\u2066 building and wrote the "
                      "results\u2069 into the\ufeff log book that the caretaker keeps beside the main door."),
}
