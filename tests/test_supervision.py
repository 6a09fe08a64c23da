"""The local launcher (`gpt-ds pretrain --nproc 2`) as an operator meets it: one job per run folder, ranks that do not
outlive a killed launcher, exit codes that follow the shell's 128+N, and Ctrl-C without tracebacks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from test_train import FAST, ROOT, gpt_ds, metrics

LONG = [*FAST, "train.max_steps=100000", "checkpoint.every=100000"]


def _start(run: Path, own_group: bool = False, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_PROCID"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "gpt_ds.cli", "pretrain", "tiny", *LONG, f"run.dir={run}", *extra,
                             "--nproc", "2"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=own_group)


def _wait_for_steps(run: Path, launcher: subprocess.Popen, n: int = 2, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        if (run / "metrics.jsonl").is_file() and len(metrics(run)) >= n:
            return
        time.sleep(0.5)
    raise AssertionError("no training steps logged")


def _ranks(launcher_pid: int) -> list[psutil.Process]:
    return psutil.Process(launcher_pid).children()


def test_a_second_job_on_the_same_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    first = _start(run)
    try:
        _wait_for_steps(run, first)
        p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={run}", "train.max_steps=4", "--nproc", "2", check=False,
                   timeout=120)
        assert p.returncode == 2 and "is in use by pid" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert first.poll() is None  # the first job was not disturbed
    finally:
        first.kill()
        first.communicate()


def test_killing_the_launcher_stops_its_ranks_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    launcher = _start(run)
    _wait_for_steps(run, launcher)
    ranks = _ranks(launcher.pid)
    assert len(ranks) == 2
    launcher.kill()  # SIGKILL: no forwarding, no cleanup; only the parent-death signal reaches the ranks
    _, err = launcher.communicate(timeout=180)  # returns once the ranks, which hold its pipes, have exited too
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, [p.pid for p in alive]
    assert "received SIGTERM" in err and "exiting with 75 for requeue" in err, err[-3000:]  # checkpoint, then 75
    assert list((run / "checkpoints").glob("step_*/manifest.json"))
    # and the lock went with the launcher: the run resumes
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={run}", "train.max_steps=1", "--nproc", "2", "--resume", "auto",
               check=False, timeout=180)
    assert p.returncode == 0 and "is in use" not in p.stderr, p.stderr[-2000:]


def test_a_rank_killed_by_a_signal_gives_128_plus_n_and_ctrl_c_no_traceback(tmp_path):
    run = tmp_path / "run"
    launcher = _start(run)
    _wait_for_steps(run, launcher)
    os.kill(_ranks(launcher.pid)[0].pid, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGKILL, (launcher.returncode, err[-2000:])

    run2 = tmp_path / "run2"
    launcher = _start(run2, own_group=True)
    _wait_for_steps(run2, launcher)
    os.killpg(launcher.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGINT, (launcher.returncode, err[-2000:])
    assert "Traceback" not in err and "interrupted (SIGINT); checkpoint at step" in err, err[-3000:]
    assert list((run2 / "checkpoints").glob("step_*/manifest.json"))


def test_a_stopped_rank_makes_the_other_say_so_then_give_up_and_the_launcher_ends_the_job(tmp_path):
    """SIGSTOP stands for a swapped-out process or a dead node: the other rank waits in a collective."""
    import re
    run = tmp_path / "run"
    launcher = _start(run, False, "train.watchdog_warn_s=3", "train.watchdog_timeout_s=15")
    try:
        _wait_for_steps(run, launcher)
        stopped = _ranks(launcher.pid)[1]
        stopped.suspend()
        t0 = time.time()
        _, err = launcher.communicate(timeout=120)
        took = time.time() - t0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 3, err[-3000:]
    waiting = r"rank [01]: step \d+ has taken [3-9] s so far; waiting for another rank in a collective\?"
    assert re.search(waiting, err), err[-3000:]
    assert re.search(r"rank [01]: step \d+ has not finished after 1[5-9] s .*giving up with exit code 3", err)
    assert "Traceback" not in err and took < 15 + 15 + 20, took  # timeout, then TERM, then KILL of the stopped rank
    assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE
