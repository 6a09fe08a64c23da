"""Combinations DeepSpeed accepts on paper but that fail at launch, silently do nothing, or cannot work with gpt_ds.

Each rule reads one engine's merged ds_config (file + overrides, before gpt_ds fills its keys).
"""
from __future__ import annotations

import shutil

OFFLOADING = ("cpu", "nvme")


def _on(section) -> bool:
    return isinstance(section, dict) and section.get("enabled") not in (False, "false", None)


def _device(section) -> str:
    return str(section.get("device", "none")).lower() if isinstance(section, dict) else "none"


def _stage(zero: dict) -> int | None:
    try:
        return int(zero.get("stage", 0))
    except (TypeError, ValueError):
        return None  # DeepSpeed's own parse reports the bad value


def combination_problems(ds: dict, where: str, world_size: int) -> tuple[list[str], list[str]]:
    """(problems, notes) for one engine's ds_config."""
    problems: list[str] = []
    notes: list[str] = []
    zero = ds.get("zero_optimization") if isinstance(ds.get("zero_optimization"), dict) else {}
    stage = _stage(zero)
    halves = [k for k in ("fp16", "bf16", "bfloat16") if _on(ds.get(k))]
    if "fp16" in halves and len(halves) > 1:
        problems.append(f"{where}: 'fp16.enabled' and '{halves[1]}.enabled' are both on; keep one (gpt_ds sets the "
                        f"one train.precision names: remove both sections or set their 'enabled' to \"auto\")")
    opt_dev, par_dev = _device(zero.get("offload_optimizer")), _device(zero.get("offload_param"))
    if stage is None or stage not in (0, 1, 2, 3):
        problems.append(f"{where}: 'zero_optimization.stage' = {zero.get('stage')!r}; ZeRO stages are 0, 1, 2, 3")
        return problems, notes
    if par_dev != "none" and stage != 3:
        problems.append(f"{where}: 'zero_optimization.offload_param' needs ZeRO stage 3 (stage is {stage}); set "
                        f"'zero_optimization.stage' to 3 or remove offload_param")
    if opt_dev != "none" and stage == 0:
        problems.append(f"{where}: 'zero_optimization.offload_optimizer' needs ZeRO stage 1, 2 or 3 (stage is 0); "
                        f"raise the stage or remove offload_optimizer")
    for name, dev in (("offload_optimizer", opt_dev), ("offload_param", par_dev)):
        if dev == "nvme" and not zero[name].get("nvme_path"):
            problems.append(f"{where}: 'zero_optimization.{name}.device' is \"nvme\" but "
                            f"'zero_optimization.{name}.nvme_path' is not set; name a local NVMe folder")
    problems += _optimizer_problems(ds, where, stage, opt_dev)
    if stage < 3:
        stale = sorted(k for k in zero if k.startswith("stage3_"))
        if stale:
            notes.append(f"{where}: {', '.join(stale)} have no effect at ZeRO stage {stage}")
    if stage >= 1 and world_size == 1 and opt_dev == "none" and par_dev == "none":
        notes.append(f"{where}: ZeRO stage {stage} on 1 rank partitions nothing; stage 0 is as small and faster")
    return problems, notes


def _optimizer_problems(ds: dict, where: str, stage: int, opt_dev: str) -> list[str]:
    """The optimizer DeepSpeed would build must run where its states live and be one ZeRO accepts."""
    from deepspeed.runtime import config as dsc
    out = []
    opt = ds.get("optimizer")
    force_cpu_opt = ds.get("zero_force_ds_cpu_optimizer", True) not in (False, "false")
    if opt is None:
        # gpt_ds then hands DeepSpeed its own torch.optim.AdamW (a "client" optimizer)
        if opt_dev in OFFLOADING and force_cpu_opt:
            out.append(f"{where}: 'zero_optimization.offload_optimizer' with no 'optimizer' section: gpt_ds would pass "
                       f"a torch AdamW, which DeepSpeed refuses under ZeRO-Offload; add \"optimizer\": {{\"type\": "
                       f"\"AdamW\", \"params\": {{\"lr\": \"auto\", \"betas\": \"auto\", \"eps\": \"auto\", "
                       f"\"weight_decay\": \"auto\"}}}} (DeepSpeedCPUAdam)")
        return out
    if not isinstance(opt, dict) or not isinstance(opt.get("type"), str):
        return out  # reported by the key check
    kind = opt["type"].lower()
    params = opt.get("params") if isinstance(opt.get("params"), dict) else {}
    torch_adam = params.get(dsc.TORCH_ADAM_PARAM) in (True, "true")
    cpu_capable = (dsc.ADAM_OPTIMIZER, dsc.ADAMW_OPTIMIZER, dsc.ADAGRAD_OPTIMIZER, dsc.LION_OPTIMIZER)
    if opt_dev in OFFLOADING and kind not in cpu_capable:
        out.append(f"{where}: optimizer {opt['type']!r} cannot run on offloaded optimizer states "
                   f"('zero_optimization.offload_optimizer.device' = {opt_dev!r}); DeepSpeed has CPU versions of "
                   f"Adam/AdamW (DeepSpeedCPUAdam), Adagrad and Lion only: switch optimizer.type or drop the offload")
    elif opt_dev in OFFLOADING and kind in (dsc.ADAM_OPTIMIZER, dsc.ADAMW_OPTIMIZER) and not torch_adam:
        problem = _cpu_adam_unavailable()
        if problem:
            out.append(f"{where}: offload_optimizer uses DeepSpeedCPUAdam, which cannot be built here ({problem}); "
                       f"install a C++ compiler and ninja, or set \"optimizer.params.torch_adam\": true (slower)")
    if stage > 0 and ds.get("zero_allow_untested_optimizer") not in (True, "true"):
        known = cpu_capable + (dsc.LAMB_OPTIMIZER,)
        if kind not in known and kind not in ("adam", "adamw", "adagrad"):
            out.append(f"{where}: ZeRO stage {stage} refuses optimizer {opt['type']!r} unless "
                       f"\"zero_allow_untested_optimizer\": true is set; use AdamW or set that key")
    return out


def _cpu_adam_unavailable() -> str:
    try:
        from deepspeed.ops.op_builder import CPUAdamBuilder
        if not CPUAdamBuilder().is_compatible(verbose=False):
            return "DeepSpeed's CPUAdamBuilder reports it incompatible with this machine"
    except Exception as e:  # noqa: BLE001 - an op builder that cannot even load is the finding
        return f"{type(e).__name__}: {e}"
    if not (shutil.which("ninja") and (shutil.which("c++") or shutil.which("g++"))):
        return "no ninja or C++ compiler on PATH for DeepSpeed's just-in-time build"
    return ""
