"""Streaming document readers: every supported input format becomes a stream of text parts, document by document.

Why parts: a document may be a 100 MB single line; it is read and handed on in pieces of at most textio.PART_CHARS
characters, cut just before a whitespace run (the tokenizers used here give the same tokens either way), so memory
stays flat.
Bad input is handled here once for every consumer: invalid UTF-8 is replaced and counted, empty documents are skipped
and counted, binary files / truncated gzip / jsonl lines without the text field are refused with the file named.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gpt_ds.data import textio
from gpt_ds.data.records import RECORD_READERS
from gpt_ds.data.textio import ReadStats, split_parts
from gpt_ds.errors import GptDsError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".txt.gz")
FORMATS = ".txt/.text/.md(.gz), .jsonl/.json(.gz), .parquet, .csv, or a folder saved with datasets' save_to_disk"

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")   # a blank line (and any run of whitespace after it) ends a document


@dataclass
class Input:
    path: Path
    fmt: str  # txt | jsonl | parquet | csv | hf


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


# -------------------------------------------------------------------------------------------------------- documents
# Each reader yields (text_part, last) pairs; `last` closes the document. Empty documents yield nothing.


def iter_parts(inp: Input, stats: ReadStats, *, text_field: str = "text", txt_mode: str = "blank-line",
               skip_docs: int = 0) -> Iterator[tuple[str, bool]]:
    """All documents of one input as text parts; `skip_docs` non-empty documents are read past without yielding."""
    if inp.fmt == "txt":
        gen = _txt_parts(inp.path, stats, txt_mode)
    elif inp.fmt in ("jsonl", "parquet", "csv", "hf"):
        gen = _record_parts(RECORD_READERS[inp.fmt](inp.path, text_field, stats), stats)
    else:
        raise GptDsError(f"{inp.path}: unknown format {inp.fmt}")
    done = 0
    for text, last in gen:
        if done >= skip_docs:
            yield text, last
        if last:
            done += 1


def _txt_parts(path: Path, stats: ReadStats, mode: str) -> Iterator[tuple[str, bool]]:
    decode = textio.Decoder(stats)
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

    chunks = textio.chunks(path)
    eof, emitted = False, stats.documents + stats.empty_documents
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
        while len(buf) > textio.PART_CHARS:
            cut = textio.cut_point(buf, textio.PART_CHARS)  # before a whitespace run: a blank line is never split
            yield from emit(buf[:cut], False)
            buf = buf[cut:]
    if started or buf.strip() or stats.documents + stats.empty_documents == emitted:
        yield from emit(buf, True)  # (blank lines at the end of a file are no empty document; an empty file is)


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
