"""optim.encoder_layer_lr_decay: the encoder handed downstream learns slower layer by layer above its embeddings.

Checked inside real DeepSpeed engines (one rank, gloo) under ZeRO-0 and ZeRO-3, after the warmup schedule's first
step: the rates an optimizer actually applies, not only the groups handed to it.
"""
from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import socket  # noqa: E402

import pytest  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from tests.test_train import FAST  # noqa: E402

LR, DECAY, WARMUP = 0.01, 0.25, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(port: int, stage: int, kind: str, extra: list, q) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    from gpt_ds.config import batch_layout, load_config
    from gpt_ds.train.engines import build_engines
    deepspeed.init_distributed(dist_backend="gloo")
    ds = f"ds_configs/zero{stage}_fp32.json"
    cfg = load_config("tiny", [*FAST, "model.num_layers=3", f"optim.lr={LR}", f"optim.warmup_steps={WARMUP}",
                               f"optim.encoder_layer_lr_decay={DECAY}", f"objective.kind={kind}",
                               f"deepspeed.generator={ds}", f"deepspeed.discriminator={ds}", *extra])
    eng = build_engines(cfg, batch_layout(cfg, 1), 300, 0)
    out = {}
    for name, e in (("generator", eng.generator), ("discriminator", eng.discriminator)):
        if e is None:
            continue
        e.lr_scheduler.step()  # warmup step 1 of 4: every group at 2/4 of its own rate
        lrs = [g["lr"] for g in e.optimizer.param_groups]
        named = {}
        if stage == 0:  # the groups still hold the module's own tensors: map each name to its rate
            rate = {id(p): g["lr"] for g in e.optimizer.param_groups for p in g["params"]}
            named = {n: rate[id(p)] for n, p in e.module.named_parameters()}
        out[name] = (lrs, named)
    q.put(out)


def _run(stage: int, kind: str, extra: tuple = ()) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(_free_port(), stage, kind, list(extra), q))
    p.start()
    out = q.get(timeout=300)
    p.join(60)
    assert p.exitcode == 0
    return out


@pytest.mark.parametrize("stage", [0, 3])
def test_discriminator_layers_learn_slower_the_generator_not(stage):
    out = _run(stage, "electra")
    now = LR * 2 / WARMUP
    want = sorted({now, now * DECAY, now * DECAY ** 2, now * DECAY ** 3})
    assert sorted(set(round(x, 12) for x in out["discriminator"][0])) == pytest.approx(want)
    assert out["generator"][0] == [pytest.approx(now)] * 2  # the generator's encoder is not handed downstream
    if stage == 0:
        named = out["discriminator"][1]
        for i in range(3):
            for leaf in ("attention.self.query.weight", "output.LayerNorm.bias"):
                assert named[f"pt.electra.encoder.layer.{i}.{leaf}"] == pytest.approx(now * DECAY ** (i + 1))
        for n in ("pt.electra.embeddings.word_embeddings.weight", "pt.electra.embeddings.LayerNorm.weight",
                  "pt.discriminator_predictions.dense.weight", "corrective.out.bias"):
            assert named[n] == pytest.approx(now)


@pytest.mark.parametrize("stage", [0, 3])
def test_generator_lr_moves_the_generator_only(stage):
    """optim.generator_lr: the generator's every group at its own peak rate, the discriminator's still at lr."""
    gen_lr = 0.03
    out = _run(stage, "electra", (f"optim.generator_lr={gen_lr}",))
    now = LR * 2 / WARMUP
    assert out["generator"][0] == [pytest.approx(gen_lr * 2 / WARMUP)] * 2
    assert max(out["discriminator"][0]) == pytest.approx(now)  # embeddings and heads at lr, layers decayed below it


def test_generator_lr_refused_where_it_means_nothing():
    from gpt_ds.checkpoint.compat import model_differences
    from gpt_ds.config import ConfigError, load_config
    assert load_config("tiny", FAST).optim.generator_lr == 0  # off: both towers at optim.lr
    for bad, what in (("-1e-3", ">= 0"), ("nan", ">= 0")):
        with pytest.raises(ConfigError, match=f"optim.generator_lr = .* {what}"):
            load_config("tiny", [*FAST, f"optim.generator_lr={bad}"])
    with pytest.raises(ConfigError, match="objective.kind=mlm the masked LM learns at optim.lr"):
        load_config("tiny", [*FAST, "optim.generator_lr=3e-3", "objective.kind=mlm"])
    saved = load_config("tiny", FAST).to_dict()
    diffs = model_differences(saved, load_config("tiny", [*FAST, "optim.generator_lr=3e-3"]))
    assert diffs == ["optim.generator_lr: 0.0 -> 0.003 (the checkpoint's optimizer groups hold the generator's rate)"]
    del saved["optim"]["generator_lr"]  # a checkpoint from before the key: the generator at lr
    assert model_differences(saved, load_config("tiny", FAST)) == []


def test_the_mlm_decays_its_own_encoder():
    out = _run(0, "mlm")
    named = out["generator"][1]
    now = LR * 2 / WARMUP
    assert named["mlm.electra.encoder.layer.2.intermediate.dense.weight"] == pytest.approx(now * DECAY ** 3)
    assert named["mlm.electra.embeddings.word_embeddings.weight"] == pytest.approx(now)
    assert named["mlm.generator_lm_head.bias"] == pytest.approx(now)


def test_off_by_default_two_groups_and_refused_out_of_range():
    """Off (1) unless a preset asks: the config's default; `tiny` asks (configs/tiny.yaml)."""
    from gpt_ds.config import ConfigError, OptimConfig, load_config
    from gpt_ds.model.weight_decay import param_groups
    from gpt_ds.train.engines import build_models
    assert OptimConfig().encoder_layer_lr_decay == 1.0
    assert load_config("tiny", FAST).optim.encoder_layer_lr_decay < 1
    cfg = load_config("tiny", [*FAST, "optim.encoder_layer_lr_decay=1"])
    _, disc = build_models(cfg, 300, 0, 1)
    groups = param_groups(disc, 0.01)
    assert len(groups) == 2 and all("lr" not in g for g in groups)
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="optim.encoder_layer_lr_decay"):
            load_config("tiny", [*FAST, f"optim.encoder_layer_lr_decay={bad}"])


def test_a_resume_that_changes_the_layer_rates_is_refused_by_name():
    """The rates are in the optimizer groups the checkpoint restores: a change would be silently lost (or, on/off,
    a group-count mismatch deep inside torch)."""
    from gpt_ds.checkpoint.compat import model_differences
    from gpt_ds.config import load_config
    off = [*FAST, "optim.encoder_layer_lr_decay=1"]
    saved = load_config("tiny", off).to_dict()
    assert model_differences(saved, load_config("tiny", off)) == []
    diffs = model_differences(saved, load_config("tiny", [*FAST, "optim.encoder_layer_lr_decay=0.5"]))
    assert diffs == ["optim.encoder_layer_lr_decay: 1.0 -> 0.5 (the checkpoint's optimizer groups hold the "
                     "per-layer rates)"]
    del saved["optim"]["encoder_layer_lr_decay"]  # a checkpoint from before the key: all layers at lr
    assert model_differences(saved, load_config("tiny", off)) == []
    # a `tiny` run begun before the preset turned the decay on is refused under today's preset, not silently changed
    assert model_differences(saved, load_config("tiny", FAST)) == [
        "optim.encoder_layer_lr_decay: 1.0 -> 0.25 (the checkpoint's optimizer groups hold the per-layer rates)"]


def test_the_model_card_names_the_layer_rates(tmp_path):
    from gpt_ds.config import load_config
    from gpt_ds.export_card import model_card
    line = [ln for ln in model_card("discriminator", load_config("tiny", [*FAST, "optim.encoder_layer_lr_decay=0.5"]),
                                    {"step": 3}, tmp_path).splitlines() if ln.startswith("- Optimizer")]
    assert line and "the discriminator's encoder layer i (from 0) at lr x 0.5^(i+1)" in line[0]
    plain = model_card("discriminator", load_config("tiny", [*FAST, "optim.encoder_layer_lr_decay=1"]), {"step": 3},
                       tmp_path)
    assert "encoder layer i" not in plain and "the generator at lr" not in plain
    own = model_card("generator", load_config("tiny", [*FAST, "optim.generator_lr=3e-3"]), {"step": 3}, tmp_path)
    assert "; the generator at lr 0.003;" in own  # the card says the generator's own rate when it had one
