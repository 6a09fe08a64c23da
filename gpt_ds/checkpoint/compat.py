"""Whether a checkpoint can continue under the config a run starts with: one place for the rules.

A resume may change how things are computed (kernels, dropout, micro-batching) but not what the checkpoint holds (the
model's shapes, the objective) nor the sample order (the global batch). Another number of ranks is converted on load
(gpt_ds.checkpoint.reshard); a ZeRO stage change is refused there.
"""
from __future__ import annotations

from pathlib import Path

from gpt_ds.checkpoint.reshard import check_resumable
from gpt_ds.config import Config
from gpt_ds.errors import GptDsError

# Model keys that do not change what a checkpoint holds: a resume may change them.
RESUMABLE_MODEL_KEYS = ("kernels", "encoder_kernels", "hidden_dropout", "attention_dropout", "position_init",
                        "init_output_priors", "initializer_range", "relative_bias_init")
# Keys a checkpoint from before them did not record, and the value it was trained with
ADDED_MODEL_KEYS = {"arch": "electra", "generator_arch": ""}


def model_differences(saved: dict, cfg: Config) -> list[str]:
    """'section.key: old -> new' for what a checkpoint's config and this one disagree on (keys both know).

    model.vocab_size is left out: 0 means "the tokenizer's"; the caller compares the effective sizes."""
    new = cfg.to_dict()
    out = []
    for sec, keys in (("model", None), ("objective", ("kind", "embedding_sharing"))):
        old_sec = saved.get(sec, {})
        if sec == "model":
            old_sec = {**ADDED_MODEL_KEYS, **old_sec}
        for k, v in new[sec].items():
            if (keys is None and k in RESUMABLE_MODEL_KEYS + ("vocab_size",)) or (keys is not None and k not in keys):
                continue
            if k in old_sec and old_sec[k] != v:
                out.append(f"{sec}.{k}: {old_sec[k]!r} -> {v!r}")
    # the corrective LM's head exists only with a weight > 0 (a checkpoint from before the key had none); its value
    # is a loss weight a resume may change
    old_w, new_w = saved.get("objective", {}).get("disc_mlm_weight", 0.0), cfg.objective.disc_mlm_weight
    if (old_w > 0) != (new_w > 0) and cfg.objective.kind == "electra":
        out.append(f"objective.disc_mlm_weight: {old_w!r} -> {new_w!r} ({'adds' if new_w > 0 else 'removes'} the "
                   f"discriminator's corrective LM head)")
    # the per-layer rates live in the optimizer's groups, which the checkpoint restores: a new value would be lost
    old_d, new_d = saved.get("optim", {}).get("encoder_layer_lr_decay", 1.0), cfg.optim.encoder_layer_lr_decay
    if old_d != new_d:
        out.append(f"optim.encoder_layer_lr_decay: {old_d!r} -> {new_d!r} (the checkpoint's optimizer groups hold "
                   f"the per-layer rates)")
    old_g, new_g = saved.get("optim", {}).get("generator_lr", 0.0), cfg.optim.generator_lr
    if old_g != new_g:
        out.append(f"optim.generator_lr: {old_g!r} -> {new_g!r} (the checkpoint's optimizer groups hold the "
                   f"generator's rate)")
    return out


def check_resume_compatible(saved: dict, cfg: Config, world_size: int, step_dir: Path) -> None:
    """Refuse, with the differing keys named, a resume that cannot continue the same run."""
    diffs = model_differences(saved.get("config", {}), cfg)
    if cfg.model.vocab_size and cfg.model.vocab_size != saved.get("vocab_size"):
        diffs.append(f"model.vocab_size: {saved.get('vocab_size')!r} -> {cfg.model.vocab_size!r}")
    if diffs:
        raise GptDsError(f"checkpoint {step_dir} was saved with a different model config ({'; '.join(diffs)}); "
                         f"resume with the checkpoint's settings or start a new run (run.name=... or "
                         f"checkpoint.resume=none)")
    if saved.get("global_batch") != cfg.train.global_batch:
        raise GptDsError(f"checkpoint {step_dir} used train.global_batch={saved.get('global_batch')}, the run now "
                         f"asks {cfg.train.global_batch}: the sample order and schedule are defined per global batch; "
                         f"keep train.global_batch={saved.get('global_batch')} (change micro_batch/grad_accum instead)")
    check_resumable(step_dir, saved, cfg, world_size)  # another number of ranks: converted on load; a stage change: no
