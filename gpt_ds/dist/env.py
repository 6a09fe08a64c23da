"""Who am I in the job? One answer for SLURM, torchrun/deepspeed launchers and a plain single process.

Why this exists: launchers disagree on variable names, and the failures users hit are silent — every node believing
it is rank 0, or a MASTER_ADDR that falls back to localhost and hangs at the first collective. `detect_env` reads the
environment once, checks that the variables agree, and raises `GptDsError` naming the variable and the fix otherwise.

Precedence:
1. A torchrun / deepspeed launcher (RANK + WORLD_SIZE set, and the launcher's own markers, e.g. TORCHELASTIC_RUN_ID)
   wins, even inside a SLURM allocation: there SLURM_PROCID numbers the *launcher* tasks, not the ranks.
2. A SLURM job step started by `srun` (SLURM_PROCID + SLURM_NTASKS + SLURM_STEP_ID): one task per rank.
3. RANK + WORLD_SIZE without launcher markers (set by hand or by a parent that called `export_env`).
4. Otherwise a single process.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

from gpt_ds.errors import GptDsError

# The port SLURM jobs rendezvous on: PORT_BASE + job_id % PORT_SPAN, so two jobs sharing a node do not collide
# (unless their ids are PORT_SPAN apart) and every task of one job computes the same port without talking.
PORT_BASE = 15000
PORT_SPAN = 20000
DEFAULT_PORT = 29500
# The batch step ("sbatch" script itself) and the interactive/extern steps are not `srun` steps of ours.
_NON_SRUN_STEPS = {"batch", "extern", "interactive", "4294967294", "4294967291", "4294967290"}
_LAUNCHER_MARKERS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "GROUP_RANK", "CROSS_RANK")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    launcher: str  # "slurm" | "torchrun" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise GptDsError(f"environment variable {name} is not set; the launcher must set it")
        return default
    try:
        return int(raw)
    except ValueError:
        raise GptDsError(f"environment variable {name}={raw!r} is not an integer") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ('node[1-3,7],gpu-a[01-02]') as host names, in order (like
    `scontrol show hostnames`, which is used when available; this keeps tests and `srun`-less shells working)."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise GptDsError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range '{item}'")
            hosts += [f"{prefix}{str(i).zfill(len(lo))}{suffix}" for i in range(int(lo), int(hi) + 1)]
    if not hosts:
        raise GptDsError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def _tasks_per_node(spec: str, node_id: int) -> int:
    """SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE look like '2(x3),1': the count on node `node_id`."""
    counts: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise GptDsError(f"cannot read the SLURM tasks-per-node value {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if node_id >= len(counts):
        raise GptDsError(f"SLURM tasks-per-node {spec!r} lists {len(counts)} node(s) but SLURM_NODEID={node_id}")
    return counts[node_id]


def slurm_port(job_id: int) -> int:
    return PORT_BASE + job_id % PORT_SPAN


def _check_resolves(addr: str, source: str) -> None:
    try:
        socket.getaddrinfo(addr, None)
    except OSError as e:
        raise GptDsError(
            f"MASTER_ADDR {addr!r} (from {source}) does not resolve on {socket.gethostname()}: {e}. "
            "Set MASTER_ADDR to a host name or IP address every node can reach."
        ) from None


def _check(env: DistEnv) -> DistEnv:
    if env.world_size < 1:
        raise GptDsError(f"{env.launcher}: world size {env.world_size} must be at least 1")
    if not 0 <= env.rank < env.world_size:
        raise GptDsError(f"{env.launcher}: rank {env.rank} is outside 0..{env.world_size - 1} (world size)")
    if not 0 <= env.local_rank < env.local_world_size:
        raise GptDsError(
            f"{env.launcher}: local rank {env.local_rank} is outside 0..{env.local_world_size - 1} (local world size)")
    if env.local_world_size > env.world_size:
        raise GptDsError(f"{env.launcher}: local world size {env.local_world_size} > world size {env.world_size}")
    if not 0 <= env.node_rank < env.num_nodes:
        raise GptDsError(f"{env.launcher}: node rank {env.node_rank} is outside 0..{env.num_nodes - 1}")
    if not 0 < env.master_port < 65536:
        raise GptDsError(f"{env.launcher}: MASTER_PORT {env.master_port} is not a TCP port (1..65535)")
    return env


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    rank = _int(environ, "SLURM_PROCID")
    world = _int(environ, "SLURM_STEP_NUM_TASKS" if environ.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS")
    node_rank = _int(environ, "SLURM_NODEID", 0)
    local_rank = _int(environ, "SLURM_LOCALID", 0)
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise GptDsError("SLURM_PROCID is set but SLURM_JOB_NODELIST is not: run the trainer through `srun`")
    hosts = expand_nodelist(nodelist)
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        local_world = _tasks_per_node(per_node, node_rank)
    elif environ.get("SLURM_NTASKS_PER_NODE"):
        local_world = _int(environ, "SLURM_NTASKS_PER_NODE")
    else:
        local_world = max(1, world // len(hosts))
    # RANK left in the environment (e.g. exported by a user's script) must not silently disagree with SLURM's answer.
    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local_rank)):
        if environ.get(name) not in (None, "") and _int(environ, name) != value:
            raise GptDsError(
                f"SLURM says {name}={value} (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) but {name}={environ[name]} "
                f"is set on node rank {node_rank}; unset {name} in the job script or launch with torchrun instead")
    if environ.get("MASTER_ADDR"):
        addr, source = environ["MASTER_ADDR"], "MASTER_ADDR"
    else:
        addr, source = hosts[0], f"the first host of SLURM_JOB_NODELIST={nodelist}"
    if environ.get("MASTER_PORT"):
        port = _int(environ, "MASTER_PORT")
    else:
        port = slurm_port(_int(environ, "SLURM_JOB_ID", 0))
    env = _check(DistEnv(rank, world, local_rank, local_world, node_rank, len(hosts), addr, port, "slurm"))
    if env.world_size > 1:
        _check_resolves(addr, source)
    return env


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    local_rank = _int(environ, "LOCAL_RANK", 0 if world == 1 else None)
    local_world = _int(environ, "LOCAL_WORLD_SIZE", world if world == 1 else None)
    node_rank = _int(environ, "GROUP_RANK", _int(environ, "NODE_RANK", rank // max(local_world, 1)))
    num_nodes = max(1, -(-world // max(local_world, 1)))
    addr = environ.get("MASTER_ADDR", "")
    if world > 1 and not addr:
        raise GptDsError(f"WORLD_SIZE={world} but MASTER_ADDR is not set; the launcher must set it (rank {rank})")
    port = _int(environ, "MASTER_PORT", DEFAULT_PORT)
    env = _check(DistEnv(rank, world, local_rank, local_world, node_rank, num_nodes, addr or "127.0.0.1", port,
                         "torchrun"))
    if world > 1:
        _check_resolves(addr, "MASTER_ADDR")
    return env


def _is_srun_task(environ: Mapping[str, str]) -> bool:
    if environ.get("SLURM_PROCID") in (None, ""):
        return False
    step = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID"))
    return step not in (None, "") and step not in _NON_SRUN_STEPS


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """Read the launcher's variables; raise GptDsError naming the variable when they are missing or disagree."""
    has_rank = environ.get("RANK") not in (None, "") or environ.get("WORLD_SIZE") not in (None, "")
    if has_rank and any(environ.get(m) not in (None, "") for m in _LAUNCHER_MARKERS):
        return _from_torchrun(environ)
    if _is_srun_task(environ):
        return _from_slurm(environ)
    if has_rank:
        return _from_torchrun(environ)
    return DistEnv(0, 1, 0, 1, 0, 1, "127.0.0.1", _int(environ, "MASTER_PORT", DEFAULT_PORT), "single")


def export_env(env: DistEnv) -> None:
    """Set the variables torch.distributed (env:// init) and deepspeed.init_distributed read."""
    os.environ.update({
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.local_world_size),
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
    })


def deepspeed_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's JIT op builder can read it: "9.0a" / "10.0f" become "9.0" / "10.0".

    CUDA images set arch-specific names that torch accepts and DeepSpeed 0.19 does not (its FusedAdam build stops with
    `int('0a')`). The ops it builds this way (FusedAdam, CPU Adam) use no arch-specific instructions.
    """
    parts = re.split(r"[;\s,]+", value.strip())
    return ";".join(re.sub(r"^(\d+\.\d+)[a-z]", r"\1", p) for p in parts if p)


def cuda_device_for(local_rank: int, visible: int, local_world_size: int) -> int:
    """Which visible GPU a rank takes. One visible GPU: that one (sites that bind a GPU per task: --gpus-per-task=1,
    --gpu-bind=single:1, a one-device CUDA_VISIBLE_DEVICES). Otherwise the node's GPUs are shared by its ranks and
    rank i takes GPU i, which needs at least as many GPUs as local ranks."""
    if visible == 1:
        return 0
    if visible >= local_world_size and local_rank < visible:
        return local_rank
    raise GptDsError(f"local rank {local_rank} of {local_world_size} sees {visible} GPU(s) "
                     f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give each task one GPU "
                     f"(--gpus-per-task=1) or every task all of the node's GPUs, one per local rank")
