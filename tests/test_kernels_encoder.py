"""The CPU dropout and attention fast paths against plain PyTorch (gpt_ds/kernels/encoder.py)."""
import math

import pytest
import torch
from torch import nn

from gpt_ds.kernels import cpu_ext, encoder
from gpt_ds.kernels.encoder import (ATTENTION_NAME, FastDropout, cpu_attention, fast_dropout, install_fast_paths,
                                    keep_mask)


@pytest.fixture(params=["cpp", "fallback"])
def path(request, monkeypatch):
    """Both CPU dropout paths: the C++ hash kernel (built in CI) and the stored-mask fallback (no compiler)."""
    if request.param == "cpp":
        assert cpu_ext.ops() is not None, "the C++ kernels must build here (a compiler and ninja are in CI)"
    else:
        monkeypatch.setattr(cpu_ext, "ops", lambda: None)
    return request.param


def replay_keep(shape, p, path):
    """The keep mask and scale the next CPU fast_dropout draws from torch's generator, computed independently."""
    if path == "fallback":
        return keep_mask(shape, p)
    q, scale = cpu_ext.dropout_params(p)
    return cpu_ext.keep_mask_twin(math.prod(shape), cpu_ext.new_seed(), q).view(shape), scale


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


def test_fast_dropout_forward_backward_match_the_mask(path):
    torch.manual_seed(2)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 33, dtype=torch.float64)
    state = torch.get_rng_state()
    y = fast_dropout(x, 0.25)
    torch.set_rng_state(state)
    keep, scale = replay_keep(x.shape, 0.25, path)  # the same draw again: the mask the forward used
    torch.testing.assert_close(y, torch.where(keep, x * scale, torch.zeros_like(x)), rtol=0, atol=1e-15)
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(keep, g * scale, torch.zeros_like(g)), rtol=0, atol=1e-15)


def test_fast_dropout_expectation_and_identity_cases(path):
    torch.manual_seed(3)
    x = torch.full((1 << 20,), 2.0)
    assert fast_dropout(x, 0.1).mean().item() == pytest.approx(2.0, rel=3e-3)  # E[dropout(x)] = x
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0


def test_fast_dropout_replays_with_the_rng_state(path):
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
@pytest.mark.parametrize("layout", ["contiguous", "projection"])
def test_cpu_attention_with_dropout_matches_float64(with_mask, path, layout):
    """layout "projection": q, k, v as transformers hands them over, (B, H, L, D) views of (B, L, H * D) outputs."""
    torch.manual_seed(5)
    b, h, n, d = 2, 3, 7, 8
    if layout == "contiguous":
        q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
        leaves = (q, k, v)
    else:
        leaves = tuple(torch.randn(b, n, h * d, requires_grad=True) for _ in range(3))
        q, k, v = (x.view(b, n, h, d).transpose(1, 2) for x in leaves)
    mask = None
    if with_mask:  # sdpa_mask layout: (B, 1, Lq, Lk), True = attend; the second sequence has 2 padding keys
        mask = torch.ones(b, 1, n, n, dtype=torch.bool)
        mask[1, :, :, -2:] = False
    module = nn.Module().train()
    state = torch.get_rng_state()
    out, weights = cpu_attention(module, q, k, v, mask, dropout=0.2, scaling=d ** -0.5)
    assert weights is None and out.shape == (b, n, h, d)
    torch.set_rng_state(state)
    keep, scale = replay_keep((b, h, n, n), 0.2, path)
    ref = _reference_attention(q, k, v, mask, keep, scale)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    ref_grads = torch.autograd.grad(ref, leaves, g.double())
    for a, r in zip(grads, ref_grads):
        assert a.shape == r.shape
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


# ----- the C++ kernels (gpt_ds/kernels/cpu_ops.cpp) against their twins ---------------------------------------------

@pytest.mark.parametrize("seed", [0, 12345678901234567, -(1 << 63), (1 << 63) - 1])
def test_hash_mask_equals_its_twin_bit_for_bit(seed):
    m = cpu_ext.ops()
    q, _ = cpu_ext.dropout_params(0.1)
    for n in (1, 2, 3, 1000, 65537):
        assert torch.equal(m.keep_mask(n, seed, q), cpu_ext.keep_mask_twin(n, seed, q)), (seed, n)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_hash_mask_rate_both_lanes_and_independence(p):
    """Each 32-bit hash gives two 16-bit lanes: both drop at rate p, neighbours are uncorrelated, seeds differ."""
    m = cpu_ext.ops()
    q, _ = cpu_ext.dropout_params(p)
    n = 1 << 21
    keep = m.keep_mask(n, 77, q).double()
    sigma = math.sqrt(p * (1 - p) / (n // 2))
    for lane in range(2):
        assert abs(1 - keep[lane::2].mean().item() - p) < 6 * sigma, lane
    for lag in (1, 2, 3, 128):  # within a hash word (lag 1) and across words
        a, b = keep[:-lag] - keep.mean(), keep[lag:] - keep.mean()
        corr = (a * b).mean() / keep.var()
        assert abs(corr.item()) < 6 / math.sqrt(n), lag
    other = m.keep_mask(n, 78, q)
    assert (other != m.keep_mask(n, 77, q)).double().mean().item() == pytest.approx(2 * p * (1 - p), abs=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_hash_dropout_forward_backward_equal_the_twin(dtype, with_bias):
    m = cpu_ext.ops()
    torch.manual_seed(8)
    q, scale = cpu_ext.dropout_params(0.1)
    x = torch.randn(5, 7, 33).to(dtype)
    bias = torch.randn(33).to(dtype) if with_bias else None
    got = m.dropout_forward(x, bias, 99, q, scale)
    want = cpu_ext.dropout_twin(x, bias, 99, q, scale)
    assert got.dtype == dtype and torch.equal(got, want)
    res = torch.randn(5, 7, 33).to(dtype)  # an output block's residual, added in the same pass
    assert torch.equal(m.dropout_forward(x, bias, 99, q, scale, res), cpu_ext.dropout_twin(x, bias, 99, q, scale, res))
    # a non-contiguous input is taken in its logical (row-major) order
    xt = x.transpose(0, 1)
    assert torch.equal(m.dropout_forward(xt, None, 5, q, scale), cpu_ext.dropout_twin(xt.contiguous(), None, 5, q,
                                                                                        scale))
    g = torch.randn(5, 7, 33).to(dtype)
    want_g = cpu_ext.dropout_twin(g, None, 99, q, scale)
    assert torch.equal(m.dropout_backward(g, 99, q, scale), want_g)
    # with the bias gradient summed in the same pass (per-thread partial sums in fp32 / fp64)
    gx, gb = m.dropout_backward_bias(g, 99, q, scale)
    assert torch.equal(gx, want_g) and gb.dtype == dtype and gb.shape == (33,)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(gb.double(), want_g.double().sum((0, 1)), rtol=tol, atol=tol)


def test_bias_dropout_autograd_against_float64():
    """_HashDropoutFn with a bias: d/dx and d/dbias of dropout(x + b) against float64 with the replayed mask."""
    torch.manual_seed(9)
    x = torch.randn(6, 4, 16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    state = torch.get_rng_state()
    y = encoder._HashDropoutFn.apply(x, b, 0.3, None)
    torch.set_rng_state(state)
    keep, scale = replay_keep(x.shape, 0.3, "cpp")
    ref = torch.where(keep, (x.double() + b.double()) * scale, 0.0)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    gx, gb = torch.autograd.grad(y, (x, b), g)
    rx, rb = torch.autograd.grad(ref, (x, b), g.double())
    torch.testing.assert_close(gx.double(), rx.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb.double(), rb.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qkv_kernel", [True, False])
def test_fused_qkv_attention_equals_three_projections(qkv_kernel, monkeypatch):
    """One Q/K/V matmul + attention against the stock forward (three projections, the C++ softmax core between
    batched matmuls) with the same draws: qkv_kernel=True is the C++ attention from the projection's output (BLAS per
    sequence and head), False the batched matmuls on its unbound views. Eval mode hands over to the stock path, and
    the parameters keep their modules and names."""
    import copy
    if qkv_kernel:
        assert encoder._qkv_kernel(), "torch's sgemm was not found: the C++ attention from the projection is off"
        calls = []
        fn = encoder._QKVAttentionFn.apply
        monkeypatch.setattr(encoder._QKVAttentionFn, "apply", lambda *a: calls.append(1) or fn(*a))
    else:
        monkeypatch.setattr(encoder, "_qkv_kernel", lambda: False)

    from transformers import ElectraConfig
    from transformers.models.electra.modeling_electra import ElectraSelfAttention
    cfg = ElectraConfig(hidden_size=32, num_attention_heads=4, attention_probs_dropout_prob=0.3)
    cfg._attn_implementation = ATTENTION_NAME
    encoder._register()
    torch.manual_seed(10)
    stock = ElectraSelfAttention(cfg).train()
    fused = copy.deepcopy(stock)
    encoder._fuse_qkv(fused)
    assert isinstance(fused, ElectraSelfAttention) and type(fused) is not ElectraSelfAttention
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in stock.named_parameters()]
    pairs = encoder.zero3_external_parameters(nn.Sequential(fused))
    assert {id(p) for _, p in pairs} == {id(p) for p in fused.parameters()} and all(m is fused for m, _ in pairs)
    x = torch.randn(3, 9, 32)
    mask = torch.ones(3, 1, 9, 9, dtype=torch.bool)
    mask[2, :, :, 6:] = False
    g = torch.randn(3, 9, 32)
    outs = []
    for mod in (stock, fused):
        torch.manual_seed(11)
        xi = x.clone().requires_grad_()
        out = mod(xi, attention_mask=mask)[0]
        out.backward(g)
        outs.append((out, xi.grad, [p.grad for p in mod.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)
    for a, r in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    assert not qkv_kernel or calls == [1]
    stock.eval()
    fused.eval()
    torch.testing.assert_close(fused(x, attention_mask=mask)[0], stock(x, attention_mask=mask)[0])



def test_output_block_adds_the_residual_in_the_dropout_pass(path):
    """An installed ElectraOutput in training: LayerNorm(dropout(dense(x)) + residual) with the bias, dropout and
    residual add in one pass, against float64 with the replayed mask: output and the gradients of x, the residual,
    the dense and the LayerNorm; the parameter names are the stock block's."""
    from transformers import ElectraConfig
    from transformers.models.electra.modeling_electra import ElectraOutput
    cfg = ElectraConfig(hidden_size=24, intermediate_size=40, hidden_dropout_prob=0.3)
    torch.manual_seed(14)
    block = ElectraOutput(cfg).train()
    names = [n for n, _ in block.named_parameters()]
    holder = nn.Module()
    holder.block = block
    holder.config = cfg
    install_fast_paths(holder)
    assert type(block.dense) is encoder.BiasDropoutLinear and [n for n, _ in block.named_parameters()] == names
    assert "dropout=0.3" in repr(block.dense)
    x = torch.randn(3, 5, 40, requires_grad=True)
    res = torch.randn(3, 5, 24, requires_grad=True)
    state = torch.get_rng_state()
    out = block(x, res)
    torch.set_rng_state(state)
    keep, scale = replay_keep((3, 5, 24), 0.3, path)
    d, ln = block.dense, block.LayerNorm
    h = x.double() @ d.weight.double().t() + d.bias.double()
    ref = nn.functional.layer_norm(torch.where(keep, h * scale, 0.0) + res.double(), (24,), ln.weight.double(),
                                   ln.bias.double(), ln.eps)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    leaves = (x, res, d.weight, d.bias, ln.weight, ln.bias)
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g.double())):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_fast_paths_hand_over_off_the_cpu(monkeypatch):
    """On tensors of any other device the swapped modules run the stock transformers / torch ops and never a C++
    kernel. Checked on the meta device (shapes, no data: the same dispatch a GPU run takes), forward and backward,
    in training mode with dropout on; the numerics of those stock ops are torch's own."""
    from transformers import ElectraConfig, ElectraForPreTraining

    class NoKernels:
        def __getattr__(self, name):
            raise AssertionError(f"C++ CPU kernel {name} called on a meta tensor")
    monkeypatch.setattr(cpu_ext, "ops", lambda: NoKernels())
    cfg = ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    with torch.device("meta"):
        model = ElectraForPreTraining(cfg)
    install_fast_paths(model).train()
    layer = model.electra.encoder.layer[0]
    assert type(layer.attention.self).__name__.startswith("GptDs")  # the swaps happened
    assert type(layer.output.dense).__name__ == "BiasDropoutLinear"
    out = model(input_ids=torch.zeros(2, 16, dtype=torch.long, device="meta"))  # no mask: its check reads data
    assert out.logits.shape == (2, 16) and out.logits.device.type == "meta"
    out.logits.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)
