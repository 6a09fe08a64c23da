"""The fused CPU kernels of cpu_ops.cpp: built once per machine type with torch's cpp_extension, and their twins.

Why a C++ extension: on the CPU every elementwise pass over an activation costs about as much as its share of the
matmuls, and torch has no fused dropout there (`bernoulli_` draws a 64-bit Mersenne-Twister value per element, and the
mask is a stored tensor the backward reads back). A counter-based hash makes dropout one pass each way with no mask
in memory. The extension is compiled on first use (about 30 s, cached under torch's extensions directory, one build
per CPU capability so nodes of different types sharing a home directory never load each other's code). Where no
compiler is available, `ops()` returns None after one warning and the callers run `dropout_twin`, which gives the same
bits (slower).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading

import torch

log = logging.getLogger(__name__)
_LEVELS = 1 << 16
_M32 = 0xFFFFFFFF
_lock = threading.Lock()
_state: dict = {}

# ATen's vectorized types pick their implementation from CPU_CAPABILITY_*, as torch's own kernels for this CPU do.
_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
                     "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
          "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]}


def ops():
    """The compiled module, or None (disabled with GPT_DS_CPU_EXT=0, or the build failed: warned once)."""
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" not in _state:
            _state["mod"] = _build()
    return _state["mod"]


def _build():
    if os.environ.get("GPT_DS_CPU_EXT", "1") == "0":
        return None
    cap = torch.backends.cpu.get_cpu_capability()
    bindir = os.path.dirname(sys.executable)  # a venv's ninja, when the venv is not activated
    if shutil.which("ninja") is None and os.path.exists(os.path.join(bindir, "ninja")):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_ops.cpp")
        return load(name=f"gpt_ds_cpu_ops_{cap.lower()}", sources=[src], verbose=False,
                    extra_cflags=["-O3", "-fopenmp", *_FLAGS.get(cap, [])], extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, a read-only cache: the twin gives the same results
        log.warning("gpt_ds: the fused CPU kernels could not be built (%s: %s); using their PyTorch twins, which are "
                    "slower. Install a C++ compiler and ninja, or set GPT_DS_CPU_EXT=0 to silence this.",
                    type(exc).__name__, _first_error(str(exc)))
        return None


def _first_error(text: str) -> str:
    """The compiler's first error line (the build log is long), else the message's first line."""
    lines = text.splitlines()
    return next((ln for ln in lines if "error" in ln.lower() and ".cpp" in ln), lines[0] if lines else "")


def dropout_params(p: float) -> tuple[int, float]:
    """(q, scale): keep when a 16-bit lane >= q, kept values times scale (so the expectation is exact)."""
    q = round(p * _LEVELS)
    return q, _LEVELS / (_LEVELS - q)


def new_seed() -> int:
    """A 64-bit seed from torch's default generator, so checkpoints and activation checkpointing replay it."""
    return int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1))


def _mix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _M32  # wraps in int64; the low 32 bits are exact
    return h ^ (h >> 16)


def keep_mask_twin(numel: int, seed: int, q: int) -> torch.Tensor:
    """cpu_ops.cpp's keep decisions in plain PyTorch (int64 arithmetic masked to 32 bits)."""
    s = seed & ((1 << 64) - 1)
    k0, k1 = s & _M32, s >> 32
    i = torch.arange(numel, dtype=torch.int64)
    hi = ((i >> 33) * 0x9E3779B9) & _M32
    h = _mix32(_mix32((i >> 1) ^ k0) ^ k1 ^ hi)
    lane = torch.where((i & 1).bool(), h >> 16, h & 0xFFFF)
    return lane >= q


def dropout_twin(x: torch.Tensor, bias: torch.Tensor | None, seed: int, q: int, scale: float) -> torch.Tensor:
    """dropout_forward's twin: computed in float32 (float64 for float64) like the kernel, returned in x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = x.to(acc) if bias is None else x.to(acc) + bias.to(acc)
    keep = keep_mask_twin(x.numel(), seed, q).view(x.shape)
    return torch.where(keep, v * scale, 0.0).to(x.dtype)


def dropout_forward(x: torch.Tensor, bias: torch.Tensor | None, seed: int, q: int, scale: float) -> torch.Tensor:
    m = ops()
    return m.dropout_forward(x, bias, seed, q, scale) if m is not None else dropout_twin(x, bias, seed, q, scale)


def dropout_backward(grad: torch.Tensor, seed: int, q: int, scale: float) -> torch.Tensor:
    m = ops()
    return m.dropout_backward(grad, seed, q, scale) if m is not None else dropout_twin(grad, None, seed, q, scale)


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed activation buffers for reuse instead of returning them to the OS.

    Why: by default glibc serves a multi-MB allocation with a fresh mmap and unmaps it on free, so every activation
    of a CPU training step page-faults its way in again: two 4 MB `empty_like` + fill took 3.6 ms instead of 0.25 ms
    here, and a masked softmax 6.2 ms instead of 2.0. Blocks up to 32 MB now come from the heap and stay mapped
    (the heap is trimmed only beyond 1 GiB free). Linux/glibc only (a no-op elsewhere); GPT_DS_MALLOC_TUNE=0 skips it.
    Returns whether the settings were applied."""
    if os.environ.get("GPT_DS_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
