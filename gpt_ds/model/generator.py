"""The generator: a small masked LM (stock ELECTRA or MPNet) whose head runs at the masked positions only and samples
replacements."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers import ElectraConfig, ElectraForMaskedLM, MPNetConfig, MPNetForMaskedLM
from transformers.activations import gelu

from gpt_ds.kernels import encoder_fast_paths, generator_head
from gpt_ds.kernels.encoder import install_fast_paths, zero3_external_parameters
from gpt_ds.model.hf_config import MPNET_FIRST_POSITION


def mpnet_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """The position ids an MPNet tower is given (see hf_config.MPNET_PADDING_IDX): one row, broadcast over the batch."""
    first = MPNET_FIRST_POSITION
    return torch.arange(first, first + input_ids.shape[1], device=input_ids.device)[None, :]


class GeneratorOutput(NamedTuple):
    loss: torch.Tensor  # mean MLM cross-entropy over this micro-batch's masked positions
    sampled: torch.Tensor  # (N,) replacement tokens
    correct: torch.Tensor  # (N,) argmax == original
    corrupted_ids: torch.Tensor  # (B, L) the discriminator's input: originals with the samples put in
    base_embeds: torch.Tensor | None  # (B [+ k], L, E) detached word + position embeddings of corrupted_ids [and
    # view_ids] (GDES)


class Generator(nn.Module):
    def __init__(self, config: ElectraConfig | MPNetConfig, *, kernels: str = "auto", temperature: float = 1.0,
                 disallow_correct: bool = False, share_embeddings: bool = False, fast_encoder: bool | None = None):
        super().__init__()
        self.mpnet = isinstance(config, MPNetConfig)
        self.mlm = MPNetForMaskedLM(config) if self.mpnet else ElectraForMaskedLM(config)
        # gpt_ds's CPU encoder paths replace ELECTRA's modules; an MPNet tower stays stock
        if not self.mpnet and (fast_encoder if fast_encoder is not None else encoder_fast_paths(kernels, "auto")):
            install_fast_paths(self.mlm)
        self.kernels = kernels
        self.temperature = temperature
        self.disallow_correct = disallow_correct
        self.share_embeddings = share_embeddings

    @property
    def backbone(self) -> nn.Module:
        """The encoder without its head (ElectraModel / MPNetModel)."""
        return self.mlm.mpnet if self.mpnet else self.mlm.electra

    @property
    def output_bias(self) -> nn.Parameter:
        return self.mlm.lm_head.decoder.bias if self.mpnet else self.mlm.generator_lm_head.bias

    def register_zero3_external_parameters(self) -> None:
        """The head reads the tied output weight and the bias without calling their module: ZeRO-3 must gather them."""
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter
        if self.mpnet:  # the head's dense and LayerNorm run as modules; the output layer's tensors do not
            register_external_parameter(self, self.mlm.lm_head.decoder.weight)
            register_external_parameter(self, self.mlm.lm_head.decoder.bias)
            return
        register_external_parameter(self, self.mlm.generator_lm_head.weight)
        register_external_parameter(self, self.mlm.generator_lm_head.bias)
        for module, w in zero3_external_parameters(self.mlm):  # the fused Q/K/V weights (kernels.encoder)
            register_external_parameter(module, w)

    def forward(self, masked_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                positions: torch.Tensor, targets: torch.Tensor, row_ids: torch.Tensor, original_ids: torch.Tensor,
                seed: int, view_ids: torch.Tensor | None = None) -> GeneratorOutput:
        if self.mpnet:
            hidden = self.mlm.mpnet(masked_ids, attention_mask=attention_mask,
                                    position_ids=mpnet_positions(masked_ids)).last_hidden_state
            at_masked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            lm = self.mlm.lm_head  # MPNetLMHead.forward up to its output layer
            projected = lm.layer_norm(gelu(lm.dense(at_masked)))
            head = lm.decoder
        else:
            hidden = self.mlm.electra(masked_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state
            at_masked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            projected = self.mlm.generator_predictions(at_masked)
            head = self.mlm.generator_lm_head
        out = generator_head(projected, head.weight, head.bias, targets, temperature=self.temperature, seed=seed,
                             row_ids=row_ids, disallow_correct=self.disallow_correct, impl=self.kernels)
        corrupted = original_ids.clone()
        corrupted.view(-1)[positions] = out.sampled
        base = None
        if self.share_embeddings:
            # GDES: E_D = stop_grad(E_G) + E_delta. Computed here, where ZeRO-3 has E_G gathered.
            emb = self.backbone.embeddings
            with torch.no_grad():
                pos = (mpnet_positions(corrupted) if self.mpnet else
                       torch.arange(corrupted.shape[1], device=corrupted.device)[None, :])
                rows = corrupted if view_ids is None else torch.cat([corrupted, view_ids])
                base = (emb.word_embeddings(rows) + emb.position_embeddings(pos)).detach()
        return GeneratorOutput(out.loss, out.sampled, out.correct, corrupted, base)
