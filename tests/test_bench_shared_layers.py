"""bench/shared_layers.py: the generator really runs on the discriminator's lower layers, its masked-LM gradient
reaches the discriminator's optimizer through the real Trainer step, and the generator's own layers stay as drawn."""
import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gpt_ds.train.launch import _free_port

ROOT = Path(__file__).resolve().parents[1]
TOY = ["data.synthetic=true", "model.vocab_size=300", "model.hidden_size=32", "model.num_heads=2",
       "model.intermediate_size=64", "model.num_layers=2", "model.generator_layers=1", "data.seq_len=24",
       "model.max_position_embeddings=64", "train.global_batch=8", "optim.warmup_steps=1", "model.kernels=reference",
       "model.hidden_dropout=0", "model.attention_dropout=0",
       "deepspeed.generator=ds_configs/zero0_fp32.json", "deepspeed.discriminator=ds_configs/zero0_fp32.json"]


def _worker(port: int, run_dir: str, gen_weight: float, q) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      DS_ACCELERATOR="cpu")
    sys.path.insert(0, str(ROOT / "bench"))
    import deepspeed

    from gpt_ds.config import load_config
    from gpt_ds.train.metrics import StepStats
    from gpt_ds.train.trainer import Trainer
    from shared_layers import share_lower_layers
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config("tiny-mpnet", [*TOY, f"run.dir={run_dir}", f"objective.gen_weight={gen_weight}"])
    t = Trainer(cfg)
    gen, disc = t.engines.generator.module, t.engines.discriminator.module
    shared = share_lower_layers(t.engines)
    own = {n: p.detach().clone() for n, p in gen.backbone.encoder.named_parameters()}
    lower = {n: p.detach().clone() for n, p in disc.backbone.encoder.layer[0].named_parameters()}
    micro = t.make_loader().next_step()

    # the generator's encoder computes the discriminator's layer 0 (with its bias) on the generator's embeddings
    b = micro[0]
    ids = b["masked"].masked_ids
    with torch.no_grad():  # no padding mask: the layers see every position, so no mask needs building by hand
        got = gen.backbone(ids).last_hidden_state
        h = gen.backbone.embeddings(input_ids=ids)
        d_enc = disc.backbone.encoder
        want = d_enc.layer[0](h, None, d_enc.compute_position_bias(h))[0]
        mine = gen.backbone.encoder.layer[0](h, None, gen.backbone.encoder.compute_position_bias(h))[0]

    t.train_step(micro, StepStats())
    q.put({"shared": shared, "max_diff_shared": float((got - want).abs().max()),
           "max_diff_own": float((got - mine).abs().max()),
           "own_moved": max(float((p.detach() - own[n]).abs().max())
                            for n, p in gen.backbone.encoder.named_parameters()),
           "lower": {n: p.detach().numpy().copy() for n, p in disc.backbone.encoder.layer[0].named_parameters()},
           "lower_moved": max(float((p.detach() - lower[n]).abs().max())
                              for n, p in disc.backbone.encoder.layer[0].named_parameters())})


def _step(tmp_path: Path, gen_weight: float) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(_free_port(), str(tmp_path / f"w{gen_weight}"), gen_weight, q))
    p.start()
    out = None
    for _ in range(300):  # a worker that dies fails the test at once, not after the whole timeout
        try:
            out = q.get(timeout=1)
            break
        except queue.Empty:
            assert p.is_alive() or not q.empty(), f"worker died (exit code {p.exitcode})"
    p.join(60)
    assert out is not None
    assert p.exitcode == 0
    return out


def test_the_generator_trains_the_discriminators_lower_layers_in_a_trainer_step(tmp_path):
    with_gen, without = _step(tmp_path, 1.0), _step(tmp_path, 1e-12)
    one_layer = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32  # attention, FFN, LayerNorms
    assert with_gen["shared"] == one_layer + 32 * 2  # + the relative-position bias (32 buckets x 2 heads)
    assert with_gen["max_diff_shared"] < 1e-6 < with_gen["max_diff_own"]
    assert with_gen["own_moved"] == 0.0  # the generator's own layers get no gradient and no decay
    assert with_gen["lower_moved"] > 0
    # same seed, same first step for the discriminator: its shared layer differs only by the generator's gradient
    assert max(float(abs(with_gen["lower"][n] - without["lower"][n]).max()) for n in with_gen["lower"]) > 1e-6


def test_the_probe_runs_pretraining_and_refuses_a_partitioned_layout(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    args = [sys.executable, "bench/shared_layers.py", "tiny-mpnet", *TOY, f"run.dir={tmp_path / 'r'}",
            "train.max_steps=2", "logging.every=1", "logging.progress_bar=false"]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["exit_code"] == 0 and res["shared_params"] > 0 and res["last"]["step"] == 2
    z3 = [a.replace("zero0_fp32", "zero3_fp32").replace(f"{tmp_path / 'r'}", f"{tmp_path / 'z3'}") for a in args]
    r = subprocess.run(z3, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "ZeRO-0 only" in r.stdout + r.stderr
