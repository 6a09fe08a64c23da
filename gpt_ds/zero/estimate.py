"""`gpt-ds estimate CONFIG [key=value ...] --nodes N --gpus-per-node G --gpu-mem 80GB [--json]`.

Per-GPU memory of both engines (generator and discriminator) under every ZeRO stage / offload, with their activations
at the configured micro-batch (with and without activation checkpointing) and the fused heads' workspace; FLOPs per
step (generator + discriminator + sampling) and the step time at a stated MFU; the options that fit, fastest first,
and the ds_configs/ preset to use. Assumptions are printed with the figures: they are estimates, not measurements.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from gpt_ds.config import DS_CONFIG_DIR, Config, ConfigError, batch_layout, load_config
from gpt_ds.ds_config import engine_buckets
from gpt_ds.flops import step_flops
from gpt_ds.kernels import encoder_fast_paths
from gpt_ds.zero.memory import OPTIONS, Option, model_states
from gpt_ds.zero.sizes import (ASSUMED_VOCAB, activation_bytes, cpu_kernels_active, head_impl, head_workspace,
                               recompute_bytes, towers, vocab_size)


GIB = 1 << 30


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"--gpu-mem '{text}': give a size such as 80GB, 40GiB or 24G")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def estimate(cfg: Config, nodes: int, gpus_per_node: int, gpu_mem: int, *, mfu: float = 0.4,
             peak_tflops: float = 312.0, comm_gbs: float = 25.0, pcie_gbs: float = 12.0, headroom: float = 0.9,
             flash: bool | None = None, on_gpu: bool = True) -> dict:
    """Everything `gpt-ds estimate` prints, as a dict (bytes, seconds, FLOPs).

    `on_gpu=False` estimates a run whose engines live in CPU memory (the CPU runs that check this estimate): "auto"
    heads run their chunked-PyTorch path, attention with dropout its math path, and offloaded parameters are used
    where they lie; each row's `peak_one_memory_bytes` then adds what the engines hold in CPU memory."""
    world = nodes * gpus_per_node
    layout = batch_layout(cfg, world)
    prec = cfg.train.precision
    act = 4 if prec == "fp32" else 2
    if flash is None:  # CUDA: SDPA's flash / memory-efficient kernels (fp32 counted on the math path, to be safe);
        # CPU: gpt_ds's math attention with dropout, SDPA's fused CPU kernel without
        flash = prec != "fp32" if on_gpu else cfg.model.attention_dropout == 0
    v = vocab_size(cfg, default=ASSUMED_VOCAB)  # a preset without a tokenizer ("tiny") still gets an estimate
    vocab_assumed = cfg.model.vocab_size <= 0 and not cfg.data.tokenizer
    tws = towers(cfg, v)
    flops = step_flops(cfg, v)
    compute_s = flops["total"] / (world * peak_tflops * 1e12 * mfu)
    rows = []
    # transformers' MPNet has no activation checkpointing (the config refuses it): never recommend it there
    mpnet = "mpnet" in {cfg.model.tower_arch(t, cfg.objective.kind) for t in ("generator", "discriminator")}
    checkpointing = (False,) if mpnet else (False, True)
    for opt in OPTIONS:
        for ckpt in checkpointing:
            rows.append(_option_row(cfg, tws, opt, ckpt, prec, act, world, gpus_per_node, layout, gpu_mem * headroom,
                                    flash, compute_s, comm_gbs, pcie_gbs, on_gpu))
    order = {o.label: i for i, o in enumerate(OPTIONS)}  # equal times: the simpler option first
    rows.sort(key=lambda r: (not r["fits"], round(r["step_time_s"], 4), order[r["option"]], r["peak_gpu_bytes"]))
    fitting = [r for r in rows if r["fits"]]
    best = fitting[0] if fitting else None
    return {
        "world_size": world, "nodes": nodes, "gpus_per_node": gpus_per_node, "gpu_mem_bytes": gpu_mem,
        "usable_gpu_bytes": int(gpu_mem * headroom), "precision": prec,
        "layout": {"global_batch": layout.global_batch, "micro_batch": layout.micro_batch,
                   "grad_accum": layout.grad_accum, "seq_len": cfg.data.seq_len},
        "engines": {t.name: {"params": t.params, "largest_module_params": t.largest_module, "hidden": t.hidden,
                             "layers": t.layers} for t in tws},
        "vocab_size": v, "flops_per_step": flops, "assumptions": {"vocab_size_assumed": vocab_assumed, "mfu": mfu, "peak_tflops_per_gpu": peak_tflops,
                                                 "comm_GBps_per_gpu": comm_gbs, "pcie_GBps": pcie_gbs,
                                                 "flash_attention": flash, "headroom": headroom,
                                                 "overlap": "none (communication and offload add to compute)"},
        "options": rows,
        "recommended": None if best is None else {"preset": f"ds_configs/{best['preset']}.json",
                                                  "option": best["option"],
                                                  "activation_checkpointing": best["activation_checkpointing"]},
    }


def _option_row(cfg, tws, opt: Option, ckpt: bool, prec, act, world, gpn, layout, usable, flash, compute_s,
                comm_gbs, pcie_gbs, on_gpu=True) -> dict:
    engines = {}
    per = []
    comm_bytes = pcie_bytes = 0.0
    k = 4 if prec == "fp32" else 2
    impl = head_impl(cfg.model.kernels, on_gpu)
    fast = cpu_kernels_active(on_gpu) and encoder_fast_paths(cfg.model.kernels, cfg.model.encoder_kernels)
    for t in tws:
        buckets = engine_buckets(cfg, t.name, t.hidden, DS_CONFIG_DIR / f"{opt.preset(prec)}.json")
        st = model_states(t, opt, prec, world, **buckets, on_gpu=on_gpu)
        a = activation_bytes(t, cfg, layout.micro_batch, act, checkpointing=ckpt, flash=flash, cpu_kernels=fast)
        ws = head_workspace(t, cfg, layout.micro_batch, act, impl)
        again = recompute_bytes(t, cfg, layout.micro_batch, act, checkpointing=ckpt, flash=flash, cpu_kernels=fast)
        engines[t.name] = {"gpu": st.gpu, "cpu": st.cpu, "gpu_transient": st.gpu_transient, "step_gpu": st.step_gpu,
                           "backward_gpu": st.backward_gpu, "buckets": buckets,
                           "released_at_step": list(st.released), "activations": a,
                           "head_workspace": ws, "recomputed_layer": again}
        per.append((t.name, st, a, {"forward": ws["forward"], "backward": ws["backward"] + again}))
        ring = (world - 1) / world
        psi = t.params
        kept = sum(st.gpu_kept.values()) / (k * psi)  # share the backward finds still gathered (no second fetch)
        if opt.stage == 3:
            comm_bytes += (3 - kept) * k * psi * ring * layout.grad_accum  # gather fwd (+ bwd) + reduce-scatter
        elif opt.stage == 2:
            comm_bytes += k * psi * ring * (layout.grad_accum + 1)  # reduce-scatter per micro + gather after step
        else:
            comm_bytes += 2 * k * psi * ring  # all-reduce once per step
        if opt.offload != "none":
            pcie_bytes += 2 * k * psi / world  # grads down, updated params up
        if opt.offload == "param":
            pcie_bytes += (2 - kept) * k * psi / world * layout.grad_accum  # partitions fetched (forward, backward)
    phases = peak_phases(per, layout.grad_accum)
    top = max(phases, key=lambda p: p["gpu"])
    one = max(phases, key=lambda p: p["gpu"] + p["cpu"])
    steady = sum(st.gpu_steady for _, st, _, _ in per)
    cpu = sum(st.cpu_total for _, st, _, _ in per)
    compute = compute_s * (4 / 3 if ckpt else 1)  # checkpointing re-runs the forward
    step = compute + comm_bytes / (comm_gbs * 1e9) + pcie_bytes / (pcie_gbs * 1e9)
    return {"option": opt.label, "preset": opt.preset(prec), "activation_checkpointing": ckpt,
            "peak_gpu_bytes": int(top["gpu"]), "peak_phase": top["phase"],
            "peak_one_memory_bytes": int(one["gpu"] + one["cpu"]),
            "model_state_gpu_bytes": int(steady), "activation_bytes": int(sum(a for _, _, a, _ in per)),
            "transient_gpu_bytes": int(top["transient"]), "cpu_bytes_per_node": int(cpu * gpn),
            "fits": top["gpu"] <= usable, "step_time_s": step, "compute_s": compute, "engines": engines,
            "phases": phases}


def peak_phases(per: list, grad_accum: int) -> list[dict]:
    """Bytes alive at the high point of each phase of gpt_ds's training step, in the Trainer's order: generator
    forward, discriminator forward, generator backward (its start, then its end, where gradients are on their way to
    a reduction), discriminator backward (likewise), generator step, discriminator step.

    `per`: (name, States, saved activation bytes, {"forward", "backward"} workspace: the head's, and in the backward
    the layer that activation checkpointing recomputes) per engine, generator first. A phase holds the persistent
    states; the activations, and the parameters ZeRO-3 keeps gathered, of every engine whose backward has not run;
    the gradients no step has freed yet (with gradient accumulation every engine's, carried between micro-batches);
    and its own transients: the head's workspace and ZeRO-3's gathering while computing, ZeRO-1/2's reduce bucket
    through the backward, the reduction's buffers as a backward ends, the fp32 gradient copy while stepping. `gpu` is
    device memory; `cpu` what the engines hold in CPU memory meanwhile (offload).
    """
    persistent = sum(st.gpu_persistent for _, st, _, _ in per)
    cpu = sum(st.cpu_total for _, st, _, _ in per)
    accumulating = grad_accum > 1
    out = []

    def add(phase, states, acts, transient):
        out.append({"phase": phase, "gpu": states + acts + transient, "states": states, "activations": acts,
                    "transient": transient, "cpu": cpu})

    def acts(engines):
        return sum(a for _, _, a, _ in engines)

    def kept(engines):
        return sum(sum(st.gpu_kept.values()) for _, st, _, _ in engines)

    def grads(engines):
        return sum(st.gpu_released for _, st, _, _ in engines)
    carried = grads(per) if accumulating else 0
    for i, (name, st, _, ws) in enumerate(per):
        computing = sum(st.gpu_transient.values())
        add(f"{name} forward", persistent + carried, acts(per[:i + 1]), kept(per[:i + 1]) + ws["forward"] + computing)
    for i, (name, st, _, ws) in enumerate(per):
        done = carried or grads(per[:i])  # engines whose backward has run hold their gradients until their step
        bucket = sum(st.backward_gpu.values())
        add(f"{name} backward", persistent + done, acts(per[i:]), kept(per[i:]) + ws["backward"]
            + sum(st.gpu_transient.values()) + bucket)
        add(f"{name} backward end", persistent + (carried or grads(per[:i + 1])), acts(per[i + 1:]),
            kept(per[i + 1:]) + sum(st.end_of_backward.values()))
    for i, (name, st, _, _) in enumerate(per):
        add(f"{name} step", persistent + grads(per[i:]), 0, sum(st.step_gpu.values()))
    return out


# ------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (tiny, electra-small, ...) or a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.global_batch=256")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-mem", default="80GB", help="memory per GPU, e.g. 80GB, 40GiB (default 80GB)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the step time")
    p.add_argument("--peak-tflops", type=float, default=312.0, help="peak dense TFLOP/s per GPU at the precision")
    p.add_argument("--comm-gbs", type=float, default=25.0, help="collective bandwidth per GPU, GB/s")
    p.add_argument("--pcie-gbs", type=float, default=12.0, help="host<->GPU bandwidth per GPU for offload, GB/s")
    p.add_argument("--headroom", type=float, default=0.9, help="share of GPU memory a plan may use")
    p.add_argument("--json", action="store_true", help="print the whole estimate as one JSON object")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary to estimate with when the config has neither model.vocab_size nor data.tokenizer "
                        f"(default {ASSUMED_VOCAB}, BERT's)")


def _gib(b: float) -> str:
    return f"{b / GIB:8.2f}"


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.vocab_size is not None and cfg.model.vocab_size <= 0:
        if args.vocab_size < 1:
            raise ConfigError(f"--vocab-size {args.vocab_size}: must be >= 1")
        cfg.model.vocab_size = args.vocab_size
    est = estimate(cfg, args.nodes, args.gpus_per_node, parse_bytes(args.gpu_mem), mfu=args.mfu,
                   peak_tflops=args.peak_tflops, comm_gbs=args.comm_gbs, pcie_gbs=args.pcie_gbs,
                   headroom=args.headroom)
    if args.json:
        print(json.dumps(est))
        return 0 if est["recommended"] else 1
    lay, f = est["layout"], est["flops_per_step"]
    print(f"{args.config}: {est['world_size']} GPUs ({args.nodes} x {args.gpus_per_node}), {est['precision']}, "
          f"micro-batch {lay['micro_batch']} x accum {lay['grad_accum']} x seq {lay['seq_len']}, "
          f"GPU {est['gpu_mem_bytes'] / GIB:.1f} GiB (plans may use {est['usable_gpu_bytes'] / GIB:.1f})")
    if est["assumptions"]["vocab_size_assumed"]:
        print(f"  vocabulary: {est['vocab_size']} assumed (neither model.vocab_size nor data.tokenizer is set; set "
              f"either for the real figure)")
    z3 = next(r for r in est["options"] if r["option"] == "ZeRO-3")
    for name, e in est["engines"].items():
        b = z3["engines"][name]["buckets"]  # what the rows assume: the presets with this config's overrides
        print(f"  {name}: {e['params'] / 1e6:.2f} M params, largest module {e['largest_module_params'] / 1e6:.2f} M; "
              f"buckets (elements) reduce {b['reduce_bucket']:,}, ZeRO-3 prefetch {b['prefetch_bucket']:,}, "
              f"persistence {b['persistence']:,}")
    print(f"  FLOPs/step: generator {f['generator']:.3g} + discriminator {f['discriminator']:.3g} + sampling "
          f"{f['sampling']:.3g} = {f['total']:.3g}; at MFU {args.mfu} of {args.peak_tflops} TFLOP/s per GPU")
    print(f"\n  {'option':<28}{'ckpt':>5}{'states':>9}{'activ':>9}{'transnt':>9}{'peak':>9}  {'peak during':<23}"
          f"{'CPU/node':>9}{'step s':>9}  fits  preset   (GiB per GPU)")
    for r in est["options"]:
        print(f"  {r['option']:<28}{'yes' if r['activation_checkpointing'] else 'no':>5}"
              f"{_gib(r['model_state_gpu_bytes'])} {_gib(r['activation_bytes'])} {_gib(r['transient_gpu_bytes'])} "
              f"{_gib(r['peak_gpu_bytes'])}  {r['peak_phase']:<22}{_gib(r['cpu_bytes_per_node'])} "
              f"{r['step_time_s']:8.3f}  {'yes ' if r['fits'] else 'no  '}  {r['preset']}")
    rec = est["recommended"]
    if rec is None:
        print("\nnothing fits: lower train.micro_batch (raise train.grad_accum), add GPUs, or shorten data.seq_len")
        return 1
    print(f"\nrecommended: {rec['preset']} ({rec['option']}"
          f"{', with activation checkpointing' if rec['activation_checkpointing'] else ''}); set "
          f"deepspeed.generator and deepspeed.discriminator to it"
          f"{' and train.activation_checkpointing=true' if rec['activation_checkpointing'] else ''}")
    mine = current_row(cfg, est)
    if mine is not None and mine["preset"] != Path(rec["preset"]).stem:
        print(f"the config's own choice, {mine['preset']} ({mine['option']}): "
              + (f"fits too (peak {mine['peak_gpu_bytes'] / GIB:.2f} GiB per GPU, step {mine['step_time_s']:.3f} s "
                 f"vs {_row_of(est, rec)['step_time_s']:.3f} s); keep it for a larger model or smaller GPUs, "
                 f"where what the recommendation replicates stops fitting" if mine["fits"] else
                 "does not fit: change it"))
    return 0


def current_row(cfg: Config, est: dict) -> dict | None:
    """The estimate's row for the ds_config the generator engine is set to (presets only; None for other files)."""
    stem = Path(cfg.deepspeed.generator).stem
    for r in est["options"]:
        if r["preset"] == stem and r["activation_checkpointing"] == cfg.train.activation_checkpointing:
            return r
    return None


def _row_of(est: dict, rec: dict) -> dict:
    return next(r for r in est["options"] if r["preset"] == Path(rec["preset"]).stem
                and r["activation_checkpointing"] == rec["activation_checkpointing"])
