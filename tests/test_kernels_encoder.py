"""The CPU dropout and attention fast paths against plain PyTorch (gpt_ds/kernels/encoder.py)."""
import math

import pytest
import torch
from torch import nn

from gpt_ds.kernels.encoder import (ATTENTION_NAME, FastDropout, cpu_attention, fast_dropout, install_fast_paths,
                                    keep_mask)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_rate_in_every_lane(p):
    """Each of the four 16-bit lanes of a random word decides one element: all four must drop at rate p."""
    torch.manual_seed(0)
    n = 1 << 20
    keep, scale = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    q = round(p * 65536) / 65536
    assert scale == pytest.approx(1 / (1 - q), rel=1e-12)
    sigma = math.sqrt(p * (1 - p) / (n // 4))
    for lane in range(4):
        rate = 1 - keep[lane::4].double().mean().item()
        assert abs(rate - p) < 6 * sigma, (lane, rate)


def test_keep_mask_odd_sizes_and_shapes():
    torch.manual_seed(1)
    for shape in [(1,), (3,), (5, 7), (2, 3, 5, 7)]:
        keep, _ = keep_mask(shape, 0.3)
        assert keep.shape == shape


def test_fast_dropout_forward_backward_match_the_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 33, dtype=torch.float64)
    state = torch.get_rng_state()
    y = fast_dropout(x, 0.25)
    torch.set_rng_state(state)
    keep, scale = keep_mask(x.shape, 0.25)  # the same draw again: the mask the forward used
    torch.testing.assert_close(y, torch.where(keep, x * scale, torch.zeros_like(x)), rtol=0, atol=1e-15)
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(keep, g * scale, torch.zeros_like(g)), rtol=0, atol=1e-15)


def test_fast_dropout_expectation_and_identity_cases():
    torch.manual_seed(3)
    x = torch.full((1 << 20,), 2.0)
    assert fast_dropout(x, 0.1).mean().item() == pytest.approx(2.0, rel=3e-3)  # E[dropout(x)] = x
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0


def test_fast_dropout_replays_with_the_rng_state():
    """Checkpoint resume and activation recompute restore torch's generator: the masks must repeat."""
    x = torch.randn(4, 8, 16)
    torch.manual_seed(4)
    a = fast_dropout(x, 0.3)
    torch.manual_seed(4)
    b = fast_dropout(x, 0.3)
    c = fast_dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(b, c)


def _reference_attention(q, k, v, mask, keep, scale_keep):
    s = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1)
    if keep is not None:
        w = w * keep * scale_keep
    return (w @ v.double()).transpose(1, 2)


@pytest.mark.parametrize("with_mask", [False, True])
def test_cpu_attention_with_dropout_matches_float64(with_mask):
    torch.manual_seed(5)
    b, h, n, d = 2, 3, 7, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    mask = None
    if with_mask:  # sdpa_mask layout: (B, 1, Lq, Lk), True = attend; the second sequence has 2 padding keys
        mask = torch.ones(b, 1, n, n, dtype=torch.bool)
        mask[1, :, :, -2:] = False
    module = nn.Module().train()
    state = torch.get_rng_state()
    out, weights = cpu_attention(module, q, k, v, mask, dropout=0.2, scaling=d ** -0.5)
    assert weights is None and out.shape == (b, n, h, d)
    torch.set_rng_state(state)
    keep, scale = keep_mask((b, h, n, n), 0.2)
    ref = _reference_attention(q, k, v, mask, keep, scale)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_cpu_attention_without_dropout_hands_over_to_sdpa():
    torch.manual_seed(6)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    module = nn.Module().eval()
    module.is_causal = False  # as ElectraSelfAttention
    out, _ = cpu_attention(module, q, k, v, None, dropout=0.0, scaling=0.5)
    torch.testing.assert_close(out.double(), _reference_attention(q * (0.5 / 4 ** -0.5), k, v, None, None, 1.0),
                               rtol=1e-5, atol=1e-5)


def test_installed_tower_equals_stock_in_eval_and_keeps_its_state_dict():
    from transformers import ElectraConfig, ElectraForPreTraining
    cfg = ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(7)
    stock = ElectraForPreTraining(cfg)
    fast = ElectraForPreTraining(ElectraConfig(**cfg.to_dict()))
    fast.load_state_dict(stock.state_dict())
    install_fast_paths(fast)
    assert fast.config._attn_implementation == ATTENTION_NAME
    assert stock.config._attn_implementation != ATTENTION_NAME  # its own config object was not touched
    assert any(isinstance(m, FastDropout) for m in fast.modules())
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    assert fast.state_dict().keys() == stock.state_dict().keys()
    ids = torch.randint(0, 100, (3, 12))
    am = torch.ones_like(ids)
    am[2, 9:] = 0
    stock.eval()
    fast.eval()
    torch.testing.assert_close(fast(ids, attention_mask=am).logits, stock(ids, attention_mask=am).logits,
                               rtol=1e-5, atol=1e-5)
    # Training mode: dropout is live (outputs differ between draws) and gradients reach every weight.
    fast.train()
    a = fast(ids, attention_mask=am).logits
    b = fast(ids, attention_mask=am).logits
    assert not torch.equal(a, b)
    a.sum().backward()
    assert all(p.grad is not None for n, p in fast.named_parameters() if "token_type" not in n)
