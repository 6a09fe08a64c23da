"""Which ds_config keys the installed DeepSpeed reads, learnt from DeepSpeed itself rather than from a hand list.

DeepSpeed ignores a key it does not read, so a typo ("overlap_com") silently leaves the default in force. Three
sources, all taken from the installed version:
- DeepSpeed's own parser (`DeepSpeedConfig._initialize_params`) run on a dict that records every key it looks up;
- the pydantic models (ZeRO, offload, bf16/fp16, monitors, ...) with their field names, aliases and deprecations;
- the constructor signatures of the optimizer DeepSpeed would build, for `optimizer.params`.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import logging
import sys
import typing

PROBE = "__gpt_ds_probe__"


class _Recorder(dict):
    """A dict that notes each key looked up in it (and in the dicts below it), by dotted path."""

    def __init__(self, data: dict, path: str, log: dict):
        super().__init__(data)
        self._path, self._log = path, log

    def _note(self, key) -> None:
        frame, name = sys._getframe(2), ""
        while frame is not None:  # the first module that is not a generic helper names the parser
            name = frame.f_globals.get("__name__", "")
            if not name.endswith(("config_utils", "schema")):
                break
            frame = frame.f_back
        self._log.setdefault(self._path + str(key), name)

    def _wrap(self, key, value):
        if isinstance(value, dict) and not isinstance(value, _Recorder):
            value = _Recorder(value, f"{self._path}{key}.", self._log)
            dict.__setitem__(self, key, value)
        return value

    def __getitem__(self, key):
        self._note(key)
        return self._wrap(key, dict.__getitem__(self, key))

    def get(self, key, default=None):
        self._note(key)
        return self._wrap(key, dict.__getitem__(self, key)) if dict.__contains__(self, key) else default

    def __contains__(self, key):
        self._note(key)
        return dict.__contains__(self, key)

    def keys(self):
        outer = self

        class _Keys:
            def __contains__(self, key):
                return outer.__contains__(key)

            def __iter__(self):
                return iter(dict.keys(outer))

            def __len__(self):
                return dict.__len__(outer)

        return _Keys()

    def items(self):  # a parser that iterates a section accepts any key in it
        self._log.setdefault(self._path + "*", "")
        return dict.items(self)


@contextlib.contextmanager
def quiet_deepspeed():
    """DeepSpeed logs (deprecation warnings, accelerator notes) to stdout; a check prints only its own findings."""
    from deepspeed.utils import logger
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def parse_with_deepspeed(ds: dict, world_size: int | None = None) -> tuple[dict, Exception | None]:
    """Run DeepSpeed's own config parser on `ds`; returns (looked-up dotted keys -> reading module, error or None).

    With `world_size` the batch arithmetic and DeepSpeed's sanity checks run too (as they would at launch).
    """
    from deepspeed.runtime.config import DeepSpeedConfig, _reject_removed_config_keys
    log: dict = {}
    rec = _Recorder(ds, "", log)
    obj = DeepSpeedConfig.__new__(DeepSpeedConfig)
    obj._param_dict, obj.global_rank, obj.world_size = ds, 0, world_size or 1
    try:
        with quiet_deepspeed():
            _reject_removed_config_keys(ds)
            obj._initialize_params(rec)
            if world_size is not None:
                obj._configure_train_batch_size()
                obj._do_sanity_check()
    except Exception as e:  # noqa: BLE001 - any refusal by DeepSpeed is a finding, reported with its message
        return log, e
    return log, None


@functools.lru_cache(maxsize=1)
def top_level_keys() -> frozenset[str]:
    log, err = parse_with_deepspeed({PROBE: 0})
    if err is not None:
        raise RuntimeError(f"DeepSpeed's parser failed on an empty config: {err}")
    keys = {k for k in log if "." not in k and k not in (PROBE, "*")}
    from deepspeed.runtime.constants import VOCABULARY_SIZE
    return frozenset(keys | {VOCABULARY_SIZE})  # read by DeepSpeed's warning check, outside the parser


def removed_keys() -> dict[str, str]:
    """Top-level blocks DeepSpeed 0.19 removed -> its own message."""
    from deepspeed.runtime.config import _REMOVED_TOP_LEVEL_CONFIG_KEYS
    return dict(_REMOVED_TOP_LEVEL_CONFIG_KEYS)


# ----------------------------------------------------------------------------------------------- pydantic sections


def _model_classes(annotation) -> list[type]:
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    out = []
    for tp in (annotation, *typing.get_args(annotation)):
        if isinstance(tp, type) and issubclass(tp, DeepSpeedConfigModel):
            out.append(tp)
    return out


@functools.lru_cache(maxsize=None)
def model_schema(cls: type) -> dict:
    """{"keys": {name: child schema or None}, "deprecated": {name: replacement}} for a DeepSpeed pydantic model."""
    keys: dict = {}
    deprecated: dict = {}
    for name, f in cls.model_fields.items():
        subs = _model_classes(f.annotation)
        child = model_schema(subs[0]) if subs else None
        for key in {name, f.alias or name}:
            keys[key] = child
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("deprecated"):
            deprecated[name] = extra.get("new_param", "")
    return {"keys": keys, "deprecated": deprecated, "model": cls.__name__}


def _find_model(name: str) -> type | None:
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    todo = [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


@functools.lru_cache(maxsize=None)
def section_kind(section: str) -> tuple[str, object]:
    """("model", schema) for a section DeepSpeed validates with pydantic, else ("parser", looked-up keys)."""
    import pydantic
    log, err = parse_with_deepspeed({section: {PROBE: 1}})
    if isinstance(err, pydantic.ValidationError):
        cls = _find_model(err.title)
        if cls is not None:
            sch = model_schema(cls)
            # the probe key's location inside the model that refused it, e.g. ('tensorboard', PROBE)
            for part in err.errors()[0]["loc"][:-1]:
                child = sch["keys"].get(part)
                if child is None:
                    break
                sch = child
            return "model", sch
    prefix = section + "."
    return "parser", frozenset(k[len(prefix):] for k in log if k.startswith(prefix) and k != prefix + PROBE)


# ----------------------------------------------------------------------------------------------- optimizer params


def optimizer_param_names(opt_type: str) -> frozenset[str] | None:
    """Keyword arguments the optimizer DeepSpeed builds for `opt_type` accepts (any of its CPU/GPU variants)."""
    import torch
    from deepspeed.runtime import config as dsc
    t = opt_type.lower()
    classes: list = []
    extra = set()
    if t in (dsc.ADAM_OPTIMIZER, dsc.ADAMW_OPTIMIZER):
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
        classes = [torch.optim.AdamW, FusedAdam, DeepSpeedCPUAdam]
        extra = {dsc.TORCH_ADAM_PARAM, dsc.ADAM_W_MODE, "fp32_optimizer_states"}
    elif t == dsc.ADAGRAD_OPTIMIZER:
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
        classes = [torch.optim.Adagrad, DeepSpeedCPUAdagrad]
    elif t == dsc.LAMB_OPTIMIZER:
        from deepspeed.ops.lamb import FusedLamb
        classes = [FusedLamb]
    elif t == dsc.LION_OPTIMIZER:
        from deepspeed.ops.lion import DeepSpeedCPULion, FusedLion
        classes = [FusedLion, DeepSpeedCPULion]
    elif t not in dsc.DEEPSPEED_OPTIMIZERS and isinstance(getattr(torch.optim, opt_type, None), type):
        classes = [getattr(torch.optim, opt_type)]
    if not classes:
        return None
    names = set(extra)
    for cls in classes:
        names |= {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "kwargs")}
    return frozenset(names)


def optimizer_types() -> list[str]:
    import torch
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    torch_names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                   and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"]
    return sorted(set(DEEPSPEED_OPTIMIZERS)) + torch_names


def closest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
