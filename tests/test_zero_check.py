"""`gpt-ds check` / check_run: every bad config refused before launch, with the key (and the fix) named."""
from __future__ import annotations

import json

import pytest

from gpt_ds.cli import main as cli_main
from gpt_ds.config import DS_CONFIG_DIR, load_config
from gpt_ds.zero import schema
from gpt_ds.zero.check import check_report, check_run

PRESETS = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))


def _cfg(ds_file: str = "ds_configs/zero3_fp32.json", precision: str = "fp32", **over):
    raw = {"model": {"vocab_size": 1000}, "train": {"precision": precision, "global_batch": 32},
           "deepspeed": {"generator": ds_file, "discriminator": ds_file}}
    for key, value in over.items():
        raw.setdefault(key, {}).update(value)
    return load_config("tiny", raw=raw)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_passes(name):
    assert len(PRESETS) >= 18
    prec = name.rsplit("_", 1)[1]
    for world in (1, 2, 4):
        assert check_run(_cfg(f"ds_configs/{name}.json", prec), world) == [], (name, world)


def _one(problems, *needles):
    hits = [p for p in problems if all(n in p for n in needles)]
    assert hits, f"no problem mentions {needles}: {problems}"
    return hits[0]


@pytest.mark.parametrize("override, needles", [
    ({"zero_optimization": {"overlap_com": True}}, ("zero_optimization.overlap_com", "did you mean 'overlap_comm'")),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memroy": True}}},
     ("zero_optimization.offload_optimizer.pin_memroy", "'pin_memory'")),
    ({"gradient_acumulation_steps": 1}, ("'gradient_acumulation_steps'", "'gradient_accumulation_steps'")),
    ({"optimizer": {"type": "AdamW", "params": {"weight_decy": 0.1}}},
     ("optimizer.params.weight_decy", "'weight_decay'")),
    ({"optimizer": {"type": "AdamX"}}, ("optimizer.type", "AdamX")),
    ({"activation_checkpointing": {"partition_activation": True}},
     ("activation_checkpointing.partition_activation", "'partition_activations'")),
    ({"tensorboard": {"enabled": False, "output": "x"}}, ("tensorboard.output", "'output_path'")),
    ({"elasticity": {"enabled": True}}, ("'elasticity'", "no longer supported")),
    ({"fp16": {"enabled": True}}, ("fp16.enabled", "bf16.enabled", "both on")),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
     ("offload_param", "stage 3")),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "optimizer": {"type": "Lamb"}},
     ("'Lamb'", "offload")),
    ({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}}, ("nvme_path",)),
    ({"train_batch_size": 64}, ("'train_batch_size' = 64", "train.global_batch = 32")),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 0.5}}}, ("optimizer.params.lr", "optim.lr")),
    ({"scheduler": {"type": "WarmupLR"}}, ("'scheduler'", "remove it")),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu", "buffer_count": -1}}},
     ("DeepSpeed refuses", "buffer_count")),
])
def test_bad_ds_config_refused_with_key_named(override, needles):
    cfg = _cfg("ds_configs/zero3_bf16.json", "bf16", deepspeed={"overrides": override})
    _one(check_run(cfg, 2), *needles)


def test_problems_in_a_file_name_the_file_and_are_all_collected(tmp_path):
    ds = json.loads((DS_CONFIG_DIR / "zero2_fp32.json").read_text())
    ds["zero_optimization"]["overlap_com"] = True
    ds["zero_optimization"]["offload_param"] = {"device": "cpu"}
    ds["gradient_clipping"] = 5.0
    ds["wall_clock_breakdwn"] = True
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    cfg = _cfg(str(path), train={"micro_batch": 3})
    problems = check_run(cfg, 2)
    assert len(problems) >= 5, problems
    for needles in (("overlap_com",), ("offload_param", "stage 3"), ("gradient_clipping", "optim.grad_clip"),
                    ("wall_clock_breakdwn", "'wall_clock_breakdown'"), ("train.micro_batch 3",)):
        hit = _one(problems, *needles)
        assert "train.micro_batch" in hit or str(path) in hit, hit
    # each unknown key once: gpt_ds names it, and DeepSpeed's own parser no longer reports it a second time
    assert [p for p in problems if "overlap_com" in p] == [_one(problems, "overlap_com")], problems
    assert not any("DeepSpeed refuses it" in p and "overlap_com" in p for p in problems), problems


def test_generator_only_override_names_that_engine():
    cfg = _cfg(deepspeed={"discriminator_overrides": {"zero_optimization": {"stage": 1,
                                                                            "offload_param": {"device": "cpu"}}}})
    hit = _one(check_run(cfg, 2), "offload_param")
    assert "deepspeed.discriminator" in hit and "generator" not in hit


def test_offload_without_optimizer_section_needs_ds_cpu_optimizer(tmp_path):
    ds = json.loads((DS_CONFIG_DIR / "zero3_offload_optimizer_fp32.json").read_text())
    del ds["optimizer"]
    path = tmp_path / "noopt.json"
    path.write_text(json.dumps(ds))
    _one(check_run(_cfg(str(path)), 2), "no 'optimizer' section", "DeepSpeedCPUAdam")
    ds["zero_force_ds_cpu_optimizer"] = False
    path.write_text(json.dumps(ds))
    assert check_run(_cfg(str(path)), 2) == []


def test_notes_do_not_fail_the_check():
    problems, notes = check_report(_cfg("ds_configs/zero3_fp32.json",
                                        deepspeed={"overrides": {"zero_optimization": {"stage": 1}}}), 1)
    assert problems == []
    assert any("no effect at ZeRO stage 1" in n for n in notes)
    assert any("partitions nothing" in n for n in notes)


def test_valid_keys_come_from_deepspeed_itself():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    top = schema.top_level_keys()
    for key in ("zero_optimization", "bf16", "fp16", "optimizer", "gradient_clipping", "activation_checkpointing",
                "flops_profiler", "tensorboard", "comms_logger", "aio", "train_micro_batch_size_per_gpu"):
        assert key in top
    assert "overlap_comm" not in top and "elasticity" not in top
    kind, sch = schema.section_kind("zero_optimization")
    assert kind == "model"
    for name, field in DeepSpeedZeroConfig.model_fields.items():
        assert name in sch["keys"] and (field.alias or name) in sch["keys"]
    assert "pin_memory" in sch["keys"]["offload_optimizer"]["keys"]
    # a ds_config holding every top-level key DeepSpeed reads (empty sections) has no unknown key
    from gpt_ds.zero.keys import key_problems
    problems, _ = key_problems({k: {} for k in top}, "all.json")
    assert not [p for p in problems if "unknown" in p], problems


def test_cli_exit_codes(capsys):
    assert cli_main(["check", "tiny", "model.vocab_size=1000", "--gpus-per-node", "2"]) == 0
    assert "ok: no problems" in capsys.readouterr().out
    code = cli_main(["check", "tiny", "model.vocab_size=1000", "train.global_batch=33", "--gpus-per-node", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "train.global_batch 33" in out and "problem" in out


def test_auto_buckets_are_h_squared_over_a_floor_and_a_number_in_the_ds_config_is_kept():
    """transformers' rule for "auto", never under 5M elements (bench/zero_buckets.py: what the floor buys)."""
    from gpt_ds.config import batch_layout
    from gpt_ds.ds_config import resolve_ds_config
    cfg = _cfg()
    layout = batch_layout(cfg, 2)
    z = resolve_ds_config(cfg, "discriminator", layout)["zero_optimization"]
    h = cfg.model.hidden_size
    assert h * h < 5_000_000
    assert (z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"], z["stage3_param_persistence_threshold"]) == \
        (5_000_000, 5_000_000, 10 * h)
    wide = resolve_ds_config(cfg, "discriminator", layout, hidden_size=4096)["zero_optimization"]
    assert (wide["reduce_bucket_size"], wide["stage3_prefetch_bucket_size"]) == (4096 ** 2, int(0.9 * 4096 ** 2))
    own = _cfg(deepspeed={"discriminator_overrides": {"zero_optimization": {"reduce_bucket_size": 20_000}}})
    assert resolve_ds_config(own, "discriminator", layout)["zero_optimization"]["reduce_bucket_size"] == 20_000
