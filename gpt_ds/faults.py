"""Named points where tests/faults kills a process on purpose: GPT_DS_FAULT="POINT@STEP:RANK" makes that rank SIGKILL
itself when it reaches POINT while saving step STEP, the moments a random kill almost never hits (between the
manifest and the rename, between the rename and `latest`, ...). Unset, a point costs one dictionary lookup."""
from __future__ import annotations

import os
import signal

ENV = "GPT_DS_FAULT"
POINTS = ("save.engines_written", "save.manifest_written", "save.renamed", "save.pruned")


def point(name: str, step: int, rank: int) -> None:
    spec = os.environ.get(ENV)
    if spec and spec == f"{name}@{step}:{rank}":
        os.kill(os.getpid(), signal.SIGKILL)
