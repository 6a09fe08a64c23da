"""`gpt-ds check CONFIG [key=value ...] [--nodes N --gpus-per-node G]`: every ds_config problem, before launch.

`check_run(cfg, world_size)` is what `gpt-ds pretrain` calls before any process group exists. It collects (never stops
at the first) unknown or misspelt DeepSpeed keys at any depth, impossible combinations, the batch arithmetic, ds_config
values that contradict the gpt_ds config, and whatever DeepSpeed's own parser refuses.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from gpt_ds.config import BatchLayout, Config, ConfigError, batch_layout, load_config
from gpt_ds.ds_config import load_ds_json, merged_ds_config, resolve_ds_config
from gpt_ds.model.sizes import generator_sizes
from gpt_ds.zero.keys import key_problems, strip_unknown
from gpt_ds.zero.rules import combination_problems
from gpt_ds.zero.schema import parse_with_deepspeed


def engines_of(cfg: Config) -> tuple[str, ...]:
    return ("generator", "discriminator") if cfg.objective.kind == "electra" else ("generator",)


def _lenient_layout(cfg: Config, world_size: int) -> BatchLayout:
    """A layout to keep checking the ds_configs with when the batch arithmetic itself is wrong."""
    t = cfg.train
    micro = t.micro_batch or max(1, t.global_batch // max(1, t.grad_accum * world_size))
    return BatchLayout(t.global_batch, micro, t.grad_accum, world_size)


def _sources(cfg: Config, engine: str, path) -> list[tuple[str, dict]]:
    """Each dict the engine's ds_config is merged from, with the name a message should point at."""
    out = [(str(path), load_ds_json(path, f"deepspeed.{engine}"))]
    if cfg.deepspeed.overrides:
        out.append(("config key deepspeed.overrides", cfg.deepspeed.overrides))
    extra = getattr(cfg.deepspeed, f"{engine}_overrides")
    if extra:
        out.append((f"config key deepspeed.{engine}_overrides", extra))
    return out


def check_report(cfg: Config, world_size: int) -> tuple[list[str], list[str]]:
    """(problems, notes): problems make a launch fail or silently misbehave; notes are advice."""
    problems: list[str] = []
    notes: list[str] = []

    def add(items: list[str], into: list[str]) -> None:
        into.extend(i for i in items if i not in into)  # both engines often share one file

    if world_size < 1:
        return [f"world size {world_size}: need at least 1 rank (--nodes x --gpus-per-node)"], []
    batch_ok = True
    try:
        layout = batch_layout(cfg, world_size)
    except ConfigError as e:
        problems.append(str(e))
        layout, batch_ok = _lenient_layout(cfg, world_size), False
    for engine in engines_of(cfg):
        try:
            path, merged = merged_ds_config(cfg, engine)
            sources = _sources(cfg, engine, path)
        except ConfigError as e:
            add([str(e)], problems)
            continue
        for name, part in sources:
            p, n = key_problems(part, name)
            add(p, problems)
            add(n, notes)
        label = str(path) + "".join(f" + {name[len('config key '):]}" for name, _ in sources[1:])
        where = f"deepspeed.{engine} ({label})"
        p, n = combination_problems(merged, where, world_size)
        add(p, problems)
        add(n, notes)
        hidden = generator_sizes(cfg.model)["hidden_size"] if engine == "generator" and \
            cfg.objective.kind == "electra" else cfg.model.hidden_size
        found: list[str] = []
        try:
            resolved = resolve_ds_config(cfg, engine, layout, hidden, problems=found)
        except ConfigError as e:  # the file itself could not be read
            add([str(e)], problems)
            continue
        add(found, problems)
        _, err = parse_with_deepspeed(strip_unknown(resolved), world_size)
        if err is not None and (batch_ok or "batch" not in str(err)):  # a batch problem is said once, above
            add([f"{where}: DeepSpeed refuses it: {_deepspeed_message(err)}"], problems)
    try:
        problems.extend(run_dir_problems(cfg))
    except ConfigError as e:  # the tokenizer named for the vocabulary size could not be read
        problems.append(str(e))
    return _merge_engines(problems), _merge_engines(notes)


def checkpoint_bytes(cfg: Config) -> int:
    """About what one step folder takes: every parameter in the training precision, plus Adam's fp32 master copy
    (when training in 16 bits) and two moments, for both towers; 5% for the rest (RNG, state, manifest)."""
    from gpt_ds.zero.sizes import ASSUMED_VOCAB, towers, vocab_size  # torch and transformers: a launch check only
    per_param = 4 + 8 if cfg.train.precision == "fp32" else 2 + 12
    params = sum(t.params for t in towers(cfg, vocab_size(cfg, default=ASSUMED_VOCAB)))
    return int(params * per_param * 1.05)


def run_dir_problems(cfg: Config) -> list[str]:
    """run.dir must take files, with room for one more checkpoint (a save writes the new step before it prunes)."""
    run_dir = cfg.run_dir.resolve()
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".gpt_ds-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return [f"run.dir {run_dir}: cannot write in {existing} ({e.strerror or e}); point run.dir at a writable "
                f"folder"]
    need, free = checkpoint_bytes(cfg), shutil.disk_usage(existing).free
    if free < need:
        return [f"run.dir {run_dir}: {free / 2**20:.1f} MiB free on its file system, one checkpoint needs about "
                f"{need / 2**20:.1f} MiB ({cfg.train.precision} weights and Adam states of both towers); free space "
                f"or point run.dir at a larger file system"]
    return []


def _merge_engines(items: list[str]) -> list[str]:
    """One line where both engines share the finding (they usually share the file)."""
    gen, disc = "deepspeed.generator (", "deepspeed.discriminator ("
    out = []
    for item in items:
        if item.startswith(disc) and gen + item[len(disc):] in items:
            continue
        if item.startswith(gen) and disc + item[len(gen):] in items:
            item = "deepspeed.generator and deepspeed.discriminator (" + item[len(gen):]
        out.append(item)
    return out


def _deepspeed_message(err: Exception) -> str:
    import pydantic
    if isinstance(err, pydantic.ValidationError):
        return "; ".join(f"'{'.'.join(str(x) for x in e['loc'])}': {e['msg']} (got {e.get('input')!r})"
                         for e in err.errors())
    return f"{type(err).__name__}: {err}".strip()


def check_run(cfg: Config, world_size: int) -> list[str]:
    """Every problem found, each naming the key or file and the fix; [] if the run can launch."""
    return check_report(cfg, world_size)[0]


# ------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (tiny, electra-small, ...) or a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.global_batch=256")
    p.add_argument("--nodes", type=int, default=1, help="nodes the job will run on (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="ranks per node (default 1)")
    p.add_argument("--json", action="store_true", help="print {problems, notes} as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    world = args.nodes * args.gpus_per_node
    problems, notes = check_report(cfg, world)
    if args.json:
        print(json.dumps({"world_size": world, "problems": problems, "notes": notes}, indent=1))
    else:
        print(f"gpt-ds check: {args.config} on {args.nodes} node(s) x {args.gpus_per_node} rank(s) = {world}")
        for n in notes:
            print(f"  note: {n}")
        for p in problems:
            print(f"  problem: {p}", file=sys.stdout)
        print(f"{len(problems)} problem(s)" if problems else "ok: no problems found")
    return 1 if problems else 0
