"""Data: corpora -> SentencePiece tokenizer -> sharded memory-mapped token store -> one global sample order.

Layout: the corpus readers (textio, records, readers), the tokenizer (tokenizer, encode), the packing rule
(packing), row datasets (datasets, sources); `store/` (format and reader in __init__, writer, index, prepare,
inspect) and `sampler/` (order, loader).

The trainer needs only `open_dataset(cfg)` (a RowDataset) and `gpt_ds.data.sampler.loader.StepLoader`. A dataset maps a
GLOBAL sample number (the position in the run's consumed order, 0, 1, 2, ...) to a fixed-length row; the order is a
pure function of (run.seed, sample number), so the only sampler state is the number of consumed samples.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch is imported where batches are made, so `prepare` never pays for it
    import torch

from gpt_ds.errors import GptDsError


@runtime_checkable
class RowDataset(Protocol):
    seq_len: int
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    tokenizer_dir: str | None          # HF tokenizer folder (export copies it); None for synthetic
    tokenizer_fingerprint: str         # resume refuses a different one

    def __len__(self) -> int: ...      # rows in one epoch

    def batch(self, sample_numbers: np.ndarray) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask / token_type_ids, (B, L) int64, for int64 global sample numbers."""
        ...


def open_dataset(cfg) -> RowDataset:
    """The run's dataset from `cfg.data` (synthetic rows, text sources, stores, or a weighted blend of them)."""
    from gpt_ds.config import ConfigError
    from gpt_ds.data.datasets import BlendedDataset, SyntheticDataset

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
    from gpt_ds.config import ConfigError
    from gpt_ds.data import sources
    from gpt_ds.data.tokenizer import tokenizer_info

    d = cfg.data
    if not Path(path).exists():
        raise ConfigError(f"data.sources: '{path}' does not exist")
    if sources.is_store(path):
        from gpt_ds.data.store.index import open_store_dataset
        return open_store_dataset(path, cfg)
    if not d.tokenizer:
        raise ConfigError(f"data.sources '{path}' is text, so data.tokenizer must name a tokenizer folder "
                          f"(train one with `gpt-ds tokenizer train`)")
    tok = tokenizer_info(d.tokenizer)
    return sources.text_source(path, tok, d.tokenizer, seq_len=d.seq_len, pairs=d.two_segments, seed=cfg.run.seed)


__all__ = ["RowDataset", "open_dataset", "GptDsError"]
