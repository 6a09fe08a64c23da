"""Step folders holding both engines' DeepSpeed checkpoints + trainer state, written aside and renamed.

Layout: checkpoints/step_0000100/{generator,discriminator}/ (DeepSpeed), rng/rank_00000.pt (per-rank RNG),
trainer_state.json (step, consumed samples, resolved config, fingerprints), and manifest.json, written last before
the rename: every file's size and SHA-256, the world size and each engine's ZeRO stage. A resume verifies the
manifest and falls back to the newest step that verifies, saying what was wrong with the ones it skipped. `latest`
names the newest saved folder for other tools; gpt_ds reads it nowhere (the manifests decide).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_ds import faults
from gpt_ds.checkpoint import reshard  # a submodule that needs nothing from this file
from gpt_ds.errors import GptDsError
from gpt_ds.watchdog import peer_lost

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "gpt_ds.checkpoint/1"
STEP_RE = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def complete_steps(ckpt_dir: Path) -> list[tuple[int, Path]]:
    out = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(step_dir: Path, state: dict, zero_stages: dict[str, int]) -> None:
    """Rank 0, after every rank's files are written and before the rename: the folder's inventory."""
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_FILE:
            files[path.relative_to(step_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": state["step"], "world_size": state["world_size"],
                "zero_stages": zero_stages, "files": files}
    write_atomic(step_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))


def verify(step_dir: Path, checksums: bool = True) -> list[str]:
    """What is wrong with a step folder against its manifest ([] when nothing); one line per problem, naming the file.
    A folder without a manifest (saved by gpt_ds before manifests) passes if its trainer state is there."""
    if not (step_dir / STATE_FILE).is_file():
        return [f"{STATE_FILE} missing (the save did not finish)"]
    path = step_dir / MANIFEST_FILE
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        assert manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except (OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as e:
        return [f"{MANIFEST_FILE} unreadable ({type(e).__name__})"]
    problems = []
    for rel, want in files.items():
        f = step_dir / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
        elif f.stat().st_size != want["bytes"]:
            problems.append(f"{rel}: {f.stat().st_size} bytes, the manifest says {want['bytes']}")
        elif checksums and _sha256(f) != want["sha256"]:
            problems.append(f"{rel}: checksum differs from the manifest (the file changed after the save)")
    return problems


# One launch reads every checkpoint byte once: the check before launch records the step folder it verified (with the
# size and mtime of every file in it) here, in the environment the ranks inherit, and the ranks' own checks then
# compare sizes only, for that folder while nothing in it has changed since.
VERIFIED_ENV = "GPT_DS_VERIFIED_CHECKPOINT"


def _stat_print(step_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(step_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(step_dir).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def mark_verified(step_dir: Path) -> None:
    os.environ[VERIFIED_ENV] = json.dumps({"step": str(step_dir.resolve()), "files": _stat_print(step_dir)})


def _verified_earlier(step_dir: Path) -> bool:
    try:
        mark = json.loads(os.environ.get(VERIFIED_ENV) or "{}")
        return mark.get("step") == str(step_dir.resolve()) and mark.get("files") == _stat_print(step_dir)
    except (ValueError, AttributeError, OSError):
        return False


def _say(msg: str) -> None:
    print(f"gpt_ds: {msg}", file=sys.stderr, flush=True)


def find_resume(ckpt_dir: Path, resume: str, checksums: bool = True) -> Path | None:
    """'auto': the newest step folder that verifies against its manifest, falling back past broken ones (each named,
    with what is wrong); 'none'; or an explicit folder, which must verify. Never None over existing step folders:
    starting at step 0 there would overwrite them and repeat steps in metrics.jsonl."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / STATE_FILE).is_file():
            raise GptDsError(f"--resume {resume}: not a complete gpt_ds checkpoint (no {STATE_FILE}); pass a "
                             f"checkpoints/step_XXXXXXX folder, 'auto' or 'none'")
        problems = verify(p, checksums and not _verified_earlier(p))
        if problems:
            raise GptDsError(f"--resume {resume}: the checkpoint does not match its manifest: " + "; ".join(problems[:5])
                             + ". Resume from another step, or --resume auto to take the newest one that verifies")
        return p
    started = sorted(((int(m.group(1)), p) for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else [])
                      if (m := STEP_RE.match(p.name)) and p.is_dir()), reverse=True)
    skipped = []
    for step, p in started:
        problems = verify(p, checksums and not _verified_earlier(p))
        if not problems:
            for name, why in skipped:
                _say(f"checkpoint {name} skipped: {why}")
            if skipped:
                _say(f"resuming from {p.name}, the newest step folder that verifies")
            return p
        skipped.append((p.name, "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")))
    if skipped:
        raise GptDsError(f"{ckpt_dir}: {len(skipped)} step folder(s), none usable, refusing to start over on top of "
                         "them:\n" + "\n".join(f"{n}: {why}" for n, why in skipped[:5]) + "\nRestore the files, resume "
                         "from a folder you trust (--resume PATH), or start afresh with --resume none or another "
                         "run.dir")
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
    try:
        engines.generator.save_checkpoint(str(tmp), tag="generator", save_latest=False)
        if engines.discriminator is not None:
            engines.discriminator.save_checkpoint(str(tmp), tag="discriminator", save_latest=False)
        rng_dir = tmp / "rng"
        rng_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"torch": torch.get_rng_state()}, rng_dir / f"rank_{rank:05d}.pt")
        faults.point("save.engines_written", step, rank)
        _barrier()
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError from its C++ writer
        raise _save_failed(ckpt_dir, tmp, final, rank, e) from None
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        stages = {name: int(e.zero_optimization_stage()) for name, e in
                  (("generator", engines.generator), ("discriminator", engines.discriminator)) if e is not None}
        write_manifest(tmp, state, stages)
        faults.point("save.manifest_written", step, rank)
        if final.exists():  # a re-save of the same step (e.g. preemption right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        faults.point("save.renamed", step, rank)
        write_atomic(ckpt_dir / "latest", final.name + "\n")
        for _, old in complete_steps(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        faults.point("save.pruned", step, rank)
    try:
        _barrier()
    except RuntimeError as e:
        raise _save_failed(ckpt_dir, None, final, rank, e) from None
    return final


def _save_failed(ckpt_dir: Path, tmp: Path | None, final: Path, rank: int, e: Exception) -> GptDsError:
    """A save that cannot finish: remove the partial folder (it would fill the disk again) and say why, where, and
    what is still there to resume from."""
    if peer_lost(e):  # the dead rank's own exit code tells the story; this one must not blame the disk
        if tmp is not None:  # whichever rank is last to fail removes what the others left (rmtree is idempotent)
            shutil.rmtree(tmp, ignore_errors=True)
        return GptDsError(f"rank {rank}: saving checkpoint {final.name} stopped: another rank failed during the save "
                          f"(its launcher or srun names it); --resume auto takes the newest step that verifies",
                          quiet=rank != 0)
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        free = None
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space" in str(e) or "write failed" in str(e) or \
        (free is not None and free < (64 << 20))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    previous = complete_steps(ckpt_dir)
    why = (f"no space left on the device ({free / (1 << 20):.0f} MiB free)" if full and free is not None else
           "no space left on the device" if full else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return GptDsError(f"rank {rank}: saving checkpoint {final} failed: {why}. "
                      + (f"The partial {tmp.name} was removed; " if tmp is not None else "")
                      + (f"the previous checkpoint {previous[-1][1].name} is intact (--resume auto takes it). "
                         if previous else "no earlier checkpoint exists. ")
                      + "Free space or point run.dir at a writable file system, then resume.")


def load(step_dir: Path, engines, rank: int, world_size: int) -> dict:
    """Loads both engines (with optimizer and scheduler state); returns the trainer state, with this rank's saved
    RNG state under "rng_state" (None when the world size changed) for the caller to set right before the loop.
    Saved on another number of ranks, a ZeRO engine loads from a universal copy rank 0 makes once (gpt_ds.checkpoint.reshard).
    """
    state = read_state(step_dir)
    named = {"generator": engines.generator, "discriminator": engines.discriminator}
    for name, how in reshard.prepare(step_dir, named, world_size, rank).items():
        reshard.load_engine(named[name], step_dir, name, how)
    rng_file = step_dir / "rng" / f"rank_{rank:05d}.pt"
    state["rng_state"] = None
    if state.get("world_size") == world_size and rng_file.is_file():
        state["rng_state"] = torch.load(rng_file, weights_only=True)["torch"]
    return state
