"""One `data.sources` entry -> a row dataset: a store built by `gpt-ds prepare`, or text files tokenized at open time.

Text sources are for small corpora (every rank tokenizes them itself at start); anything large goes through `prepare`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_ds.data.datasets import PackedDataset, Shard
from gpt_ds.data.encode import Encoder, encode_documents
from gpt_ds.data.packing import cut_points, pack_rows
from gpt_ds.data.readers import ReadStats, expand_inputs, iter_parts
from gpt_ds.data.tokenizer import sentence_end_table, special_ids, tokenizer_fingerprint, vocab_size_of
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
