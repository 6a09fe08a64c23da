"""Parameter groups: which parameters decay and how fast each layer learns, one rule for pretraining, the estimator
and fine-tuning."""
from __future__ import annotations

import re
import typing

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight", "layer_norm.bias")  # MPNet: layer_norm


def decays(name: str) -> bool:
    """Biases and LayerNorm parameters are not decayed (BERT / ELECTRA)."""
    return not any(k in name for k in NO_DECAY)


def layer_depth(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for a head."""
    m = re.search(r"\.layer\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


def depth_groups(model: torch.nn.Module, num_layers: int, weight_decay: float,
                 rate: typing.Callable[[int], float]) -> list[dict]:
    """One group per (depth, decayed?), each at rate(depth): layer-wise rates for fine-tuning and pretraining."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth, wd = layer_depth(name, num_layers), decays(name)
        g = groups.setdefault((depth, wd), {"params": [], "lr": rate(depth),
                                            "weight_decay": weight_decay if wd else 0.0})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None,
                 encoder_layer_lr_decay: float = 1.0, num_layers: int = 0) -> list[dict]:
    """Pretraining's groups. With `encoder_layer_lr_decay` < 1 encoder layer i learns at lr * decay ** (i + 1) while
    the embeddings and the heads keep lr: an encoder trained less than its embeddings (docs/results.md §8.5)."""
    if encoder_layer_lr_decay != 1.0:
        return depth_groups(model, num_layers, weight_decay,
                            lambda d: lr * encoder_layer_lr_decay ** d if 1 <= d <= num_layers else lr)
    # two groups and no per-group rate, as every checkpoint's optimizer state has had
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
