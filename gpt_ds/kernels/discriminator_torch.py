"""The discriminator head in chunked PyTorch: dense(H->H) + GELU(erf) + dense(H->1) + BCE-with-logits.

Nothing N x H is kept between forward and backward: the backward recomputes each row block's pre-activation and
GELU from the saved input, so the head's saved state is the input it was given plus one logit per row.
Gradients accumulate in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TILE_ELEMS = 1 << 20  # rows x H elements per block (4 MiB of fp32)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def rows_per_block(h: int) -> int:
    return max(16, TILE_ELEMS // max(h, 1))


def discriminator_forward(x, w1, b1, w2, b2):
    """-> logits (N,) fp32."""
    n, h = x.shape
    w1f, b1f, w2f, b2f = _f32(w1), _f32(b1), _f32(w2).reshape(h), _f32(b2).reshape(())
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    step = rows_per_block(h)
    for r0 in range(0, n, step):
        a = F.gelu(torch.addmm(b1f, _f32(x[r0:r0 + step]), w1f.t()))
        out[r0:r0 + step] = a @ w2f + b2f
    return out


def discriminator_backward(dz, x, w1, b1, w2):
    """dz: (N,) fp32 d(loss)/d(logit) -> grads of (x, w1, b1, w2, b2) in fp32 accumulators, cast to input dtypes."""
    n, h = x.shape
    w1f, b1f, w2f = _f32(w1), _f32(b1), _f32(w2).reshape(h)
    g_x = torch.empty(n, h, dtype=torch.float32, device=x.device)
    g_w1 = torch.zeros(h, h, dtype=torch.float32, device=x.device)
    g_b1 = torch.zeros(h, dtype=torch.float32, device=x.device)
    g_w2 = torch.zeros(h, dtype=torch.float32, device=x.device)
    step = rows_per_block(h)
    for r0 in range(0, n, step):
        xr = _f32(x[r0:r0 + step])
        d = dz[r0:r0 + step, None]
        pre = torch.addmm(b1f, xr, w1f.t())
        g_w2 += (F.gelu(pre) * d).sum(dim=0)
        dpre = torch.ops.aten.gelu_backward(d * w2f, pre)
        torch.mm(dpre, w1f, out=g_x[r0:r0 + step])
        g_w1.addmm_(dpre.t(), xr)
        g_b1 += dpre.sum(dim=0)
    g_b2 = dz.sum().reshape(1)
    return (g_x.to(x.dtype), g_w1.to(w1.dtype), g_b1.to(b1.dtype), g_w2.reshape(w2.shape).to(w2.dtype), g_b2)

