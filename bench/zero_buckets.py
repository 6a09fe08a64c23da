"""Seconds per training step of 2 CPU ranks under ZeRO-3: transformers' H² buckets against gpt_ds's "auto".

transformers' DeepSpeed integration sets `reduce_bucket_size` = H² and `stage3_prefetch_bucket_size` = 0.9·H². For a
small tower (H = 128: 16k elements) that cuts every step's gradients into hundreds of reduce-scatters, and on gloo each
one costs a round trip; gpt_ds's "auto" keeps H² with a 5M-element floor. This bench runs `gpt-ds pretrain PRESET
--nproc 2` on both engines' ZeRO-3 preset, once with each tower's H² written into the ds_config and once with "auto",
alternating for --rounds rounds; each run's step time is the median of its steps after --warmup; the ratio is taken
per round, then its median. Same data, seed and losses: the buckets decide how gradients are grouped for the
collectives, not what is summed. The JSON reports the bucket sizes each variant's engines were given (read back from
the run folder's ds_config.*.json). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(preset: str, steps: int, warmup: int, overrides: list[str], work: Path, store: str | None,
        tokenizer: str | None) -> tuple[float, list[float], dict]:
    """Median s/step after the warm-up, the losses of every step (to show the variants compute the same), and each
    engine's reduce bucket as DeepSpeed got it."""
    data = [f"data.sources=[{store}]", f"data.tokenizer={tokenizer}"] if store else ["data.synthetic=true"]
    cmd = [sys.executable, "-m", "gpt_ds.cli", "pretrain", preset, f"run.dir={work}", *data, f"train.max_steps={steps}",
           "logging.every=1", "logging.progress_bar=false", "logging.tensorboard=false", f"checkpoint.every={steps}",
           *overrides, "--nproc", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    if p.returncode:
        sys.exit(f"bench/zero_buckets.py: `{' '.join(cmd)}` failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    buckets = {e: json.loads((work / f"ds_config.{e}.json").read_text())["zero_optimization"]["reduce_bucket_size"]
               for e in ("generator", "discriminator")}
    return statistics.median(r["step_time_s"] for r in rows if r["step"] > warmup), [r["loss"] for r in rows], buckets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", help="a token store (default: synthetic data)")
    ap.add_argument("--tokenizer")
    ap.add_argument("--set", action="append", default=[], help="a config override for both variants (repeatable)")
    args = ap.parse_args()
    ds = "ds_configs/zero3_fp32.json"
    from gpt_ds.config import load_config
    from gpt_ds.model.sizes import generator_sizes
    cfg = load_config(args.preset, args.set)
    h_disc = cfg.model.hidden_size
    h_gen = generator_sizes(cfg.model)["hidden_size"] if cfg.model.arch == "electra" else h_disc  # MPNet: GDES width

    def h2(h: int) -> str:  # transformers' values, written into the ds_config
        sizes = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h)}
        return json.dumps({"zero_optimization": sizes})
    variants = {"h_squared": [f"deepspeed.generator_overrides={h2(h_gen)}",
                              f"deepspeed.discriminator_overrides={h2(h_disc)}"], "auto": []}
    times: dict[str, list[float]] = {k: [] for k in variants}
    losses: dict[str, list[float]] = {}
    buckets: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name, extra in variants.items():
                overrides = [f"deepspeed.generator={ds}", f"deepspeed.discriminator={ds}", *args.set, *extra]
                s, losses[name], buckets[name] = run(args.preset, args.steps, args.warmup, overrides,
                                                     Path(tmp) / f"{name}{i}", args.store, args.tokenizer)
                times[name].append(s)
                print(f"round {i}: {name} {s:.3f} s/step", flush=True)
    ratios = [a / b for a, b in zip(times["h_squared"], times["auto"])]
    out = {"preset": args.preset, "ranks": 2, "zero": 3, "steps": args.steps, "rounds": args.rounds,
           "h_squared_s_per_step": statistics.median(times["h_squared"]),
           "auto_s_per_step": statistics.median(times["auto"]),
           "speedup": statistics.median(ratios), "speedup_per_round": ratios,
           "reduce_bucket_size": buckets,
           "max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses["h_squared"], losses["auto"]))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
