"""Unknown, misspelt, removed and deprecated ds_config keys, at any depth, each with the closest valid key.

What counts as valid is what the installed DeepSpeed reads (see schema.py), so the check follows DeepSpeed upgrades.
"""
from __future__ import annotations

from gpt_ds.zero import schema


def key_problems(ds: dict, where: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for one ds_config dict; `where` names its file or config key in each message."""
    problems: list[str] = []
    notes: list[str] = []
    log, _ = schema.parse_with_deepspeed(ds)  # the keys DeepSpeed looks up in *this* config
    top = schema.top_level_keys()
    removed = schema.removed_keys()
    for key, value in ds.items():
        if key in removed:
            problems.append(f"{where}: '{key}' is no longer supported by DeepSpeed: {removed[key].strip()} "
                            f"Remove it.")
            continue
        if key not in top and key not in log:
            problems.append(f"{where}: unknown DeepSpeed key '{key}' (DeepSpeed would ignore it)"
                            f"{schema.closest(key, top)}")
            continue
        if not isinstance(value, dict):
            continue
        kind, info = schema.section_kind(key)
        if kind == "model":
            _walk_model(value, info, key, where, problems, notes)
        elif key == "optimizer":
            _check_optimizer(value, log, where, problems)
        else:
            _walk_parser(value, key, log, set(info), where, problems)
    return problems, notes


def _walk_model(d: dict, sch: dict, path: str, where: str, problems: list[str], notes: list[str]) -> None:
    for key, value in d.items():
        dotted = f"{path}.{key}"
        if key not in sch["keys"]:
            problems.append(f"{where}: unknown DeepSpeed key '{dotted}' ({sch['model']} has no such field)"
                            f"{schema.closest(key, sch['keys'])}")
            continue
        if key in sch["deprecated"]:
            new = sch["deprecated"][key]
            notes.append(f"{where}: '{dotted}' is deprecated in DeepSpeed" + (f"; use '{path}.{new}'" if new else ""))
        child = sch["keys"][key]
        if child is not None and isinstance(value, dict):
            _walk_model(value, child, dotted, where, problems, notes)


def _walk_parser(d: dict, path: str, log: dict, probe: set[str], where: str, problems: list[str]) -> None:
    """A section DeepSpeed reads key by key: valid = looked up here or in a probe of the section."""
    if f"{path}.*" in log:  # DeepSpeed iterates this section: any key goes
        return
    seen = {k[len(path) + 1:] for k in log if k.startswith(path + ".") and "." not in k[len(path) + 1:]}
    valid = seen | probe
    for key, value in d.items():
        dotted = f"{path}.{key}"
        if key not in valid:
            problems.append(f"{where}: unknown DeepSpeed key '{dotted}' (DeepSpeed would ignore it)"
                            f"{schema.closest(key, valid)}")
            continue
        if isinstance(value, dict) and any(k.startswith(dotted + ".") for k in log):
            _walk_parser(value, dotted, log, set(), where, problems)
        # a dict DeepSpeed reads as a whole (e.g. autotuning.arg_mappings) holds the user's own names


def _check_optimizer(opt: dict, log: dict, where: str, problems: list[str]) -> None:
    _walk_parser({k: v for k, v in opt.items() if k != "params"}, "optimizer", log, {"type", "params"}, where,
                 problems)
    kind = opt.get("type")
    if not isinstance(kind, str):
        problems.append(f"{where}: 'optimizer.type' is missing; set e.g. \"AdamW\" (or remove the 'optimizer' "
                        f"section to let gpt_ds pass its own torch AdamW)")
        return
    names = schema.optimizer_param_names(kind)
    if names is None:
        types = schema.optimizer_types()
        problems.append(f"{where}: 'optimizer.type' = {kind!r} is neither a DeepSpeed optimizer nor a torch.optim "
                        f"class{schema.closest(kind, types)} (valid: AdamW, Adam, Adagrad, Lamb, Lion, or a "
                        f"torch.optim class name)")
        return
    params = opt.get("params") or {}
    if not isinstance(params, dict):
        problems.append(f"{where}: 'optimizer.params' must be a JSON object")
        return
    for key in params:
        if key not in names:
            problems.append(f"{where}: unknown parameter 'optimizer.params.{key}' for optimizer {kind!r}"
                            f"{schema.closest(key, names)} (accepted: {', '.join(sorted(names))})")


def strip_unknown(ds: dict) -> dict:
    """A copy without the keys DeepSpeed does not know, at the top level and inside its pydantic sections, so its own
    parser judges only the rest (each unknown key is reported once, by key_problems, not again as DeepSpeed's error)."""
    top = schema.top_level_keys()
    out = {}
    for key, value in ds.items():
        if key not in top:
            continue
        kind, info = schema.section_kind(key)
        out[key] = _strip_model(value, info) if kind == "model" and isinstance(value, dict) else value
    return out


def _strip_model(d: dict, sch: dict) -> dict:
    out = {}
    for key, value in d.items():
        if key not in sch["keys"]:
            continue
        child = sch["keys"][key]
        out[key] = _strip_model(value, child) if child is not None and isinstance(value, dict) else value
    return out
