"""Which positions the generator must fill, decided by a hash of (seed, global sample number, position).

Deterministic and rank-independent: the same global sample gets the same mask whatever the number of ranks, the
micro-batch it lands in, or whether the run was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_ds.kernels.noise import uniform

# Separate hash streams so the mask, the [MASK]/keep/random decision and the random token are independent.
STREAM_SELECT = 0x51A7
STREAM_DECIDE = 0x0DEC
STREAM_RANDOM = 0x0A4D
STREAM_SAMPLE = 0x6E4E


@dataclass
class MaskedBatch:
    masked_ids: torch.Tensor  # (B, L) input for the generator
    positions: torch.Tensor  # (N,) flat indices into B*L of the selected positions
    targets: torch.Tensor  # (N,) original tokens there
    row_ids: torch.Tensor  # (N,) global row ids (sample_number * L + position): the sampling noise's counter

    @property
    def num_masked(self) -> int:
        return int(self.positions.numel())


def num_to_mask(n_maskable: torch.Tensor, mask_prob: float) -> torch.Tensor:
    """ELECTRA's count: int((p + 0.005) * n), at least one where anything is maskable."""
    k = torch.floor((mask_prob + 0.005) * n_maskable.to(torch.float64)).to(torch.int64)
    return torch.where(n_maskable > 0, k.clamp(min=1), torch.zeros_like(k))


def replaceable(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """The tokens masking may select (and so the generator may replace): real tokens that are not special."""
    specials = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype)
    return attention_mask.bool() & ~torch.isin(input_ids, specials)


def mask_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, sample_numbers: torch.Tensor, *,
               special_ids: list[int], mask_id: int, vocab_size: int, mask_prob: float, mask_token_frac: float,
               keep_frac: float, random_frac: float, seed: int) -> MaskedBatch:
    b, length = input_ids.shape
    cols = torch.arange(length)
    maskable = replaceable(input_ids, attention_mask, special_ids)
    k = num_to_mask(maskable.sum(1), mask_prob)

    prio = uniform(seed ^ STREAM_SELECT, sample_numbers, cols)
    prio = torch.where(maskable, prio, torch.full_like(prio, 2.0))
    rank = torch.argsort(torch.argsort(prio, dim=1, stable=True), dim=1)
    selected = rank < k[:, None]

    decide = uniform(seed ^ STREAM_DECIDE, sample_numbers, cols)
    to_mask = selected & (decide < mask_token_frac)
    to_random = selected & (decide >= mask_token_frac + keep_frac) if random_frac > 0 else torch.zeros_like(selected)

    masked = input_ids.clone()
    masked[to_mask] = mask_id
    if to_random.any():
        allowed = torch.tensor([i for i in range(vocab_size) if i not in set(special_ids)], dtype=input_ids.dtype)
        u = uniform(seed ^ STREAM_RANDOM, sample_numbers, cols)
        pick = allowed[(u * len(allowed)).long().clamp(max=len(allowed) - 1)]
        masked[to_random] = pick[to_random]

    positions = selected.flatten().nonzero().squeeze(1)
    targets = input_ids.flatten()[positions]
    row_ids = (sample_numbers.to(torch.int64)[:, None] * length + cols[None, :]).flatten()[positions]
    return MaskedBatch(masked, positions, targets, row_ids)
