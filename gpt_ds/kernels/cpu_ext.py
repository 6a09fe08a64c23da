"""The fused CPU kernels of cpu_ops.cpp, built once per machine type with torch's cpp_extension, and the hash's twin.

Why a C++ extension: on the CPU every elementwise pass over an activation costs about as much as its share of the
matmuls, and torch has no fused dropout there (`bernoulli_` draws a 64-bit Mersenne-Twister value per element, and the
mask is a stored tensor the backward reads back). A counter-based hash makes dropout one pass each way with no mask
in memory. The extension is compiled on first use (about 35 s, cached under torch's extensions directory, one build
per CPU capability so nodes of different types sharing a home directory never load each other's code). Where it
cannot be built, `ops()` returns None after one warning and the callers keep their plain PyTorch paths
(gpt_ds.kernels.encoder, generator_torch). `keep_mask_twin` is the hash in tensor ops, for the tests.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import threading
import time

import torch
from torch.utils.cpp_extension import _get_build_directory, get_default_build_root, load

from gpt_ds.kernels.noise import GOLDEN, MASK32, mix32
from gpt_ds.watchdog import Watchdog

log = logging.getLogger(__name__)
LEVELS = 1 << 16  # dropout resolution: 16 random bits per element
_lock = threading.Lock()
_state: dict = {}

# ATen's vectorized types pick their implementation from CPU_CAPABILITY_*, as torch's own kernels for this CPU do.
_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
                     "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
          "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]}
# No fused multiply-adds the source does not ask for: the plain loops must round as their tensor twins do (gcc fused
# dropout's `x * scale + residual` into one FMA in the AVX2 build, one ulp off the twin; ATen's vector types call
# their FMAs explicitly and are not affected).
_COMMON = ["-O3", "-fopenmp", "-ffp-contract=off"]


def ops():
    """The compiled module, or None (disabled with GPT_DS_CPU_EXT=0, or the build failed: warned once)."""
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" not in _state:
            _state["mod"] = _build()
    return _state["mod"]


STALE_LOCK_S = 900  # a build takes well under a minute here; a lock this old belongs to a build that was killed


def clear_stale_build_locks(max_age_s: float = STALE_LOCK_S) -> list[str]:
    """Remove build locks that a killed compile left in torch's extensions folder (ours and DeepSpeed's ops).

    torch's cpp_extension waits on such a lock with no time limit and no message, so one build killed halfway (a
    preempted job, Ctrl-C) made every later run on that home directory hang silently. A lock older than `max_age_s`
    has no live builder behind it; it is removed with a line saying so. Returns the removed paths."""
    # ROOT/<python_cuda tag>/<name>/lock by default; TORCH_EXTENSIONS_DIR/<name>/lock when that is set
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    removed = []
    for path in glob.glob(os.path.join(root, "*", "*", "lock")) + glob.glob(os.path.join(root, "*", "lock")):
        try:
            if time.time() - os.path.getmtime(path) > max_age_s:
                os.remove(path)
                removed.append(path)
                print(f"gpt_ds: removed {path}, a build lock left {max_age_s / 60:.0f}+ minutes ago by a build that "
                      f"was killed (torch would wait on it for ever)", file=sys.stderr, flush=True)
        except OSError:
            pass  # another process removed it first, or it is not ours to remove
    return removed


def _build():
    if os.environ.get("GPT_DS_CPU_EXT", "1") == "0":
        return None
    clear_stale_build_locks()
    cap = torch.backends.cpu.get_cpu_capability()
    bindir = os.path.dirname(sys.executable)  # a venv's ninja, when the venv is not activated
    if shutil.which("ninja") is None and os.path.exists(os.path.join(bindir, "ninja")):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    try:
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_ops.cpp")
        name = f"gpt_ds_cpu_ops_{cap.lower()}"
        lock = os.path.join(_get_build_directory(name, False), "lock")
        # torch waits on another build's lock without a word or a limit: say so after a minute, stop after the age
        # at which a lock counts as stale (the next start removes it)
        with Watchdog(int(os.environ.get("RANK", "0")), float(os.environ.get("GPT_DS_BUILD_WARN_S", 60)),
                      float(os.environ.get("GPT_DS_BUILD_TIMEOUT_S", STALE_LOCK_S + 60))) as watchdog:
            watchdog.enter(f"building or loading the C++ CPU kernels ({name})",
                           why=f"a first build takes a minute or two; much longer means another process holds "
                               f"{lock} (building them, or killed while it did: a lock {STALE_LOCK_S // 60} minutes "
                               f"old is removed at the next start; remove it by hand if no build is running, or set "
                               f"GPT_DS_CPU_EXT=0)")
            return load(name=name, sources=[src], verbose=False,
                        extra_cflags=[*_COMMON, *_FLAGS.get(cap, [])], extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, a read-only cache: the plain PyTorch paths still work
        log.warning("gpt_ds: the fused CPU kernels could not be built (%s: %s); CPU training uses the slower plain "
                    "PyTorch paths. Install a C++ compiler (g++) and ninja, or set GPT_DS_CPU_EXT=0 to silence this.",
                    type(exc).__name__, _first_error(str(exc)))
        return None


def _first_error(text: str) -> str:
    """The compiler's first error line (the build log is long), else the message's first line."""
    lines = text.splitlines()
    return next((ln for ln in lines if "error" in ln.lower() and ".cpp" in ln), lines[0] if lines else "")


def dropout_params(p: float) -> tuple[int, float]:
    """(q, scale): keep when a 16-bit lane >= q, kept values times scale (so the expectation is exact)."""
    q = round(p * LEVELS)
    return q, LEVELS / (LEVELS - q)


def new_seed() -> int:
    """A 64-bit seed from torch's default generator, so checkpoints and activation checkpointing replay it."""
    return int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1))


def keep_mask_twin(numel: int, seed: int, q: int) -> torch.Tensor:
    """cpu_ops.cpp's keep decisions in plain PyTorch (int64 arithmetic masked to 32 bits)."""
    s = seed & ((1 << 64) - 1)
    k0, k1 = s & MASK32, s >> 32
    i = torch.arange(numel, dtype=torch.int64)
    hi = ((i >> 33) * GOLDEN) & MASK32
    h = mix32(mix32((i >> 1) ^ k0) ^ k1 ^ hi)  # the finaliser the Gumbel noise uses
    lane = torch.where((i & 1).bool(), h >> 16, h & 0xFFFF)
    return lane >= q


def dropout_twin(x: torch.Tensor, bias: torch.Tensor | None, seed: int, q: int, scale: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """dropout_forward's twin: computed in float32 (float64 for float64) like the kernel, returned in x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = x.to(acc) if bias is None else x.to(acc) + bias.to(acc)
    keep = keep_mask_twin(x.numel(), seed, q).view(x.shape)
    out = torch.where(keep, v * scale, 0.0)
    return (out if residual is None else out + residual.to(acc)).to(x.dtype)

