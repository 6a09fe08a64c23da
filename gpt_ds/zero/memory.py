"""Model-state bytes one rank holds for one engine, by ZeRO stage, offload and precision - partition by partition.

Follows what DeepSpeed 0.19 allocates (checked against real engines by bench/zero_memory.py):
- stage 0: params + grads + Adam moments (8 B/param) (+ fp32 master and fp32 grads under bf16/fp16);
- stage 1/2: the full flat params; a flat fp32 master partition (a copy even in fp32) and the moments on 1/N; the
  gradients of every parameter that touches this rank's partition (a big embedding straddling partitions counts
  whole - partitions are equal slices of each param group's flat buffer);
- stage 3: each parameter sliced in N (ceil), parameters at or under the persistence threshold also kept whole; the
  gradient, master and moment partitions likewise on 1/N; a reduce bucket; the gathered working set while computing;
- offload_optimizer moves master, moments and an fp32 gradient partition to CPU memory; offload_param moves the
  parameter partitions too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpt_ds.zero.sizes import Tower

STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Option:
    """One way to run an engine: a ZeRO stage and what it offloads; `preset` names the ds_configs/ file stem."""
    stage: int
    offload: str = "none"  # none | optimizer | param (param implies optimizer, as the preset does)

    def preset(self, precision: str) -> str:
        base = f"zero{self.stage}" if self.offload == "none" else f"zero3_offload_{self.offload}"
        return f"{base}_{precision}"

    @property
    def label(self) -> str:
        return f"ZeRO-{self.stage}" + ("" if self.offload == "none" else f" + {self.offload} offload")


OPTIONS = (Option(0), Option(1), Option(2), Option(3), Option(3, "optimizer"), Option(3, "param"))


@dataclass
class States:
    gpu: dict = field(default_factory=dict)  # steady bytes per rank: params, grads, optimizer, buffers
    cpu: dict = field(default_factory=dict)
    gpu_transient: dict = field(default_factory=dict)  # alive only while computing / stepping

    @property
    def gpu_steady(self) -> int:
        return sum(self.gpu.values())

    @property
    def cpu_total(self) -> int:
        return sum(self.cpu.values())

    @property
    def total(self) -> int:
        """Everything one rank owns between backward and step (what bench/zero_memory.py measures)."""
        return self.gpu_steady + self.cpu_total


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _touching_partition(sizes: tuple, world: int) -> int:
    """Largest, over ranks, sum of the sizes of the params that overlap that rank's slice of the flat group."""
    total = sum(sizes)
    part = _ceil(total, world)
    best = 0
    for r in range(world):
        lo, hi, start, got = r * part, (r + 1) * part, 0, 0
        for n in sizes:
            if start < hi and start + n > lo:
                got += n
            start += n
        best = max(best, got)
    return best


def model_states(t: Tower, opt: Option, precision: str, world: int, *, reduce_bucket: int, prefetch_bucket: int,
                 persistence: int) -> States:
    k = 4 if precision == "fp32" else 2  # bytes of a parameter / gradient element
    mixed = precision != "fp32"
    psi = t.params
    st = States()
    if opt.stage == 0:
        st.gpu["params"] = k * psi
        st.gpu["grads"] = k * psi
        st.gpu["optimizer"] = (8 + (8 if mixed else 0)) * psi  # moments (+ fp32 master and fp32 grads)
        return st
    if opt.stage in (1, 2):
        part = sum(_ceil(sum(g), world) for g in t.groups if g)
        st.gpu["params"] = k * psi
        st.gpu["grads"] = k * sum(_touching_partition(g, world) for g in t.groups if g)
        st.gpu["buffers"] = k * reduce_bucket
        _partitioned_optimizer(st, opt, part, mixed)
        return st
    sizes = [n for g in t.groups for n in g]
    part = sum(_ceil(n, world) for n in sizes)
    persistent = sum(n for n in sizes if n <= persistence) if world > 1 else 0
    params = {"params": k * part + k * persistent}
    if opt.offload == "param":
        st.cpu["params"] = k * part
        st.gpu["params"] = k * persistent
    else:
        st.gpu.update(params)
    st.gpu["grads"] = k * part
    st.gpu["buffers"] = k * reduce_bucket
    _partitioned_optimizer(st, opt, part, mixed)
    st.gpu_transient["gathered params"] = k * (t.largest_module + prefetch_bucket)
    return st


def auto_buckets(hidden: int) -> dict:
    """The values gpt_ds fills for "auto" (gpt_ds.train.ds_config), scaled from the engine's hidden size."""
    return {"reduce_bucket": hidden * hidden, "prefetch_bucket": int(0.9 * hidden * hidden),
            "persistence": 10 * hidden}


def _partitioned_optimizer(st, opt, part: int, mixed: bool) -> None:
    """fp32 master + Adam moments of this rank's partition: on the GPU, or in CPU memory when offloaded."""
    states = {"master": 4 * part, "moments": 8 * part}
    if opt.offload == "none":
        st.gpu["optimizer"] = sum(states.values())
        if mixed:
            st.gpu_transient["fp32 grads at step"] = 4 * part
    else:
        st.cpu.update(states, **{"fp32 grads": 4 * part})
