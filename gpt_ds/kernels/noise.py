"""Counter-based Gumbel noise: a pure function of (seed, global row, vocabulary id).

Every implementation (reference, chunked torch, Triton) derives its noise from this hash, so they sample the same
tokens bit for bit, and a sample's noise does not depend on which rank or tile computes it.
All arithmetic is on uint32 values held in int64 tensors (products wrap; the low 32 bits are kept).
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL1 = 0x7FEB352D
MUL2 = 0x846CA68B
GOLDEN = 0x9E3779B9


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift / multiply rounds); x holds values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * MUL2) & MASK32
    x = x ^ (x >> 16)
    return x


def mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * MUL1) & MASK32
    x ^= x >> 15
    x = (x * MUL2) & MASK32
    x ^= x >> 16
    return x


def seed_key(seed: int) -> int:
    return mix32_int((seed & MASK32) ^ GOLDEN)


def row_keys(seed: int, row_ids: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per global row (row ids may exceed 2**32)."""
    rows = row_ids.to(torch.int64)
    lo = rows & MASK32
    hi = (rows >> 32) & MASK32
    return mix32(mix32(lo ^ seed_key(seed)) ^ hi)


def uniform_from_hash(h: torch.Tensor) -> torch.Tensor:
    """24 high bits -> float32 strictly inside (0, 1)."""
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def gumbel_noise(seed: int, row_ids: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """(N,) rows x (V,) vocab ids -> (N, V) float32 standard Gumbel noise."""
    keys = row_keys(seed, row_ids)[:, None]
    h = mix32(keys ^ vocab_ids.to(torch.int64)[None, :])
    u = uniform_from_hash(h)
    return -torch.log(-torch.log(u))


def uniform(seed: int, row_ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N,) rows x (C,) columns -> (N, C) float32 uniforms; used by masking with its own seed stream."""
    keys = row_keys(seed, row_ids)[:, None]
    return uniform_from_hash(mix32(keys ^ cols.to(torch.int64)[None, :]))
