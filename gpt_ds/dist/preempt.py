"""Preemption: a signal seen by any rank stops every rank at the same step boundary.

SLURM sends USR1 ahead of the time limit (`#SBATCH --signal=B:USR1@300`, forwarded to the tasks by
slurm/pretrain.sh) and SIGTERM on preemption or `scancel`. The signal may reach one rank, some or all, at different
steps. A handler only sets a flag (doing work inside a signal handler is unsafe); at each step boundary every rank
calls `should_stop()`, one all_reduce(MAX) of that flag, so all ranks agree on the same step, save the same
checkpoint and exit with REQUEUE_EXIT_CODE, which tells the batch script to `scontrol requeue` the job.
"""
from __future__ import annotations

import signal
import sys
import time
from typing import Iterable

import torch
import torch.distributed as dist

# 75 = EX_TEMPFAIL in sysexits.h ("temporary failure; the user is invited to retry"). Not 1 (any error), 2 (our CLI's
# usage/config errors), 124 (timeout(1)), 125-127 (shell/exec failures) nor 128+N (killed by signal N).
REQUEUE_EXIT_CODE = 75


class PreemptionHandler:
    """Records USR1/TERM (by default) instead of dying; `should_stop()` turns the local flag into a global decision."""

    def __init__(self, signals: Iterable[int] = (signal.SIGUSR1, signal.SIGTERM)):
        self.signals = tuple(signals)
        self._previous: dict[int, object] = {}
        self._received: int | None = None
        self._received_at: float | None = None
        self._decided = False

    def install(self) -> None:
        """Take over the signals (main thread only, as Python requires); idempotent."""
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        # A handler never runs for a signal the process blocks, and a blocked mask is inherited through fork and exec:
        # a wrapper that blocks USR1 would turn every preemption warning into a silent kill at the time limit.
        blocked = set(signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)) & set(self.signals)
        if blocked:
            names = ", ".join(sorted(signal.Signals(s).name for s in blocked))
            print(f"gpt_ds: {names} arrived blocked from the parent process; unblocked so that preemption works",
                  file=sys.stderr, flush=True)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and frame is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt, now
        if self._received is not None:
            return  # the batch script re-sends USR1 until the step ends; say it once
        self._received, self._received_at = signum, time.monotonic()
        if frame is not None and signal.SIGUSR1 in self._previous:
            # The flag is sticky, so later USR1s carry nothing new; ignoring them keeps one that slurm/pretrain.sh
            # re-sends while Python shuts down (when CPython puts back the default action: terminate) from
            # turning exit code 75 into 138. TERM keeps its handler: a second TERM still means "die".
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        # stderr is unbuffered; a short line here helps when reading a job log after the fact
        again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        print(f"gpt_ds: received {signal.Signals(signum).name}; stopping at the next step boundary{again}",
              file=sys.stderr, flush=True)

    def requested_locally(self) -> bool:
        return self._received is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self._received).name if self._received is not None else None

    def should_stop(self) -> bool:
        """COLLECTIVE when a default process group exists: every rank must call it at the same step boundary.

        One all_reduce(MAX) of a single int over the default group (gloo: CPU tensor; nccl: tensor on the current
        CUDA device). Once True it stays True without further communication, so a caller may ask again while saving.
        """
        if self._decided:
            return True
        flag = 1 if self.requested_locally() else 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cpu")
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            t = torch.tensor([flag], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        self._decided = bool(flag)
        return self._decided
