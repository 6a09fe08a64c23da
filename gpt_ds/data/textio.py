"""Reading text safely: byte chunks, UTF-8 decoding that counts what it replaces, binary files refused, gzip errors
named, and long texts cut into parts before whitespace (the tokenizers used here give the same tokens either way)."""
from __future__ import annotations

import codecs
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gpt_ds.errors import GptDsError

PART_CHARS = 1 << 20          # a document is handed on in parts of at most ~1M characters
READ_BYTES = 1 << 20          # bytes read per chunk from a file
SNIFF_BYTES = 8192            # bytes looked at to refuse binary files


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


class Decoder:
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


def chunks(path: Path) -> Iterator[bytes]:
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
        raise GptDsError(f"{path}: looks like a binary file (NUL bytes; UTF-16 or UTF-32 text? convert it to "
                         f"UTF-8), not text; remove it from the inputs")
    bad = len(head) - len(head.decode("utf-8", errors="ignore").encode("utf-8"))
    if len(head) >= 64 and bad > 0.3 * len(head):
        raise GptDsError(f"{path}: looks like a binary file ({bad} of the first {len(head)} bytes are not UTF-8); "
                         f"remove it from the inputs or convert it to UTF-8 text")


def split_parts(text: str, limit: int | None = None) -> list[str]:
    """Cut a long text into parts of <= limit chars, each cut placed before a whitespace run where one exists."""
    limit = limit or PART_CHARS
    parts = []
    while len(text) > limit:
        cut = cut_point(text, limit)
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


def cut_point(text: str, limit: int) -> int:
    window = text[max(0, limit - 65536):limit + 1]
    base = max(0, limit - 65536)
    for i in range(len(window) - 1, 0, -1):
        if window[i].isspace() and not window[i - 1].isspace():
            return base + i
    return limit


def lines(path: Path, stats: ReadStats) -> Iterator[str]:
    decode = Decoder(stats)
    buf = ""
    for data in chunks(path):
        buf += decode(data)
        lines = buf.split("\n")
        buf = lines.pop()
        yield from lines
    buf += decode(b"", final=True)
    if buf:
        yield buf
