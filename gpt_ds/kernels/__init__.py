"""The two heads of ELECTRA pretraining, each one function whatever runs inside it.

`impl`: "reference" (plain full-logits PyTorch), "torch" (chunked, bounded memory), "triton" (GPU), "auto".
Both functions must be called inside the owning engine's forward under ZeRO-3, with full-shape weights.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from gpt_ds.kernels.reference import discriminator_head_reference, generator_head_reference


class GeneratorHeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean cross-entropy over rows whose target != ignore_index (0 when none)
    sampled: torch.Tensor  # (N,) int64: argmax(logits / T + gumbel(seed, row, vocab)), target banned if disallow_correct
    correct: torch.Tensor  # (N,) bool: argmax(logits) == target (False on ignored rows)


class DiscriminatorHeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean BCE-with-logits over the N rows (0 when N == 0)
    logits: torch.Tensor  # (N,) detached, for accuracy / precision / recall / AUC


def _check_full(weight: torch.Tensor, expect: tuple, what: str) -> None:
    if tuple(weight.shape) != tuple(expect):
        raise RuntimeError(
            f"{what} has shape {tuple(weight.shape)}, expected {tuple(expect)}: under ZeRO-3 the head must run inside "
            f"the engine's forward with the weight registered as an external parameter (a 0-element shard means it "
            f"was read outside the forward)")


def generator_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
                   temperature: float = 1.0, seed: int = 0, row_ids: torch.Tensor | None = None,
                   disallow_correct: bool = False, ignore_index: int = -100, impl: str = "auto") -> GeneratorHeadOutput:
    """Linear (tied output embedding) + cross-entropy + Gumbel-max sampling at the masked rows only."""
    n, e = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != e:
        _check_full(weight, (weight.shape[0] if weight.dim() == 2 else -1, e), "generator output weight")
    if bias is not None:
        _check_full(bias, (weight.shape[0],), "generator output bias")
    if row_ids is None:
        row_ids = torch.arange(n, device=hidden.device)
    out = generator_head_reference(hidden, weight, bias, targets, temperature=temperature, seed=seed,
                                   row_ids=row_ids, disallow_correct=disallow_correct, ignore_index=ignore_index)
    return GeneratorHeadOutput(*out)


def discriminator_head(hidden: torch.Tensor, dense_weight: torch.Tensor, dense_bias: torch.Tensor,
                       out_weight: torch.Tensor, out_bias: torch.Tensor, labels: torch.Tensor, *,
                       impl: str = "auto") -> DiscriminatorHeadOutput:
    """dense(H->H) + GELU + dense(H->1) + BCE-with-logits over the given (non-padding) rows."""
    h = hidden.shape[1]
    _check_full(dense_weight, (h, h), "discriminator dense weight")
    _check_full(out_weight, (1, h), "discriminator output weight")
    return DiscriminatorHeadOutput(*discriminator_head_reference(hidden, dense_weight, dense_bias, out_weight,
                                                                 out_bias, labels))
