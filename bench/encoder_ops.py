"""The encoder-side CPU costs behind gpt_ds's fast paths, each against what it replaced, at ELECTRA-Small shapes.

- dropout, forward + backward: torch.nn.functional.dropout (bernoulli) vs the stored-mask fallback (16-bit lanes of
  `random_` words) vs the C++ hash kernel (no mask), on the attention probabilities (16 x 4 x 128 x 128) and a hidden
  state (16 x 128 x 256);
- the attention core with dropout, forward + backward, from the projections' (B, L, H*D) outputs as transformers
  hands them over: stock eager ops (what SDPA's math path does) vs gpt_ds's cpu_attention (C++);
- ElectraSelfAttention with dropout and padding, forward + backward, at the discriminator's (H=256, 4 heads) and the
  generator's (H=64, 1 head) shapes: stock (three projections, then cpu_attention's C++ softmax core between batched
  matmuls) vs the fused Q/K/V matmul with that core ("batched", the path without sgemm) vs the C++ attention straight
  from the projection's output ("gpt_ds");
- the generator head's chunked path at ELECTRA-Small's masked rows (N=304, E=128, V=30522, bias, disallow_correct),
  forward + backward: the tensor twin vs the C++ tile kernels;
- AdamW step over ElectraForPreTraining's parameters (H=256, 12 layers, vocabulary 30,522): torch's per-tensor loop
  vs its fused kernel (what gpt_ds fills into the torch_adam ds_configs);
- with --compile: the attention core eager vs torch.compile (inductor).
Variants alternate within each round; medians over --repeats
rounds. Last line: one JSON object.

    .venv/bin/python bench/encoder_ops.py [--compile]     # ~30 s (+ ~45 s with --compile) on 2 cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _race(variants: dict, repeats: int) -> dict:
    times = {k: [] for k in variants}
    for f in variants.values():
        f()  # warm-up
    for _ in range(repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _fwd_bwd(fn, x, g):
    def run():
        x.grad = None
        fn(x).backward(g)
    return run


def dropout_ms(repeats: int) -> dict:
    import torch

    from gpt_ds.kernels import encoder
    out = {}
    for name, shape in (("attention_probs", (16, 4, 128, 128)), ("hidden", (16, 128, 256))):
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        r = _race({"torch": _fwd_bwd(lambda t: torch.nn.functional.dropout(t, 0.1, True), x, g),
                   "lanes": _fwd_bwd(lambda t: encoder._DropoutFn.apply(t, 0.1), x, g),
                   "hash": _fwd_bwd(lambda t: encoder._HashDropoutFn.apply(t, None, 0.1, None), x, g)}, repeats)
        out[name] = {"torch_ms": r["torch"], "lanes_ms": r["lanes"], "hash_ms": r["hash"],
                     "ratio": r["hash"] / r["torch"]}
    return out


def attention_ms(repeats: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from gpt_ds.kernels.encoder import cpu_attention
    b, n, h, d = 16, 128, 4, 64
    xs = [torch.randn(b, n, h * d, requires_grad=True) for _ in range(3)]
    mask = torch.ones(b, 1, n, n, dtype=torch.bool)
    mask[::3, :, :, 100:] = False  # some padding, as sdpa_mask builds it
    g = torch.randn(b, n, h, d)
    module = nn.Module().train()

    def views():
        return [x.view(b, n, h, d).transpose(1, 2) for x in xs]

    def stock():
        q, k, v = views()
        s = (q @ k.transpose(-1, -2)) * d ** -0.5
        w = F.dropout(torch.softmax(s.masked_fill(~mask, torch.finfo(s.dtype).min), -1), 0.1, True)
        (w @ v).transpose(1, 2).contiguous().backward(g)

    def ours():
        q, k, v = views()
        cpu_attention(module, q, k, v, mask, dropout=0.1, scaling=d ** -0.5)[0].backward(g)
    r = _race({"stock": stock, "gpt_ds": ours}, repeats)
    return {"stock_ms": r["stock"], "gpt_ds_ms": r["gpt_ds"], "ratio": r["gpt_ds"] / r["stock"]}


def self_attention_ms(repeats: int) -> dict:
    import copy

    import torch
    from transformers import ElectraConfig
    from transformers.models.electra.modeling_electra import ElectraSelfAttention

    from gpt_ds.kernels import encoder
    encoder._register()
    out = {}
    for name, hidden, heads in (("discriminator", 256, 4), ("generator", 64, 1)):
        cfg = ElectraConfig(hidden_size=hidden, num_attention_heads=heads, attention_probs_dropout_prob=0.1)
        cfg._attn_implementation = encoder.ATTENTION_NAME
        stock = ElectraSelfAttention(cfg).train()
        fused = copy.deepcopy(stock)
        encoder._fuse_qkv(fused)
        x = torch.randn(16, 128, hidden, requires_grad=True)
        mask = torch.ones(16, 1, 128, 128, dtype=torch.bool)
        mask[::3, :, :, 100:] = False
        g = torch.randn(16, 128, hidden)
        kernel = encoder._qkv_kernel

        def run(module, qkv_kernel):
            def f():
                encoder._qkv_kernel = lambda: qkv_kernel
                try:
                    x.grad = None
                    module(x, attention_mask=mask)[0].backward(g)
                finally:
                    encoder._qkv_kernel = kernel
            return f
        r = _race({"stock": run(stock, False), "batched": run(fused, False), "gpt_ds": run(fused, True)}, repeats)
        out[name] = {"stock_ms": r["stock"], "batched_ms": r["batched"], "gpt_ds_ms": r["gpt_ds"],
                     "ratio": r["gpt_ds"] / r["stock"]}
    return out


def generator_head_ms(repeats: int) -> dict:
    import torch

    from gpt_ds.kernels import generator_torch
    from gpt_ds.kernels.noise import row_keys_i32
    g = torch.Generator().manual_seed(0)
    n, e, v = 304, 128, 30522
    h = torch.randn(n, e, generator=g)
    w = torch.randn(v, e, generator=g) * 0.05
    b = torch.randn(v, generator=g) * 0.1
    t = torch.randint(0, v, (n,), generator=g)
    keys = row_keys_i32(1, torch.arange(n))

    def run(fused):
        def f():
            _, stats, _, _ = generator_torch.generator_forward(h, w, b, t, keys, 1.0, True, -100, fused=fused)
            generator_torch.generator_backward(torch.tensor(1.0), h, w, b, t, stats, -100, fused=fused)
        return f
    r = _race({"twin": run(False), "cpp": run(True)}, repeats)
    return {"twin_ms": r["twin"], "cpp_ms": r["cpp"], "ratio": r["cpp"] / r["twin"]}


def adamw_ms(repeats: int) -> dict:
    import torch
    from transformers import ElectraConfig, ElectraForPreTraining
    model = ElectraForPreTraining(ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256,
                                                num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    loop = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    r = _race({"loop": loop.step, "fused": fused.step}, repeats)
    return {"tensors": len(params), "loop_ms": r["loop"], "fused_ms": r["fused"], "ratio": r["fused"] / r["loop"]}


def compile_ms(repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    def core(q, k, v):
        w = F.dropout(torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1), 0.1, True)
        return w @ v
    q, k, v = (torch.randn(16, 4, 128, 64, requires_grad=True) for _ in range(3))
    g = torch.randn(16, 4, 128, 64)

    def fb(fn):
        def run():
            fn(q, k, v).backward(g)
        return run
    compiled = torch.compile(core)
    t0 = time.perf_counter()
    fb(compiled)()
    build = time.perf_counter() - t0
    r = _race({"eager": fb(core), "compiled": fb(compiled)}, repeats)
    return {"eager_ms": r["eager"], "compiled_ms": r["compiled"], "compile_s": build,
            "ratio": r["compiled"] / r["eager"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the attention core")
    args = ap.parse_args(argv)
    from gpt_ds.kernels import cpu_ext
    if cpu_ext.ops() is None:
        raise SystemExit("the C++ CPU kernels did not build (see the warning above): nothing to compare")
    res = {"dropout": dropout_ms(args.repeats), "attention": attention_ms(args.repeats),
           "self_attention": self_attention_ms(args.repeats), "generator_head": generator_head_ms(args.repeats),
           "adamw": adamw_ms(args.repeats)}
    if args.compile:
        res["attention_core_compile"] = compile_ms(args.repeats)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
