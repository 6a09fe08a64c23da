"""Resume a ZeRO checkpoint on another number of ranks: DeepSpeed's universal checkpoint, converted for the user.

DeepSpeed slices the optimizer state (ZeRO 1-2) and the parameters (ZeRO 3) over the ranks that saved them, and its
ordinary load refuses another data-parallel size. Its universal format stores every parameter's fp32 master and Adam
moments whole (`zero/<param name>/{fp32,exp_avg,exp_avg_sq}.pt`), which any number of ranks can slice again. This module
decides per engine what a resume needs (`plan`), converts a step folder once (`ensure_universal`, run on rank 0 only,
after the process group exists so the other ranks wait at a barrier and hear about a failure) and loads either way
(`load_engine`).

The cache is `step_XXXXXXX/universal/<engine>/`, written in `universal.tmp<pid>/` and renamed when every engine is
converted: a crash leaves no folder that looks finished. It depends only on the checkpoint, not on the new world size,
so one conversion serves every later size. ZeRO-0 needs none: DeepSpeed saves the module and the optimizer whole in
`mp_rank_00_model_states.pt` and every rank reads that same file whatever their number.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_ds.checkpoint.safe_load import weights_only_loads
from gpt_ds.checkpoint import safe_load
from gpt_ds.dist.agree import rank0_decides
from gpt_ds.ds_config import merged_ds_config, zero_stage
from gpt_ds.errors import GptDsError

UNIVERSAL_DIR = "universal"
MANIFEST = "universal.json"
_OPTIM_RE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


@dataclass(frozen=True)
class Saved:
    """What DeepSpeed wrote for one engine, read from its file names (no unpickling)."""
    stage: int  # 0, 2 (stage 1 or 2: the same files) or 3
    ranks: int  # data-parallel ranks that saved it (1 for ZeRO-0: one unpartitioned file)


def saved_layout(tag_dir: Path) -> Saved:
    if not tag_dir.is_dir():
        raise GptDsError(f"checkpoint {tag_dir.parent}: no '{tag_dir.name}' folder; the checkpoint is incomplete, "
                         f"resume from another step (--resume PATH)")
    names = [p.name for p in tag_dir.iterdir()]
    ranks = {int(m.group(1)) for m in map(_OPTIM_RE.match, names) if m}
    if not ranks:
        if "mp_rank_00_model_states.pt" in names:
            return Saved(0, 1)
        raise GptDsError(f"checkpoint {tag_dir}: neither ZeRO optimizer shards nor mp_rank_00_model_states.pt; not a "
                         f"DeepSpeed checkpoint, resume from another step (--resume PATH)")
    if ranks != set(range(len(ranks))):
        raise GptDsError(f"checkpoint {tag_dir}: ZeRO shards of ranks {sorted(ranks)} only; a rank's file is missing, "
                         f"resume from another step (--resume PATH)")
    stage = 3 if any(n.startswith("zero_pp_rank_") and n.endswith("_model_states.pt") for n in names) else 2
    return Saved(stage, len(ranks))


def _stage_name(stage: int) -> str:
    return {0: "ZeRO-0", 2: "ZeRO-1/2", 3: "ZeRO-3"}.get(stage, f"ZeRO-{stage}")


def plan(step_dir: Path, engine: str, stage_now: int, world_size: int, saved_ds_config: str = "") -> str:
    """'native' (DeepSpeed's own load) or 'universal' (convert, then load); a GptDsError where neither can work."""
    saved = saved_layout(step_dir / engine)
    family_now = 2 if stage_now == 1 else stage_now
    if saved.stage != family_now:
        was = f" (deepspeed.{engine}={saved_ds_config})" if saved_ds_config else ""
        raise GptDsError(f"checkpoint {step_dir}: the {engine} was saved under {_stage_name(saved.stage)}{was}, this "
                         f"run uses ZeRO stage {stage_now}; switching between ZeRO-0, ZeRO-1/2 and ZeRO-3 on resume is "
                         f"not supported: resume with the checkpoint's ds_config{was and ' ' + was.strip(' ()')} (any "
                         f"number of ranks works) or start a new run (run.name=... or checkpoint.resume=none)")
    if saved.stage == 0 or saved.ranks == world_size:
        return "native"
    return "universal"


def check_resumable(step_dir: Path, saved_state: dict, cfg, world_size: int) -> dict[str, str]:
    """Before launch: every engine's plan, from the run's ds_configs (their 'zero_optimization.stage')."""
    engines = ("generator", "discriminator") if cfg.objective.kind == "electra" else ("generator",)
    old = saved_state.get("config", {}).get("deepspeed", {})
    return {e: plan(step_dir, e, zero_stage(merged_ds_config(cfg, e)[1]), world_size, str(old.get(e, "")))
            for e in engines}


def _convert_one(src: Path, out: Path) -> str:
    """DeepSpeed's converter in this process (one worker: no fork inside a training process); returns its log.

    The converter builds regular expressions and glob patterns from its folder paths, so a run folder named e.g.
    'lr3e-4+warm' breaks it; it is handed symlinks with plain names instead (its output still lands in `out`)."""
    from deepspeed.checkpoint import ds_to_universal
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="gpt_ds_universal_") as links:
        (Path(links) / "in").symlink_to(src.resolve(), target_is_directory=True)
        (Path(links) / "out").symlink_to(out.parent.resolve(), target_is_directory=True)
        args = argparse.Namespace(input_folder=f"{links}/in", output_folder=f"{links}/out/{out.name}",
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), weights_only_loads():
            ds_to_universal.main(args)
    return log.getvalue()


def ensure_universal(step_dir: Path) -> Path:
    """Convert every ZeRO engine of `step_dir` once (rank 0 only); returns the cache folder."""
    final = step_dir / UNIVERSAL_DIR
    if (final / MANIFEST).is_file():
        return final
    engines = [e for e in ("generator", "discriminator")
               if (step_dir / e).is_dir() and saved_layout(step_dir / e).stage > 0]
    tmp = step_dir / f"{UNIVERSAL_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as e:
        raise GptDsError(f"checkpoint {step_dir}: cannot write the universal copy there ({e}); resuming on another "
                         f"number of ranks needs it once: make the folder writable or copy the checkpoint") from None
    manifest = {"engines": {}, "source": str(step_dir)}
    try:
        for engine in engines:
            saved = saved_layout(step_dir / engine)
            try:
                log = _convert_one(step_dir / engine, tmp / engine)
            except Exception as e:  # DeepSpeed asserts; the message is all the user can act on
                raise GptDsError(f"checkpoint {step_dir}: DeepSpeed's universal conversion of the {engine} failed "
                                 f"({type(e).__name__}: {e}); resume on the {saved.ranks} ranks it was saved on") from e
            (tmp / engine / "convert.log").write_text(log)
            manifest["engines"][engine] = {"zero_stage": _stage_name(saved.stage), "saved_ranks": saved.ranks}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        try:
            os.replace(tmp, final)
        except OSError:  # another job resuming from this step renamed its copy first: only complete copies get there
            if not (final / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _universal_load(engine):
    """The engines are built before the checkpoint is found, so the ds_config's checkpoint.load_universal is set on
    the built engine's config for this one load (DeepSpeed reads it only inside load_checkpoint)."""
    conf = engine._config
    if not hasattr(conf, "load_universal_checkpoint"):
        raise GptDsError("this DeepSpeed has no load_universal_checkpoint setting; resume on the number of ranks the "
                         "checkpoint was saved on")
    from deepspeed.utils import logger
    old, level = conf.load_universal_checkpoint, logger.level
    conf.load_universal_checkpoint = True
    logger.setLevel(max(level, logging.ERROR))  # "MPU is not provided" on every rank: we have no model parallelism
    try:
        yield
    finally:
        conf.load_universal_checkpoint = old
        logger.setLevel(level)


def prepare(step_dir: Path, engines: dict, world_size: int, rank: int) -> dict[str, str]:
    """Every rank: the plan per engine; rank 0 converts if any engine needs it, the others wait and share its error."""
    plans = {name: plan(step_dir, name, eng.zero_optimization_stage(), world_size)
             for name, eng in engines.items() if eng is not None}
    if "universal" in plans.values():
        def convert() -> None:
            t0, cached = time.perf_counter(), (step_dir / UNIVERSAL_DIR / MANIFEST).is_file()
            try:
                out = ensure_universal(step_dir)
            except GptDsError:
                raise
            except Exception as e:
                raise GptDsError(f"checkpoint {step_dir}: making its universal copy failed ({type(e).__name__}: "
                                 f"{e}); fix that, or resume on the number of ranks it was saved on") from None
            how = "made earlier" if cached else f"converted once, {time.perf_counter() - t0:.1f} s"
            print(f"gpt_ds: {step_dir} was saved on another number of ranks; loading "
                  f"{', '.join(n for n, h in plans.items() if h == 'universal')} from its universal copy {out} "
                  f"({how})", file=sys.stderr, flush=True)
        rank0_decides(convert, rank, world_size)
    return plans


def load_engine(engine, step_dir: Path, name: str, how: str) -> None:
    """Load one engine's weights, optimizer and scheduler state, natively or from the universal copy."""
    kw = dict(tag=name, load_optimizer_states=True, load_lr_scheduler_states=True)
    if how == "native":
        with weights_only_loads():
            path, _ = engine.load_checkpoint(str(step_dir), **kw)
    else:
        with _universal_load(engine), weights_only_loads():
            path, _ = engine.load_checkpoint(str(step_dir / UNIVERSAL_DIR), **kw)
        if engine.zero_optimization_stage() == 3:
            _repair_stage3_load(engine, step_dir / UNIVERSAL_DIR / name / "zero" / "optimizer_state.pt")
    if path is None:
        raise GptDsError(f"checkpoint {step_dir}: DeepSpeed found nothing to load for the {name}; resume from "
                         f"another step (--resume PATH)")


def _repair_stage3_load(engine, optim_file: Path) -> None:
    """Two slips of DeepSpeed 0.19's ZeRO-3 universal load, undone so the run continues as the ordinary load would:
    every optimizer group gets group 0's settings (the no-decay group of biases and LayerNorms would decay), and all
    groups share ONE Adam step tensor, which torch's Adam increments in place once per group per step (the second
    group's bias correction would run ahead)."""
    saved = safe_load.load(optim_file, map_location="cpu")  # weights only; a refused or corrupt file is named
    saved = saved["optimizer_state_dict"]["param_groups"]
    groups = engine.optimizer.param_groups
    if len(saved) != len(groups):
        raise GptDsError(f"{optim_file}: {len(saved)} optimizer groups saved, the engine has {len(groups)}; resume "
                         f"on the number of ranks the checkpoint was saved on")
    for group, old in zip(groups, saved):
        group.update({k: v for k, v in old.items() if k != "params"})
    for state in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
