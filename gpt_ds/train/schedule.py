"""Linear warmup then linear decay to min_lr_ratio at max_steps (ELECTRA's schedule)."""
from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    frac = min(1.0, max(0.0, (step - warmup_steps) / span))
    return max(min_lr_ratio, 1.0 - frac * (1.0 - min_lr_ratio))


def make_scheduler(optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup_steps, max_steps, min_lr_ratio))
