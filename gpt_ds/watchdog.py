"""A rank that waits too long says so, then gives up: the answer to a stopped or lost peer.

A collective (ZeRO-3's gathers, the step's all-reduce, a checkpoint barrier) blocks until every rank joins. When one
rank is stopped, swapped out or on a dead node, the others would wait in silence for the process group's timeout
(30 minutes, then a traceback from deep inside torch). The trainer names what it is doing (`enter`); a thread here
prints one line once that has lasted `warn_s`, and after `timeout_s` ends the process with HUNG_EXIT_CODE and a line
saying what to do. The launcher then stops the other ranks.
"""
from __future__ import annotations

import os
import sys
import threading
import time

HUNG_EXIT_CODE = 3  # docs/reliability.md: a rank gave up waiting; resume from the last checkpoint
COLLECTIVE = "waiting for another rank in a collective?"


class Watchdog:
    def __init__(self, rank: int, warn_s: float, timeout_s: float, poll_s: float = 0.5):
        self.rank, self.warn_s, self.timeout_s, self.poll_s = rank, warn_s, timeout_s, poll_s
        self._what, self._why, self._since, self._warned = "", COLLECTIVE, time.monotonic(), False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def enter(self, what: str, why: str = COLLECTIVE) -> None:
        """From now on the rank is doing `what` (the clock restarts); `why` is the likely cause a slow one prints."""
        with self._lock:
            self._what, self._why, self._since, self._warned = what, why, time.monotonic(), False

    def start(self) -> "Watchdog":
        if self.timeout_s > 0 or self.warn_s > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True, name=f"gpt_ds-watchdog-r{self.rank}")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                what, why, since, warned = self._what, self._why, self._since, self._warned
                waited = time.monotonic() - since
                if self.warn_s > 0 and waited >= self.warn_s:
                    self._warned = True
            if self.timeout_s > 0 and waited >= self.timeout_s:
                _say(f"rank {self.rank}: {what} has not finished after {waited:.0f} s (limit {self.timeout_s:g} s, "
                     f"train.watchdog_timeout_s); giving up with exit code {HUNG_EXIT_CODE}. "
                     + ("Another rank is probably stopped or lost; once all nodes are healthy, resume from the last "
                        "checkpoint (--resume auto)" if why == COLLECTIVE else why))
                os._exit(HUNG_EXIT_CODE)
            if self.warn_s > 0 and waited >= self.warn_s and not warned:
                _say(f"rank {self.rank}: {what} has taken {waited:.0f} s so far; {why} (gives up after "
                     f"{self.timeout_s:g} s)")

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def peer_lost(e: BaseException) -> bool:
    """A collective that failed because another rank died (gloo's and NCCL's wording), not because of this rank."""
    text = str(e)
    return any(k in text for k in ("Connection closed by peer", "Connection reset by peer", "remote worker",
                                   "NCCL communicator was aborted", "Broken pipe"))


def _say(msg: str) -> None:
    print(f"gpt_ds: {msg}", file=sys.stderr, flush=True)
