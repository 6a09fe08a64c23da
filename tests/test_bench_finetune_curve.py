"""bench/finetune_curve.py: the curve drawn from existing `gpt-ds finetune` results — pooled pretraining seeds, the
gap to the control, p-values against the control and between curves, and a clear error for what is not a result."""
import importlib.util
import json
from pathlib import Path

import pytest

from gpt_ds.finetune.metrics import seeds_p_value

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("finetune_curve", ROOT / "bench" / "finetune_curve.py")
curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curve)


def result(path: Path, accs: list[float]) -> str:
    """What `gpt-ds finetune` prints: progress lines, then the JSON line with every seed."""
    line = {"seeds": [{"test": {"accuracy": x / 100}, "validation": {"accuracy": 0.5}} for x in accs],
            "median": {"test": {"accuracy": sorted(accs)[len(accs) // 2] / 100}}}
    path.write_text("finetune: done\n" + json.dumps(line) + "\n")
    return str(path)


def test_points_pool_seeds_and_compare_with_control_and_each_other(tmp_path, capsys):
    control = result(tmp_path / "r.json", [60, 61, 62, 63])
    e1, e2 = result(tmp_path / "e1.json", [70, 71]), result(tmp_path / "e2.json", [72, 73])
    m = result(tmp_path / "m.json", [64, 65, 66, 67])
    out = tmp_path / "img" / "curve.png"
    assert curve.main(["--control", control, "--point", f"ELECTRA=1e13:{e1},{e2}", "--point", f"MLM=1e13:{m}",
                       "--point", f"MLM=3e13:{m}", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {(r["curve"], r["flops"]): r for r in line["points"]}
    electra = rows[("ELECTRA", 1e13)]
    assert electra["seeds"] == 4 and electra["median"] == pytest.approx(71.5)  # two runs' seeds pooled
    assert electra["minus_control"] == pytest.approx(71.5 - 61.5)
    assert electra["p_vs_control"] == pytest.approx(seeds_p_value([70, 71, 72, 73], [60, 61, 62, 63]))
    assert electra["p_vs"] == {"MLM": pytest.approx(seeds_p_value([70, 71, 72, 73], [64, 65, 66, 67]))}
    assert rows[("MLM", 3e13)]["p_vs"] == {}  # no other curve at that budget
    assert out.is_file() and out.stat().st_size > 1000 and not list(out.parent.glob("*.tmp.png"))


@pytest.mark.parametrize("spec,message", [("ELECTRA:1e13", "expected CURVE=FLOPS"), ("ELECTRA=x:a.json", "expected"),
                                          ("ELECTRA=0:a.json", "FLOPs > 0")])
def test_a_bad_point_is_named(tmp_path, spec, message):
    control = result(tmp_path / "r.json", [60, 61])
    with pytest.raises(SystemExit, match=message):
        curve.main(["--control", control, "--point", spec, "--out", str(tmp_path / "c.png")])


def test_a_file_that_is_not_a_result_is_named(tmp_path):
    bad = tmp_path / "log.txt"
    bad.write_text("finetune: lr 0.001 seed 1 step 10\n")
    with pytest.raises(SystemExit, match="log.txt: not a `gpt-ds finetune` result"):
        curve.main(["--control", str(bad), "--point", f"E=1e13:{bad}", "--out", str(tmp_path / "c.png")])
