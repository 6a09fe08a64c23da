"""Shared helpers for the kernel tests: small tiles, data builders, float64 oracles (independent of gpt_ds.kernels)."""
from __future__ import annotations

import os

# GPT_DS_TEST_DEVICE=cuda (bench/gpu_check.sh on a GPU machine) runs the tests marked device_numerics with the heads'
# inputs on that device, compiled Triton instead of its interpreter; on the CPU (CI) nothing moves.
DEVICE = os.environ.get("GPT_DS_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpt_ds.kernels import discriminator_triton, generator_torch, generator_triton  # noqa: E402
from gpt_ds.kernels.noise import gumbel_noise  # noqa: E402

IGNORE = -100


def on_device(head, *args, **kw):
    """Call a head with its tensor arguments on DEVICE and bring its outputs back (autograd flows through both moves;
    on the CPU both are the identity, so tests that swap a weight's storage still reach the head's own tensor)."""
    out = head(*(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args), **kw)
    return type(out)(*(x.cpu() for x in out))


def small_tiles(monkeypatch) -> None:
    """Tiles that divide none of the test shapes (N=37, E=48, V=333, H=48), with several vocabulary splits."""
    gt = generator_triton.CONFIG
    monkeypatch.setitem(gt, "fwd", dict(BLOCK_N=32, BLOCK_V=64, BLOCK_K=32, num_warps=4, num_stages=1))
    monkeypatch.setitem(gt, "bwd_h", dict(BLOCK_N=32, BLOCK_V=128, BLOCK_K=32, BLOCK_E=32, num_warps=4, num_stages=1))
    monkeypatch.setitem(gt, "bwd_w", dict(BLOCK_N=32, BLOCK_V=128, BLOCK_K=32, BLOCK_E=32, num_warps=4, num_stages=1))
    monkeypatch.setitem(gt, "target_programs", 6)
    monkeypatch.setattr(generator_torch, "TILE_ROWS", 16)
    monkeypatch.setattr(generator_torch, "TILE_ELEMS", 16 * 128)
    dt = discriminator_triton.CONFIG
    for k in ("fwd", "bwd"):
        monkeypatch.setitem(dt, k, dict(BLOCK_N=16, BLOCK_J=32, BLOCK_K=32, num_warps=4, num_stages=1))


def gen_case(n=37, e=48, v=333, bias=True, seed=0, scale=1.0, grid=False, offset=0.0, ignore_every=0):
    """Generator inputs in fp32. grid=True: values on a 1/8 grid, so fp32 logits are exact in any summation order."""
    g = torch.Generator().manual_seed(seed)
    if grid:
        h = torch.randint(-8, 9, (n, e), generator=g).float() / 8 * scale
        w = torch.randint(-8, 9, (v, e), generator=g).float() / 8
        b = torch.randint(-64, 65, (v,), generator=g).float() / 64 + offset
    else:
        h = torch.randn(n, e, generator=g) * scale
        w = torch.randn(v, e, generator=g) / e ** 0.5 * 2
        b = torch.randn(v, generator=g) + offset
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = IGNORE
    return h, w, (b if bias else None), t


def gen_oracle(h, w, b, t, *, temperature=1.0, seed=0, disallow=False, row_ids=None):
    """Float64 loss, gradients, Gumbel-max samples (spec noise) and argmax-correctness."""
    h64 = h.double().requires_grad_()
    w64 = w.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    logits = h64 @ w64.t() + (b64 if b64 is not None else 0.0)
    valid = t != IGNORE
    safe = torch.where(valid, t, 0)
    nll = torch.logsumexp(logits, 1) - logits.gather(1, safe[:, None]).squeeze(1)
    loss = (nll * valid).sum() / valid.sum().clamp(min=1)
    loss.backward()
    grads = [x.grad for x in (h64, w64, b64) if x is not None]
    with torch.no_grad():
        rows = torch.arange(h.shape[0]) if row_ids is None else row_ids
        z = logits / temperature + gumbel_noise(seed, rows, torch.arange(w.shape[0])).double()
        if disallow:
            z.scatter_(1, safe[:, None], float("-inf"))
        sampled = z.argmax(1)
        correct = (logits.argmax(1) == t) & valid
    return loss.detach(), grads, sampled, correct


def disc_case(n=37, h=48, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    w1 = torch.randn(h, h, generator=g) / h ** 0.5
    b1 = torch.randn(h, generator=g) * 0.1
    w2 = torch.randn(1, h, generator=g) / h ** 0.5
    b2 = torch.randn(1, generator=g) + offset
    y = torch.randint(0, 2, (n,), generator=g)
    return x, w1, b1, w2, b2, y


def disc_oracle(x, w1, b1, w2, b2, y):
    ps = [p.double().requires_grad_() for p in (x, w1, b1, w2, b2)]
    z = (F.gelu(ps[0] @ ps[1].t() + ps[2]) @ ps[3].t() + ps[4]).squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(z, y.double(), reduction="sum") / max(len(y), 1)
    loss.backward()
    return loss.detach(), [p.grad for p in ps], z.detach()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
