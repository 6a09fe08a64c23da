"""How long rank 0 keeps the other ranks waiting when a ZeRO checkpoint resumes on another number of ranks.

Trains ELECTRA-Small (fp32, both engines ZeRO-3, then the discriminator ZeRO-2) for one step on 2 gloo ranks, saves,
and times gpt_ds.checkpoint.reshard.ensure_universal on the step folder in a fresh process, as rank 0 runs it: seconds,
seconds per million parameters, bytes of the checkpoint and of its universal copy. The other ranks wait for this in a
collective, so it must stay well inside the process group's timeout (30 minutes by default).

    DS_ACCELERATOR=cpu .venv/bin/python bench/zero_reshard.py      # ~3 min on 2 cores; last line: one JSON object
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMALL = ["data.synthetic=true", "train.precision=fp32", "train.global_batch=2", "data.seq_len=64",
         "train.max_steps=1", "checkpoint.every=1", "logging.progress_bar=false", "logging.tensorboard=false",
         "logging.peak_tflops=1", "optim.warmup_steps=1"]
CASES = {"zero3+zero3": ["deepspeed.generator=ds_configs/zero3_fp32.json",
                         "deepspeed.discriminator=ds_configs/zero3_fp32.json"],
         "zero3+zero2": ["deepspeed.generator=ds_configs/zero3_fp32.json",
                         "deepspeed.discriminator=ds_configs/zero2_fp32.json"]}


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _params(step: Path) -> int:
    """Parameters of both engines, from the universal copy's fp32 files (each holds one parameter whole)."""
    import torch
    n = 0
    for f in (step / "universal").glob("*/zero/*/fp32.pt"):
        t = torch.load(f, map_location="cpu", weights_only=False)
        n += (t["param"] if isinstance(t, dict) else t).numel()
    return n


def main() -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    out: dict = {"model": "electra-small (fp32, seq 64)", "saved_ranks": 2}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds in CASES.items():
            run = Path(tmp) / name
            subprocess.run([sys.executable, "-m", "gpt_ds.cli", "pretrain", "electra-small", *SMALL, *ds,
                            f"run.dir={run}", "--nproc", "2"], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            step = run / "checkpoints" / "step_0000001"
            code = ("import time; from pathlib import Path; import deepspeed.checkpoint.ds_to_universal; "
                    "from gpt_ds.checkpoint.reshard import ensure_universal; t = time.perf_counter(); "
                    f"ensure_universal(Path({str(step)!r})); print(time.perf_counter() - t)")
            p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True,
                               text=True)
            seconds = float(p.stdout.strip().splitlines()[-1])
            params = _params(step)
            ckpt = _bytes(step / "generator") + _bytes(step / "discriminator")
            out[name] = {"convert_s": round(seconds, 2), "params": params,
                         "s_per_million_params": round(seconds / params * 1e6, 4),
                         "checkpoint_mb": round(ckpt / 2**20, 1),
                         "universal_mb": round(_bytes(step / "universal") / 2**20, 1)}
            print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
