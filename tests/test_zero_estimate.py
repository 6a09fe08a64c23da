"""`gpt-ds estimate`: sizes from the real towers, activations vs saved tensors, model states vs DeepSpeed's estimator,
the peak's phases term by term, and a real 2-rank training step's peak memory against the estimate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_ds.cli import main as cli_main
from gpt_ds.config import DS_CONFIG_DIR, ConfigError, load_config
from gpt_ds.zero.estimate import estimate, parse_bytes, peak_phases
from gpt_ds.ds_config import engine_buckets
from gpt_ds.zero.memory import OPTIONS, Option, States, _kept_gathered, _touching_partition, model_states
from gpt_ds.kernels.generator_torch import TILE_ELEMS
from gpt_ds.zero.sizes import (cpu_kernels_active, encoder_activation_bytes, head_workspace,
                               recompute_bytes, towers)

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.vocab_size=1000"]


def _sizes(t) -> dict:
    """What model_states gets for tower `t` under the ZeRO-3 preset with gpt_ds's "auto" filled in."""
    return engine_buckets(load_config("tiny", TINY), t.name, t.hidden, DS_CONFIG_DIR / "zero3_bf16.json")


def test_tower_sizes_match_the_models_gpt_ds_builds():
    from gpt_ds.train.engines import build_models
    cfg = load_config("tiny", TINY)
    gen, disc = build_models(cfg, 1000, 0, seed=0)
    est = {t.name: t for t in towers(cfg)}
    for name, model in (("generator", gen), ("discriminator", disc)):
        assert est[name].params == sum(p.numel() for p in model.parameters()), name  # tied weights counted once
    # GDES: the discriminator's word table is the delta, shaped like the generator's (vocab x embedding)
    assert disc.pt.electra.embeddings.word_embeddings.weight.shape == gen.mlm.electra.embeddings.word_embeddings.weight.shape
    # the optimizer's groups as pretraining builds them (ZeRO-1/2 partition each on its own): one per depth with
    # tiny's encoder-layer lr decay on the discriminator, two on the generator
    from gpt_ds.model.weight_decay import param_groups
    assert cfg.optim.encoder_layer_lr_decay < 1
    for name, model, decay in (("generator", gen, 1.0), ("discriminator", disc, cfg.optim.encoder_layer_lr_decay)):
        real = param_groups(model, 0.01, 1e-3, decay, cfg.model.num_layers)
        assert est[name].groups == tuple(tuple(p.numel() for p in g["params"]) for g in real), name
    assert len(est["discriminator"].groups) > 2 and len(est["generator"].groups) == 2


@pytest.mark.parametrize("h, ffn, heads, seq, dropout", [(64, 256, 2, 32, 0.1), (96, 192, 3, 16, 0.1),
                                                       (64, 256, 2, 32, 0.0)])
def test_encoder_activations_match_saved_tensors(h, ffn, heads, seq, dropout):
    """The encoders gpt_ds trains (its dropout and attention), every tensor autograd saves, vs the per-layer count.
    Without dropout, attention on the CPU is SDPA's fused kernel (a log-sum-exp per head, as flash keeps)."""
    from gpt_ds.train.engines import build_models
    sys.path.insert(0, str(ROOT / "bench"))
    from zero_memory import saved_activation_bytes
    cfg = load_config("tiny", TINY + [f"model.hidden_size={h}", f"model.intermediate_size={ffn}",
                                      f"model.num_heads={heads}", "model.num_layers=2", f"data.seq_len={seq}",
                                      f"model.hidden_dropout={dropout}", f"model.attention_dropout={dropout}",
                                      "model.kernels=torch"])
    t = towers(cfg)[1]
    _, disc = build_models(cfg, 1000, 0, seed=0)
    measured = saved_activation_bytes(disc.pt.electra.train(), torch.randint(5, 1000, (3, seq)))
    est = encoder_activation_bytes(t, 3, seq, 4, checkpointing=False, flash=dropout == 0,
                                   hidden_dropout=dropout > 0, attention_dropout=dropout > 0,
                                   cpu_kernels=cpu_kernels_active(on_gpu=False))
    assert abs(est / measured - 1) < 0.02, (est, measured)
    assert encoder_activation_bytes(t, 3, seq, 4, checkpointing=True, flash=False) < est or dropout == 0
    assert encoder_activation_bytes(t, 3, seq, 4, checkpointing=False, flash=True) < est or dropout == 0


def test_partition_touching_counts_straddling_params_whole():
    assert _touching_partition((10, 2, 2), 1) == 14
    assert _touching_partition((10, 2, 2), 2) == 14  # rank 1 owns [7,14): the 10 straddles, counted whole
    assert _touching_partition((4, 4, 4, 4), 2) == 8
    assert _touching_partition((4, 4, 4, 4), 4) == 4


def test_model_states_agree_with_deepspeed_estimator():
    """Mixed precision ZeRO-3, with and without offload: within 15% of DeepSpeed's own formula."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    cfg = load_config("electra-base")
    for t in towers(cfg):
        for nodes, gpn in ((1, 8), (4, 8)):
            world = nodes * gpn
            for opt, off, off_p in ((Option(3), False, False), (Option(3, "optimizer"), True, False),
                                    (Option(3, "param"), True, True)):
                st = model_states(t, opt, "bf16", world, **_sizes(t))
                cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
                    t.params, t.largest_module, num_gpus_per_node=gpn, num_nodes=nodes, cpu_offload=off,
                    cpu_offload_params=off_p, zero_init=True, additional_buffer_factor=1.0)
                # per rank, the largest-layer working term aside (ours counts it as transient); DeepSpeed's formula
                # leaves the reduce bucket out
                ds_states = (gpu - largest) + (cpu / gpn if off else 0)
                ours = st.total - st.gpu["buffers"] + st.step_gpu.get("fp32 sub-group gradient", 0)
                assert abs(ours / ds_states - 1) < 0.15, (t.name, world, opt, ours, ds_states)


def test_zero3_states_shrink_with_ranks_and_stage_order():
    t = towers(load_config("electra-small"))[1]
    per = {n: model_states(t, Option(3), "bf16", n, **_sizes(t)).total for n in (1, 2, 8)}
    assert 0.45 < per[2] / per[1] < 0.55 and per[8] < per[2] / 3
    totals = [model_states(t, o, "bf16", 8, **_sizes(t)).gpu_steady for o in OPTIONS]
    assert totals[0] > totals[1] > totals[3] > totals[4] > totals[5]


def test_estimate_table_and_recommendation():
    cfg = load_config("electra-large")
    big = estimate(cfg, 2, 8, parse_bytes("80GB"))
    small = estimate(cfg, 2, 8, parse_bytes("16GB"))
    rows = big["options"]
    assert len(rows) == 2 * len(OPTIONS)
    fitting = [r for r in rows if r["fits"]]
    assert fitting == rows[:len(fitting)]
    assert [r["step_time_s"] for r in fitting] == sorted(r["step_time_s"] for r in fitting)
    rec = big["recommended"]
    assert (DS_CONFIG_DIR.parent / rec["preset"]).is_file()
    ck = {(r["option"], r["activation_checkpointing"]): r for r in rows}
    assert ck[("ZeRO-3", True)]["activation_bytes"] < ck[("ZeRO-3", False)]["activation_bytes"] / 3
    assert small["recommended"] is None or small["recommended"]["activation_checkpointing"]
    f = big["flops_per_step"]
    assert f["total"] == pytest.approx(f["generator"] + f["discriminator"] + f["sampling"])


def test_parse_bytes_and_cli(capsys):
    assert parse_bytes("80GB") == 80 << 30 and parse_bytes("512MiB") == 512 << 20
    with pytest.raises(Exception, match="--gpu-mem"):
        parse_bytes("lots")
    assert cli_main(["estimate", "tiny", *TINY, "--gpus-per-node", "2", "--gpu-mem", "8GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["recommended"]["preset"].endswith("_fp32.json")
    assert cli_main(["estimate", "tiny", *TINY, "--gpus-per-node", "2", "--gpu-mem", "8GB"]) == 0
    text = capsys.readouterr().out
    assert "recommended:" in text and "buckets (elements) reduce 5,000,000, ZeRO-3 prefetch 5,000,000" in text
    own = 'deepspeed.discriminator_overrides={zero_optimization: {reduce_bucket_size: 123456}}'
    assert cli_main(["estimate", "tiny", *TINY, own, "--gpus-per-node", "2"]) == 0
    lines = {x.split(":")[0].strip(): x for x in capsys.readouterr().out.splitlines() if "buckets (elements)" in x}
    assert "reduce 123,456," in lines["discriminator"] and "reduce 5,000,000," in lines["generator"]
    # a preset with neither a vocabulary size nor a tokenizer still gets an estimate, with the assumption said
    assert cli_main(["estimate", "tiny", "--gpus-per-node", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocab_size"] == 30522 and out["assumptions"]["vocab_size_assumed"] is True
    assert cli_main(["estimate", "tiny", "--gpus-per-node", "2"]) == 0
    assert "vocabulary: 30522 assumed" in capsys.readouterr().out
    assert cli_main(["estimate", "tiny", "--gpus-per-node", "2", "--vocab-size", "8000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocab_size"] == 8000 and out["assumptions"]["vocab_size_assumed"] is False
    # a preset whose own ds_config differs from the advice gets a line about it
    assert cli_main(["estimate", "electra-base", "--nodes", "4", "--gpus-per-node", "8"]) == 0
    text = capsys.readouterr().out
    assert "recommended: ds_configs/zero0_bf16.json" in text and "the config's own choice, zero3_bf16" in text


# ---------------------------------------------------------------------------------------------- peak memory terms


def _states(persistent: int, released: int, kept: int = 0, end: int = 0, step: int = 0) -> States:
    st = States(gpu={"params": persistent, "grads": released}, released=("grads",))
    st.gpu_kept = {"gathered params": kept} if kept else {}
    st.end_of_backward = {"reduce": end} if end else {}
    st.step_gpu = {"step": step} if step else {}
    return st


def test_peak_phases_follow_the_trainers_order():
    """gen fwd, disc fwd, gen bwd (start, end), disc bwd (start, end), gen step, disc step; what each holds."""
    ws = {"forward": 1, "backward": 2}
    per = [("generator", _states(100, 10, kept=5, end=3, step=7), 20, ws),
           ("discriminator", _states(200, 30, kept=50, end=4, step=9), 40, ws)]
    got = {p["phase"]: p["gpu"] for p in peak_phases(per, grad_accum=1)}
    assert list(got) == ["generator forward", "discriminator forward", "generator backward", "generator backward end",
                         "discriminator backward", "discriminator backward end", "generator step",
                         "discriminator step"]
    assert got["generator forward"] == 300 + 20 + 5 + 1
    assert got["discriminator forward"] == 300 + 60 + 55 + 1
    assert got["generator backward"] == 300 + 60 + 55 + 2  # no gradient yet; both towers' activations
    assert got["generator backward end"] == 300 + 10 + 40 + 50 + 3  # its gradients; the discriminator's activations
    assert got["discriminator backward"] == 300 + 10 + 40 + 50 + 2
    assert got["discriminator backward end"] == 300 + 40 + 4
    assert got["generator step"] == 300 + 40 + 7 and got["discriminator step"] == 300 + 30 + 9
    accum = {p["phase"]: p["gpu"] for p in peak_phases(per, grad_accum=4)}  # gradients carried between micro-batches
    assert accum["generator backward"] == got["generator backward"] + 40
    assert accum["generator forward"] == got["generator forward"] + 40


def test_zero3_keeps_gathered_params_from_forward_to_backward():
    t = towers(load_config("electra-small"))[1]
    assert _kept_gathered(t, 1000, 10**9, 10**9) == t.params - 1000  # the presets: everything stays gathered
    assert _kept_gathered(t, 0, 10**6, 10**9) == 10**6  # stage3_max_live_parameters caps it
    assert _kept_gathered(t, 0, 10**9, 2 * 10**6) == 10**6  # a short reuse distance frees the early layers
    b = _sizes(t)
    assert not model_states(t, Option(3), "bf16", 1, **b).gpu_kept  # one rank works on its whole partitions
    assert model_states(t, Option(3), "bf16", 8, **b).gpu_kept["gathered params"] > t.params  # 2 B x most params
    assert model_states(t, Option(3, "param"), "bf16", 1, **b).gpu_kept  # fetched from CPU memory onto the GPU
    assert not model_states(t, Option(3, "param"), "fp32", 1, **b, on_gpu=False).gpu_kept
    # kept until the backward: no second gather, so ZeRO-3 moves what ZeRO-2 does (one micro-batch per step)
    rows = {r["option"]: r for r in estimate(load_config("electra-small", ["train.grad_accum=1"]), 1, 8,
                                             parse_bytes("80GB"))["options"] if not r["activation_checkpointing"]}
    comm = {o: r["step_time_s"] - r["compute_s"] for o, r in rows.items()}
    assert comm["ZeRO-3"] == pytest.approx(comm["ZeRO-2"], rel=0.01) and comm["ZeRO-3"] > comm["ZeRO-0"] / 2


def test_gradients_are_freed_at_the_step_except_zero3s():
    t = towers(load_config("electra-small"))[1]
    b = _sizes(t)
    for opt in OPTIONS:
        st = model_states(t, opt, "fp32", 4, **b)
        assert ("grads" in st.released) == (opt.stage < 3), opt
        assert st.gpu_persistent + st.gpu_released == st.gpu_steady
    z0 = model_states(t, Option(0), "fp32", 4, **b)
    assert z0.end_of_backward["all-reduce buffer"] == 4 * t.params  # DeepSpeed all-reduces a flat copy
    assert not model_states(t, Option(0), "fp32", 1, **b).end_of_backward
    assert model_states(t, Option(1), "fp32", 4, **b).end_of_backward["full grads"] == 4 * t.params
    assert model_states(t, Option(2), "fp32", 4, **b).end_of_backward["a full grad"] == 4 * t.largest_param
    z3 = model_states(t, Option(3), "bf16", 4, **b)
    assert z3.step_gpu["fp32 sub-group gradient"] == 2 * z3.step_gpu["flat sub-group gradient"]


def test_checkpointing_keeps_layer_inputs_and_recomputes_one_layer_in_the_backward():
    cfg = load_config("tiny", TINY + ["train.global_batch=2"])
    t = towers(cfg)[1]
    s = cfg.data.seq_len
    full = encoder_activation_bytes(t, 2, s, 4, checkpointing=False, flash=False)
    inputs = encoder_activation_bytes(t, 2, s, 4, checkpointing=True, flash=False)
    layer = recompute_bytes(t, cfg, 2, 4, checkpointing=True, flash=False)
    assert recompute_bytes(t, cfg, 2, 4, checkpointing=False, flash=False) == 0
    assert inputs - encoder_activation_bytes(t, 2, s, 4, checkpointing=True, flash=False, hidden_dropout=False) == \
        2 * s * t.embedding  # the embeddings' dropout mask, one byte per element
    assert full - inputs == t.layers * layer - 2 * s * t.layers * 4 * t.hidden  # each layer's input stays saved
    est = estimate(cfg, 1, 1, parse_bytes("8GB"), on_gpu=False)
    row = next(r for r in est["options"] if r["preset"] == "zero0_fp32" and r["activation_checkpointing"])
    cpu_layer = recompute_bytes(t, cfg, 2, 4, checkpointing=True, flash=False, cpu_kernels=cpu_kernels_active(False))
    assert row["engines"]["discriminator"]["recomputed_layer"] == cpu_layer
    # C++ CPU kernels: no dropout masks (2H + heads x seq_len bytes per token) and no dropped probabilities (heads x
    # seq_len values), one fused 3H x H Q/K/V weight per layer
    assert recompute_bytes(t, cfg, 2, 4, checkpointing=True, flash=False, cpu_kernels=True) == \
        layer - 2 * s * (2 * t.hidden + t.heads * s + t.heads * s * 4) + 3 * t.hidden * t.hidden * 4


def test_head_workspace_by_implementation():
    cfg = load_config("electra-base")
    gen, disc = towers(cfg)
    micro = 32
    ws = {impl: head_workspace(gen, cfg, micro, 2, impl) for impl in ("torch", "triton", "reference")}
    assert ws["triton"]["forward"] == 0  # tiles stay on chip
    assert 0 < ws["torch"]["forward"] <= 3 * 4 * 1024 * max(128, TILE_ELEMS // 1024)  # a few bounded tiles
    assert ws["reference"]["forward"] > 10 * ws["torch"]["forward"]  # whole rows x vocabulary logits
    assert ws["triton"]["backward"] >= 6 * gen.vocab * gen.embedding  # fp32 grad of the tied table + its bf16 copy
    tiny = load_config("tiny", TINY)
    small_gen = towers(tiny)[0]
    assert head_workspace(small_gen, tiny, 2, 4, "torch")["forward"] < 4 * TILE_ELEMS  # few rows: small tiles
    d = {impl: head_workspace(disc, cfg, micro, 2, impl) for impl in ("torch", "triton")}
    assert d["triton"]["backward"] > d["torch"]["backward"]  # Triton keeps d(pre-activation) for every row


def test_estimate_rows_report_the_peak_phase():
    est = estimate(load_config("electra-base"), 1, 8, parse_bytes("80GB"))
    for r in est["options"]:
        top = max(r["phases"], key=lambda p: p["gpu"])
        assert r["peak_gpu_bytes"] == int(top["gpu"]) and r["peak_phase"] == top["phase"]
        assert r["peak_gpu_bytes"] >= max(p["states"] for p in r["phases"])
        if not r["activation_checkpointing"]:
            assert "backward" in r["peak_phase"] or "forward" in r["peak_phase"]


# --------------------------------------------------------------------------------- real runs (CPU, gloo, subprocess)


def _python(code: str, timeout: int = 120) -> str:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=f"{ROOT}:{ROOT / 'bench'}", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_peak_measurement_counts_known_tensors_and_frees_on_other_threads():
    """The bench's method on a toy: 4 MB allocated here and freed on another thread, then 1 MB; the peak is 4 MB + the
    marker and the live total ends at 1 MB + the marker (without the flag the free would never be subtracted)."""
    out = _python("""
import threading, torch
from torch.profiler import ProfilerActivity, profile
import zero_memory as zm
zm.count_cpu_frees_on_every_thread()
held = []
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    mark = torch.empty(zm.MARK_BYTES, dtype=torch.uint8)
    with torch.profiler.record_function("gpt_ds.steps"):
        held.append(torch.empty(1 << 20, dtype=torch.float32))
        t = threading.Thread(target=held.clear); t.start(); t.join()
        one = torch.empty(1 << 18, dtype=torch.float32)
_, _, totals = zm._timeline(prof)
base = totals[0][1] - zm.MARK_BYTES
print(max(v for _, v in totals) - base, totals[-1][1] - base)
""")
    peak, last = map(int, out.split())
    assert peak == (4 << 20) + 1024 and last == (1 << 20) + 1024


def test_two_rank_training_step_peak_within_15_percent_of_the_estimate(tmp_path):
    """gpt_ds's Trainer on 2 gloo ranks, tiny: ZeRO-3 and ZeRO-0 with checkpointing; measured by bench/zero_memory.py."""
    rows = tmp_path / "rows.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "zero_memory.py"), "--worlds", "2", "--only",
                        "tiny:zero3:0,tiny:zero0:1", "--save", str(rows)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    saved = json.loads(rows.read_text())
    assert {(r["preset"], r["checkpointing"], r["world"]) for r in saved} == {("zero3", False, 2), ("zero0", True, 2)}
    sys.path.insert(0, str(ROOT / "bench"))
    from zero_memory import estimated
    for r in saved:
        est = estimated(r)
        assert r["peak"] > r["states"] > 0
        assert abs(est["peak"] / r["peak"] - 1) <= 0.15, (r, est)
        assert abs(est["states"] / r["states"] - 1) <= 0.15, (r, est)
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["peak_error_max"] <= 0.15 and last["rows"] == 2


def test_the_estimate_sizes_buckets_as_the_run_will_get_them():
    """A number written in the overrides, "auto" as gpt_ds fills it, a key left out as DeepSpeed's default; ZeRO-1/2's
    bucket lives through the backward only, ZeRO-3's with the engine (bench/zero_memory.py --set measures both)."""
    from gpt_ds.ds_config import MIN_AUTO_BUCKET, engine_buckets
    big = {"zero_optimization": {"reduce_bucket_size": 8_000_000, "stage3_prefetch_bucket_size": 2e6}}
    cfg = load_config("tiny", TINY + [f"deepspeed.overrides={json.dumps(big)}"])
    t = towers(cfg)[1]
    z3 = engine_buckets(cfg, "discriminator", t.hidden, DS_CONFIG_DIR / "zero3_fp32.json")
    assert (z3["reduce_bucket"], z3["prefetch_bucket"], z3["persistence"]) == (8_000_000, 2_000_000, 10 * t.hidden)
    assert engine_buckets(load_config("tiny", TINY), "discriminator", t.hidden,
                          DS_CONFIG_DIR / "zero3_fp32.json")["reduce_bucket"] == MIN_AUTO_BUCKET  # "auto", H² < 5M
    left_out = DS_CONFIG_DIR / "zero0_fp32.json"  # no zero buckets written at all
    assert engine_buckets(load_config("tiny", TINY), "generator", 64, left_out)["reduce_bucket"] == 500_000_000
    bad = load_config("tiny", TINY + ['deepspeed.overrides={zero_optimization: {reduce_bucket_size: lots}}'])
    with pytest.raises(ConfigError, match="reduce_bucket_size = 'lots'"):
        engine_buckets(bad, "generator", 64, DS_CONFIG_DIR / "zero2_fp32.json")

    plain = {r["preset"]: r for r in estimate(load_config("tiny", TINY), 1, 2, 1 << 40)["options"]
             if not r["activation_checkpointing"]}
    rows = {r["preset"]: r for r in estimate(cfg, 1, 2, 1 << 40)["options"] if not r["activation_checkpointing"]}
    for preset in ("zero1_fp32", "zero2_fp32"):
        d = rows[preset]["engines"]["discriminator"]
        assert d["backward_gpu"]["reduce bucket"] == 4 * 8_000_000 and "buffers" not in d["gpu"]
        phases = {p["phase"]: p["gpu"] - q["gpu"] for p, q in zip(rows[preset]["phases"], plain[preset]["phases"])}
        grown = 4 * (8_000_000 - MIN_AUTO_BUCKET)
        assert phases["discriminator backward"] == grown
        # stage 2 reduces its last bucket as the backward ends; stage 1 frees it before reducing whole gradients
        assert phases["discriminator backward end"] == (grown if preset == "zero2_fp32" else 0)
        assert phases["discriminator forward"] == phases["discriminator step"] == 0  # freed as the backward ends
    z3row = rows["zero3_fp32"]["engines"]["discriminator"]
    assert z3row["gpu"]["buffers"] == 4 * 8_000_000  # allocated with the engine
    assert z3row["gpu_transient"]["gathered params"] == 4 * t.params  # no more than the tower, however large
    overlap = load_config("tiny", TINY + ['deepspeed.overrides={zero_optimization: {overlap_comm: true}}'])
    z2 = next(r for r in estimate(overlap, 1, 2, 1 << 40)["options"] if r["preset"] == "zero2_fp32")
    assert z2["engines"]["discriminator"]["backward_gpu"]["reduce bucket"] == 2 * 4 * MIN_AUTO_BUCKET  # two in flight


def test_the_estimate_follows_fewer_live_parameters_written_in_the_overrides():
    """docs/zero.md's advice for a ZeRO-3 tower that overflows: lower stage3_max_live_parameters; the estimate must
    see it (it once read only the presets' 1e9)."""
    live = load_config("tiny", TINY + ['deepspeed.overrides={zero_optimization: {stage3_max_live_parameters: 100000}}'])
    z3 = next(r for r in estimate(live, 1, 2, 1 << 40)["options"] if r["preset"] == "zero3_fp32")
    for name, e in z3["engines"].items():
        assert e["buckets"]["max_live"] == 100_000
    base = next(r for r in estimate(load_config("tiny", TINY), 1, 2, 1 << 40)["options"] if r["preset"] == "zero3_fp32")
    assert z3["peak_gpu_bytes"] < base["peak_gpu_bytes"]
