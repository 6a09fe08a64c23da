"""The C++ CPU kernels are built once per CPU capability (a cluster's nodes can differ, and one home directory serves
them all): the AVX2 and the portable builds must hold to the same twins and float64 references as this machine's."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# This machine's capability is what the rest of the suite runs; these are the others it can execute.
OTHERS = {"AVX512": ["avx2", "default"], "AVX2": ["default"]}.get(torch.backends.cpu.get_cpu_capability(), [])

RUN = """
import sys, pytest
from gpt_ds.kernels import cpu_ext
m = cpu_ext.ops()
assert m is not None and m.__name__ == "gpt_ds_cpu_ops_" + sys.argv[1], m
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_kernels_encoder.py",
                      "tests/test_kernels_generator.py"]))
"""


@pytest.mark.parametrize("cap", ["avx2", "default"])
def test_other_cpu_capability_builds_pass_the_kernel_tests(cap):
    """torch's ATEN_CPU_CAPABILITY selects the variant (ATen's vector types and gpt_ds's build together); the encoder
    and generator kernel tests then run against it in a fresh process. (The AVX2 build once fused dropout's
    `x * scale + residual` into an FMA, one ulp off its twin: the build now turns contraction off.)"""
    if cap not in OTHERS:
        pytest.skip(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) cannot run the {cap} build")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", RUN, cap], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]  # pytest exits non-zero on a failure or no tests


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    import time
    from gpt_ds.kernels.cpu_ext import STALE_LOCK_S, clear_stale_build_locks
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "gpt_ds_cpu_ops_avx2" / "lock"
    for lock in (old, live):
        lock.parent.mkdir()
        lock.write_text("")
    os.utime(old, (time.time() - STALE_LOCK_S - 60,) * 2)
    assert clear_stale_build_locks() == [str(old)]
    assert not old.exists() and live.exists()


def test_a_wait_on_another_builds_lock_is_reported_then_given_up(tmp_path):
    """torch waits on a build lock without a word or a limit; the watchdog names the lock, then stops the process."""
    name = f"gpt_ds_cpu_ops_{torch.backends.cpu.get_cpu_capability().lower()}"
    lock = tmp_path / name / "lock"
    lock.parent.mkdir()
    lock.write_text("")  # fresh: a live build elsewhere, as far as anyone can tell
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), GPT_DS_BUILD_WARN_S="1", GPT_DS_BUILD_TIMEOUT_S="4")
    p = subprocess.run([sys.executable, "-c", "from gpt_ds.kernels import cpu_ext; cpu_ext.ops()"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert f"({name}) has taken 1 s so far; a first build takes a minute or two; much longer means another " \
        f"process holds {lock}" in p.stderr, p.stderr[-2000:]
    assert f"has not finished after 4 s (limit 4 s" in p.stderr and "giving up with exit code 3" in p.stderr
    assert "Traceback" not in p.stderr


def test_the_watchdog_is_quiet_while_things_move():
    import io
    import time
    from contextlib import redirect_stderr
    from gpt_ds.watchdog import Watchdog
    err = io.StringIO()
    with redirect_stderr(err), Watchdog(0, warn_s=0.5, timeout_s=60, poll_s=0.05) as wd:
        for i in range(10):  # each phase shorter than the warning
            wd.enter(f"step {i}")
            time.sleep(0.1)
        wd.enter("the slow one")
        time.sleep(0.8)
    assert err.getvalue().count("gpt_ds: rank 0: the slow one has taken") == 1 and "step" not in err.getvalue()
