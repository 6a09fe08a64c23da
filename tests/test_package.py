"""The wheel as a cluster user installs it: built from this tree, put into a fresh virtual environment, and run from a
directory that has no source tree in it (presets, ds_configs and the C++ kernel source must come from the wheel).

The fresh environment borrows the test environment's third-party packages through a plain path line in a .pth file,
which adds that folder to sys.path without running its .pth files, so the editable install of gpt_ds stays invisible:
the only gpt_ds the new environment can import is the wheel's.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp / "dist")], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("gpt_ds-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    new_site = Path(subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                   capture_output=True, text=True).stdout.strip())
    (new_site / "borrowed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    return {"bin": env_dir / "bin", "py": py, "site": new_site, "work": work, "env": env, "wheel": wheel}


def _run(installed, *args, timeout=600):
    return subprocess.run([*map(str, args)], cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_carries_the_presets_and_kernel_source(installed):
    import zipfile
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert "gpt_ds/_data/configs/tiny.yaml" in names
    assert "gpt_ds/_data/ds_configs/zero3_fp32.json" in names
    assert "gpt_ds/kernels/cpu_ops.cpp" in names
    assert not any(n.startswith("tests/") for n in names)
    # only modules that exist in the tree (setuptools' build/lib would otherwise keep moved or deleted ones)
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gpt_ds").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == source


def test_installed_gpt_ds_is_the_wheels_and_finds_its_presets(installed):
    p = _run(installed, installed["py"], "-c",
             "import json, gpt_ds, gpt_ds.config as c; print(json.dumps([gpt_ds.__file__, str(c.DATA_ROOT)]))")
    assert p.returncode == 0, p.stderr
    module, data_root = json.loads(p.stdout)
    assert Path(module).is_relative_to(installed["site"]), module
    assert Path(data_root) == installed["site"] / "gpt_ds" / "_data"
    version = _run(installed, installed["bin"] / "gpt-ds", "--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout + version.stderr


def test_check_and_a_few_pretraining_steps_from_another_directory(installed):
    gpt_ds = installed["bin"] / "gpt-ds"
    common = ["tiny", "data.synthetic=true", "model.vocab_size=512", "model.kernels=torch", "train.global_batch=4",
              "data.seq_len=32"]
    check = _run(installed, gpt_ds, "check", *common)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok: no problems found" in check.stdout
    run = _run(installed, gpt_ds, "pretrain", *common, "train.max_steps=3", "run.dir=run", "checkpoint.every=3",
               "logging.every=1", "logging.tensorboard=false", "--nproc", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (installed["work"] / "run" / "metrics.jsonl").read_text().splitlines()
             if '"gen_loss"' in line]
    assert steps == [1, 2, 3]
    assert (installed["work"] / "run" / "checkpoints" / "step_0000003").is_dir()
