"""Plain full-logits PyTorch heads: the semantics every fused path is held to (tests, benchmarks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_ds.kernels.noise import gumbel_noise


def generator_head_reference(hidden, weight, bias, targets, *, temperature, seed, row_ids, disallow_correct,
                             ignore_index):
    logits = F.linear(hidden, weight, bias).float()
    valid = targets != ignore_index
    n_valid = valid.sum()
    safe_t = torch.where(valid, targets, torch.zeros_like(targets))
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, safe_t[:, None]).squeeze(1)
    loss = torch.where(valid, nll, torch.zeros_like(nll)).sum() / n_valid.clamp(min=1)
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == targets) & valid
        vocab_ids = torch.arange(logits.shape[1], device=logits.device)
        z = logits / temperature + gumbel_noise(seed, row_ids, vocab_ids).to(logits.device)
        if disallow_correct:
            z.scatter_(1, safe_t[:, None], float("-inf"))
        sampled = z.argmax(dim=-1)
    return loss, sampled, correct


def discriminator_head_reference(hidden, dense_weight, dense_bias, out_weight, out_bias, labels):
    h = F.gelu(F.linear(hidden, dense_weight, dense_bias))
    logits = F.linear(h, out_weight, out_bias).squeeze(-1).float()
    if logits.numel() == 0:
        return logits.sum() * 0.0, logits.detach()
    loss = F.binary_cross_entropy_with_logits(logits, labels.float())
    return loss, logits.detach()
