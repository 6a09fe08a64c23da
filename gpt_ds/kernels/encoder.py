"""Faster dropout and attention for the stock transformers towers on the CPU; the GPU keeps torch's fused kernels.

Why: on the CPU, `torch.bernoulli_` draws one 64-bit Mersenne-Twister value per element, the largest cost of an
ELECTRA-Small step after the matmuls. Dropout needs 16 random bits per element, not 64: one `random_` word gives four
decisions, and dropout's forward + backward takes about half the time (bench/encoder_ops.py). The keep probability
is 1 - round(p * 65536) / 65536 (p within 8e-6 of the configured rate) and the kept values are scaled by its
inverse, so the expectation is exact. The draws come from torch's default generator: checkpoints restore it, and
activation checkpointing's recompute replays the same masks.

Attention on the CPU with dropout falls back to SDPA's math path (softmax, then bernoulli); `cpu_attention` does the
same computation with the fast mask. Without dropout, in eval mode or on a GPU it hands over to transformers' SDPA.

`install_fast_paths(tower)` swaps the tower's `nn.Dropout` modules for `FastDropout` (same `p`, same repr, no
parameters, so state dicts and exports are untouched) and points its attention at `cpu_attention`.
`model.kernels: reference` leaves the towers stock (the plain PyTorch twin the tests hold these to).
"""
from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION_NAME = "gpt_ds_cpu"
_LEVELS = 1 << 16  # dropout resolution: 16 random bits per element


def keep_mask(shape: torch.Size | tuple, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A bool mask that keeps each element with probability 1 - q/65536 (q = round(p * 65536)), and 1 / that."""
    q = round(p * _LEVELS)
    n = math.prod(shape)
    # The full int64 range: every 16-bit lane of a word is uniform (random_() alone leaves the top bit at 0).
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), (1 << 63) - 1)
    keep = words.view(torch.int16)[:n] >= q - _LEVELS // 2
    return keep.view(shape), _LEVELS / (_LEVELS - q)


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Same semantics as `torch.nn.functional.dropout`; 16-bit masks on the CPU, torch's fused kernel elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or round(p * _LEVELS) == 0:
        return nn.functional.dropout(x, p, training)
    return _DropoutFn.apply(x, p)


class FastDropout(nn.Dropout):
    """Drop-in for nn.Dropout (still an instance of it, so transformers reads `.p` as before)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return nn.functional.dropout(x, self.p, self.training, inplace=True)
        return fast_dropout(x, self.p, self.training)


def cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
    """transformers' attention-function signature: (B, heads, L, d) in, ((B, L, heads, d), None) out."""
    causal = getattr(module, "is_causal", False) and attention_mask is None  # encoders here; decoders: SDPA
    if dropout == 0.0 or query.device.type != "cpu" or not module.training or causal:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # sdpa_mask: True = attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(ATTENTION_NAME, cpu_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def install_fast_paths(tower: nn.Module) -> nn.Module:
    """Swap dropout modules and the attention function of a transformers tower in place; weights are not touched."""
    _register()
    for module in list(tower.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p, inplace=child.inplace))
    tower.config._attn_implementation = ATTENTION_NAME
    return tower
