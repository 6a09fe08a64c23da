"""Data: corpora -> SentencePiece tokenizer -> sharded memory-mapped token store -> one global sample order.

Layout: the corpus readers (textio, records, readers), the tokenizer (tokenizer, encode), the packing rule
(packing), row datasets (datasets, sources); `store/` (format and reader in __init__, writer, index, prepare,
inspect) and `sampler/` (order, loader).

The trainer needs only `sources.open_dataset(cfg)` (a RowDataset) and `sampler.loader.StepLoader`. A dataset maps a
GLOBAL sample number (the position in the run's consumed order, 0, 1, 2, ...) to a fixed-length row; the order is a
pure function of (run.seed, sample number), so the only sampler state is the number of consumed samples.
"""
from __future__ import annotations

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


__all__ = ["RowDataset", "GptDsError"]
