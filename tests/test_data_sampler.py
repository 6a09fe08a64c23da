"""The global sample order: world-size independent, resumable at any step, prefetch-invariant."""
import numpy as np
import pytest
import torch

from gpt_ds.config import load_config
from gpt_ds.data import RowDataset
from gpt_ds.data.sources import open_dataset
from gpt_ds.data.sampler.loader import StepLoader
from gpt_ds.data.sampler.order import blend, blend_quotas, epoch_rows, permute
from gpt_ds.errors import GptDsError


@pytest.fixture(scope="module")
def synth():
    cfg = load_config("tiny", ["data.synthetic=true", "model.vocab_size=300", "data.synthetic_samples=50",
                               "data.seq_len=16", "model.max_position_embeddings=16"])
    return open_dataset(cfg)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 12345])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=99)
    assert sorted(out.tolist()) == list(range(n))
    if n > 10:
        assert (out != np.arange(n)).mean() > 0.8
        assert not np.array_equal(out, permute(np.arange(n), n, key=100))


def test_epochs_visit_every_row_once_in_a_new_order():
    rows = epoch_rows(np.arange(300), 100, seed=5)
    for e in range(3):
        assert sorted(rows[e * 100:(e + 1) * 100].tolist()) == list(range(100))
    assert not np.array_equal(rows[:100], rows[100:200])
    assert np.array_equal(epoch_rows(np.array([250, 3]), 100, seed=5), rows[[250, 3]])


def test_synthetic_rows(synth):
    assert isinstance(synth, RowDataset)
    b = synth.batch(np.arange(8))
    ids = b["input_ids"]
    assert ids.shape == (8, 16) and ids.dtype == torch.int64
    assert (ids[:, 0] == 2).all() and (ids[:, -1] == 3).all()
    assert ((ids[:, 1:-1] >= 5) & (ids[:, 1:-1] < 300)).all()
    assert (b["attention_mask"] == 1).all() and (b["token_type_ids"] == 0).all()
    assert torch.equal(synth.batch(np.arange(8))["input_ids"], ids)
    epoch2 = synth.batch(np.arange(50, 100))["input_ids"]   # the second epoch: the same rows, in another order
    epoch1 = synth.batch(np.arange(50))["input_ids"]
    assert sorted(map(tuple, epoch1.tolist())) == sorted(map(tuple, epoch2.tolist()))
    assert not torch.equal(epoch1, epoch2)


def _global_stream(ds, world, steps, start=0, G=24, A=2, prefetch=2):
    """The concatenated global batches of `steps` steps, assembled from all simulated ranks."""
    M = G // (A * world)
    loaders = [StepLoader(ds, global_batch=G, micro_batch=M, grad_accum=A, world_size=world, rank=r,
                          start_step=start, prefetch=prefetch) for r in range(world)]
    out = []
    try:
        for _ in range(steps):
            per_rank = [ld.next_step() for ld in loaders]
            rows = []
            for a in range(A):
                for r in range(world):
                    rows.append(per_rank[r][a]["input_ids"])
            out.append(torch.cat(rows))
            # the ranks' slices are disjoint and together make the global batch
            nums = [np.concatenate(ld.sample_numbers(ld.step - 1)) for ld in loaders]
            allnums = np.sort(np.concatenate(nums))
            step = loaders[0].step - 1
            assert np.array_equal(allnums, np.arange(step * G, (step + 1) * G))
    finally:
        for ld in loaders:
            ld.close()
    return torch.cat(out)


def test_same_order_on_1_2_4_ranks_and_after_resume(synth):
    ref = _global_stream(synth, 1, 6)
    assert torch.equal(ref, synth.batch(np.arange(6 * 24))["input_ids"])
    for world in (2, 4):
        assert torch.equal(_global_stream(synth, world, 6), ref)
    for start in (1, 3, 5):
        for world in (1, 2, 4):
            assert torch.equal(_global_stream(synth, world, 6 - start, start=start), ref[start * 24:])
    assert torch.equal(_global_stream(synth, 2, 6, prefetch=0), ref)


def test_loader_refuses_bad_layouts(synth):
    with pytest.raises(GptDsError, match="global batch"):
        StepLoader(synth, global_batch=10, micro_batch=3, grad_accum=1, world_size=3, rank=0)
    with pytest.raises(GptDsError, match="rank 3"):
        StepLoader(synth, global_batch=12, micro_batch=4, grad_accum=1, world_size=3, rank=3)


def test_loader_raises_dataset_errors_in_the_consumer():
    class Broken:
        def batch(self, n):
            raise GptDsError("shard X is broken")
    ld = StepLoader(Broken(), global_batch=4, micro_batch=2, grad_accum=1, world_size=2, rank=0)
    with pytest.raises(GptDsError, match="shard X"):
        ld.next_step()
    ld.close()


def test_blend_quotas_and_mapping():
    q = blend_quotas([1.0, 2.0, 1.0])
    assert q.sum() == 1 << 16 and abs(q[1] - 2 * q[0]) <= 1
    n = np.arange(3 * (1 << 16))
    src, own = blend(n, q, seed=3)
    for i in range(3):
        mine = own[src == i]
        assert np.array_equal(np.sort(mine), np.arange(3 * q[i]))   # each source's samples are 0, 1, 2, ... once
    sub = blend(n[1000:1100], q, seed=3)
    assert np.array_equal(sub[0], src[1000:1100]) and np.array_equal(sub[1], own[1000:1100])


def test_blending_proportions_within_sampling_error():
    from gpt_ds.data.datasets import BlendedDataset, SyntheticDataset
    parts = [SyntheticDataset(n, 8, 300 + i, seed=1) for i, n in enumerate((40, 500, 7))]
    for p in parts:
        p.tokenizer_fingerprint = "same"
    ds = BlendedDataset(parts, [0.5, 0.3, 0.2], seed=1)
    for start in (0, 123_457, 10**9):
        n = 20_000
        src = ds.source_of(np.arange(start, start + n))
        for i, w in enumerate((0.5, 0.3, 0.2)):
            k = int((src == i).sum())
            assert abs(k - n * w) < 4 * np.sqrt(n * w * (1 - w)), (start, i, k)
    b = ds.batch(np.arange(64))
    src = ds.source_of(np.arange(64))
    # each row comes from its source: synthetic ids stay below that source's vocabulary
    for row, s in zip(b["input_ids"], src):
        assert int(row.max()) < 300 + s
    assert torch.equal(ds.batch(np.arange(64))["input_ids"], b["input_ids"])
    bad = SyntheticDataset(10, 8, 300, seed=1)
    with pytest.raises(GptDsError, match="another tokenizer"):
        BlendedDataset([parts[0], bad], [1, 1], seed=1)


def test_each_batch_carries_its_sample_numbers_and_the_transform_runs_in_the_prefetch_thread(synth):
    import threading
    seen = []

    def transform(batch):
        seen.append(threading.current_thread().name)
        batch["first_token_sum"] = int(batch["input_ids"][:, 1].sum())
        return batch

    with StepLoader(synth, global_batch=8, micro_batch=2, grad_accum=2, world_size=2, rank=1, start_step=3,
                    prefetch=2, transform=transform) as ld:
        micro = ld.next_step()
    assert [b["sample_numbers"].tolist() for b in micro] == [[26, 27], [30, 31]]  # 3*8 + a*2*2 + 1*2 + [0, 2)
    for b in micro:
        assert torch.equal(b["input_ids"], synth.batch(b["sample_numbers"].numpy())["input_ids"])
        assert b["first_token_sum"] == int(b["input_ids"][:, 1].sum())
    assert seen and set(seen) == {"gpt_ds-loader-r1"}
