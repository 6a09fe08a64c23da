"""Shapes of both towers (exact, from transformers on the meta device) and their activation bytes per micro-batch.

The activation counts are per token and per layer, fitted term by term to the tensors autograd saves in a
transformers 5 ELECTRA layer (tests/test_zero_estimate.py re-measures them with saved-tensor hooks):
10H + 2I values per token and layer, 3 x heads x seq_len more when attention runs the plain ("math") path that keeps
the probabilities (flash/memory-efficient kernels keep a log-sum-exp per head instead), and 4 fp32 layer-norm stats.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from gpt_ds.config import Config, ConfigError

TILE_BYTES = 4 << 20  # the fused heads' fp32 tiles (gpt_ds.kernels: 1M elements each)
TILES_LIVE = 3  # logits tile + its softmax/gradient + the noise tile


@dataclass(frozen=True)
class Tower:
    name: str  # "generator" | "discriminator"
    hidden: int
    layers: int
    heads: int
    ffn: int
    embedding: int
    vocab: int
    groups: tuple  # per optimizer param group (decay, no-decay): tuple of parameter sizes in order
    largest_module: int  # parameters of the largest leaf module (ZeRO-3 gathers it whole)

    @property
    def params(self) -> int:
        return sum(sum(g) for g in self.groups)


def vocab_size(cfg: Config) -> int:
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size
    if cfg.data.tokenizer:
        try:
            from transformers import AutoTokenizer
            return len(AutoTokenizer.from_pretrained(cfg.data.tokenizer))
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.tokenizer '{cfg.data.tokenizer}' could not be read for its vocabulary size "
                              f"({e}); set model.vocab_size") from None
    raise ConfigError("model.vocab_size is 0 and data.tokenizer is empty: set model.vocab_size=N to estimate")


@functools.lru_cache(maxsize=16)
def _meta_tower(kind: str, vocab: int, e: int, h: int, layers: int, heads: int, ffn: int, pos: int) -> tuple:
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    from gpt_ds.train.engines import NO_DECAY
    conf = ElectraConfig(vocab_size=vocab, embedding_size=e, hidden_size=h, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=pos)
    with torch.device("meta"):
        model = (ElectraForMaskedLM if kind == "generator" else ElectraForPreTraining)(conf)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights appear once, as DeepSpeed sees them
        (no_decay if any(k in name for k in NO_DECAY) else decay).append(p.numel())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return tuple(decay), tuple(no_decay), largest


def towers(cfg: Config, vocab: int | None = None) -> list[Tower]:
    """The engines gpt_ds builds: the generator (ElectraForMaskedLM) and, for ELECTRA, the discriminator
    (ElectraForPreTraining; under GDES its word/position tables hold the zero-initialised deltas, same shapes)."""
    from gpt_ds.config import generator_sizes
    m = cfg.model
    v = vocab or vocab_size(cfg)
    specs = []
    if cfg.objective.kind == "electra":
        g = generator_sizes(m)
        specs.append(("generator", g["hidden_size"], g["num_layers"], g["num_heads"], g["intermediate_size"]))
        specs.append(("discriminator", m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size))
    else:
        specs.append(("generator", m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size))
    out = []
    for name, h, layers, heads, ffn in specs:
        decay, no_decay, largest = _meta_tower(name, v, m.embedding_size, h, layers, heads, ffn,
                                               m.max_position_embeddings)
        out.append(Tower(name, h, layers, heads, ffn, m.embedding_size, v, (decay, no_decay), largest))
    return out


def masked_rows(cfg: Config, micro: int) -> int:
    """Rows the generator head runs on: int((p + 0.005) L) positions per sequence, as the reference code picks."""
    return micro * int((cfg.objective.mask_prob + 0.005) * cfg.data.seq_len)


def encoder_activation_bytes(t: Tower, micro: int, seq_len: int, act_bytes: int, *, checkpointing: bool,
                             flash: bool) -> int:
    """Bytes autograd keeps from the embeddings and encoder layers of one micro-batch until its backward."""
    s = seq_len
    tokens = micro * s
    attn = 4 * t.heads if flash else 3 * act_bytes * t.heads * s
    layer = act_bytes * (10 * t.hidden + 2 * t.ffn) + attn + 16
    emb = act_bytes * (2 * t.embedding + (t.embedding if t.embedding != t.hidden else 0)) + 13 * 4
    if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        enc = tokens * (emb + t.layers * act_bytes * t.hidden + layer)
    else:
        enc = tokens * (emb + t.layers * layer)
    return int(enc)


def activation_bytes(t: Tower, cfg: Config, micro: int, act_bytes: int, *, checkpointing: bool,
                     flash: bool) -> int:
    """Bytes autograd keeps from one micro-batch's forward of tower `t` until its backward (encoder + head)."""
    enc = encoder_activation_bytes(t, micro, cfg.data.seq_len, act_bytes, checkpointing=checkpointing, flash=flash)
    tokens = micro * cfg.data.seq_len
    if t.name == "generator":
        rows = masked_rows(cfg, micro)
        head = rows * (act_bytes * (t.hidden + 3 * t.embedding) + 4 * 4)  # gather, dense, GELU, LayerNorm
        if cfg.objective.kind == "electra":
            head += tokens * act_bytes * t.embedding  # GDES base embeddings handed to the discriminator
    else:
        head = tokens * (act_bytes * t.hidden + 4)  # the head keeps its input and one logit per token
    return int(enc + head)


def head_workspace(t: Tower, cfg: Config, micro: int, act_bytes: int) -> int:
    """Transient bytes of the fused heads: a few fp32 tiles and their fp32 gradient buffers (no rows x vocab)."""
    tokens = micro * cfg.data.seq_len
    if t.name == "generator":
        rows = masked_rows(cfg, micro)
        grads = 4 * (t.vocab * t.embedding + t.vocab + rows * t.embedding)
    else:
        grads = 4 * (t.hidden * t.hidden + 2 * t.hidden + 1 + tokens * t.hidden)
    return TILES_LIVE * TILE_BYTES + grads
