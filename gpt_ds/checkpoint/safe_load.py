"""A checkpoint is untrusted input: every file of it is read with torch's weights-only unpickler, DeepSpeed's own
loaders included.

DeepSpeed's loaders (engine.load_checkpoint, zero_to_fp32, the universal-checkpoint converter) call
`torch.load(..., weights_only=False)`, which runs whatever a crafted pickle names. `weights_only_loads()` routes
`torch.load` through `load()` for the length of such a call: tensors, plain containers and the DeepSpeed classes
its optimizer files hold (`allowed_globals`) are allowed, anything else is refused with the file named. A truncated or corrupt
file is named too, instead of a zip-reader traceback.
"""
from __future__ import annotations

import contextlib
import pickle
import threading
from pathlib import Path

import torch

from gpt_ds.errors import GptDsError

_TORCH_LOAD = torch.load
_LOCK = threading.RLock()


def allowed_globals() -> list:
    """What DeepSpeed writes into a ZeRO optimizer file besides tensors and plain values: its stage, loss scalers and
    (ZeRO-1/2) the named tuple that locates each parameter's fragment in the flat partition."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def load(f, *args, **kwargs):
    """torch.load, weights only, with the file named in every error."""
    kwargs.pop("weights_only", None)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _TORCH_LOAD(f, *args, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln),
                   str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise GptDsError(f"{f}: refused to load: it names code or a class a checkpoint never holds ({why}). "
                         f"Checkpoints are read as data only; if this file came from elsewhere, do not trust it") \
            from None
    except (RuntimeError, EOFError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "PytorchStreamReader" in text or "zip" in text.lower() or isinstance(e, EOFError):
            raise GptDsError(f"{f}: unreadable ({text}): the file is truncated or corrupt; resume from an earlier "
                             f"step (--resume PATH)") from None
        raise


@contextlib.contextmanager
def weights_only_loads():
    """Inside: every torch.load (DeepSpeed's included) is `load()`."""
    with _LOCK:
        previous = torch.load
        torch.load = load
        try:
            yield
        finally:
            torch.load = previous


def verify_files(step_dir) -> int:
    """Read every .pt file of a step folder as data only (memory-mapped: the pickles are read, the tensors are not),
    before any rank starts: a refused file stops the launch with one message instead of one rank failing inside
    DeepSpeed's collective load while the others wait. Returns the number of files read."""
    files = sorted(Path(step_dir).rglob("*.pt"))
    for path in files:
        load(path, map_location="cpu", mmap=True)
    return len(files)
