"""MPNet's learned relative-position bias, started local: attention favours near positions from the first step.

Why: a small encoder trained from scratch sits at word frequencies until attention finds the neighbours (docs/results.md
§8.12); Adam rewrites initial Q/K weights long before that helps, but a bias outside the residual stream keeps the
locality until the data says otherwise. The bias stays a stock, learned MPNet parameter (exports load with AutoModel).
"""
from __future__ import annotations

import torch

SLOPES = (1.0, 0.25)  # per head, cycling: a sharp and a broad view, ALiBi's shape


def local_bias_(bias: torch.nn.Embedding, slopes=SLOPES, max_distance: int = 128) -> None:
    """Set MPNet's bucketed relative-attention bias (buckets, heads) to -slope * distance.

    MPNet's buckets (`MPNetEncoder.relative_position_bucket`): each direction gets half of them, exact below half of
    that half, log-spaced up to max_distance beyond; a bucket stands here for the smallest distance it holds."""
    half = bias.num_embeddings // 2
    exact = half // 2
    b = torch.arange(half, dtype=torch.float64)
    dist = torch.where(b < exact, b, exact * (max_distance / exact) ** ((b - exact) / (half - exact)))
    with torch.no_grad():
        for h in range(bias.embedding_dim):
            value = (-slopes[h % len(slopes)] * dist).to(bias.weight.dtype)
            bias.weight[:half, h] = value
            bias.weight[half:, h] = value
