"""Problems every rank finds at once (a bad corpus, a vocabulary mismatch) reported once for the whole job.

Each rank runs the check; the ranks exchange what they found (one small all_gather of strings); if any failed,
every rank raises, rank 0 with the distinct messages (naming the ranks when they differ) and the others quietly.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from gpt_ds.errors import GptDsError

T = TypeVar("T")


def once_across_ranks(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """COLLECTIVE when a process group of several ranks exists: every rank must call it."""
    import torch.distributed as dist
    result, error = None, None
    try:
        result = fn()
    except GptDsError as e:
        error = str(e)
    errors = [error]
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        errors = [None] * world_size
        dist.all_gather_object(errors, error)
    found = [(r, e) for r, e in enumerate(errors) if e is not None]
    if found:
        distinct = list(dict.fromkeys(e for _, e in found))
        if len(distinct) == 1:
            message = distinct[0] if len(found) == len(errors) else \
                f"rank(s) {', '.join(str(r) for r, _ in found)}: {distinct[0]}"
        else:
            message = "\n".join(f"rank {r}: {e}" for r, e in found)
        raise GptDsError(message, quiet=rank != 0)
    return result
