"""The global sample order: a pure function of (seed, global sample number).

Why a function and not a stored permutation: the only sampler state is then the number of consumed samples, any rank
computes any sample's row in O(1) whatever the world size, and opening a 10x larger corpus costs no extra time or
memory (a permutation array would be read or built at start). The shuffle is a keyed Feistel network on the next
power of four, cycle-walked back into [0, n): a bijection, so an epoch visits every row exactly once.
"""
from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1
BLEND_BLOCK = 1 << 16  # blending quotas are exact in every block of this many samples


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_key(*parts: int) -> int:
    """One 64-bit key from a tuple of integers (seed, stream, epoch, ...)."""
    k = 0x6A09E667F3BCC908
    for p in parts:
        k = splitmix64(k ^ (int(p) & _M64))
    return k


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute(idx: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, n) applied to idx (int64 values in [0, n))."""
    idx = np.asarray(idx, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(idx)
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [splitmix64(key + r) for r in range(rounds)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right, k) & mask)
        return (left << np.uint64(half)) | right

    out = feistel(idx.astype(np.uint64))
    todo = out >= np.uint64(n)
    while todo.any():  # cycle-walking: at most a few rounds on average (the domain is < 4n)
        out[todo] = feistel(out[todo])
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def epoch_rows(numbers: np.ndarray, length: int, seed: int, stream: int = 0) -> np.ndarray:
    """Global sample numbers -> row ids: epoch e = n // length visits all rows in its own seeded order."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if length <= 0:
        raise ValueError("a dataset with no rows has no sample order")
    if (numbers < 0).any():
        raise ValueError("sample numbers must be >= 0")
    epochs, pos = np.divmod(numbers, length)
    out = np.empty_like(numbers)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = permute(pos[sel], length, derive_key(seed, stream, int(e)))
    return out


def blend_quotas(weights: list[float], block: int = BLEND_BLOCK) -> np.ndarray:
    """Samples per block for each source: largest remainder of weight x block (sums to block)."""
    w = np.asarray(weights, dtype=np.float64)
    share = w / w.sum() * block
    q = np.floor(share).astype(np.int64)
    rest = block - int(q.sum())
    order = np.argsort(-(share - q), kind="stable")
    q[order[:rest]] += 1
    return q


def blend(numbers: np.ndarray, quotas: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Global sample numbers -> (source index, that source's own sample number).

    Block j holds exactly quotas[i] samples of source i, at seeded random places within the block, so every window
    of samples has the weights' proportions up to sampling error and any n maps in O(1)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    block = int(quotas.sum())
    starts = np.concatenate([[0], np.cumsum(quotas)])
    blocks, pos = np.divmod(numbers, block)
    slot = np.empty_like(numbers)
    for b in np.unique(blocks):
        sel = blocks == b
        slot[sel] = permute(pos[sel], block, derive_key(seed, 0xB1E4D, int(b)))
    src = np.searchsorted(starts, slot, side="right") - 1
    own = blocks * quotas[src] + (slot - starts[src])
    return src, own
