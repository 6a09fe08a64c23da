"""The run's dataset (`open_dataset`): each `data.sources` entry is a store built by `gpt-ds prepare` or text files
tokenized at open time; several are blended by weight.

Text sources are for small corpora (every rank tokenizes them itself at start); anything large goes through `prepare`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_ds.config import ConfigError
from gpt_ds.data import RowDataset
from gpt_ds.data.datasets import BlendedDataset, PackedDataset, Shard, SyntheticDataset
from gpt_ds.data.encode import Encoder, encode_documents
from gpt_ds.data.packing import cut_points, pack_rows
from gpt_ds.data.readers import ReadStats, expand_inputs, iter_parts
from gpt_ds.data.store.index import open_store_dataset
from gpt_ds.data.tokenizer import (sentence_end_table, special_ids, tokenizer_fingerprint, tokenizer_info,
                                   vocab_size_of)
from gpt_ds.errors import GptDsError

BATCH_PARTS = 256


def is_store(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def tokenize_corpus(paths: list[str], tokenizer_dir: str) -> tuple[np.ndarray, np.ndarray, ReadStats]:
    """All documents of `paths` -> (token stream uint32, document starts int64 incl. 0, read stats)."""
    enc = Encoder(tokenizer_dir)
    stats = ReadStats()
    streams, lengths, batch, carry = [], [], [], 0

    def flush():
        nonlocal carry, batch
        stream, lens, carry, dropped = encode_documents(enc, batch, carry)
        stats.empty_documents += dropped
        stats.documents -= dropped
        streams.append(stream)
        lengths.append(lens)
        batch = []

    for inp in expand_inputs(paths):
        for part in iter_parts(inp, stats):
            batch.append(part)
            if len(batch) >= BATCH_PARTS:
                flush()
    flush()
    tokens = np.concatenate(streams) if streams else np.zeros(0, np.uint32)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if len(lens) else np.zeros(1, np.int64)
    return tokens, starts, stats


def text_source(path: str, tokenizer, tokenizer_dir: str, *, seq_len: int, pairs: bool, seed: int) -> PackedDataset:
    tokens, starts, stats = tokenize_corpus([path], tokenizer_dir)
    if len(tokens) == 0:
        raise GptDsError(f"data.sources '{path}' holds no non-empty document "
                         f"({stats.empty_documents} empty skipped); check the path")
    cuts = cut_points(tokens, starts, sentence_end_table(tokenizer))
    rows = pack_rows(len(tokens), starts, cuts, seq_len, pairs)
    ds = PackedDataset(shards=[Shard(tokens, starts, name=str(path))], shard_offsets=np.array([0, len(tokens)]),
                       rows=rows, seq_len=seq_len, pairs=pairs, vocab_size=vocab_size_of(tokenizer),
                       specials=special_ids(tokenizer), tokenizer_dir=str(tokenizer_dir),
                       fingerprint=tokenizer_fingerprint(tokenizer), seed=seed, name=str(path))
    ds.read_stats = stats
    return ds


def open_dataset(cfg) -> RowDataset:
    """The run's dataset from `cfg.data` (synthetic rows, text sources, stores, or a weighted blend of them)."""
    d, seed = cfg.data, cfg.run.seed
    if d.synthetic:
        return SyntheticDataset(d.synthetic_samples, d.seq_len, cfg.model.vocab_size, seed)
    if not d.sources:
        raise ConfigError("data.sources is empty: give text files/folders or stores built by `gpt-ds prepare` "
                          "(data.sources='[path]'), or set data.synthetic=true")
    parts = [_open_source(s.path, cfg) for s in d.sources]
    ds = parts[0] if len(parts) == 1 else BlendedDataset(parts, [s.weight for s in d.sources], seed)
    if cfg.model.vocab_size and cfg.model.vocab_size < ds.vocab_size:
        raise ConfigError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                          f"({ds.vocab_size}); set model.vocab_size=0 to take it from the tokenizer")
    return ds


def _open_source(path: str, cfg):
    d = cfg.data
    if not Path(path).exists():
        raise ConfigError(f"data.sources: '{path}' does not exist")
    if is_store(path):
        return open_store_dataset(path, cfg)
    if not d.tokenizer:
        raise ConfigError(f"data.sources '{path}' is text, so data.tokenizer must name a tokenizer folder "
                          f"(train one with `gpt-ds tokenizer train`)")
    tok = tokenizer_info(d.tokenizer)
    return text_source(path, tok, d.tokenizer, seq_len=d.seq_len, pairs=d.two_segments, seed=cfg.run.seed)
