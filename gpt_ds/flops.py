"""ELECTRA-aware FLOP count per training step, in the spirit of google-research/electra's flops_computation.py.

Counts matmul FLOPs (2 per multiply-add) of the generator over all tokens but its LM head at the masked positions
only, the discriminator over all tokens with its head, and the sampling (softmax + Gumbel noise over the vocabulary at
masked positions). Training = forward x 3 (the backward is twice the forward). Layer norms, GELUs and embeddings
lookups are left out, as they are a rounding error at these sizes.
"""
from __future__ import annotations

import statistics
import time

from gpt_ds.config import Config
from gpt_ds.model.sizes import generator_sizes, scl_view_rows


def attention_flops(tokens: int, seq_len: int, hidden: int, layers: int) -> float:
    """The forward's score and context products (QK^T and PV), part of encoder_forward_flops."""
    return float(tokens) * layers * 2 * 2 * seq_len * hidden


def encoder_forward_flops(tokens: int, seq_len: int, hidden: int, layers: int, ffn: int, embedding: int) -> float:
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn)  # Q/K/V/output projections + FFN
    project = 2 * embedding * hidden if embedding != hidden else 0
    return float(tokens) * (layers * per_token_layer + project) + attention_flops(tokens, seq_len, hidden, layers)


def lm_head_flops(masked: int, hidden: int, embedding: int, vocab: int) -> float:
    """A masked-LM head at the masked positions: dense hidden -> table width, then the output layer over the vocab."""
    return masked * 2.0 * (hidden * embedding + embedding * vocab)


def step_flops(cfg: Config, vocab_size: int | None = None) -> dict:
    """FLOPs of one optimizer step over the global batch; keys: generator, discriminator, sampling, total, and
    attention (the part of total in the attention's score and context products, forward and backward)."""
    m, o = cfg.model, cfg.objective
    v = vocab_size or m.vocab_size
    L = cfg.data.seq_len
    tokens = cfg.train.global_batch * L
    masked = int((o.mask_prob + 0.005) * L) * cfg.train.global_batch
    if o.kind == "mlm":
        e = m.table_width("generator", "mlm")
        gen = (encoder_forward_flops(tokens, L, m.hidden_size, m.num_layers, m.intermediate_size, e)
               + lm_head_flops(masked, m.hidden_size, e, v))
        return {"generator": 3 * gen, "discriminator": 0.0, "sampling": 0.0, "total": 3 * gen, "tokens": tokens,
                "attention": 3 * attention_flops(tokens, L, m.hidden_size, m.num_layers)}
    g = generator_sizes(m)
    ge, de = m.table_width("generator"), m.table_width("discriminator")
    gen = (encoder_forward_flops(tokens, L, g["hidden_size"], g["num_layers"], g["intermediate_size"], ge)
           + lm_head_flops(masked, g["hidden_size"], ge, v))
    # sequence contrastive learning: a share of the rows passes the discriminator's encoder a second time, uncorrupted
    # (counted over the global batch; the trainer rounds per micro-batch, equal when the share divides it)
    views = scl_view_rows(o, cfg.train.global_batch) * L
    disc = (encoder_forward_flops(tokens + views, L, m.hidden_size, m.num_layers, m.intermediate_size, de)
            + tokens * 2 * (m.hidden_size * m.hidden_size + m.hidden_size))
    if o.disc_mlm_weight > 0:  # the corrective LM head at the masked positions
        disc += lm_head_flops(masked, m.hidden_size, de, v)
    sampling = masked * 6.0 * v  # softmax + noise + argmax over the vocabulary, forward only
    total = 3 * gen + 3 * disc + sampling
    attn = attention_flops(tokens, L, g["hidden_size"], g["num_layers"]) + attention_flops(tokens, L, m.hidden_size,
                                                                                           m.num_layers)
    return {"generator": 3 * gen, "discriminator": 3 * disc, "sampling": sampling, "total": total, "tokens": tokens,
            "attention": 3 * attn}


def run_flops(cfg: Config, steps: int, vocab_size: int | None = None) -> float:
    """FLOPs of the first `steps` steps: before objective.disc_start_step the generator trains alone."""
    f = step_flops(cfg, vocab_size)
    alone = min(steps, cfg.objective.disc_start_step) if cfg.objective.kind == "electra" else 0
    return alone * (f["generator"] + f["sampling"]) + (steps - alone) * f["total"]


PEAK_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def measure_matmul_flops(n: int | None = None, repeats: int = 5, device=None, precision: str = "fp32") -> float:
    """This process's matmul rate (median of a few n x n products): the device's practical peak, for MFU.

    `precision` is the training's. GPU: measured in it, n = 8192 by default, timed with CUDA events after a warm-up;
    TF32 stays as the process set it (fp32 training on a GPU gets what its matmuls get). CPU: always fp32, n = 1024
    by default (the rate CPU MFU is quoted against; CPU bf16 matmuls are emulated on most parts).
    """
    import torch  # here: `gpt-ds plot` and `check` count FLOPs without it
    dev = torch.device(device if device is not None else "cpu")
    gpu = dev.type == "cuda"
    dtype = getattr(torch, PEAK_DTYPES[precision if gpu else "fp32"])
    n = n or (8192 if gpu else 1024)
    g = torch.Generator(dev).manual_seed(0)  # never touch the global RNG: dropout's stream must resume exactly
    a, b = (torch.randn(n, n, generator=g, device=dev).to(dtype) for _ in range(2))
    times = []
    if gpu:
        for _ in range(3):
            a @ b  # warm-up: clocks up, cuBLAS heuristics cached
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        a @ b  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / statistics.median(times)
