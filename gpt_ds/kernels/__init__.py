"""The two heads of ELECTRA pretraining, each one function whatever runs inside it.

`impl`: "reference" (plain full-logits PyTorch), "torch" (chunked, bounded memory), "triton" (GPU; on CPU tensors only
under TRITON_INTERPRET=1), "auto" (triton on CUDA tensors when triton imports, else torch).
Both functions must be called inside the owning engine's forward under ZeRO-3, with full-shape weights; they raise
GptDsError at entry (and again in the backward) when handed a 0-element shard. See docs/kernels.md.
"""
from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch

from gpt_ds.errors import GptDsError
from gpt_ds.kernels.autograd import DiscriminatorHeadFn, GeneratorHeadFn
from gpt_ds.kernels.checks import check_discriminator_weights, check_generator_weights, check_targets
from gpt_ds.kernels.noise import row_keys_i32
from gpt_ds.kernels.reference import discriminator_head_reference, generator_head_reference

IMPLS = ("auto", "triton", "torch", "reference")


class GeneratorHeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean cross-entropy over rows whose target != ignore_index (0 when none)
    sampled: torch.Tensor  # (N,) int64: argmax(logits / T + gumbel(seed, row, vocab)), target banned if disallow_correct
    correct: torch.Tensor  # (N,) bool: argmax(logits) == target (False on ignored rows)


class DiscriminatorHeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean BCE-with-logits over the N rows (0 when N == 0)
    logits: torch.Tensor  # (N,) detached, for accuracy / precision / recall / AUC


def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def head_impl(kernels: str, on_gpu: bool) -> str:
    """What `model.kernels` runs for the heads, decided once here (the trainer's heads and the estimator both ask)."""
    if kernels == "auto":
        return "triton" if on_gpu and triton_available() else "torch"
    return kernels


def encoder_fast_paths(kernels: str, encoder_kernels: str) -> bool:
    """Whether the towers get gpt_ds's encoder paths (`model.encoder_kernels`; "auto" follows the heads' reference)."""
    if encoder_kernels == "auto":
        return kernels != "reference"
    return encoder_kernels == "fast"


def resolve_impl(impl: str, t: torch.Tensor) -> str:
    """The concrete implementation `impl` means for tensors like `t`."""
    if impl not in IMPLS:
        raise GptDsError(f"model.kernels={impl!r} is not one of {', '.join(IMPLS)}")
    if impl == "auto":
        return head_impl(impl, t.is_cuda)
    if impl == "triton":
        if not triton_available():
            raise GptDsError("model.kernels='triton' but triton does not import: install triton or use 'torch'")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise GptDsError("model.kernels='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
                             "imported, for tests): use 'torch' or 'auto' on the CPU")
    return impl


def _backend(head: str, impl: str):
    return importlib.import_module(f"gpt_ds.kernels.{head}_{impl}")


def generator_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
                   temperature: float = 1.0, seed: int = 0, row_ids: torch.Tensor | None = None,
                   disallow_correct: bool = False, ignore_index: int = -100, impl: str = "auto") -> GeneratorHeadOutput:
    """Linear (tied output embedding) + cross-entropy + Gumbel-max sampling at the masked rows only."""
    check_generator_weights(hidden, weight, bias)
    if not temperature > 0:
        raise GptDsError(f"generator sampling temperature must be > 0, got {temperature}")
    n = hidden.shape[0]
    if row_ids is None:
        row_ids = torch.arange(n, device=hidden.device)
    impl = resolve_impl(impl, hidden)
    if impl == "reference":
        return GeneratorHeadOutput(*generator_head_reference(
            hidden, weight, bias, targets, temperature=temperature, seed=seed, row_ids=row_ids,
            disallow_correct=disallow_correct, ignore_index=ignore_index))
    check_targets(targets, weight.shape[0], ignore_index)
    if impl == "triton" and n == 0:
        impl = "torch"  # nothing to launch; the chunked path returns the empty results
    if impl == "triton" and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    keys = row_keys_i32(seed, row_ids.to(hidden.device))
    out = GeneratorHeadFn.apply(hidden.contiguous(), weight.contiguous(),
                                None if bias is None else bias.contiguous(), targets.contiguous().to(torch.int64),
                                keys, float(temperature), bool(disallow_correct), int(ignore_index),
                                _backend("generator", impl))
    return GeneratorHeadOutput(*out)


def discriminator_head(hidden: torch.Tensor, dense_weight: torch.Tensor, dense_bias: torch.Tensor,
                       out_weight: torch.Tensor, out_bias: torch.Tensor, labels: torch.Tensor, *,
                       impl: str = "auto") -> DiscriminatorHeadOutput:
    """dense(H->H) + GELU + dense(H->1) + BCE-with-logits over the given (non-padding) rows."""
    check_discriminator_weights(hidden, dense_weight, out_weight)
    impl = resolve_impl(impl, hidden)
    if impl == "reference":
        return DiscriminatorHeadOutput(*discriminator_head_reference(hidden, dense_weight, dense_bias, out_weight,
                                                                     out_bias, labels))
    if impl == "triton" and hidden.shape[0] == 0:
        impl = "torch"
    h = hidden.shape[1]
    if dense_bias is None:
        dense_bias = torch.zeros(h, dtype=dense_weight.dtype, device=dense_weight.device)
    if out_bias is None:
        out_bias = torch.zeros(1, dtype=out_weight.dtype, device=out_weight.device)
    if impl == "triton" and hidden.dtype != dense_weight.dtype:
        hidden = hidden.to(dense_weight.dtype)
    loss, logits = DiscriminatorHeadFn.apply(hidden.contiguous(), dense_weight.contiguous(), dense_bias.contiguous(),
                                             out_weight.contiguous(), out_bias.contiguous(), labels,
                                             _backend("discriminator", impl))
    return DiscriminatorHeadOutput(loss, logits)



