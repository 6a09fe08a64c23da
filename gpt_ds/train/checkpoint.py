"""Step folders holding both engines' DeepSpeed checkpoints + trainer state, written aside and renamed.

Layout: checkpoints/step_0000100/{generator,discriminator}/ (DeepSpeed), rng/rank_00000.pt (per-rank RNG),
trainer_state.json (step, consumed samples, resolved config, fingerprints). `latest` names the newest complete folder
and is replaced last, so a crash at any point leaves the previous checkpoint usable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_ds.errors import GptDsError

STATE_FILE = "trainer_state.json"
STEP_RE = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def complete_steps(ckpt_dir: Path) -> list[tuple[int, Path]]:
    out = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def find_resume(ckpt_dir: Path, resume: str) -> Path | None:
    """'auto': the folder `latest` names if complete, else the newest complete one; 'none'; or an explicit folder."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / STATE_FILE).is_file():
            raise GptDsError(f"--resume {resume}: not a complete gpt_ds checkpoint (no {STATE_FILE}); pass a "
                             f"checkpoints/step_XXXXXXX folder, 'auto' or 'none'")
        return p
    latest = ckpt_dir / "latest"
    if latest.is_file():
        p = ckpt_dir / latest.read_text().strip()
        if (p / STATE_FILE).is_file():
            return p
    steps = complete_steps(ckpt_dir)
    if steps:
        return steps[-1][1]
    started = sorted(p.name for p in ckpt_dir.iterdir() if STEP_RE.match(p.name)) if ckpt_dir.is_dir() else []
    if started:  # starting at step 0 here would overwrite them and repeat every step in metrics.jsonl
        raise GptDsError(f"{ckpt_dir}: {len(started)} step folder(s) ({', '.join(started[-3:])}) but none is complete "
                         f"(no {STATE_FILE}); refusing to start over on top of them. Restore the file, resume from a "
                         f"folder you trust (--resume PATH), or start afresh with --resume none or another run.dir")
    return None


def read_state(step_dir: Path) -> dict:
    try:
        return json.loads((step_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GptDsError(f"checkpoint {step_dir}: cannot read {STATE_FILE} ({e}); resume from another step "
                         f"(--resume PATH) or delete this folder") from None


def save(ckpt_dir: Path, step: int, engines, state: dict, rank: int, keep_last: int) -> Path:
    """Every rank must call this (DeepSpeed gathers partitions collectively)."""
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / (step_dir_name(step) + ".tmp")
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _barrier()
    engines.generator.save_checkpoint(str(tmp), tag="generator", save_latest=False)
    if engines.discriminator is not None:
        engines.discriminator.save_checkpoint(str(tmp), tag="discriminator", save_latest=False)
    rng_dir = tmp / "rng"
    rng_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"torch": torch.get_rng_state()}, rng_dir / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        if final.exists():  # a re-save of the same step (e.g. preemption right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(ckpt_dir / "latest", final.name + "\n")
        for _, old in complete_steps(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(step_dir: Path, engines, rank: int, world_size: int) -> dict:
    """Loads both engines (with optimizer and scheduler state); returns the trainer state, with this rank's saved
    RNG state under "rng_state" (None when the world size changed) for the caller to set right before the loop.
    Saved on another number of ranks, a ZeRO engine loads from a universal copy rank 0 makes once (gpt_ds.zero.reshard).
    """
    from gpt_ds.zero import reshard
    state = read_state(step_dir)
    named = {"generator": engines.generator, "discriminator": engines.discriminator}
    for name, how in reshard.prepare(step_dir, named, world_size, rank).items():
        reshard.load_engine(named[name], step_dir, name, how)
    rng_file = step_dir / "rng" / f"rank_{rank:05d}.pt"
    state["rng_state"] = None
    if state.get("world_size") == world_size and rng_file.is_file():
        state["rng_state"] = torch.load(rng_file, weights_only=True)["torch"]
    return state
