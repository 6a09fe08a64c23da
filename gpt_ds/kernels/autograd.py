"""Autograd Functions shared by the chunked-torch and Triton heads; `impl` is a module with the backend functions.

Each saves only the inputs plus O(N) per-row values (log-sum-exp, logits), and checks again in the backward that the
weights are whole (under ZeRO-3 the backward runs when the engine has re-gathered them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_ds.kernels.checks import check_discriminator_weights, check_generator_weights


class GeneratorHeadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, keys, temperature, disallow_correct, ignore_index, impl):
        with torch.no_grad():
            nll, stats, sampled, correct = impl.generator_forward(hidden, weight, bias, targets, keys, temperature,
                                                                disallow_correct, ignore_index)
            loss = nll.sum() / (targets != ignore_index).sum().clamp(min=1)
        ctx.save_for_backward(hidden, weight, bias, targets, stats)
        ctx.ignore_index, ctx.impl = ignore_index, impl
        ctx.mark_non_differentiable(sampled, correct)
        return loss, sampled, correct

    @staticmethod
    def backward(ctx, grad_loss, _g_sampled, _g_correct):
        hidden, weight, bias, targets, stats = ctx.saved_tensors
        check_generator_weights(hidden, weight, bias, "in the backward")
        g_h, g_w, g_b = ctx.impl.generator_backward(grad_loss, hidden, weight, bias, targets, stats, ctx.ignore_index)
        return g_h, g_w, g_b, None, None, None, None, None, None


class DiscriminatorHeadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, labels, impl):
        with torch.no_grad():
            z = impl.discriminator_forward(x, w1, b1, w2, b2)
            y = labels.float()
            loss = F.binary_cross_entropy_with_logits(z, y, reduction="sum") / max(z.numel(), 1)
        ctx.save_for_backward(x, w1, b1, w2, b2, y, z)
        ctx.impl = impl
        ctx.mark_non_differentiable(z)
        return loss, z

    @staticmethod
    def backward(ctx, grad_loss, _g_logits):
        x, w1, b1, w2, b2, y, z = ctx.saved_tensors
        check_discriminator_weights(x, w1, w2, "in the backward")
        dz = (torch.sigmoid(z) - y) * (grad_loss.float() / max(z.numel(), 1))
        g_x, g_w1, g_b1, g_w2, g_b2 = ctx.impl.discriminator_backward(dz, x, w1, b1, w2)
        return g_x, g_w1, g_b1, g_w2, g_b2.to(b2.dtype).reshape(b2.shape), None, None
