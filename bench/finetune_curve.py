"""Downstream accuracy against pretraining FLOPs, drawn from `gpt-ds finetune` results that already exist.

`bench/electra_vs_mlm.py` pretrains its own runs and reads every budget from one schedule. Runs made one by one
(each with its own full schedule, as docs/results.md §8.16's are) need the same picture and the same statistics
without being trained again: give each fine-tuning result with the curve it belongs to and its pretraining FLOPs,
and the random-init control. Several results at one point (pretraining seeds) are pooled: the point is the median
over all their fine-tuning seeds.

    .venv/bin/python bench/finetune_curve.py --control random.json \\
        --point ELECTRA=4.49e13:electra_a.json,electra_b.json --point MLM=4.49e13:mlm.json --out curve.png

Prints a table (median, and the two-sided Mann-Whitney p of each point against the control and against the other
curves at the same FLOPs), then one JSON line with the same figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt_ds.finetune.metrics import seed_scores, seeds_p_value  # noqa: E402


def read_result(path: str) -> list[float]:
    """The per-seed test accuracies (points) of one `gpt-ds finetune` JSON line (its last line, as it prints them)."""
    try:
        lines = Path(path).read_text().strip().splitlines()
        scores = seed_scores(json.loads(lines[-1]))
    except (OSError, IndexError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a `gpt-ds finetune` result with test accuracies per seed ({e})")
    if not scores:
        raise SystemExit(f"{path}: no seed has a test split; fine-tune with --test")
    return [100.0 * x for x in scores]


def parse_point(spec: str) -> tuple[str, float, list[str]]:
    """CURVE=FLOPS:RESULT[,RESULT...]"""
    try:
        curve, rest = spec.split("=", 1)
        flops, files = rest.split(":", 1)
        flops = float(flops)
    except ValueError:
        raise SystemExit(f"--point {spec!r}: expected CURVE=FLOPS:RESULT.json[,RESULT.json...], e.g. "
                         f"ELECTRA=4.49e13:runs/a.json")
    if not curve or flops <= 0 or not files:
        raise SystemExit(f"--point {spec!r}: needs a curve name, FLOPs > 0 and at least one result file")
    return curve, flops, files.split(",")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--point", action="append", required=True, help="CURVE=FLOPS:RESULT.json[,RESULT.json...]")
    ap.add_argument("--control", required=True, help="the random-init control's `gpt-ds finetune` result")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    control = read_result(a.control)
    points: dict[tuple[str, float], list[float]] = {}
    for spec in a.point:
        curve, flops, files = parse_point(spec)
        points.setdefault((curve, flops), []).extend(x for f in files for x in read_result(f))
    rows = []
    for (curve, flops), seeds in sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        others = {c: seeds_p_value(seeds, s) for (c, f), s in points.items() if f == flops and c != curve}
        rows.append({"curve": curve, "flops": flops, "median": statistics.median(seeds), "seeds": len(seeds),
                     "minus_control": statistics.median(seeds) - statistics.median(control),
                     "p_vs_control": seeds_p_value(seeds, control), "p_vs": others, "accuracies": seeds})
    fmt = lambda p: "-" if p is None else f"{p:.2g}"
    print(f"{'curve':>12} {'FLOPs':>9} {'median':>7} {'seeds':>5} {'vs control':>10} {'p':>7}  p vs other curves")
    print(f"{'control':>12} {0:9.2e} {statistics.median(control):7.1f} {len(control):5d}")
    for r in rows:
        print(f"{r['curve']:>12} {r['flops']:9.2e} {r['median']:7.1f} {r['seeds']:5d} {r['minus_control']:+10.1f} "
              f"{fmt(r['p_vs_control']):>7}  " + ", ".join(f"{c} {fmt(p)}" for c, p in r["p_vs"].items()))
    plot(rows, control, Path(a.out), a.title)
    print(json.dumps({"control": {"median": statistics.median(control), "accuracies": control}, "points": rows,
                      "plot": a.out}))
    return 0


def plot(rows: list[dict], control: list[float], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for curve in dict.fromkeys(r["curve"] for r in rows):
        mine = [r for r in rows if r["curve"] == curve]
        line, = ax.plot([r["flops"] for r in mine], [r["median"] for r in mine], "o-", label=curve)
        ax.scatter([r["flops"] for r in mine for _ in r["accuracies"]], [x for r in mine for x in r["accuracies"]],
                   s=10, alpha=0.3, color=line.get_color())  # every fine-tuning seed: the spread a median hides
    ax.axhline(statistics.median(control), color="grey", linestyle=":", label="random init")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining FLOPs")
    ax.set_ylabel("test accuracy, % (median over seeds)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)  # never a half-written picture
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
