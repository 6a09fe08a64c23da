"""The generator head in chunked PyTorch: linear + cross-entropy + Gumbel-max sampling with no N x V tensor.

Forward: for each (row block x vocabulary chunk) tile, compute the fp32 logits, fold them into per-row running
statistics (online log-sum-exp, first-occurrence argmax for accuracy, Gumbel-max for the sample, target logit) and drop
them. Backward: recompute each tile's logits, turn them into d(loss)/d(logits) = (softmax - onehot) * scale in place,
and accumulate the three gradients in fp32 buffers. Extra memory: a few tiles plus the fp32 gradient buffers.
Ties resolve to the lowest vocabulary id, as torch.argmax does, so samples match the full-logits reference.
On the CPU each tile's row-wise work runs in one pass of the C++ kernels (gpt_ds/kernels/cpu_ops.cpp) when they are
built; the tensor code below is their twin (`fused=False`), and the tests hold the two to each other.
"""
from __future__ import annotations

import torch

from gpt_ds.kernels import cpu_ext
from gpt_ds.kernels.noise import GUMBEL_MAX, gumbel_i32

TILE_ROWS = 1024  # rows per block
TILE_ELEMS = 1 << 20  # elements per (rows x vocab) tile: 4 MiB of fp32 logits


def tile_cols(rows: int, vocab: int) -> int:
    """Vocabulary columns per tile for a block of `rows` (also what gpt-ds estimate counts as the workspace)."""
    return max(128, min(vocab, TILE_ELEMS // max(rows, 1)))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _logits(h32, weight, bias, c0, c1):
    w = _f32(weight[c0:c1])
    if bias is None:
        return h32 @ w.t()
    return torch.addmm(_f32(bias[c0:c1]), h32, w.t())


def _bias_tile(bias, c0, c1):
    return None if bias is None else _f32(bias[c0:c1]).contiguous()


def _sample_update(z_best, z_idx, l, keys, c0, temperature, banned):
    """Gumbel-max over one tile, updating rows whose tile winner beats their running best (strictly)."""
    rows, cols = l.shape
    lmax = l.amax(dim=1)
    zt_max = lmax if temperature == 1.0 else lmax / temperature
    need = (zt_max + GUMBEL_MAX) >= z_best  # rows this tile can still win; the others skip the noise
    n_need = int(need.sum())
    if n_need == 0:
        return
    sel = None if n_need > rows // 2 else need.nonzero().squeeze(1)
    if sel is not None:
        l, keys = l.index_select(0, sel), keys.index_select(0, sel)
        banned = None if banned is None else banned.index_select(0, sel)
    z = gumbel_i32(keys, c0, cols)
    z.add_(l if temperature == 1.0 else l / temperature)
    if banned is not None:
        b = banned - c0
        inside = (b >= 0) & (b < cols)
        bc = b.clamp(0, cols - 1)[:, None]
        z.scatter_(1, bc, torch.where(inside[:, None], float("-inf"), z.gather(1, bc)))
    zmax, zarg = z.max(dim=1)
    if sel is None:
        upd = zmax > z_best
        z_best.copy_(torch.where(upd, zmax, z_best))
        z_idx.copy_(torch.where(upd, zarg + c0, z_idx))
    else:
        upd = zmax > z_best[sel]
        z_best[sel] = torch.where(upd, zmax, z_best[sel])
        z_idx[sel] = torch.where(upd, zarg + c0, z_idx[sel])


def _cpu_ops(t: torch.Tensor, fused: bool | None):
    """The C++ tile kernels when they apply (CPU tensors; fused=None: whenever built), else None."""
    if fused is False or t.device.type != "cpu":
        return None
    ops = cpu_ext.ops()
    if fused and ops is None:
        raise RuntimeError("fused=True but gpt_ds's C++ CPU kernels are not built (see the warning above)")
    return ops


def generator_forward(hidden, weight, bias, targets, keys, temperature, disallow_correct, ignore_index,
                      fused: bool | None = None):
    """-> (nll per row (fp32, 0 on ignored rows), stats, sampled, correct).

    stats (2, N) holds each row's logit max m and log(sum exp(logit - m)) apart: nll = (m - target logit) + log-sum
    stays exact when all logits share a large offset (m + log-sum alone would round to the offset's ulp).
    """
    n = hidden.shape[0]
    vocab = weight.shape[0]
    dev = hidden.device
    valid = targets != ignore_index
    banned = torch.where(valid, targets, torch.zeros_like(targets)) if disallow_correct else None
    stats = torch.empty(2, n, dtype=torch.float32, device=dev)
    tgt_logit = torch.zeros(n, dtype=torch.float32, device=dev)
    amax = torch.empty(n, dtype=torch.int64, device=dev)
    sampled = torch.empty(n, dtype=torch.int64, device=dev)
    ops = _cpu_ops(hidden, fused)
    long_targets = targets.long()  # the C++ kernels read int64 (a no-op for the usual int64 targets)
    for r0 in range(0, n, TILE_ROWS):
        r1 = min(n, r0 + TILE_ROWS)
        h32 = _f32(hidden[r0:r1])
        rows = r1 - r0
        tg = targets[r0:r1]
        m = torch.full((rows,), float("-inf"), device=dev)
        s = torch.zeros(rows, device=dev)
        a_val = torch.full((rows,), float("-inf"), device=dev)
        a_idx = torch.zeros(rows, dtype=torch.int64, device=dev)
        z_best = torch.full((rows,), float("-inf"), device=dev)
        z_idx = torch.zeros(rows, dtype=torch.int64, device=dev)
        cols = tile_cols(rows, vocab)
        for c0 in range(0, vocab, cols):
            c1 = min(vocab, c0 + cols)
            if ops is not None:  # the kernel adds the bias in its own pass (addmm would broadcast-copy it first)
                ops.gen_tile_forward(_logits(h32, weight, None, c0, c1), _bias_tile(bias, c0, c1), keys[r0:r1], c0,
                                     float(temperature), None if banned is None else banned[r0:r1],
                                     long_targets[r0:r1], m, s, a_val, a_idx, z_best, z_idx, tgt_logit[r0:r1],
                                     GUMBEL_MAX)
                continue
            l = _logits(h32, weight, bias, c0, c1)
            tmax, targ = l.max(dim=1)
            upd = tmax > a_val
            a_val = torch.where(upd, tmax, a_val)
            a_idx = torch.where(upd, targ + c0, a_idx)
            t = tg - c0
            hit = (t >= 0) & (t < c1 - c0)
            tgt_logit[r0:r1] += torch.where(hit, l.gather(1, t.clamp(0, c1 - c0 - 1)[:, None]).squeeze(1), 0.0)
            _sample_update(z_best, z_idx, l, keys[r0:r1], c0, temperature,
                           None if banned is None else banned[r0:r1])
            m_new = torch.maximum(m, tmax)
            s = s * torch.exp(m - m_new) + l.sub_(m_new[:, None]).exp_().sum(dim=1)
            m = m_new
        stats[0, r0:r1] = m
        stats[1, r0:r1] = torch.log(s)
        amax[r0:r1] = a_idx
        sampled[r0:r1] = z_idx
    nll = torch.where(valid, (stats[0] - tgt_logit) + stats[1], 0.0)
    correct = (amax == targets) & valid
    return nll, stats, sampled, correct


def generator_backward(grad_loss, hidden, weight, bias, targets, stats, ignore_index, fused: bool | None = None):
    """-> (grad hidden, grad weight, grad bias or None), accumulated in fp32, cast to the inputs' dtypes.

    Each gradient slice is written by its first tile and accumulated by the later ones (no zero-filled buffers: the
    vocabulary table's gradient alone is E x V fp32)."""
    n, e = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    valid = targets != ignore_index
    n_valid = int(valid.sum())
    g_h = torch.empty(n, e, dtype=torch.float32, device=dev)
    g_w = torch.empty(vocab, e, dtype=torch.float32, device=dev)
    g_b = torch.empty(vocab, dtype=torch.float32, device=dev) if bias is not None else None
    w_started = False  # has a row block written g_w / g_b yet? (none does when every row is ignored)
    if n_valid > 0:
        scale = torch.where(valid, grad_loss.float() / n_valid, 0.0)
        ops = _cpu_ops(hidden, fused)
        long_targets = targets.long()
        for r0 in range(0, n, TILE_ROWS):
            r1 = min(n, r0 + TILE_ROWS)
            rv = valid[r0:r1]
            if not bool(rv.any()):
                g_h[r0:r1].zero_()
                continue
            h32 = _f32(hidden[r0:r1])
            sc = scale[r0:r1]
            tg = targets[r0:r1]
            cols = tile_cols(r1 - r0, vocab)
            for c0 in range(0, vocab, cols):
                c1 = min(vocab, c0 + cols)
                if ops is not None:
                    p = _logits(h32, weight, None, c0, c1)
                    ops.gen_tile_grad_(p, _bias_tile(bias, c0, c1), stats[0, r0:r1], stats[1, r0:r1], sc,
                                       long_targets[r0:r1], rv, c0)
                else:
                    p = _logits(h32, weight, bias, c0, c1)
                    p.sub_(stats[0, r0:r1, None]).sub_(stats[1, r0:r1, None]).exp_().mul_(sc[:, None])
                    t = tg - c0
                    hit = rv & (t >= 0) & (t < c1 - c0)
                    tc = t.clamp(0, c1 - c0 - 1)[:, None]
                    p.scatter_(1, tc, p.gather(1, tc) - torch.where(hit, sc, 0.0)[:, None])
                w = _f32(weight[c0:c1])
                if c0 == 0:
                    torch.mm(p, w, out=g_h[r0:r1])
                else:
                    g_h[r0:r1].addmm_(p, w)
                if not w_started:
                    torch.mm(p.t(), h32, out=g_w[c0:c1])
                    if g_b is not None:
                        torch.sum(p, dim=0, out=g_b[c0:c1])
                else:
                    g_w[c0:c1].addmm_(p.t(), h32)
                    if g_b is not None:
                        g_b[c0:c1] += p.sum(dim=0)
            w_started = True
    if not w_started:
        g_h.zero_()
        g_w.zero_()
        if g_b is not None:
            g_b.zero_()
    return (g_h.to(hidden.dtype), g_w.to(weight.dtype), None if g_b is None else g_b.to(bias.dtype))
