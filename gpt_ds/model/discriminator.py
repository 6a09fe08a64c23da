"""The discriminator: an ELECTRA encoder + replaced-token-detection head over the non-padding tokens."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers import ElectraConfig, ElectraForPreTraining
from transformers.models.electra.modeling_electra import ElectraGeneratorPredictions

from gpt_ds.kernels import discriminator_head, encoder_fast_paths
from gpt_ds.kernels.encoder import install_fast_paths, zero3_external_parameters


class DiscriminatorOutput(NamedTuple):
    loss: torch.Tensor  # mean BCE over this micro-batch's scored tokens (non-padding; loss_mask if given)
    logits: torch.Tensor  # (T,) detached logits of those tokens
    labels: torch.Tensor  # (T,) 1 = replaced
    mlm_loss: torch.Tensor | None = None  # mean corrective-LM cross-entropy at the masked positions


def corrective_head(config: ElectraConfig) -> nn.ModuleDict:
    """The corrective LM's head: the generator's (dense to the embedding width, GELU, LayerNorm), then its own V-way
    output. Stock modules, so the weight-decay rule and the estimator see the names they know."""
    head = nn.ModuleDict({"predictions": ElectraGeneratorPredictions(config),
                          "out": nn.Linear(config.embedding_size, config.vocab_size)})
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=config.initializer_range)
            nn.init.zeros_(m.bias)
    return head


class Discriminator(nn.Module):
    def __init__(self, config: ElectraConfig, *, kernels: str = "auto", gdes: bool = False,
                 fast_encoder: bool | None = None, corrective_lm: bool = False):
        super().__init__()
        # `pt` (for ElectraForPreTraining) prefixes every parameter name in the checkpoints: renaming it breaks resume
        self.pt = ElectraForPreTraining(config)
        if fast_encoder if fast_encoder is not None else encoder_fast_paths(kernels, "auto"):
            install_fast_paths(self.pt)
        self.kernels = kernels
        self.gdes = gdes
        self.corrective = None
        if corrective_lm:  # not exported: a downstream model gets the encoder, as with the RTD head
            self.corrective = corrective_head(config)
        if gdes:
            # Under GDES these tables hold only the delta E_delta, initialised to zero (DeBERTa-v3).
            emb = self.pt.electra.embeddings
            nn.init.zeros_(emb.word_embeddings.weight)
            nn.init.zeros_(emb.position_embeddings.weight)

    def register_zero3_external_parameters(self) -> None:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter
        p = self.pt.discriminator_predictions
        for w in (p.dense.weight, p.dense.bias, p.dense_prediction.weight, p.dense_prediction.bias):
            register_external_parameter(self, w)
        for module, w in zero3_external_parameters(self.pt):
            register_external_parameter(module, w)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               base_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if self.gdes:
            if base_embeds is None:
                raise ValueError("GDES discriminator needs the generator's embeddings (base_embeds)")
            # word: E_G + delta; position: P_G (in base) + the delta table HF adds itself.
            inputs_embeds = base_embeds + self.pt.electra.embeddings.word_embeddings(input_ids)
            return self.pt.electra(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state
        return self.pt.electra(input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                labels: torch.Tensor, base_embeds: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> DiscriminatorOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids, base_embeds)
        active = (attention_mask if loss_mask is None else loss_mask).reshape(-1).bool()
        h = hidden.reshape(-1, hidden.shape[-1])[active]
        y = labels.reshape(-1)[active]
        p = self.pt.discriminator_predictions
        out = discriminator_head(h, p.dense.weight, p.dense.bias, p.dense_prediction.weight, p.dense_prediction.bias,
                                 y, impl=self.kernels)
        mlm_loss = None
        if self.corrective is not None and positions is not None:
            at = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            logits = self.corrective["out"](self.corrective["predictions"](at))
            mlm_loss = nn.functional.cross_entropy(logits.float(), targets)
        return DiscriminatorOutput(out.loss, out.logits, y, mlm_loss)
