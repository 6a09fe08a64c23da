"""bench/pretrain_step.py's plumbing at a toy size: several kernels choices timed in the same rounds, one JSON line.

Timings are not asserted (the machine is shared); the figures' structure and their relations to the raw times are."""
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_step_bench_compares_kernel_choices_in_one_run():
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": "29561"}
    r = subprocess.run([sys.executable, "bench/pretrain_step.py", "--presets", "tiny", "--batch", "2", "--seq-len",
                        "32", "--vocab", "600", "--steps", "3", "--kernels", "auto,reference"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["kernels"] == "auto,reference" and res["device"] == "cpu" and res["precision"] == "fp32"
    times = res["tiny_times_s"]
    assert set(times) == {"auto", "reference", "hf"} and all(len(v) == 3 for v in times.values())
    # the headline is the first choice; each figure is the median of the per-round ratios of the recorded times
    assert math.isclose(res["tiny_speedup_vs_hf"],
                        statistics.median(h / o for h, o in zip(times["hf"], times["auto"])))
    assert math.isclose(res["tiny_reference_speedup_vs_hf"],
                        statistics.median(h / o for h, o in zip(times["hf"], times["reference"])))
    assert math.isclose(res["tiny_auto_speedup_vs_reference"],
                        statistics.median(r / o for r, o in zip(times["reference"], times["auto"])))
    peaks = [p * 1e9 for p in res["tiny_peak_gflops_per_round"]]
    flop = res["tiny_step_gflop"] * 1e9
    assert math.isclose(res["tiny_reference_mfu_vs_measured_peak"],
                        statistics.median(flop / o / p for o, p in zip(times["reference"], peaks)))
    assert 0 < res["tiny_matmul_time_share"] < 1 and 0 <= res["tiny_attention_op_share"] < 1


def test_gpu_check_smoke_part_runs_on_the_cpu(tmp_path):
    """bench/gpu_check.sh's smoke part (train, checkpoint, resume, check the metrics) with CPU overrides: a device
    lease is too short to find a broken script there."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHON": sys.executable, "SMOKE_DIR": str(tmp_path / "run")}
    r = subprocess.run(["bash", "bench/gpu_check.sh", "_smoke", "train.precision=fp32", "model.kernels=torch",
                        "deepspeed.generator=ds_configs/zero3_fp32.json",
                        "deepspeed.discriminator=ds_configs/zero3_fp32.json", "train.global_batch=8",
                        "data.seq_len=64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["smoke_ok"] and res["steps"] == [10, 20, 30, 40, 50, 60]
    assert "resumed from" in r.stderr and "step_0000040" in r.stderr
    r = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
