"""Check `gpt-ds estimate` against real DeepSpeed engines on the CPU (gloo), 1, 2 and 4 ranks.

For `tiny` and a small config (ELECTRA-Small widths, 4 layers) and each ZeRO option (fp32 presets), every rank builds
both towers as gpt_ds does (same transformers classes, same decay/no-decay groups, the resolved ds_config), runs three
micro-steps and, after the third backward (before its step: gradients, partitions, moments all alive), adds up the
bytes of every distinct tensor storage it holds. The largest rank is compared with the estimate's model-state bytes.
The encoder activations of both towers are measured with saved-tensor hooks (plain PyTorch, one process) against the
estimate, with and without activation checkpointing.

    DS_ACCELERATOR=cpu .venv/bin/python bench/zero_memory.py     # ~8 min on 2 cores; last line: one JSON object
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "tiny": ["model.vocab_size=1000"],
    "small": ["model.vocab_size=8000", "model.hidden_size=256", "model.num_heads=4", "model.intermediate_size=1024",
              "model.num_layers=4", "model.generator_hidden_ratio=0.25", "data.seq_len=64",
              "model.max_position_embeddings=128"],
}
OPTION_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero3_offload_optimizer", "zero3_offload_param")
MICRO = 2


def _held_bytes() -> int:
    import torch
    gc.collect()
    seen: dict = {}
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor):
            try:
                ts = [o] + ([o.grad] if o.grad is not None else []) + [getattr(o, "ds_tensor", None)]
                for t in ts:
                    if t is not None and t.device.type != "meta":
                        st = t.untyped_storage()
                        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
            except (RuntimeError, AttributeError):
                pass
    return sum(v for k, v in seen.items() if k)


def worker(out_path: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from gpt_ds.config import load_config
    from gpt_ds.model.hf_config import discriminator_config, generator_config
    from gpt_ds.train.ds_config import resolve_ds_config
    from gpt_ds.train.engines import param_groups
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for cname, overrides in CONFIGS.items():
        for preset in OPTION_PRESETS:
            f = f"ds_configs/{preset}_fp32.json"
            cfg = load_config("tiny", overrides + [f"train.global_batch={MICRO * world}", f"deepspeed.generator={f}",
                                                   f"deepspeed.discriminator={f}", "model.hidden_dropout=0",
                                                   "model.attention_dropout=0"])
            from gpt_ds.config import batch_layout
            layout = batch_layout(cfg, world)
            v = cfg.model.vocab_size
            base = _held_bytes()
            torch.manual_seed(0)
            engines = []
            for name, cls, conf in (("generator", ElectraForMaskedLM, generator_config(cfg, v, 0)),
                                    ("discriminator", ElectraForPreTraining, discriminator_config(cfg, v, 0))):
                model = cls(conf)
                ds = resolve_ds_config(cfg, name, layout, conf.hidden_size)
                eng, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.01), config=ds)
                engines.append((name, eng))
                del model
            x = torch.randint(5, v, (MICRO, cfg.data.seq_len), generator=torch.Generator().manual_seed(rank))
            for i in range(3):
                for name, eng in engines:
                    labels = x if name == "generator" else (x % 2)
                    loss = eng(input_ids=x, labels=labels).loss
                    eng.backward(loss)
                    del loss
                if i < 2:
                    for _, eng in engines:
                        eng.step()
            held = torch.tensor([_held_bytes() - base], dtype=torch.float64)
            dist.all_reduce(held, op=dist.ReduceOp.MAX)
            rows.append({"config": cname, "preset": preset, "world": world, "measured": int(held.item())})
            for _, eng in engines:
                eng.destroy() if hasattr(eng, "destroy") else None
            del engines, eng
            gc.collect()
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))


def estimated_states(cname: str, preset: str, world: int) -> int:
    from gpt_ds.config import load_config
    from gpt_ds.zero.memory import OPTIONS, auto_buckets, model_states
    from gpt_ds.zero.sizes import towers
    cfg = load_config("tiny", CONFIGS[cname] + [f"train.global_batch={MICRO * world}"])
    opt = next(o for o in OPTIONS if o.preset("fp32") == f"{preset}_fp32")
    return sum(model_states(t, opt, "fp32", world, **auto_buckets(t.hidden)).total for t in towers(cfg))


def activation_rows() -> list[dict]:
    import torch
    from transformers import ElectraModel

    from gpt_ds.config import load_config
    from gpt_ds.model.hf_config import discriminator_config, generator_config
    from gpt_ds.zero.sizes import encoder_activation_bytes, towers
    out = []
    for cname, overrides in CONFIGS.items():
        cfg = load_config("tiny", overrides)
        v, s = cfg.model.vocab_size, cfg.data.seq_len
        confs = {"generator": generator_config(cfg, v, 0), "discriminator": discriminator_config(cfg, v, 0)}
        for t in towers(cfg):
            for ckpt in (False, True):
                model = ElectraModel(confs[t.name]).train()
                if ckpt:
                    model.gradient_checkpointing_enable()
                seen: dict = {}

                def pack(x, seen=seen):
                    st = x.untyped_storage()
                    seen[st.data_ptr()] = st.nbytes()
                    return x
                ids = torch.randint(5, v, (MICRO, s))
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                    model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state.sum().backward()
                params = {p.untyped_storage().data_ptr() for p in model.parameters()}
                measured = sum(b for k, b in seen.items() if k not in params)
                if ckpt:  # hooks see the layer inputs plus every recomputed layer; one layer lives at a time
                    measured = None
                est = encoder_activation_bytes(t, MICRO, s, 4, checkpointing=ckpt, flash=False)
                out.append({"config": cname, "tower": t.name, "checkpointing": ckpt, "measured": measured,
                            "estimate": est})
    return [r for r in out if r["measured"] is not None]


def main() -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 4):
            out = Path(tmp) / f"w{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port",
                   str(29600 + n), __file__, "--worker", str(out)]
            p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                sys.exit(f"{n}-rank worker failed:\n{p.stderr[-3000:]}")
            rows += json.loads(out.read_text())
    for r in rows:
        r["estimate"] = estimated_states(r["config"], r["preset"], r["world"])
        r["error"] = r["estimate"] / r["measured"] - 1
        print(f"{r['config']:6} {r['preset']:24} {r['world']} ranks: measured {r['measured'] / 1e6:8.3f} MB, "
              f"estimate {r['estimate'] / 1e6:8.3f} MB, error {r['error']:+.3f}")
    acts = activation_rows()
    for a in acts:
        a["error"] = a["estimate"] / a["measured"] - 1
        print(f"{a['config']:6} {a['tower']:13} activations: measured {a['measured'] / 1e6:.3f} MB, estimate "
              f"{a['estimate'] / 1e6:.3f} MB, error {a['error']:+.3f}")

    def z3(c, n):
        return next(r["measured"] for r in rows if r["config"] == c and r["preset"] == "zero3" and r["world"] == n)
    print(json.dumps({
        "estimate_error_max": max(abs(r["error"]) for r in rows + acts),
        "state_error_max": max(abs(r["error"]) for r in rows),
        "activation_error_max": max(abs(a["error"]) for a in acts),
        "zero3_state_ratio_2_vs_1": max(z3(c, 2) / z3(c, 1) for c in CONFIGS),
        "zero3_state_ratio_4_vs_1": max(z3(c, 4) / z3(c, 1) for c in CONFIGS),
        "rows": len(rows)}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
