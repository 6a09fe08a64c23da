"""gpt_ds model sizes -> a transformers ElectraConfig or MPNetConfig (model.arch), so every tower is a stock module and
exports as one."""
from __future__ import annotations

from transformers import ElectraConfig, MPNetConfig

from gpt_ds.config import Config
from gpt_ds.model.sizes import generator_sizes


# MPNet's embeddings hard-code padding index 1 (positions count from 2, the word row 1 stays zero); gpt_ds's tokenizers
# put [PAD] at 0 and [UNK] at 1, so the towers are given positions MPNET_FIRST_POSITION.. explicitly, which is what
# MPNet's own rule gives every text without [UNK] (docs/configuration.md, model.arch)
MPNET_PADDING_IDX = 1
MPNET_FIRST_POSITION = MPNET_PADDING_IDX + 1


def _tower_config(cfg: Config, vocab_size: int, pad_id: int, hidden: int, layers: int, heads: int,
                  ffn: int, tied: bool = True, tower: str = "discriminator") -> ElectraConfig | MPNetConfig:
    m = cfg.model
    if m.tower_arch(tower, cfg.objective.kind) == "mpnet":
        return MPNetConfig(tie_word_embeddings=tied,
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=ffn, hidden_act=m.activation, hidden_dropout_prob=m.hidden_dropout,
            attention_probs_dropout_prob=m.attention_dropout,
            max_position_embeddings=m.max_position_embeddings + MPNET_FIRST_POSITION, pad_token_id=pad_id,
            initializer_range=m.initializer_range, layer_norm_eps=1e-12,
            # kept in config.json: `gpt-ds finetune --random-init` starts its twin's bias the same way
            relative_bias_init=m.relative_bias_init)
    return ElectraConfig(tie_word_embeddings=tied,
        vocab_size=vocab_size, embedding_size=m.embedding_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, hidden_act=m.activation,
        hidden_dropout_prob=m.hidden_dropout, attention_probs_dropout_prob=m.attention_dropout,
        max_position_embeddings=m.max_position_embeddings, type_vocab_size=2, pad_token_id=pad_id,
        initializer_range=m.initializer_range, layer_norm_eps=1e-12)


def discriminator_config(cfg: Config, vocab_size: int, pad_id: int) -> ElectraConfig:
    m = cfg.model
    return _tower_config(cfg, vocab_size, pad_id, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size)


def generator_config(cfg: Config, vocab_size: int, pad_id: int) -> ElectraConfig:
    """ELECTRA's small generator; the MLM baseline uses the discriminator's full size instead."""
    m = cfg.model
    if cfg.objective.kind == "mlm":
        return _tower_config(cfg, vocab_size, pad_id, m.hidden_size, m.num_layers, m.num_heads,
                             m.intermediate_size, m.tie_output_embeddings)
    g = generator_sizes(m)
    return _tower_config(cfg, vocab_size, pad_id, g["hidden_size"], g["num_layers"], g["num_heads"],
                         g["intermediate_size"], m.tie_output_embeddings, tower="generator")


# Families that number positions from pad_token_id + 1 (RoBERTa's rule): the table holds pad_token_id + 1 fewer.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "data2vec-text", "xmod", "roberta-prelayernorm")


def usable_positions(config) -> int:
    """How many tokens one sequence may hold: the position table's rows, less RoBERTa-style offsets."""
    positions = getattr(config, "max_position_embeddings", 512)
    kind = getattr(config, "model_type", "")
    if kind in OFFSET_POSITIONS:
        # MPNet's embeddings use padding index 1 whatever config.pad_token_id says (gpt_ds's MPNet exports: 0)
        pad = 1 if kind == "mpnet" or config.pad_token_id is None else config.pad_token_id
        positions -= pad + 1
    return positions
