"""The generator head in Triton: linear + cross-entropy + Gumbel-max sampling, logits only ever in registers.

Forward: a 2-D grid of (row block x vocabulary split) programs; each walks its split tile by tile (tl.dot over E in
fp32), keeping per-row online log-sum-exp, first-occurrence argmax, target logit and Gumbel-max; the few partials per
row are merged on the host in a fixed order (deterministic). The noise is the uint32 hash of noise.py; a tile whose
best possible z = max(logits)/T + GUMBEL_MAX cannot beat a row's running sample skips the hashing.
The row statistics are kept as (max, log-sum) apart, so a large common logit offset costs no precision.
Backward: two deterministic kernels (no atomics), each recomputing logits tiles: one owns row blocks and accumulates
d hidden = P @ W, the other owns vocabulary blocks and accumulates d weight = P^T @ hidden and d bias, where
P = (softmax - onehot) * grad / n_valid. Accumulators are fp32; P is cast to the weight dtype for the second dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpt_ds.kernels.noise import GUMBEL_MAX

# Tile sizes (GPU defaults; tests shrink them to exercise ragged edges in the interpreter).
CONFIG = {"fwd": dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=64, num_warps=8, num_stages=3),
          "bwd_h": dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=64, BLOCK_E=256, num_warps=8, num_stages=2),
          "bwd_w": dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=64, BLOCK_E=256, num_warps=8, num_stages=2),
          "target_programs": 1024}


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _logits_tile(H, W, B, rows, cols, rmask, cmask, E, stride_h, stride_w,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PREC: tl.constexpr):
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, E, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < E
        h = tl.load(H + rows[:, None] * stride_h + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _gen_fwd_kernel(H, W, B, TGT, KEYS, P_M, P_S, P_AV, P_AI, P_ZV, P_ZI, P_TL,
                    N, V, E, V_SPLIT, stride_h, stride_w, temperature,
                    HAS_BIAS: tl.constexpr, DISALLOW: tl.constexpr, UNIT_T: tl.constexpr, IGNORE: tl.constexpr,
                    GMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT_PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    tgt = tl.load(TGT + rows, mask=rmask, other=IGNORE)
    banned = tl.where(tgt != IGNORE, tgt, 0)
    key = tl.load(KEYS + rows, mask=rmask, other=0).to(tl.uint32, bitcast=True)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    av = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    ai = tl.zeros((BLOCK_N,), tl.int64)
    zv = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    zi = tl.zeros((BLOCK_N,), tl.int64)
    tlg = tl.zeros((BLOCK_N,), tl.float32)
    v_begin = pid_s * V_SPLIT
    v_end = tl.minimum(V, v_begin + V_SPLIT)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < v_end
        acc = _logits_tile(H, W, B, rows, cols, rmask, cmask, E, stride_h, stride_w,
                           HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, DOT_PREC)
        logits = tl.where(cmask[None, :], acc, float("-inf"))
        tmax = tl.max(logits, axis=1)
        targ = tl.argmax(logits, axis=1).to(tl.int64) + v0
        upd = tmax > av
        av = tl.where(upd, tmax, av)
        ai = tl.where(upd, targ, ai)
        m_new = tl.maximum(m, tmax)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
        tlg += tl.sum(tl.where(cols[None, :] == tgt[:, None], logits, 0.0), axis=1)
        if UNIT_T:
            zt = logits
            zt_max = tmax
        else:
            zt = tl.math.div_rn(logits, tl.full((BLOCK_N, BLOCK_V), temperature, tl.float32))
            zt_max = tl.math.div_rn(tmax, tl.full((BLOCK_N,), temperature, tl.float32))
        need = ((zt_max + GMAX) >= zv) & rmask
        if tl.max(need.to(tl.int32), axis=0) > 0:
            x = _mix32(key[:, None] ^ cols[None, :].to(tl.uint32))
            u = ((x >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
            z = zt + (-tl.log(-tl.log(u)))
            if DISALLOW:
                z = tl.where(cols[None, :] == banned[:, None], float("-inf"), z)
            z = tl.where(cmask[None, :], z, float("-inf"))
            zmax = tl.max(z, axis=1)
            zarg = tl.argmax(z, axis=1).to(tl.int64) + v0
            upd = zmax > zv
            zv = tl.where(upd, zmax, zv)
            zi = tl.where(upd, zarg, zi)
    out = pid_s * N + rows
    tl.store(P_M + out, m, mask=rmask)
    tl.store(P_S + out, s, mask=rmask)
    tl.store(P_AV + out, av, mask=rmask)
    tl.store(P_AI + out, ai, mask=rmask)
    tl.store(P_ZV + out, zv, mask=rmask)
    tl.store(P_ZI + out, zi, mask=rmask)
    tl.store(P_TL + out, tlg, mask=rmask)


@triton.jit
def _gen_bwd_h_kernel(H, W, B, TGT, STATS, SCALE, GH, N, V, E, stride_h, stride_w,
                      HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_e = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    es = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = es < E
    tgt = tl.load(TGT + rows, mask=rmask, other=0)
    m = tl.load(STATS + rows, mask=rmask, other=float("inf"))  # padding rows: p = 0, no inf * 0
    logs = tl.load(STATS + N + rows, mask=rmask, other=0.0)
    sc = tl.load(SCALE + rows, mask=rmask, other=0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_E), tl.float32)
    if tl.max(tl.abs(sc), axis=0) > 0:
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            cmask = cols < V
            logits = _logits_tile(H, W, B, rows, cols, rmask, cmask, E, stride_h, stride_w,
                                  HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, DOT_PREC)
            p = tl.exp((logits - m[:, None]) - logs[:, None]) * sc[:, None]
            p = tl.where(cols[None, :] == tgt[:, None], p - sc[:, None], p)
            p = tl.where(cmask[None, :], p, 0.0)
            w = tl.load(W + cols[:, None] * stride_w + es[None, :], mask=cmask[:, None] & emask[None, :], other=0.0)
            acc = tl.dot(p.to(w.dtype), w, acc, input_precision=DOT_PREC)
    tl.store(GH + rows[:, None] * E + es[None, :], acc, mask=rmask[:, None] & emask[None, :])


@triton.jit
def _gen_bwd_w_kernel(H, W, B, TGT, STATS, SCALE, GW, GB, N, V, E, stride_h, stride_w,
                      HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_v = tl.program_id(0)
    pid_e = tl.program_id(1)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < V
    es = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = es < E
    acc = tl.zeros((BLOCK_V, BLOCK_E), tl.float32)
    bacc = tl.zeros((BLOCK_V,), tl.float32)
    for r0 in range(0, N, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        sc = tl.load(SCALE + rows, mask=rmask, other=0.0)
        if tl.max(tl.abs(sc), axis=0) > 0:
            tgt = tl.load(TGT + rows, mask=rmask, other=0)
            m = tl.load(STATS + rows, mask=rmask, other=float("inf"))  # padding rows: p = 0, no inf * 0
            logs = tl.load(STATS + N + rows, mask=rmask, other=0.0)
            logits = _logits_tile(H, W, B, rows, cols, rmask, cmask, E, stride_h, stride_w,
                                  HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, DOT_PREC)
            p = tl.exp((logits - m[:, None]) - logs[:, None]) * sc[:, None]
            p = tl.where(cols[None, :] == tgt[:, None], p - sc[:, None], p)
            p = tl.where(rmask[:, None] & cmask[None, :], p, 0.0)
            h = tl.load(H + rows[:, None] * stride_h + es[None, :], mask=rmask[:, None] & emask[None, :], other=0.0)
            acc = tl.dot(tl.trans(p.to(h.dtype)), h, acc, input_precision=DOT_PREC)
            if HAS_BIAS:
                bacc += tl.sum(p, axis=0)
    tl.store(GW + cols[:, None] * E + es[None, :], acc, mask=cmask[:, None] & emask[None, :])
    if HAS_BIAS:
        if pid_e == 0:
            tl.store(GB + cols, bacc, mask=cmask)


def _dot_prec(t: torch.Tensor) -> str:
    return "ieee" if t.dtype == torch.float32 else "tf32"  # fp32: exact products (no tf32); bf16/fp16: ignored


def generator_forward(hidden, weight, bias, targets, keys, temperature, disallow_correct, ignore_index):
    """Same contract as generator_torch.generator_forward."""
    n, e = hidden.shape
    vocab = weight.shape[0]
    cfg = CONFIG["fwd"]
    bn, bv = cfg["BLOCK_N"], cfg["BLOCK_V"]
    n_blocks = triton.cdiv(n, bn)
    v_tiles = triton.cdiv(vocab, bv)
    splits = max(1, min(v_tiles, triton.cdiv(CONFIG["target_programs"], n_blocks)))
    v_split = triton.cdiv(v_tiles, splits) * bv
    splits = triton.cdiv(vocab, v_split)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    p_m, p_s, p_av, p_zv, p_tl = (torch.empty(splits, n, **f32) for _ in range(5))
    p_ai, p_zi = (torch.empty(splits, n, dtype=torch.int64, device=hidden.device) for _ in range(2))
    b = bias if bias is not None else weight  # placeholder pointer, never read
    _gen_fwd_kernel[(n_blocks, splits)](
        hidden, weight, b, targets, keys, p_m, p_s, p_av, p_ai, p_zv, p_zi, p_tl,
        n, vocab, e, v_split, hidden.stride(0), weight.stride(0), float(temperature),
        HAS_BIAS=bias is not None, DISALLOW=bool(disallow_correct), UNIT_T=float(temperature) == 1.0,
        IGNORE=int(ignore_index), GMAX=GUMBEL_MAX, DOT_PREC=_dot_prec(hidden), **cfg)
    m = p_m.amax(dim=0)
    stats = torch.stack([m, torch.log((p_s * torch.exp(p_m - m)).sum(dim=0))])
    tgt_logit = p_tl.sum(dim=0)
    amax = p_ai.gather(0, p_av.argmax(dim=0)[None]).squeeze(0)  # first split holding the max: lowest id wins ties
    sampled = p_zi.gather(0, p_zv.argmax(dim=0)[None]).squeeze(0)
    valid = targets != ignore_index
    nll = torch.where(valid, (stats[0] - tgt_logit) + stats[1], 0.0)
    return nll, stats, sampled, (amax == targets) & valid


def generator_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index):
    """Same contract as generator_torch.generator_backward."""
    n, e = hidden.shape
    vocab = weight.shape[0]
    valid = targets != ignore_index
    scale = torch.where(valid, grad_loss.float() / valid.sum().clamp(min=1), 0.0).contiguous()
    g_h = torch.empty(n, e, dtype=torch.float32, device=hidden.device)
    g_w = torch.empty(vocab, e, dtype=torch.float32, device=hidden.device)
    g_b = torch.empty(vocab, dtype=torch.float32, device=hidden.device) if bias is not None else g_w
    b = bias if bias is not None else weight
    common = dict(HAS_BIAS=bias is not None, DOT_PREC=_dot_prec(hidden))
    ch, cw = CONFIG["bwd_h"], CONFIG["bwd_w"]
    _gen_bwd_h_kernel[(triton.cdiv(n, ch["BLOCK_N"]), triton.cdiv(e, ch["BLOCK_E"]))](
        hidden, weight, b, targets, stats, scale, g_h, n, vocab, e, hidden.stride(0), weight.stride(0), **common, **ch)
    _gen_bwd_w_kernel[(triton.cdiv(vocab, cw["BLOCK_V"]), triton.cdiv(e, cw["BLOCK_E"]))](
        hidden, weight, b, targets, stats, scale, g_w, g_b, n, vocab, e, hidden.stride(0), weight.stride(0),
        **common, **cw)
    return g_h.to(hidden.dtype), g_w.to(weight.dtype), (g_b.to(bias.dtype) if bias is not None else None)
