"""`gpt-ds plot RUN_DIR [RUN_DIR ...] [--out PNG] [--x steps|tokens|flops]`: a picture of one or more runs from their metrics.jsonl.

Six panels against the step: total loss, the generator's MLM loss and masked-token accuracy, the discriminator's RTD
loss beside its prior (the loss of always answering "original"), its AUC, and tokens/s. Several runs share the axes,
so two recipes or a run and its resume can be compared at a glance. matplotlib (the `plot` extra, installed by
`make setup`) draws it off-screen; the PNG is written aside and renamed.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from gpt_ds.config import load_config
from gpt_ds.errors import GptDsError
from gpt_ds.flops import step_flops
from gpt_ds.train.metrics_file import NAME, read_rows

PANELS = (("loss", "total loss", None), ("gen_loss", "generator MLM loss", None),
          ("gen_acc", "masked-token accuracy (dashed: at [MASK])", "gen_acc_at_mask"),
          ("disc_loss", "RTD loss (dashed: prior)", "disc_loss_prior"),
          ("disc_auc", "replaced-token AUC", None), ("tokens_per_s", "tokens/s", None))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders (each holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/metrics.png of the first run)")
    p.add_argument("--x", choices=["steps", "tokens", "flops"], default="steps",
                   help="the x-axis: optimizer steps, tokens seen, or training FLOPs (runs of different objectives or "
                        "batch sizes compare on tokens or FLOPs)")


def read_metrics(run_dir: Path) -> list[dict]:
    rows = read_rows(run_dir)
    if not rows:
        raise GptDsError(f"{run_dir / NAME}: no training rows yet")
    return rows


def x_scale(run_dir: Path, x: str) -> float:
    """Steps -> the chosen x-axis unit, from the run's config.yaml (tokens per step, or FLOPs per step)."""
    if x == "steps":
        return 1.0
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise GptDsError(f"{run_dir}: no config.yaml, needed for --x {x}; plot with --x steps")
    cfg = load_config(str(path), [])
    if x == "tokens":
        return float(cfg.train.global_batch * cfg.data.seq_len)
    vocab = cfg.model.vocab_size
    if vocab <= 0:
        from gpt_ds.zero.sizes import ASSUMED_VOCAB, vocab_size  # torch and transformers: only for this case
        vocab = vocab_size(cfg, default=ASSUMED_VOCAB)
    return step_flops(cfg, vocab)["total"]


def plot(runs: list[Path], out: Path, x: str = "steps") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = {r: read_metrics(r) for r in runs}
    scale = {r: x_scale(r, x) for r in runs}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title, prior) in zip(axes.flat, PANELS):
        for run, rows in data.items():
            pts = [(r["step"] * scale[run], r[key]) for r in rows if key in r]
            if pts:
                line, = ax.plot(*zip(*pts), label=run.name)
                if prior:
                    base = [(r["step"] * scale[run], r[prior]) for r in rows if prior in r]
                    if base:
                        ax.plot(*zip(*base), linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel({"steps": "step", "tokens": "tokens seen", "flops": "training FLOPs"}[x])
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def run(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    out = Path(args.out) if args.out else runs[0] / "metrics.png"
    print(plot(runs, out, args.x))
    return 0
