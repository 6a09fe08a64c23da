"""What a run folder keeps besides checkpoints, so that it can be exported or resumed anywhere (another directory,
another machine): a copy of the tokenizer, the resolved config (config.yaml, written by the trainer) and the exact
ds_config each DeepSpeed engine received.

Training may start from a relative `data.tokenizer` in some working directory; the checkpoint records that path, which
means nothing once the run folder is copied elsewhere. The copy here is what `gpt-ds export` reads first.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from gpt_ds.checkpoint import write_atomic
from gpt_ds.errors import GptDsError

TOKENIZER = "tokenizer"


def ds_config_file(engine: str) -> str:
    return f"ds_config.{engine}.json"


def snapshot(run_dir: Path, tokenizer_dir: str | None, ds_configs: dict[str, dict]) -> None:
    """Rank 0, at start: copy the tokenizer and the engines' ds_configs in, each written aside and then renamed."""
    for engine, ds in ds_configs.items():
        write_atomic(run_dir / ds_config_file(engine), json.dumps(ds, indent=1, sort_keys=True, default=str) + "\n")
    if not tokenizer_dir:
        return  # synthetic data: no tokenizer to keep
    source, dest = Path(tokenizer_dir).resolve(), run_dir / TOKENIZER
    if source == dest.resolve():
        return  # trained with the run's own copy
    tmp, old = dest.with_name(TOKENIZER + ".tmp"), dest.with_name(TOKENIZER + ".old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(source, tmp)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def find_tokenizer(step_dir: Path, recorded: str | None) -> Path | None:
    """The run's own copy (step_dir is RUN/checkpoints/step_X), else the path the checkpoint recorded, if it exists."""
    own = step_dir.parent.parent / TOKENIZER
    if (own / "tokenizer_config.json").is_file():
        return own
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return None


LOCK_FILE = ".gpt_ds.lock"
LOCK_HELD_ENV = "GPT_DS_RUN_LOCK_HELD"  # set by the local launcher for the ranks it starts (it holds the lock for them)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """One job per run folder: an exclusive flock on RUN_DIR/.gpt_ds.lock for the run's lifetime, taken by the
    launcher (or global rank 0 under srun). The kernel drops it when the process dies, so there is no stale lock to
    clean up; the file says who holds it, for the message the second job prints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise GptDsError(f"{run_dir} is in use by {holder}: two jobs writing one run folder would overwrite each "
                         f"other's checkpoints. Wait for it, stop it, or give this job another run.dir") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield path
    finally:
        f.close()
