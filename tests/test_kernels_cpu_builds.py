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
