"""Resolve a ds_config for one engine: the JSON file, the run's overrides, then what gpt_ds owns filled in.

gpt_ds owns batch sizes, precision, clipping and the optimizer's hyper-parameters. A ds_config may leave them out or
say "auto"; a value that contradicts the gpt_ds config is refused (it would otherwise win silently in DeepSpeed).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from gpt_ds.config import DATA_ROOT, BatchLayout, Config, ConfigError

ENGINES = ("generator", "discriminator")


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def ds_config_path(cfg: Config, engine: str) -> Path:
    p = Path(getattr(cfg.deepspeed, engine))
    if not p.is_absolute() and not p.exists() and (DATA_ROOT / p).exists():
        p = DATA_ROOT / p  # "ds_configs/zero3_fp32.json": a shipped preset, from any working directory
    return p


def load_ds_json(path: Path, key: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{key}: ds_config file '{path}' does not exist; see ds_configs/ for presets")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: ds_config file '{path}' is not valid JSON (line {e.lineno}, column {e.colno}: "
                          f"{e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: ds_config file '{path}' must hold a JSON object")
    return data


def _own(ds: dict, key: str, value, where: str, gpt_key: str, problems: list[str]) -> None:
    """Fill a key gpt_ds owns; note a contradicting explicit value."""
    cur = ds.get(key, "auto")
    if cur != "auto" and cur != value and not (isinstance(cur, (int, float)) and isinstance(value, (int, float))
                                               and abs(cur - value) <= 1e-12 * max(1.0, abs(value))):
        problems.append(f"{where}: '{key}' = {cur!r} contradicts {gpt_key} = {value!r}; remove it from the "
                        f"ds_config (gpt_ds fills it) or change {gpt_key}")
    ds[key] = value


def merged_ds_config(cfg: Config, engine: str, path: Path | None = None) -> tuple[Path, dict]:
    """The engine's ds_config file (or `path`, a preset the estimator tries) with cfg.deepspeed.overrides and
    <engine>_overrides merged in, nothing filled."""
    path = path or ds_config_path(cfg, engine)
    ds = load_ds_json(path, f"deepspeed.{engine}")
    ds = _merge(ds, cfg.deepspeed.overrides)
    return path, _merge(ds, getattr(cfg.deepspeed, f"{engine}_overrides"))


# Smallest "auto" bucket (elements). H² alone (transformers' rule) cuts a small tower's gradients into hundreds of
# collectives a step: 16k-element buckets for H=128 made ZeRO-3 on 2 CPU ranks 1.3x slower per step
# (bench/zero_buckets.py). 5M elements is 20 MB in fp32; from H=2,237 up H² is the larger and is used as it is.
MIN_AUTO_BUCKET = 5_000_000


def auto_buckets(hidden: int) -> dict:
    """The values gpt_ds fills for "auto", by ds_config key: transformers' DeepSpeed rule (scaled from the engine's
    hidden size) with a floor for the buckets, which the estimator models (bench/zero_memory.py --set checks it at any
    size)."""
    return {"reduce_bucket_size": max(hidden * hidden, MIN_AUTO_BUCKET),
            "stage3_prefetch_bucket_size": max(int(0.9 * hidden * hidden), MIN_AUTO_BUCKET),
            "stage3_param_persistence_threshold": 10 * hidden}


# model_states' argument for each size DeepSpeed's ZeRO config reads (its field names)
_SIZES = {"reduce_bucket_size": "reduce_bucket", "prefetch_bucket_size": "prefetch_bucket",
          "param_persistence_threshold": "persistence", "sub_group_size": "sub_group",
          "max_live_parameters": "max_live", "max_reuse_distance": "reuse_distance"}


def engine_buckets(cfg: Config, engine: str, hidden: int, preset: Path) -> dict:
    """The bucket and ZeRO-3 sizes (elements) and `overlap_comm` an engine gets when it runs the ds_config `preset`
    with the run's overrides: "auto" filled as gpt_ds fills it, the rest read by DeepSpeed's own ZeRO config (a
    number as written, a key left out as DeepSpeed's default). The estimator sizes its buffers by these, so a ds_config
    that writes larger buckets for speed, or fewer live parameters for memory, is estimated as it will run."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    _, ds = merged_ds_config(cfg, engine, preset)
    zero = dict(ds.get("zero_optimization") or {})
    zero.update({k: v for k, v in auto_buckets(hidden).items() if zero.get(k) == "auto"})
    try:
        z = DeepSpeedZeroConfig(**zero)
    except ValueError as e:  # pydantic's ValidationError: say which key and what to give, not a traceback
        bad = "; ".join(f"zero_optimization.{'.'.join(map(str, x['loc']))} = {x.get('input')!r}" for x in e.errors())
        raise ConfigError(f"deepspeed.{engine} ({preset} + overrides): {bad}: give a number of elements (or \"auto\" "
                          f"for the buckets and the persistence threshold)") from None
    return {**{name: int(getattr(z, field)) for field, name in _SIZES.items()}, "overlap_comm": bool(z.overlap_comm)}


def resolve_ds_config(cfg: Config, engine: str, layout: BatchLayout, hidden_size: int | None = None,
                      problems: list[str] | None = None) -> dict:
    """The dict handed to deepspeed.initialize for `engine` ("generator" or "discriminator").

    Every contradiction is collected: raised together as one ConfigError, or appended to `problems` when given.
    """
    assert engine in ENGINES
    found: list[str] = []
    path, ds = merged_ds_config(cfg, engine)
    where = f"deepspeed.{engine} ({path})"

    _own(ds, "train_batch_size", layout.global_batch, where, "train.global_batch", found)
    _own(ds, "train_micro_batch_size_per_gpu", layout.micro_batch, where, "train.micro_batch (derived)", found)
    _own(ds, "gradient_accumulation_steps", layout.grad_accum, where, "train.grad_accum", found)
    _own(ds, "gradient_clipping", cfg.optim.grad_clip, where, "optim.grad_clip", found)

    prec = cfg.train.precision
    for name in ("bf16", "fp16"):
        sec = ds.get(name)
        enabled = isinstance(sec, dict) and sec.get("enabled") not in (False, "false")
        if enabled and sec.get("enabled") != "auto" and name != prec:
            found.append(f"{where}: '{name}.enabled' is on but train.precision = {prec!r}; set "
                         f"train.precision={name} or remove the '{name}' section")
    for name in ("bf16", "fp16"):
        if name == prec:
            ds[name] = _merge(ds.get(name) or {}, {"enabled": True})
        elif name in ds:
            ds[name] = _merge(ds[name], {"enabled": False})

    opt = ds.get("optimizer")
    if isinstance(opt, dict):
        params = opt.setdefault("params", {})
        o = cfg.optim
        lr = o.peak_lr(electra_generator=engine == "generator")
        for key, value in (("lr", lr), ("betas", [o.beta1, o.beta2]), ("eps", o.eps), ("weight_decay", o.weight_decay)):
            cur = params.get(key, "auto")
            if cur != "auto" and cur != value and not (key == "betas" and isinstance(cur, (list, tuple))
                                                       and list(cur) == value):
                name = {"betas": "beta1/beta2", "lr": "lr" if lr == o.lr else "generator_lr"}.get(key, key)
                found.append(f"{where}: 'optimizer.params.{key}' = {cur!r} contradicts optim.{name} = {value!r}; "
                             f"remove it or use \"auto\"")
            params[key] = value
        if (str(opt.get("type", "")).lower() in ("adam", "adamw") and params.get("torch_adam")
                and "fused" not in params and "foreach" not in params):
            params["fused"] = True  # torch's fused AdamW: one kernel per tensor, 3.5x the default loop on the CPU
    if "scheduler" in ds:
        found.append(f"{where}: has a 'scheduler' section; gpt_ds owns the schedule (optim.warmup_steps, "
                     f"train.max_steps): remove it")

    zero = ds.setdefault("zero_optimization", {})
    if not isinstance(zero, dict):
        found.append(f"{where}: 'zero_optimization' must be a JSON object, got {zero!r}")
        zero = ds["zero_optimization"] = {}
    for key, value in auto_buckets(hidden_size or cfg.model.hidden_size).items():
        if zero.get(key) == "auto":
            zero[key] = value
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        found.append(f"{where}: no gpt_ds value for \"auto\" at {', '.join(leftover)}; set a number")
    if found and problems is None:
        raise ConfigError("\n  - ".join(["ds_config problems:", *found]))
    if problems is not None:
        problems.extend(found)
    return ds


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
