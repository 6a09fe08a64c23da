"""Discriminator head (chunked torch path and Triton kernels under TRITON_INTERPRET=1) against float64."""
from __future__ import annotations

from _kernel_cases import disc_case, disc_oracle, on_device, rel_err, small_tiles

import pytest
import torch

from gpt_ds.errors import GptDsError
from gpt_ds.kernels import discriminator_head as _discriminator_head

IMPLS = ["torch", "triton"]


@pytest.fixture(autouse=True)
def _tiles(monkeypatch):
    small_tiles(monkeypatch)


def discriminator_head(*args, **kw):
    return on_device(_discriminator_head, *args, **kw)


def run(impl, x, w1, b1, w2, b2, y):
    leaves = [p.clone().requires_grad_() for p in (x, w1, b1, w2, b2)]
    out = discriminator_head(*leaves, y, impl=impl)
    out.loss.backward()
    return out, [p.grad for p in leaves]


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_matches_float64(impl, offset):
    case = disc_case(offset=offset)
    out, grads = run(impl, *case)
    loss, ref_grads, z = disc_oracle(*case)
    assert abs(out.loss.item() - loss.item()) <= 1e-5 * max(1.0, abs(loss.item()))
    assert rel_err(out.logits, z) <= 1e-6
    assert not out.logits.requires_grad
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) <= 1e-5


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_label_dtypes_and_no_biases(impl):
    x, w1, b1, w2, b2, y = disc_case(n=21)
    a = discriminator_head(x, w1, b1, w2, b2, y.bool(), impl=impl).loss
    b = discriminator_head(x, w1, b1, w2, b2, y.float(), impl=impl).loss
    assert a.item() == b.item()
    out = discriminator_head(x, w1, None, w2, None, y, impl=impl)
    loss, _, _ = disc_oracle(x, w1, torch.zeros_like(b1), w2, torch.zeros_like(b2), y)
    assert abs(out.loss.item() - loss.item()) <= 1e-5


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_no_rows_gives_zero(impl):
    x, w1, b1, w2, b2, y = disc_case(n=0)
    out, grads = run(impl, x, w1, b1, w2, b2, y)
    assert out.loss.item() == 0.0 and out.logits.shape == (0,)
    assert all(float(g.abs().max()) == 0.0 for g in grads if g.numel())


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_rerun_is_bitwise_identical(impl):
    case = disc_case()
    a, ga = run(impl, *case)
    c, gc = run(impl, *case)
    assert torch.equal(a.loss, c.loss) and torch.equal(a.logits, c.logits)
    assert all(torch.equal(x, y) for x, y in zip(ga, gc))


@pytest.mark.parametrize("impl", IMPLS + ["reference"])
def test_zero3_shard_is_refused(impl):
    x, w1, b1, w2, b2, y = disc_case(n=4)
    with pytest.raises(GptDsError, match="ZeRO-3"):
        discriminator_head(x, torch.empty(0), b1, w2, b2, y, impl=impl)
    with pytest.raises(GptDsError, match="output weight"):
        discriminator_head(x, w1, b1, torch.empty(0), b2, y, impl=impl)


def test_torch_twin_bf16_many_rows():
    x, w1, b1, w2, b2, y = disc_case(n=5000, h=64, seed=3)
    bf = [p.bfloat16() for p in (x, w1, b1, w2, b2)]
    out, grads = run("torch", *bf, y)
    loss, ref_grads, _ = disc_oracle(*[p.float() for p in bf], y)
    assert abs(out.loss.item() - loss.item()) <= 1e-5
    assert all(g.dtype == torch.bfloat16 and rel_err(g, rg) <= 1e-2 for g, rg in zip(grads, ref_grads))
