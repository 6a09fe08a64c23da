"""Output biases that start at what the data already says: the generator's at the log unigram frequencies, the
replaced-token-detection head's at the log-odds of the replaced share.

Why: with zero biases the first thing either loss teaches is its prior (the unigram distribution; "13% replaced"),
and Adam moves every weight at full step size to produce it. Measured at the `tiny` size (docs/results.md): within
~100 steps the discriminator's hidden states collapse to one vector for every position (the spread over positions
falls from 0.83 to 0.003 by the third layer) and stay there, its loss pinned to the prior; the generator pushes one
shared "frequency" direction into every row of the word-embedding table (half of the table's variance), which GDES
then hands to the discriminator. Starting the biases at the prior removes that phase: the rest of the network only
has to learn what the prior does not already explain. The towers stay stock ELECTRA modules (only initial values
change).
"""
from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_ROWS = 2048  # rows read to estimate the unigram frequencies (the same rows on every rank)


def smoothed_log_frequencies(ids: torch.Tensor, vocab_size: int, special_ids: list[int]) -> torch.Tensor:
    """log p(token) (float64) from the token ids seen, special tokens left out; add-half smoothed. Also the baseline
    gpt_ds.evaluate holds an exported masked LM against."""
    ids = ids[~torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))]
    counts = torch.bincount(ids, minlength=vocab_size)[:vocab_size].double() + 0.5
    counts[special_ids] = 0.5
    return (counts / counts.sum()).log()


def unigram_log_probs(dataset, vocab_size: int, special_ids: list[int], rows: int = SAMPLE_ROWS) -> torch.Tensor:
    """log p(token) over the first rows of the sample order, special tokens left out; add-half smoothed."""
    ids = dataset.batch(np.arange(min(rows, len(dataset)), dtype=np.int64))["input_ids"].reshape(-1)
    return smoothed_log_frequencies(ids, vocab_size, special_ids).float()


def replaced_log_odds(mask_prob: float) -> float:
    """The RTD logit of "replaced" before the discriminator knows anything: a share mask_prob of tokens."""
    return math.log(mask_prob / (1.0 - mask_prob))


@torch.no_grad()
def init_output_priors(generator, discriminator, unigram_logp: torch.Tensor, mask_prob: float) -> None:
    """generator: gpt_ds.model.Generator; discriminator: gpt_ds.model.Discriminator or None (MLM baseline)."""
    bias = generator.output_bias
    bias.copy_(unigram_logp.to(bias.dtype) - unigram_logp.mean())
    if discriminator is not None:
        discriminator.pt.discriminator_predictions.dense_prediction.bias.fill_(replaced_log_odds(mask_prob))
        if discriminator.corrective is not None:
            discriminator.corrective["out"].bias.copy_(unigram_logp.to(bias.dtype) - unigram_logp.mean())
