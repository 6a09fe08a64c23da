"""Check `gpt-ds estimate` against real gpt_ds training steps on the CPU (gloo), 1, 2 and 4 ranks.

For `tiny` and a small config (ELECTRA-Small widths, 4 layers), each ZeRO option (fp32 presets) and, for ZeRO-0 and
ZeRO-3, with activation checkpointing too, every rank runs gpt_ds's own Trainer (`train_step` on synthetic data:
masking, the masked-only generator head, sampling, the discriminator, both engines' backward and step) for three
steps and measures:

- peak: the most CPU tensor bytes alive at once during the steps (what torch.cuda.max_memory_allocated says on a GPU),
  less those alive before the Trainer was built. Measured with torch.profiler's memory events, whose "total
  allocated" is c10's count of live CPU allocator bytes, with c10's caffe2_report_cpu_memory_usage flag set so that
  frees on other threads (gloo's) are counted too (see count_cpu_frees_on_every_thread). CPU only: the engines'
  "GPU" and offloaded states share this memory, so the estimate compared is the peak of both together;
- states: after the last backward, before either engine steps, the bytes of every distinct tensor storage reachable
  from the two engines (parameters, gradients, partitions, optimizer states, buffers).

The largest rank is compared with `gpt_ds.zero.estimate` (states; peak over the phases of a step, `on_gpu=False`:
the chunked-PyTorch heads that "auto" runs here). The encoder activations of both towers, as gpt_ds builds them, are
measured with saved-tensor hooks (one process) against the estimate.

    DS_ACCELERATOR=cpu .venv/bin/python bench/zero_memory.py     # ~5 min on 2 cores; last line: one JSON object
    ... --worlds 2 --only tiny:zero3:0,tiny:zero0:1 --save rows.json   # a subset; --rows rows.json re-compares
    ... --set 'deepspeed.overrides={zero_optimization: {reduce_bucket_size: 5000000}}'   # other buckets, both sides
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
CKPT_PRESETS = ("zero0", "zero3")  # also run with train.activation_checkpointing=true
RUNS = [(c, p, False) for c in CONFIGS for p in OPTION_PRESETS] + [(c, p, True) for c in CONFIGS
                                                                      for p in CKPT_PRESETS]
MARK_BYTES = 1 << 10
PHASES = tuple(f"{e}.{m}" for e in ("generator", "discriminator") for m in ("forward", "backward", "step"))
EXTRA = json.loads(os.environ.get("ZERO_MEMORY_SET", "[]"))  # --set, handed to the ranks
STEPS = 3  # optimizer steps per run: Adam's moments exist from the first step, the peak repeats from the second


def _tensor_storages(roots) -> dict:
    """{storage pointer: bytes} of every tensor reachable from `roots` through containers and object attributes
    (not through functions, modules or classes, which would reach the whole program)."""
    import types

    import torch
    skip = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.ModuleType, type, types.FrameType,
            types.CodeType)
    seen_ids, out, todo = set(), {}, list(roots)
    while todo:
        o = todo.pop()
        if id(o) in seen_ids or isinstance(o, skip):
            continue
        seen_ids.add(id(o))
        if isinstance(o, torch.Tensor):
            if o.device.type != "meta":
                try:
                    st = o.untyped_storage()
                    if st.data_ptr():
                        out[st.data_ptr()] = max(out.get(st.data_ptr(), 0), st.nbytes())
                except (RuntimeError, NotImplementedError):
                    pass
            todo.extend(x for x in (o.grad, getattr(o, "__dict__", None)) if x is not None)
            continue
        todo.extend(gc.get_referents(o))
    return out


def _run(cname: str, preset: str, ckpt: bool, world: int, rank: int, tmp: str) -> dict:
    """One Trainer, STEPS steps under the memory profiler: the peak of live CPU tensor bytes, and the bytes the two
    engines hold after the last backward (before either steps)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from gpt_ds.config import load_config
    from gpt_ds.train.metrics import StepStats
    from gpt_ds.train.trainer import Trainer
    cfg = load_config("tiny", _overrides(cname, preset, ckpt, world, EXTRA) + [
        "data.synthetic=true", f"run.dir={tmp}/{cname}-{preset}-{ckpt}", "logging.tensorboard=false",
        "logging.peak_tflops=1", "data.prefetch=0"])  # prefetch 0: batches built on this thread, which is profiled
    held = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        mark = torch.empty(MARK_BYTES, dtype=torch.uint8)  # its event's total, less its size: the bytes before
        trainer = Trainer(cfg, rank=rank, world_size=world)
        eng = trainer.engines
        loader = trainer.make_loader()  # data.prefetch=0 above: built and masked on this thread
        stats = StepStats(trainer.device)
        for phase in PHASES:
            name, meth = phase.split(".")
            _label(getattr(eng, name), meth, phase, held if phase == "generator.step" else None,
                   (eng.generator, eng.discriminator))
        with record_function("gpt_ds.steps"):
            for _ in range(STEPS):
                trainer.train_step(loader.next_step(), stats)
                trainer.step += 1
        loader.close()
    steps, phases, totals = _timeline(prof)
    base = totals[0][1] - MARK_BYTES
    peak, at = max(((total, t) for t, total in totals if steps[0] <= t <= steps[1]), default=(base, 0))
    peak -= base
    where = [name[6:] for a, b, name in phases if a <= at <= b]

    def high_points(step_phases) -> dict:
        return {name[6:]: max((total for t, total in totals if a <= t <= b), default=base) - base
                for a, b, name in step_phases}
    # the last step's phases, for the tables in docs/; the first step's, where what only a first step allocates shows
    each, first = high_points(phases[-len(PHASES):]), high_points(phases[:len(PHASES)])
    # ZeRO-3's reduce bucket: allocated once per engine, the same size on any number of ranks (not partitioned)
    bucket = sum(e.zero_reduce_bucket_size() * 4 for e in (eng.generator, eng.discriminator)
                 if e.zero_optimization_stage() == 3)
    for e in (eng.generator, eng.discriminator):
        e.destroy()
    del trainer, eng, e, prof, mark
    gc.collect()
    return {"config": cname, "preset": preset, "checkpointing": ckpt, "world": world, "rank": rank, "peak": peak,
            "peak_in": where[-1] if where else "-", "states": held["bytes"], "phases": each, "first_step_phases": first,
            "live_before": base, "zero3_bucket_bytes": bucket}


def _timeline(prof) -> tuple:
    """(start, end) of the steps, the named phases, and (time, total allocated CPU bytes) at every allocation."""
    steps, phases, totals = None, [], []

    def walk(events):
        nonlocal steps
        for e in events:
            extra = e.extra_fields
            if type(extra).__name__ == "_ExtraFields_Allocation":
                if extra.device.type == "cpu":
                    totals.append((e.start_time_ns, extra.total_allocated))
                continue
            if e.name == "gpt_ds.steps":
                steps = (e.start_time_ns, e.end_time_ns)
            elif e.name.startswith("phase:"):
                phases.append((e.start_time_ns, e.end_time_ns, e.name))
            walk(e.children)
    walk(prof.profiler.kineto_results.experimental_event_tree())
    totals.sort()
    return steps, sorted(phases), totals


def count_cpu_frees_on_every_thread() -> None:
    """Make c10's CPU allocator account every allocation and free, on any thread (its caffe2 flag, read-only in
    Python). The profiler alone counts only what the profiled thread does: a tensor it allocated and a gloo thread
    freed would stay counted for ever. The profiler's "total allocated" is then the process's live CPU tensor bytes."""
    import ctypes

    import torch
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libc10.so"))
    ctypes.c_bool.in_dll(lib, "FLAGS_caffe2_report_cpu_memory_usage").value = True


def _label(engine, meth: str, name: str, held, engines) -> None:
    """Name the engine's forward/backward/step in the profile; at the last generator step, count the states."""
    from torch.profiler import record_function
    fn = getattr(engine, meth)
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if held is not None and calls[0] == STEPS:  # both backwards done, neither engine stepped
            held["bytes"] = sum(_tensor_storages(list(engines)).values())
        with record_function(f"phase:{name}"):
            return fn(*a, **k)
    setattr(engine, meth, wrapped)


def _overrides(cname: str, preset: str, ckpt: bool, world: int, extra: list[str] = ()) -> list[str]:
    f = f"ds_configs/{preset}_fp32.json"
    # kernels=torch: what "auto" runs on the CPU, named so that the estimate counts the chunked heads' tiles
    return CONFIGS[cname] + [f"train.global_batch={MICRO * world}", f"deepspeed.generator={f}",
                             f"deepspeed.discriminator={f}", "model.kernels=torch",
                             f"train.activation_checkpointing={str(ckpt).lower()}", *extra]


def worker(out_path: str) -> None:
    import deepspeed
    import torch.distributed as dist
    count_cpu_frees_on_every_thread()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        only = os.environ.get("ZERO_MEMORY_ONLY", "")
        for cname, preset, ckpt in RUNS:
            if only and f"{cname}:{preset}:{int(ckpt)}" not in only.split(","):
                continue
            mine = _run(cname, preset, ckpt, world, rank, tmp)
            every = [None] * world
            dist.all_gather_object(every, mine)
            top = max(every, key=lambda r: r["peak"])
            rows.append(dict(top, states=max(r["states"] for r in every), peak_rank=top.pop("rank"), set=EXTRA))
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))


def estimated_states(cname: str, preset: str, world: int, extra: list[str] = ()) -> int:
    from gpt_ds.config import DS_CONFIG_DIR, load_config
    from gpt_ds.ds_config import engine_buckets
    from gpt_ds.zero.memory import OPTIONS, model_states
    from gpt_ds.zero.sizes import towers
    cfg = load_config("tiny", CONFIGS[cname] + [f"train.global_batch={MICRO * world}", *extra])
    opt = next(o for o in OPTIONS if o.preset("fp32") == f"{preset}_fp32")
    return sum(model_states(t, opt, "fp32", world, **engine_buckets(cfg, t.name, t.hidden, DS_CONFIG_DIR /
                                                                    f"{preset}_fp32.json")).total for t in towers(cfg))


def saved_activation_bytes(encoder, ids) -> int:
    """Bytes of the distinct storages autograd saves in one forward of `encoder`, parameters aside."""
    import torch
    seen: dict = {}

    def pack(x):
        st = x.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        encoder(ids, attention_mask=torch.ones_like(ids))
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
    return sum(b for k, b in seen.items() if k not in params)


def activation_rows() -> list[dict]:
    """The encoders gpt_ds trains (its dropout and attention, train mode) against the estimate, one process."""
    import torch

    from gpt_ds.config import load_config
    from gpt_ds.train.engines import build_models
    from gpt_ds.zero.sizes import cpu_kernels_active, encoder_activation_bytes, towers
    out = []
    for cname, overrides in CONFIGS.items():
        cfg = load_config("tiny", overrides + ["model.kernels=torch"])
        v, s, m = cfg.model.vocab_size, cfg.data.seq_len, cfg.model
        gen, disc = build_models(cfg, v, 0, seed=0)
        encoders = {"generator": gen.mlm.electra.train(), "discriminator": disc.pt.electra.train()}
        ids = torch.randint(5, v, (MICRO, s), generator=torch.Generator().manual_seed(0))
        for t in towers(cfg):
            est = encoder_activation_bytes(t, MICRO, s, 4, checkpointing=False, flash=False,
                                           hidden_dropout=m.hidden_dropout > 0,
                                           attention_dropout=m.attention_dropout > 0,
                                           cpu_kernels=cpu_kernels_active(on_gpu=False))
            out.append({"config": cname, "tower": t.name, "measured": saved_activation_bytes(encoders[t.name], ids),
                        "estimate": est})
    return out


def estimated(r: dict) -> dict:
    """The estimate for a measured row: model states per rank, and the peak of one memory holding both what a GPU
    would and what offload keeps in CPU memory (on these CPU runs they are the same memory)."""
    from gpt_ds.config import load_config
    from gpt_ds.zero.estimate import estimate
    cfg = load_config("tiny", _overrides(r["config"], r["preset"], r["checkpointing"], r["world"], r.get("set", [])))
    est = estimate(cfg, 1, r["world"], 1 << 40, on_gpu=False)
    row = next(o for o in est["options"] if o["preset"] == f"{r['preset']}_fp32"
               and o["activation_checkpointing"] == r["checkpointing"])
    return {"states": estimated_states(r["config"], r["preset"], r["world"], r.get("set", [])),
            "peak": row["peak_one_memory_bytes"]}


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--only", default="", help="config:preset:ckpt,... (e.g. tiny:zero3:0) to run a subset")
    ap.add_argument("--save", help="write the measured rows here (JSON)")
    ap.add_argument("--rows", help="compare the rows saved by --save instead of running")
    ap.add_argument("--set", action="append", default=[],
                    help="a config override for every run and its estimate (repeatable), e.g. larger buckets: "
                         "'deepspeed.overrides={zero_optimization: {reduce_bucket_size: 5000000}}'")
    args = ap.parse_args(argv)
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               ZERO_MEMORY_SET=json.dumps(args.set))
    rows = []
    if args.rows:
        rows = json.loads(Path(args.rows).read_text())
    else:
        keys = [f"{c}:{p}:{int(k)}" for c, p, k in RUNS]
        keys = [k for k in keys if k in args.only.split(",")] if args.only else keys
        with tempfile.TemporaryDirectory() as tmp:
            for n in map(int, args.worlds.split(",")):
                # one fresh set of ranks per row: an engine's memory that DeepSpeed frees only later (13 MB of a
                # ZeRO-1 `tiny` pair, freed during the next row's steps) would otherwise lower the next row's peak
                for key in keys:
                    out = Path(tmp) / f"w{n}-{key.replace(':', '-')}.json"
                    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port",
                           str(29600 + n), __file__, "--worker", str(out)]
                    p = subprocess.run(cmd, env=dict(env, ZERO_MEMORY_ONLY=key), cwd=ROOT, capture_output=True,
                                       text=True, timeout=1200)
                    if p.returncode != 0:
                        sys.exit(f"{n}-rank worker ({key}) failed:\n{p.stderr[-3000:]}")
                    rows += json.loads(out.read_text())
        if args.save:
            Path(args.save).write_text(json.dumps(rows))
    for r in rows:
        est = estimated(r)
        r["states_estimate"], r["peak_estimate"] = est["states"], est["peak"]
        r["states_error"] = None if r["checkpointing"] else est["states"] / r["states"] - 1
        r["peak_error"] = est["peak"] / r["peak"] - 1
        print(f"{r['config']:6} {r['preset']:24}{' ckpt' if r['checkpointing'] else '     '} {r['world']} ranks: "
              f"states {r['states'] / 1e6:8.3f} MB (est {est['states'] / 1e6:8.3f}, {r['states_error'] or 0:+.3f}); "
              f"peak {r['peak'] / 1e6:8.3f} MB in {r['peak_in']:22} (est {est['peak'] / 1e6:8.3f}, "
              f"{r['peak_error']:+.3f})")
    acts = activation_rows()
    for a in acts:
        a["error"] = a["estimate"] / a["measured"] - 1
        print(f"{a['config']:6} {a['tower']:13} activations: measured {a['measured'] / 1e6:.3f} MB, estimate "
              f"{a['estimate'] / 1e6:.3f} MB, error {a['error']:+.3f}")
    state_errors = [abs(r["states_error"]) for r in rows if r["states_error"] is not None]
    peak_errors = [abs(r["peak_error"]) for r in rows]

    def z3(c, n, less=0):
        r = next(r for r in rows if r["config"] == c and r["preset"] == "zero3" and r["world"] == n
                 and not r["checkpointing"])
        return r["states"] - (r.get("zero3_bucket_bytes", 0) if less else 0)
    worlds = {r["world"] for r in rows}
    ratios = {}
    for n in (2, 4):
        if {1, n} <= worlds:
            ratios[f"zero3_state_ratio_{n}_vs_1"] = max(z3(c, n) / z3(c, 1) for c in {r["config"] for r in rows})
            # what partitioning does to the rest: the states less the two engines' reduce buckets
            ratios[f"zero3_partitioned_ratio_{n}_vs_1"] = max(z3(c, n, 1) / z3(c, 1, 1)
                                                              for c in {r["config"] for r in rows})
    print(json.dumps({
        "estimate_error_max": max(state_errors + peak_errors + [abs(a["error"]) for a in acts]),
        "state_error_max": max(state_errors, default=None), "peak_error_max": max(peak_errors),
        "activation_error_max": max(abs(a["error"]) for a in acts), **ratios, "rows": len(rows),
        "set": sorted({x for r in rows for x in r.get("set", [])})}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
