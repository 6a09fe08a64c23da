"""Row datasets: fixed-length token rows addressed by global sample number (see gpt_ds.data.RowDataset).

SyntheticDataset: random rows, a pure function of (seed, row). PackedDataset: rows packed from token shards (a store
built by `gpt-ds prepare`, or text tokenized at open time). BlendedDataset: several of these mixed by weight.
Every class maps a global sample number to a row through gpt_ds.data.sampler.order, so the order depends on nothing else.
"""
from __future__ import annotations

import hashlib

import numpy as np

from gpt_ds.data.sampler import order
from gpt_ds.data.packing import write_row
from gpt_ds.errors import GptDsError


class _Base:
    seq_len: int
    vocab_size: int
    pad_id: int = 0
    unk_id: int = 1
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4
    tokenizer_dir: str | None = None
    tokenizer_fingerprint: str = ""
    seed: int = 0
    name: str = "dataset"

    def rows_for(self, sample_numbers: np.ndarray) -> np.ndarray:
        """The seeded per-epoch shuffle: global sample numbers -> row ids in [0, len)."""
        return order.epoch_rows(sample_numbers, len(self), self.seed)

    def batch(self, sample_numbers) -> dict:
        ids, types = self.rows(self.rows_for(np.asarray(sample_numbers, dtype=np.int64)))
        return _tensors(ids, types, self.pad_id)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (B, L) ids and token types
        raise NotImplementedError


def _tensors(ids: np.ndarray, types: np.ndarray, pad_id: int) -> dict:
    import torch  # here, so that `prepare` and its workers never import torch
    ids_t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    return {"input_ids": ids_t, "attention_mask": (ids_t != pad_id).long(),
            "token_type_ids": torch.from_numpy(np.ascontiguousarray(types, dtype=np.int64))}


class SyntheticDataset(_Base):
    """`n` rows of [CLS] random ids in [5, vocab) [SEP]: deterministic from the seed and the row id."""

    def __init__(self, n: int, seq_len: int, vocab_size: int, seed: int):
        if vocab_size <= 5:
            raise GptDsError(f"model.vocab_size {vocab_size} must exceed the 5 special tokens for synthetic data")
        if n <= 0:
            raise GptDsError(f"data.synthetic_samples = {n} must be > 0")
        self.n, self.seq_len, self.vocab_size, self.seed = int(n), int(seq_len), int(vocab_size), int(seed)
        self.name = f"synthetic({n})"
        self.tokenizer_fingerprint = hashlib.sha256(f"synthetic:{vocab_size}".encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return self.n

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        pos = np.arange(L, dtype=np.uint64)
        key = order.derive_key(self.seed, 0x5E7)
        h = order._mix(rows.astype(np.uint64)[:, None] * np.uint64(L) + pos[None, :], key)
        ids = (5 + (h % np.uint64(self.vocab_size - 5))).astype(np.int64)
        ids[:, 0], ids[:, -1] = self.cls_id, self.sep_id
        return ids, np.zeros_like(ids)


class Shard:
    """One token stream with its document starts (a store shard, memory-mapped; or text tokenized in memory)."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, name: str = "memory"):
        self.tokens, self.doc_starts, self.name = tokens, np.asarray(doc_starts, dtype=np.int64), name

    def check(self, start: int, end: int) -> None:  # stores verify checksums of the bytes they hand out
        pass


class PackedDataset(_Base):
    """Rows [start, end, split] over the concatenation of shards (a row never spans two shards)."""

    def __init__(self, *, shards: list, shard_offsets: np.ndarray, rows: np.ndarray, seq_len: int,
                 pairs: bool, vocab_size: int, specials: dict, tokenizer_dir: str | None, fingerprint: str,
                 seed: int, name: str, open_shard=None):
        self._shards = shards                 # Shard, or None until first opened by open_shard(i)
        self._open = open_shard
        self.shard_offsets = np.asarray(shard_offsets, dtype=np.int64)  # global start of each shard (+ total)
        self.index, self.seq_len, self.pairs = rows, int(seq_len), pairs
        self.vocab_size, self.tokenizer_dir, self.tokenizer_fingerprint = vocab_size, tokenizer_dir, fingerprint
        self.seed, self.name = int(seed), name
        for k, v in specials.items():
            setattr(self, k, int(v))

    def __len__(self) -> int:
        return len(self.index)

    def shard(self, i: int) -> Shard:
        if self._shards[i] is None:
            self._shards[i] = self._open(i)
        return self._shards[i]

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        B, L = len(rows), self.seq_len
        ids = np.full((B, L), self.pad_id, dtype=np.int64)
        types = np.zeros((B, L), dtype=np.int64)
        spans = np.asarray(self.index[np.asarray(rows, dtype=np.int64)])
        which = np.searchsorted(self.shard_offsets, spans[:, 0], side="right") - 1
        for b in range(B):
            sh = self.shard(int(which[b]))
            base = int(self.shard_offsets[which[b]])
            s, e, split = (int(x) - base for x in spans[b])
            sh.check(s, e)
            d = sh.doc_starts
            inner = d[np.searchsorted(d, s, "right"):np.searchsorted(d, e, "left")] - s
            write_row(ids[b], types[b], sh.tokens[s:e], inner, split - s, self.pairs, self.cls_id, self.sep_id)
        return ids, types


class BlendedDataset(_Base):
    """Sources mixed by weight: block-exact proportions, each source in its own seeded epoch order."""

    def __init__(self, parts: list, weights: list[float], seed: int):
        first = parts[0]
        for p in parts[1:]:
            if p.tokenizer_fingerprint != first.tokenizer_fingerprint:
                raise GptDsError(f"data.sources '{p.name}' was tokenized with another tokenizer "
                                 f"({p.tokenizer_fingerprint}) than '{first.name}' ({first.tokenizer_fingerprint}); "
                                 f"re-prepare it with the same tokenizer")
            if p.seq_len != first.seq_len:
                raise GptDsError(f"data.sources '{p.name}' has seq_len {p.seq_len}, not {first.seq_len}")
        self.parts, self.seed = parts, int(seed)
        self.quotas = order.blend_quotas(weights)
        tiny = [p.name for p, q in zip(parts, self.quotas) if q == 0]
        if tiny:
            raise GptDsError(f"data.sources {tiny}: weight below 1/{order.BLEND_BLOCK} of the total; raise it")
        for k in ("seq_len", "vocab_size", "pad_id", "unk_id", "cls_id", "sep_id", "mask_id", "tokenizer_dir",
                  "tokenizer_fingerprint"):
            setattr(self, k, getattr(first, k))
        self.vocab_size = max(p.vocab_size for p in parts)

    def __len__(self) -> int:
        """Samples in one 'epoch': enough that every source is seen about once at its weight."""
        share = self.quotas / self.quotas.sum()
        return int(max(np.ceil(len(p) / s) for p, s in zip(self.parts, share)))

    def batch(self, sample_numbers) -> dict:
        numbers = np.asarray(sample_numbers, dtype=np.int64)
        src, own = order.blend(numbers, self.quotas, self.seed)
        ids = np.full((len(numbers), self.seq_len), self.pad_id, dtype=np.int64)
        types = np.zeros_like(ids)
        for i, part in enumerate(self.parts):
            sel = np.flatnonzero(src == i)
            if len(sel):
                rows = order.epoch_rows(own[sel], len(part), self.seed, stream=i + 1)
                ids[sel], types[sel] = part.rows(rows)
        return _tensors(ids, types, self.pad_id)

    def source_of(self, sample_numbers) -> np.ndarray:
        return order.blend(np.asarray(sample_numbers, dtype=np.int64), self.quotas, self.seed)[0]
