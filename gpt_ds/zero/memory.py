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

When they live, for the peak: stage 0-2 free their gradients at the step (`released`); stage 3 keeps its gradient
partition. Stage 1/2's reduce bucket (two with overlap_comm) is allocated at the backward's first gradient and freed
as the backward ends (`backward_gpu`; stage 1 frees it before reducing its whole gradients, stage 2 after its last
bucket); stage 3's is allocated once, with the engine. ZeRO-3 never gathers more than the tower it computes, however
large the prefetch bucket. The step itself allocates (`step_gpu`): stage 1-3 an fp32 gradient for the flat partition
it updates (stage 3: one sub-group at a time). The optimizers of every preset update in place: torch's fused AdamW
(the fp32 presets: gpt_ds fills "fused": true next to "torch_adam") and DeepSpeed's FusedAdam / CPU Adam
(bf16/fp16); torch's default AdamW would add one or two temporaries the size of what it steps at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpt_ds.zero.sizes import Tower

ALLREDUCE_BUCKET = 500_000_000  # DeepSpeed's allreduce_bucket_size default (elements)


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
    gpu: dict = field(default_factory=dict)  # bytes per rank held after backward: params, grads, optimizer, buffers
    cpu: dict = field(default_factory=dict)
    gpu_transient: dict = field(default_factory=dict)  # alive only while computing (forward / backward)
    released: tuple = ()  # keys of `gpu` freed at the step (alive from the backward to the step)
    step_gpu: dict = field(default_factory=dict)  # allocated by the optimizer step, then freed
    gpu_kept: dict = field(default_factory=dict)  # held from this engine's forward until its backward
    end_of_backward: dict = field(default_factory=dict)  # gradients on their way to a reduction, as backward ends
    backward_gpu: dict = field(default_factory=dict)  # alive from this engine's first gradient to its backward's end

    @property
    def gpu_released(self) -> int:
        return sum(self.gpu.get(k, 0) for k in self.released)

    @property
    def gpu_persistent(self) -> int:
        """Held between steps, whatever the phase."""
        return self.gpu_steady - self.gpu_released

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
                 persistence: int, sub_group: int = 10**9, max_live: int = 10**9, reuse_distance: int = 10**9,
                 overlap_comm: bool = False, on_gpu: bool = True) -> States:
    """Bucket and ZeRO-3 sizes in elements, as the ds_config says them (gpt_ds.ds_config.engine_buckets);
    `on_gpu=False` for engines whose "device" is the CPU (the runs that check this estimate), where there is nothing
    to fetch for offloaded parameters."""
    k = 4 if precision == "fp32" else 2  # bytes of a parameter / gradient element
    mixed = precision != "fp32"
    psi = t.params
    st = States()
    if opt.stage == 0:
        st.gpu["params"] = k * psi
        st.gpu["grads"] = k * psi
        st.gpu["optimizer"] = (8 + (8 if mixed else 0)) * psi  # moments (+ fp32 master and fp32 grads)
        st.released = ("grads",)
        if world > 1:  # all-reduced through flat copies of up to allreduce_bucket_size (5e8) elements
            st.end_of_backward["all-reduce buffer"] = k * min(psi, ALLREDUCE_BUCKET)
        return st
    if opt.stage in (1, 2):
        parts = [_ceil(sum(g), world) for g in t.groups if g]
        part = sum(parts)
        st.gpu["params"] = k * psi
        st.gpu["grads"] = k * sum(_touching_partition(g, world) for g in t.groups if g)
        bucket = k * reduce_bucket * (2 if overlap_comm else 1)
        st.backward_gpu["reduce bucket"] = bucket
        st.released = ("grads",)
        if opt.stage == 1:  # whole gradients until the backward's end, then reduced into the partitions (the bucket
            st.end_of_backward["full grads"] = k * psi  # is freed first, as the backward's epilogue ends)
        else:  # each gradient whole until it is copied into the bucket; the last bucket reduced as the backward ends
            st.end_of_backward["a full grad"] = k * t.largest_param
            st.end_of_backward["reduce bucket"] = bucket
        _partitioned_optimizer(st, opt, part)
        st.step_gpu["fp32 flat gradient"] = 4 * part
        if mixed:  # each group flattened in bf16/fp16 first, then copied to fp32
            st.step_gpu["flat group gradient"] = k * max(parts)
        return st
    sizes = [n for g in t.groups for n in g]
    part = sum(_ceil(n, world) for n in sizes)
    sub = max(min(sub_group, sum(_ceil(n, world) for n in g)) for g in t.groups if g)  # largest sub-group stepped
    persistent = sum(n for n in sizes if n <= persistence) if world > 1 else 0
    params = {"params": k * part + k * persistent}
    if opt.offload == "param":
        st.cpu["params"] = k * part
        st.gpu["params"] = k * persistent
    else:
        st.gpu.update(params)
    st.gpu["grads"] = k * part
    st.gpu["buffers"] = k * reduce_bucket
    _partitioned_optimizer(st, opt, part)
    st.gpu_transient["gathered params"] = k * min(t.largest_module + prefetch_bucket, t.params)
    st.end_of_backward["a full grad"] = k * t.largest_param
    if world > 1 or (opt.offload == "param" and on_gpu):  # (one CPU rank computes on its partitions in place)
        st.gpu_kept["gathered params"] = k * _kept_gathered(t, persistent if world > 1 else 0, max_live,
                                                            reuse_distance)
    if opt.offload == "none":
        st.step_gpu["fp32 sub-group gradient"] = 4 * sub
        if mixed:  # flattened in bf16/fp16 first, then copied to fp32
            st.step_gpu["flat sub-group gradient"] = k * sub
    return st


def _kept_gathered(t: Tower, persistent: int, max_live: int, reuse_distance: int) -> int:
    """Parameters ZeRO-3 leaves gathered between a module's forward and its backward: it frees a parameter after use
    only if its next use is more than stage3_max_reuse_distance parameters away (at most about 2 x the tower's size
    for the first layer: the rest of the forward, then the backward down to it), and it keeps at most
    stage3_max_live_parameters gathered. With the presets' 1e9 and 1e9 that is every non-persistent parameter."""
    gathered = t.params - persistent
    if reuse_distance < 2 * t.params:
        gathered = min(gathered, reuse_distance // 2)
    return min(gathered, max_live)


def _partitioned_optimizer(st, opt, part: int) -> None:
    """fp32 master + Adam moments of this rank's partition: on the GPU, or in CPU memory when offloaded."""
    states = {"master": 4 * part, "moments": 8 * part}
    if opt.offload == "none":
        st.gpu["optimizer"] = sum(states.values())
    else:
        st.cpu.update(states, **{"fp32 grads": 4 * part})
