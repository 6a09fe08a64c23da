"""The discriminator head in Triton: dense(H->H) + GELU(erf) + dense(H->1), the N x H activations only in registers.

Forward: one program per row block walks the dense layer's output features in blocks, computing pre-activations
with tl.dot, applying GELU and folding them straight into the row's logit. Backward: a kernel recomputes each
(row block x feature block) pre-activation and writes d(pre) = dz * w2 * GELU'(pre), plus per-row-block partial sums
for the two small gradients (summed on the host in a fixed order: deterministic); the two big gradients are plain
GEMMs on d(pre). Same contract as discriminator_torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CONFIG = {"fwd": dict(BLOCK_N=64, BLOCK_J=64, BLOCK_K=64, num_warps=4, num_stages=3),
          "bwd": dict(BLOCK_N=64, BLOCK_J=64, BLOCK_K=64, num_warps=4, num_stages=3)}

# constexpr: compiled Triton reads no plain module globals inside a kernel (its interpreter does, so CPU tests miss it)
SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _pre_tile(X, W1, B1, rows, js, rmask, jmask, H, stride_x, stride_w,
              BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    acc = tl.zeros((BLOCK_N, BLOCK_J), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        x = tl.load(X + rows[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(W1 + js[:, None] * stride_w + ks[None, :], mask=jmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PREC)
    return acc + tl.load(B1 + js, mask=jmask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _disc_fwd_kernel(X, W1, B1, W2, B2, Z, N, H, stride_x, stride_w,
                     BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    z = tl.zeros((BLOCK_N,), tl.float32)
    for j0 in range(0, H, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        jmask = js < H
        pre = _pre_tile(X, W1, B1, rows, js, rmask, jmask, H, stride_x, stride_w, BLOCK_N, BLOCK_J, BLOCK_K, DOT_PREC)
        a = 0.5 * pre * (1.0 + tl.math.erf(pre * SQRT1_2))
        w2 = tl.load(W2 + js, mask=jmask, other=0.0).to(tl.float32)
        z += tl.sum(a * w2[None, :], axis=1)
    z += tl.load(B2).to(tl.float32)
    tl.store(Z + rows, z, mask=rmask)


@triton.jit
def _disc_bwd_kernel(X, W1, B1, W2, DZ, DPRE, P_B1, P_W2, N, H, stride_x, stride_w,
                     BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    jmask = js < H
    pre = _pre_tile(X, W1, B1, rows, js, rmask, jmask, H, stride_x, stride_w, BLOCK_N, BLOCK_J, BLOCK_K, DOT_PREC)
    dz = tl.load(DZ + rows, mask=rmask, other=0.0)
    w2 = tl.load(W2 + js, mask=jmask, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(pre * SQRT1_2))
    pdf = tl.exp(-0.5 * pre * pre) * INV_SQRT_2PI
    dpre = dz[:, None] * w2[None, :] * (cdf + pre * pdf)
    tl.store(DPRE + rows[:, None] * H + js[None, :], dpre, mask=rmask[:, None] & jmask[None, :])
    tl.store(P_B1 + pid_n * H + js, tl.sum(dpre, axis=0), mask=jmask)
    tl.store(P_W2 + pid_n * H + js, tl.sum(dz[:, None] * pre * cdf, axis=0), mask=jmask)


def _dot_prec(t: torch.Tensor) -> str:
    return "ieee" if t.dtype == torch.float32 else "tf32"


def discriminator_forward(x, w1, b1, w2, b2):
    n, h = x.shape
    z = torch.empty(n, dtype=torch.float32, device=x.device)
    cfg = CONFIG["fwd"]
    _disc_fwd_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](x, w1, b1, w2, b2, z, n, h, x.stride(0), w1.stride(0),
                                                       DOT_PREC=_dot_prec(x), **cfg)
    return z


def discriminator_backward(dz, x, w1, b1, w2):
    n, h = x.shape
    cfg = CONFIG["bwd"]
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    f32 = dict(dtype=torch.float32, device=x.device)
    dpre = torch.empty(n, h, **f32)
    p_b1, p_w2 = torch.empty(n_blocks, h, **f32), torch.empty(n_blocks, h, **f32)
    _disc_bwd_kernel[(n_blocks, triton.cdiv(h, cfg["BLOCK_J"]))](x, w1, b1, w2, dz.contiguous(), dpre, p_b1, p_w2,
                                                                 n, h, x.stride(0), w1.stride(0),
                                                                 DOT_PREC=_dot_prec(x), **cfg)
    if x.dtype == torch.float32:
        g_x, g_w1 = dpre @ w1, dpre.t() @ x
    else:  # tensor-core GEMMs on the low-precision copy of d(pre); the GEMMs accumulate in fp32 inside
        d16 = dpre.to(x.dtype)
        g_x, g_w1 = d16 @ w1, (d16.t() @ x)
    return (g_x.to(x.dtype), g_w1.to(w1.dtype), p_b1.sum(dim=0).to(b1.dtype), p_w2.sum(dim=0).reshape(w2.shape)
            .to(w2.dtype), dz.sum().reshape(1))
