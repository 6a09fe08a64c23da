"""slurm/*.sh without a cluster: syntax, shellcheck (bench/*.sh too), the header every user relies on, loud failures,
and the signal-forward/requeue logic of pretrain.sh driven through stand-in `srun`/`scontrol` commands on PATH.
The same scripts run on a real two-node cluster in tests/test_slurm_cluster.py."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt_ds.dist.env import slurm_port
from gpt_ds.dist.preempt import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = (sorted((ROOT / "slurm").glob("*.sh")) + sorted((ROOT / "tests" / "slurm").glob("*.sh"))
           + sorted((ROOT / "bench").glob("*.sh")))
PRETRAIN = ROOT / "slurm" / "pretrain.sh"


def skip_or_fail(reason: str):
    """Skip where the tool is missing; in CI (CI=true) a missing tool is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def test_the_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"pretrain.sh", "prepare.sh", "export.sh", "finetune.sh", "local_cluster.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        skip_or_fail("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "--severity=info", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def sbatch_options(script: Path) -> dict[str, str]:
    opts = {}
    for line in script.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)  # '##SBATCH' lines are commented-out defaults
        if m:
            opts[m.group(1)] = m.group(2) or ""
    return opts


def test_pretrain_header_signals_requeues_and_keeps_one_log():
    opts = sbatch_options(PRETRAIN)
    assert re.fullmatch(r"B:USR1@\d+", opts["signal"])
    assert "requeue" in opts and opts["open-mode"] == "append" and "%j" in opts["output"]
    assert opts["ntasks-per-node"] == opts["gpus-per-node"]  # one task per GPU
    for script in sorted((ROOT / "slurm").glob("*.sh")):
        assert "%j" in sbatch_options(script)["output"], script


def test_pretrain_agrees_with_python_on_exit_code_and_port():
    text = PRETRAIN.read_text()
    assert f"REQUEUE_EXIT_CODE={REQUEUE_EXIT_CODE}" in text
    base, span = re.search(r"MASTER_PORT=\$\(\((\d+) \+ SLURM_JOB_ID % (\d+)\)\)", text).groups()
    for job in (1, 4242, 987654):
        assert int(base) + job % int(span) == slurm_port(job)


@pytest.fixture
def fake_slurm(tmp_path):
    """`srun` that runs its command here (one task), `scontrol` that resolves the node list to a name we choose and
    records requeues."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\nif [[ $1 == show ]]; then echo "$FAKE_MASTER"; else echo "$*" >>"$FAKE_LOG"; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "WORLD_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_MASTER="localhost", FAKE_LOG=str(tmp_path / "scontrol.log"),
               SLURM_JOB_ID="77", SLURM_JOB_NODELIST="node[1-2]", SLURM_SUBMIT_DIR=str(tmp_path),
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_STEP_NUM_TASKS="1",
               PYTHONPATH=str(ROOT))
    return env, tmp_path


PAYLOAD = """
import sys, time, pathlib
from gpt_ds.dist import PreemptionHandler, REQUEUE_EXIT_CODE
mode = sys.argv[sys.argv.index("pretrain") + 2]
h = PreemptionHandler(); h.install()
pathlib.Path("started").write_text(" ".join(sys.argv[1:]))
if mode.startswith("exit="):
    sys.exit(int(mode[5:]))
deadline = time.time() + 30
while time.time() < deadline and not h.should_stop():
    time.sleep(0.05)
pathlib.Path("stopped").write_text(h.signal_name or "timeout")
sys.exit(REQUEUE_EXIT_CODE if h.should_stop() else 9)
"""


def run_pretrain(env, tmp_path, mode, signal_to_send=None, **extra):
    (tmp_path / "payload.py").write_text(PAYLOAD)
    env = dict(env, GPT_DS=f"{sys.executable} payload.py", **extra)
    p = subprocess.Popen(["bash", str(PRETRAIN), "tiny", mode], env=env, cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if signal_to_send is not None:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal_to_send)
    out, _ = p.communicate(timeout=60)
    log = tmp_path / "scontrol.log"
    return p.returncode, out, log.read_text() if log.exists() else ""


def test_pretrain_passes_the_config_overrides_and_resume_auto(fake_slurm):
    env, tmp = fake_slurm
    code, out, requeues = run_pretrain(env, tmp, "exit=0")
    assert code == 0, out
    assert (tmp / "started").read_text() == "pretrain tiny exit=0 --resume auto"
    assert requeues == ""
    assert "gpt_ds task: rank 0/1" in out and "master localhost:15077" in out


def test_exit_75_requeues_the_job_and_other_codes_pass_through(fake_slurm):
    env, tmp = fake_slurm
    code, out, requeues = run_pretrain(env, tmp, f"exit={REQUEUE_EXIT_CODE}")
    assert (code, requeues) == (0, "requeue 77\n"), out
    (tmp / "scontrol.log").unlink()
    code, out, requeues = run_pretrain(env, tmp, "exit=3")
    assert (code, requeues) == (3, ""), out
    code, out, requeues = run_pretrain(env, tmp, f"exit={REQUEUE_EXIT_CODE}", SLURM_RESTART_COUNT="2",
                                       GPT_DS_MAX_REQUEUES="2")
    assert code == 1 and requeues == "" and "after 2 requeues" in out


@pytest.mark.parametrize("sig, code_and_requeues", [
    (signal.SIGUSR1, (0, "requeue 77\n")),  # the time-limit warning: checkpoint, then requeue
    (signal.SIGTERM, (REQUEUE_EXIT_CODE, "")),  # scancel / time limit / preemption: checkpoint, but no requeue
], ids=["USR1", "TERM"])
def test_a_signal_to_the_batch_shell_reaches_the_trainer_which_checkpoints(fake_slurm, sig, code_and_requeues):
    env, tmp = fake_slurm
    code, out, requeues = run_pretrain(env, tmp, "wait", signal_to_send=sig)
    assert (tmp / "stopped").read_text() == sig.name, out
    assert f"received {sig.name}" in out
    assert (code, requeues) == code_and_requeues, out
    if sig == signal.SIGTERM:
        assert "not requeueing" in out


def test_a_master_addr_that_does_not_resolve_fails_loudly(fake_slurm):
    env, tmp = fake_slurm
    env["FAKE_MASTER"] = "nohost.invalid"
    code, out, requeues = run_pretrain(env, tmp, "exit=0")
    assert code == 1 and not (tmp / "started").exists()
    assert "MASTER_ADDR=nohost.invalid" in out and "does not resolve" in out


@pytest.mark.parametrize("script, args, words", [
    ("pretrain.sh", ["tiny"], "not inside a SLURM job"),
    ("pretrain.sh", [], "usage: sbatch slurm/pretrain.sh CONFIG"),
    ("export.sh", ["runs/x"], "usage: sbatch slurm/export.sh RUN_DIR OUT_DIR"),
    ("export.sh", ["runs/x", "out"], "not inside a SLURM job"),
    ("prepare.sh", [], "not inside a SLURM job"),
    ("finetune.sh", ["model"], "usage: sbatch slurm/finetune.sh MODEL_DIR"),
    ("finetune.sh", ["model", "--train"], "not inside a SLURM job"),
])
def test_scripts_refuse_to_run_outside_slurm_or_without_arguments(script, args, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(ROOT / "slurm" / script), *args], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and words in r.stderr, r.stderr


def test_finetune_runs_accelerate_once_per_node_with_the_right_ranks(fake_slurm):
    """Two nodes x 4 GPUs: each node's task calls `accelerate launch` with 8 processes, its own machine rank, the
    first node as master, and passes every finetune option through."""
    env, tmp_path = fake_slurm
    fake = tmp_path / "accelerate"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > args.txt\n')
    fake.chmod(0o755)
    (tmp_path / "model").mkdir()
    env = dict(env, GPT_DS_ACCELERATE=f"{fake} launch", SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="4",
               SLURM_NODEID="1", FAKE_MASTER="node1")
    r = subprocess.run(["bash", str(ROOT / "slurm" / "finetune.sh"), "model", "--train", "t.jsonl", "--seeds", "5"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")[:-1]
    assert args[:3] == ["launch", "--machine_rank", "1"]
    opts = dict(zip(args[1::1], args[2::1]))
    assert "--multi_gpu" in args and opts["--num_processes"] == "8" and opts["--num_machines"] == "2"
    assert opts["--main_process_ip"] == "node1" and opts["--main_process_port"] == str(35000 + 77 % 20000)
    assert args[args.index("-m"):] == ["-m", "gpt_ds.cli", "finetune", "model", "--train", "t.jsonl", "--seeds", "5"]
