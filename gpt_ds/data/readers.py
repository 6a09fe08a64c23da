"""Streaming document readers: every supported input format becomes a stream of text parts, document by document.

Why parts: a document may be a 100 MB single line; it is read and handed on in pieces of at most PART_CHARS characters,
cut just before a whitespace run (the tokenizers used here give the same tokens either way), so memory stays flat.
Bad input is handled here once for every consumer: invalid UTF-8 is replaced and counted, empty documents are skipped
and counted, binary files / truncated gzip / jsonl lines without the text field are refused with the file named.
"""
from __future__ import annotations

import codecs
import csv
import glob
import gzip
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gpt_ds.errors import GptDsError

PART_CHARS = 1 << 20          # a document is handed on in parts of at most ~1M characters
READ_BYTES = 1 << 20          # bytes read per chunk from a text file
SNIFF_BYTES = 8192            # bytes looked at to refuse binary files
TEXT_SUFFIXES = (".txt", ".text", ".md", ".txt.gz")
FORMATS = ".txt/.text/.md(.gz), .jsonl/.json(.gz), .parquet, .csv, or a folder saved with datasets' save_to_disk"

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")   # a blank line (and any run of whitespace after it) ends a document


@dataclass
class Input:
    path: Path
    fmt: str  # txt | jsonl | parquet | csv | hf


@dataclass
class ReadStats:
    """Counts for one input (summed into the store's manifest)."""
    documents: int = 0
    empty_documents: int = 0
    invalid_utf8: int = 0      # invalid byte sequences, each replaced by U+FFFD
    chars: int = 0

    def add(self, other: "ReadStats") -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


# ---------------------------------------------------------------------------------------------------- input discovery


def _format_of(p: Path) -> str | None:
    name = p.name.lower()
    if p.is_dir():
        if any((p / f).exists() for f in ("state.json", "dataset_dict.json", "dataset_info.json")):
            return "hf"
        return None
    if name.endswith(TEXT_SUFFIXES):
        return "txt"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    return None


def expand_inputs(paths: list[str] | tuple[str, ...]) -> list[Input]:
    """Files, folders (walked recursively, sorted) and globs -> a deterministic list of inputs."""
    out: list[Input] = []
    for raw in paths:
        raw = str(raw)
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            raise GptDsError(f"input '{raw}' matches no file; check the path or the glob pattern")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise GptDsError(f"input '{p}' does not exist; check the path")
            fmt = _format_of(p)
            if fmt is not None:
                out.append(Input(p, fmt))
            elif p.is_dir():
                out.extend(_walk(p))
            else:
                raise GptDsError(f"input '{p}' has an unsupported format; supported: {FORMATS}")
    seen, unique = set(), []
    for inp in out:
        key = os.path.abspath(inp.path)
        if key not in seen:
            seen.add(key)
            unique.append(inp)
    if not unique:
        raise GptDsError(f"inputs {list(paths)} hold no readable file ({FORMATS})")
    return unique


def _walk(root: Path) -> list[Input]:
    """Known formats under root, depth first, in name order (a datasets folder counts as one input)."""
    found = []
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            continue
        fmt = _format_of(p)
        if fmt is not None:
            found.append(Input(p, fmt))
        elif p.is_dir():
            found.extend(_walk(p))
    return found


# ------------------------------------------------------------------------------------------------------ byte streams


class _Decoder:
    """Incremental UTF-8 decoding that replaces invalid bytes and counts them."""

    def __init__(self, stats: ReadStats):
        self.stats = stats
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="gpt_ds_count")

    def __call__(self, data: bytes, final: bool = False) -> str:
        _COUNT[0] = 0
        text = self._dec.decode(data, final)
        self.stats.invalid_utf8 += _COUNT[0]
        return text


_COUNT = [0]


def _count_replace(exc: UnicodeDecodeError):
    _COUNT[0] += 1
    return "\ufffd", exc.end


codecs.register_error("gpt_ds_count", _count_replace)


def _open_bytes(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _chunks(path: Path) -> Iterator[bytes]:
    """Raw bytes in READ_BYTES chunks; the first chunk is checked for binary content; gzip errors name the file."""
    try:
        with _open_bytes(path) as f:
            first = True
            while True:
                data = f.read(READ_BYTES)
                if first:
                    _refuse_binary(path, data[:SNIFF_BYTES])
                    first = False
                if not data:
                    return
                yield data
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise GptDsError(f"{path}: the gzip stream is damaged or truncated ({e}); re-create or re-download the file")


def _refuse_binary(path: Path, head: bytes) -> None:
    if b"\x00" in head:
        raise GptDsError(f"{path}: looks like a binary file (NUL bytes), not text; remove it from the inputs")
    bad = len(head) - len(head.decode("utf-8", errors="ignore").encode("utf-8"))
    if len(head) >= 64 and bad > 0.3 * len(head):
        raise GptDsError(f"{path}: looks like a binary file ({bad} of the first {len(head)} bytes are not UTF-8); "
                         f"remove it from the inputs or convert it to UTF-8 text")


def split_parts(text: str, limit: int = PART_CHARS) -> list[str]:
    """Cut a long text into parts of <= limit chars, each cut placed before a whitespace run where one exists."""
    parts = []
    while len(text) > limit:
        cut = _cut_point(text, limit)
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


def _cut_point(text: str, limit: int) -> int:
    window = text[max(0, limit - 65536):limit + 1]
    base = max(0, limit - 65536)
    for i in range(len(window) - 1, 0, -1):
        if window[i].isspace() and not window[i - 1].isspace():
            return base + i
    return limit


# -------------------------------------------------------------------------------------------------------- documents
# Each reader yields (text_part, last) pairs; `last` closes the document. Empty documents yield nothing.


def iter_parts(inp: Input, stats: ReadStats, *, text_field: str = "text", txt_mode: str = "blank-line",
               skip_docs: int = 0) -> Iterator[tuple[str, bool]]:
    """All documents of one input as text parts; `skip_docs` non-empty documents are read past without yielding."""
    if inp.fmt == "txt":
        gen = _txt_parts(inp.path, stats, txt_mode)
    elif inp.fmt in ("jsonl", "parquet", "csv", "hf"):
        gen = _record_parts(_RECORD_READERS[inp.fmt](inp.path, text_field, stats), stats)
    else:
        raise GptDsError(f"{inp.path}: unknown format {inp.fmt}")
    done = 0
    for text, last in gen:
        if done >= skip_docs:
            yield text, last
        if last:
            done += 1


def _txt_parts(path: Path, stats: ReadStats, mode: str) -> Iterator[tuple[str, bool]]:
    decode = _Decoder(stats)
    buf, started = "", False  # started: the current document has shown a non-whitespace character

    def emit(text: str, last: bool):
        nonlocal started
        if not started:
            text = text.lstrip()
            if not text:
                if last:
                    stats.empty_documents += 1
                return
            started = True
        if last:
            text = text.rstrip()
            stats.documents += 1
            started = False
        stats.chars += len(text)
        yield text, last

    chunks = _chunks(path)
    eof = False
    while not eof:
        data = next(chunks, None)
        eof = data is None
        buf += decode(b"" if eof else data, final=eof)
        if mode == "blank-line":
            pos = 0  # documents are sliced out by position; the buffer is trimmed once per chunk
            while True:
                m = _BLANK_LINE.search(buf, pos)
                if m is None or (m.end() == len(buf) and not eof):
                    break
                yield from emit(buf[pos:m.start()], True)
                pos = m.end()
            buf = buf[pos:]
        while len(buf) > PART_CHARS:
            cut = _cut_point(buf, PART_CHARS)  # before a whitespace run: a blank line is never split
            yield from emit(buf[:cut], False)
            buf = buf[cut:]
    yield from emit(buf, True)


def _record_parts(texts: Iterator[str | None], stats: ReadStats) -> Iterator[tuple[str, bool]]:
    for text in texts:
        text = (text or "").strip()
        if not text:
            stats.empty_documents += 1
            continue
        stats.documents += 1
        stats.chars += len(text)
        parts = split_parts(text)
        for i, part in enumerate(parts):
            yield part, i == len(parts) - 1


def _lines(path: Path, stats: ReadStats) -> Iterator[str]:
    decode = _Decoder(stats)
    buf = ""
    for data in _chunks(path):
        buf += decode(data)
        lines = buf.split("\n")
        buf = lines.pop()
        yield from lines
    buf += decode(b"", final=True)
    if buf:
        yield buf


def _jsonl(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    for no, line in enumerate(_lines(path, stats), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptDsError(f"{path}:{no}: not valid JSON ({e.msg}); fix or remove the line")
        if not isinstance(rec, dict) or field_ not in rec:
            keys = list(rec)[:8] if isinstance(rec, dict) else type(rec).__name__
            raise GptDsError(f"{path}:{no}: the record has no field '{field_}' (it has {keys}); "
                             f"pass --text-field with the name of the text field")
        value = rec[field_]
        if value is not None and not isinstance(value, str):
            raise GptDsError(f"{path}:{no}: field '{field_}' is {type(value).__name__}, not text")
        yield value


def _csv(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(_lines_keepends(path, stats))
    header = next(reader, None)
    if header is None:
        return
    if field_ not in header:
        raise GptDsError(f"{path}: the CSV header has no column '{field_}' (columns: {header[:12]}); "
                         f"pass --text-field with the name of the text column")
    col = header.index(field_)
    for row in reader:
        yield row[col] if col < len(row) else None


def _lines_keepends(path: Path, stats: ReadStats) -> Iterator[str]:
    for line in _lines(path, stats):
        yield line + "\n"


def _parquet(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise GptDsError(f"{path}: not a readable parquet file ({e})")
    names = pf.schema_arrow.names
    if field_ not in names:
        raise GptDsError(f"{path}: the parquet file has no column '{field_}' (columns: {names[:12]}); "
                         f"pass --text-field with the name of the text column")
    for batch in pf.iter_batches(batch_size=256, columns=[field_]):
        yield from batch.column(0).to_pylist()


def _hf(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    import datasets
    ds = datasets.load_from_disk(str(path))
    splits = [ds[k] for k in sorted(ds)] if isinstance(ds, datasets.DatasetDict) else [ds]
    for split in splits:
        if field_ not in split.column_names:
            raise GptDsError(f"{path}: the dataset has no column '{field_}' (columns: {split.column_names[:12]}); "
                             f"pass --text-field with the name of the text column")
        for batch in split.select_columns([field_]).iter(batch_size=256):
            yield from batch[field_]


_RECORD_READERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "hf": _hf}


def iter_documents(inputs: list[Input], stats: ReadStats | None = None, **kw) -> Iterator[str]:
    """Whole documents (joined parts): for small corpora and tokenizer training samples."""
    stats = stats if stats is not None else ReadStats()
    for inp in inputs:
        pieces: list[str] = []
        for text, last in iter_parts(inp, stats, **kw):
            pieces.append(text)
            if last:
                yield "".join(pieces)
                pieces = []


__all__ = ["Input", "ReadStats", "expand_inputs", "iter_parts", "iter_documents", "split_parts", "FORMATS"]
