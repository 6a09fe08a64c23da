"""Generator head (chunked torch path and Triton kernels under TRITON_INTERPRET=1) against float64 and the spec."""
from __future__ import annotations

from _kernel_cases import DEVICE, IGNORE, gen_case, gen_oracle, on_device, rel_err, small_tiles

import pytest
import torch

from gpt_ds.errors import GptDsError
from gpt_ds.kernels import cpu_ext, generator_head as _generator_head, resolve_impl

# "torch": the chunked path with its per-tile work in the C++ CPU kernels; "torch-twin": the same path in tensor ops.
IMPLS = ["torch", "torch-twin", "triton"]


@pytest.fixture(autouse=True)
def _tiles(request, monkeypatch):
    small_tiles(monkeypatch)
    impl = request.node.callspec.params.get("impl") if hasattr(request.node, "callspec") else None
    if impl == "torch-twin":
        monkeypatch.setattr(cpu_ext, "ops", lambda: None)
    elif impl == "torch" and DEVICE == "cpu":
        assert cpu_ext.ops() is not None, "the C++ CPU kernels must build here (a compiler and ninja are in CI)"


def generator_head(*args, impl="auto", **kw):
    return on_device(_generator_head, *args, impl="torch" if impl == "torch-twin" else impl, **kw)


def run(impl, h, w, b, t, **kw):
    leaves = [x.clone().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
    out = generator_head(leaves[0], leaves[1], leaves[2] if b is not None else None, t, impl=impl, **kw)
    out.loss.backward()
    return out, [x.grad for x in leaves]


def check_against_oracle(out, grads, ref, tol=1e-5):
    loss, ref_grads, sampled, correct = ref
    assert abs(out.loss.item() - loss.item()) <= tol
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) <= tol
    assert (out.sampled == sampled).float().mean() >= 0.999
    assert torch.equal(out.correct, correct)


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias,temperature", [(True, 1.0), (False, 0.6)])
def test_matches_float64(impl, bias, temperature):
    h, w, b, t = gen_case(bias=bias, ignore_every=5)
    out, grads = run(impl, h, w, b, t, temperature=temperature, seed=11)
    assert out.sampled.dtype == torch.int64 and out.correct.dtype == torch.bool
    check_against_oracle(out, grads, gen_oracle(h, w, b, t, temperature=temperature, seed=11))
    assert grads[0][::5].abs().max() == 0  # ignored rows get no gradient
    assert not out.correct[::5].any()


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_all_rows_ignored_gives_zero(impl):
    h, w, b, t = gen_case(n=20)
    t[:] = IGNORE
    out, grads = run(impl, h, w, b, t, seed=3)
    assert out.loss.item() == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads)
    assert torch.equal(out.sampled, gen_oracle(h, w, b, t, seed=3)[2])


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_large_logit_offset(impl):
    """All logits shifted by +1000 (fp32 ulp 6e-5 there): loss and gradients stay within 1e-5 of float64."""
    h, w, b, t = gen_case(grid=True, offset=1000.0)
    out, grads = run(impl, h, w, b, t, temperature=0.5, seed=2)
    check_against_oracle(out, grads, gen_oracle(h, w, b, t, temperature=0.5, seed=2))
    assert out.loss.item() > 0.1


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS + ["reference"])
def test_exact_logits_sample_identically(impl):
    """On a 1/8 grid the logits are exact, so every path must draw the very same tokens as the spec; the peaked
    scale makes most vocabulary tiles provably unable to win, exercising the skip of their noise."""
    for scale, temperature in ((1.0, 1.0), (8.0, 0.7)):
        h, w, b, t = gen_case(grid=True, scale=scale, seed=5)
        out = generator_head(h, w, b, t, temperature=temperature, seed=9, impl=impl)
        ref = gen_oracle(h, w, b, t, temperature=temperature, seed=9)
        assert torch.equal(out.sampled, ref[2])
        assert torch.equal(out.correct, ref[3])


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_disallow_correct(impl):
    h, w, b, t = gen_case(grid=True, scale=4.0, ignore_every=7)
    t = torch.where(t == IGNORE, t, (h @ w.t() + b).argmax(1))  # targets are the (strongly) most likely tokens
    plain = generator_head(h, w, b, t, seed=4, impl=impl)
    out, grads = run(impl, h, w, b, t, seed=4, disallow_correct=True)
    valid = t != IGNORE
    assert (plain.sampled[valid] == t[valid]).float().mean() > 0.5  # the ban below is not vacuous
    assert not (out.sampled[valid] == t[valid]).any()
    check_against_oracle(out, grads, gen_oracle(h, w, b, t, seed=4, disallow=True))


@pytest.mark.device_numerics
@pytest.mark.parametrize("impl", IMPLS)
def test_rerun_is_bitwise_identical(impl):
    h, w, b, t = gen_case(ignore_every=4)
    a, ga = run(impl, h, w, b, t, seed=1, temperature=0.8)
    c, gc = run(impl, h, w, b, t, seed=1, temperature=0.8)
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert all(torch.equal(x, y) for x, y in zip(ga, gc))


@pytest.mark.parametrize("impl", IMPLS + ["reference"])
def test_zero3_shard_is_refused(impl):
    h, w, b, t = gen_case(n=4, v=40)
    with pytest.raises(GptDsError, match="ZeRO-3"):
        generator_head(h, torch.empty(0), b, t, impl=impl)
    with pytest.raises(GptDsError, match="bias"):
        generator_head(h, w, b[:-1], t, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_shard_in_backward_is_refused(impl):
    """A weight released (ZeRO-3 style) between forward and backward is caught with the same message."""
    h, w, b, t = gen_case(n=8, v=40)
    w = w.clone().requires_grad_()
    out = generator_head(h.requires_grad_(), w, b, t, impl=impl)
    w.data = torch.empty(0)
    with pytest.raises(GptDsError, match="in the backward"):
        out.loss.backward()


def test_bad_targets_and_impl_are_named():
    h, w, b, t = gen_case(n=4, v=40)
    with pytest.raises(GptDsError, match=r"\[0, 40\)"):
        generator_head(h, w, b, t + 40, impl="torch")
    with pytest.raises(GptDsError, match="model.kernels"):
        generator_head(h, w, b, t, impl="cuda")
    assert resolve_impl("auto", h) == "torch"


def test_torch_twin_samples_at_scale_and_bf16(monkeypatch):
    """More rows (the >= 99.9% criterion is meaningful here), default tiles, bf16 inputs computed in fp32."""
    monkeypatch.undo()
    h, w, b, t = gen_case(n=3000, e=32, v=700, seed=8, ignore_every=9)
    hb, wb, bb = h.bfloat16(), w.bfloat16(), b.bfloat16()
    out, grads = run("torch", hb, wb, bb, t, seed=6, temperature=0.9)
    loss, ref_grads, sampled, correct = gen_oracle(hb.float(), wb.float(), bb.float(), t, seed=6, temperature=0.9)
    assert abs(out.loss.item() - loss.item()) <= 1e-5
    assert all(g.dtype == torch.bfloat16 for g in grads)
    assert all(rel_err(g, rg) <= 1e-2 for g, rg in zip(grads, ref_grads))
    assert (out.sampled == sampled).float().mean() >= 0.999
    assert (out.correct == correct).float().mean() >= 0.999


def test_gumbel_max_frequencies_follow_softmax(monkeypatch):
    """20k rows with the same logits: sample frequencies match softmax(logits / T) within 5 standard errors."""
    monkeypatch.undo()
    v, n, temperature = 6, 20000, 0.7
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.25])
    h = torch.eye(v)[:1].repeat(n, 1)
    w = torch.zeros(v, v)
    w[:, 0] = logits
    out = generator_head(h, w, None, torch.zeros(n, dtype=torch.long), temperature=temperature, seed=123,
                         impl="torch")
    freq = torch.bincount(out.sampled, minlength=v).double() / n
    p = torch.softmax(logits.double() / temperature, 0)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


@pytest.mark.parametrize("tile_elems", [None, 4096])
def test_cpu_tile_kernels_equal_their_twin(tile_elems, monkeypatch):
    """The C++ tile kernels against the tensor code they replace, on shapes and options the other tests spread out:
    the same samples, argmax and per-row losses to fp32 rounding, the same gradients to fp32 rounding. With small
    tiles (128 columns), every tile after the first draws noise only for the columns that can still win."""
    from gpt_ds.kernels import generator_torch
    from gpt_ds.kernels.noise import row_keys_i32
    if tile_elems:
        monkeypatch.setattr(generator_torch, "TILE_ELEMS", tile_elems)
    for kw in [dict(bias=True, ignore_every=4), dict(bias=False, offset=0.0, grid=True),
               dict(bias=True, offset=1000.0, grid=True), dict(bias=False, scale=100.0)]:  # peaked: most rows skip
        h, w, b, t = gen_case(**kw)
        keys = row_keys_i32(5, torch.arange(h.shape[0]) + 1000)
        for temperature, disallow in [(1.0, False), (0.7, True)]:
            outs = [generator_torch.generator_forward(h, w, b, t, keys, temperature, disallow, IGNORE, fused=f)
                    for f in (True, False)]
            (nll, stats, sampled, correct), (nll2, stats2, sampled2, correct2) = outs
            assert torch.equal(sampled, sampled2) and torch.equal(correct, correct2), kw
            torch.testing.assert_close(nll, nll2, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(stats, stats2, rtol=1e-6, atol=1e-6)
            g = torch.tensor(0.75)
            for a, r in zip(generator_torch.generator_backward(g, h, w, b, t, stats2, IGNORE, fused=True),
                            generator_torch.generator_backward(g, h, w, b, t, stats2, IGNORE, fused=False)):
                if r is not None:
                    assert rel_err(a, r) <= 1e-6
