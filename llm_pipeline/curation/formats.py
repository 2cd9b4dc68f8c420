"""From the bytes of one file to document texts: encoding detection and one small parser per file format.

A parser takes an ``open_binary`` callable (a fresh binary stream per call, already decompressing ``.gz``), the
record field that holds the text, and ``max_bytes``, the most one document may weigh, and yields ``Text(locator, text)`` for every document and ``Bad(locator, reason, detail, nbytes)`` for every piece of
input it cannot use, so a bad row never hides the good rows around it. ``locator`` is appended to the file's source
path: ``""`` for a whole file, ``"#L<line>"`` for a JSON Lines or CSV row, ``"#<index>"`` for an array or Parquet row.
Record formats stream (JSON Lines, CSV, Parquet); a plain JSON file is parsed whole, as JSON cannot be streamed
without another dependency. Errors of the stream itself (truncated gzip, permissions) are left to the caller.
Nothing is read into memory beyond ``max_bytes`` (plus one line buffer): a bigger document, JSON file, JSON Lines
line or CSV field becomes ``Bad(..., "document_too_large", ...)`` and the rest of its line or file is skipped over.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

SNIFF_BYTES = 64 * 1024  # enough to see a BOM, NUL bytes of a binary file, and a representative sample for charset guessing

# file suffix -> the `format` a document records
WHOLE_FILE_FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".rst": "rst",
                      ".html": "html", ".htm": "html", ".xhtml": "html", ".xml": "xml"}
RECORD_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}

# Longest BOMs first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


class Text(NamedTuple):
    locator: str
    text: str


class Bad(NamedTuple):
    locator: str
    reason: str
    detail: str
    nbytes: int = 0


Opener = Callable[[], IO[bytes]]


class DecodeFailed(ValueError):
    pass


def too_large(locator: str, size: int | None, max_bytes: int) -> Bad:
    """`size` is in bytes, or characters for a skipped text line (at least as many bytes); None when not counted."""
    shown = f"{size:,} bytes" if size is not None else "more bytes"
    return Bad(locator, "document_too_large", f"{shown} where a source allows {max_bytes:,} (max_document_bytes)", size or 0)


def _read_bounded(open_binary: Opener, max_bytes: int) -> tuple[bytes | None, Bad | None]:
    """The whole stream, or `document_too_large` once it passes max_bytes (never holding more than that)."""
    with open_binary() as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None, too_large("", None, max_bytes)
    return data, None


# ---------------------------------------------------------------- encodings
def bom_encoding(head: bytes) -> str | None:
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return None


def is_binary(head: bytes) -> bool:
    """NUL bytes never occur in text unless it is UTF-16/32, which announces itself with a BOM."""
    return bom_encoding(head) is None and b"\x00" in head


def guess_encoding(sample: bytes) -> str:
    """UTF-8 (BOM or not), UTF-16/32 by BOM, then Windows-1252 (the usual legacy encoding of Western text), then a
    statistical guess. Raises DecodeFailed when nothing decodes the sample cleanly."""
    if enc := bom_encoding(sample):
        return enc
    for enc in ("utf-8", "cp1252"):
        try:
            codecs.getincrementaldecoder(enc)().decode(sample, final=False)  # a sample may end mid-character
            return enc
        except UnicodeDecodeError:
            pass
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - it ships with `requests`, which `datasets` needs
        raise DecodeFailed("not UTF-8 or Windows-1252, and no charset detector is installed") from None
    best = from_bytes(sample).best()
    if best is None:
        raise DecodeFailed("not UTF-8, UTF-16/32 with a BOM or Windows-1252, and no other charset fits")
    return best.encoding


def decode(data: bytes) -> tuple[str, str]:
    enc = guess_encoding(data)
    try:
        return data.decode(enc), enc
    except UnicodeDecodeError as exc:
        raise DecodeFailed(f"{enc}: {exc.reason} at byte {exc.start}") from None


def sniff(open_binary: Opener) -> bytes:
    """The first SNIFF_BYTES of the stream, or as many as a cut-short compressed file yields (its cut is reported
    where the records are read, after the records before it)."""
    parts: list[bytes] = []
    got = 0
    with open_binary() as f:
        read = getattr(f, "read1", f.read)  # one underlying read at a time: what came before a cut is kept
        try:
            while got < SNIFF_BYTES and (block := read(SNIFF_BYTES - got)):
                parts.append(block)
                got += len(block)
        except (EOFError, gzip.BadGzipFile, zlib.error):
            if not parts:
                raise  # nothing readable at all: a whole-file problem, reported by the caller
    return b"".join(parts)


def _open_text(open_binary: Opener) -> tuple[IO[str] | None, Bad | None]:
    """A text stream over the file with a sniffed encoding, or the reason there is none."""
    head = sniff(open_binary)
    if not head.strip():
        return None, Bad("", "empty_file", "no content", len(head))
    if is_binary(head):
        return None, Bad("", "binary", "NUL bytes in the first 64 KiB", len(head))
    try:
        enc = guess_encoding(head)
    except DecodeFailed as exc:
        return None, Bad("", "decode_error", str(exc), len(head))
    return io.TextIOWrapper(open_binary(), encoding=enc, errors="strict", newline=""), None


# ---------------------------------------------------------------- whole-file formats
def parse_whole(open_binary: Opener, text_field: str, max_bytes: int) -> Iterator[Text | Bad]:
    """One document per file; HTML and XML keep their markup (main-text extraction happens in cleaning)."""
    data, bad = _read_bounded(open_binary, max_bytes)
    if bad:
        yield bad
        return
    if is_binary(data[:SNIFF_BYTES]):
        yield Bad("", "binary", "NUL bytes in the first 64 KiB", len(data))
        return
    try:
        text, _ = decode(data)
    except DecodeFailed as exc:
        yield Bad("", "decode_error", str(exc), len(data))
        return
    if not text.strip():
        yield Bad("", "empty_file", "no content" if not data else "only whitespace", len(data))
        return
    yield Text("", text)


# ---------------------------------------------------------------- records
def field_text(record: Any, text_field: str, locator: str, nbytes: int) -> Text | Bad:
    """The text of one record, or why it has none."""
    if not isinstance(record, dict):
        return Bad(locator, "malformed_json", f"a record must be a JSON object, got {type(record).__name__}", nbytes)
    value = record.get(text_field)
    if value is None:
        keys = ", ".join(sorted(map(str, record))[:8])
        return Bad(locator, "missing_text_field", f"no {text_field!r} field (fields: {keys})", nbytes)
    if not isinstance(value, str):
        return Bad(locator, "non_text_field", f"{text_field!r} is a {type(value).__name__}, not a string", nbytes)
    if not value.strip():
        return Bad(locator, "empty_text", f"{text_field!r} is blank", nbytes)
    return Text(locator, value)


def parse_json(open_binary: Opener, text_field: str, max_bytes: int) -> Iterator[Text | Bad]:
    """An array of records, or one record (parsed whole, so the file must fit in max_bytes)."""
    data, bad = _read_bounded(open_binary, max_bytes)
    if bad:
        yield bad
        return
    if not data.strip():
        yield Bad("", "empty_file", "no content", len(data))
        return
    try:
        text, _ = decode(data)
        obj = json.loads(text)
    except DecodeFailed as exc:
        yield Bad("", "decode_error", str(exc), len(data))
        return
    except json.JSONDecodeError as exc:
        yield Bad("", "malformed_json", f"line {exc.lineno} column {exc.colno}: {exc.msg}", len(data))
        return
    except RecursionError:
        yield Bad("", "malformed_json", "nested too deeply to parse", len(data))
        return
    except ValueError as exc:  # an integer of more digits than Python converts
        yield Bad("", "malformed_json", str(exc)[:200], len(data))
        return
    if isinstance(obj, list):
        if not obj:
            yield Bad("", "empty_file", "an empty JSON array", len(data))
        for i, record in enumerate(obj):
            yield field_text(record, text_field, f"#{i}", 0)
    else:
        yield field_text(obj, text_field, "", len(data))


def _bounded_lines(stream: IO[str], max_chars: int) -> Iterator[tuple[str, int]]:
    """(line, 0) pairs, or ("", length) for a line over max_chars, skipped through a bounded piece at a time."""
    while True:
        line = stream.readline(max_chars + 1)
        if not line:
            return
        if len(line) <= max_chars or line.endswith("\n"):
            yield line, 0
            continue
        length = len(line)
        while line and not line.endswith("\n"):
            line = stream.readline(1 << 20)
            length += len(line)
        yield "", length


def _binary_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(line, 0) pairs, or (b"", length) for a line over max_bytes, skipped through a bounded piece at a time."""
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, 0
            continue
        length = len(line)
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 20)
            length += len(line)
        yield b"", length


def _json_record(line: str, locator: str, text_field: str) -> Text | Bad:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Bad(locator, "malformed_json", f"column {exc.colno}: {exc.msg}", len(line))
    except RecursionError:  # "[[[[..." a hundred thousand deep
        return Bad(locator, "malformed_json", "nested too deeply to parse", len(line))
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return Bad(locator, "malformed_json", str(exc)[:200], len(line))
    return field_text(record, text_field, locator, len(line))


def _decode_line(raw: bytes, encoding: str) -> str:
    """One line in the file's encoding; a UTF-8 file's stray legacy line decodes as Windows-1252, as a whole text
    file with stray invalid UTF-8 does (see guess_encoding). Raises UnicodeDecodeError when neither fits."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        if encoding not in ("utf-8", "utf-8-sig"):
            raise
        return raw.decode("cp1252")


def line_encoding(head: bytes) -> str | None:
    """The encoding of a line-per-record file whose lines can be cut as bytes at b"\\n" (None: empty, binary, not
    decodable, or UTF-16/32)."""
    if not head.strip() or is_binary(head):
        return None
    try:
        encoding = guess_encoding(head)
    except DecodeFailed:
        return None
    return encoding if "\n".encode(encoding.removesuffix("-sig")) == b"\n" else None


def line_cuts(path, every: int, block: int = 1 << 22) -> list[tuple[int, int]]:
    """(byte offset, lines before it) of the start of line 1, every+1, 2*every+1, ... of a file: where a file of
    line records is cut into tasks of `every` lines (one sequential read; lines are counted as parse_jsonl counts
    them, up to and including each b"\\n")."""
    import numpy as np

    cuts = [(0, 0)]
    lines = pos = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1  # one past each newline
            counts = lines + 1 + np.arange(len(ends))  # lines ended so far at each of them
            at = np.flatnonzero(counts % every == 0)
            cuts += [(pos + int(ends[k]), int(counts[k])) for k in at]
            lines += len(ends)
            pos += len(chunk)
    if cuts[-1][0] >= pos and len(cuts) > 1:  # the file ends on a cut: no empty last task
        cuts.pop()
    return cuts


def parse_jsonl(open_binary: Opener, text_field: str, max_bytes: int, part: tuple[int, int, int] | None = None) -> Iterator[Text | Bad]:
    """One record per line. Each line is decoded and parsed on its own, so a bad byte, a line nested too deeply or
    an absurd integer costs that line only, and a compressed stream cut short keeps every line before the cut.

    `part` = (start byte, stop byte, lines before start): only the lines that start in [start, stop), numbered as in
    the whole file (a task's share of a large file; the encoding is still sniffed from the file's head)."""
    head = sniff(open_binary)
    if not head.strip():
        yield Bad("", "empty_file", "no content", len(head))
        return
    if is_binary(head):
        yield Bad("", "binary", "NUL bytes in the first 64 KiB", len(head))
        return
    try:
        encoding = guess_encoding(head)
    except DecodeFailed as exc:
        yield Bad("", "decode_error", str(exc), len(head))
        return
    if "\n".encode(encoding.removesuffix("-sig")) != b"\n":  # UTF-16/32: lines cannot be split as bytes
        yield from _parse_jsonl_text(open_binary, text_field, max_bytes)
        return
    start, stop, lineno = part if part is not None else (0, None, 0)
    with open_binary() as f:
        try:
            f.seek(start)
            pos = start
            for lineno, (raw, skipped) in enumerate(_binary_lines(f, max_bytes), lineno + 1):
                if stop is not None and pos >= stop:
                    break  # this line starts in the next task's range
                pos += skipped or len(raw)
                locator = f"#L{lineno}"
                if skipped:
                    yield too_large(locator, skipped, max_bytes)
                    continue
                try:
                    line = _decode_line(raw, encoding)
                except UnicodeDecodeError as exc:
                    yield Bad(locator, "decode_error", f"{encoding}: {exc.reason} at byte {exc.start} of the line", len(raw))
                    continue
                if not line.strip():
                    continue  # blank lines separate nothing in JSON Lines; a trailing newline is common
                yield _json_record(line, locator, text_field)
        except EOFError as exc:
            yield Bad(f"#L{lineno + 1}", "truncated_gzip",
                      f"the compressed file ends inside line {lineno + 1} ({exc}); the {lineno} lines before it were read")
        except (gzip.BadGzipFile, zlib.error) as exc:
            yield Bad(f"#L{lineno + 1}", "bad_gzip",
                      f"corrupt compressed data from line {lineno + 1} on ({exc}); the {lineno} lines before it were read")


def _parse_jsonl_text(open_binary: Opener, text_field: str, max_bytes: int) -> Iterator[Text | Bad]:
    stream, bad = _open_text(open_binary)
    if bad:
        yield bad
        return
    with stream:
        lineno = 0
        try:
            # A character is at least one byte, so max_bytes characters bound the bytes a line may take; the exact
            # UTF-8 size is checked again when the document is made.
            for lineno, (line, skipped) in enumerate(_bounded_lines(stream, max_bytes), 1):
                if skipped:
                    yield too_large(f"#L{lineno}", skipped, max_bytes)
                    continue
                if not line.strip():
                    continue
                yield _json_record(line, f"#L{lineno}", text_field)
        except UnicodeDecodeError as exc:
            yield Bad(f"#L{lineno + 1}", "decode_error", f"{stream.encoding}: {exc.reason}; the rest of the file is skipped")


def parse_csv(open_binary: Opener, text_field: str, max_bytes: int) -> Iterator[Text | Bad]:
    stream, bad = _open_text(open_binary)
    if bad:
        yield bad
        return
    # Documents are long fields (the default 128 KiB limit would reject them), but a field is held whole in memory,
    # and an unclosed quote makes the rest of the file one field: the source's document cap bounds both.
    csv.field_size_limit(max_bytes)
    def lines() -> Iterator[str]:
        # Lines of at most max_bytes characters: a gzip bomb of one line of commas would otherwise become a row of
        # hundreds of millions of fields before the field-size limit ever applies.
        while line := stream.readline(max_bytes + 1):
            if len(line) > max_bytes and not line.endswith("\n"):
                raise csv.Error(f"field larger than field limit ({max_bytes:,}): a line over max_document_bytes")
            yield line

    with stream:
        reader = csv.reader(lines(), strict=True)
        start = 1
        try:
            header = next(reader, None)
            if not header:
                yield Bad("", "empty_file", "no header row")
                return
            if text_field not in header:
                yield Bad("", "missing_text_field", f"no {text_field!r} column (columns: {', '.join(header[:8])})")
                return
            col = header.index(text_field)
            start = reader.line_num + 1
            for row in reader:
                locator = f"#L{start}"
                start = reader.line_num + 1
                if not row:
                    continue
                if len(row) != len(header):
                    yield Bad(locator, "bad_csv", f"{len(row)} fields where the header has {len(header)}")
                    continue
                yield field_text(dict(zip(header, row)), text_field, locator, sum(map(len, row)))
        except csv.Error as exc:
            reason = "document_too_large" if "field larger than field limit" in str(exc) else "bad_csv"
            yield Bad(f"#L{start}", reason, f"{exc}; the rest of the file is skipped")
        except UnicodeDecodeError as exc:
            yield Bad(f"#L{start}", "decode_error", f"{stream.encoding}: {exc.reason}; the rest of the file is skipped")


# A dictionary-encoded text column holds each distinct value once per row group, and that dictionary page is read
# whole before any row: a row group whose text dictionary weighs more than this uncompressed is refused, not read.
# Writers cap dictionary pages at 1 MiB by default and fall back to plain pages, so only a crafted file comes near.
PARQUET_DICTIONARY_MAX_BYTES = 256 << 20


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _dictionary_page_bytes(source: Any, chunk: Any) -> int:
    """The uncompressed size a column chunk's dictionary page declares in its header (0 when it has none).

    Parquet page headers are Thrift compact structs whose field 2 is `uncompressed_page_size`; reading it takes a
    few bytes, where asking Arrow would decode the whole page. An unreadable header counts as too large."""
    offset = chunk.dictionary_page_offset
    if not chunk.has_dictionary_page or offset is None:
        return 0
    try:
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            with open(source, "rb") as f:
                f.seek(offset)
                head = f.read(64)
        else:
            where = source.tell()
            source.seek(offset)
            head = source.read(64)
            source.seek(where)
        pos, field = 0, 0
        while pos < len(head):
            byte = head[pos]
            pos += 1
            delta, kind = byte >> 4, byte & 0x0F
            if delta == 0 or kind != 5:  # not the plain i32 fields that open a PageHeader
                break
            field += delta
            value, pos = _varint(head, pos)
            if field == 2:
                return (value >> 1) ^ -(value & 1)  # zigzag
    except (OSError, IndexError):
        pass
    return PARQUET_DICTIONARY_MAX_BYTES + 1
# A gzipped Parquet file is unpacked to a temporary file (Parquet needs random access); at most this much.
GUNZIPPED_PARQUET_MAX_BYTES = 4 << 30


def parse_parquet(source: Any, text_field: str, max_bytes: int | None = None, batch_size: int = 1024,
                  row_groups: tuple[int, int] | None = None) -> Iterator[Text | Bad]:
    """``source`` is a path or a seekable binary buffer (Parquet needs random access to read its footer).
    `row_groups` = [first, stop) reads only those row groups (a task's share of a large file), rows numbered as in
    the whole file.

    Memory stays bounded whatever the file claims: batches are sized from the row groups' uncompressed sizes, the
    text column is read dictionary-encoded, and each row's length is checked against ``max_bytes`` from the
    column's offsets (or its dictionary's) before the row becomes a Python string, so 300 rows pointing at one
    7 MiB dictionary value cost 7 MiB, not 2 GB."""
    from llm_pipeline.io import rows_per_batch

    try:
        schema = pq.ParquetFile(source).schema_arrow
        if text_field in schema.names:
            pf = pq.ParquetFile(source, read_dictionary=[text_field])
    except (pa.ArrowException, OSError) as exc:
        yield Bad("", "bad_parquet", str(exc)[:300])
        return
    if text_field not in schema.names:
        yield Bad("", "wrong_parquet_schema", f"no {text_field!r} column (columns: {', '.join(schema.names[:8])})")
        return
    schema = pf.schema_arrow
    kind = schema.field(text_field).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        yield Bad("", "wrong_parquet_schema", f"column {text_field!r} has type {kind}, not string")
        return
    meta = pf.metadata
    first, last = row_groups if row_groups is not None else (0, meta.num_row_groups)
    index = sum(meta.row_group(g).num_rows for g in range(first))
    try:
        for group in range(first, last):
            rg = meta.row_group(group)
            chunk = next((rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == text_field), None)
            weight = _dictionary_page_bytes(source, chunk) if chunk is not None else 0
            if weight > PARQUET_DICTIONARY_MAX_BYTES:
                for _ in range(rg.num_rows):
                    yield Bad(f"#{index}", "document_too_large",
                              f"row group {group}'s text dictionary is {weight:,} bytes uncompressed; it is not read")
                    index += 1
                continue
            rows = rows_per_batch(pf, [text_field], batch_size)
            for batch in pf.iter_batches(batch_size=rows, row_groups=[group], columns=[text_field]):
                for item in _parquet_rows(batch.column(0), text_field, index, max_bytes):
                    yield item
                index += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        yield Bad(f"#{index}", "bad_parquet", f"{str(exc)[:300]}; the rest of the file is skipped")


def _parquet_rows(column: pa.Array, text_field: str, start: int, max_bytes: int | None) -> Iterator[Text | Bad]:
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        values, indices = column.dictionary, column.indices
        lengths = pc.binary_length(values).to_pylist()
        for i, k in enumerate(indices.to_pylist()):
            if k is None:
                yield field_text({text_field: None}, text_field, f"#{start + i}", 0)
            elif max_bytes is not None and lengths[k] > max_bytes:
                yield too_large(f"#{start + i}", lengths[k], max_bytes)
            else:
                yield field_text({text_field: values[k].as_py()}, text_field, f"#{start + i}", 0)
        return
    lengths = pc.binary_length(column).to_pylist()
    for i, n in enumerate(lengths):
        if n is not None and max_bytes is not None and n > max_bytes:
            yield too_large(f"#{start + i}", n, max_bytes)
        else:
            yield field_text({text_field: column[i].as_py()}, text_field, f"#{start + i}", 0)


def parse_buffered_parquet(open_binary: Opener, text_field: str, max_bytes: int) -> Iterator[Text | Bad]:
    """A gzipped Parquet file: unpacked, a block at a time, to a temporary file (Parquet cannot be read front to
    back), refused once it passes GUNZIPPED_PARQUET_MAX_BYTES; then read like any Parquet file."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="llmp-parquet-", suffix=".parquet") as spool:
        written = 0
        with open_binary() as f:
            while block := f.read(1 << 20):
                written += len(block)
                if written > GUNZIPPED_PARQUET_MAX_BYTES:
                    yield Bad("", "document_too_large", f"unpacks to more than {GUNZIPPED_PARQUET_MAX_BYTES:,} bytes; "
                                                      "not read", 0)
                    return
                spool.write(block)
        spool.flush()
        yield from parse_parquet(spool.name, text_field, max_bytes)


PARSERS: dict[str, Callable[[Opener, str, int], Iterator[Text | Bad]]] = {
    **{fmt: parse_whole for fmt in set(WHOLE_FILE_FORMATS.values())},
    "json": parse_json,
    "jsonl": parse_jsonl,
    "csv": parse_csv,
    "parquet": parse_buffered_parquet,
}
