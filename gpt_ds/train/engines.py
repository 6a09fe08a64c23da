"""Build the towers and wrap each in its own DeepSpeed engine (own ds_config: ZeRO stage, precision, optimizer).

The generator and the discriminator exchange only detached tensors (sampled tokens, GDES base embeddings), so two
engines that step together are exact: no gradient needs to cross between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_ds.config import BatchLayout, Config
from gpt_ds.kernels import encoder_fast_paths
from gpt_ds.model.discriminator import Discriminator
from gpt_ds.model.generator import Generator
from gpt_ds.model.hf_config import discriminator_config, generator_config
from gpt_ds.model.priors import init_output_priors
from gpt_ds.model.relative_bias import local_bias_
from gpt_ds.ds_config import resolve_ds_config, zero_stage
from gpt_ds.model.weight_decay import param_groups
from gpt_ds.train.schedule import make_scheduler


@dataclass
class Engines:
    generator: object  # deepspeed.DeepSpeedEngine wrapping Generator
    discriminator: object | None  # None for the MLM baseline
    ds_configs: dict


def build_models(cfg: Config, vocab_size: int, pad_id: int, seed: int,
                 unigram_logp: torch.Tensor | None = None) -> tuple[Generator, Discriminator | None]:
    """Same seed (and the same unigram estimate) on every rank: ZeRO partitions identical initial weights."""
    torch.manual_seed(seed)
    gdes = cfg.objective.kind == "electra" and cfg.objective.embedding_sharing == "gdes"
    fast = encoder_fast_paths(cfg.model.kernels, cfg.model.encoder_kernels)
    gen = Generator(generator_config(cfg, vocab_size, pad_id), kernels=cfg.model.kernels,
                    temperature=cfg.objective.temperature, disallow_correct=cfg.objective.disallow_correct,
                    share_embeddings=gdes, fast_encoder=fast)
    disc = None
    if cfg.objective.kind == "electra":
        disc = Discriminator(discriminator_config(cfg, vocab_size, pad_id), kernels=cfg.model.kernels, gdes=gdes,
                             fast_encoder=fast, corrective_lm=cfg.objective.disc_mlm_weight > 0)
    if cfg.train.activation_checkpointing:
        for tower in (gen.mlm, disc.pt if disc is not None else None):
            if tower is not None:  # non-reentrant: works with ZeRO-3's hooks and keeps dropout's RNG stream
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.relative_bias_init == "local":
        for tower in (gen, disc):
            if tower is not None and tower.mpnet:
                local_bias_(tower.backbone.encoder.relative_attention_bias)
    if cfg.model.position_init == "sinusoidal":
        tables = [gen.backbone.embeddings.position_embeddings.weight]
        if disc is not None and not gdes:  # under GDES the discriminator's table is a zero delta on the generator's
            tables.append(disc.backbone.embeddings.position_embeddings.weight)
        for w in tables:
            with torch.no_grad():
                # about the std of the normal init
                w.copy_(sinusoidal_positions(*w.shape) * (cfg.model.initializer_range / 0.7071))
    if unigram_logp is not None:  # the caller decides (model.init_output_priors, not on synthetic data)
        init_output_priors(gen, disc, unigram_logp, cfg.objective.mask_prob)
    return gen, disc


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """Transformer sin/cos table: neighbouring positions start out similar, so attention can find them early."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float64) * (torch.log(torch.tensor(10000.0)) / dim))
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


def _initialize(model: torch.nn.Module, ds: dict, cfg: Config, downstream: bool):
    """`downstream`: the tower whose encoder the export hands over (optim.encoder_layer_lr_decay applies to it)."""
    import deepspeed
    if zero_stage(ds) == 3:
        model.register_zero3_external_parameters()
    decay = cfg.optim.encoder_layer_lr_decay if downstream else 1.0
    lr = cfg.optim.peak_lr(electra_generator=not downstream)
    groups = param_groups(model, cfg.optim.weight_decay, lr, decay,
                          _hf_model(model).config.num_hidden_layers)
    optimizer = None
    if "optimizer" not in ds:
        # fused: one kernel per tensor instead of ~6 passes (CPU and CUDA both have it); the step is the same AdamW
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                      eps=cfg.optim.eps, fused=True)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups, config=ds,
        lr_scheduler=lambda opt: make_scheduler(opt, cfg.optim.warmup_steps, cfg.train.max_steps,
                                                cfg.optim.min_lr_ratio))
    if zero_stage(ds) == 0:
        _record_fp32_clip_norm(engine)
        if engine.dp_world_size == 1:
            # One rank: the all-reduce is the identity, but DeepSpeed would still flatten every gradient into a
            # bucket and copy it back (a tenth of a CPU step at ELECTRA-Small).
            engine.enable_backward_allreduce = False
    return engine


def _hf_model(tower: torch.nn.Module):
    return tower.mlm if isinstance(tower, Generator) else tower.pt


def _record_fp32_clip_norm(engine) -> None:
    """DeepSpeed's ZeRO-0 fp32 path clips but drops the norm; keep it so every stage logs a gradient norm.

    After ZeRO-0's all-reduce every rank holds the same gradients, so the local norm is the global one; torch's clip
    (foreach kernels on a GPU, a per-tensor loop on the CPU) replaces DeepSpeed's Python loop over tensors.
    """
    def clip_and_record():
        params = [p for p in engine.module.parameters() if p.grad is not None]
        engine._global_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, engine.gradient_clipping()))
    engine.clip_fp32_gradients = clip_and_record


def build_engines(cfg: Config, layout: BatchLayout, vocab_size: int, pad_id: int,
                  unigram_logp: torch.Tensor | None = None) -> Engines:
    gen, disc = build_models(cfg, vocab_size, pad_id, cfg.run.seed, unigram_logp)
    ds_gen = resolve_ds_config(cfg, "generator", layout, gen.mlm.config.hidden_size)
    engines = Engines(generator=_initialize(gen, ds_gen, cfg, downstream=disc is None), discriminator=None,
                      ds_configs={"generator": ds_gen})
    if disc is not None:
        ds_disc = resolve_ds_config(cfg, "discriminator", layout)
        engines.discriminator = _initialize(disc, ds_disc, cfg, downstream=True)
        engines.ds_configs["discriminator"] = ds_disc
    return engines
