"""Training tokens/s of gpt_ds against a plain transformers ELECTRA step, same sizes, precision and batch, one process.

gpt_ds: the Trainer's own train_step (DeepSpeed engines, masked-only generator head, fused heads via model.kernels).
Reference: ElectraForMaskedLM over all positions + ElectraForPreTraining (embeddings shared), Gumbel-max sampling
from the masked positions' softmax, loss = gen + 50 * disc, one AdamW over both. Both are timed alternately in this
process, each round followed by a sample of this machine's 1024^2 fp32 matmul rate; speedup and MFU (gpt_ds's counted
FLOPs, gpt_ds.flops, per second over that rate) are medians of the per-round ratios (--steps rounds after one
warm-up); matmul_time_share (one profiled step) says how much of the step ATen's matmul operators take, and
matmul_rate_vs_peak how fast they run. On the CPU the attention's score and context products run inside gpt_ds's
C++ attention operators (with the softmax and dropout): their share of the step is attention_op_share, and their
FLOPs are left out of matmul_rate_vs_peak. mfu_bound_matmuls_only is the MFU the step would reach if every other
operator took no time (the MFU over the two shares).
--kernels takes a list (`auto,reference`): the first is the headline (`<preset>_speedup_vs_hf`, ...); each other one
gets `<preset>_<kernels>_*` figures and `<preset>_<first>_speedup_vs_<kernels>`, all timed in the same rounds.
GPU: `--device cuda` runs the same on CUDA (NCCL, one GPU), by default in bf16 (DeepSpeed's bf16 config; the reference
under torch.autocast) with kernels `triton,torch`; steps are timed between synchronizations and MFU is against a bf16
8192^2 matmul measured in each round (the operator shares are CPU-only). Liger-Kernel and cut-cross-entropy replace
only a loss, not a step: they are compared in bench/heads.py. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ours(preset: str, args, run_dir: str, kernels: str):
    from gpt_ds.config import load_config
    from gpt_ds.train.trainer import Trainer
    ds = f"ds_configs/zero{args.zero}_{args.precision}.json"
    cfg = load_config(preset, [f"train.global_batch={args.batch}", f"data.seq_len={args.seq_len}", "data.synthetic=true",
                               f"train.precision={args.precision}", f"deepspeed.generator={ds}",
                               f"deepspeed.discriminator={ds}", f"model.kernels={kernels}", f"run.dir={run_dir}",
                               "logging.tensorboard=false", "logging.peak_tflops=1",  # the bench measures its own
                               f"model.vocab_size={args.vocab}"])
    trainer = Trainer(cfg)
    loader = trainer.make_loader()

    from gpt_ds.train.metrics import StepStats
    stats = StepStats(trainer.device)  # as in Trainer.train(): diagnostics stay on the device between log steps

    def step():
        trainer.train_step(loader.next_step(), stats)
        trainer.step += 1
    return cfg, trainer, step, loader


def _reference(cfg, vocab: int, args):
    import contextlib

    import torch
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    from gpt_ds.model.hf_config import discriminator_config, generator_config
    dev = torch.device(args.device)
    gen = ElectraForMaskedLM(generator_config(cfg, vocab, 0)).to(dev)
    disc = ElectraForPreTraining(discriminator_config(cfg, vocab, 0)).to(dev)
    disc.electra.embeddings.word_embeddings = gen.electra.embeddings.word_embeddings
    params = {id(p): p for p in list(gen.parameters()) + list(disc.parameters())}.values()
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # transformers.Trainer's default optimizer (torch >= 2.8)
    g = torch.Generator().manual_seed(0)

    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.precision == "bf16" else \
        contextlib.nullcontext

    def step():
        ids = torch.randint(5, vocab, (args.batch, args.seq_len), generator=g).to(dev)
        pick = (torch.rand(ids.shape, generator=g) < 0.15).to(dev)
        masked = torch.where(pick, 4, ids)
        labels = torch.where(pick, ids, -100)
        with amp():
            out = gen(input_ids=masked, labels=labels)
        with torch.no_grad():
            z = out.logits[pick].float()
            u = torch.rand(z.shape, generator=g).to(dev).clamp_(1e-9, 1 - 1e-7)
            corrupted = ids.clone()
            corrupted[pick] = (z - torch.log(-torch.log(u))).argmax(-1)
        with amp():
            d = disc(input_ids=corrupted, labels=(corrupted != ids).long())
        (out.loss + 50.0 * d.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm")


ATTENTION_OPS = ("_QKVAttentionFn", "_QKVAttentionFnBackward")  # gpt_ds.kernels.encoder: products + softmax in C++


def _op_shares(step, top: int = 0) -> tuple[float, float]:
    """Shares of one gpt_ds step's operator time spent in ATen matmuls and in the C++ attention operators (the rest
    bounds what MFU can reach); with `top`, the step's `top` most expensive operators (self time, calls) go to
    stderr."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"  {e.key:<40} {e.self_cpu_time_total / 1e3:9.1f} ms {e.self_cpu_time_total / total:6.1%} "
              f"{e.count:6d} calls", file=sys.stderr)
    share = {kind: sum(e.self_cpu_time_total for e in events if e.key in keys) / total
             for kind, keys in (("mm", MATMULS), ("attention", ATTENTION_OPS))}
    return share["mm"], share["attention"]


def _timed(fn, cuda: bool) -> float:
    import torch
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(preset: str, args) -> dict:
    """Rounds of (gpt_ds step per kernels choice, reference step, matmul-rate sample): ratios are taken within a
    round, then the median, so a load change on a shared machine moves both sides of each ratio together."""
    from gpt_ds.flops import measure_matmul_flops
    cuda = args.device == "cuda"
    kernels = args.kernels.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        ours = {k: _ours(preset, args, os.path.join(tmp, k), k) for k in kernels}
        cfg, trainer = ours[kernels[0]][:2]
        ref = _reference(cfg, trainer.vocab_size, args)
        steps = {**{k: v[2] for k, v in ours.items()}, "hf": ref}
        times = {name: [] for name in (*steps, "peak")}
        for i in range(args.steps + 1):
            for name, fn in steps.items():
                sec = _timed(fn, cuda)
                if i:
                    times[name].append(sec)
            if i:
                times["peak"].append(measure_matmul_flops(repeats=15, device=args.device, precision=args.precision))
        share, attn_share = _op_shares(steps[kernels[0]], args.profile) if not cuda else (None, None)
        for v in ours.values():
            v[3].close()
    flop = trainer.flops["total"]
    tokens = args.batch * args.seq_len
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {f"{preset}_step_gflop": flop / 1e9, f"{preset}_measured_peak_gflops": med["peak"] / 1e9,
           f"{preset}_hf_tokens_per_s": tokens / med["hf"],
           f"{preset}_times_s": {k: v for k, v in times.items() if k != "peak"},
           f"{preset}_peak_gflops_per_round": [p / 1e9 for p in times["peak"]]}
    for j, k in enumerate(kernels):
        tag = preset if j == 0 else f"{preset}_{k}"
        res[f"{tag}_gpt_ds_tokens_per_s"] = tokens / med[k]
        res[f"{tag}_speedup_vs_hf"] = statistics.median(h / o for h, o in zip(times["hf"], times[k]))
        res[f"{tag}_mfu_vs_measured_peak"] = statistics.median(flop / o / p for o, p in zip(times[k], times["peak"]))
        if j:
            res[f"{preset}_{kernels[0]}_speedup_vs_{k}"] = statistics.median(
                o / f for o, f in zip(times[k], times[kernels[0]]))
    if share is not None:
        mm_flop = flop - (trainer.flops["attention"] if attn_share > 0 else 0.0)  # the C++ attention's own products
        res.update({f"{preset}_matmul_time_share": share, f"{preset}_attention_op_share": attn_share,
                    f"{preset}_matmul_rate_vs_peak": mm_flop / (share * med[kernels[0]]) / med["peak"],
                    # the MFU if every operator but the matmuls and the attention took no time at all
                    f"{preset}_mfu_bound_matmuls_only": res[f"{preset}_mfu_vs_measured_peak"] / (share + attn_share)})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,electra-small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--kernels", default=None,
                    help="model.kernels choices, comma-separated, the first the headline (default: auto on the CPU, "
                         "triton,torch on CUDA)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                    help="default: fp32 on the CPU, bf16 on CUDA")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N most expensive operators of one gpt_ds step (stderr; CPU)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.kernels = args.kernels or ("triton,torch" if cuda else "auto")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    if cuda:
        torch.cuda.set_device(0)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    res = {"batch": args.batch, "seq_len": args.seq_len, "precision": args.precision, "zero": args.zero,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "kernels": args.kernels}
    for preset in args.presets.split(","):
        res.update(measure(preset, args))
        print(json.dumps(res), file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
