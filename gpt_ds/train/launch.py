"""`gpt-ds pretrain CONFIG [key=value ...]`: checks everything it can before any process group, then trains.

Under a launcher (srun, torchrun, deepspeed) each process is one rank. Started by hand, `--nproc N` spawns N local
ranks (CPU: gloo; GPU: one per device) and forwards preemption signals to them.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from gpt_ds import checkpoint
from gpt_ds.checkpoint.compat import check_resume_compatible
from gpt_ds.checkpoint.run_files import LOCK_HELD_ENV, run_lock
from gpt_ds.checkpoint.safe_load import verify_files
from gpt_ds.config import Config, ConfigError, load_config
from gpt_ds.errors import GptDsError
from gpt_ds.dist.env import cuda_device_for, deepspeed_arch_list, detect_env, export_env
from gpt_ds.dist.preempt import REQUEUE_EXIT_CODE
from gpt_ds.kernels.cpu_ext import clear_stale_build_locks
from gpt_ds.watchdog import HUNG_EXIT_CODE, peer_lost
from gpt_ds.zero.check import check_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (tiny, electra-small, ...) or a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.max_steps=100")
    p.add_argument("--resume", default=None, help="auto (newest complete checkpoint), none, or a step folder; "
                                                  "default: checkpoint.resume")
    p.add_argument("--nproc", type=int, default=1, help="local ranks to spawn when not started by a launcher")


def preflight(cfg: Config, world_size: int, resume: str, checksums: bool = True) -> None:
    """Every problem found before launch, listed at once. `checksums`: read every checkpoint file against its manifest
    (one process does; under srun each task runs this, and the others check sizes only)."""
    problems = check_run(cfg, world_size)  # batch arithmetic, both ds_configs, contradictions with this config
    if not cfg.data.synthetic:
        if not cfg.data.sources:
            problems.append("data.sources is empty: give text files/folders or stores "
                            "(data.sources='[path/to/corpus]'), or set data.synthetic=true")
        for s in cfg.data.sources:
            if not Path(s.path).exists():
                problems.append(f"data.sources: '{s.path}' does not exist")
    try:
        step_dir = checkpoint.find_resume(cfg.run_dir / "checkpoints", resume, checksums)
        if step_dir is not None and checksums:
            checkpoint.mark_verified(step_dir)  # the ranks (spawned from here, or this process) read sizes only
        if step_dir is not None:
            check_resume_compatible(checkpoint.read_state(step_dir), cfg, world_size, step_dir)
            verify_files(step_dir)
    except GptDsError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("cannot start:\n  - " + "\n  - ".join(p.replace("\n", "\n    ") for p in problems))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KILL_AFTER_S = 15  # after one rank failed and the others got TERM: then KILL


def spawn_local(argv: list[str], nproc: int) -> int:
    """Start nproc ranks of this same command; forward USR1/TERM/INT; stop the rest when one fails."""
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env[LOCK_HELD_ENV] = "1"  # the launcher holds the run folder's lock for its ranks
        procs.append(subprocess.Popen([sys.executable, "-m", "gpt_ds.cli", "pretrain", *argv], env=env,
                                      preexec_fn=functools.partial(_term_when_parent_dies, os.getpid())))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    try:
        codes: dict[int, int] = {}
        failed_at, cause = None, None
        while len(codes) < nproc:
            new_bad = []
            for i, p in enumerate(procs):
                if i not in codes and p.poll() is not None:
                    codes[i] = p.returncode
                    if p.returncode < 0 and failed_at is None:  # the cause, not a rank stopped after it
                        name = signal.Signals(-p.returncode).name if -p.returncode in signal.valid_signals() \
                            else f"signal {-p.returncode}"
                        print(f"gpt_ds: rank {i} was killed by {name} (exit {128 - p.returncode})"
                              + ("; stopping the other ranks" if len(codes) < nproc else ""), file=sys.stderr,
                              flush=True)
                    if p.returncode != 0 and not _is_requeue(p.returncode):
                        new_bad.append(p.returncode)
            if new_bad and failed_at is None:
                # the first failure is the cause; of two seen together, a rank killed by a signal is (a collective
                # with a dead peer fails on the survivors)
                failed_at, cause = time.monotonic(), min(new_bad, key=lambda c: c >= 0)
                for q in procs:  # the others would wait forever in a collective
                    if q.poll() is None:
                        q.terminate()
            if failed_at is not None and time.monotonic() - failed_at > KILL_AFTER_S:
                for q in procs:  # a stopped (SIGSTOP) or wedged rank never acts on TERM
                    if q.poll() is None:
                        q.kill()
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # a rank killed by signal N reports -N; the shell convention (and docs/slurm.md) is 128+N
    if cause is not None:
        return 128 - cause if cause < 0 else cause
    return max(128 - c if c < 0 else c for c in codes.values())


def _term_when_parent_dies(launcher_pid: int) -> None:
    """In each spawned rank, before exec: SIGTERM when the launcher dies (Linux's parent-death signal), so a killed
    launcher never leaves ranks training unsupervised; TERM makes them checkpoint at the next step and exit 75.
    Each rank also gets its own process group, so a terminal's Ctrl-C reaches the launcher alone, which forwards it
    exactly once (twice would mean "stop at once" to the ranks)."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the launcher's own signal forwarding still covers TERM/INT/USR1
    if os.getppid() != launcher_pid:  # it died before the signal was armed
        os._exit(128 + signal.SIGTERM)


def _is_requeue(code: int) -> bool:
    return code == REQUEUE_EXIT_CODE


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: the number of local ranks must be >= 1")
    cfg = load_config(args.config, args.overrides)
    resume = args.resume or cfg.checkpoint.resume
    env = detect_env()
    if env.launcher == "single" and args.nproc > 1:
        preflight(cfg, args.nproc, resume)
        argv = [args.config, *args.overrides, "--resume", resume]
        with run_lock(cfg.run_dir):
            return spawn_local(argv, args.nproc)
    preflight(cfg, env.world_size, resume, checksums=env.rank == 0)
    if env.rank == 0 and not os.environ.get(LOCK_HELD_ENV):
        with run_lock(cfg.run_dir):
            return _train_here(cfg, env, resume)
    return _train_here(cfg, env, resume)


def _train_here(cfg: Config, env, resume: str) -> int:
    if env.launcher == "single":  # nobody else joins: any free port, so two single runs never collide
        env = dataclasses.replace(env, master_addr="127.0.0.1", master_port=_free_port())
    export_env(env)
    return train_rank(cfg, env, resume)


def train_rank(cfg: Config, env, resume: str) -> int:
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    # DeepSpeed 0.19's collectives call torch 2.13 names that warn on every call: hundreds of lines per job log
    warnings.filterwarnings("ignore", message=".*(reduce_scatter_tensor|all_gather_into_tensor).*is deprecated")
    if env.local_rank == 0:  # DeepSpeed builds its ops (on the CPU: the shared-memory collective) on first use
        clear_stale_build_locks()
    import deepspeed  # deepspeed and the trainer load in a rank only: the --nproc launcher never pays for them
    deepspeed.utils.logger.setLevel(logging.WARNING)
    cpu = os.environ.get("DS_ACCELERATOR") == "cpu"
    if not cpu:
        torch.cuda.set_device(cuda_device_for(env.local_rank, torch.cuda.device_count(), env.local_world_size))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if arch and deepspeed_arch_list(arch) != arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = deepspeed_arch_list(arch)
            if env.rank == 0:
                print(f"gpt_ds: TORCH_CUDA_ARCH_LIST {arch!r} -> {os.environ['TORCH_CUDA_ARCH_LIST']!r} for DeepSpeed's "
                      "op builder (it cannot read arch suffixes)", file=sys.stderr, flush=True)
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False)
    if cpu:
        # Without LOCAL_SIZE DeepSpeed's CPU accelerator answers device_count() by running `numactl` in a subprocess,
        # and ZeRO-3 asks on every gradient bucket (7% of a 2-rank step, docs/benchmarks.md). Set only now: at
        # init_distributed, LOCAL_SIZE equal to the world size makes DeepSpeed open a shared-memory all-reduce (for
        # inference; training never uses it) whose 69 MB files per rank it never removes from /dev/shm.
        os.environ.setdefault("LOCAL_SIZE", str(env.local_world_size))
    from gpt_ds.train.trainer import Trainer
    try:
        trainer = Trainer(cfg, rank=env.rank, world_size=env.world_size, resume=resume)
        code = trainer.train()
    except GptDsError as e:
        if env.world_size == 1:
            raise  # the CLI prints it
        # one rank of several: say it (unless rank 0 says it for the job) and leave at once, as below (exit 2, not
        # the 134 of an abort in the interpreter's shutdown); nothing is left to write (checkpoints are renamed whole)
        if not e.quiet:
            print(f"gpt-ds pretrain: error: {e}", file=sys.stderr, flush=True)
        _leave(2)
    except RuntimeError as e:
        if env.world_size == 1 or not peer_lost(e):
            raise
        # another rank died (killed, OOM, a lost node): its launcher or srun names it; a traceback from inside the
        # collective would only bury that. Leave as the watchdog does for a silent peer.
        why = str(e).splitlines()[0].split("] ")[-1].split(". ")[0][:120]  # gloo: "[file:line] What. Advice..."
        print(f"gpt_ds: rank {env.rank}: another rank is gone (a collective failed: {why}); stopping with exit code "
              f"{HUNG_EXIT_CODE}. --resume auto continues from the last checkpoint", file=sys.stderr, flush=True)
        _leave(HUNG_EXIT_CODE)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if env.world_size > 1:
        # the run is over and written (the trainer closed its files; checkpoints are renamed whole). The interpreter's
        # own exit can still abort in a leftover communication or offload thread's destructor ("terminate called
        # without an active exception": exit 134 after a 2-rank bf16 offload job had finished, seen once in CI),
        # which a SLURM user would read as a crash and requeue. Leave with the run's own code instead.
        _leave(code)
    return code


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
