"""Shapes of both towers (exact, from transformers on the meta device) and their activation bytes per micro-batch.

The activation counts are per token and per layer, the tensors autograd saves in a transformers 5 ELECTRA layer
(tests/test_zero_estimate.py re-measures them with saved-tensor hooks): 8H + 2I values (layer input, Q, K, V,
context, the two LayerNorm inputs, the first LayerNorm's output, the FFN's two I-wide tensors), 4 fp32 LayerNorm
stats, and with dropout one byte per element of each dropout's mask (2H, plus heads x seq_len on the attention
probabilities). Attention on the plain ("math") path keeps the probabilities, and with dropout also the dropped ones;
flash / memory-efficient kernels keep a log-sum-exp per head instead. Masks are bool as CUDA's fused dropout keeps
them. With gpt_ds's C++ CPU kernels (`cpu_kernels`, see `cpu_kernels_active`) dropout keeps no mask (the backward
regenerates it from a seed), the attention keeps the probabilities but not the dropped ones (regenerated too), and
with attention dropout each layer's fused Q/K/V matmul saves its concatenated 3H x H weight (per layer, not per
token). (A torch build without MKL's sgemm runs attention as batched matmuls that also keep the dropped
probabilities: heads x seq_len x act_bytes per token and layer more than counted.)

The fused heads' workspace (what their forward and backward allocate beyond the saved activations) is counted per
implementation: the chunked-PyTorch heads hold a few row-block x vocabulary-chunk tiles, the Triton kernels keep their
tiles on chip; both hold fp32 gradient accumulators for the head's input and weights.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import (AutoTokenizer, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, MPNetConfig,
                          MPNetForMaskedLM)

from gpt_ds.config import Config, ConfigError
from gpt_ds.kernels import cpu_ext
from gpt_ds.kernels import head_impl as kernels_head_impl
from gpt_ds.kernels.discriminator_torch import rows_per_block
from gpt_ds.kernels.generator_torch import TILE_ROWS, tile_cols  # the chunked heads' own tiling
from gpt_ds.model.discriminator import MPNetForReplacedTokenDetection, corrective_head
from gpt_ds.model.hf_config import MPNET_FIRST_POSITION
from gpt_ds.model.sizes import generator_sizes, scl_view_rows
from gpt_ds.model.weight_decay import param_groups

GEN_TILES = {"forward": 3, "backward": 2}  # logits, Gumbel noise, logits / T | logits -> gradient, gather temporaries
DISC_BLOCKS = {"forward": 2, "backward": 3}  # pre-activation, GELU | pre, GELU x d, d(pre)


@dataclass(frozen=True)
class Tower:
    name: str  # "generator" | "discriminator"
    hidden: int
    layers: int
    heads: int
    ffn: int
    embedding: int
    vocab: int
    groups: tuple  # per optimizer param group, as pretraining builds them: tuple of parameter sizes in order
    largest_module: int  # parameters of the largest leaf module (ZeRO-3 gathers it whole)
    largest_param: int = 0  # elements of the largest parameter tensor

    @property
    def params(self) -> int:
        return sum(sum(g) for g in self.groups)


ASSUMED_VOCAB = 30522  # BERT's WordPiece size: what an estimate assumes when neither the config nor a tokenizer says


def vocab_size(cfg: Config, default: int | None = None) -> int:
    """The vocabulary the run will have: model.vocab_size, else the tokenizer's, else `default` (None: an error)."""
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size
    if cfg.data.tokenizer:
        try:
            return len(AutoTokenizer.from_pretrained(cfg.data.tokenizer))
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.tokenizer '{cfg.data.tokenizer}' could not be read for its vocabulary size "
                              f"({e}); set model.vocab_size") from None
    if default is not None:
        return default
    raise ConfigError("model.vocab_size is 0 and data.tokenizer is empty: set model.vocab_size=N to estimate")


@functools.lru_cache(maxsize=16)
def _meta_tower(kind: str, vocab: int, e: int, h: int, layers: int, heads: int, ffn: int, pos: int,
                tied: bool = True, corrective: bool = False, arch: str = "electra", lr_decay: float = 1.0) -> tuple:
    if arch == "mpnet":
        conf = MPNetConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, max_position_embeddings=pos + MPNET_FIRST_POSITION,
                           tie_word_embeddings=tied)
        with torch.device("meta"):
            model = (MPNetForMaskedLM if kind == "generator" else MPNetForReplacedTokenDetection)(conf)
            if corrective:
                model.corrective = corrective_head(conf)
        return _counts(model, layers, lr_decay)
    conf = ElectraConfig(vocab_size=vocab, embedding_size=e, hidden_size=h, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=pos,
                         tie_word_embeddings=tied)
    with torch.device("meta"):
        model = (ElectraForMaskedLM if kind == "generator" else ElectraForPreTraining)(conf)
        if corrective:  # the discriminator's corrective LM head (objective.disc_mlm_weight > 0)
            model.corrective = corrective_head(conf)
    return _counts(model, layers, lr_decay)


def _counts(model: torch.nn.Module, layers: int, lr_decay: float) -> tuple:
    """(the optimizer's param groups as tuples of parameter sizes, largest module). The groups come from the rule
    pretraining uses (two, or one per depth with optim.encoder_layer_lr_decay): ZeRO-1/2 partition each group on its
    own, so a rank's gradients depend on them. Tied weights appear once, as DeepSpeed sees them."""
    groups = param_groups(model, 0.01, 1.0, lr_decay, layers)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return tuple(tuple(p.numel() for p in g["params"]) for g in groups), largest


def towers(cfg: Config, vocab: int | None = None) -> list[Tower]:
    """The engines gpt_ds builds: the generator (ElectraForMaskedLM) and, for ELECTRA, the discriminator
    (ElectraForPreTraining; under GDES its word/position tables hold the zero-initialised deltas, same shapes)."""
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
        downstream = name == "discriminator" or len(specs) == 1  # the tower optim.encoder_layer_lr_decay applies to
        groups, largest = _meta_tower(name, v, m.embedding_size, h, layers, heads, ffn, m.max_position_embeddings,
                                      m.tie_output_embeddings,
                                      name == "discriminator" and cfg.objective.disc_mlm_weight > 0,
                                      m.tower_arch(name, cfg.objective.kind),
                                      cfg.optim.encoder_layer_lr_decay if downstream else 1.0)
        out.append(Tower(name, h, layers, heads, ffn, m.embedding_size, v, groups, largest,
                         max(n for g in groups for n in g)))
    return out


def masked_rows(cfg: Config, micro: int) -> int:
    """Rows the generator head runs on: int((p + 0.005) L) positions per sequence, as the reference code picks."""
    return micro * int((cfg.objective.mask_prob + 0.005) * cfg.data.seq_len)


def cpu_kernels_active(on_gpu: bool) -> bool:
    """Whether training runs gpt_ds's C++ CPU kernels (kernels.cpu_ext): on the CPU, when they are built."""
    if on_gpu:
        return False
    return cpu_ext.ops() is not None


def _layer_bytes(t: Tower, seq_len: int, act_bytes: int, flash: bool, hidden_dropout: bool,
                 attention_dropout: bool, cpu_kernels: bool = False) -> int:
    """Bytes one encoder layer saves per token."""
    mask_bytes = 0 if cpu_kernels else 1
    if flash:
        attn = 4 * t.heads  # log-sum-exp per head (the dropout RNG state is a few bytes)
    elif cpu_kernels:  # the C++ attention keeps the probabilities and regenerates the dropped ones from the seed
        attn = t.heads * seq_len * act_bytes
    else:  # probabilities, and with dropout the mask and the dropped probabilities
        attn = t.heads * seq_len * (act_bytes + ((act_bytes + mask_bytes) if attention_dropout else 0))
    masks = 2 * t.hidden * mask_bytes if hidden_dropout else 0
    return act_bytes * (8 * t.hidden + 2 * t.ffn) + masks + attn + 16


def encoder_activation_bytes(t: Tower, micro: int, seq_len: int, act_bytes: int, *, checkpointing: bool,
                             flash: bool, hidden_dropout: bool = True, attention_dropout: bool = True,
                             cpu_kernels: bool = False) -> int:
    """Bytes autograd keeps from the embeddings and encoder layers of one micro-batch until its backward (with
    checkpointing: the layers' inputs; the layer being recomputed is `recompute_bytes`, alive during the backward)."""
    tokens = micro * seq_len
    emb = act_bytes * (t.embedding + (t.embedding if t.embedding != t.hidden else 0)) + 13 * 4
    emb += t.embedding if hidden_dropout and not cpu_kernels else 0
    if checkpointing:
        return int(tokens * (emb + t.layers * act_bytes * t.hidden))
    return int(tokens * (emb + t.layers * _layer_bytes(t, seq_len, act_bytes, flash, hidden_dropout,
                                                       attention_dropout, cpu_kernels))
               + t.layers * _layer_constant(t, act_bytes, attention_dropout, cpu_kernels))


def _layer_constant(t: Tower, act_bytes: int, attention_dropout: bool, cpu_kernels: bool) -> int:
    """Bytes a layer saves independently of the tokens: the fused Q/K/V weight (C++ CPU path with attention dropout)."""
    return 3 * t.hidden * t.hidden * act_bytes if cpu_kernels and attention_dropout else 0


def recompute_bytes(t: Tower, cfg: Config, micro: int, act_bytes: int, *, checkpointing: bool, flash: bool,
                    cpu_kernels: bool = False) -> int:
    """With activation checkpointing, what the one layer recomputed at a time in the backward saves; else 0."""
    m = cfg.model
    if not checkpointing:
        return 0
    return (micro * cfg.data.seq_len * _layer_bytes(t, cfg.data.seq_len, act_bytes, flash, m.hidden_dropout > 0,
                                                    m.attention_dropout > 0, cpu_kernels)
            + _layer_constant(t, act_bytes, m.attention_dropout > 0, cpu_kernels))


def activation_bytes(t: Tower, cfg: Config, micro: int, act_bytes: int, *, checkpointing: bool,
                     flash: bool, cpu_kernels: bool = False) -> int:
    """Bytes autograd keeps from one micro-batch's forward of tower `t` until its backward (encoder + head)."""
    m, o = cfg.model, cfg.objective
    # sequence contrastive learning: the discriminator's encoder also runs the uncorrupted views (same forward)
    views = scl_view_rows(o, micro)
    enc_rows = micro + (views if t.name == "discriminator" else 0)
    enc = encoder_activation_bytes(t, enc_rows, cfg.data.seq_len, act_bytes, checkpointing=checkpointing,
                                   flash=flash, hidden_dropout=m.hidden_dropout > 0,
                                   attention_dropout=m.attention_dropout > 0,
                                   cpu_kernels=cpu_kernels)
    tokens = micro * cfg.data.seq_len
    if t.name == "generator":
        rows = masked_rows(cfg, micro)
        head = rows * (act_bytes * (t.hidden + 3 * t.embedding) + 4 * 4)  # gather, dense, GELU, LayerNorm
        if cfg.objective.kind == "electra":  # GDES base embeddings handed to the discriminator (views too)
            head += (micro + views) * cfg.data.seq_len * act_bytes * t.embedding
    else:
        head = tokens * (act_bytes * t.hidden + 4)  # the head keeps its input and one logit per token
        if cfg.objective.disc_mlm_weight > 0:  # corrective LM: as the generator's head, plus its fp32 log-softmax
            head += masked_rows(cfg, micro) * (act_bytes * (t.hidden + 3 * t.embedding) + 4 * t.vocab)
    return int(enc + head)


def head_impl(kernels: str, on_gpu: bool = True) -> str:
    """The head implementation `model.kernels` runs (gpt_ds.kernels.head_impl decides; an estimate for a GPU
    assumes Triton will be there)."""
    if kernels == "auto" and on_gpu:
        return "triton"
    return kernels_head_impl(kernels, on_gpu)


def head_workspace(t: Tower, cfg: Config, micro: int, act_bytes: int, impl: str = "triton") -> dict:
    """Bytes the head allocates beyond its saved activations, {"forward": .., "backward": ..} (freed after each).

    Backward: the fp32 gradient accumulators of its input and weights (and their copies in the activation dtype
    below fp32), plus the chunked implementation's tiles; "reference" computes whole rows x vocabulary logits.
    """
    tokens = micro * cfg.data.seq_len
    cast = act_bytes if act_bytes < 4 else 0  # fp32 accumulators handed back in bf16/fp16
    if t.name == "generator":
        rows = masked_rows(cfg, micro)
        grads = (4 + cast) * (t.vocab * t.embedding + t.vocab + rows * t.embedding)
        block = min(rows, TILE_ROWS)
        tile = 4 * block * (tile_cols(block, t.vocab) if impl == "torch" else t.vocab)
        tiles = {k: (n * tile if impl in ("torch", "reference") else 0) for k, n in GEN_TILES.items()}
    else:
        grads = (4 + cast) * (t.hidden * t.hidden + 2 * t.hidden + 1 + tokens * t.hidden)
        if impl == "triton":  # d(pre-activation) for all rows, then the two GEMMs
            tiles = {"forward": 0, "backward": 4 * tokens * t.hidden}
        else:
            block = 4 * t.hidden * (min(tokens, rows_per_block(t.hidden)) if impl == "torch" else tokens)
            tiles = {k: n * block for k, n in DISC_BLOCKS.items()}
        if cfg.objective.disc_mlm_weight > 0:  # corrective LM (plain PyTorch): whole rows x vocabulary logits
            rows = masked_rows(cfg, micro)
            tiles = {"forward": tiles["forward"] + 4 * rows * t.vocab,
                     "backward": tiles["backward"] + 4 * rows * t.vocab}
    return {"forward": tiles["forward"], "backward": tiles["backward"] + grads}
