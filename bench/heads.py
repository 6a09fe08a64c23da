"""Benchmark the two heads: the bounded-memory paths against the full-logits reference (and, on a GPU, Liger-Kernel
and cut-cross-entropy when installed).

CPU (default): generator head at N=16384, E=256, V=30522 and discriminator head at N=16384, H=256, `torch` vs
`reference`. Each variant runs in its own fresh subprocess: peak extra memory = the process's resident-set high-water
mark (VmHWM, reset through /proc/self/clear_refs after the inputs exist) minus the resident set at that moment, on the
first full-size forward + backward; then --repeats timed steps of it and of the reference, alternating in that process (the
machine's load hits both alike); medians. The reference generator allocates
several N x V tensors (~16 GB here): a pilot at N/8 sizes it, and N is lowered (and reported) if memory is short.
GPU: `--device cuda` times triton / torch / reference / Liger / CCE in one process (bf16), with CUDA's allocator
peak, TFLOP/s on 6*N*E*V against a measured bf16 matmul peak; accuracy against the full-logits reference run in
float64 (bf16 at the bench's size, and fp32 + bf16 of both heads at N=4096). Each part runs guarded: one that fails
is reported as `<part>_error` and the others still run (a device lease is short).
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _inputs(head: str, n: int, e: int, v: int, dtype, device="cpu", seed=0):
    import torch
    g = torch.Generator(device="cpu").manual_seed(seed)
    if head == "gen":
        h = torch.randn(n, e, generator=g) * 0.5
        w = torch.randn(v, e, generator=g) * 0.05  # ~ a tied embedding early in training: flat-ish softmax
        b = torch.zeros(v)
        t = torch.randint(0, v, (n,), generator=g)
        leaves = [x.to(device, dtype).requires_grad_() for x in (h, w, b)]
        return leaves, t.to(device)
    x = torch.randn(n, e, generator=g)
    w1, b1 = torch.randn(e, e, generator=g) / e ** 0.5, torch.zeros(e)
    w2, b2 = torch.randn(1, e, generator=g) / e ** 0.5, torch.zeros(1)
    y = torch.randint(0, 2, (n,), generator=g)
    return [p.to(device, dtype).requires_grad_() for p in (x, w1, b1, w2, b2)], y.to(device)


def _step(head: str, impl: str, leaves, labels):
    from gpt_ds.kernels import discriminator_head, generator_head
    for p in leaves:
        p.grad = None
    if head == "gen":
        out = generator_head(leaves[0], leaves[1], leaves[2], labels, seed=1, impl=impl)
    else:
        out = discriminator_head(*leaves, labels, impl=impl)
    out.loss.backward()
    return out


def worker(args) -> dict:
    """One variant in this (fresh) process: memory on the first full-size step, then timed repeats."""
    import torch
    head, impl = args.worker.split(":")
    if args.threads:
        torch.set_num_threads(args.threads)
    e = args.e if head == "gen" else args.h
    small, labels_s = _inputs(head, 64, e, min(args.v, 512), torch.float32)
    _step(head, impl, small, labels_s)  # load kernels and thread pools outside the measurement
    leaves, labels = _inputs(head, args.n, e, args.v, torch.float32)
    del small, labels_s
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    t0 = time.perf_counter()
    _step(head, impl, leaves, labels)
    first = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    res = {"variant": args.worker, "n": args.n, "peak_extra_bytes": peak, "first_s": first}
    if args.against:  # timing side by side, alternating, so both see the same machine load
        other = f"{head}:{args.against}"
        times = {args.worker: [], other: []}
        for _ in range(args.repeats):
            for name in (other, args.worker):
                t0 = time.perf_counter()
                _step(head, name.split(":")[1], leaves, labels)
                times[name].append(time.perf_counter() - t0)
        res.update(times_s=times, median_s={k: statistics.median(v) for k, v in times.items()})
    return res


def _spawn(variant: str, args, n: int, repeats: int = 0, against: str = "") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--n", str(n), "--e", str(args.e),
           "--v", str(args.v), "--h", str(args.h), "--repeats", str(repeats), "--against", against,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(res), file=sys.stderr)
    return res


def _available() -> int:
    return _status_meminfo("MemAvailable")


def _status_meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def run_cpu(args) -> dict:
    res = {"device": "cpu", "cpus": os.cpu_count(), "threads": args.threads or "default"}
    # generator: size the reference from a pilot at N/8, lower N if this machine cannot hold it
    pilot = _spawn("gen:reference", args, args.n // 8)
    per_row = pilot["peak_extra_bytes"] / (args.n // 8)
    budget = _available() - args.margin_gb * 2 ** 30
    n = args.n if per_row * args.n <= budget else int(budget / per_row) // 1024 * 1024
    for head, size, e in (("gen", n, args.e), ("disc", args.n, args.h)):
        ref = _spawn(f"{head}:reference", args, size)
        tor = _spawn(f"{head}:torch", args, size, args.repeats, against="reference")
        med = tor["median_s"]
        res.update({f"{head}_n": size, f"{head}_width": e, f"{head}_ref_peak_mb": ref["peak_extra_bytes"] / 2 ** 20,
                    f"{head}_torch_peak_mb": tor["peak_extra_bytes"] / 2 ** 20,
                    f"{head}_ref_median_s": med[f"{head}:reference"], f"{head}_torch_median_s": med[f"{head}:torch"],
                    f"{head}_head_mem_ratio": tor["peak_extra_bytes"] / ref["peak_extra_bytes"],
                    f"{head}_head_time_ratio": med[f"{head}:torch"] / med[f"{head}:reference"]})
    res["gen_v"] = args.v
    return res


# ----- GPU ------------------------------------------------------------------------------------------------------------

def _device_time(fn, device: str, warmup=2, iters=10) -> float:
    """Median seconds of fn: CUDA events on a GPU; the wall clock elsewhere (the CPU dry run of the GPU bench)."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device != "cuda":
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def _device_peak_mb(fn, device: str) -> float | None:
    """CUDA's allocator peak above what was allocated before fn, in MB; None off the GPU."""
    import torch
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def _grad_rel_err(leaves, refs) -> float:
    return max(float((p.grad.double() - r).abs().max() / r.abs().max().clamp(min=1e-30)) for p, r in zip(leaves, refs))


def _float64_grads(head: str, leaves, labels):
    """Loss and gradients of the plain full-logits head (gpt_ds.kernels.reference) in float64 on the same device."""
    import torch
    from gpt_ds.kernels.reference import discriminator_head_reference, generator_head_reference
    x64 = [p.detach().double().requires_grad_() for p in leaves]
    if head == "gen":
        loss, _, _ = generator_head_reference(*x64, labels, temperature=1.0, seed=1, disallow_correct=False,
                                              row_ids=torch.arange(len(labels), device=labels.device),
                                              ignore_index=-100)
    else:
        loss, _ = discriminator_head_reference(*x64, labels)
    loss.backward()
    return float(loss.detach()), [p.grad for p in x64]


def _accuracy(head: str, impl: str, leaves, labels) -> dict:
    """|loss - float64| and the worst gradient's max relative error of `impl` on these inputs; for the generator also
    the share of rows where the other fused path samples the same token."""
    out = _step(head, impl, leaves, labels)
    loss64, refs = _float64_grads(head, leaves, labels)
    res = {"loss_abs_err": abs(float(out.loss.detach()) - loss64), "grad_rel_err": _grad_rel_err(leaves, refs)}
    if head == "gen":
        other = _step(head, "torch" if impl == "triton" else "triton", leaves, labels)
        res["samples_equal_other_path"] = float((out.sampled == other.sampled).float().mean())
    return res


def _section(res: dict, name: str, fn) -> None:
    """One part of the GPU run; a failure is recorded under `name` and the other parts still run."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - a one-shot device run reports every part it can
        import traceback
        traceback.print_exc()
        res[f"{name}_error"] = f"{exc.__class__.__name__}: {exc}"[:300]


def run_device(args, device: str = "cuda") -> dict:
    """The GPU bench. device="cpu" is its dry run (tests, with Triton's interpreter: fp32 figures only mean
    something there) so that a short device lease is not spent on a slip in this code."""
    import torch
    from gpt_ds.flops import measure_matmul_flops
    torch.backends.cuda.matmul.allow_tf32 = False
    n, e, v = args.n, args.e, args.v
    timed = {"warmup": min(2, args.iters), "iters": args.iters}
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
           "gen_n": n, "gen_e": e, "gen_v": v,
           "bf16_matmul_peak_tflops": measure_matmul_flops(n=None if device == "cuda" else 256, device=device,
                                                           precision="bf16", repeats=20) / 1e12}
    leaves, t = _inputs("gen", n, e, v, torch.bfloat16, device=device)
    fns = {impl: (lambda impl=impl: _step("gen", impl, leaves, t)) for impl in ("triton", "torch", "reference")}

    def external(fn):
        import inspect
        # cut-cross-entropy 25.1 takes no bias: it is then timed without one (a little less work than the others)
        kw = {"bias": leaves[2]} if "bias" in inspect.signature(fn).parameters else {}
        res[f"{getattr(fn, '__module__', 'fn').split('.')[0]}_has_bias"] = bool(kw)

        def run():
            for p in leaves:
                p.grad = None
            out = fn(leaves[0], leaves[1], t, **kw)
            (out[0] if isinstance(out, tuple) else out).backward()
        return run

    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as liger
        fns["liger"] = external(liger)
    except Exception as exc:  # noqa: BLE001 - optional comparison
        res["liger"] = f"not run: {exc.__class__.__name__}: {exc}"[:200]
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
        fns["cce"] = external(cce)
    except Exception as exc:  # noqa: BLE001
        res["cce"] = f"not run: {exc.__class__.__name__}: {exc}"[:200]
    flop = 6 * n * e * v

    for name, fn in fns.items():
        def one(name=name, fn=fn):
            sec = _device_time(fn, device, **timed)
            res[f"gen_{name}_ms"] = sec * 1e3
            res[f"gen_{name}_tflops"] = flop / sec / 1e12
            res[f"gen_{name}_peak_mb"] = _device_peak_mb(fn, device)
        _section(res, f"gen_{name}", one)
    if "gen_triton_ms" in res:
        res["gen_triton_frac_of_peak"] = res["gen_triton_tflops"] / res["bf16_matmul_peak_tflops"]
        for other in ("liger", "cce"):
            if f"gen_{other}_ms" in res:
                res[f"gen_triton_speedup_vs_{other}"] = res[f"gen_{other}_ms"] / res["gen_triton_ms"]
    # bf16 at the bench's size, then fp32 and bf16 of both heads at a smaller N; all against float64
    _section(res, "gen_accuracy", lambda: res.update(
        {f"gen_triton_{k}": x for k, x in _accuracy("gen", "triton", leaves, t).items()}))
    del leaves, fns
    acc_n = min(4096, n)
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).split(".")[1]
        for head, width in (("gen", e), ("disc", args.h)):
            _section(res, f"{head}_{tag}", lambda head=head, width=width, dtype=dtype, tag=tag: res.update(
                {f"{head}_triton_{tag}_{k}": x for k, x in _accuracy(
                    head, "triton", *_inputs(head, acc_n, width, v, dtype, device=device, seed=3)).items()}))
    if device == "cuda":
        torch.cuda.empty_cache()

    def disc_timing():
        dl, y = _inputs("disc", n, args.h, 0, torch.bfloat16, device=device)
        for impl in ("triton", "torch", "reference"):
            res[f"disc_{impl}_ms"] = _device_time(lambda impl=impl: _step("disc", impl, dl, y), device, **timed) * 1e3
            res[f"disc_{impl}_peak_mb"] = _device_peak_mb(lambda impl=impl: _step("disc", impl, dl, y), device)
        x, w1 = dl[0].detach(), dl[1].detach()
        d = torch.randn_like(x)
        three = _device_time(lambda: (x @ w1.t(), d @ w1, d.t() @ x), device, **timed)
        four = _device_time(lambda: (x @ w1.t(), x @ w1.t(), d @ w1, d.t() @ x), device, **timed)
        res.update(disc_gemms3_ms=three * 1e3, disc_gemms4_ms=four * 1e3,
                   disc_triton_vs_gemms3=res["disc_triton_ms"] / (three * 1e3),
                   disc_triton_vs_gemms4=res["disc_triton_ms"] / (four * 1e3))
    _section(res, "disc_timing", disc_timing)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--e", type=int, default=256)
    ap.add_argument("--v", type=int, default=30522)
    ap.add_argument("--h", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed (reference, torch) pairs, alternating")
    ap.add_argument("--iters", type=int, default=10, help="GPU: timed runs of each variant (median), after 2 warm-ups")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default); on a "
                    "shared, loaded machine 1 avoids OpenMP stalls that punish many small ops")
    ap.add_argument("--against", default="", help=argparse.SUPPRESS)
    ap.add_argument("--margin-gb", type=float, default=4.0, help="memory left to others when sizing the reference")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.device == "cuda":
        res = run_device(args)
    else:
        res = run_cpu(args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
