"""Faster encoder layers for the stock transformers towers on the CPU; the GPU keeps torch's fused kernels.

Why: on the CPU every elementwise pass over an activation costs about as much as its share of the matmuls, torch has
no fused dropout there (`bernoulli_` draws a 64-bit Mersenne-Twister value per element and stores a mask), and the
stock layers add each bias in a pass of its own. With the C++ kernels (gpt_ds/kernels/cpu_ops.cpp, built on first
use by cpu_ext):
- dropout keeps element i when a 16-bit lane of a counter hash of (seed, i) is >= q = round(p * 65536) and scales kept
  values by 65536 / (65536 - q), so the expectation is exact; the backward regenerates the mask from the seed. The
  seed is drawn from torch's default generator: checkpoints restore it and activation checkpointing replays it;
- the output blocks' dense + bias + dropout + residual (`BiasDropoutLinear`) add the bias and the residual inside the
  dropout's one pass, whose backward also sums the bias gradient (a fused bias + GELU was tried and dropped: ATen's
  oneDNN GELU was faster than it);
- self-attention runs one Q/K/V matmul, then C++ tasks per (sequence, head) on the projection's output in place
  (`_QKVAttentionFn`: BLAS products on strided head views, scale, mask, softmax and dropout, no layout copies);
  without BLAS, and for other modules (`cpu_attention`, registered with transformers' AttentionInterface), the C++
  core scales, masks, softmaxes and drops between batched matmuls in one pass each way.
Without the extension (no compiler) dropout falls back to masks from 16-bit lanes of `random_` words (`keep_mask`),
and the rest to stock torch ops. Without dropout, in eval mode or on a GPU, attention hands over to transformers' SDPA.

`install_fast_paths(tower)` swaps modules in place; parameters keep their modules and names, so state dicts,
ZeRO-3's per-module gathering and exports are untouched. `model.kernels: reference` leaves the towers stock (the
plain PyTorch twin the tests hold these to).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gpt_ds.kernels import cpu_ext

ATTENTION_NAME = "gpt_ds_cpu"
_LEVELS = cpu_ext.LEVELS  # dropout resolution: 16 random bits per element


def _hash_dropout(x: torch.Tensor, p: float) -> bool:
    """Whether the C++ hash dropout applies: a CPU tensor, 0 < p < 1 at 16-bit resolution, the extension built."""
    return x.device.type == "cpu" and 0 < round(p * _LEVELS) < _LEVELS and cpu_ext.ops() is not None


def _fused_attention(x: torch.Tensor, mask: torch.Tensor | None, p: float) -> bool:
    """Whether the C++ attention core applies: hash dropout on float32, and no mask or a 4-D bool one (sdpa_mask)."""
    mask_ok = mask is None or (mask.dtype == torch.bool and mask.dim() == 4)
    return mask_ok and x.dtype == torch.float32 and _hash_dropout(x, p)


def keep_mask(shape: torch.Size | tuple, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A bool mask that keeps each element with probability 1 - q/65536 (q = round(p * 65536)), and 1 / that."""
    q, scale = cpu_ext.dropout_params(p)
    n = math.prod(shape)
    # The full int64 range: every 16-bit lane of a word is uniform (random_() alone leaves the top bit at 0).
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), (1 << 63) - 1)
    keep = words.view(torch.int16)[:n] >= q - _LEVELS // 2
    return keep.view(shape), scale


class _DropoutFn(torch.autograd.Function):
    """Fallback when the C++ kernels are not built: a stored 16-bit-lane mask."""

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


class _HashDropoutFn(torch.autograd.Function):
    """dropout(x + bias) [+ residual] in one pass; the backward regenerates the mask from the seed (nothing
    stored)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, p: float, residual: torch.Tensor | None):
        q, scale = cpu_ext.dropout_params(p)
        ctx.args = (cpu_ext.new_seed(), q, scale)
        return cpu_ext.ops().dropout_forward(x, bias, *ctx.args, residual)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g_res = grad if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[1]:  # the bias gradient's column sums in the same pass
            gx, gb = cpu_ext.ops().dropout_backward_bias(grad, *ctx.args)
            return gx, gb, None, g_res
        return cpu_ext.ops().dropout_backward(grad, *ctx.args), None, None, g_res


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Same semantics as `torch.nn.functional.dropout`; 16-bit masks on the CPU, torch's fused kernel elsewhere."""
    if not training or p == 0.0:
        return x
    if _hash_dropout(x, p):
        return _HashDropoutFn.apply(x, None, p, None)
    if x.device.type != "cpu" or p >= 1.0 or round(p * _LEVELS) == 0:
        return nn.functional.dropout(x, p, training)
    return _DropoutFn.apply(x, p)


class FastDropout(nn.Dropout):
    """Drop-in for nn.Dropout (still an instance of it, so transformers reads `.p` as before)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return nn.functional.dropout(x, self.p, self.training, inplace=True)
        return fast_dropout(x, self.p, self.training)


class _AttentionFn(torch.autograd.Function):
    """softmax(q k^T * scale, masked) -> dropout -> @ v, with the scaling, masking, softmax and dropout in one C++ pass
    each way. Saves q, k, v, the probabilities and the dropped probabilities (the matmuls' operands), no mask.
    (Batched matmuls per sequence on the projections' strided layout, to skip torch.matmul's contiguous copies, were
    tried in a prototype: the per-call overhead of 16 small products ate the saving.)"""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, p: float):
        dq, dscale = cpu_ext.dropout_params(p)
        seed = cpu_ext.new_seed()
        scores = torch.matmul(q, k.transpose(-1, -2))
        y, yd = cpu_ext.ops().attention_softmax_dropout(scores, mask, scale, seed, dq, dscale)
        ctx.save_for_backward(q, k, v, y, yd)
        ctx.args = (scale, seed, dq, dscale)
        return torch.matmul(yd, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, y, yd = ctx.saved_tensors
        g_yd = torch.matmul(grad, v.transpose(-1, -2))
        g_v = torch.matmul(yd.transpose(-1, -2), grad)
        g_s = cpu_ext.ops().attention_softmax_dropout_backward(g_yd, y, *ctx.args)
        return torch.matmul(g_s, k), torch.matmul(g_s.transpose(-1, -2), q), g_v, None, None, None


def _qkv_kernel() -> bool:
    """Whether the C++ attention from the Q/K/V projection applies (it needs BLAS sgemm from torch's MKL)."""
    return cpu_ext.ops().qkv_attention_available()


class _QKVAttentionFn(torch.autograd.Function):
    """x @ [Wq; Wk; Wv]^T, then the whole attention in C++ tasks per (sequence, head) that read Q, K and V where the
    projection wrote them and write the context in the (B, L, E) layout the output dense reads: no head-split or
    transpose copies, and only the biased projection and the probabilities are saved (dropout is regenerated)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, heads: int, scale: float, p: float):
        b, n, e = x.shape
        dq, dscale = cpu_ext.dropout_params(p)
        ctx.args = (heads, scale, cpu_ext.new_seed(), dq, dscale)
        qkv = torch.mm(x.reshape(b * n, e), weight.t()).view(b, n, -1)  # the kernel adds the bias in place
        out, y = cpu_ext.ops().qkv_attention_forward(qkv, bias, mask, *ctx.args)
        ctx.save_for_backward(x, weight, qkv, y)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, qkv, y = ctx.saved_tensors
        d, gb = cpu_ext.ops().qkv_attention_backward(grad, qkv, y, *ctx.args)
        d = d.view(-1, qkv.shape[-1])
        need = ctx.needs_input_grad
        gx = torch.mm(d, weight).view_as(x) if need[0] else None
        gw = torch.mm(d.t(), x.reshape(-1, x.shape[-1])) if need[1] else None
        return gx, gw, gb if need[2] else None, None, None, None, None


class BiasDropoutLinear(nn.Linear):
    """nn.Linear whose forward also applies its parent's dropout, and adds the parent's residual when given: on the
    CPU the bias add, the dropout and the residual add are one pass of the C++ kernel (no bias broadcast into the
    matmul's output, no stored mask). Same parameters and names as the nn.Linear it replaces; elsewhere it is
    linear, then dropout, then the residual add."""

    def __init__(self, linear: nn.Linear, p: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.p = p

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.bias is not None and _hash_dropout(x, self.p):
            return _HashDropoutFn.apply(nn.functional.linear(x, self.weight), self.bias, self.p, residual)
        out = fast_dropout(nn.functional.linear(x, self.weight, self.bias), self.p, self.training)
        return out if residual is None else out + residual

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def _output_block_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    """ElectraSelfOutput / ElectraOutput forward, LayerNorm(dropout(dense(x)) + residual), with the residual add in
    the dense's dropout pass (the dense module is still called, so ZeRO-3 gathers its parameters as before)."""
    return self.LayerNorm(self.dense(hidden_states, input_tensor))


def _fused_qkv_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None,
                       **kwargs):
    """ElectraSelfAttention.forward with Q, K and V from one matmul (N = 3H: fewer, larger products, one bias add, one
    input gradient instead of three summed) and the C++ attention core; elsewhere the stock forward."""
    p = self.dropout.p
    biases = (self.query.bias, self.key.bias, self.value.bias)
    if (cache is not None or not self.training or self.is_causal or any(b is None for b in biases)
            or not _fused_attention(hidden_states, attention_mask, p)):
        return super(type(self), self).forward(hidden_states, attention_mask, cache=cache, **kwargs)
    b, n = hidden_states.shape[:2]
    h, d = self.num_attention_heads, self.attention_head_size
    w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
    if _qkv_kernel():
        return _QKVAttentionFn.apply(hidden_states, w, torch.cat(biases), attention_mask, h, self.scaling, p), None
    qkv = nn.functional.linear(hidden_states, w, torch.cat(biases)).view(b, n, 3, h, d)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # unbind's backward stacks (select's zero-fills 3 times)
    out = _AttentionFn.apply(q, k, v, attention_mask, self.scaling, p)
    return out.transpose(1, 2).reshape(b, n, h * d), None


_FUSED_CLASSES: dict = {}  # ElectraSelfAttention class -> its fused-Q/K/V subclass
_OUTPUT_CLASSES: dict = {}  # output block class -> its residual-in-dropout subclass


def _swap_forward(module: nn.Module, forward, classes: dict) -> None:
    """Give `module` another forward through a subclass (same children, parameters, names and state dict)."""
    cls = type(module)
    if cls not in classes:
        classes[cls] = type("GptDs" + cls.__name__, (cls,), {"forward": forward})
    module.__class__ = classes[cls]


def _fuse_qkv(module: nn.Module) -> None:
    _swap_forward(module, _fused_qkv_forward, _FUSED_CLASSES)


def zero3_external_parameters(tower: nn.Module) -> list[tuple[nn.Module, nn.Parameter]]:
    """(module, parameter) pairs ZeRO-3 must gather for a module that reads them without calling their own module:
    the fused Q/K/V weights, read by their attention module."""
    fused = tuple(_FUSED_CLASSES.values())
    return [(m, p) for m in tower.modules() if isinstance(m, fused)
            for lin in (m.query, m.key, m.value) for p in lin.parameters()]


_OUTPUT_BLOCKS = ("ElectraSelfOutput", "ElectraOutput")  # forward: LayerNorm(dropout(dense(x)) + residual)


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
    if _fused_attention(query, attention_mask, dropout):
        return _AttentionFn.apply(query, key, value, attention_mask, scale, dropout).transpose(1, 2).contiguous(), None
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
        if type(module).__name__ in _OUTPUT_BLOCKS and type(module.dense) is nn.Linear:
            if type(module.dropout) is nn.Dropout and not module.dropout.inplace:
                module.dense = BiasDropoutLinear(module.dense, module.dropout.p)
                module.dropout = nn.Identity()
                _swap_forward(module, _output_block_forward, _OUTPUT_CLASSES)
        if type(module).__name__ == "ElectraSelfAttention" and all(
                type(getattr(module, n, None)) is nn.Linear for n in ("query", "key", "value")):
            _fuse_qkv(module)
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p, inplace=child.inplace))
    tower.config._attn_implementation = ATTENTION_NAME
    return tower
