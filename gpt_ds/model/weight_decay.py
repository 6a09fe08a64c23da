"""Which parameters get weight decay: one rule for pretraining, the estimator and fine-tuning."""
from __future__ import annotations

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


def decays(name: str) -> bool:
    """Biases and LayerNorm parameters are not decayed (BERT / ELECTRA)."""
    return not any(k in name for k in NO_DECAY)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
