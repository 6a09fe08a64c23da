"""The fused heads under ZeRO-3: 2 ranks (gloo, CPU) match 1 rank under ZeRO-0 in loss and in the updated weights.

A toy model reads a tied embedding (generator head) and a dense layer's weights (discriminator head) without calling
their modules, registering them as external parameters as gpt_ds.model does; both heads run inside the engine's
forward. Run for the chunked torch path and the Triton interpreter path.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import socket  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

V, E, ROWS, LR = 50, 16, 12, 0.5
IMPLS = ("torch", "triton")


class Toy(torch.nn.Module):
    def __init__(self, impl: str):
        super().__init__()
        torch.manual_seed(0)
        self.impl = impl
        self.emb = torch.nn.Embedding(V, E)
        self.proj = torch.nn.Linear(E, E)
        self.out_bias = torch.nn.Parameter(torch.randn(V) * 0.1)
        self.dense = torch.nn.Linear(E, E)
        self.pred = torch.nn.Linear(E, 1)

    def register_external(self):
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter
        for p in (self.emb.weight, self.dense.weight, self.dense.bias, self.pred.weight, self.pred.bias):
            register_external_parameter(self, p)

    def forward(self, ids, targets, labels, row_ids):
        from gpt_ds.kernels import discriminator_head, generator_head
        h = torch.tanh(self.proj(self.emb(ids)))
        g = generator_head(h, self.emb.weight, self.out_bias, targets, seed=7, row_ids=row_ids, impl=self.impl)
        d = discriminator_head(h, self.dense.weight, self.dense.bias, self.pred.weight, self.pred.bias, labels,
                               impl=self.impl)
        return g.loss + d.loss, g.sampled


def _batch(rank: int, world: int):
    gen = torch.Generator().manual_seed(1)
    n = 2 * ROWS
    ids, targets = torch.randint(0, V, (n,), generator=gen), torch.randint(0, V, (n,), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    rows = torch.arange(n)
    part = slice(rank * n // world, (rank + 1) * n // world)
    return ids[part], targets[part], labels[part], rows[part]


def _worker(rank: int, world: int, port: int, stage: int, out: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
           "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
           "optimizer": {"type": "SGD", "params": {"lr": LR}}, "zero_allow_untested_optimizer": True}
    results = {}
    for impl in IMPLS:
        model = Toy(impl)
        if stage == 3:
            model.register_external()
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
        sharded = engine.module.emb.weight.numel() == 0  # outside the forward a ZeRO-3 weight is a 0-element shard
        loss, sampled = engine(*_batch(rank, world))
        engine.backward(loss)
        engine.step()
        losses = [torch.zeros(1) for _ in range(world)]
        torch.distributed.all_gather(losses, loss.detach().reshape(1))
        samples = [torch.zeros_like(sampled) for _ in range(world)]
        torch.distributed.all_gather(samples, sampled)
        params = {}
        for name, p in engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=stage == 3):
                params[name] = p.detach().clone()
        results[impl] = (float(torch.cat(losses).mean()), torch.cat(samples), params, sharded)
    if rank == 0:
        torch.save(results, out)
    torch.distributed.barrier()


def _run(world: int, stage: int, path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, port, stage, str(path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3")
    return _run(1, 0, tmp / "zero0.pt"), _run(2, 3, tmp / "zero3.pt")


@pytest.mark.parametrize("impl", IMPLS)
def test_two_rank_zero3_matches_one_rank_zero0(impl, runs):
    loss1, samples1, params1, _ = runs[0][impl]
    loss3, samples3, params3, sharded = runs[1][impl]
    assert sharded
    assert abs(loss1 - loss3) <= 1e-5
    assert torch.equal(samples1, samples3)  # noise keyed by global row: same tokens whichever rank draws them
    init = dict(Toy(impl).named_parameters())
    for name, p in params1.items():
        assert (p - init[name].detach()).abs().max() > 0, name  # every parameter got a gradient
        assert torch.allclose(params3[name], p, rtol=1e-5, atol=1e-6), name
