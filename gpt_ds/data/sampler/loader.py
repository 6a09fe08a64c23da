"""StepLoader: this rank's micro-batches, step by step, prepared ahead in a background thread.

Rank r at step s, micro-batch a reads global sample numbers  s*G + a*(M*W) + r*M + arange(M)  (G = global batch,
M = micro batch, W = data-parallel world size): the ranks' slices of a step are disjoint and their union is the global
batch [s*G, (s+1)*G), whatever W is. Batches are pure functions of the sample numbers, so prefetching never changes
them, and resuming at step s (start_step=s) on any world size gives the same samples in the same order. Each batch
carries its sample numbers ("sample_numbers"), and `transform` (the trainer's masking, itself a pure function of them)
runs in the background thread too, off the training loop's critical path.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from gpt_ds.errors import GptDsError


def step_sample_numbers(step: int, micro: int, *, global_batch: int, micro_batch: int, world_size: int,
                        rank: int) -> np.ndarray:
    start = step * global_batch + micro * (micro_batch * world_size) + rank * micro_batch
    return np.arange(start, start + micro_batch, dtype=np.int64)


class StepLoader:
    def __init__(self, dataset, *, global_batch: int, micro_batch: int, grad_accum: int, world_size: int, rank: int,
                 start_step: int = 0, prefetch: int = 2, transform=None):
        if micro_batch * grad_accum * world_size != global_batch:
            raise GptDsError(f"global batch {global_batch} != micro batch {micro_batch} x grad_accum {grad_accum} x "
                             f"{world_size} ranks; fix train.global_batch / train.micro_batch / train.grad_accum")
        if not 0 <= rank < world_size:
            raise GptDsError(f"rank {rank} is outside the world size {world_size}")
        if start_step < 0:
            raise GptDsError(f"start step {start_step} must be >= 0")
        self.dataset, self.transform = dataset, transform
        self.G, self.M, self.A, self.W, self.rank = global_batch, micro_batch, grad_accum, world_size, rank
        self.step = start_step          # the step next_step() returns next
        self.prefetch = max(0, int(prefetch))
        self.wait_s = 0.0               # time next_step() spent waiting for the background thread
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._stop = threading.Event()
        self._thread = None
        if self.prefetch:
            self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True,
                                            name=f"gpt_ds-loader-r{rank}")
            self._thread.start()

    def sample_numbers(self, step: int) -> list[np.ndarray]:
        return [step_sample_numbers(step, a, global_batch=self.G, micro_batch=self.M, world_size=self.W,
                                    rank=self.rank) for a in range(self.A)]

    def build(self, step: int) -> list[dict]:
        out = []
        for numbers in self.sample_numbers(step):
            batch = self.dataset.batch(numbers)
            batch["sample_numbers"] = torch.from_numpy(numbers)
            out.append(self.transform(batch) if self.transform is not None else batch)
        return out

    def _produce(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self.build(step), None)
            except BaseException as e:  # handed to the consumer, raised there
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def next_step(self) -> list[dict]:
        """The grad_accum micro-batches of this rank for the next step."""
        if self._thread is None:
            out = self.build(self.step)
        else:
            t0 = time.perf_counter()
            step, out, err = self._queue.get()
            self.wait_s += time.perf_counter() - t0
            if err is not None:
                self.close()
                raise err
            assert step == self.step, (step, self.step)
        self.step += 1
        return out

    @property
    def consumed_samples(self) -> int:
        return self.step * self.G

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
