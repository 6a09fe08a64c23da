"""Entry checks for the heads: whole weights (not ZeRO-3 shards), matching shapes, targets in range."""
from __future__ import annotations

import torch

from gpt_ds.errors import GptDsError

_ZERO3_HINT = ("under ZeRO-3 a head must run inside the owning engine's forward, with a tied weight registered via "
               "deepspeed.zero.register_external_parameter; a 0-element weight is a shard read outside the forward")


def _whole(t: torch.Tensor, expect: tuple, what: str, where: str) -> None:
    if tuple(t.shape) != tuple(expect) or t.numel() == 0:
        raise GptDsError(f"{what} has shape {tuple(t.shape)} {where}, expected {tuple(expect)}: {_ZERO3_HINT}")


def check_generator_weights(hidden, weight, bias, where="at entry") -> None:
    e = hidden.shape[1]
    v = weight.shape[0] if weight.dim() == 2 else 0
    _whole(weight, (v if v > 0 else "V", e), "generator output weight", where)
    if bias is not None:
        _whole(bias, (v,), "generator output bias", where)


def check_discriminator_weights(hidden, dense_weight, out_weight, where="at entry") -> None:
    h = hidden.shape[1]
    _whole(dense_weight, (h, h), "discriminator dense weight", where)
    _whole(out_weight, (1, h), "discriminator output weight", where)


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Host-side range check (CPU tensors only: on a GPU it would cost a synchronisation every step)."""
    if targets.is_cuda or targets.numel() == 0:
        return
    t = targets[targets != ignore_index]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise GptDsError(f"generator targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; got "
                         f"min {int(t.min())}, max {int(t.max())}: check the tokenizer's vocabulary size against "
                         f"model.vocab_size")
