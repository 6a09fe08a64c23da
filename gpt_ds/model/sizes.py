"""ELECTRA's generator size, derived from the discriminator's: a module without torch or transformers, so the
estimator and the FLOP counter size the towers as the engines build them without importing either."""
from __future__ import annotations

from gpt_ds.config import ModelConfig, ObjectiveConfig


def generator_sizes(m: ModelConfig) -> dict:
    """A fraction of the discriminator's width (model.generator_hidden_ratio; the paper's best are 1/4 to 1/2), the
    discriminator's head width, FFN scaled by the same fraction."""
    hidden = m.generator_width()
    head_dim = m.hidden_size // m.num_heads
    heads = max(1, hidden // head_dim) if hidden % head_dim == 0 else 1
    return dict(hidden_size=hidden, num_layers=m.generator_layers or m.num_layers, num_heads=heads,
                intermediate_size=int(round(m.intermediate_size * m.generator_hidden_ratio)))


def scl_view_rows(o: ObjectiveConfig, rows: int) -> int:
    """How many of `rows` the discriminator also encodes uncorrupted for the sequence contrastive loss (0: off); the
    trainer, the FLOP counter and the estimator all ask here."""
    return max(1, round(o.scl_rows * rows)) if o.disc_scl_weight > 0 else 0
