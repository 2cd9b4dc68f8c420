"""A generator of bad input: a small project (corpus folders + config) holding 20+ kinds of broken files.

    project = make_bad_project(tmp_path / "project")
    cfg = load_config(project.config, root=project.root)
    for kind in project.kinds: kind.name, kind.sources, kind.expected

Each `Kind` names the sources (as raw_corpus records them, relative to the project root; ``#L<n>`` etc. for rows)
and what must become of each of them by the end of deduped_shards: ``kept``, ``dropped:<reason>`` (in the stage
that drops it) or ``quarantined:<reason>``. Good prose documents sit beside the bad ones, so a bad file that stopped
a stage, or swallowed its neighbours, shows up as a missing or changed outcome.

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

    config = {
        "data_dir": "data",
        "allowed_roots": ["/proc"],  # only for device.txt (see the module docstring)
        "domains": {
            "bad": {"sources": [{"path": "corpus/bad"},
                                {"path": "../../etc/passwd"}, {"path": "/etc/passwd"}]},
        },
        "deduped_shards": {"scope": "domain"},
        "cleaned_corpus": {"min_words": 8},
    }
    cfg_path = root / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return BadProject(root=root, config=cfg_path, domains=["bad"], kinds=kinds)
