"""The token store on disk, and reading it lazily with checksums.

    STORE/manifest.json               totals, per-shard counts and sha256, tokenizer fingerprint, sources, skipped
    STORE/tokenizer/                  a copy of the tokenizer folder the store was made with
    STORE/shards/shard-NNNNNN.tok     token ids, little-endian uint16 (vocabulary <= 65536) or uint32
    STORE/shards/shard-NNNNNN.doc     uint64 document starts within the shard, then the shard's token count
    STORE/shards/shard-NNNNNN.crc     uint32 crc32 of each CRC_BLOCK bytes of the .tok file
    STORE/index/L128-<key>/rows.npy   the sample index for one row length (see gpt_ds.data.store.index)

A shard is opened on first use only (memory-mapped), and each CRC_BLOCK of it is checked the first time a row reads
from it: a damaged shard is named at load, and opening a 10x larger store costs no more time.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from gpt_ds.data.datasets import Shard
from gpt_ds.errors import GptDsError

FORMAT, VERSION = "gpt_ds.store", 1
CRC_BLOCK = 1 << 16


def shard_paths(root: Path, i: int) -> dict[str, Path]:
    base = Path(root) / "shards" / f"shard-{i:06d}"
    return {k: base.with_suffix("." + k) for k in ("tok", "doc", "crc")}


def read_manifest(root) -> dict:
    path = Path(root) / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise GptDsError(f"{root} is not a token store (no manifest.json); build one with `gpt-ds prepare`") from None
    except json.JSONDecodeError as e:
        raise GptDsError(f"{path} is damaged ({e}); re-run `gpt-ds prepare`") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise GptDsError(f"{path}: not a {FORMAT} v{VERSION} manifest (format {m.get('format')}, "
                         f"version {m.get('version')}); re-run `gpt-ds prepare` with this gpt_ds")
    return m


class StoreShard(Shard):
    """A shard memory-mapped on open; its checksummed blocks verified on first read."""

    def __init__(self, root: Path, i: int, entry: dict, dtype: str):
        p = shard_paths(root, i)
        self.name = f"{root}/shards/{p['tok'].name}"
        itemsize = np.dtype(dtype).itemsize
        for kind, want in (("tok", entry["tokens"] * itemsize), ("doc", (entry["documents"] + 1) * 8)):
            try:
                got = p[kind].stat().st_size
            except FileNotFoundError:
                raise GptDsError(f"shard file {p[kind]} is missing; re-run `gpt-ds prepare` for this store") from None
            if got != want:
                raise GptDsError(f"shard {p[kind]} has {got} bytes, the manifest says {want}: the shard is damaged "
                                 f"or from another build; re-run `gpt-ds prepare`")
        raw = p["doc"].read_bytes()
        if hashlib.sha256(raw).hexdigest() != entry["doc_sha256"]:
            raise GptDsError(f"shard {p['doc']} fails its sha256 check: the document index is damaged; "
                             f"re-run `gpt-ds prepare`")
        offsets = np.frombuffer(raw, dtype="<u8").astype(np.int64)
        self.doc_starts = offsets[:-1]
        self.tokens = np.memmap(p["tok"], dtype=np.dtype(dtype).newbyteorder("<"), mode="r") \
            if entry["tokens"] else np.zeros(0, dtype)
        self._bytes = np.memmap(p["tok"], dtype=np.uint8, mode="r") if entry["tokens"] else np.zeros(0, np.uint8)
        self._crc = np.fromfile(p["crc"], dtype="<u4")
        self._ok = np.zeros(len(self._crc), dtype=bool)
        self._itemsize = itemsize

    def check(self, start: int, end: int) -> None:
        lo = start * self._itemsize // CRC_BLOCK
        hi = (max(end, start + 1) * self._itemsize - 1) // CRC_BLOCK
        for b in range(lo, min(hi, len(self._crc) - 1) + 1):
            if not self._ok[b]:
                block = self._bytes[b * CRC_BLOCK:(b + 1) * CRC_BLOCK]
                if zlib.crc32(block) != int(self._crc[b]):
                    raise GptDsError(f"shard {self.name} fails its checksum at byte {b * CRC_BLOCK}: the file is "
                                     f"damaged; re-run `gpt-ds prepare` (it rebuilds damaged stores) or restore it")
                self._ok[b] = True


def verify_store(root) -> list[str]:
    """Full sha256 check of every shard (slow: reads everything), and the manifest's counts against the files;
    returns the damaged shard files and each count that does not add up (a manifest edited by hand)."""
    root = Path(root)
    bad = []
    manifest = read_manifest(root)
    itemsize = np.dtype(manifest.get("dtype", "uint16")).itemsize
    for i, entry in enumerate(manifest["shards"]):
        p = shard_paths(root, i)
        if p["tok"].is_file() and p["tok"].stat().st_size != entry["tokens"] * itemsize:
            bad.append(f"{p['tok']}: holds {p['tok'].stat().st_size // itemsize} tokens, the manifest says "
                       f"{entry['tokens']}")
        if p["doc"].is_file() and p["doc"].stat().st_size != (entry["documents"] + 1) * 8:
            bad.append(f"{p['doc']}: holds {p['doc'].stat().st_size // 8 - 1} documents, the manifest says "
                       f"{entry['documents']}")
        for kind, key in (("tok", "sha256"), ("doc", "doc_sha256")):
            h = hashlib.sha256()
            try:
                with open(p[kind], "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
            except FileNotFoundError:
                bad.append(str(p[kind]))
                continue
            if h.hexdigest() != entry[key]:
                bad.append(str(p[kind]))
    return bad
