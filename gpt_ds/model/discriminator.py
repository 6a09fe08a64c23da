"""The discriminator: an encoder (stock ELECTRA or MPNet) + replaced-token-detection head over the non-padding
tokens."""
from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import nn
from transformers import ElectraConfig, ElectraForPreTraining, MPNetConfig, MPNetModel
from transformers.models.electra.modeling_electra import ElectraDiscriminatorPredictions, ElectraGeneratorPredictions

from gpt_ds.kernels import discriminator_head, encoder_fast_paths
from gpt_ds.kernels.encoder import install_fast_paths, zero3_external_parameters
from gpt_ds.model.generator import mpnet_positions


class MPNetForReplacedTokenDetection(nn.Module):
    """MPNet has no pretraining-head class in transformers: its encoder and ELECTRA's RTD head (dense, activation,
    one logit), under ElectraForPreTraining's attribute names so the head is found the same way for either. The
    export hands over the encoder (MPNetModel) and keeps the head beside it (gpt_ds.export)."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.config = config
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        for m in self.discriminator_predictions.modules():  # ELECTRA's init of the head
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=config.initializer_range)
                nn.init.zeros_(m.bias)

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.mpnet.activation_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> SimpleNamespace:
        """As ElectraForPreTraining's logits (B, L): evaluation of an export (training calls the parts)."""
        hidden = self.mpnet(input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return SimpleNamespace(logits=self.discriminator_predictions(hidden))


class DiscriminatorOutput(NamedTuple):
    loss: torch.Tensor  # mean BCE over this micro-batch's scored tokens (non-padding; loss_mask if given)
    logits: torch.Tensor  # (T,) detached logits of those tokens
    labels: torch.Tensor  # (T,) 1 = replaced
    mlm_loss: torch.Tensor | None = None  # mean corrective-LM cross-entropy at the masked positions
    scl_loss: torch.Tensor | None = None  # sequence contrastive loss of the uncorrupted views (view_ids)
    scl_correct: torch.Tensor | None = None  # how many of both directions' picks were the twin


def corrective_head(config: ElectraConfig | MPNetConfig) -> nn.ModuleDict:
    """The corrective LM's head: the generator's (dense to the embedding width, GELU, LayerNorm), then its own V-way
    output. Stock modules, so the weight-decay rule and the estimator see the names they know. MPNet has no embedding
    width: its head stays at the hidden width, as MPNet's own LM head does."""
    if isinstance(config, MPNetConfig):
        config = ElectraConfig(embedding_size=config.hidden_size, hidden_size=config.hidden_size,
                               hidden_act=config.hidden_act, layer_norm_eps=config.layer_norm_eps,
                               vocab_size=config.vocab_size, initializer_range=config.initializer_range)
    head = nn.ModuleDict({"predictions": ElectraGeneratorPredictions(config),
                          "out": nn.Linear(config.embedding_size, config.vocab_size)})
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=config.initializer_range)
            nn.init.zeros_(m.bias)
    return head


def sequence_contrastive_loss(views: torch.Tensor, corrupted: torch.Tensor, temperature: float):
    """COCO-LM's SCL on [CLS] vectors: views (k, H) are rows 0..k-1 of corrupted (B, H) seen uncorrupted. Each view
    picks its corrupted twin among all B rows, and each of those k corrupted rows its view among the k views; the
    mean of both cross-entropies, and how many picks were right. Cosine similarity, so only directions count: the
    other rows' [CLS] vectors are pushed apart, which is what keeps them from collapsing onto one."""
    a = nn.functional.normalize(views.float(), dim=-1)
    c = nn.functional.normalize(corrupted.float(), dim=-1)
    logits = a @ c.T / temperature  # (k, B)
    k = a.shape[0]
    twin = torch.arange(k, device=logits.device)
    back = logits[:, :k].T  # corrupted row i over the k views
    loss = 0.5 * (nn.functional.cross_entropy(logits, twin) + nn.functional.cross_entropy(back, twin))
    correct = (logits.argmax(-1) == twin).sum() + (back.argmax(-1) == twin).sum()
    return loss, correct.detach()


class Discriminator(nn.Module):
    def __init__(self, config: ElectraConfig | MPNetConfig, *, kernels: str = "auto", gdes: bool = False,
                 fast_encoder: bool | None = None, corrective_lm: bool = False):
        super().__init__()
        self.mpnet = isinstance(config, MPNetConfig)
        # `pt` (for ElectraForPreTraining) prefixes every parameter name in the checkpoints: renaming it breaks resume
        self.pt = MPNetForReplacedTokenDetection(config) if self.mpnet else ElectraForPreTraining(config)
        if not self.mpnet and (fast_encoder if fast_encoder is not None else encoder_fast_paths(kernels, "auto")):
            install_fast_paths(self.pt)
        self.kernels = kernels
        self.gdes = gdes
        self.corrective = None
        if corrective_lm:  # not exported: a downstream model gets the encoder, as with the RTD head
            self.corrective = corrective_head(config)
        if gdes:
            # Under GDES these tables hold only the delta E_delta, initialised to zero (DeBERTa-v3).
            emb = self.backbone.embeddings
            nn.init.zeros_(emb.word_embeddings.weight)
            nn.init.zeros_(emb.position_embeddings.weight)

    @property
    def backbone(self) -> nn.Module:
        """The encoder without its head (ElectraModel / MPNetModel): what the export hands downstream."""
        return self.pt.mpnet if self.mpnet else self.pt.electra

    def register_zero3_external_parameters(self) -> None:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter
        p = self.pt.discriminator_predictions
        for w in (p.dense.weight, p.dense.bias, p.dense_prediction.weight, p.dense_prediction.bias):
            register_external_parameter(self, w)
        for module, w in zero3_external_parameters(self.pt):
            register_external_parameter(module, w)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               base_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if self.gdes and base_embeds is None:
            raise ValueError("GDES discriminator needs the generator's embeddings (base_embeds)")
        if self.mpnet:
            pos = mpnet_positions(input_ids)
            if self.gdes:  # as below; MPNet adds its delta position table itself from pos
                inputs_embeds = base_embeds + self.pt.mpnet.embeddings.word_embeddings(input_ids)
                return self.pt.mpnet(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                     position_ids=pos).last_hidden_state
            return self.pt.mpnet(input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
        if self.gdes:
            # word: E_G + delta; position: P_G (in base) + the delta table HF adds itself.
            inputs_embeds = base_embeds + self.pt.electra.embeddings.word_embeddings(input_ids)
            return self.pt.electra(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state
        return self.pt.electra(input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                labels: torch.Tensor, base_embeds: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, view_ids: torch.Tensor | None = None,
                scl_temperature: float = 0.1) -> DiscriminatorOutput:
        """view_ids (k, L): rows 0..k-1 of the batch uncorrupted, encoded in the same pass for the sequence contrastive
        loss (base_embeds then covers B + k rows); the token losses read the B corrupted rows only."""
        b = input_ids.shape[0]
        k = 0 if view_ids is None else view_ids.shape[0]
        if k:
            input_ids = torch.cat([input_ids, view_ids])
            attention_mask = torch.cat([attention_mask, attention_mask[:k]])
            token_type_ids = torch.cat([token_type_ids, token_type_ids[:k]])
        hidden = self.encode(input_ids, attention_mask, token_type_ids, base_embeds)
        scl_loss = scl_correct = None
        if k:
            scl_loss, scl_correct = sequence_contrastive_loss(hidden[b:, 0], hidden[:b, 0], scl_temperature)
            hidden, attention_mask = hidden[:b], attention_mask[:b]
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
        return DiscriminatorOutput(out.loss, out.logits, y, mlm_loss, scl_loss, scl_correct)
