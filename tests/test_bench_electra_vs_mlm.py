"""bench/electra_vs_mlm.py's bookkeeping, with `gpt-ds` itself replaced by a stand-in whose fine-tuning accuracies
are known: the per-seed accuracies it pools, the p-values it reports beside each gap (checked against the exact
Mann-Whitney distribution, counted here by hand), and the caches it reuses (a rerun with another seed count must not
read three-seed results)."""
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

from gpt_ds.finetune.metrics import seeds_p_value

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("electra_vs_mlm", ROOT / "bench" / "electra_vs_mlm.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def exact_two_sided_p(a, b):
    """P(U at least this far from its mean) under H0, by listing every way to split the pooled values (no ties)."""
    pooled, n = sorted(a + b), len(a)
    u = lambda xs: sum(x > y for x in xs for y in pooled if y not in xs)
    mean = n * len(b) / 2
    seen = abs(u(a) - mean)
    splits = list(itertools.combinations(pooled, n))
    return sum(abs(u(list(s)) - mean) >= seen - 1e-12 for s in splits) / len(splits)


@pytest.mark.parametrize("a,b", [([70.0, 71.0, 72.0], [60.0, 61.0, 62.0]),
                                 ([70.0, 61.5, 72.0, 64.0], [60.0, 71.0, 62.0, 63.0, 65.5])])
def test_p_value_is_the_exact_mann_whitney(a, b):
    assert seeds_p_value(a, b) == pytest.approx(exact_two_sided_p(a, b))


def test_p_value_needs_two_seeds_a_side():
    assert seeds_p_value([70.0], [60.0, 61.0]) is None


def fake_result(accs):
    return {"seeds": [{"test": {"accuracy": x / 100}} for x in accs],
            "median": {"test": {"accuracy": sorted(accs)[len(accs) // 2] / 100}}}


def fake_store(tmp_path, monkeypatch):
    """A token store and tokenizer the bench accepts, and labeled tasks that are only paths."""
    store, tok = tmp_path / "store", tmp_path / "tok"
    store.mkdir(), tok.mkdir()
    (store / "manifest.json").write_text(json.dumps({"vocab_size": 512}))
    (tok / "tokenizer.json").write_text("{}")
    import demo.corpora
    monkeypatch.setattr(demo.corpora, "labeled_task",
                        lambda t, out: {s: out / t / f"{s}.jsonl" for s in ("train", "validation", "test")})
    return store, tok


def make_folders(args):
    """What the real `gpt-ds pretrain` / `export` leave that the bench checks for: the run folder, the export marker."""
    if args[0] == "pretrain":
        run_dir = next(str(x) for x in args if str(x).startswith("run.dir="))
        Path(run_dir.split("=", 1)[1]).mkdir(parents=True)
    if args[0] == "export":
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpt_ds_export.json").write_text("{}")


def test_the_json_line_reports_gaps_and_their_p(tmp_path, monkeypatch, capsys):
    store, tok = fake_store(tmp_path, monkeypatch)
    calls = []
    # ELECTRA's seeds all score above every MLM seed, which all score above every random-init seed
    levels = {"discriminator": 80.0, "generator": 70.0, "random": 60.0}

    def fake_gpt_ds(*args, log=None):
        calls.append(args[0])
        make_folders(args)
        if args[0] != "finetune":
            return ""
        seeds = int(args[args.index("--seeds") + 1])
        level = levels["random" if "--random-init" in args else Path(args[1]).name]
        return json.dumps(fake_result([level + 0.1 * i for i in range(seeds)])) + "\n"

    monkeypatch.setattr(bench, "gpt_ds", fake_gpt_ds)
    work = tmp_path / "work"
    argv = ["electra_vs_mlm.py", "--work", str(work), "--store", str(store), "--tokenizer", str(tok),
            "--electra-steps", "8", "--budgets", "1", "--tasks", "question-type", "--scarce-only", "--seeds", "4",
            "--plot", str(tmp_path / "curve.png")]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["electra_minus_mlm"] == pytest.approx(10.0)
    assert line["electra_minus_random"] == pytest.approx(20.0)
    separated = exact_two_sided_p([1, 2, 3, 4], [5, 6, 7, 8])  # 2 / C(8, 4)
    assert line["p"]["electra_vs_mlm"]["question-type@500"] == pytest.approx(separated)
    assert line["p"]["electra_vs_random"]["question-type@500"] == pytest.approx(separated)
    assert len(line["table"][0]["seed_accuracies"]["question-type@500"]) == 4
    assert calls.count("finetune") == 3  # ELECTRA, MLM, random init

    calls.clear()  # the same command again: every stage is read back, nothing reruns
    assert bench.main() == 0
    assert calls.count("finetune") == 0
    calls.clear()  # another seed count is another measurement, not the cached one
    monkeypatch.setattr(sys, "argv", argv[:-4] + ["--seeds", "6", *argv[-2:]])
    assert bench.main() == 0
    assert calls.count("finetune") == 3
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(line["table"][0]["seed_accuracies"]["question-type@500"]) == 6

    calls.clear()  # every label instead of 500: the gaps and p-values are keyed by the task alone
    monkeypatch.setattr(sys, "argv", [x for x in argv if x != "--scarce-only"] + ["--scarce", "0"])
    assert bench.main() == 0
    assert calls.count("finetune") == 3
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["labels"] == "mean" and line["electra_minus_random"] == pytest.approx(20.0)
    assert line["p"]["electra_vs_mlm"]["question-type"] == pytest.approx(separated)


def test_jobs_run_the_pretraining_runs_side_by_side_and_give_the_same_line(tmp_path, monkeypatch, capsys):
    """`--jobs 2`: the ELECTRA and MLM runs start together (each waits at a barrier for the other: one at a time
    would time out), each job gets half the cores, and the JSON line is the one `--jobs 1` prints."""
    import os
    import threading
    store, tok = fake_store(tmp_path, monkeypatch)
    levels = {"discriminator": 80.0, "generator": 70.0, "random": 60.0, "question-type": 0.0, "sms-spam": 5.0}
    barrier = threading.Barrier(2, timeout=10)

    def fake_gpt_ds(*args, log=None, side_by_side=False):
        if args[0] == "pretrain" and side_by_side:
            barrier.wait()
        make_folders(args)
        if args[0] != "finetune":
            return ""
        task = Path(args[args.index("--train") + 1]).parent.name
        level = levels["random" if "--random-init" in args else Path(args[1]).name] + levels[task]
        return json.dumps(fake_result([level + 0.1 * i for i in range(3)])) + "\n"

    def line(jobs):
        monkeypatch.setattr(bench, "gpt_ds", lambda *a, log=None: fake_gpt_ds(*a, log=log, side_by_side=jobs > 1))
        monkeypatch.setattr(sys, "argv", [
            "electra_vs_mlm.py", "--work", str(tmp_path / f"work{jobs}"), "--store", str(store), "--tokenizer",
            str(tok), "--electra-steps", "8", "--budgets", "0.5,1", "--tasks", "question-type,sms-spam",
            "--scarce-only", "--seeds", "3", "--plot", str(tmp_path / f"curve{jobs}.png"), "--jobs", str(jobs)])
        assert bench.main() == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return {k: v for k, v in out.items() if k not in ("plot", "pretrain_minutes")}

    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # restored after the test
    monkeypatch.delenv("OMP_NUM_THREADS")
    two = line(2)
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert two == line(1)
    assert two["electra_minus_mlm"] == pytest.approx(10.0) and two["electra_minus_random"] == pytest.approx(20.0)
    assert len(two["table"]) == 4  # two budget points per objective
    # ELECTRA against the MLM at each budget, not only the largest: every ELECTRA seed above every MLM seed here
    electra = [r for r in two["table"] if r["objective"] == "electra"]
    assert len(electra) == 2 and all(r["p_vs_mlm"]["question-type@500"] < 0.2 for r in electra)
    assert "p_vs_mlm" not in next(r for r in two["table"] if r["objective"] == "mlm")
