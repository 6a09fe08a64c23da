"""Counter-based Gumbel noise: a pure function of (seed, global row, vocabulary id).

Every implementation (reference, chunked torch, Triton) derives its noise from this hash, so they sample the same
tokens bit for bit, and a sample's noise does not depend on which rank or tile computes it.
The spec functions hold uint32 values in int64 tensors (products wrap; the low 32 bits are kept). The `*_i32`
functions compute the same bits in int32 tensors (wrapping multiplies, logical shifts by masking): a quarter of the
memory traffic, used on the hot path of the chunked heads and mirrored by the Triton kernel.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL1 = 0x7FEB352D
MUL2 = 0x846CA68B
GOLDEN = 0x9E3779B9
# Largest Gumbel value gumbel_from_hash can produce: u <= 1 - 2**-24 gives -log(-log u) <= 16.64. Kernels use the
# bound to skip the noise of vocabulary tiles whose logits cannot win the Gumbel-max.
GUMBEL_MAX = 17.0


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
    """24 high bits -> float32 in (0, 1]; the top value rounds to 1.0 in float32, harmless for thresholds (masking)."""
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def gumbel_from_hash(h: torch.Tensor) -> torch.Tensor:
    """23 high bits -> u exactly (k + 0.5) / 2**23, strictly inside (0, 1) -> finite standard Gumbel -log(-log u).

    (24 bits would round the top value to u = 1.0 and a noise of +inf: a uniformly random sample on ~0.2% of rows.)
    """
    u = ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
    return -torch.log(-torch.log(u))


def gumbel_noise(seed: int, row_ids: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """(N,) rows x (V,) vocab ids -> (N, V) float32 standard Gumbel noise (the spec; allocates int64 N x V)."""
    keys = row_keys(seed, row_ids)[:, None]
    return gumbel_from_hash(mix32(keys ^ vocab_ids.to(torch.int64)[None, :]))


def uniform(seed: int, row_ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N,) rows x (C,) columns -> (N, C) float32 uniforms; used by masking with its own seed stream."""
    keys = row_keys(seed, row_ids)[:, None]
    return uniform_from_hash(mix32(keys ^ cols.to(torch.int64)[None, :]))


# ----- int32 twins (same bits) ---------------------------------------------------------------------------------------

def to_i32(x: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same bit pattern as int32."""
    x = x.to(torch.int64)
    return (x - ((x >> 31) << 32)).to(torch.int32)


def row_keys_i32(seed: int, row_ids: torch.Tensor) -> torch.Tensor:
    return to_i32(row_keys(seed, row_ids))


def mix32_i32_(x: torch.Tensor) -> torch.Tensor:
    """mix32 in place on an int32 tensor (wrapping multiply; `(x >> s) & mask` is the logical shift)."""
    x ^= (x >> 16) & 0xFFFF
    x *= MUL1
    x ^= (x >> 15) & 0x1FFFF
    x *= MUL2 - (1 << 32)
    x ^= (x >> 16) & 0xFFFF
    return x


def gumbel_i32(keys_i32: torch.Tensor, col0: int, ncols: int) -> torch.Tensor:
    """(R,) int32 row keys x columns [col0, col0 + ncols) -> (R, ncols) float32 Gumbel noise, equal to gumbel_noise."""
    cols = torch.arange(col0, col0 + ncols, dtype=torch.int32, device=keys_i32.device)
    h = mix32_i32_(keys_i32[:, None] ^ cols[None, :])
    u = ((h >> 9) & 0x7FFFFF).to(torch.float32)
    u.add_(0.5).mul_(1.0 / 8388608.0)
    return u.log_().neg_().log_().neg_()
