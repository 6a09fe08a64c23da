"""Ranks that agree: problems every rank finds reported once for the whole job, and answers rank 0 works out alone.

`once_across_ranks`: each rank runs the check; the ranks exchange what they found (one small all_gather of strings);
if any failed, every rank raises, rank 0 with the distinct messages (naming the ranks when they differ) and the
others quietly. `rank0_decides`: rank 0 alone runs it (a checkpoint's verification, a conversion) and broadcasts the
answer or its error; every rank returns the same answer or raises the same error.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

from gpt_ds.errors import GptDsError

T = TypeVar("T")


def once_across_ranks(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """COLLECTIVE when a process group of several ranks exists: every rank must call it."""
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


def rank0_decides(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """COLLECTIVE when a process group of several ranks exists. fn runs on rank 0 only; it reports a problem by
    raising GptDsError, which every rank then raises (quietly but on rank 0). Anything else fn raises is a bug and
    propagates on rank 0 after the others were told, so that none waits in the broadcast for ever."""
    box: list = [("ok", None)]
    failure: BaseException | None = None
    if rank == 0:
        try:
            box = [("ok", fn())]
        except GptDsError as e:
            box = [("error", str(e))]
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the broadcast
            failure, box = e, [("error", f"rank 0 failed: {type(e).__name__}: {e}")]
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "error":
        raise GptDsError(value, quiet=rank != 0)
    return value
