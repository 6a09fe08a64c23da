"""ShardWriter: tokenized documents in input order -> shard files, with checksums and the resume record.

A shard closes at the first document end past the size limit, so shard boundaries depend only on the documents (not
on batching or workers), and a document never spans two shards. After each shard its files are renamed into place
and progress.json (written aside, renamed) records the totals and where the next shard starts.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from gpt_ds.data.store import CRC_BLOCK, shard_paths
from gpt_ds.errors import GptDsError


class ShardWriter:
    def __init__(self, work: Path, dtype: str, shard_bytes: int, progress: dict):
        self.work, self.dtype = Path(work), np.dtype(dtype).newbyteorder("<")
        self.limit = max(1, shard_bytes // self.dtype.itemsize)
        self.progress = progress
        self.shards: list[dict] = progress["shards"]
        self.sources: list[dict] = progress["sources"]
        self.documents = sum(s["documents"] for s in self.shards)
        self.tokens = sum(s["tokens"] for s in self.shards)
        self.new_tokens = 0
        cur = progress.get("current") or {}
        self.input = progress["resume"][0]
        self._in = {k: cur.get(k, 0) for k in ("seen", "documents", "tokens", "tokenless")}
        (self.work / "shards").mkdir(parents=True, exist_ok=True)
        self._open()

    # ---------------------------------------------------------------------------------------------- shard files
    def _open(self) -> None:
        self._paths = shard_paths(self.work, len(self.shards))
        self._tmp = self._paths["tok"].with_name(self._paths["tok"].name + ".tmp")
        self._f = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._crc: list[int] = []
        self._pending = b""
        self._n = 0                 # tokens in this shard
        self._starts: list[int] = []
        self._doc_begin = 0

    def _append(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._f.write(data)
        self._sha.update(data)
        buf = self._pending + data
        full = len(buf) - len(buf) % CRC_BLOCK
        view = memoryview(buf)
        self._crc.extend(zlib.crc32(view[i:i + CRC_BLOCK]) for i in range(0, full, CRC_BLOCK))
        self._pending = bytes(view[full:])
        self._n += len(ids)
        self.new_tokens += len(ids)

    def _close(self) -> None:
        if self._pending:
            self._crc.append(zlib.crc32(self._pending))
        self._f.close()
        offsets = np.asarray(self._starts + [self._n], dtype="<u8").tobytes()
        for kind, data in (("doc", offsets), ("crc", np.asarray(self._crc, dtype="<u4").tobytes())):
            tmp = self._paths[kind].with_name(self._paths[kind].name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(self._paths[kind])
        self._tmp.replace(self._paths["tok"])
        self.shards.append({"name": self._paths["tok"].name, "documents": len(self._starts), "tokens": self._n,
                            "sha256": self._sha.hexdigest(), "doc_sha256": hashlib.sha256(offsets).hexdigest()})
        self.documents += len(self._starts)
        self.tokens += self._n
        self._save_progress()

    def _save_progress(self) -> None:
        self.progress.update(shards=self.shards, sources=self.sources, resume=[self.input, self._in["seen"]],
                             current=dict(self._in))
        tmp = self.work / "progress.json.tmp"
        tmp.write_text(json.dumps(self.progress, indent=1))
        tmp.replace(self.work / "progress.json")

    # ----------------------------------------------------------------------------------------------- documents
    def add(self, i: int, parts: list[tuple[str, bool]], stream: np.ndarray, lengths: np.ndarray) -> None:
        """One tokenized batch of input i: parts in order, their token counts, their concatenated tokens."""
        if i != self.input:
            self.input = i
            self._in = dict.fromkeys(self._in, 0)
        pos = 0
        for (_, last), n in zip(parts, lengths.tolist()):
            if n:
                self._append(stream[pos:pos + n])
                pos += n
            if last:
                self._in["seen"] += 1
                if self._n == self._doc_begin:      # the document tokenized to nothing: skipped, counted
                    self._in["tokenless"] += 1
                else:
                    self._starts.append(self._doc_begin)
                    self._in["documents"] += 1
                    self._in["tokens"] += self._n - self._doc_begin
                self._doc_begin = self._n
                if self._n >= self.limit:
                    self._close()
                    self._open()

    def end_input(self, i: int, entry: dict, stats) -> None:
        """Input i is fully written: record its counts in the manifest's sources."""
        if i != self.input:  # an input with no document at all
            self.input, self._in = i, dict.fromkeys(self._in, 0)
        self.sources.append({**entry, "documents": self._in["documents"], "tokens": self._in["tokens"],
                             "empty_documents": stats.empty_documents + self._in["tokenless"],
                             "invalid_utf8": stats.invalid_utf8})
        self.input, self._in = i + 1, dict.fromkeys(self._in, 0)

    def finish(self) -> None:
        if self._starts:
            self._close()
        else:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
        if not self.shards:
            names = [src["path"] for src in self.sources]
            empty = sum(src["empty_documents"] for src in self.sources)
            raise GptDsError(f"{', '.join(names[:3])}{f' (+{len(names) - 3} more)' if len(names) > 3 else ''}: no "
                             f"document with any token ({empty} empty document(s) skipped); nothing to store")
        self._save_progress()

    def skipped(self) -> dict:
        return {"empty_documents": sum(s["empty_documents"] for s in self.sources),
                "invalid_utf8": sum(s["invalid_utf8"] for s in self.sources),
                "files_with_invalid_utf8": [s["path"] for s in self.sources if s["invalid_utf8"]]}
